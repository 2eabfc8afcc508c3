//! The local PostgreSQL: what it is doing, and the few things the agent does to it (start as
//! standby or primary, promote, follow another node, rewind, stop). The agent is the only
//! one who starts it (Debian's start.conf says manual), always through here.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use pgshift_core::atomic::{self, Ownership};
use pgshift_core::datadir::DataDir;
use pgshift_core::pg::{Client, ConnectOptions};
use pgshift_core::pgconf::{conf_get, conf_set, conninfo};
use pgshift_core::process::{output_text, run_as, Owner};

use crate::config::Config;

/// What one look at the local server shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    pub running: bool,
    pub in_recovery: bool,
    pub timeline: u32,
    /// Written (primary) or received (standby) position.
    pub lsn: u64,
    pub replayed_lsn: u64,
    /// host:port of primary_conninfo.
    pub upstream_conn: Option<String>,
    pub streaming: bool,
    /// pg_controldata's state while stopped (e.g. "in production" after a crash).
    pub stopped_state: Option<String>,
    /// The settings of `dcs::STANDBY_MINIMUMS`.
    pub settings: std::collections::BTreeMap<String, i64>,
}

pub struct LocalPg {
    me: String,
    pub data: DataDir,
    bin: PathBuf,
    config_file: Option<PathBuf>,
    port: u16,
    socket_dir: PathBuf,
    pub owner: Owner,
    replication_user: String,
    passfile: PathBuf,
    sslmode: String,
    client: Option<Client>,
}

