//! The local PostgreSQL: what it is doing, and the few things the agent does to it (start as
//! standby or primary, promote, follow another node, rewind, stop). The agent is the only
//! one who starts it (Debian's start.conf says manual), always through here.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use pgshift_core::atomic::Ownership;
use pgshift_core::datadir::DataDir;
use pgshift_core::pg::{Client, ConnectOptions, PgError, SqlState};
use pgshift_core::pgconf::conninfo_get;
use pgshift_core::process::{output_text, run_as, Owner};
use pgshift_core::standby::{
    self, move_aside, prepare_target, split_address, BaseBackup, ReplicationTls, Restore, Rewind,
    StandbyError, Upstream,
};

use crate::config::Config;

mod error;
pub use error::LocalPgError;

type Result<T, E = LocalPgError> = std::result::Result<T, E>;

/// pg_ctl waits up to its own -t 120 for a start; this bounds pg_ctl itself.
const PG_CTL_DEADLINE: Duration = Duration::from_secs(150);

/// The local server's answer to one statement; longer is a stopped or frozen server. The
/// post-promotion CHECKPOINT may outlast it on a big cluster: it goes on in the server, and
/// the loop only logs the error.
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether a standby streams from its upstream, as SQL: the WAL receiver streams and has
/// received at least what this server has replayed. The second half matters after a
/// failover: an old primary restarted as a standby replays its own WAL past the point where
/// the new leader's history forked, and (every `wal_retrieve_retry_interval`) its WAL receiver
/// streams the old timeline up to that fork for a moment before it finds the fork. Counted as
/// streaming then, it would be offered to readers (`/replica`) with commits the cluster is
/// about to rewind away; its receiver never gets past what it replayed.
/// "Received" is the later of written_lsn and flushed_lsn: a restarted receiver starts both
/// at the segment's start, and flushed_lsn moves only for WAL past what was replayed, so
/// with an idle primary (a rewound member, nothing written since) it stays behind for good
/// while written_lsn reaches the replay point; written_lsn is NULL until something arrives.
pub const STREAMING: &str = "EXISTS (SELECT 1 FROM pg_stat_wal_receiver
                                      WHERE status = 'streaming'
                                        AND GREATEST(written_lsn, flushed_lsn) >= pg_last_wal_replay_lsn())";

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
    /// The WAL receiver's status (`streaming`, `starting`, `waiting`, ...); None while no
    /// WAL receiver runs (it cannot connect, or the upstream refused it and it waits to
    /// try again).
    pub walreceiver: Option<String>,
    /// The physical replication slots on this server, by name.
    pub slots: Vec<String>,
    /// Of those, the ones no WAL sender uses now.
    pub inactive_slots: Vec<String>,
    /// The oldest WAL each slot keeps (restart_lsn), by name; absent for a slot that has
    /// reserved none yet.
    pub slot_lsns: std::collections::BTreeMap<String, u64>,
    /// primary_conninfo and primary_slot_name as the server runs with them.
    pub primary_conninfo: String,
    pub primary_slot_name: String,
    /// A changed setting waits for a restart (pg_settings.pending_restart).
    pub pending_restart: bool,
    /// When the running server started (Unix seconds): a restart asked earlier is done.
    pub started_at: u64,
    /// The data directory holds [`REBUILD_PENDING`]: only a rebuild may use it.
    pub rebuild_pending: bool,
}

/// Left in the data directory when pg_rewind reached the leader and failed (it may have
/// copied part of the leader's files already), when starts keep failing in recovery, and by
/// `pgshift reinit`: the directory is not to be started again, only replaced. Its text says
/// why. A rebuild that does not finish (called off, out of time, failed) puts that directory
/// back with this file in it, and the next rejoin rebuilds at once.
pub const REBUILD_PENDING: &str = "pgshift-rebuild-pending";

/// How an old primary or a stuck standby was made a copy of the leader's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejoined {
    Rewound,
    /// The directory had to be replaced (`why`: a failed pg_rewind, a reinit, ...); a fresh
    /// copy from `source` did, the old one kept at `aside`.
    Rebuilt {
        why: String,
        aside: String,
        /// What the copy came from: "a base backup of host:port" (the leader, or a member
        /// tagged clonefrom) or the pgBackRest restore.
        source: String,
    },
}

impl std::fmt::Display for Rejoined {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rejoined::Rewound => f.write_str("rewound"),
            Rejoined::Rebuilt { why, aside, source } => {
                write!(f, "{why}; rebuilt from {source}, old data kept in {aside}")
            }
        }
    }
}

