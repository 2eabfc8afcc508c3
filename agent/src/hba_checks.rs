//! Load balancers that check a database host by logging in (HAProxy's `option pgsql-check`):
//! the agent keeps, at the top of pg_hba.conf, rules that admit the read-write check user
//! from the load balancers only on the leader and reject it everywhere else, and admit the
//! read-only check user only on streaming standbys (with `allow_ro`; without it, nowhere, so
//! no other rule of the file can admit it). A check user is
//! "admitted" when the server answers with its password request (the check stops there, so
//! the roles need not even exist) and refused when the server rejects it at once.
//!
//! The rules are the agent's own lines (identified by type, database, user and address, and
//! marked with a comment); every other line stays as it is. They are edited through the same
//! code as the `pg_hba_rule` module: core's pg_hba model under the file's lock, an atomic
//! replacement, and, while PostgreSQL runs, the verified reload of `core::hba_reload` (a new
//! connection sees the reload and `pg_hba_file_rules` rejects nothing, or the old file comes
//! back). The agent calls [`HbaChecks::sync`] before and after each loop's action (a node
//! about to start gets the rejecting rules while PostgreSQL is still stopped), right after a
//! promotion, and before a leader hands over.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use pgshift_core::atomic::Replacement;
use pgshift_core::datadir::DataDir;
use pgshift_core::hba::{parse_names, Address, Change, ConnType, HbaFile, Position, Rule};
use pgshift_core::hba_reload::{self, HbaServer};
use pgshift_core::pg::{Client, ConnectOptions};
use pgshift_core::userfile::UserFile;
use serde::Deserialize;

use crate::config::Config;
use crate::postgres::Observed;

/// `[hba_checks]` in agent.toml.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HbaChecksConfig {
    /// The user HAProxy's read-write check logs in as.
    pub rw_user: String,
    /// The user of the read-only check.
    pub ro_user: Option<String>,
    /// Admit the read-only check user on streaming standbys (without it, it is rejected
    /// everywhere).
    #[serde(default)]
    pub allow_ro: bool,
    /// Where the checks come from: addresses or networks (CIDR) of the load balancers.
    pub load_balancers: Vec<String>,
    /// What an admitting rule asks for: the check stops at the password request.
    #[serde(default = "default_method")]
    pub method: String,
    /// pg_hba.conf; unset: beside postgresql.config_file, else in the data directory.
    pub hba_file: Option<PathBuf>,
}

fn default_method() -> String {
    "scram-sha-256".into()
}

impl HbaChecksConfig {
    /// Every rule the agent may write, checked once at start (a typo fails the config).
    pub fn check(&self) -> Result<(), String> {
        if self.load_balancers.is_empty() {
            return Err(
                "hba_checks.load_balancers is empty: list the load balancers' addresses".into(),
            );
        }
        if self.allow_ro && self.ro_user.is_none() {
            return Err("hba_checks.allow_ro needs hba_checks.ro_user".into());
        }
        for admit in [true, false] {
            for r in self
                .rules(Role::Leader)
                .into_iter()
                .chain(self.rules(Role::Standby))
            {
                let r = r.map_err(|e| format!("hba_checks: {e}"))?;
                if let Change::Present { rule, .. } = r {
                    let rule = Rule {
                        method: if admit {
                            self.method.clone()
                        } else {
                            "reject".into()
                        },
                        ..rule
                    };
                    rule.validate(None)
                        .map_err(|e| format!("hba_checks: {e}"))?;
                }
            }
        }
        Ok(())
    }

    /// The changes that make the file right for `role`.
    fn rules(&self, role: Role) -> Vec<Result<Change, String>> {
        let ro_whom = if self.allow_ro {
            "streaming standbys"
        } else {
            "no host (allow_ro is off)"
        };
        let users = [
            (
                Some(&self.rw_user),
                role == Role::Leader,
                "read-write",
                "the leader",
            ),
            (
                self.ro_user.as_ref(),
                role == Role::Standby && self.allow_ro,
                "read-only",
                ro_whom,
            ),
        ];
        let mut out = Vec::new();
        for (user, admit, what, whom) in users {
            let Some(user) = user else { continue };
            for lb in &self.load_balancers {
                out.push(
                    self.rule(user, lb, admit, what, whom)
                        .map(|rule| Change::Present {
                            rule,
                            position: Position::First,
                        }),
                );
            }
        }
        out
    }

