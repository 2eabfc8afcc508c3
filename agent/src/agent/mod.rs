//! The agent's loop, every `loop_wait`: **observe** the local PostgreSQL and read the cluster
//! from etcd (keeping this agent's lease alive), **decide** one action (`decide::decide`, a
//! pure function of the facts), **act** (one method per action, `act.rs`), **publish** this
//! node's member record and the API's snapshot (`publish.rs`).
//!
//! Its parts, by concern: leadership timing ([`LeaderClock`]), synchronous replication
//! (`sync.rs`), the slots other members need (`slots.rs`), configuration reload
//! (`reload.rs`) and the cluster-wide configuration (`settings.rs`), operators' requests to
//! this node (`reinit.rs`, `restart.rs`), long operations on a worker thread (`worker.rs`: a
//! rejoin runs there while the loop goes on publishing), and what it needs from the world as
//! traits ([`Store`], [`Postgres`], [`Fence`] in `ports.rs`), so the loop is unit-tested on
//! fakes (`tests.rs`).

mod act;
mod clock;
mod error;
mod ports;
mod publish;
mod reinit;
mod reload;
mod restart;
mod settings;
mod slots;
mod sync;
mod worker;

#[cfg(test)]
pub(crate) mod tests;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use clock::LeaderClock;
pub use error::ActError;
pub use ports::{Fence, GuardProcess, Phase, Postgres, RejoinJob, Store};

use crate::api::{self, Counters, Shared, Snapshot};
use crate::callbacks::{self, Callbacks};
use crate::config::{Config, RebuildMethod};
use crate::dcs::{Dcs, HistoryEntry, View};
use crate::decide::{self, upstream_for, Action, Cluster, Facts, Local, Member, Millis};
use crate::etcd;
use crate::failsafe;
use crate::guard::{monotonic_ms, Guard};
use crate::hba_checks::HbaChecks;
use crate::maintenance;
use crate::peers::Peers;
use crate::postgres::{self, LocalPg, Observed};
use crate::quorum;
use crate::records::unix_now;
use crate::state::NodeState;
use crate::streaming::{self, Evidence, Rejoins, Verdict};
use worker::{Poll, Worker};

/// The monotonic clock the loop reads (a fake one in tests).
pub type Now = Arc<dyn Fn() -> Millis + Send + Sync>;

/// What the loop works on: etcd, the local PostgreSQL, the fence guard, a clock.
pub struct Ports {
    pub store: Box<dyn Store>,
    pub pg: Box<dyn Postgres>,
    pub guard: Box<dyn Fence>,
    pub now: Now,
}

/// What this node is doing and what it has noticed about itself.
#[derive(Default)]
struct NodeStatus {
    state: NodeState,
    /// In maintenance: etcd's word when it answers, the copy on disk otherwise.
    down: bool,
    /// This node shut down cleanly and handed the key over: it needs no rewind to follow.
    handed_over: bool,
    /// Loop fast (see `period`): a request is under way, or this leader could not renew.
    urgent: bool,
    /// The last decision made on a view read from etcd was to renew the leader key: the
    /// next loop renews ahead of its read (see `renew_first`).
    renewing: bool,
    /// The revision this loop's renewal ahead of its read wrote.
    renewed_first: Option<i64>,
    /// Since when a running standby has not been streaming. Time, not a count of loops:
    /// loops run faster while a request is under way.
    not_streaming_since: Option<Millis>,
    /// Why this standby does not stream, once it has not for a while.
    stall: Option<Verdict>,
    /// Rejoins since it last streamed (they back off when they do not help).
    rejoins: Rejoins,
    /// What keeps the slots other members need from being right (said once, shown always).
    slot_error: Option<String>,
    /// The reason of the last wait, digits left out, so a new reason is logged once.
    waiting: Option<String>,
    /// Starts as a standby in a row that failed in recovery (see `start_standby`).
    failed_recoveries: u32,
    /// Where the next rebuild copies from, as a `pgshift reinit --from` asked (else
    /// [rebuild] method).
    rebuild_from: Option<RebuildMethod>,
    /// The restart request being carried out (its key's revision) and when the server had
    /// started when this agent first saw it (Unix seconds, 0: it was stopped).
    restart_baseline: Option<(i64, u64)>,
    /// When the observation behind the published record began (see `quorum`).
    observed_at: Millis,
    /// Quorum commit: the positions heard since this voter saw the leader gone.
    quorum_round: Option<quorum::Round>,
}

