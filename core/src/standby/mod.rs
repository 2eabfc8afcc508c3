//! How a node becomes and stays a standby: every step lives here once, and the
//! `pg_basebackup_standby` module (an empty host made a standby) and the agent (a node
//! re-pointed, rewound or rebuilt after a failover) both call it, so the two cannot drift
//! apart again (they had: two slot-name rules, TLS files dropped from primary_conninfo after
//! the first failover, two ways of keeping an old data directory).
//!
//! - [`slot`]: the one rule for replication slot names;
//! - [`Upstream`]: how a standby reaches its primary (host, port, user, passfile, every TLS
//!   file, application_name) as primary_conninfo and as pg_basebackup's and pg_rewind's
//!   connection strings;
//! - [`standby_settings`] and [`write_standby_files`]: the replication part of
//!   postgresql.auto.conf and standby.signal;
//! - [`BaseBackup`] (slot, rate limit, temporary passfile, ownership), [`prepare_target`],
//!   [`move_aside`] (one naming scheme for a kept data directory) and [`Rewind`].

mod build;
mod error;
pub mod slot;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::atomic::{self, Ownership};
use crate::pgconf::{conf_set, conninfo};

pub use build::{move_aside, prepare_target, BaseBackup, NewDir, Restore, Rewind};
pub use error::StandbyError;
pub use slot::{check_unique, legacy_slot_names, slot_name, SlotCollision};

/// TLS of a standby's connections to its primary, in libpq's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicationTls {
    pub sslmode: String,
    /// The CA that signed the primary's certificate (`verify-ca`, `verify-full`).
    pub sslrootcert: Option<PathBuf>,
    /// A client certificate and its key, for `clientcert=` rules in pg_hba.conf.
    pub sslcert: Option<PathBuf>,
    pub sslkey: Option<PathBuf>,
}

impl Default for ReplicationTls {
    fn default() -> Self {
        ReplicationTls {
            sslmode: "prefer".into(),
            sslrootcert: None,
            sslcert: None,
            sslkey: None,
        }
    }
}

/// How a standby reaches its primary. The same value gives primary_conninfo, the base
/// backup's and the rewind's connection strings, so a setting made once reaches all three.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub host: String,
    pub port: u16,
    /// The replication role.
    pub user: String,
    /// The .pgpass the standby reads the password from on every (re)connection.
    pub passfile: Option<PathBuf>,
    pub tls: ReplicationTls,
    /// The standby's member name: what pg_stat_replication and synchronous_standby_names see.
    pub application_name: String,
}

/// `host:port` (the port 5432 when absent) as members publish their address.
pub fn split_address(address: &str) -> (&str, u16) {
    match address.rsplit_once(':') {
        Some((h, p)) => match p.parse() {
            Ok(port) => (h, port),
            Err(_) => (address, 5432),
        },
        None => (address, 5432),
    }
}

