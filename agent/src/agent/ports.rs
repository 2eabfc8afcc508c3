//! What the loop needs from the world, as traits: the cluster's store in etcd ([`Store`]), the
//! local PostgreSQL ([`Postgres`]) and the fence guard ([`Fence`]). The agent runs on
//! [`crate::dcs::Dcs`], [`crate::postgres::LocalPg`] and [`crate::guard::Guard`]; its unit
//! tests run the same loop on fakes, in milliseconds and without a lab.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use crate::dcs::{Dcs, HistoryEntry, MemberRecord, View};
use crate::decide::Timing;
use crate::etcd;
use crate::guard::Guard;
use crate::postgres::{self, LocalPg, LocalPgError, Observed, Rejoined, Stopped};
use crate::records::{Outcome, Request, SyncState};

/// The cluster's keys in etcd (see `dcs`).
pub trait Store {
    fn read(&self) -> Result<View, etcd::Error>;
    /// Keeps the lease alive; false when it expired.
    fn keepalive(&self, lease: i64) -> Result<bool, etcd::Error>;
    fn grant(&self, ttl_secs: i64) -> Result<i64, etcd::Error>;
    fn publish(&self, me: &MemberRecord, lease: i64) -> Result<(), etcd::Error>;
    /// The leader key on `expected` (None: only if absent): the new revision, or None when
    /// someone else changed it first.
    fn write_leader(
        &self,
        me: &str,
        lease: i64,
        expected: Option<i64>,
    ) -> Result<Option<i64>, etcd::Error>;
    /// `write_leader` on the leader's own revision within `budget` (a leader renewing ahead
    /// of its read: one call's budget, at most what is left before its deadline).
    fn renew_leader(
        &self,
        me: &str,
        lease: i64,
        expected: i64,
        _budget: Duration,
    ) -> Result<Option<i64>, etcd::Error> {
        self.write_leader(me, lease, Some(expected))
    }
    fn release_leader(&self, revision: i64) -> Result<bool, etcd::Error>;
    fn file_request(&self, r: &Request) -> Result<bool, etcd::Error>;
    fn update_request(&self, r: &Request, revision: i64) -> Result<bool, etcd::Error>;
    fn end_request(&self, revision: i64, outcome: &Outcome) -> Result<bool, etcd::Error>;
    fn write_sync(&self, s: &SyncState) -> Result<(), etcd::Error>;
    fn write_seen(&self, seen: &BTreeMap<String, u64>) -> Result<(), etcd::Error>;
    fn record_history(&self, view: &View, entry: HistoryEntry) -> Result<(), etcd::Error>;
    /// Deletes this node's request of `kind` at `revision` (`records::Reinit::KIND`,
    /// `records::Restart::KIND`).
    fn end_node_request(&self, kind: &str, node: &str, revision: i64) -> Result<bool, etcd::Error>;
}

impl Store for Dcs {
    fn read(&self) -> Result<View, etcd::Error> {
        Dcs::read(self)
    }
    fn keepalive(&self, lease: i64) -> Result<bool, etcd::Error> {
        self.etcd.lease_keepalive(lease)
    }
    fn grant(&self, ttl_secs: i64) -> Result<i64, etcd::Error> {
        self.etcd.lease_grant(ttl_secs)
    }
    fn publish(&self, me: &MemberRecord, lease: i64) -> Result<(), etcd::Error> {
        Dcs::publish(self, me, lease)
    }
    fn write_leader(
        &self,
        me: &str,
        lease: i64,
        expected: Option<i64>,
    ) -> Result<Option<i64>, etcd::Error> {
        Dcs::write_leader(self, me, lease, expected)
    }
    fn renew_leader(
        &self,
        me: &str,
        lease: i64,
        expected: i64,
        budget: Duration,
    ) -> Result<Option<i64>, etcd::Error> {
        self.write_leader_within(me, lease, Some(expected), budget)
    }
    fn release_leader(&self, revision: i64) -> Result<bool, etcd::Error> {
        Dcs::release_leader(self, revision)
    }
    fn file_request(&self, r: &Request) -> Result<bool, etcd::Error> {
        Dcs::file_request(self, r)
    }
    fn update_request(&self, r: &Request, revision: i64) -> Result<bool, etcd::Error> {
        Dcs::update_request(self, r, revision)
    }
    fn end_request(&self, revision: i64, outcome: &Outcome) -> Result<bool, etcd::Error> {
        Dcs::end_request(self, revision, outcome)
    }
    fn write_sync(&self, s: &SyncState) -> Result<(), etcd::Error> {
        Dcs::write_sync(self, s)
    }
    fn write_seen(&self, seen: &BTreeMap<String, u64>) -> Result<(), etcd::Error> {
        Dcs::write_seen(self, seen)
    }
    fn record_history(&self, view: &View, entry: HistoryEntry) -> Result<(), etcd::Error> {
        Dcs::record_history(self, view, entry)
    }
    fn end_node_request(&self, kind: &str, node: &str, revision: i64) -> Result<bool, etcd::Error> {
        Dcs::end_node_request(self, kind, node, revision)
    }
}

