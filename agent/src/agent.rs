//! The agent's loop: observe PostgreSQL and etcd, ask `decide`, carry the action out, publish
//! this node's facts, refresh the API snapshot; every `loop_wait`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::api::{self, Counters, Shared, Snapshot};
use crate::config::Config;
use crate::dcs::{Dcs, HistoryEntry, MemberRecord, View};
use crate::decide::{self, Action, Cluster, Facts, Local};
use crate::etcd;
use crate::guard::{monotonic_ms, Guard};
use crate::maintenance;
use crate::postgres::{LocalPg, Observed};
use crate::records::{unix_now, HandedOver, Outcome, Request, RequestKind, SyncState};

pub struct Agent {
    config_path: PathBuf,
    cfg: Config,
    dcs: Dcs,
    pg: LocalPg,
    guard: Guard,
    shared: Shared,
    lease: i64,
    /// The leader revision we last saw change, and when (monotonic ms).
    leader_seen: Option<(i64, u64)>,
    last_leader_write: Option<u64>,
    /// Our own last leader revision (what a renewal compares against).
    my_revision: Option<i64>,
    /// Since when (monotonic ms) a running standby has not been streaming. Time, not a
    /// count of loops: loops run faster while a request is under way.
    not_streaming_since: Option<u64>,
    state: String,
    slots_for: Vec<String>,
    /// In maintenance: etcd's word when it answers, the copy on disk otherwise.
    down: bool,
    /// This node shut down cleanly and handed the key over: it needs no rewind to follow.
    handed_over: bool,
    /// synchronous_standby_names as last set or read (None: read it again).
    sync_names: Option<String>,
    /// Loop fast while a request is under way (a handover should not wait a loop_wait).
    urgent: bool,
    counters: Counters,
    last_leader: Option<String>,
    /// leader_seen's time before a takeover overwrote it (for the failover duration).
    leader_seen_before: Option<u64>,
}

fn log(msg: impl AsRef<str>) {
    tracing::info!("{}", msg.as_ref());
}

fn warn(msg: impl AsRef<str>) {
    tracing::warn!("{}", msg.as_ref());
}

/// Set by SIGHUP: reload the configuration at the start of the next loop.
static RELOAD: AtomicBool = AtomicBool::new(false);

extern "C" fn on_hup(_: nix::libc::c_int) {
    RELOAD.store(true, Ordering::Relaxed);
}

impl Agent {
    pub fn new(config_path: PathBuf, cfg: Config) -> Result<Agent, String> {
        crate::logging::init(cfg.log.format);
        let t = cfg.timing();
        // Each etcd call must fail well inside retry_timeout, so a slow member cannot cost
        // the leader its leadership.
        let timeout = Duration::from_millis((t.retry_timeout / 3).clamp(200, 1000));
        let etcd = cfg.etcd_client(timeout)?;
        let dcs = Dcs::new(etcd, &cfg.cluster);
        let pg = LocalPg::new(&cfg)?;
        let guard = Guard::spawn(&cfg.postgresql.data_directory)
            .map_err(|e| format!("cannot start the fence guard: {e}"))?;
        let shared: Shared = Arc::new(Mutex::new(Snapshot::default()));
        api::serve(&cfg, shared.clone())?;
        Ok(Agent {
            config_path,
            cfg,
            dcs,
            pg,
            guard,
            shared,
            lease: 0,
            leader_seen: None,
            last_leader_write: None,
            my_revision: None,
            not_streaming_since: None,
            state: "starting".into(),
            slots_for: Vec::new(),
            down: false,
            handed_over: false,
            sync_names: None,
            urgent: false,
            counters: Counters::default(),
            last_leader: None,
            leader_seen_before: None,
        })
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
        let loop_wait = self.cfg.timing().loop_wait;
        log(format!(
            "agent {} of cluster {} started (ttl {} ms, loop_wait {} ms, retry_timeout {} ms)",
            self.cfg.name,
            self.cfg.cluster,
            self.cfg.timing().ttl,
            loop_wait,
            self.cfg.timing().retry_timeout
        ));
        loop {
            let started = monotonic_ms();
            if RELOAD.swap(false, Ordering::Relaxed) {
                self.reload();
            }
            self.cycle();
            let spent = monotonic_ms().saturating_sub(started);
            let loop_wait = self.cfg.timing().loop_wait;
            let period = if self.urgent { 50 } else { loop_wait };
            std::thread::sleep(Duration::from_millis(period.saturating_sub(spent).max(10)));
        }
    }

