//! `pgshift restart`: an operator's request, in etcd, that this node restart PostgreSQL (see
//! `records::Restart`). A standby restarts in place once the request is due. A leader waits
//! until no other member has a restart pending (standbys first), then files a switchover: the
//! handover shuts it down cleanly and starts it as a standby, which is the restart, without a
//! write outage beyond the switchover's. The request is done, and deleted, once the running
//! server started after this agent first saw it due (both times from this host's clock:
//! another host's would make a skewed clock restart it again and again).

use super::{log, warn, Agent};
use crate::dcs::View;
use crate::postgres::Observed;
use crate::records::{unix_now, Request, RequestKind, Restart, RESTART_TIMEOUT_SECS};

impl Agent {
    /// Carries out this node's restart request when due; true when PostgreSQL was restarted
    /// here (the caller observes again).
    pub(super) fn take_restart(&mut self, v: &View, obs: &Observed) -> bool {
        let me = self.cfg.name.clone();
        let Some((r, revision)) = v.restart.get(&me) else {
            return false;
        };
        let now = unix_now();
        if r.due() > now {
            return false;
        }
        let baseline = match self.node.restart_baseline {
            Some((rev, t)) if rev == *revision => t,
            _ => {
                // A stopped server: its next start (by the loop) is the restart.
                let t = if obs.running { obs.started_at } else { 0 };
                self.node.restart_baseline = Some((*revision, t));
                t
            }
        };
        if obs.running && obs.started_at > baseline {
            log(format!(
                "restart requested through {} done: PostgreSQL started at {}",
                r.by, obs.started_at
            ));
            let _ = self.store.end_node_request(Restart::KIND, &me, *revision);
            return false;
        }
        if now > r.due() + RESTART_TIMEOUT_SECS {
            warn(format!(
                "restart requested through {} not done {RESTART_TIMEOUT_SECS} s after it was due: dropped",
                r.by
            ));
            let _ = self.store.end_node_request(Restart::KIND, &me, *revision);
            return false;
        }
        let leading = v.leader.as_ref().is_some_and(|l| l.name == me);
        if !leading {
            // A stopped node is started by the loop (that start is the restart); a running
            // primary that does not lead is the loop's to rejoin.
            if !(obs.running && obs.in_recovery) {
                return false;
            }
            log(format!(
                "restarting PostgreSQL, as requested through {}",
                r.by
            ));
            let restarted = self.pg.stop("fast").and_then(|_| self.pg.start());
            match restarted {
                Ok(()) => {
                    self.api.counters.restarts += 1;
                    let _ = self.store.end_node_request(Restart::KIND, &me, *revision);
                }
                // The next loops start it as a standby again; the request stays until then.
                Err(e) => warn(format!("restart of PostgreSQL failed: {e}")),
            }
            return true;
        }
        // The leader: after every other requested restart, by a switchover.
        let others = v.restart.keys().filter(|n| **n != me).count();
        if others > 0 || v.request.is_some() {
            return false;
        }
        let handover = Request {
            kind: RequestKind::Switchover,
            from: Some(me),
            to: None,
            at: None,
            requested_at: now,
            handed_over: None,
        };
        match self.store.file_request(&handover) {
            Ok(true) => log("restart of the leader: switching over to a standby first"),
            Ok(false) => {}
            Err(e) => warn(format!(
                "restart of the leader: cannot file the switchover: {e}"
            )),
        }
        false
    }
}
