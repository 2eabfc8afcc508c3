//! `pgshift reinit`: an operator's request, in etcd, that this node rebuild its data
//! directory. The agent only marks the directory (the marker a half-done pg_rewind leaves,
//! see `postgres::REBUILD_PENDING`) and deletes the request; the rebuild is then the rejoin
//! every node already knows (`decide` sends a marked directory to a rejoin, the worker moves
//! the old directory aside and copies a fresh one), with its deadline, its cancellation by
//! `pgshift down`, and its fallback from a clonefrom member to the leader.

use super::{log, warn, Agent};
use crate::dcs::View;
use crate::records::Reinit;

impl Agent {
    /// Takes a reinit request for this node, if one is pending; true when the data directory
    /// was marked (the caller observes again: the decision must see the marker).
    pub(super) fn take_reinit(&mut self, v: &View) -> bool {
        let me = self.cfg.name.clone();
        let Some((r, revision)) = v.reinit.get(&me) else {
            return false;
        };
        // The API refuses a leader, but the leadership may have come here since.
        if v.leader.as_ref().is_some_and(|l| l.name == me) {
            warn(format!(
                "reinit requested by {} refused: this node leads (switch over first)",
                r.by
            ));
            let _ = self.store.end_node_request(Reinit::KIND, &me, *revision);
            return false;
        }
        let why = format!("reinit requested through {} at {}", r.by, r.requested_at);
        self.node.rebuild_from = r.from;
        let marked = match self.pg.mark_rebuild(&why) {
            Ok(()) => {
                log(format!("{why}: the data directory is marked for a rebuild"));
                true
            }
            // Nothing to mark (no data directory): the request cannot be carried out here;
            // kept, it would be retried every loop.
            Err(e) => {
                warn(format!("{why}: cannot mark the data directory: {e}"));
                false
            }
        };
        if let Err(e) = self.store.end_node_request(Reinit::KIND, &me, *revision) {
            // Taken again next loop: marking twice is harmless.
            warn(format!("cannot delete the reinit request in etcd: {e}"));
        }
        marked
    }
}