/// The API's side: the snapshot its GET endpoints answer from, its handle (for SIGHUP), what
/// it heard in failsafe mode, the counters /metrics shows.
struct ApiSide {
    shared: Shared,
    handle: Option<api::Handle>,
    failsafe_seen: Arc<failsafe::Seen>,
    counters: Counters,
}

/// Failsafe mode (see `failsafe`): the other members as etcd last showed them (name, API
/// address), until when they last all confirmed this leader.
struct Failsafe {
    members: Vec<(String, String)>,
    until: Option<Millis>,
}

pub struct Agent {
    config_path: PathBuf,
    cfg: Config,
    store: Box<dyn Store>,
    pg: Box<dyn Postgres>,
    guard: Box<dyn Fence>,
    now: Now,
    lease: i64,
    clock: LeaderClock,
    node: NodeStatus,
    api: ApiSide,
    failsafe: Failsafe,
    /// The other agents' APIs (failsafe and quorum rounds).
    peers: Arc<Peers>,
    /// synchronous_standby_names as last set or read (None: read it again).
    sync_names: Option<String>,
    /// Long operations (a rejoin) off the loop.
    worker: Worker,
    /// pg_hba.conf rules for load balancers that check by logging in.
    hba_checks: HbaChecks,
    /// Programs run on a start, stop or role change of PostgreSQL.
    callbacks: Callbacks,
    /// The cluster-wide configuration as this node applies it.
    settings: settings::Settings,
}

fn log(msg: impl AsRef<str>) {
    tracing::info!("{}", msg.as_ref());
}

fn warn(msg: impl AsRef<str>) {
    tracing::warn!("{}", msg.as_ref());
}

/// The agent runs as PostgreSQL's owner (`postgresql.user`), as the unit file starts it:
/// connecting over the socket with peer authentication then needs no identity switch, which
/// on Linux would apply to every thread of the process (the API's included). Started as root,
/// it becomes that user for good before any thread starts.
pub fn drop_root(cfg: &Config) -> Result<(), String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Ok(());
    }
    let owner = pgshift_core::process::Owner::lookup(&cfg.postgresql.user)?;
    pgshift_core::process::become_for_good(&owner)?;
    eprintln!(
        "pgshift agent: started as root, running as {} from now on",
        owner.name
    );
    Ok(())
}

/// Each etcd call must fail well inside retry_timeout, so a slow member cannot cost the
/// leader its leadership.
fn etcd_timeout(cfg: &Config) -> Duration {
    Duration::from_millis((cfg.timing().retry_timeout / 3).clamp(200, 1000))
}

/// Set by SIGHUP: reload the configuration at the start of the next loop.
static RELOAD: AtomicBool = AtomicBool::new(false);

extern "C" fn on_hup(_: nix::libc::c_int) {
    RELOAD.store(true, Ordering::Relaxed);
}

impl Agent {
    /// The agent on this host: etcd, the local PostgreSQL, a fence guard and the API.
    pub fn new(config_path: PathBuf, cfg: Config) -> Result<Agent, String> {
        crate::logging::init(cfg.log.format);
        let etcd = cfg.etcd_client(etcd_timeout(&cfg))?;
        let pg = LocalPg::new(&cfg)?;
        let watchdog = crate::watchdog::device(&cfg.watchdog)?;
        let guard = Guard::spawn(&cfg.postgresql.data_directory, watchdog.as_deref())
            .map_err(|e| format!("cannot start the fence guard: {e}"))?;
        let shared: Shared = Arc::new(Mutex::new(Snapshot::default()));
        let handle = api::start(&cfg, shared.clone())?;
        let ports = Ports {
            store: Box::new(Dcs::new(etcd, &cfg.cluster)),
            pg: Box::new(pg),
            guard: Box::new(GuardProcess {
                guard,
                data_directory: cfg.postgresql.data_directory.clone(),
                watchdog,
                watchdog_timeout: 0,
            }),
            now: Arc::new(monotonic_ms),
        };
        Agent::assemble(config_path, cfg, ports, shared, Some(handle))
    }

