//! Carrying out `decide`'s action: one method per action.

use std::time::{Duration, Instant};

use super::{log, warn, ActError, Agent};
use crate::config::{RebuildMethod, SyncMode};
use crate::dcs::View;
use crate::decide::{Action, Leader, Millis};
use crate::postgres::{LocalPgError, Observed, Rejoined, Stopped};
use crate::records::{unix_now, HandedOver, Outcome, Request, RequestKind};
use crate::state::NodeState;

/// Starts as a standby that fail in recovery, in a row, before the directory is rebuilt:
/// more than one (a start can fail once for a passing reason), few enough that a broken
/// standby is not left for long (the loop retries every loop_wait).
const FAILED_RECOVERIES_BEFORE_REBUILD: u32 = 3;

type Acted = Result<(), ActError>;

impl Agent {
    pub(super) fn act(&mut self, action: &Action, view: Option<&View>, obs: &Observed) -> Acted {
        match action {
            Action::Wait { .. } => {
                self.wait(view, obs);
                Ok(())
            }
            Action::RenewLeader => self.renew(view, obs),
            Action::EndRequest { ok, message } => self.end_request(*ok, message, view, obs),
            Action::HandOver { to } => self.hand_over(to, view),
            Action::TakeLeader { expected, promote } => {
                self.take_leader(*expected, *promote, view, obs)
            }
            Action::Promote => self.promote(),
            Action::StartPrimary => self.start_primary(),
            Action::StartStandby { leader } => self.start_standby(leader.as_deref(), view),
            Action::Fence { reason } => self.fence(reason),
            Action::Follow { leader } => self.follow(leader, view),
            Action::Rejoin { leader } => self.rejoin(leader, view),
        }
    }

    /// host:port of `name`'s PostgreSQL, as it published it.
    fn conn_of(view: Option<&View>, name: &str) -> Result<String, ActError> {
        view.and_then(|v| v.member(name))
            .map(|m| m.conn.clone())
            .ok_or_else(|| ActError::Refused(format!("{name} has not published its address yet")))
    }

    fn wait(&mut self, view: Option<&View>, obs: &Observed) {
        self.node.state = if obs.running && obs.in_recovery && obs.streaming {
            NodeState::Streaming
        } else if obs.running {
            NodeState::Running
        } else {
            NodeState::Stopped
        };
        if !obs.running || obs.in_recovery {
            let _ = self.guard.standby();
        }
        if obs.running && obs.in_recovery {
            // Slots for the other members ahead of a promotion, so an old primary that
            // follows this node finds its slot at once (a missing slot costs a walreceiver
            // retry, 5 s by default). Unreserved until used.
            self.ensure_slots(view, obs);
        }
    }

    fn renew(&mut self, view: Option<&View>, obs: &Observed) -> Acted {
        let current = view.and_then(|v| v.leader.as_ref()).map(|l| l.revision);
        // Renewed ahead of this loop's read, and the read shows that revision: done.
        if current.is_some() && current == self.node.renewed_first {
            return self.leader_chores(view, obs);
        }
        let sent = self.now();
        if let Some(rev) = self
            .store
            .write_leader(&self.cfg.name, self.lease, current)?
        {
            return self.renewed(rev, sent, view, obs);
        }
        // The key changed since this loop read it. A renewal of ours whose answer was lost
        // (it timed out on a lossy link, and etcd applied it after our read) does that too:
        // the key then still names this node, at a newer revision. Nobody else writes this
        // node's name, so renewing on that revision is safe; anything else is a lost
        // leadership.
        let ours = self
            .store
            .read()
            .ok()
            .and_then(|v| v.leader)
            .filter(|l| l.name == self.cfg.name)
            .map(|l| l.revision);
        if let Some(landed) = ours {
            let sent = self.now();
            if let Some(rev) = self
                .store
                .write_leader(&self.cfg.name, self.lease, Some(landed))?
            {
                log(format!(
                    "renewed on revision {landed}, an earlier renewal of ours whose answer was lost"
                ));
                return self.renewed(rev, sent, view, obs);
            }
        }
        self.lost_leadership();
        Err("the leader key changed under us".into())
    }