type PgResult<T> = Result<T, LocalPgError>;

/// The local PostgreSQL (see `postgres`).
pub trait Postgres {
    fn observe(&mut self) -> Observed;
    /// Whether a running standby's replication settings differ from following `conn`.
    fn settings_differ(&self, obs: &Observed, conn: &str) -> bool;
    /// Whether the leader's PostgreSQL at `conn` accepts a TCP connection (why not).
    fn reachable(&self, conn: &str) -> Result<(), String>;
    fn prepare_standby(&self, conn: Option<&str>) -> PgResult<()>;
    fn start(&mut self) -> PgResult<()>;
    fn stop(&mut self, mode: &str) -> PgResult<Stopped>;
    /// Promotes; `keep` runs every ~250 ms of waiting.
    fn promote(&mut self, keep: &mut dyn FnMut()) -> PgResult<()>;
    fn checkpoint(&mut self) -> PgResult<()>;
    fn follow(&mut self, conn: &str) -> PgResult<()>;
    fn shutdown_checkpoint(&self) -> PgResult<u64>;
    fn sync_names(&mut self) -> PgResult<String>;
    fn set_sync_names(&mut self, value: &str) -> PgResult<()>;
    fn is_sync_and_caught_up(&mut self, standby: &str) -> PgResult<bool>;
    fn quorum_caught_up(&mut self, voters: &[String]) -> PgResult<usize>;
    fn create_slots(&mut self, slots: &[String]) -> PgResult<Vec<String>>;
    fn drop_unused_slots(&mut self, slots: &[String]) -> PgResult<Vec<String>>;
    fn advance_slots(&mut self, targets: &[(String, u64)]) -> PgResult<Vec<String>>;
    /// A long rejoin, meant to run on the worker: what it needs, detached from this handle
    /// (which the loop keeps using meanwhile).
    /// `from_repository`: a rebuild restores from the pgBackRest repository first.
    fn rejoin_job(
        &self,
        leader_conn: &str,
        clone_conn: Option<&str>,
        rewind_user: &str,
        from_repository: bool,
    ) -> Box<dyn RejoinJob>;
    /// The data directory, for the fence guard.
    fn data_directory(&self) -> PathBuf;
    /// Why the last start gave up in recovery (WAL it cannot replay), if it did.
    fn recovery_failure(&self) -> Option<String>;
    /// Marks the data directory so that the next rejoin rebuilds it.
    fn mark_rebuild(&self, why: &str) -> PgResult<()>;
    /// ALTER SYSTEM SET `name` to `value` (None: RESET).
    fn set_parameter(&mut self, name: &str, value: Option<&str>) -> PgResult<()>;
    /// pg_reload_conf().
    fn reload_config(&mut self) -> PgResult<()>;
}

/// A rejoin that runs off the loop: stop, pg_rewind, and a rebuild if the rewind cannot work.
pub trait RejoinJob: Send {
    /// `phase` is told when the rewind starts and when a rebuild starts.
    fn run(
        &mut self,
        deadline: Instant,
        cancel: &AtomicBool,
        phase: &mut dyn FnMut(Phase),
    ) -> PgResult<Rejoined>;
}

/// Where a rejoin is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Rewinding,
    Rebuilding,
}