    /// The agent on `ports`, publishing to `shared` (and, with a `handle`, reloading the
    /// API on SIGHUP).
    pub fn assemble(
        config_path: PathBuf,
        cfg: Config,
        ports: Ports,
        shared: Shared,
        handle: Option<api::Handle>,
    ) -> Result<Agent, String> {
        let mut ports = ports;
        ports.guard.timing_changed(&cfg.timing());
        let (cfg_callbacks, cluster) = (cfg.callbacks.clone(), cfg.cluster.clone());
        let failsafe_seen = match &handle {
            Some(h) => h.failsafe_seen(),
            None => Arc::new(failsafe::Seen::default()),
        };
        Ok(Agent {
            hba_checks: HbaChecks::new(&cfg),
            failsafe: Failsafe {
                members: Vec::new(),
                until: None,
            },
            peers: Arc::new(Peers::new(&cfg)?),
            config_path,
            settings: settings::Settings::new(&cfg),
            cfg,
            store: ports.store,
            pg: ports.pg,
            guard: ports.guard,
            now: ports.now,
            lease: 0,
            clock: LeaderClock::default(),
            node: NodeStatus::default(),
            api: ApiSide {
                shared,
                handle,
                failsafe_seen,
                counters: Counters::default(),
            },
            sync_names: None,
            worker: Worker::default(),
            callbacks: Callbacks::new(cfg_callbacks, &cluster),
        })
    }

    fn now(&self) -> Millis {
        (self.now)()
    }

    pub fn run(mut self) -> ! {
        let _span =
            tracing::info_span!("agent", node = %self.cfg.name, cluster = %self.cfg.cluster)
                .entered();
        let hup = nix::sys::signal::SigAction::new(
            nix::sys::signal::SigHandler::Handler(on_hup),
            nix::sys::signal::SaFlags::SA_RESTART,
            nix::sys::signal::SigSet::empty(),
        );
        // SAFETY: the handler only stores to an atomic.
        if let Err(e) = unsafe { nix::sys::signal::sigaction(nix::sys::signal::SIGHUP, &hup) } {
            warn(format!(
                "cannot handle SIGHUP (no configuration reload): {e}"
            ));
        }
        let t = self.cfg.timing();
        log(format!(
            "agent {} of cluster {} started (ttl {} ms, loop_wait {} ms, retry_timeout {} ms)",
            self.cfg.name, self.cfg.cluster, t.ttl, t.loop_wait, t.retry_timeout
        ));
        loop {
            let started = monotonic_ms();
            if RELOAD.swap(false, Ordering::Relaxed) {
                self.reload();
            }
            self.cycle();
            let spent = monotonic_ms().saturating_sub(started);
            std::thread::sleep(Duration::from_millis(
                self.period().saturating_sub(spent).max(10),
            ));
        }
    }

    /// Milliseconds from one loop's start to the next: loop_wait, or 50 while a request is
    /// under way (a handover should not wait a loop_wait) or this leader's renewal failed.
    pub fn period(&self) -> u64 {
        if self.node.urgent {
            50
        } else {
            self.cfg.timing().loop_wait
        }
    }