impl Upstream {
    /// libpq keywords in a fixed order: where, who, the passfile, TLS, and `extra`.
    fn pairs(
        &self,
        user: &str,
        passfile: bool,
        extra: &[(&'static str, &str)],
    ) -> Vec<(&'static str, String)> {
        let mut p: Vec<(&'static str, String)> = vec![
            ("host", self.host.clone()),
            ("port", self.port.to_string()),
            ("user", user.to_string()),
        ];
        if let (true, Some(f)) = (passfile, &self.passfile) {
            p.push(("passfile", f.display().to_string()));
        }
        p.push(("sslmode", self.tls.sslmode.clone()));
        for (k, v) in [
            ("sslrootcert", &self.tls.sslrootcert),
            ("sslcert", &self.tls.sslcert),
            ("sslkey", &self.tls.sslkey),
        ] {
            if let Some(v) = v {
                p.push((k, v.display().to_string()));
            }
        }
        p.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
        p
    }

    fn render(pairs: &[(&'static str, String)]) -> String {
        let refs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        conninfo(&refs)
    }

    /// `primary_conninfo`: what the standby's WAL receiver connects with.
    pub fn primary_conninfo(&self) -> String {
        Self::render(&self.pairs(
            &self.user,
            true,
            &[("application_name", &self.application_name)],
        ))
    }

    /// The replication connection's keywords for tools run once (pg_basebackup, psql in
    /// replication mode), with a connect timeout; `passfile` false when the caller hands a
    /// temporary passfile over in PGPASSFILE (the keyword would take precedence over it).
    pub fn tool_params(&self, passfile: bool) -> Vec<(String, String)> {
        self.pairs(
            &self.user,
            passfile,
            &[
                ("connect_timeout", "10"),
                ("application_name", &self.application_name),
            ],
        )
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// pg_rewind's `--source-server`: the same server, TLS and passfile, as `user` (a role
    /// allowed to read the data files) on the database postgres.
    pub fn rewind_source(&self, user: &str) -> String {
        Self::render(&self.pairs(
            user,
            true,
            &[("dbname", "postgres"), ("connect_timeout", "5")],
        ))
    }

    pub fn describe(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// postgresql.auto.conf's `text` with a standby's replication settings: `conninfo`, the slot
/// (None removes primary_slot_name), and the newest timeline to follow (a standby must
/// follow its primary's promotions).
pub fn standby_settings(text: &str, conninfo: &str, slot: Option<&str>) -> String {
    conf_set(
        text,
        &[
            ("primary_conninfo", Some(conninfo)),
            ("primary_slot_name", slot),
            ("recovery_target_timeline", Some("latest")),
        ],
    )
}

/// What [`write_standby_files`] changed, so a caller can put it back.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Written {
    /// postgresql.auto.conf was replaced; what it held before (None: it did not exist).
    pub auto_conf_before: Option<Option<Vec<u8>>>,
    /// standby.signal was created.
    pub signal_created: bool,
}

/// Makes the data directory `data` start as a standby: standby.signal, and with `settings`
/// (primary_conninfo, slot) the replication part of postgresql.auto.conf. Only what differs is
/// written, atomically, as `own`.
pub fn write_standby_files(
    data: &Path,
    settings: Option<(&str, Option<&str>)>,
    own: Ownership,
) -> Result<Written, StandbyError> {
    let auto_conf_before = match settings {
        Some((info, slot)) => write_replication_settings(data, info, slot, own)?,
        None => None,
    };
    Ok(Written {
        auto_conf_before,
        signal_created: write_signal(data, own)?,
    })
}

/// The replication settings into `data`'s postgresql.auto.conf when they differ; what the
/// file held before when it was replaced (`Some(None)`: it did not exist).
pub fn write_replication_settings(
    data: &Path,
    conninfo: &str,
    slot: Option<&str>,
    own: Ownership,
) -> Result<Option<Option<Vec<u8>>>, StandbyError> {
    let auto = data.join("postgresql.auto.conf");
    let before = match fs::read(&auto) {
        Ok(b) => Some(b),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(source) => return Err(StandbyError::Read { path: auto, source }),
    };
    let text = before
        .as_deref()
        .map(String::from_utf8_lossy)
        .unwrap_or_default();
    let new = standby_settings(&text, conninfo, slot);
    if before.is_some() && new == text {
        return Ok(None);
    }
    atomic::write_atomic(&auto, new.as_bytes(), Some(own))
        .map_err(|source| StandbyError::Write { path: auto, source })?;
    Ok(Some(before))
}

/// standby.signal in `data`; whether it was created now.
pub fn write_signal(data: &Path, own: Ownership) -> Result<bool, StandbyError> {
    let signal = data.join("standby.signal");
    if signal.exists() {
        return Ok(false);
    }
    atomic::write_atomic(&signal, b"", Some(own)).map_err(|source| StandbyError::Write {
        path: signal,
        source,
    })?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pgconf::{conf_get, conninfo_get};

    fn upstream() -> Upstream {
        Upstream {
            host: "db2.lab.example".into(),
            port: 5433,
            user: "replicator".into(),
            passfile: Some("/var/lib/postgresql/.pgpass".into()),
            tls: ReplicationTls {
                sslmode: "verify-full".into(),
                sslrootcert: Some("/etc/pg tls/ca.crt".into()),
                sslcert: Some("/tls/repl.crt".into()),
                sslkey: Some("/tls/repl.key".into()),
            },
            application_name: "DB1".into(),
        }
    }

    #[test]
    fn every_connection_carries_every_tls_file() {
        let u = upstream();
        let info = u.primary_conninfo();
        for (k, v) in [
            ("host", "db2.lab.example"),
            ("port", "5433"),
            ("user", "replicator"),
            ("passfile", "/var/lib/postgresql/.pgpass"),
            ("sslmode", "verify-full"),
            ("sslrootcert", "/etc/pg tls/ca.crt"),
            ("sslcert", "/tls/repl.crt"),
            ("sslkey", "/tls/repl.key"),
            ("application_name", "DB1"),
        ] {
            assert_eq!(conninfo_get(&info, k).as_deref(), Some(v), "{k} in {info}");
        }
        let rewind = u.rewind_source("pgshift_rewind");
        assert_eq!(
            conninfo_get(&rewind, "user").as_deref(),
            Some("pgshift_rewind")
        );
        assert_eq!(conninfo_get(&rewind, "dbname").as_deref(), Some("postgres"));
        for k in ["sslrootcert", "sslcert", "sslkey", "passfile"] {
            assert_eq!(conninfo_get(&rewind, k), conninfo_get(&info, k), "{k}");
        }
        let tool: Vec<(String, String)> = u.tool_params(false);
        assert!(!tool.iter().any(|(k, _)| k == "passfile"));
        assert!(tool
            .iter()
            .any(|(k, v)| k == "sslkey" && v == "/tls/repl.key"));
        // Without TLS files none of their keywords appear.
        let plain = Upstream {
            tls: ReplicationTls::default(),
            ..u
        };
        let info = plain.primary_conninfo();
        assert!(
            !info.contains("sslrootcert") && !info.contains("sslcert"),
            "{info}"
        );
        assert_eq!(conninfo_get(&info, "sslmode").as_deref(), Some("prefer"));
    }

    #[test]
    fn addresses() {
        assert_eq!(split_address("db1:5433"), ("db1", 5433));
        assert_eq!(split_address("db1"), ("db1", 5432));
        assert_eq!(split_address("db1:x"), ("db1:x", 5432));
    }

    #[test]
    fn settings_replace_and_remove() {
        let before = "# Do not edit this file manually!\nprimary_conninfo = 'host=old'\nprimary_slot_name = 'x'\nwork_mem = '8MB'\n";
        let after = standby_settings(before, "host=new user=r", None);
        assert_eq!(
            conf_get(&after, "primary_conninfo").as_deref(),
            Some("host=new user=r")
        );
        assert_eq!(conf_get(&after, "primary_slot_name"), None);
        assert_eq!(
            conf_get(&after, "recovery_target_timeline").as_deref(),
            Some("latest")
        );
        assert_eq!(conf_get(&after, "work_mem").as_deref(), Some("8MB"));
        // Applying the same settings again changes nothing.
        assert_eq!(standby_settings(&after, "host=new user=r", None), after);
    }

    #[test]
    fn files_written_once_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let me = nix::unistd::Uid::effective().as_raw();
        let own = Ownership {
            uid: me,
            gid: nix::unistd::Gid::effective().as_raw(),
            mode: 0o600,
        };
        let first = write_standby_files(dir.path(), Some(("host=a", Some("db1"))), own).unwrap();
        assert_eq!(first.auto_conf_before, Some(None));
        assert!(first.signal_created);
        let again = write_standby_files(dir.path(), Some(("host=a", Some("db1"))), own).unwrap();
        assert_eq!(again, Written::default());
        let moved = write_standby_files(dir.path(), Some(("host=b", Some("db1"))), own).unwrap();
        let before = String::from_utf8(moved.auto_conf_before.unwrap().unwrap()).unwrap();
        assert!(before.contains("host=a"), "{before}");
        assert!(!moved.signal_created);
        // Without settings only the signal file is made.
        fs::remove_file(dir.path().join("standby.signal")).unwrap();
        let signal = write_standby_files(dir.path(), None, own).unwrap();
        assert!(signal.signal_created && signal.auto_conf_before.is_none());
    }
}