impl Postgres for LocalPg {
    fn observe(&mut self) -> Observed {
        LocalPg::observe(self)
    }
    fn settings_differ(&self, obs: &Observed, conn: &str) -> bool {
        LocalPg::settings_differ(self, obs, conn)
    }
    fn reachable(&self, conn: &str) -> Result<(), String> {
        postgres::reachable(conn, Duration::from_millis(500)).map_err(|e| e.to_string())
    }
    fn prepare_standby(&self, conn: Option<&str>) -> PgResult<()> {
        LocalPg::prepare_standby(self, conn)
    }
    fn start(&mut self) -> PgResult<()> {
        LocalPg::start(self)
    }
    fn stop(&mut self, mode: &str) -> PgResult<Stopped> {
        LocalPg::stop(self, mode)
    }
    fn promote(&mut self, keep: &mut dyn FnMut()) -> PgResult<()> {
        LocalPg::promote(self, keep)
    }
    fn checkpoint(&mut self) -> PgResult<()> {
        LocalPg::checkpoint(self)
    }
    fn follow(&mut self, conn: &str) -> PgResult<()> {
        LocalPg::follow(self, conn)
    }
    fn shutdown_checkpoint(&self) -> PgResult<u64> {
        LocalPg::shutdown_checkpoint(self)
    }
    fn sync_names(&mut self) -> PgResult<String> {
        LocalPg::sync_names(self)
    }
    fn set_sync_names(&mut self, value: &str) -> PgResult<()> {
        LocalPg::set_sync_names(self, value)
    }
    fn is_sync_and_caught_up(&mut self, standby: &str) -> PgResult<bool> {
        LocalPg::is_sync_and_caught_up(self, standby)
    }
    fn quorum_caught_up(&mut self, voters: &[String]) -> PgResult<usize> {
        LocalPg::quorum_caught_up(self, voters)
    }
    fn create_slots(&mut self, slots: &[String]) -> PgResult<Vec<String>> {
        LocalPg::create_slots(self, slots)
    }
    fn drop_unused_slots(&mut self, slots: &[String]) -> PgResult<Vec<String>> {
        LocalPg::drop_unused_slots(self, slots)
    }
    fn advance_slots(&mut self, targets: &[(String, u64)]) -> PgResult<Vec<String>> {
        LocalPg::advance_slots(self, targets)
    }
    fn rejoin_job(
        &self,
        leader_conn: &str,
        clone_conn: Option<&str>,
        rewind_user: &str,
        from_repository: bool,
    ) -> Box<dyn RejoinJob> {
        Box::new(LocalPg::rejoiner(
            self,
            leader_conn,
            clone_conn,
            rewind_user,
            from_repository,
        ))
    }
    fn data_directory(&self) -> PathBuf {
        self.data.path.clone()
    }
    fn recovery_failure(&self) -> Option<String> {
        LocalPg::recovery_failure(self)
    }
    fn mark_rebuild(&self, why: &str) -> PgResult<()> {
        LocalPg::mark_rebuild(self, why)
    }
    fn set_parameter(&mut self, name: &str, value: Option<&str>) -> PgResult<()> {
        LocalPg::set_parameter(self, name, value)
    }
    fn reload_config(&mut self) -> PgResult<()> {
        LocalPg::reload_config(self)
    }
}

impl RejoinJob for postgres::Rejoiner {
    fn run(
        &mut self,
        deadline: Instant,
        cancel: &AtomicBool,
        phase: &mut dyn FnMut(Phase),
    ) -> PgResult<Rejoined> {
        postgres::Rejoiner::run(self, deadline, cancel, phase)
    }
}

/// The fence guard: the second process that stops PostgreSQL when the leader's deadline
/// passes (see `guard`).
pub trait Fence {
    /// Writes are allowed until `deadline` (monotonic ms).
    fn primary_until(&mut self, deadline: u64) -> std::io::Result<()>;
    fn standby(&mut self) -> std::io::Result<()>;
    /// Starts a new guard if the last one is gone (an error if that fails).
    fn ensure_alive(&mut self) -> Result<(), String>;
    /// The timing in force (at start and after a reload): the watchdog's timeout follows it.
    fn timing_changed(&mut self, _timing: &Timing) {}
}

/// The real guard, started again when it exits.
pub struct GuardProcess {
    pub guard: Guard,
    pub data_directory: PathBuf,
    pub watchdog: Option<PathBuf>,
    pub watchdog_timeout: u32,
}

impl Fence for GuardProcess {
    fn primary_until(&mut self, deadline: u64) -> std::io::Result<()> {
        self.guard.primary_until(deadline, self.watchdog_timeout)
    }
    fn standby(&mut self) -> std::io::Result<()> {
        self.guard.standby()
    }
    fn ensure_alive(&mut self) -> Result<(), String> {
        if self.guard.alive() {
            return Ok(());
        }
        tracing::warn!("the fence guard exited; starting a new one");
        self.guard = Guard::spawn(&self.data_directory, self.watchdog.as_deref())
            .map_err(|e| format!("cannot restart the fence guard: {e}"))?;
        Ok(())
    }
    fn timing_changed(&mut self, timing: &Timing) {
        self.watchdog_timeout = crate::watchdog::timeout_for(timing).unwrap_or(0);
    }
}