    /// One loop: observe, decide, act, publish. While a long operation runs on the worker,
    /// the loop only observes and publishes (and calls the operation off for maintenance).
    pub fn cycle(&mut self) -> Action {
        if let Err(e) = self.guard.ensure_alive() {
            warn(e);
        }
        self.node.observed_at = self.now();
        let obs = self.pg.observe();
        self.callbacks.observe(callbacks::State::of(
            obs.running,
            obs.in_recovery,
            obs.timeline,
        ));
        let first = self.renew_first(&obs);
        self.node.renewed_first = first.as_ref().ok().copied().flatten();
        let view = match first {
            // etcd did not take the renewal in time: the next try (in 50 ms) matters more
            // than a keepalive and a read that would likely wait as long, and failsafe mode
            // must ask the members while the deadline is still ahead.
            Err(e @ etcd::Error::Unreachable(_)) => self.without_etcd(&obs, e),
            _ => self.read_cluster().or_else(|e| self.without_etcd(&obs, e)),
        };
        let now = self.now();
        if let Ok(v) = &view {
            self.follow_cluster_config(v);
            if self.clock.observe(v.leader.as_ref(), now) {
                self.api.counters.leader_changes += 1;
            }
            self.failsafe.members = v
                .members
                .iter()
                .filter(|m| m.name != self.cfg.name)
                .map(|m| (m.name.clone(), m.api.clone()))
                .collect();
        }
        let now = self.now();
        self.node.down = match &view {
            Ok(v) => {
                let down = v.down.contains(&self.cfg.name);
                if let Err(e) = maintenance::persist(&self.cfg.state_dir, down) {
                    warn(format!("cannot record maintenance on disk: {e}"));
                }
                down
            }
            Err(_) => maintenance::on_disk(&self.cfg.state_dir),
        };
        self.node.urgent = match &view {
            Ok(v) => v
                .request
                .as_ref()
                .is_some_and(|(r, _)| r.due() <= unix_now() && !r.expired(unix_now())),
            Err(_) => self.renewal_due(now),
        };
        let (action, outcome, changed) = match self.worker.poll() {
            Poll::Idle => {
                // A directory just marked for a reinit must not be started or kept running;
                // a server just restarted is looked at again.
                let acted = view
                    .as_ref()
                    .is_ok_and(|v| self.take_reinit(v) || self.take_restart(v, &obs));
                let fresh = acted.then(|| self.pg.observe());
                let obs = fresh.as_ref().unwrap_or(&obs);
                let facts = self.facts(obs, view.as_ref().ok(), now);
                let action = decide::decide(&facts);
                if view.is_ok() {
                    self.node.renewing = action == Action::RenewLeader;
                }
                if !matches!(action, Action::Wait { .. } | Action::RenewLeader) {
                    log(format!("{action:?}"));
                }
                self.log_new_wait(&action);
                // A stopped node about to start gets the rules of a non-leader before it opens.
                self.hba_checks
                    .sync(obs, self.clock.leading(), self.node.down);
                let outcome = self.act(&action, view.as_ref().ok(), obs);
                // Parameters only while nothing else changed the server this loop.
                if matches!(action, Action::Wait { .. } | Action::RenewLeader) {
                    self.apply_parameters(obs);
                }
                let changed = !matches!(action, Action::Wait { .. } | Action::RenewLeader);
                (action, outcome, changed)
            }
            Poll::Running { state, leader } => {
                if self.node.down && self.worker.cancel() {
                    log(format!(
                        "maintenance: calling off the rejoin from {leader} ({state})"
                    ));
                }
                self.node.state = state.clone();
                let reason = format!("{state} from {leader} under way");
                (Action::Wait { reason }, Ok(()), false)
            }
            Poll::Finished { leader, result } => {
                let outcome = self.rejoin_finished(&leader, result);
                let action = Action::Wait {
                    reason: format!("rejoin from {leader} finished"),
                };
                (action, outcome, true)
            }
        };
        if let Err(e) = &outcome {
            warn(format!("{action:?} failed: {e}"));
            // Under packet loss the read may get through and the renewal not (seen: 5 % loss
            // on the primary's host fenced it, two tries a loop_wait apart both lost).
            if action == Action::RenewLeader {
                self.node.urgent = self.renewal_due(self.now());
            }
        }
        let obs = if changed { self.pg.observe() } else { obs };
        self.hba_checks
            .sync(&obs, self.clock.leading(), self.node.down);
        if let (Action::TakeLeader { promote, .. }, Ok(()), Ok(v)) = (&action, &outcome, &view) {
            self.record_takeover(v, *promote, &obs);
        }
        let me = self.record(&obs, view.as_ref().ok());
        // The API first: once the record says e.g. "down", the health checks say so too.
        if let Ok(v) = &view {
            self.update_snapshot(me.clone(), v, &action);
            let _ = self.store.publish(&me, self.lease);
        } else {
            self.update_snapshot(me, &View::default(), &action);
        }
        action
    }

    /// This leader has not renewed since its last write but may still: try again in 50 ms,
    /// not a loop_wait later. Its deadline is its last write plus retry_timeout, and a
    /// loop_wait between tries spends a third of it; an etcd whose raft leader crashed
    /// answers again once its members elect another (up to twice election-timeout), and the
    /// first loop after that must renew.
    fn renewal_due(&self, now: Millis) -> bool {
        self.renewal_left(now) > 0
    }

    /// Milliseconds from `now` to this leader's deadline (0: passed, or not leading).
    fn renewal_left(&self, now: Millis) -> Millis {
        self.clock
            .writable_until(self.cfg.timing().retry_timeout)
            .saturating_sub(now)
    }