    fn rule(
        &self,
        user: &str,
        lb: &str,
        admit: bool,
        what: &str,
        whom: &str,
    ) -> Result<Rule, String> {
        Ok(Rule {
            conn_type: ConnType::Host,
            databases: parse_names("databases", &["all".into()]).map_err(|e| e.to_string())?,
            users: parse_names("users", &[user.into()]).map_err(|e| e.to_string())?,
            address: Some(
                Address::parse_user(lb).map_err(|e| format!("load balancer {lb:?}: {e}"))?,
            ),
            method: if admit {
                self.method.clone()
            } else {
                "reject".into()
            },
            options: Vec::new(),
            comment: Some(format!(
                "pgshift agent: {what} check of the load balancers, admitted on {whom} only"
            )),
        })
    }
}

/// What this node is for the load balancers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Holds the leader key and PostgreSQL is a primary.
    Leader,
    /// A running standby that streams.
    Standby,
    /// Anything else: stopped, starting, not streaming, in maintenance.
    Other,
}

impl Role {
    pub fn of(obs: &Observed, leading: bool, down: bool) -> Role {
        if down || !obs.running {
            Role::Other
        } else if leading && !obs.in_recovery {
            Role::Leader
        } else if obs.in_recovery && obs.streaming {
            Role::Standby
        } else {
            Role::Other
        }
    }
}

/// How long the agent waits for another editor's lock on pg_hba.conf (it retries next loop).
const LOCK_WAIT: Duration = Duration::from_millis(200);
/// After a failed edit, the next try waits this long (no reload every loop).
const RETRY_AFTER: Duration = Duration::from_secs(5);
/// pg_hba.conf files are kilobytes.
const MAX_BYTES: u64 = 16 * 1024 * 1024;

pub struct HbaChecks {
    cfg: Option<HbaChecksConfig>,
    hba_file: PathBuf,
    data: DataDir,
    connect: ConnectOptions,
    /// The role the file was last made right for.
    done: Option<Role>,
    failed: Option<(Role, Instant, String)>,
}

impl HbaChecks {
    pub fn new(cfg: &Config) -> HbaChecks {
        let p = &cfg.postgresql;
        let hba_file = cfg
            .hba_checks
            .as_ref()
            .and_then(|h| h.hba_file.clone())
            .or_else(|| {
                p.config_file
                    .as_ref()
                    .and_then(|c| Some(c.parent()?.join("pg_hba.conf")))
            })
            .unwrap_or_else(|| p.data_directory.join("pg_hba.conf"));
        HbaChecks {
            cfg: cfg.hba_checks.clone(),
            hba_file,
            data: DataDir::new(p.data_directory.clone()),
            connect: ConnectOptions {
                port: p.port,
                user: p.user.clone(),
                unix_socket: Some(p.socket_dir.clone()),
                connect_timeout: Duration::from_secs(2),
                application_name: "pgshift-agent".into(),
                ..ConnectOptions::default()
            },
            done: None,
            failed: None,
        }
    }

    /// Makes the rules right for what this node is now (`obs` after or before the loop's
    /// action; `leading`: it holds the leader key). Cheap when nothing changes: one read.
    pub fn sync(&mut self, obs: &Observed, leading: bool, down: bool) {
        self.make(Role::of(obs, leading, down), obs.running);
    }

    /// Right after a promotion: admitted now, not at the end of the loop.
    pub fn promoted(&mut self) {
        self.make(Role::Leader, true);
    }