    /// A renewal sent at `sent` wrote revision `rev`: the guard's deadline moves, and the
    /// leader's chores of the loop follow.
    fn renewed(&mut self, rev: i64, sent: Millis, view: Option<&View>, obs: &Observed) -> Acted {
        self.wrote_renewal(rev, sent);
        self.leader_chores(view, obs)
    }

    /// What a leader does each loop once its key is renewed: slots, synchronous standbys.
    fn leader_chores(&mut self, view: Option<&View>, obs: &Observed) -> Acted {
        self.node.state = NodeState::Running;
        if obs.running && !obs.in_recovery {
            self.ensure_slots(view, obs);
            if self.cfg.replication.synchronous_mode.enabled() {
                if let Some(v) = view {
                    let managed = match self.cfg.replication.synchronous_mode {
                        SyncMode::Quorum => self.manage_quorum(v),
                        _ => self.manage_sync(v),
                    };
                    if let Err(e) = managed {
                        self.sync_names = None;
                        warn(format!("synchronous replication: {e}"));
                    }
                }
            }
        }
        Ok(())
    }

    fn end_request(
        &mut self,
        ok: bool,
        message: &str,
        view: Option<&View>,
        obs: &Observed,
    ) -> Acted {
        self.renew(view, obs)?;
        let Some((request, rev)) = view.and_then(|v| v.request.clone()) else {
            return Ok(());
        };
        log(format!(
            "{:?} request {}: {message}",
            request.kind,
            if ok { "done" } else { "failed" }
        ));
        let outcome = Outcome {
            request,
            ok,
            message: message.to_string(),
            at: unix_now(),
        };
        self.store.end_request(rev, &outcome)?;
        Ok(())
    }

    fn take_leader(
        &mut self,
        expected: Option<i64>,
        promote: bool,
        view: Option<&View>,
        obs: &Observed,
    ) -> Acted {
        self.clock.takeover_begins();
        let sent = self.now();
        let Some(rev) = self
            .store
            .write_leader(&self.cfg.name, self.lease, expected)?
        else {
            return Err("another node took the leader key first".into());
        };
        self.wrote_leader(rev, sent);
        log(format!("took the leader key (revision {rev})"));
        self.node.handed_over = false;
        if promote {
            // The old leader's last sign of life: when we first saw the revision it left.
            let since = self.clock.old_leader_last_seen(sent);
            self.node.state = NodeState::Promoting;
            self.sync_before_promotion()?;
            tracing::info!("promotion: synchronous settings done");
            self.ensure_slots(view, obs);
            tracing::info!("promotion: slots done");
            self.promote_leading()?;
            let took = self.now().saturating_sub(since);
            self.api.counters.promotions += 1;
            self.api.counters.last_failover_ms = Some(took);
            self.node.state = NodeState::Running;
            // Tell HAProxy now, not after the checkpoint and a loop.
            self.announce_leader(view, rev);
            self.hba_checks.promoted();
            log(format!(
                "promoted ({took} ms after the old leader's last sign of life)"
            ));
            self.pg.checkpoint()?;
        }
        self.node.state = NodeState::Running;
        self.ensure_slots(view, obs);
        Ok(())
    }

    fn promote(&mut self) -> Acted {
        self.node.state = NodeState::Promoting;
        self.sync_before_promotion()?;
        self.promote_leading()?;
        self.hba_checks.promoted();
        self.node.state = NodeState::Running;
        self.pg.checkpoint()?;
        Ok(())
    }