    /// A leader that decided to renew last loop renews again first thing, on its own
    /// revision, and reads after: the read (and the lease's keepalive before it) took up to
    /// an etcd timeout each, so renewals behind them came up to a second apart, and one
    /// failed renewal then spent the rest of retry_timeout (seen: a primary fenced under etcd
    /// leader churn with a single renewal failed). Ahead of the read, renewals come a
    /// loop_wait apart, and a failed one is tried again 50 ms later without a read between
    /// (see `cycle`). Only while the local server still runs as a primary: a crashed one must
    /// not hold the key a loop longer. What the read then brings (a request, maintenance) is
    /// decided on as usual; the renewal only kept what the last decision kept.
    /// The new revision if written; `Ok(None)` when not tried or the key moved (the read
    /// shows how).
    fn renew_first(&mut self, obs: &Observed) -> Result<Option<i64>, etcd::Error> {
        let Some(mine) = self.clock.my_revision() else {
            return Ok(None);
        };
        if !self.node.renewing || self.node.down || !obs.running || obs.in_recovery {
            return Ok(None);
        }
        let sent = self.now();
        let left = self.renewal_left(sent);
        if left < 50 {
            return Ok(None);
        }
        // One call's budget at most: a failsafe round after a failure needs time too.
        let budget = etcd_timeout(&self.cfg).min(Duration::from_millis(left - 10));
        match self
            .store
            .renew_leader(&self.cfg.name, self.lease, mine, budget)
        {
            Ok(Some(rev)) => {
                self.wrote_renewal(rev, sent);
                Ok(Some(rev))
            }
            Ok(None) => Ok(None),
            Err(e) => {
                warn(format!("RenewLeader (ahead of the read) failed: {e}"));
                Err(e)
            }
        }
    }

    /// The history entry of a takeover, with the timeline the promotion gave (`obs` made
    /// after it).
    fn record_takeover(&mut self, v: &View, promote: bool, obs: &Observed) {
        let requested = v
            .request
            .as_ref()
            .filter(|(r, _)| r.promotes(unix_now()) == Some(self.cfg.name.as_str()));
        let heard = self
            .node
            .quorum_round
            .as_ref()
            .map(|r| r.describe())
            .filter(|d| !d.is_empty());
        let reason = match (requested, heard) {
            (Some((r, _)), _) if r.handed_over.is_some() => "switchover".to_string(),
            (Some(_), _) => "failover (requested)".into(),
            // What a quorum commit failover decided on, as the history shows it.
            (None, Some(heard)) if promote => {
                log(format!("took over by quorum commit, having heard {heard}"));
                format!("failover (quorum commit; heard {heard})")
            }
            (None, _) if promote => "failover".into(),
            (None, _) if v.history.is_empty() => "bootstrap".into(),
            (None, _) => "leader key reclaimed".into(),
        };
        let entry = HistoryEntry {
            leader: self.cfg.name.clone(),
            timeline: obs.timeline,
            at: unix_now(),
            reason,
        };
        let _ = self.store.record_history(v, entry);
    }

    /// Reads the cluster and keeps our lease alive (a new one when it expired).
    fn read_cluster(&mut self) -> Result<View, etcd::Error> {
        let ttl_secs = self.cfg.timing().ttl.div_ceil(1000).max(2) as i64;
        let alive = self.lease != 0 && self.store.keepalive(self.lease)?;
        if !alive {
            self.lease = self.store.grant(ttl_secs)?;
        }
        self.store.read()
    }

    /// Logs why this node waits when the reason is new (its numbers aside: a lag or a
    /// position changes every loop): "why does nobody take over" is answered in the log.
    fn log_new_wait(&mut self, action: &Action) {
        let Action::Wait { reason } = action else {
            self.node.waiting = None;
            return;
        };
        let shape: String = reason
            .chars()
            .filter(|c| !(c.is_ascii_digit() || matches!(c, 'A'..='F')))
            .collect();
        if self.node.waiting.as_deref() != Some(shape.as_str()) {
            log(format!("waiting: {reason}"));
            self.node.waiting = Some(shape);
        }
    }