    /// SIGHUP: the timing, tags and replication settings take effect now; what the agent
    /// built at start (listener, etcd client, data directory) needs a restart, and says so.
    fn reload(&mut self) {
        let new = match Config::load(&self.config_path) {
            Ok(c) => c,
            Err(e) => {
                warn(format!("SIGHUP: configuration not reloaded: {e}"));
                return;
            }
        };
        let old = &self.cfg;
        let fixed = [
            ("cluster", old.cluster != new.cluster),
            ("name", old.name != new.name),
            ("api", format!("{:?}", old.api) != format!("{:?}", new.api)),
            (
                "etcd",
                format!("{:?}", old.etcd) != format!("{:?}", new.etcd),
            ),
            (
                "postgresql",
                format!("{:?}", old.postgresql) != format!("{:?}", new.postgresql),
            ),
            ("state_dir", old.state_dir != new.state_dir),
            ("log", format!("{:?}", old.log) != format!("{:?}", new.log)),
            (
                "replication (user, passfile, sslmode, rewind_user)",
                (
                    &old.replication.user,
                    &old.replication.passfile,
                    &old.replication.sslmode,
                    &old.replication.rewind_user,
                ) != (
                    &new.replication.user,
                    &new.replication.passfile,
                    &new.replication.sslmode,
                    &new.replication.rewind_user,
                ),
            ),
        ];
        let restart: Vec<&str> = fixed.iter().filter(|(_, c)| *c).map(|(k, _)| *k).collect();
        if !restart.is_empty() {
            warn(format!(
                "SIGHUP: changes to {} take effect at the next restart",
                restart.join(", ")
            ));
        }
        let old = self.cfg.clone();
        let mut replication = old.replication.clone();
        replication.synchronous_mode = new.replication.synchronous_mode;
        replication.synchronous_mode_strict = new.replication.synchronous_mode_strict;
        self.cfg = Config {
            timing: new.timing,
            tags: new.tags,
            replication,
            ..old
        };
        self.sync_names = None;
        log(format!(
            "SIGHUP: configuration reloaded (ttl {} ms, loop_wait {} ms, retry_timeout {} ms, synchronous_mode {})",
            self.cfg.timing().ttl,
            self.cfg.timing().loop_wait,
            self.cfg.timing().retry_timeout,
            self.cfg.replication.synchronous_mode
        ));
    }

    fn cycle(&mut self) {
        if !self.guard.alive() {
            warn("the fence guard exited; starting a new one");
            match Guard::spawn(&self.cfg.postgresql.data_directory) {
                Ok(g) => self.guard = g,
                Err(e) => warn(format!("cannot restart the fence guard: {e}")),
            }
        }
        let obs = self.pg.observe();
        let view = self.read_cluster();
        let now = monotonic_ms();
        if let Ok(v) = &view {
            self.track_leader(v, now);
        }
        self.down = match &view {
            Ok(v) => {
                let down = v.down.contains(&self.cfg.name);
                if let Err(e) = maintenance::persist(&self.cfg.state_dir, down) {
                    warn(format!("cannot record maintenance on disk: {e}"));
                }
                down
            }
            Err(_) => maintenance::on_disk(&self.cfg.state_dir),
        };
        self.urgent = view.as_ref().is_ok_and(|v| {
            v.request
                .as_ref()
                .is_some_and(|(r, _)| r.due() <= unix_now() && !r.expired(unix_now()))
        });
        let facts = self.facts(&obs, view.as_ref().ok(), now);
        let action = decide::decide(&facts);
        if !matches!(action, Action::Wait { .. } | Action::RenewLeader) {
            log(format!("{action:?}"));
        }
        let outcome = self.act(&action, view.as_ref().ok(), &obs);
        if let Err(e) = &outcome {
            warn(format!("{action:?} failed: {e}"));
        }
        let obs = if matches!(action, Action::Wait { .. } | Action::RenewLeader) {
            obs
        } else {
            self.pg.observe()
        };
        if let (Action::TakeLeader { promote, .. }, Ok(()), Ok(v)) = (&action, &outcome, &view) {
            // With the timeline the promotion gave (the observation just made).
            let requested = v
                .request
                .as_ref()
                .filter(|(r, _)| r.promotes(unix_now()) == Some(self.cfg.name.as_str()));
            let reason = match requested {
                Some((r, _)) if r.handed_over.is_some() => "switchover",
                Some(_) => "failover (requested)",
                None if *promote => "failover",
                None if v.history.is_empty() => "bootstrap",
                None => "leader key reclaimed",
            };
            let entry = HistoryEntry {
                leader: self.cfg.name.clone(),
                timeline: obs.timeline,
                at: unix_now(),
                reason: reason.into(),
            };
            let _ = self.dcs.record_history(v, entry);
        }
        let me = self.record(&obs, view.as_ref().ok());
        // The API first: once the record says e.g. "down", the health checks say so too.
        if let Ok(v) = &view {
            self.update_snapshot(me.clone(), v, &action);
            let _ = self.dcs.publish(&me, self.lease);
        } else {
            self.update_snapshot(me, &View::default(), &action);
        }
    }