    /// Before a leader stops to hand over: out of the read-write pool first.
    pub fn handing_over(&mut self) {
        self.make(Role::Other, true);
    }

    fn make(&mut self, role: Role, running: bool) {
        let Some(cfg) = self.cfg.clone() else { return };
        if let Some((r, at, _)) = &self.failed {
            if *r == role && at.elapsed() < RETRY_AFTER {
                return;
            }
        }
        match self.edit(&cfg, role, running) {
            Ok(changed) => {
                if changed || self.done != Some(role) {
                    if changed {
                        tracing::info!(
                            "pg_hba.conf: load balancer check rules set for {role:?} ({})",
                            self.hba_file.display()
                        );
                    }
                    self.done = Some(role);
                }
                self.failed = None;
            }
            Err(e) => {
                if self.failed.as_ref().is_none_or(|(_, _, old)| *old != e) {
                    tracing::warn!("pg_hba.conf: cannot set the load balancer check rules: {e}");
                }
                self.done = None;
                self.failed = Some((role, Instant::now(), e));
            }
        }
    }

    /// Edits the file for `role`; Ok(true) when it changed (and, with PostgreSQL running,
    /// the server proved it loaded it).
    fn edit(&self, cfg: &HbaChecksConfig, role: Role, running: bool) -> Result<bool, String> {
        let target =
            UserFile::resolve("hba_checks.hba_file", &self.hba_file).map_err(|e| e.to_string())?;
        // A look without the lock first: the usual loop changes nothing.
        let plan = |bytes: Vec<u8>| -> Result<(HbaFile, bool), String> {
            let mut file = HbaFile::parse(bytes).map_err(|e| e.to_string())?;
            for change in cfg.rules(role) {
                file.apply(&change?).map_err(|e| e.to_string())?;
            }
            let changed = !file.renders_as(file.source());
            Ok((file, changed))
        };
        let current = target
            .read(MAX_BYTES)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("{} does not exist", self.hba_file.display()))?;
        if !plan(current)?.1 {
            return Ok(false);
        }
        let (_lock, original) = target
            .read_locked(MAX_BYTES, LOCK_WAIT)
            .map_err(|e| e.to_string())?;
        let original =
            original.ok_or_else(|| format!("{} does not exist", self.hba_file.display()))?;
        let (file, changed) = plan(original.clone())?;
        if !changed {
            return Ok(false);
        }
        // Connected (and shown to read this file) before anything is written.
        let pm = if running {
            self.data.postmaster().map_err(|e| e.to_string())?
        } else {
            None
        };
        let connect = || Client::connect(&self.connect);
        let mut server = match &pm {
            Some(_) => Some(HbaServer::connect(&self.data, &connect, &target)?),
            None => None,
        };
        let written = file.sha256();
        let cannot = |e: std::io::Error| format!("cannot write {}: {e}", self.hba_file.display());
        let mut r = Replacement::new(&target.real, None).map_err(cannot)?;
        file.write_to(r.writer()).map_err(cannot)?;
        target
            .unchanged_since(Some(&original))
            .map_err(|e| e.to_string())?;
        r.commit().map_err(cannot)?;
        if let Some(server) = &mut server {
            let _new_lock = target.lock_current(LOCK_WAIT).ok().flatten();
            server.verify_and_reload(&file).map_err(|e| {
                hba_reload::restore(&target, Some(&original), &written, Some(&self.data), e)
            })?;
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(allow_ro: bool) -> HbaChecksConfig {
        HbaChecksConfig {
            rw_user: "check_rw".into(),
            ro_user: Some("check_ro".into()),
            allow_ro,
            load_balancers: vec!["10.77.0.13".into(), "10.0.0.0/24".into()],
            method: default_method(),
            hba_file: None,
        }
    }

    fn apply(c: &HbaChecksConfig, text: &str, role: Role) -> String {
        let mut f = HbaFile::parse(text.as_bytes().to_vec()).unwrap();
        for ch in c.rules(role) {
            f.apply(&ch.unwrap()).unwrap();
        }
        String::from_utf8(f.render()).unwrap()
    }

    const BASE: &str =
        "# mine\nlocal all postgres peer\nhost all all 10.77.0.0/24 scram-sha-256 # theirs\n";

    /// The file without the agent's lines: BASE, byte for byte.
    fn others(text: &str) -> String {
        text.lines()
            .filter(|l| !l.contains("# pgshift agent:"))
            .map(|l| format!("{l}\n"))
            .collect()
    }

    #[test]
    fn roles_from_what_the_node_sees() {
        let obs = |running, in_recovery, streaming| Observed {
            running,
            in_recovery,
            streaming,
            ..Observed::default()
        };
        assert_eq!(
            Role::of(&obs(true, false, false), true, false),
            Role::Leader
        );
        assert_eq!(Role::of(&obs(true, false, false), true, true), Role::Other);
        assert_eq!(
            Role::of(&obs(true, false, false), false, false),
            Role::Other
        );
        assert_eq!(
            Role::of(&obs(true, true, true), false, false),
            Role::Standby
        );
        assert_eq!(Role::of(&obs(true, true, false), false, false), Role::Other);
        assert_eq!(
            Role::of(&obs(false, false, false), true, false),
            Role::Other
        );
    }

    #[test]
    fn leader_admits_rw_standby_admits_ro_others_reject_both_and_other_lines_stay() {
        let c = cfg(true);
        let leader = apply(&c, BASE, Role::Leader);
        let lines: Vec<&str> = leader.lines().collect();
        assert_eq!(others(&leader), BASE, "{leader}");
        assert_eq!(lines.len(), 3 + 4, "{leader}");
        let rule = |user: &str, addr: &str, text: &str| {
            text.lines()
                .find(|l| l.contains(user) && l.contains(addr))
                .unwrap()
                .to_string()
        };
        assert!(rule("check_rw", "10.77.0.13", &leader).contains("scram-sha-256"));
        assert!(rule("check_ro", "10.0.0.0/24", &leader).contains("reject"));
        assert!(
            rule("check_rw", "10.0.0.0/24", &leader).contains("# pgshift agent: read-write check")
        );
        let standby = apply(&c, &leader, Role::Standby);
        assert!(rule("check_rw", "10.77.0.13", &standby).contains("reject"));
        assert!(rule("check_ro", "10.77.0.13", &standby).contains("scram-sha-256"));
        // Updated in place: same lines, same order, only the methods changed.
        assert_eq!(standby.lines().count(), leader.lines().count());
        let other = apply(&c, &standby, Role::Other);
        assert_eq!(other.matches("reject").count(), 4, "{other}");
        // Idempotent: the same role again changes nothing.
        assert_eq!(apply(&c, &other, Role::Other), other);
        assert_eq!(others(&other), BASE);
    }

    #[test]
    fn without_allow_ro_the_read_only_user_is_rejected_everywhere() {
        let with = apply(&cfg(true), BASE, Role::Standby);
        let without = apply(&cfg(false), &with, Role::Standby);
        let ro: Vec<&str> = without.lines().filter(|l| l.contains("check_ro")).collect();
        assert_eq!(ro.len(), 2, "{without}");
        assert!(ro.iter().all(|l| l.contains(" reject ")), "{without}");
        assert!(without.contains("check_rw"));
        assert_eq!(others(&without), BASE);
    }

    #[test]
    fn config_errors() {
        let mut c = cfg(true);
        assert!(c.check().is_ok());
        c.load_balancers = vec!["not an address".into()];
        assert!(c.check().unwrap_err().contains("load balancer"));
        let mut c = cfg(true);
        c.ro_user = None;
        assert!(c.check().unwrap_err().contains("ro_user"));
        let mut c = cfg(false);
        c.load_balancers.clear();
        assert!(c.check().unwrap_err().contains("empty"));
        let mut c = cfg(false);
        c.method = "bogus".into();
        assert!(c.check().is_err());
    }
}