    fn facts(&mut self, obs: &Observed, view: Option<&View>, now: Millis) -> Facts {
        let leader = view.and_then(|v| v.leader.clone());
        let upstream = upstream_name(obs, view);
        if obs.running && obs.in_recovery && !obs.streaming {
            self.node.not_streaming_since.get_or_insert(now);
        } else {
            self.node.not_streaming_since = None;
            if obs.streaming {
                self.node.rejoins.streaming();
            }
        }
        let leader_rec = leader
            .as_ref()
            .filter(|l| l.name != self.cfg.name)
            .and_then(|l| view.and_then(|v| v.member(&l.name)));
        let was_primary = matches!(
            obs.stopped_state.as_deref(),
            Some("in production" | "shut down")
        );
        // A stopped old primary must be rewound before it may follow; a running standby that
        // cannot stream from a leader on a newer timeline has diverged from it.
        // A running standby that cannot stream from a live leader for two ttl is stuck,
        // usually because its history forked from the leader's (an old primary that wrote
        // past the failover point): rejoin, and pg_rewind tells whether anything must be
        // undone. (Its timeline is no guide: the walreceiver fetches the leader's history
        // files even when it cannot stream.) A leader that just died is not a reason.
        // Only a stall with no other explanation (see `streaming`) counts, and rejoins that
        // do not help back off.
        let t = self.cfg.timing();
        let not_streaming_for = self.node.not_streaming_since.map(|s| now.saturating_sub(s));
        self.node.stall = match (not_streaming_for, leader_rec) {
            (Some(for_ms), Some(l))
                if for_ms >= t.ttl && upstream.as_deref() == Some(l.name.as_str()) =>
            {
                Some(streaming::diagnose(&Evidence {
                    for_ms,
                    walreceiver: obs.walreceiver.as_deref(),
                    leader: l,
                    my_slot: &postgres::slot_name(&self.cfg.name),
                    my_timeline: obs.timeline,
                    leader_reachable: self.pg.reachable(&l.conn),
                }))
            }
            _ => None,
        };
        let stuck = not_streaming_for.is_some_and(|d| d >= 2 * t.ttl)
            && matches!(self.node.stall, Some(Verdict::Unexplained(_)))
            && self.node.rejoins.wait(now).is_none();
        let leader_alive = self.clock.leader_alive(now, t.ttl);
        let diverged = leader_rec.is_some_and(|l| {
            (!obs.running && was_primary && !self.node.handed_over)
                || (obs.running
                    && leader_alive
                    && stuck
                    && upstream.as_deref() == Some(l.name.as_str()))
        });
        let members: Vec<Member> = view.map_or_else(Vec::new, |v| {
            v.members
                .iter()
                .filter(|m| m.name != self.cfg.name)
                .map(|m| m.as_member(v.down.contains(&m.name)))
                .collect()
        });
        // Whom following the leader means streaming from (cascading), to judge whether the
        // replication settings are current.
        let replicatefrom = self.cfg.tags.replicatefrom.clone();
        let source_rec = leader_rec.and_then(|l| {
            let source = upstream_for(&self.cfg.name, replicatefrom.as_deref(), &l.name, &members);
            view.and_then(|v| v.member(source))
        });
        Facts {
            me: self.cfg.name.clone(),
            now,
            timing: t,
            cluster: match view {
                Some(_) => Cluster::Read { leader, members },
                None => Cluster::Unreachable,
            },
            local: Local {
                running: obs.running,
                in_recovery: obs.in_recovery,
                timeline: obs.timeline,
                lsn: obs.lsn,
                replication_stale: source_rec
                    .is_some_and(|s| self.pg.settings_differ(obs, &s.conn)),
                rebuild_pending: obs.rebuild_pending,
                upstream,
                diverged,
            },
            leader_seen: self.clock.seen(),
            last_leader_write: self.clock.last_write(),
            maximum_lag_on_failover: self.cfg.timing.maximum_lag_on_failover,
            nofailover: self.cfg.tags.nofailover,
            priority: self.cfg.tags.priority,
            initialized: view.is_some_and(|v| !v.history.is_empty()),
            wall: unix_now(),
            paused: view.is_some_and(|v| v.paused),
            down: self.node.down,
            request: view.and_then(|v| v.request.as_ref().map(|(r, _)| r.clone())),
            synchronous_mode: self.cfg.replication.synchronous_mode.enabled(),
            sync: view.and_then(|v| v.sync.clone()),
            heard: self.quorum_heard(obs, view, leader_alive, now),
            failsafe_confirmed: self.failsafe.until.is_some_and(|u| now < u),
            failsafe_leader: self.api.failsafe_seen.leader_within(now, t.ttl),
            replicatefrom,
        }
    }