    /// Promotes while holding the key: a slow promotion must not cost the leadership (the
    /// guard would stop the server that is just becoming the primary), so the key is
    /// renewed while PostgreSQL works.
    fn promote_leading(&mut self) -> Acted {
        let retry = self.cfg.timing().retry_timeout;
        let (store, guard, name, lease, now) = (
            &self.store,
            &mut self.guard,
            &self.cfg.name,
            self.lease,
            &self.now,
        );
        let mut held = self.clock.my_revision().zip(self.clock.last_write());
        let r = self.pg.promote(&mut || {
            let Some((rev, _)) = held else { return };
            let sent = now();
            // The key is bound to our lease: keep that alive too.
            let _ = store.keepalive(lease);
            match store.write_leader(name, lease, Some(rev)) {
                Ok(Some(new)) => {
                    held = Some((new, sent));
                    let _ = guard.primary_until(sent + retry);
                    tracing::info!("promotion: still in recovery; leadership renewed");
                }
                r => warn(format!("promotion: cannot renew the leadership: {r:?}")),
            }
        });
        if let Some((rev, sent)) = held {
            self.clock.wrote(rev, sent, retry);
        }
        r.map_err(ActError::from)
    }

    fn start_primary(&mut self) -> Acted {
        self.node.state = NodeState::Starting;
        self.pg.start()?;
        Ok(())
    }

    fn start_standby(&mut self, leader: Option<&str>, view: Option<&View>) -> Acted {
        self.node.state = NodeState::Starting;
        let _ = self.guard.standby();
        let conn = leader.and_then(|l| Self::conn_of(view, l).ok());
        self.pg.prepare_standby(conn.as_deref())?;
        let started = self.pg.start();
        if started.is_ok() {
            self.node.failed_recoveries = 0;
        } else if let (Some(l), Some(why)) = (leader, self.pg.recovery_failure()) {
            // WAL this directory cannot replay (seen after a pg_rewind that copied the
            // leader's segment at the timeline switch half-written: "WAL location ... belongs
            // to timeline 1, but previous recovered WAL file came from timeline 2") fails every
            // start the same way: after a few, a rebuild from the leader (the old directory
            // kept aside).
            self.node.failed_recoveries += 1;
            if self.node.failed_recoveries >= FAILED_RECOVERIES_BEFORE_REBUILD {
                let why = format!(
                    "PostgreSQL failed {} starts in a row in recovery: {why}",
                    self.node.failed_recoveries
                );
                log(format!("{why}; rebuilding from {l}"));
                self.pg.mark_rebuild(&why)?;
                self.node.failed_recoveries = 0;
            }
        }
        started?;
        Ok(())
    }

    fn fence(&mut self, reason: &str) -> Acted {
        log(format!("fencing: {reason}"));
        self.node.state = NodeState::Fenced;
        let r = self.pg.stop("immediate");
        self.release_leadership();
        match r? {
            Stopped::Now => log("fenced: PostgreSQL stopped"),
            Stopped::Already => log("fenced: PostgreSQL was already stopped (by the fence guard)"),
        }
        Ok(())
    }

    fn follow(&mut self, leader: &str, view: Option<&View>) -> Acted {
        let conn = Self::conn_of(view, leader)?;
        self.pg.follow(&conn)?;
        Ok(())
    }

    /// Becomes `leader`'s standby again after diverging: the rejoin (stop, pg_rewind, a
    /// rebuild if that cannot work) runs on the worker, under `replication.rebuild_timeout`;
    /// the loop goes on publishing its state meanwhile (see `rejoin_finished`).
    fn rejoin(&mut self, leader: &str, view: Option<&View>) -> Acted {
        let conn = Self::conn_of(view, leader)?;
        // A member tagged clonefrom that streams from the leader: a rebuild copies from it.
        let clone = view.and_then(|v| {
            v.members
                .iter()
                .find(|m| {
                    m.clonefrom
                        && m.name != self.cfg.name
                        && m.name != leader
                        && m.state == NodeState::Streaming
                        && m.upstream.as_deref() == Some(leader)
                })
                .map(|m| m.conn.clone())
        });
        self.release_leadership();
        self.node.state = NodeState::Rejoining;
        self.node.rejoins.attempted(self.now());
        let method = self
            .node
            .rebuild_from
            .take()
            .unwrap_or(self.cfg.rebuild.method);
        let from_repository = method == RebuildMethod::Pgbackrest;
        if from_repository && self.cfg.rebuild.stanza.is_none() {
            warn("a rebuild from pgBackRest was asked, but [rebuild] names no stanza here: a rebuild copies from the leader");
        }
        let job = self.pg.rejoin_job(
            &conn,
            clone.as_deref(),
            &self.cfg.replication.rewind_user,
            from_repository,
        );
        let deadline =
            Instant::now() + Duration::from_secs_f64(self.cfg.replication.rebuild_timeout);
        self.worker.start(job, leader, deadline);
        // Said at once: a rewind or a rebuild takes a while.
        self.publish_now(
            view,
            &Action::Rejoin {
                leader: leader.to_string(),
            },
        );
        Ok(())
    }

