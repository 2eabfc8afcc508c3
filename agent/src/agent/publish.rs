//! What this node tells others: its member record in etcd and the API's snapshot.

use super::{upstream_name, Agent};
use crate::api::{Counters, Snapshot};
use crate::dcs::{MemberRecord, View};
use crate::decide::Action;
use crate::postgres::Observed;
use crate::state::{NodeState, Role};

impl Agent {
    pub(super) fn record(&self, obs: &Observed, view: Option<&View>) -> MemberRecord {
        let upstream = upstream_name(obs, view);
        MemberRecord {
            name: self.cfg.name.clone(),
            conn: self.cfg.postgresql.connect_address.clone(),
            api: self.cfg.api_address(),
            role: if !obs.running {
                Role::Stopped
            } else if obs.in_recovery {
                Role::Replica
            } else {
                Role::Primary
            },
            state: match &self.node.state {
                NodeState::Running | NodeState::Streaming if obs.running && obs.in_recovery => {
                    if obs.streaming {
                        NodeState::Streaming
                    } else {
                        NodeState::NotStreaming
                    }
                }
                s => s.clone(),
            },
            timeline: obs.timeline,
            lsn: obs.lsn,
            replayed_lsn: obs.replayed_lsn,
            upstream: if obs.in_recovery { upstream } else { None },
            nofailover: self.cfg.tags.nofailover,
            priority: self.cfg.tags.priority,
            noloadbalance: self.cfg.tags.noloadbalance,
            nosync: self.cfg.tags.nosync,
            clonefrom: self.cfg.tags.clonefrom,
            pgbackrest: self.cfg.rebuild.stanza.is_some(),
            settings: obs.settings.clone(),
            warnings: self.warnings(obs, view),
            down: self.node.down,
            slots: obs.slots.clone(),
            // Only the leader's positions matter (standbys copy them), and only a primary
            // has positions members confirmed.
            slot_lsns: if obs.running && !obs.in_recovery {
                obs.slot_lsns.clone()
            } else {
                Default::default()
            },
            rewinds: self.api.counters.rewinds,
            rebuilds: self.api.counters.rebuilds,
            pending_restart: obs.running && obs.pending_restart,
            started_at: if obs.running { obs.started_at } else { 0 },
        }
    }

    /// Problems this node sees in itself, for `pgshift status`, `/status` and `/metrics`.
    fn warnings(&self, obs: &Observed, view: Option<&View>) -> Vec<String> {
        let mut w = self.standby_warnings(obs, view);
        w.extend(self.node.stall.as_ref().map(|s| s.reason().to_string()));
        w.extend(self.node.rejoins.warning(self.now()));
        w.extend(self.node.slot_error.clone());
        w.extend(self.settings.problem.clone());
        let leading = view
            .and_then(|v| v.leader.as_ref())
            .is_some_and(|l| l.name == self.cfg.name);
        let mode = self.cfg.replication.synchronous_mode;
        if leading && obs.running && !obs.in_recovery && mode.enabled() {
            // With quorum commit, the voters proven to hold every commit.
            let synced = view
                .and_then(View::leader_sync)
                .map_or(0, |s| s.voting().map_or(s.names().len(), |(_, q)| q));
            let k = self.cfg.replication.synchronous_node_count;
            let strict = self.cfg.replication.synchronous_mode_strict;
            if synced == 0 {
                w.push(if strict {
                    "synchronous mode (strict): no standby is synchronous, so commits wait".into()
                } else {
                    "synchronous mode: no standby is synchronous; commits are acknowledged by this node alone and no automatic failover can happen until a standby catches up".into()
                });
            } else if synced < k {
                w.push(if strict {
                    format!("synchronous mode (strict): {synced} of {k} standbys synchronous, so commits wait")
                } else {
                    format!("synchronous mode: {synced} of {k} standbys synchronous")
                });
            }
        }
        w
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

    pub(super) fn update_snapshot(&self, me: MemberRecord, v: &View, action: &Action) {
        let t = self.cfg.timing();
        let writable_until = match v.leader.as_ref() {
            Some(l) if l.name == self.cfg.name => self.clock.writable_until(t.retry_timeout),
            _ => 0,
        };
        let mut members = v.members.clone();
        match members.iter_mut().find(|m| m.name == me.name) {
            Some(m) => *m = me.clone(),
            None => members.push(me.clone()),
        }
        members.sort_by(|a, b| a.name.cmp(&b.name));
        let now = self.now();
        let leader_alive = match v.leader.as_ref() {
            Some(l) if l.name == self.cfg.name => now < writable_until,
            Some(_) => self.clock.leader_alive(now, t.ttl),
            None => false,
        };
        if let Ok(mut s) = self.api.shared.lock() {
            *s = Snapshot {
                me: Some(me),
                observed_at: self.node.observed_at,
                leader: v.leader.as_ref().map(|l| l.name.clone()),
                members,
                writable_until,
                etcd_ok: v.leader.is_some() || !v.members.is_empty(),
                last_action: format!("{action:?}"),
                down: self.node.down,
                paused: v.paused,
                leader_alive,
                sync_standbys: v
                    .leader_sync()
                    .map(|s| s.names().into_iter().map(String::from).collect())
                    .unwrap_or_default(),
                quorum: v
                    .leader_sync()
                    .and_then(|s| s.voting())
                    .map(|(voters, q)| (voters.to_vec(), q)),
                request: v.request.as_ref().map(|(r, _)| r.clone()),
                counters: Counters {
                    callbacks: self.callbacks.counts.snapshot(),
                    ..self.api.counters.clone()
                },
                failsafe: self.failsafe.until.is_some_and(|u| now < u)
                    || self.api.failsafe_seen.leader_within(now, t.ttl).is_some(),
            };
        }
    }

    /// The member record and the API snapshot as they are now, in the middle of an action.
    pub(super) fn publish_now(&mut self, view: Option<&View>, action: &Action) {
        let Some(v) = view else { return };
        self.node.observed_at = self.now();
        let obs = self.pg.observe();
        let me = self.record(&obs, Some(v));
        self.update_snapshot(me.clone(), v, action);
        let _ = self.store.publish(&me, self.lease);
    }
}