/// A replication slot name for a node name (slots allow [a-z0-9_] only).
pub fn slot_name(node: &str) -> String {
    node.to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn parse_lsn(s: &str) -> u64 {
    s.split_once('/')
        .and_then(|(hi, lo)| {
            Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
        })
        .unwrap_or(0)
}

impl LocalPg {
    pub fn new(cfg: &Config) -> Result<LocalPg, String> {
        let p = &cfg.postgresql;
        Ok(LocalPg {
            me: cfg.name.clone(),
            data: DataDir::new(p.data_directory.clone()),
            bin: p.bin_dir.clone(),
            config_file: p.config_file.clone(),
            port: p.port,
            socket_dir: p.socket_dir.clone(),
            owner: Owner::lookup(&p.user)?,
            replication_user: cfg.replication.user.clone(),
            passfile: cfg.replication.passfile.clone(),
            sslmode: cfg.replication.sslmode.clone(),
            client: None,
        })
    }

    fn connect(&mut self) -> Result<&mut Client, String> {
        if self.client.is_none() {
            let opts = ConnectOptions {
                port: self.port,
                user: self.owner.name.clone(),
                unix_socket: Some(self.socket_dir.clone()),
                connect_timeout: Duration::from_secs(2),
                application_name: "pgshift-agent".into(),
                ..ConnectOptions::default()
            };
            self.client = Some(Client::connect(&opts).map_err(|e| e.to_string())?);
        }
        Ok(self.client.as_mut().expect("just set"))
    }

    /// Runs `f` on the connection; a failure drops it so the next call reconnects.
    fn with<T>(&mut self, f: impl FnOnce(&mut Client) -> Result<T, String>) -> Result<T, String> {
        let r = self.connect().and_then(f);
        if r.is_err() {
            self.client = None;
        }
        r
    }

    pub fn observe(&mut self) -> Observed {
        let alive = self.data.postmaster().ok().flatten().is_some();
        if !alive {
            self.client = None;
            let stopped_state = self.data.control_data(&self.bin).ok().map(|c| c.state);
            return Observed {
                stopped_state,
                ..Observed::default()
            };
        }
        let row = self.with(|c| {
            c.query_one(
                "SELECT pg_is_in_recovery(),
                        CASE WHEN pg_is_in_recovery()
                             THEN COALESCE(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())::text
                             ELSE pg_current_wal_lsn()::text END,
                        COALESCE(pg_last_wal_replay_lsn(), pg_current_wal_lsn())::text,
                        CASE WHEN pg_is_in_recovery()
                             -- A standby's timeline: the walreceiver's while it streams, else
                             -- the newest timeline history it holds (the last checkpoint's
                             -- timeline lags behind a timeline switch until the next one).
                             THEN GREATEST((SELECT received_tli FROM pg_stat_wal_receiver WHERE received_tli > 0),
                                           (SELECT max(('x' || substr(name, 1, 8))::bit(32)::int) FROM pg_ls_waldir()
                                             WHERE name ~ '^[0-9A-F]{8}[.]history$'),
                                           (SELECT timeline_id FROM pg_control_checkpoint()))
                             ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END,
                        EXISTS (SELECT 1 FROM pg_stat_wal_receiver WHERE status = 'streaming'),
                        current_setting('primary_conninfo')",
                &[],
            )
            .map_err(|e| e.to_string())
        });
        let settings = self
            .with(|c| {
                c.query(
                    "SELECT name, setting::bigint FROM pg_settings WHERE name = ANY($1)",
                    &[&crate::dcs::STANDBY_MINIMUMS],
                )
                .map_err(|e| e.to_string())
            })
            .map(|rows| {
                rows.iter()
                    .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1)))
                    .collect()
            })
            .unwrap_or_default();
        match row {
            Ok(r) => {
                let conninfo: String = r.get(5);
                Observed {
                    settings,
                    running: true,
                    in_recovery: r.get(0),
                    lsn: parse_lsn(&r.get::<_, String>(1)),
                    replayed_lsn: parse_lsn(&r.get::<_, String>(2)),
                    timeline: r.get::<_, i32>(3) as u32,
                    streaming: r.get(4),
                    upstream_conn: upstream_of(&conninfo),
                    stopped_state: None,
                }
            }
            // Starting up or shutting down: running, but nothing to say yet.
            Err(_) => Observed {
                running: true,
                in_recovery: true,
                ..Observed::default()
            },
        }
    }

    /// The primary_conninfo to follow the node whose PostgreSQL is at `conn` (host:port).
    fn conninfo_for(&self, conn: &str) -> String {
        let (host, port) = conn.rsplit_once(':').unwrap_or((conn, "5432"));
        conninfo(&[
            ("host", host),
            ("port", port),
            ("user", &self.replication_user),
            ("passfile", &self.passfile.display().to_string()),
            ("application_name", &self.me),
            ("sslmode", &self.sslmode),
        ])
    }

    /// Writes standby.signal and the replication settings into postgresql.auto.conf of the
    /// stopped server (`conn` None keeps the current upstream).
    pub fn prepare_standby(&self, conn: Option<&str>) -> Result<(), String> {
        let own = Ownership {
            uid: self.owner.uid,
            gid: self.owner.gid,
            mode: 0o600,
        };
        let signal = self.data.path.join("standby.signal");
        if !signal.exists() {
            atomic::write_atomic(&signal, b"", Some(own))
                .map_err(|e| format!("cannot write {}: {e}", signal.display()))?;
        }
        if let Some(conn) = conn {
            let auto = self.data.path.join("postgresql.auto.conf");
            let text = fs::read_to_string(&auto).unwrap_or_default();
            let info = self.conninfo_for(conn);
            let slot = slot_name(&self.me);
            let new = conf_set(
                &text,
                &[
                    ("primary_conninfo", Some(&info)),
                    ("primary_slot_name", Some(&slot)),
                    ("recovery_target_timeline", Some("latest")),
                ],
            );
            if new != text {
                atomic::write_atomic(&auto, new.as_bytes(), Some(own))
                    .map_err(|e| format!("cannot write {}: {e}", auto.display()))?;
            }
        }
        Ok(())
    }

    pub fn start(&mut self) -> Result<(), String> {
        let mut cmd = Command::new(self.bin.join("pg_ctl"));
        cmd.args(["start", "-w", "-t", "120", "-s", "-D"])
            .arg(&self.data.path);
        if let Some(cf) = &self.config_file {
            cmd.arg("-o")
                .arg(format!("-c config_file={}", cf.display()));
        }
        if let Some(log) = self.log_file() {
            cmd.arg("-l").arg(log);
        }
        let out =
            run_as(&mut cmd, Some(&self.owner)).map_err(|e| format!("cannot run pg_ctl: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("pg_ctl start failed: {}", output_text(&out)))
        }
    }

    /// Debian's log file for the cluster, when the layout is Debian's.
    fn log_file(&self) -> Option<PathBuf> {
        let (version, cluster) = self.data.debian_cluster(Path::new("/etc/postgresql"))?;
        Some(PathBuf::from(format!(
            "/var/log/postgresql/postgresql-{version}-{cluster}.log"
        )))
    }

    /// `fast` waits for sessions to be cut; `immediate` is the fence (no shutdown checkpoint).
    pub fn stop(&mut self, mode: &str) -> Result<(), String> {
        self.client = None;
        if self.data.postmaster().ok().flatten().is_none() {
            return Ok(());
        }
        // pg_ctl -W and our own wait: pg_ctl's checks the pid file every 100 ms, and a
        // switchover's write gap is made of such waits.
        let mut cmd = Command::new(self.bin.join("pg_ctl"));
        cmd.args(["stop", "-W", "-s", "-m", mode, "-D"])
            .arg(&self.data.path);
        let out =
            run_as(&mut cmd, Some(&self.owner)).map_err(|e| format!("cannot run pg_ctl: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "pg_ctl stop -m {mode} failed: {}",
                output_text(&out)
            ));
        }
        for _ in 0..6000 {
            if self.data.postmaster().ok().flatten().is_none() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Err(format!("PostgreSQL did not stop within 60 s (-m {mode})"))
    }

    /// Promotes and returns once the server accepts writes. (pg_promote's own wait polls
    /// every 100 ms; polling here every 10 ms takes up to that much off the write gap.)
    /// `keep` runs every ~250 ms of waiting: the caller renews its leadership there (the
    /// startup process may be busy in restore_command for a while before it notices).
    pub fn promote(&mut self, mut keep: impl FnMut()) -> Result<(), String> {
        self.with(|c| {
            c.batch_execute("SELECT pg_promote(false)")
                .map_err(|e| e.to_string())?;
            tracing::info!("promotion: requested");
            for i in 0..6000 {
                if i % 25 == 24 {
                    keep();
                }
                let recovering: bool = c
                    .query_one("SELECT pg_is_in_recovery()", &[])
                    .map_err(|e| e.to_string())?
                    .get(0);
                if !recovering {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err("the promotion did not finish within 60 s".into())
        })
    }

    /// A checkpoint on the new timeline after a promotion: pg_rewind of the old primary
    /// needs it (the control file names the timeline only after one).
    pub fn checkpoint(&mut self) -> Result<(), String> {
        self.with(|c| c.batch_execute("CHECKPOINT").map_err(|e| e.to_string()))
    }

    /// Streams from the node at `conn`: primary_conninfo and slot, applied by reload.
    pub fn follow(&mut self, conn: &str) -> Result<(), String> {
        let info = self.conninfo_for(conn);
        let slot = slot_name(&self.me);
        self.with(|c| {
            c.batch_execute(&format!(
                "ALTER SYSTEM SET primary_conninfo = {}",
                pgshift_core::pg::sql::quote_literal(&info)
            ))
            .and_then(|_| {
                c.batch_execute(&format!(
                    "ALTER SYSTEM SET primary_slot_name = {}",
                    pgshift_core::pg::sql::quote_literal(&slot)
                ))
            })
            .and_then(|_| c.batch_execute("SELECT pg_reload_conf()"))
            .map_err(|e| e.to_string())
        })
    }

    /// After a clean shutdown: where its last record, the shutdown checkpoint, starts.
    pub fn shutdown_checkpoint(&self) -> Result<u64, String> {
        let c = self
            .data
            .control_data(&self.bin)
            .map_err(|e| format!("pg_controldata: {e}"))?;
        if c.state != "shut down" {
            return Err(format!(
                "the server is not cleanly shut down (pg_controldata says {:?})",
                c.state
            ));
        }
        c.latest_checkpoint
            .as_deref()
            .map(parse_lsn)
            .filter(|l| *l > 0)
            .ok_or_else(|| "pg_controldata shows no checkpoint location".into())
    }

    pub fn sync_names(&mut self) -> Result<String, String> {
        self.with(|c| {
            c.query_one("SELECT current_setting('synchronous_standby_names')", &[])
                .map(|r| r.get(0))
                .map_err(|e| e.to_string())
        })
    }

    /// `synchronous_standby_names` through ALTER SYSTEM and a reload (also on a standby,
    /// ahead of its promotion).
    pub fn set_sync_names(&mut self, value: &str) -> Result<(), String> {
        let q = pgshift_core::pg::sql::quote_literal(value);
        self.with(|c| {
            // Two statements, not one batch: a batch runs as one transaction, and ALTER
            // SYSTEM refuses to run inside one.
            c.batch_execute(&format!("ALTER SYSTEM SET synchronous_standby_names = {q}"))
                .and_then(|_| c.batch_execute("SELECT pg_reload_conf()"))
                .map_err(|e| e.to_string())
        })?;
        // The reload is asynchronous: wait (briefly) until this backend sees it.
        for _ in 0..50 {
            if self.sync_names()? == value {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Err(format!(
            "synchronous_standby_names is not {value:?} after the reload"
        ))
    }

    /// Whether `standby` confirms commits synchronously and has flushed everything written
    /// so far (so commits acknowledged before it became synchronous are on it too).
    pub fn is_sync_and_caught_up(&mut self, standby: &str) -> Result<bool, String> {
        self.with(|c| {
            c.query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_stat_replication
                                 WHERE application_name = $1 AND sync_state = 'sync'
                                   AND flush_lsn >= pg_current_wal_lsn())",
                &[&standby],
            )
            .map(|r| r.get(0))
            .map_err(|e| e.to_string())
        })
    }

    /// On the primary: a physical slot for each of `nodes` that lacks one.
    pub fn ensure_slots(&mut self, nodes: &[String]) -> Result<(), String> {
        let slots: Vec<String> = nodes
            .iter()
            .filter(|n| **n != self.me)
            .map(|n| slot_name(n))
            .collect();
        self.with(|c| {
            for s in &slots {
                c.execute(
                    "SELECT pg_create_physical_replication_slot($1) WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)",
                    &[s],
                )
                .map_err(|e| e.to_string())?;
            }
            Ok(())
        })
    }

    /// Makes the stopped old primary a copy of the leader's history: pg_rewind, or, when
    /// that fails, a fresh base backup with the old directory moved aside (never deleted).
    pub fn rewind_or_rebuild(
        &mut self,
        leader_conn: &str,
        rewind_user: &str,
    ) -> Result<String, String> {
        // Stopping a standby only to find the leader unreachable would take a working
        // (if lagging) copy away for nothing.
        reachable(leader_conn)?;
        self.stop("fast")?;
        let (host, port) = leader_conn
            .rsplit_once(':')
            .unwrap_or((leader_conn, "5432"));
        let source = conninfo(&[
            ("host", host),
            ("port", port),
            ("user", rewind_user),
            ("dbname", "postgres"),
            ("passfile", &self.passfile.display().to_string()),
            ("sslmode", &self.sslmode),
            ("connect_timeout", "5"),
        ]);
        let mut cmd = Command::new(self.bin.join("pg_rewind"));
        cmd.arg("--target-pgdata")
            .arg(&self.data.path)
            .arg(format!("--source-server={source}"));
        // Debian keeps postgresql.conf outside the data directory; pg_rewind's crash-recovery
        // step runs a single-user server that needs it.
        if let Some(cf) = &self.config_file {
            cmd.arg(format!("--config-file={}", cf.display()));
        }
        let out = run_as(&mut cmd, Some(&self.owner))
            .map_err(|e| format!("cannot run pg_rewind: {e}"))?;
        if out.status.success() {
            self.prepare_standby(Some(leader_conn))?;
            return Ok("rewound".into());
        }
        let why = output_text(&out);
        // Only a rewind that reached the leader and could not work justifies a rebuild; a
        // leader we cannot reach is tried again on the next loop.
        if why.contains("connection to server") || why.contains("could not connect") {
            return Err(format!("pg_rewind cannot reach {leader_conn}: {why}"));
        }
        self.rebuild(leader_conn)
            .map(|aside| format!("pg_rewind failed ({why}); rebuilt from a base backup, old data kept in {aside}"))
            .map_err(|e| format!("pg_rewind failed ({why}) and so did the rebuild: {e}"))
    }

    fn rebuild(&mut self, leader_conn: &str) -> Result<String, String> {
        let stamp = crate::records::unix_now();
        let aside = PathBuf::from(format!("{}.pgshift-{stamp}", self.data.path.display()));
        fs::rename(&self.data.path, &aside)
            .map_err(|e| format!("cannot move {} aside: {e}", self.data.path.display()))?;
        let (host, port) = leader_conn
            .rsplit_once(':')
            .unwrap_or((leader_conn, "5432"));
        let mut cmd = Command::new(self.bin.join("pg_basebackup"));
        cmd.arg("-D")
            .arg(&self.data.path)
            .args([
                "-X",
                "stream",
                "-c",
                "fast",
                "-h",
                host,
                "-p",
                port,
                "-U",
                &self.replication_user,
                "-w",
            ])
            .env("PGPASSFILE", &self.passfile);
        let out = run_as(&mut cmd, Some(&self.owner))
            .map_err(|e| format!("cannot run pg_basebackup: {e}"))?;
        if !out.status.success() {
            let _ = fs::remove_dir_all(&self.data.path);
            let _ = fs::rename(&aside, &self.data.path);
            return Err(format!("pg_basebackup failed: {}", output_text(&out)));
        }
        self.prepare_standby(Some(leader_conn))?;
        Ok(aside.display().to_string())
    }
}

fn reachable(conn: &str) -> Result<(), String> {
    use std::net::{TcpStream, ToSocketAddrs};
    let addr = conn
        .to_socket_addrs()
        .map_err(|e| format!("{conn}: {e}"))?
        .next()
        .ok_or_else(|| format!("{conn}: no address"))?;
    TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map(|_| ())
        .map_err(|e| format!("the leader's PostgreSQL at {conn} is unreachable: {e}"))
}

/// host:port of a primary_conninfo.
fn upstream_of(conninfo: &str) -> Option<String> {
    let host = conf_value(conninfo, "host")?;
    let port = conf_value(conninfo, "port").unwrap_or_else(|| "5432".into());
    Some(format!("{host}:{port}"))
}

fn conf_value(conninfo: &str, key: &str) -> Option<String> {
    // conninfo is key=value pairs; reuse the postgresql.conf reader on one line per pair.
    let lines: String = conninfo
        .split_whitespace()
        .map(|kv| format!("{kv}\n"))
        .collect();
    conf_get(&lines, key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsns_slots_upstreams() {
        assert_eq!(parse_lsn("0/3000060"), 0x3000060);
        assert_eq!(parse_lsn("1/0"), 1 << 32);
        assert_eq!(slot_name("db-1.Lab"), "db_1_lab");
        assert_eq!(
            upstream_of("host=db1 port=5433 user=replicator application_name=db2").as_deref(),
            Some("db1:5433")
        );
        assert_eq!(upstream_of("user=x"), None);
    }
}