/// How a stop ended: `pg_ctl` stopped the server, or it was not running (any more) when
/// asked: the fence guard, which acts on its own, may have stopped it a moment before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    Now,
    Already,
}

pub struct LocalPg {
    me: String,
    pub data: DataDir,
    bin: PathBuf,
    config_file: Option<PathBuf>,
    log_file: PathBuf,
    port: u16,
    socket_dir: PathBuf,
    pub owner: Owner,
    replication_user: String,
    passfile: PathBuf,
    tls: ReplicationTls,
    rebuild_max_rate: Option<String>,
    /// The pgbackrest program and the stanza a rebuild may restore from ([rebuild]).
    repository: Option<(PathBuf, String)>,
    client: Option<Client>,
}

/// This node's replication slot on its upstream (the one rule, `core::standby::slot`).
pub fn slot_name(node: &str) -> String {
    standby::slot_name(node)
}

/// An LSN as PostgreSQL writes it (`pg_lsn`'s text form).
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
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
        let data = DataDir::new(p.data_directory.clone());
        let log_file = p.log_file.clone().unwrap_or_else(|| {
            match data.debian_cluster(Path::new("/etc/postgresql")) {
                Some((version, cluster)) => PathBuf::from(format!(
                    "/var/log/postgresql/postgresql-{version}-{cluster}.log"
                )),
                None => cfg.state_dir.join("postgresql.log"),
            }
        });
        Ok(LocalPg {
            me: cfg.name.clone(),
            data,
            bin: p.bin_dir.clone(),
            config_file: p.config_file.clone(),
            log_file,
            port: p.port,
            socket_dir: p.socket_dir.clone(),
            owner: Owner::lookup(&p.user)?,
            replication_user: cfg.replication.user.clone(),
            passfile: cfg.replication.passfile.clone(),
            tls: ReplicationTls {
                sslmode: cfg.replication.sslmode.clone(),
                sslrootcert: cfg.replication.sslrootcert.clone(),
                sslcert: cfg.replication.sslcert.clone(),
                sslkey: cfg.replication.sslkey.clone(),
            },
            rebuild_max_rate: cfg.replication.rebuild_max_rate.clone(),
            repository: cfg
                .rebuild
                .stanza
                .clone()
                .map(|st| (cfg.rebuild.pgbackrest.clone(), st)),
            client: None,
        })
    }

    fn connect(&mut self) -> Result<&mut Client> {
        if self.client.is_none() {
            let opts = ConnectOptions {
                port: self.port,
                user: self.owner.name.clone(),
                unix_socket: Some(self.socket_dir.clone()),
                connect_timeout: Duration::from_secs(2),
                application_name: "pgshift-agent".into(),
                ..ConnectOptions::default()
            };
            let mut client = Client::connect(&opts)?;
            // A frozen server must not hold the loop (and the leadership) forever: the
            // statement fails, `with` drops the connection, the next loop reconnects.
            client.set_query_timeout(QUERY_TIMEOUT);
            self.client = Some(client);
        }
        Ok(self.client.as_mut().expect("just set"))
    }

    /// Runs `f` on the connection; a failure drops it so the next call reconnects.
    fn with<T>(&mut self, f: impl FnOnce(&mut Client) -> Result<T, PgError>) -> Result<T> {
        let r = self
            .connect()
            .and_then(|c| f(c).map_err(LocalPgError::from));
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
                rebuild_pending: self.data.path.join(REBUILD_PENDING).exists(),
                ..Observed::default()
            };
        }
        let row = self.with(|c| {
            c.query_one(
                &format!("SELECT pg_is_in_recovery(),
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
                                             WHERE name ~ '^[0-9A-F]{{8}}[.]history$'),
                                           (SELECT timeline_id FROM pg_control_checkpoint()))
                             ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END,
                        {STREAMING},
                        current_setting('primary_conninfo'),
                        (SELECT status FROM pg_stat_wal_receiver),
                        ARRAY(SELECT slot_name::text FROM pg_replication_slots
                               WHERE slot_type = 'physical' ORDER BY 1),
                        ARRAY(SELECT slot_name::text FROM pg_replication_slots
                               WHERE slot_type = 'physical' AND NOT active ORDER BY 1),
                        current_setting('primary_slot_name'),
                        ARRAY(SELECT COALESCE(restart_lsn::text, '') FROM pg_replication_slots
                               WHERE slot_type = 'physical' ORDER BY slot_name),
                        EXISTS (SELECT 1 FROM pg_settings WHERE pending_restart),
                        extract(epoch FROM pg_postmaster_start_time())::bigint"),
                &[],
            )
        });
        let settings = self
            .with(|c| {
                c.query(
                    "SELECT name, setting::bigint FROM pg_settings WHERE name = ANY($1)",
                    &[&crate::dcs::STANDBY_MINIMUMS],
                )
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
                let slots: Vec<String> = r.get(7);
                let restart: Vec<String> = r.get(10);
                let slot_lsns = slots
                    .iter()
                    .zip(&restart)
                    .filter(|(_, lsn)| !lsn.is_empty())
                    .map(|(s, lsn)| (s.clone(), parse_lsn(lsn)))
                    .collect();
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
                    walreceiver: r.get(6),
                    slots,
                    inactive_slots: r.get(8),
                    slot_lsns,
                    primary_conninfo: conninfo,
                    primary_slot_name: r.get(9),
                    rebuild_pending: self.data.path.join(REBUILD_PENDING).exists(),
                    pending_restart: r.get(11),
                    started_at: u64::try_from(r.get::<_, i64>(12)).unwrap_or(0),
                }
            }
            // Starting up or shutting down: running, but nothing to say yet.
            Err(_) => Observed {
                running: true,
                in_recovery: true,
                rebuild_pending: self.data.path.join(REBUILD_PENDING).exists(),
                ..Observed::default()
            },
        }
    }

    /// How this node reaches the member whose PostgreSQL is at `conn` (host:port).
    pub fn upstream(&self, conn: &str) -> Upstream {
        let (host, port) = split_address(conn);
        Upstream {
            host: host.to_string(),
            port,
            user: self.replication_user.clone(),
            passfile: Some(self.passfile.clone()),
            tls: self.tls.clone(),
            application_name: self.me.clone(),
        }
    }

    /// Whether the running standby's replication settings are other than what following
    /// `conn` writes (a TLS file added, a slot renamed, a standby built by other means).
    pub fn settings_differ(&self, obs: &Observed, conn: &str) -> bool {
        obs.running
            && obs.in_recovery
            && (obs.primary_conninfo != self.upstream(conn).primary_conninfo()
                || obs.primary_slot_name != slot_name(&self.me))
    }

    fn own(&self) -> Ownership {
        Ownership {
            uid: self.owner.uid,
            gid: self.owner.gid,
            mode: 0o600,
        }
    }

    /// Writes standby.signal and the replication settings into postgresql.auto.conf of the
    /// stopped server (`conn` None keeps the current upstream).
    pub fn prepare_standby(&self, conn: Option<&str>) -> Result<()> {
        let info = conn.map(|c| self.upstream(c).primary_conninfo());
        let slot = slot_name(&self.me);
        standby::write_standby_files(
            &self.data.path,
            info.as_deref().map(|i| (i, Some(slot.as_str()))),
            self.own(),
        )
        .map(drop)
        .map_err(LocalPgError::from)
    }

    /// Starts the server and waits until it accepts connections. Its output always goes to
    /// the log file: without `-l` the postmaster would write to (and hold open) ours.
    pub fn start(&mut self) -> Result<()> {
        self.ensure_log_file()?;
        let mut cmd = Command::new(self.bin.join("pg_ctl"));
        cmd.args(["start", "-w", "-t", "120", "-s", "-D"])
            .arg(&self.data.path)
            .arg("-l")
            .arg(&self.log_file);
        if let Some(cf) = &self.config_file {
            cmd.arg("-o")
                .arg(format!("-c config_file={}", cf.display()));
        }
        let out = run_as(&mut cmd, Some(&self.owner), PG_CTL_DEADLINE).map_err(|source| {
            LocalPgError::Run {
                program: "pg_ctl",
                source,
            }
        })?;
        if out.status.success() {
            Ok(())
        } else {
            Err(LocalPgError::Failed {
                command: "pg_ctl start".into(),
                output: output_text(&out),
            })
        }
    }

    /// pg_ctl opens the log file as the server's owner, who may not be allowed to create it
    /// (the agent's state directory is root's): create it for them.
    fn ensure_log_file(&self) -> Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = &self.log_file;
        if path.exists() {
            return Ok(());
        }
        let fail = |source| LocalPgError::LogFile {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(fail)?;
        }
        let created = fs::OpenOptions::new()
            .append(true)
            .create_new(true)
            .mode(0o640)
            .open(path);
        match created {
            // Created by the owner itself (the agent runs as the owner) needs nothing more;
            // its unit forbids chown anyway.
            Ok(_) if nix::unistd::Uid::effective().as_raw() == self.owner.uid => Ok(()),
            Ok(_) => std::os::unix::fs::chown(path, Some(self.owner.uid), Some(self.owner.gid))
                .map_err(fail),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(fail(e)),
        }
    }

    pub fn log_file(&self) -> &Path {
        &self.log_file
    }

    /// Why the last start gave up in recovery, from the end of the server's log (see
    /// [`recovery_failure`]).
    pub fn recovery_failure(&self) -> Option<String> {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = fs::File::open(&self.log_file).ok()?;
        let len = f.metadata().ok()?.len();
        f.seek(SeekFrom::Start(len.saturating_sub(16 * 1024)))
            .ok()?;
        let mut tail = Vec::new();
        f.read_to_end(&mut tail).ok()?;
        recovery_failure(&String::from_utf8_lossy(&tail))
    }

    /// Marks the data directory for a rebuild: the next rejoin copies it afresh (see
    /// [`Rejoiner::run`]), the old one moved aside.
    pub fn mark_rebuild(&self, why: &str) -> Result<()> {
        let marker = self.data.path.join(REBUILD_PENDING);
        pgshift_core::atomic::write_atomic(&marker, why.as_bytes(), Some(self.own())).map_err(
            |source| {
                StandbyError::Write {
                    path: marker.clone(),
                    source,
                }
                .into()
            },
        )
    }

    /// `fast` waits for sessions to be cut; `immediate` is the fence (no shutdown checkpoint).
    pub fn stop(&mut self, mode: &str) -> Result<Stopped> {
        self.client = None;
        stop_server(&self.bin, &self.data, &self.owner, mode)
    }

    /// Promotes and returns once the server accepts writes. (pg_promote's own wait polls
    /// every 100 ms; polling here every 10 ms takes up to that much off the write gap.)
    /// `keep` runs every ~250 ms of waiting: the caller renews its leadership there (the
    /// startup process may be busy in restore_command for a while before it notices).
    pub fn promote(&mut self, keep: &mut dyn FnMut()) -> Result<()> {
        let done = self.with(|c| {
            c.batch_execute("SELECT pg_promote(false)")?;
            tracing::info!("promotion: requested");
            for i in 0..6000 {
                if i % 25 == 24 {
                    keep();
                }
                let recovering: bool = c.query_one("SELECT pg_is_in_recovery()", &[])?.get(0);
                if !recovering {
                    return Ok(true);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok(false)
        })?;
        if done {
            Ok(())
        } else {
            Err(LocalPgError::State(
                "the promotion did not finish within 60 s".into(),
            ))
        }
    }

    /// A checkpoint on the new timeline after a promotion: pg_rewind of the old primary
    /// needs it (the control file names the timeline only after one).
    pub fn checkpoint(&mut self) -> Result<()> {
        self.with(|c| c.batch_execute("CHECKPOINT"))
    }

    /// Streams from the node at `conn`: primary_conninfo and slot, applied by reload.
    pub fn follow(&mut self, conn: &str) -> Result<()> {
        let info = self.upstream(conn).primary_conninfo();
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
        })
    }

    /// After a clean shutdown: where its last record, the shutdown checkpoint, starts.
    pub fn shutdown_checkpoint(&self) -> Result<u64> {
        let c = self
            .data
            .control_data(&self.bin)
            .map_err(|e| LocalPgError::State(format!("pg_controldata: {e}")))?;
        if c.state != "shut down" {
            return Err(LocalPgError::State(format!(
                "the server is not cleanly shut down (pg_controldata says {:?})",
                c.state
            )));
        }
        c.latest_checkpoint
            .as_deref()
            .map(parse_lsn)
            .filter(|l| *l > 0)
            .ok_or_else(|| {
                LocalPgError::State("pg_controldata shows no checkpoint location".into())
            })
    }

    pub fn sync_names(&mut self) -> Result<String> {
        self.with(|c| {
            c.query_one("SELECT current_setting('synchronous_standby_names')", &[])
                .map(|r| r.get(0))
        })
    }

    /// `synchronous_standby_names` through ALTER SYSTEM and a reload (also on a standby,
    /// ahead of its promotion).
    /// ALTER SYSTEM SET `name` = `value`, or RESET `name` (PostgreSQL checks the name and
    /// the value, and writes nothing when either is wrong).
    pub fn set_parameter(&mut self, name: &str, value: Option<&str>) -> Result<()> {
        use pgshift_core::pg::sql::{quote_ident, quote_literal};
        let statement = match value {
            Some(v) => format!(
                "ALTER SYSTEM SET {} = {}",
                quote_ident(name),
                quote_literal(v)
            ),
            None => format!("ALTER SYSTEM RESET {}", quote_ident(name)),
        };
        self.with(|c| c.batch_execute(&statement))?;
        Ok(())
    }

    pub fn reload_config(&mut self) -> Result<()> {
        self.with(|c| c.batch_execute("SELECT pg_reload_conf()"))?;
        Ok(())
    }

    pub fn set_sync_names(&mut self, value: &str) -> Result<()> {
        let q = pgshift_core::pg::sql::quote_literal(value);
        self.with(|c| {
            // Two statements, not one batch: a batch runs as one transaction, and ALTER
            // SYSTEM refuses to run inside one.
            c.batch_execute(&format!("ALTER SYSTEM SET synchronous_standby_names = {q}"))
                .and_then(|_| c.batch_execute("SELECT pg_reload_conf()"))
        })?;
        // The reload is asynchronous: wait (briefly) until this backend sees it.
        for _ in 0..50 {
            if self.sync_names()? == value {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Err(LocalPgError::State(format!(
            "synchronous_standby_names is not {value:?} after the reload"
        )))
    }

    /// Whether `standby` confirms commits synchronously and has flushed everything written
    /// so far (so commits acknowledged before it became synchronous are on it too).
    pub fn is_sync_and_caught_up(&mut self, standby: &str) -> Result<bool> {
        self.with(|c| {
            c.query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_stat_replication
                                 WHERE application_name = $1 AND sync_state = 'sync'
                                   AND flush_lsn >= pg_current_wal_lsn())",
                &[&standby],
            )
            .map(|r| r.get(0))
        })
    }

    /// How many of `voters` PostgreSQL counts for its `ANY k` quorum and have flushed every
    /// WAL record written so far (so every commit acknowledged until now).
    pub fn quorum_caught_up(&mut self, voters: &[String]) -> Result<usize> {
        self.with(|c| {
            c.query_one(
                "SELECT count(*) FROM pg_stat_replication
                  WHERE application_name = ANY($1) AND sync_state = 'quorum'
                    AND flush_lsn >= pg_current_wal_lsn()",
                &[&voters],
            )
            .map(|r| r.get::<_, i64>(0) as usize)
        })
    }

    /// Creates the physical slots among `slots` that do not exist (yet, or any more); the
    /// ones it created. One statement, whatever the count. Each reserves WAL at once: on a
    /// standby that is what lets it be advanced (`advance_slots`), on a primary it keeps
    /// the WAL a member needs from now, not only from its first connection.
    pub fn create_slots(&mut self, slots: &[String]) -> Result<Vec<String>> {
        self.with(|c| {
            c.query(
                "SELECT (pg_create_physical_replication_slot(name, true)).slot_name::text
                   FROM unnest($1::text[]) AS name
                  WHERE name NOT IN (SELECT slot_name FROM pg_replication_slots)",
                &[&slots],
            )
            .map(|rows| rows.iter().map(|r| r.get(0)).collect())
        })
    }

    /// Moves each unused slot of `targets` (name, LSN) forward to its LSN, never past what
    /// this server has (replayed, on a standby) and never back; the ones it moved. A
    /// standby keeps the slots the leader keeps, this way, so that once promoted it still
    /// has the WAL every member needs.
    pub fn advance_slots(&mut self, targets: &[(String, u64)]) -> Result<Vec<String>> {
        let names: Vec<&str> = targets.iter().map(|(n, _)| n.as_str()).collect();
        let lsns: Vec<String> = targets.iter().map(|(_, l)| format_lsn(*l)).collect();
        self.with(|c| {
            // OFFSET 0 keeps the filter below the advance (no advance of a slot it excludes:
            // backwards is an error).
            c.query(
                "SELECT (pg_replication_slot_advance(name, lsn)).slot_name::text FROM (
                   SELECT s.slot_name AS name,
                          LEAST(t.lsn::pg_lsn, CASE WHEN pg_is_in_recovery()
                                                    THEN pg_last_wal_replay_lsn()
                                                    ELSE pg_current_wal_flush_lsn() END) AS lsn,
                          s.restart_lsn
                     FROM unnest($1::text[], $2::text[]) AS t(name, lsn)
                     JOIN pg_replication_slots s ON s.slot_name = t.name
                    WHERE s.slot_type = 'physical' AND NOT s.active
                      AND s.restart_lsn IS NOT NULL
                   OFFSET 0) q
                  WHERE lsn > restart_lsn",
                &[&names, &lsns],
            )
            .map(|rows| rows.iter().map(|r| r.get(0)).collect())
        })
    }

    /// Drops those of `slots` that no WAL sender uses; the ones it dropped. A slot taken
    /// meanwhile stays (and is dropped on a later call once it is free again).
    pub fn drop_unused_slots(&mut self, slots: &[String]) -> Result<Vec<String>> {
        let mut dropped = Vec::new();
        for slot in slots {
            let r = self.with(|c| {
                c.execute(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
                      WHERE slot_name = $1 AND NOT active",
                    &[slot],
                )
            });
            match r {
                Ok(1) => dropped.push(slot.clone()),
                Ok(_) => {}
                // Taken (55006) or gone (42704) between the look and the drop: not ours
                // to drop now.
                Err(e)
                    if e.code() == Some(&SqlState::OBJECT_IN_USE)
                        || e.code() == Some(&SqlState::UNDEFINED_OBJECT) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(dropped)
    }

    /// What a rejoin from the leader at `leader_conn` needs, detached from this handle so a
    /// worker can run it while the loop goes on observing (see [`Rejoiner::run`]).
    /// `clone_conn`: a member to copy a rebuild from instead of the leader (tagged
    /// clonefrom), the leader if that fails. `from_repository`: a rebuild restores from the
    /// pgBackRest repository first (when [rebuild] names a stanza).
    pub fn rejoiner(
        &self,
        leader_conn: &str,
        clone_conn: Option<&str>,
        rewind_user: &str,
        from_repository: bool,
    ) -> Rejoiner {
        Rejoiner {
            me: self.me.clone(),
            data: self.data.path.clone(),
            bin: self.bin.clone(),
            config_file: self.config_file.clone(),
            owner: self.owner.clone(),
            leader_conn: leader_conn.to_string(),
            upstream: self.upstream(leader_conn),
            clone: clone_conn.map(|c| (c.to_string(), self.upstream(c))),
            rewind_user: rewind_user.to_string(),
            max_rate: self.rebuild_max_rate.clone(),
            repository: self.repository.clone().filter(|_| from_repository),
            own: self.own(),
        }
    }
}

/// The FATAL that made the server's last start fail in recovery, when it did: after the log's
/// last "starting PostgreSQL" line, the startup process gave up ("shutting down due to
/// startup process failure"), e.g. WAL it cannot replay. Any other failed start (a setting,
/// a busy port, a full disk) is not this, and no rebuild would cure it.
pub fn recovery_failure(log: &str) -> Option<String> {
    let start = log.rfind("starting PostgreSQL")?;
    let last = &log[start..];
    if !last.contains("shutting down due to startup process failure") {
        return None;
    }
    let fatal = last
        .lines()
        .rev()
        .find_map(|l| l.split_once("FATAL:").map(|(_, m)| m.trim()))
        .unwrap_or("the startup process failed");
    Some(fatal.to_string())
}

/// Makes this node a copy of the leader's history again (see [`Rejoiner::run`]); owns what
/// it needs, so it runs on a thread of its own.
pub struct Rejoiner {
    me: String,
    data: PathBuf,
    bin: PathBuf,
    config_file: Option<PathBuf>,
    owner: Owner,
    leader_conn: String,
    upstream: Upstream,
    /// Where a rebuild copies from first (host:port and its connection), if not the leader.
    clone: Option<(String, Upstream)>,
    rewind_user: String,
    max_rate: Option<String>,
    /// Restore a rebuild from this pgbackrest program and stanza first.
    repository: Option<(PathBuf, String)>,
    own: Ownership,
}

/// What a rebuild fills the emptied data directory with.
enum Copy<'a> {
    BaseBackup(&'a Upstream),
    Restore { program: &'a Path, stanza: &'a str },
}

impl Rejoiner {
    /// Stops the server, then pg_rewind; when that reached the leader and could not work, a
    /// fresh base backup with the old directory moved aside (never deleted). All of it ends by
    /// `deadline`. `cancel` calls it off where that leaves the directory whole: a running
    /// pg_rewind is let finish (killed half-way it would leave a directory nothing can use),
    /// a rebuild is not started or is killed and the old directory put back. `phase` hears
    /// when the rewind and the rebuild start.
    pub fn run(
        &mut self,
        deadline: Instant,
        cancel: &AtomicBool,
        phase: &mut dyn FnMut(crate::agent::Phase),
    ) -> Result<Rejoined> {
        use crate::agent::Phase;
        use std::sync::atomic::Ordering;
        // Stopping a standby only to find the leader unreachable would take a working
        // (if lagging) copy away for nothing.
        reachable(&self.leader_conn, Duration::from_secs(2))?;
        let dd = DataDir::new(self.data.clone());
        stop_server(&self.bin, &dd, &self.owner, "fast")?;
        if cancel.load(Ordering::Relaxed) {
            return Err(LocalPgError::Cancelled(
                "rejoin called off before pg_rewind; the data directory is as it was".into(),
            ));
        }
        let left = || deadline.saturating_duration_since(Instant::now());
        let marker = self.data.join(REBUILD_PENDING);
        let why = if marker.exists() {
            // It says why (a reinit, a pg_rewind that stopped half-way, failed starts).
            fs::read_to_string(&marker)
                .ok()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
                .unwrap_or_else(|| format!("the data directory is marked ({REBUILD_PENDING})"))
        } else {
            phase(Phase::Rewinding);
            let rewound = Rewind {
                bin_dir: &self.bin,
                target: &self.data,
                upstream: &self.upstream,
                user: &self.rewind_user,
                config_file: self.config_file.as_deref(),
                owner: &self.owner,
                deadline: left(),
                cancel: None,
            }
            .run();
            match rewound {
                Ok(()) => {
                    self.standby_files()?;
                    return Ok(Rejoined::Rewound);
                }
                // Only a rewind that reached the leader and could not work justifies a
                // rebuild; a leader we cannot reach is tried again on the next loop, and one
                // out of time is not replaced by something longer. The directory it leaves
                // may be half the leader's: never to be started again.
                Err(e @ StandbyError::Rewind { .. }) => {
                    pgshift_core::atomic::write_atomic(
                        &marker,
                        e.to_string().as_bytes(),
                        Some(self.own),
                    )
                    .map_err(|source| StandbyError::Write {
                        path: marker.clone(),
                        source,
                    })?;
                    e.to_string()
                }
                Err(e) => return Err(e.into()),
            }
        };
        if cancel.load(Ordering::Relaxed) {
            return Err(LocalPgError::Cancelled(format!(
                "{why}; the rebuild was called off before it started (the next rejoin rebuilds)"
            )));
        }
        phase(Phase::Rebuilding);
        // From the pgBackRest repository or the member tagged clonefrom first (either spares
        // the leader the copy), from the leader if that fails (the directory is back as it
        // was after a failed copy).
        let mut why = why;
        let mut first = Vec::new();
        if let Some((program, stanza)) = &self.repository {
            first.push((
                format!("a pgBackRest restore of stanza {stanza}"),
                Copy::Restore { program, stanza },
            ));
        }
        if let Some((source, from)) = &self.clone {
            first.push((format!("a base backup of {source}"), Copy::BaseBackup(from)));
        }
        for (source, copy) in first {
            match self.rebuild(copy, left(), cancel) {
                Ok(aside) => return Ok(Rejoined::Rebuilt { why, aside, source }),
                Err(_) if cancel.load(Ordering::Relaxed) => {
                    return Err(LocalPgError::Cancelled(format!(
                        "{why}; the rebuild from {source} was called off"
                    )))
                }
                Err(e) => why = format!("{why}; {source} failed ({e})"),
            }
        }
        match self.rebuild(Copy::BaseBackup(&self.upstream), left(), cancel) {
            Ok(aside) => Ok(Rejoined::Rebuilt {
                why,
                aside,
                source: format!("a base backup of {}", self.leader_conn),
            }),
            Err(e) => Err(LocalPgError::Rebuild {
                why,
                rebuild: Box::new(e),
            }),
        }
    }

    fn standby_files(&self) -> Result<()> {
        let info = self.upstream.primary_conninfo();
        standby::write_standby_files(
            &self.data,
            Some((&info, Some(&slot_name(&self.me)))),
            self.own,
        )?;
        Ok(())
    }

    /// `copy` in place of the data directory (the old one moved aside), replication pointed
    /// at the leader.
    fn rebuild(&self, copy: Copy<'_>, deadline: Duration, cancel: &AtomicBool) -> Result<String> {
        let aside = move_aside(&self.data)?;
        let built = prepare_target(&self.data, &self.owner).and_then(|_| match copy {
            Copy::BaseBackup(from) => BaseBackup {
                bin_dir: &self.bin,
                target: &self.data,
                upstream: from,
                password: None,
                slot: None,
                max_rate: self.max_rate.as_deref(),
                owner: &self.owner,
                deadline,
                cancel: Some(cancel),
            }
            .run(),
            Copy::Restore { program, stanza } => Restore {
                program,
                config: None,
                stanza,
                target: &self.data,
                delta: false,
                owner: &self.owner,
                deadline,
                cancel: Some(cancel),
            }
            .run(),
        });
        if let Err(e) = built {
            // The old directory comes back: a half copy is worth nothing.
            let _ = fs::remove_dir_all(&self.data);
            let _ = fs::rename(&aside, &self.data);
            return Err(e.into());
        }
        self.standby_files()?;
        Ok(aside.display().to_string())
    }
}

/// `pg_ctl stop -m mode` and a wait until the postmaster is gone.
fn stop_server(bin: &Path, data: &DataDir, owner: &Owner, mode: &str) -> Result<Stopped> {
    if data.postmaster().ok().flatten().is_none() {
        return Ok(Stopped::Already);
    }
    // pg_ctl -W and our own wait: pg_ctl's checks the pid file every 100 ms, and a
    // switchover's write gap is made of such waits.
    let mut cmd = Command::new(bin.join("pg_ctl"));
    cmd.args(["stop", "-W", "-s", "-m", mode, "-D"])
        .arg(&data.path);
    let out =
        run_as(&mut cmd, Some(owner), PG_CTL_DEADLINE).map_err(|source| LocalPgError::Run {
            program: "pg_ctl",
            source,
        })?;
    if !out.status.success() {
        // Gone meanwhile (pg_ctl then finds no pid file): stopped by someone else.
        if data.postmaster().ok().flatten().is_none() {
            return Ok(Stopped::Already);
        }
        return Err(LocalPgError::Failed {
            command: format!("pg_ctl stop -m {mode}"),
            output: output_text(&out),
        });
    }
    for _ in 0..6000 {
        if data.postmaster().ok().flatten().is_none() {
            return Ok(Stopped::Now);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err(LocalPgError::State(format!(
        "PostgreSQL did not stop within 60 s (-m {mode})"
    )))
}

/// Whether a TCP connection to `conn` (host:port) opens within `timeout`.
pub fn reachable(conn: &str, timeout: Duration) -> Result<()> {
    use std::net::{TcpStream, ToSocketAddrs};
    let fail = |reason: String| LocalPgError::Unreachable {
        conn: conn.to_string(),
        reason,
    };
    let addr = conn
        .to_socket_addrs()
        .map_err(|e| fail(e.to_string()))?
        .next()
        .ok_or_else(|| fail("no address".into()))?;
    TcpStream::connect_timeout(&addr, timeout)
        .map(|_| ())
        .map_err(|e| fail(e.to_string()))
}

/// host:port of a primary_conninfo.
fn upstream_of(conninfo: &str) -> Option<String> {
    let host = conninfo_get(conninfo, "host")?;
    let port = conninfo_get(conninfo, "port").unwrap_or_else(|| "5432".into());
    Some(format!("{host}:{port}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_start_that_failed_in_recovery_is_told_from_other_failures() {
        let failed = "LOG:  starting PostgreSQL 15.18 on x86_64\n\
            LOG:  entering standby mode\n\
            FATAL:  according to history file, WAL location 0/307E518 belongs to timeline 1, but previous recovered WAL file came from timeline 2\n\
            LOG:  startup process (PID 9861) exited with exit code 1\n\
            LOG:  shutting down due to startup process failure\n";
        assert_eq!(
            recovery_failure(failed).as_deref(),
            Some("according to history file, WAL location 0/307E518 belongs to timeline 1, but previous recovered WAL file came from timeline 2")
        );
        // A later start that got further is judged on its own lines.
        assert_eq!(
            recovery_failure(&format!(
                "{failed}LOG:  starting PostgreSQL 15.18\nFATAL:  could not create lock file\n"
            )),
            None
        );
        let setting =
            "LOG:  starting PostgreSQL 15.18\nFATAL:  configuration file contains errors\n";
        assert_eq!(recovery_failure(setting), None);
        assert_eq!(recovery_failure(""), None);
    }

    #[test]
    fn lsns_slots_upstreams() {
        assert_eq!(parse_lsn("0/3000060"), 0x3000060);
        assert_eq!(parse_lsn("1/0"), 1 << 32);
        assert_eq!(format_lsn(0x1_0300_0060), "1/3000060");
        assert_eq!(parse_lsn(&format_lsn(0x3000060)), 0x3000060);
        assert_eq!(slot_name("db-1.Lab"), "db_1_lab");
        assert_eq!(
            upstream_of("host=db1 port=5433 user=replicator application_name=db2").as_deref(),
            Some("db1:5433")
        );
        assert_eq!(upstream_of("user=x"), None);
    }
}
