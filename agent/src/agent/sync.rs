//! Synchronous mode on the leader: one healthy standby synchronous, and the sync record in
//! etcd naming it only while it is (see the architecture document).

use super::{log, ActError, Agent};
use crate::dcs::{MemberRecord, View};
use crate::records::SyncState;
use crate::state::{NodeState, Role};

impl Agent {
    /// In synchronous mode, nobody is synchronous for this node yet: the sync record says
    /// so before it accepts a write (it also names this node as the one that led last),
    /// then PostgreSQL waits for any standby (strict) or none (see manage_sync).
    pub(super) fn sync_before_promotion(&mut self) -> Result<(), ActError> {
        if !self.cfg.replication.synchronous_mode {
            return Ok(());
        }
        self.store.write_sync(&SyncState {
            leader: self.cfg.name.clone(),
            standby: None,
        })?;
        let names = self.unsynced_names();
        self.pg.set_sync_names(&names)?;
        self.sync_names = Some(names);
        Ok(())
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
    pub(super) fn manage_sync(&mut self, v: &View) -> Result<(), ActError> {
        let me = self.cfg.name.clone();
        let ours = v.sync.as_ref().filter(|s| s.leader == me);
        let recorded = ours.and_then(|s| s.standby.clone());
        let healthy = |m: &MemberRecord| {
            m.name != me
                && m.role == Role::Replica
                && m.state == NodeState::Streaming
                && m.upstream.as_deref() == Some(me.as_str())
                && !m.down
                && !v.down.contains(&m.name)
                && !m.nofailover
                && !m.nosync
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
            self.store
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
                self.store
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
}
