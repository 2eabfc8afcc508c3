//! Synchronous mode on the leader: `synchronous_node_count` healthy standbys synchronous,
//! and the sync record in etcd naming them only while they are; with quorum commit, every
//! healthy standby a voter, and the record's quorum only what is proven (see the
//! architecture document). On a voter without a leader: the quorum round (`quorum`).

use std::time::Duration;

use pgshift_core::pg::sql::quote_ident;

use super::{log, ActError, Agent};
use crate::config::SyncMode;
use crate::dcs::{MemberRecord, View};
use crate::decide::{Heard, Millis};
use crate::postgres::Observed;
use crate::quorum::{self, Position};
use crate::records::SyncState;

impl Agent {
    /// In synchronous mode, nobody is synchronous for this node yet: the sync record says
    /// so before it accepts a write (it also names this node as the one that led last),
    /// then PostgreSQL waits for any standby (strict) or none (see manage_sync).
    pub(super) fn sync_before_promotion(&mut self) -> Result<(), ActError> {
        let me = self.cfg.name.clone();
        let (record, names) = match self.cfg.replication.synchronous_mode {
            SyncMode::Off => return Ok(()),
            SyncMode::First => (SyncState::new(me, vec![]), self.sync_names_for(&[])),
            SyncMode::Quorum => (SyncState::quorum(me, vec![], 0), self.quorum_names_for(&[])),
        };
        self.store.write_sync(&record)?;
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

    fn write_sync_record(&self, record: &SyncState) -> Result<(), ActError> {
        self.store
            .write_sync(record)
            .map_err(|e| format!("cannot write the sync record: {e}").into())
    }

    /// Sets synchronous_standby_names to `names` unless it already is (as last set, or as
    /// PostgreSQL says when not known); whether it already was.
    fn apply_sync_names(&mut self, names: String) -> Result<bool, ActError> {
        let current = match self.sync_names.clone() {
            Some(n) => n,
            None => self.pg.sync_names()?,
        };
        let already = current == names;
        if !already {
            self.pg.set_sync_names(&names)?;
        }
        self.sync_names = Some(names);
        Ok(already)
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
            self.write_sync_record(&SyncState::new(me.clone(), record.clone()))?;
            for old in recorded.iter().filter(|r| !record.contains(r)) {
                log(format!("{old} is no longer a synchronous standby"));
            }
        }
        self.apply_sync_names(self.sync_names_for(&desired))?;
        let mut joined = Vec::new();
        for d in desired.iter().filter(|d| !record.contains(d)) {
            if self.pg.is_sync_and_caught_up(d)? {
                joined.push(d.clone());
            }
        }
        if !joined.is_empty() {
            record.extend(joined.iter().cloned());
            self.write_sync_record(&SyncState::new(me, record))?;
            for d in joined {
                log(format!("{d} is a synchronous standby"));
            }
        }
        Ok(())
    }

    /// synchronous_standby_names for quorum commit: any k of `voters` (k as
    /// `sync_names_for` counts it: fewer than k voters wait for all of them, or in strict
    /// mode for k, which blocks commits).
    fn quorum_names_for(&self, voters: &[String]) -> String {
        let k = self.quorum_k(voters.len());
        let strict = self.cfg.replication.synchronous_mode_strict;
        let quoted: Vec<String> = voters.iter().map(|n| quote_ident(n)).collect();
        match quoted.len() {
            0 if !strict => String::new(),
            0 => format!("ANY {k} (*)"),
            _ => format!("ANY {k} ({})", quoted.join(", ")),
        }
    }

    /// How many voters confirm a commit: synchronous_node_count, or all there are when
    /// fewer and not strict.
    fn quorum_k(&self, voters: usize) -> usize {
        let k = self.cfg.replication.synchronous_node_count;
        if self.cfg.replication.synchronous_mode_strict {
            k
        } else {
            k.min(voters)
        }
    }