    /// Reads the cluster and keeps our lease alive (a new one when it expired).
    fn read_cluster(&mut self) -> Result<View, etcd::Error> {
        let ttl_secs = self.cfg.timing().ttl.div_ceil(1000).max(2) as i64;
        let alive = self.lease != 0 && self.dcs.etcd.lease_keepalive(self.lease)?;
        if !alive {
            self.lease = self.dcs.etcd.lease_grant(ttl_secs)?;
        }
        self.dcs.read()
    }

    fn track_leader(&mut self, v: &View, now: u64) {
        let name = v.leader.as_ref().map(|l| l.name.clone());
        if name.is_some() && name != self.last_leader {
            if self.last_leader.is_some() {
                self.counters.leader_changes += 1;
            }
            self.last_leader = name;
        }
        match &v.leader {
            Some(l) if self.leader_seen.is_none_or(|(rev, _)| rev != l.revision) => {
                self.leader_seen = Some((l.revision, now));
            }
            None => self.leader_seen = None,
            _ => {}
        }
    }

    fn facts(&mut self, obs: &Observed, view: Option<&View>, now: u64) -> Facts {
        let leader = view.and_then(|v| v.leader.clone());
        let upstream = upstream_name(obs, view);
        if obs.running && obs.in_recovery && !obs.streaming {
            self.not_streaming_since.get_or_insert(now);
        } else {
            self.not_streaming_since = None;
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
        let t = self.cfg.timing();
        let stuck = self
            .not_streaming_since
            .is_some_and(|since| now.saturating_sub(since) >= 2 * t.ttl);
        let leader_alive = self
            .leader_seen
            .is_some_and(|(_, since)| now.saturating_sub(since) < t.ttl);
        let diverged = leader_rec.is_some_and(|l| {
            (!obs.running && was_primary && !self.handed_over)
                || (obs.running
                    && leader_alive
                    && stuck
                    && upstream.as_deref() == Some(l.name.as_str()))
        });
        Facts {
            me: self.cfg.name.clone(),
            now,
            timing: t,
            cluster: match view {
                Some(v) => Cluster::Read {
                    leader,
                    members: v
                        .members
                        .iter()
                        .filter(|m| m.name != self.cfg.name)
                        .map(|m| m.as_member(v.down.contains(&m.name)))
                        .collect(),
                },
                None => Cluster::Unreachable,
            },
            local: Local {
                running: obs.running,
                in_recovery: obs.in_recovery,
                timeline: obs.timeline,
                lsn: obs.lsn,
                upstream,
                diverged,
            },
            leader_seen: self.leader_seen,
            last_leader_write: self.last_leader_write,
            maximum_lag_on_failover: self.cfg.timing.maximum_lag_on_failover,
            nofailover: self.cfg.tags.nofailover,
            priority: self.cfg.tags.priority,
            initialized: view.is_some_and(|v| !v.history.is_empty()),
            wall: unix_now(),
            paused: view.is_some_and(|v| v.paused),
            down: self.down,
            request: view.and_then(|v| v.request.as_ref().map(|(r, _)| r.clone())),
            synchronous_mode: self.cfg.replication.synchronous_mode,
            sync: view.and_then(|v| v.sync.clone()),
        }
    }

    /// A successful leader write that was sent at `sent`: the new revision, the deadline
    /// for the guard. The deadline counts from the request, not the answer: an agent frozen
    /// between the two (measured: a host frozen for 6 s) must not wake up with a fresh
    /// deadline for a write followers have been timing since before the freeze.
    fn wrote_leader(&mut self, rev: i64, sent: u64) {
        self.my_revision = Some(rev);
        self.leader_seen = Some((rev, sent));
        self.last_leader_write = Some(sent);
        let until = sent + self.cfg.timing().retry_timeout;
        if let Err(e) = self.guard.primary_until(until) {
            warn(format!("cannot reach the fence guard: {e}"));
        }
    }

    /// Promotes while holding the key: a slow promotion must not cost the leadership (the
    /// guard would stop the server that is just becoming the primary), so the key is
    /// renewed while PostgreSQL works.
    fn promote_leading(&mut self) -> Result<(), String> {
        let retry = self.cfg.timing().retry_timeout;
        let (dcs, guard, name, lease) = (&self.dcs, &mut self.guard, &self.cfg.name, self.lease);
        let mut held = self.my_revision.zip(self.last_leader_write);
        let r = self.pg.promote(|| {
            let Some((rev, _)) = held else { return };
            let sent = monotonic_ms();
            // The key is bound to our lease: keep that alive too.
            let _ = dcs.etcd.lease_keepalive(lease);
            match dcs.write_leader(name, lease, Some(rev)) {
                Ok(Some(new)) => {
                    held = Some((new, sent));
                    let _ = guard.primary_until(sent + retry);
                    tracing::info!("promotion: still in recovery; leadership renewed");
                }
                r => warn(format!("promotion: cannot renew the leadership: {r:?}")),
            }
        });
        if let Some((rev, sent)) = held {
            self.my_revision = Some(rev);
            self.leader_seen = Some((rev, sent));
            self.last_leader_write = Some(sent);
        }
        r
    }

    fn lost_leadership(&mut self) {
        self.my_revision = None;
        self.last_leader_write = None;
        let _ = self.guard.standby();
    }

    fn act(&mut self, action: &Action, view: Option<&View>, obs: &Observed) -> Result<(), String> {
        let me = self.cfg.name.clone();
        let conn_of = |name: &str| view.and_then(|v| v.member(name)).map(|m| m.conn.clone());
        match action {
            Action::Wait { .. } => {
                self.state = if obs.running && obs.in_recovery && obs.streaming {
                    "streaming".into()
                } else if obs.running {
                    "running".into()
                } else {
                    "stopped".into()
                };
                if !obs.running || obs.in_recovery {
                    let _ = self.guard.standby();
                }
                if obs.running && obs.in_recovery {
                    // Slots for the other members ahead of a promotion, so an old primary
                    // that follows this node finds its slot at once (a missing slot costs a
                    // walreceiver retry, 5 s by default). Unreserved until used.
                    self.ensure_slots(view);
                }
                Ok(())
            }
            Action::RenewLeader => self.renew(view, obs),
            Action::EndRequest { ok, message } => {
                self.renew(view, obs)?;
                let Some((request, rev)) = view.and_then(|v| v.request.clone()) else {
                    return Ok(());
                };
                log(format!(
                    "{:?} request {}: {message}",
                    request.kind,
                    if *ok { "done" } else { "failed" }
                ));
                let outcome = Outcome {
                    request,
                    ok: *ok,
                    message: message.clone(),
                    at: unix_now(),
                };
                self.dcs
                    .end_request(rev, &outcome)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
            Action::HandOver { to } => self.hand_over(to, view),
            Action::TakeLeader { expected, promote } => {
                self.leader_seen_before = self.leader_seen.map(|(_, since)| since);
                let sent = monotonic_ms();
                match self
                    .dcs
                    .write_leader(&me, self.lease, *expected)
                    .map_err(|e| e.to_string())?
                {
                    None => Err("another node took the leader key first".into()),
                    Some(rev) => {
                        self.wrote_leader(rev, sent);
                        log(format!("took the leader key (revision {rev})"));
                        self.handed_over = false;
                        if *promote {
                            // The old leader's last sign of life: when we first saw the
                            // revision it left behind.
                            let since = self.leader_seen_before.unwrap_or(sent);
                            self.state = "promoting".into();
                            if self.cfg.replication.synchronous_mode {
                                // Nobody is synchronous for this node yet: say so before
                                // it accepts a write, then wait for a standby (strict) or
                                // not (see manage_sync).
                                self.dcs
                                    .write_sync(&SyncState {
                                        leader: me.clone(),
                                        standby: None,
                                    })
                                    .map_err(|e| e.to_string())?;
                                let names = self.unsynced_names();
                                self.pg.set_sync_names(&names)?;
                                self.sync_names = Some(names);
                            }
                            tracing::info!("promotion: synchronous settings done");
                            self.ensure_slots(view);
                            tracing::info!("promotion: slots done");
                            self.promote_leading()?;
                            let took = monotonic_ms().saturating_sub(since);
                            self.counters.promotions += 1;
                            self.counters.last_failover_ms = Some(took);
                            self.state = "running".into();
                            // Tell HAProxy now, not after the checkpoint and a loop.
                            self.announce_leader(view, rev);
                            log(format!(
                                "promoted ({took} ms after the old leader's last sign of life)"
                            ));
                            self.pg.checkpoint()?;
                        }
                        self.state = "running".into();
                        self.ensure_slots(view);
                        Ok(())
                    }
                }
            }
            Action::Promote => {
                self.state = "promoting".into();
                self.promote_leading()?;
                self.state = "running".into();
                self.pg.checkpoint()
            }
            Action::StartPrimary => {
                self.state = "starting".into();
                self.pg.start()
            }
            Action::StartStandby { leader } => {
                self.state = "starting".into();
                let _ = self.guard.standby();
                let conn = leader.as_deref().and_then(conn_of);
                self.pg.prepare_standby(conn.as_deref())?;
                self.pg.start()
            }
            Action::Fence { reason } => {
                log(format!("fencing: {reason}"));
                self.state = "fenced".into();
                let r = self.pg.stop("immediate");
                if let Some(rev) = self.my_revision {
                    let _ = self.dcs.release_leader(rev);
                }
                self.lost_leadership();
                r
            }
            Action::Follow { leader } => {
                let conn = conn_of(leader).ok_or("the leader has not published its address yet")?;
                self.pg.follow(&conn)
            }
            Action::Rejoin { leader } => {
                let conn = conn_of(leader).ok_or("the leader has not published its address yet")?;
                self.state = "rejoining".into();
                if let Some(rev) = self.my_revision {
                    let _ = self.dcs.release_leader(rev);
                }
                self.lost_leadership();
                let how = self
                    .pg
                    .rewind_or_rebuild(&conn, &self.cfg.replication.rewind_user)?;
                log(format!("rejoin {leader}: {how}"));
                self.not_streaming_since = None;
                self.pg.start()
            }
        }
    }

    /// Publishes this node as the leader at `revision` right away (API snapshot and member
    /// record), without waiting for the end of the loop.
    fn announce_leader(&mut self, view: Option<&View>, revision: i64) {
        let Some(v) = view else { return };
        let mut v = v.clone();
        v.leader = Some(crate::decide::Leader {
            name: self.cfg.name.clone(),
            revision,
        });
        let obs = self.pg.observe();
        let me = self.record(&obs, Some(&v));
        self.update_snapshot(me.clone(), &v, &Action::Promote);
        let _ = self.dcs.publish(&me, self.lease);
    }

    fn renew(&mut self, view: Option<&View>, obs: &Observed) -> Result<(), String> {
        let me = self.cfg.name.clone();
        let current = view.and_then(|v| v.leader.as_ref()).map(|l| l.revision);
        let sent = monotonic_ms();
        match self
            .dcs
            .write_leader(&me, self.lease, current)
            .map_err(|e| e.to_string())?
        {
            Some(rev) => {
                self.wrote_leader(rev, sent);
                self.counters.renew_ms = Some(monotonic_ms().saturating_sub(sent));
                self.state = "running".into();
                if obs.running && !obs.in_recovery {
                    self.ensure_slots(view);
                    if self.cfg.replication.synchronous_mode {
                        if let Some(v) = view {
                            if let Err(e) = self.manage_sync(v) {
                                self.sync_names = None;
                                warn(format!("synchronous replication: {e}"));
                            }
                        }
                    }
                }
                Ok(())
            }
            None => {
                self.lost_leadership();
                Err("the leader key changed under us".into())
            }
        }
    }

    /// synchronous_standby_names with no synchronous standby: wait for any (strict) or
    /// for none.
    fn unsynced_names(&self) -> String {
        if self.cfg.replication.synchronous_mode_strict {
            "*".into()
        } else {
            String::new()
        }
    }

    /// The leader keeps one healthy standby synchronous and the sync record naming it. The
    /// order makes the record safe to promote from: a standby is recorded only once it is
    /// synchronous and caught up, and the record drops it before PostgreSQL stops waiting
    /// for it.
    fn manage_sync(&mut self, v: &View) -> Result<(), String> {
        let me = self.cfg.name.clone();
        let ours = v.sync.as_ref().filter(|s| s.leader == me);
        let recorded = ours.and_then(|s| s.standby.clone());
        let healthy = |m: &MemberRecord| {
            m.name != me
                && m.role == "replica"
                && m.state == "streaming"
                && m.upstream.as_deref() == Some(me.as_str())
                && !m.down
                && !v.down.contains(&m.name)
                && !m.nofailover
        };
        let desired = match recorded.as_deref().and_then(|r| v.member(r)) {
            Some(m) if healthy(m) => Some(m.name.clone()),
            _ => v
                .members
                .iter()
                .filter(|m| healthy(m))
                .max_by(|a, b| a.lsn.cmp(&b.lsn).then(b.name.cmp(&a.name)))
                .map(|m| m.name.clone()),
        };
        let mut recorded = recorded;
        if ours.is_none() || (recorded.is_some() && recorded != desired) {
            self.dcs
                .write_sync(&SyncState {
                    leader: me.clone(),
                    standby: None,
                })
                .map_err(|e| format!("cannot write the sync record: {e}"))?;
            if let Some(old) = &recorded {
                log(format!("{old} is no longer the synchronous standby"));
            }
            recorded = None;
        }
        let names = match &desired {
            Some(n) => format!("\"{}\"", n.replace('"', "\"\"")),
            None => self.unsynced_names(),
        };
        let current = match self.sync_names.clone() {
            Some(n) => n,
            None => self.pg.sync_names()?,
        };
        if current != names {
            self.pg.set_sync_names(&names)?;
        }
        self.sync_names = Some(names);
        if let (None, Some(d)) = (&recorded, &desired) {
            if self.pg.is_sync_and_caught_up(d)? {
                self.dcs
                    .write_sync(&SyncState {
                        leader: me,
                        standby: Some(d.clone()),
                    })
                    .map_err(|e| format!("cannot write the sync record: {e}"))?;
                log(format!("{d} is the synchronous standby"));
            }
        }
        Ok(())
    }

    /// A planned switchover: stop accepting writes with a clean shutdown (walsenders send
    /// every record, the shutdown checkpoint included, before they exit), tell `to` where
    /// that last record is, give up the key, and come back as a standby following `to`.
    fn hand_over(&mut self, to: &str, view: Option<&View>) -> Result<(), String> {
        let v = view.ok_or("etcd is unreachable")?;
        let conn = v
            .member(to)
            .map(|m| m.conn.clone())
            .ok_or_else(|| format!("{to} has not published its address"))?;
        let (request, rev) = match &v.request {
            Some((r, rev)) => (r.clone(), Some(*rev)),
            // Maintenance on the leader: a switchover nobody filed.
            None => (
                Request {
                    kind: RequestKind::Switchover,
                    from: Some(self.cfg.name.clone()),
                    to: Some(to.to_string()),
                    at: None,
                    requested_at: unix_now(),
                    handed_over: None,
                },
                None,
            ),
        };
        let started = monotonic_ms();
        log(format!("switchover to {to}: shutting down cleanly"));
        self.state = "handing over".into();
        // Out of HAProxy's read-write pool before the server stops accepting connections.
        if let Ok(mut s) = self.shared.lock() {
            s.writable_until = 0;
        }
        let _ = self.guard.standby();
        self.pg.stop("fast")?;
        let handed = (|| {
            let lsn = self.pg.shutdown_checkpoint()?;
            self.pg.prepare_standby(Some(&conn))?;
            let r = Request {
                handed_over: Some(HandedOver {
                    to: to.to_string(),
                    lsn,
                    at: unix_now(),
                }),
                ..request
            };
            let written = match rev {
                Some(rev) => self.dcs.update_request(&r, rev),
                None => self.dcs.file_request(&r),
            }
            .map_err(|e| e.to_string())?;
            if !written {
                return Err("the request changed meanwhile".to_string());
            }
            Ok(lsn)
        })();
        let lsn = match handed {
            Ok(lsn) => lsn,
            Err(e) => {
                // Still the leader: come back as the primary.
                let _ = std::fs::remove_file(self.pg.data.path.join("standby.signal"));
                self.pg.start()?;
                return Err(format!("switchover to {to} abandoned: {e}"));
            }
        };
        if let Some(rev) = self.my_revision {
            let _ = self.dcs.release_leader(rev);
        }
        self.lost_leadership();
        self.handed_over = true;
        log(format!(
            "handed over to {to} after {} ms (last record at {:X}); restarting as its standby",
            monotonic_ms().saturating_sub(started),
            lsn
        ));
        self.state = "starting".into();
        self.pg.start()
    }

    fn ensure_slots(&mut self, view: Option<&View>) {
        let Some(v) = view else { return };
        let names: Vec<String> = v.members.iter().map(|m| m.name.clone()).collect();
        if names != self.slots_for {
            match self.pg.ensure_slots(&names) {
                Ok(()) => self.slots_for = names,
                Err(e) => warn(format!("cannot create replication slots: {e}")),
            }
        }
    }

    fn record(&self, obs: &Observed, view: Option<&View>) -> MemberRecord {
        let upstream = upstream_name(obs, view);
        MemberRecord {
            name: self.cfg.name.clone(),
            conn: self.cfg.postgresql.connect_address.clone(),
            api: self.cfg.api_address(),
            role: if !obs.running {
                "stopped".into()
            } else if obs.in_recovery {
                "replica".into()
            } else {
                "primary".into()
            },
            state: if obs.running && obs.in_recovery && obs.streaming && self.state == "running" {
                "streaming".into()
            } else {
                self.state.clone()
            },
            timeline: obs.timeline,
            lsn: obs.lsn,
            replayed_lsn: obs.replayed_lsn,
            upstream: if obs.in_recovery { upstream } else { None },
            nofailover: self.cfg.tags.nofailover,
            priority: self.cfg.tags.priority,
            settings: obs.settings.clone(),
            warnings: self.standby_warnings(obs, view),
            down: self.down,
        }
    }

    /// A standby with lower settings than the leader's pauses its recovery at the first
    /// WAL record that needs them; say so where people look.
    fn standby_warnings(&self, obs: &Observed, view: Option<&View>) -> Vec<String> {
        let leader = view.and_then(|v| {
            v.leader
                .as_ref()
                .map(|l| l.name.clone())
                .and_then(|l| v.member(&l).cloned())
        });
        match leader {
            Some(l) if obs.running && obs.in_recovery && l.name != self.cfg.name => {
                let below = crate::dcs::settings_below(&obs.settings, &l);
                if below.is_empty() {
                    vec![]
                } else {
                    vec![format!(
                        "settings below the primary's (raise them and restart): {}",
                        below.join(", ")
                    )]
                }
            }
            _ => vec![],
        }
    }

    fn update_snapshot(&self, me: MemberRecord, v: &View, action: &Action) {
        let writable_until = match (self.last_leader_write, v.leader.as_ref()) {
            (Some(t), Some(l)) if l.name == self.cfg.name => t + self.cfg.timing().retry_timeout,
            _ => 0,
        };
        let mut members = v.members.clone();
        match members.iter_mut().find(|m| m.name == me.name) {
            Some(m) => *m = me.clone(),
            None => members.push(me.clone()),
        }
        members.sort_by(|a, b| a.name.cmp(&b.name));
        let now = monotonic_ms();
        let leader_alive = match v.leader.as_ref() {
            Some(l) if l.name == self.cfg.name => now < writable_until,
            Some(_) => self
                .leader_seen
                .is_some_and(|(_, since)| now.saturating_sub(since) < self.cfg.timing().ttl),
            None => false,
        };
        if let Ok(mut s) = self.shared.lock() {
            *s = Snapshot {
                me: Some(me),
                leader: v.leader.as_ref().map(|l| l.name.clone()),
                members,
                writable_until,
                etcd_ok: v.leader.is_some() || !v.members.is_empty(),
                last_action: format!("{action:?}"),
                down: self.down,
                paused: v.paused,
                leader_alive,
                sync_standby: v
                    .sync
                    .as_ref()
                    .filter(|s| v.leader.as_ref().is_some_and(|l| l.name == s.leader))
                    .and_then(|s| s.standby.clone()),
                request: v.request.as_ref().map(|(r, _)| r.clone()),
                counters: self.counters.clone(),
            };
        }
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