    /// etcd did not answer (`first`) and this node was leading a writable primary: ask every
    /// member it last saw whether it is still the leader (see `failsafe`). All yes: writable
    /// until this round's start plus retry_timeout, the fence guard told so. Any no: nothing
    /// extended, and the usual deadline fences it.
    ///
    /// Meanwhile etcd is asked again every 50 ms, and its first answer ends the wait: the
    /// usual reason etcd stops answering for a moment is an election after its raft leader's
    /// host crashed, and that host's member then makes the round wait out its timeout while
    /// the leader's deadline runs (seen: a healthy primary fenced). The round's thread is let
    /// finish on its own; its answer no longer matters.
    fn without_etcd(&mut self, obs: &Observed, first: etcd::Error) -> Result<View, etcd::Error> {
        let leading = self.clock.leading() || self.failsafe.until.is_some();
        if !self.cfg.failsafe_mode || !leading || !obs.running || obs.in_recovery {
            return Err(first);
        }
        let t = self.cfg.timing();
        let started = self.now();
        let per_call = Duration::from_millis((t.retry_timeout / 3).clamp(100, 1000));
        let (peers, me) = (self.peers.clone(), self.cfg.name.clone());
        let members = self.failsafe.members.clone();
        let (tx, rx) = mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("failsafe".into())
            .spawn(move || {
                let _ = tx.send(failsafe::round(&peers, &me, &members, per_call));
            });
        if let Err(e) = spawned {
            warn(format!("failsafe: cannot start a round: {e}"));
            return Err(first);
        }
        let mut last = first;
        let round = loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(answer) => break answer,
                Err(RecvTimeoutError::Disconnected) => {
                    break Err("the round ended without an answer".to_string())
                }
                Err(RecvTimeoutError::Timeout) => match self.read_cluster() {
                    Ok(view) => return Ok(view),
                    Err(e) => last = e,
                },
            }
        };
        match round {
            Ok(()) => {
                if self.failsafe.until.is_none() {
                    warn(format!(
                        "etcd unreachable: failsafe mode, every member ({}) confirms this leader",
                        self.failsafe
                            .members
                            .iter()
                            .map(|(n, _)| n.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
                let until = started + t.retry_timeout;
                self.failsafe.until = Some(until);
                let _ = self.guard.primary_until(until);
            }
            Err(e) => {
                if self.failsafe.until.take().is_some() || self.clock.leading() {
                    warn(format!("failsafe: {e}; leadership runs out"));
                }
            }
        }
        Err(last)
    }

    /// A successful leader write that was sent at `sent`: the new revision, and the fence
    /// guard's deadline (see `LeaderClock::wrote`).
    fn wrote_leader(&mut self, rev: i64, sent: Millis) {
        // Failsafe mode ends with the first renewal through etcd, not with etcd's first
        // answer: until then the members' confirmation is what keeps this leader writable.
        // (Left set, the next outage's start went unlogged and the node counted as leading.)
        if self.failsafe.until.take().is_some() {
            log("etcd answers again and the leader key is renewed: failsafe mode ends");
        }
        let until = self.clock.wrote(rev, sent, self.cfg.timing().retry_timeout);
        if let Err(e) = self.guard.primary_until(until) {
            warn(format!("cannot reach the fence guard: {e}"));
        }
    }

    /// A renewal sent at `sent` wrote revision `rev`: the guard's deadline, and how long
    /// the write took (/metrics).
    fn wrote_renewal(&mut self, rev: i64, sent: Millis) {
        self.wrote_leader(rev, sent);
        self.api.counters.renew_ms = Some(self.now().saturating_sub(sent));
    }

    fn lost_leadership(&mut self) {
        self.clock.lost();
        let _ = self.guard.standby();
    }

    /// Gives the key up if this node holds it, and stops leading.
    fn release_leadership(&mut self) {
        if let Some(rev) = self.clock.my_revision() {
            let _ = self.store.release_leader(rev);
        }
        self.lost_leadership();
    }
}

/// The member whose PostgreSQL address is the local primary_conninfo's.
fn upstream_name(obs: &Observed, view: Option<&View>) -> Option<String> {
    let conn = obs.upstream_conn.as_ref()?;
    view?
        .members
        .iter()
        .find(|m| &m.conn == conn)
        .map(|m| m.name.clone())
}