    /// Quorum commit on the leader. The record (voters V, quorum q) claims every commit
    /// this leader acknowledged is on at least q of V; a voter without a leader promotes
    /// after hearing |V| - q + 1 of them (see `decide::quorum_takeover`). Each change keeps
    /// the claim true, so the record always changes before PostgreSQL does:
    /// - a healthy standby joins V before synchronous_standby_names names it, q unchanged;
    /// - one that is not leaves V, q lowered by one for each leaving (a commit it held is
    ///   on one voter fewer), before PostgreSQL stops waiting for it;
    /// - q rises to k only once PostgreSQL has waited for any k of V for a whole loop
    ///   and k voters flushed past the current WAL position (older commits on k too).
    pub(super) fn manage_quorum(&mut self, v: &View) -> Result<(), ActError> {
        let me = self.cfg.name.clone();
        let ours = v
            .sync
            .as_ref()
            .filter(|s| s.leader == me)
            .and_then(SyncState::voting);
        let (recorded, q) = ours
            .map(|(voters, q)| (voters.to_vec(), q))
            .unwrap_or_default();
        let mut healthy: Vec<String> = v
            .members
            .iter()
            .filter(|m| v.can_be_synchronous(m, &me))
            .map(|m| m.name.clone())
            .collect();
        healthy.sort();
        let leaving = recorded.iter().filter(|r| !healthy.contains(r)).count();
        let mut quorum = q.saturating_sub(leaving);
        if ours.is_none() || recorded != healthy || quorum != q {
            self.write_sync_record(&SyncState::quorum(me.clone(), healthy.clone(), quorum))?;
            for r in recorded.iter().filter(|r| !healthy.contains(r)) {
                log(format!("{r} is no longer a quorum voter (quorum {quorum})"));
            }
            for h in healthy.iter().filter(|h| !recorded.contains(h)) {
                log(format!("{h} is a quorum voter"));
            }
        }
        let settled = self.apply_sync_names(self.quorum_names_for(&healthy))?;
        let k = self.quorum_k(healthy.len()).min(healthy.len());
        if settled && quorum < k {
            let caught_up = self.pg.quorum_caught_up(&healthy)?.min(k);
            if caught_up > quorum {
                quorum = caught_up;
                self.write_sync_record(&SyncState::quorum(me, healthy, quorum))?;
                log(format!(
                    "quorum commit: any {quorum} of the voters hold every commit"
                ));
            }
        }
        Ok(())
    }

    /// On a voter of a quorum record while no leader is alive: this loop's positions of the
    /// voters, this node's own included, each observed after the round began (see
    /// `quorum`). Empty outside a round. A round loops fast: each answer may bring the
    /// takeover.
    pub(super) fn quorum_heard(
        &mut self,
        obs: &Observed,
        view: Option<&View>,
        leader_alive: bool,
        now: Millis,
    ) -> Vec<Heard> {
        let me = self.cfg.name.clone();
        let voters = view
            .filter(|_| self.cfg.replication.synchronous_mode == SyncMode::Quorum)
            .and_then(|v| v.sync.as_ref())
            .and_then(SyncState::voting)
            .filter(|(voters, q)| *q > 0 && voters.contains(&me))
            .map(|(voters, _)| voters.to_vec());
        let (Some(voters), Some(v)) = (voters, view) else {
            self.node.quorum_round = None;
            return vec![];
        };
        // Paused, nobody is promoted automatically: no round (it loops fast).
        if leader_alive || v.paused || !obs.running || !obs.in_recovery || self.node.down {
            self.node.quorum_round = None;
            return vec![];
        }
        let observed_at = self.node.observed_at;
        let round = self
            .node
            .quorum_round
            .get_or_insert_with(|| quorum::Round::new(now));
        round.local(
            &Position {
                name: me.clone(),
                running: obs.running,
                in_recovery: obs.in_recovery,
                timeline: obs.timeline,
                lsn: obs.lsn,
                observed_at,
                now,
            },
            observed_at,
        );
        let others: Vec<(String, String)> = voters
            .iter()
            .filter(|n| **n != me)
            .filter_map(|n| v.member(n).map(|m| (n.clone(), m.api.clone())))
            .collect();
        let timeout = Duration::from_millis((self.cfg.timing().loop_wait / 2).clamp(100, 500));
        for p in quorum::ask(&self.peers, &others, timeout) {
            round.answer(&p);
        }
        self.node.urgent = true;
        round.heard()
    }
}
