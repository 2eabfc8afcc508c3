//! Synchronous mode on the leader: `synchronous_node_count` healthy standbys synchronous,
//! and the sync record in etcd naming them only while they are (see the architecture
//! document).

use pgshift_core::pg::sql::quote_ident;

use super::{log, ActError, Agent};
use crate::dcs::{MemberRecord, View};
use crate::records::SyncState;

impl Agent {
    /// In synchronous mode, nobody is synchronous for this node yet: the sync record says
    /// so before it accepts a write (it also names this node as the one that led last),
    /// then PostgreSQL waits for any standby (strict) or none (see manage_sync).
    pub(super) fn sync_before_promotion(&mut self) -> Result<(), ActError> {
        if !self.cfg.replication.synchronous_mode {
            return Ok(());
        }
        self.store
            .write_sync(&SyncState::new(self.cfg.name.clone(), vec![]))?;
        let names = self.sync_names_for(&[]);
        self.pg.set_sync_names(&names)?;
        self.sync_names = Some(names);
        Ok(())
    }

    /// synchronous_standby_names waiting for `chosen`: all of them; in strict mode with fewer
    /// than k chosen, for k (PostgreSQL then waits until an operator or a recovery brings
    /// more: commits block, as strict asks). With none chosen: any standby (strict) or none.
    fn sync_names_for(&self, chosen: &[String]) -> String {
        let k = self.cfg.replication.synchronous_node_count;
        let strict = self.cfg.replication.synchronous_mode_strict;
        let quoted: Vec<String> = chosen.iter().map(|n| quote_ident(n)).collect();
        match quoted.len() {
            0 if !strict => String::new(),
            0 if k == 1 => "*".into(),
            0 => format!("FIRST {k} (*)"),
            1 if k == 1 || !strict => quoted[0].clone(),
            n if strict => format!("FIRST {} ({})", k.max(n), quoted.join(", ")),
            n => format!("FIRST {n} ({})", quoted.join(", ")),
        }
    }

    /// The leader keeps `synchronous_node_count` healthy standbys synchronous and the sync
    /// record naming them. The order makes the record safe to promote from: a standby is
    /// recorded only once it is synchronous and caught up, and the record drops it before
    /// PostgreSQL stops waiting for it.
    pub(super) fn manage_sync(&mut self, v: &View) -> Result<(), ActError> {
        let me = self.cfg.name.clone();
        let k = self.cfg.replication.synchronous_node_count;
        let ours = v.sync.as_ref().filter(|s| s.leader == me);
        let recorded: Vec<String> = ours
            .map(|s| s.names().into_iter().map(String::from).collect())
            .unwrap_or_default();
        let healthy = |m: &MemberRecord| v.can_be_synchronous(m, &me);
        // The recorded ones that are still healthy (a change costs a catch-up), then the
        // most advanced of the others.
        let mut desired: Vec<String> = recorded
            .iter()
            .filter(|r| v.member(r).is_some_and(healthy))
            .take(k)
            .cloned()
            .collect();
        let mut others: Vec<&MemberRecord> = v
            .members
            .iter()
            .filter(|m| healthy(m) && !desired.contains(&m.name))
            .collect();
        others.sort_by(|a, b| b.lsn.cmp(&a.lsn).then(a.name.cmp(&b.name)));
        let room = k.saturating_sub(desired.len());
        desired.extend(others.into_iter().take(room).map(|m| m.name.clone()));

        let mut record: Vec<String> = recorded
            .iter()
            .filter(|r| desired.contains(r))
            .cloned()
            .collect();
        if ours.is_none() || record.len() != recorded.len() {
            self.store
                .write_sync(&SyncState::new(me.clone(), record.clone()))
                .map_err(|e| format!("cannot write the sync record: {e}"))?;
            for old in recorded.iter().filter(|r| !record.contains(r)) {
                log(format!("{old} is no longer a synchronous standby"));
            }
        }
        let names = self.sync_names_for(&desired);
        let current = match self.sync_names.clone() {
            Some(n) => n,
            None => self.pg.sync_names()?,
        };
        if current != names {
            self.pg.set_sync_names(&names)?;
        }
        self.sync_names = Some(names);
        let mut joined = Vec::new();
        for d in desired.iter().filter(|d| !record.contains(d)) {
            if self.pg.is_sync_and_caught_up(d)? {
                joined.push(d.clone());
            }
        }
        if !joined.is_empty() {
            record.extend(joined.iter().cloned());
            self.store
                .write_sync(&SyncState::new(me, record))
                .map_err(|e| format!("cannot write the sync record: {e}"))?;
            for d in joined {
                log(format!("{d} is a synchronous standby"));
            }
        }
        Ok(())
    }
}