    /// The worker's rejoin ended: count it and start PostgreSQL as `leader`'s standby, or say
    /// why not (the next loops decide again; rejoins that do not help back off).
    pub(super) fn rejoin_finished(
        &mut self,
        leader: &str,
        result: Result<Rejoined, LocalPgError>,
    ) -> Acted {
        match result {
            Ok(how) => {
                match how {
                    Rejoined::Rewound => self.api.counters.rewinds += 1,
                    Rejoined::Rebuilt { .. } => self.api.counters.rebuilds += 1,
                }
                log(format!("rejoin {leader}: {how}"));
                self.node.not_streaming_since = None;
                self.node.stall = None;
                self.node.state = NodeState::Starting;
                self.pg.start()?;
                Ok(())
            }
            Err(e) if e.is_cancelled() => {
                self.node.state = NodeState::Stopped;
                log(format!("rejoin {leader} called off: {e}"));
                Ok(())
            }
            Err(e) => {
                self.node.state = NodeState::Stopped;
                Err(ActError::Pg(e))
            }
        }
    }

    /// A planned switchover: stop accepting writes with a clean shutdown (walsenders send
    /// every record, the shutdown checkpoint included, before they exit), tell `to` where
    /// that last record is, give up the key, and come back as a standby following `to`.
    fn hand_over(&mut self, to: &str, view: Option<&View>) -> Acted {
        let v = view.ok_or("etcd is unreachable")?;
        let conn = Self::conn_of(view, to)?;
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
        let started = self.now();
        log(format!("switchover to {to}: shutting down cleanly"));
        self.node.state = NodeState::HandingOver;
        // Out of HAProxy's read-write pool before the server stops accepting connections.
        if let Ok(mut s) = self.api.shared.lock() {
            s.writable_until = 0;
        }
        self.hba_checks.handing_over();
        let _ = self.guard.standby();
        self.pg.stop("fast")?;
        let handed = (|| -> Result<u64, ActError> {
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
                Some(rev) => self.store.update_request(&r, rev),
                None => self.store.file_request(&r),
            }?;
            if !written {
                return Err("the request changed meanwhile".into());
            }
            Ok(lsn)
        })();
        let lsn = match handed {
            Ok(lsn) => lsn,
            Err(e) => {
                // Still the leader: come back as the primary.
                let _ = std::fs::remove_file(self.pg.data_directory().join("standby.signal"));
                self.pg.start()?;
                return Err(format!("switchover to {to} abandoned: {e}").into());
            }
        };
        self.release_leadership();
        self.node.handed_over = true;
        log(format!(
            "handed over to {to} after {} ms (last record at {:X}); restarting as its standby",
            self.now().saturating_sub(started),
            lsn
        ));
        self.node.state = NodeState::Starting;
        self.pg.start()?;
        Ok(())
    }

    /// Publishes this node as the leader at `revision` right away (API snapshot and member
    /// record), without waiting for the end of the loop.
    fn announce_leader(&mut self, view: Option<&View>, revision: i64) {
        let Some(v) = view else { return };
        let mut v = v.clone();
        v.leader = Some(Leader {
            name: self.cfg.name.clone(),
            revision,
        });
        self.publish_now(Some(&v), &Action::Promote);
    }
}
