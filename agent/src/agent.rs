//! The agent's loop: observe PostgreSQL and etcd, ask `decide`, carry the action out, publish
//! this node's facts, refresh the API snapshot; every `loop_wait`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::api::{self, Shared, Snapshot};
use crate::config::Config;
use crate::dcs::{Dcs, HistoryEntry, MemberRecord, View};
use crate::decide::{self, Action, Cluster, Facts, Local};
use crate::etcd::{self, Client};
use crate::guard::{monotonic_ms, Guard};
use crate::postgres::{LocalPg, Observed};

pub struct Agent {
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
    /// Consecutive loops a running standby was not streaming.
    not_streaming: u32,
    state: String,
    slots_for: Vec<String>,
}

fn log(msg: impl AsRef<str>) {
    eprintln!("pgshift: {}", msg.as_ref());
}

impl Agent {
    pub fn new(cfg: Config) -> Result<Agent, String> {
        let t = cfg.timing();
        // Each etcd call must fail well inside retry_timeout, so a slow member cannot cost
        // the leader its leadership.
        let timeout = Duration::from_millis((t.retry_timeout / 3).clamp(200, 1000));
        let etcd = Client::new(&cfg.etcd.endpoints, timeout)?;
        let dcs = Dcs::new(etcd, &cfg.cluster);
        let pg = LocalPg::new(&cfg)?;
        let guard = Guard::spawn(&cfg.postgresql.data_directory)
            .map_err(|e| format!("cannot start the fence guard: {e}"))?;
        let shared: Shared = Arc::new(Mutex::new(Snapshot::default()));
        api::serve(&cfg.api.listen, shared.clone())
            .map_err(|e| format!("cannot listen on {}: {e}", cfg.api.listen))?;
        Ok(Agent {
            cfg,
            dcs,
            pg,
            guard,
            shared,
            lease: 0,
            leader_seen: None,
            last_leader_write: None,
            my_revision: None,
            not_streaming: 0,
            state: "starting".into(),
            slots_for: Vec::new(),
        })
    }

    pub fn run(mut self) -> ! {
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
            self.cycle();
            let spent = monotonic_ms().saturating_sub(started);
            std::thread::sleep(Duration::from_millis(
                loop_wait.saturating_sub(spent).max(10),
            ));
        }
    }

    fn cycle(&mut self) {
        if !self.guard.alive() {
            log("the fence guard exited; starting a new one");
            match Guard::spawn(&self.cfg.postgresql.data_directory) {
                Ok(g) => self.guard = g,
                Err(e) => log(format!("cannot restart the fence guard: {e}")),
            }
        }
        let obs = self.pg.observe();
        let view = self.read_cluster();
        let now = monotonic_ms();
        if let Ok(v) = &view {
            self.track_leader(v, now);
        }
        let facts = self.facts(&obs, view.as_ref().ok(), now);
        let action = decide::decide(&facts);
        if !matches!(action, Action::Wait { .. } | Action::RenewLeader) {
            log(format!("{action:?}"));
        }
        let outcome = self.act(&action, view.as_ref().ok(), &obs);
        if let Err(e) = &outcome {
            log(format!("{action:?} failed: {e}"));
        }
        let obs = if matches!(action, Action::Wait { .. } | Action::RenewLeader) {
            obs
        } else {
            self.pg.observe()
        };
        if let (Action::TakeLeader { promote, .. }, Ok(()), Ok(v)) = (&action, &outcome, &view) {
            // With the timeline the promotion gave (the observation just made).
            let entry = HistoryEntry {
                leader: self.cfg.name.clone(),
                timeline: obs.timeline,
                at: unix_now(),
                reason: if *promote {
                    "failover"
                } else {
                    "leader key reclaimed"
                }
                .into(),
            };
            let _ = self.dcs.record_history(v, entry);
        }
        let me = self.record(&obs, view.as_ref().ok());
        if let Ok(v) = &view {
            let _ = self.dcs.publish(&me, self.lease);
            self.update_snapshot(me, v, &action);
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
            self.not_streaming += 1;
        } else {
            self.not_streaming = 0;
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
        let long = (2 * t.ttl).div_ceil(t.loop_wait.max(1)) as u32;
        let leader_alive = self
            .leader_seen
            .is_some_and(|(_, since)| now.saturating_sub(since) < t.ttl);
        let diverged = leader_rec.is_some_and(|l| {
            (!obs.running && was_primary)
                || (obs.running
                    && leader_alive
                    && self.not_streaming >= long
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
                        .map(MemberRecord::as_member)
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
            log(format!("cannot reach the fence guard: {e}"));
        }
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
                Ok(())
            }
            Action::RenewLeader => {
                let current = view.and_then(|v| v.leader.as_ref()).map(|l| l.revision);
                let sent = monotonic_ms();
                match self
                    .dcs
                    .write_leader(&me, self.lease, current)
                    .map_err(|e| e.to_string())?
                {
                    Some(rev) => {
                        self.wrote_leader(rev, sent);
                        self.state = "running".into();
                        if obs.running && !obs.in_recovery {
                            self.ensure_slots(view);
                        }
                        Ok(())
                    }
                    None => {
                        self.lost_leadership();
                        Err("the leader key changed under us".into())
                    }
                }
            }
            Action::TakeLeader { expected, promote } => {
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
                        if *promote {
                            self.state = "promoting".into();
                            self.pg.promote()?;
                            log("promoted");
                        }
                        self.state = "running".into();
                        self.ensure_slots(view);
                        Ok(())
                    }
                }
            }
            Action::Promote => {
                self.state = "promoting".into();
                self.pg.promote()?;
                self.state = "running".into();
                Ok(())
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
                self.not_streaming = 0;
                self.pg.start()
            }
        }
    }

    fn ensure_slots(&mut self, view: Option<&View>) {
        let Some(v) = view else { return };
        let names: Vec<String> = v.members.iter().map(|m| m.name.clone()).collect();
        if names != self.slots_for {
            match self.pg.ensure_slots(&names) {
                Ok(()) => self.slots_for = names,
                Err(e) => log(format!("cannot create replication slots: {e}")),
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
        if let Ok(mut s) = self.shared.lock() {
            *s = Snapshot {
                me: Some(me),
                leader: v.leader.as_ref().map(|l| l.name.clone()),
                members,
                writable_until,
                etcd_ok: v.leader.is_some() || !v.members.is_empty(),
                last_action: format!("{action:?}"),
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

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
