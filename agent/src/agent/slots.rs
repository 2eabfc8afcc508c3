//! The replication slots the other members need, on this node's PostgreSQL: made from what
//! pg_replication_slots shows each loop, named by the one rule (`core::standby::slot`), with
//! slots an older naming rule left behind dropped by the leader once unused. A standby keeps
//! the same slots at the leader's positions, so that a promoted standby already holds the WAL
//! every other member still needs.

use pgshift_core::standby::slot;

use super::{log, warn, Agent};
use crate::dcs::View;
use crate::postgres::{self, Observed};
use crate::records::unix_now;
use crate::state::NodeState;

impl Agent {
    /// A slot for every other member, checked against the slots PostgreSQL has now (this
    /// loop's observation), never against a memory of what was created: pg_rewind empties
    /// pg_replslot, a rebuild starts without slots, an operator may drop one. On the primary,
    /// a slot an older naming rule made for a member is dropped once nobody streams from it.
    pub(super) fn ensure_slots(&mut self, view: Option<&View>, obs: &Observed) {
        let Some(v) = view else { return };
        let me = self.cfg.name.clone();
        let names: Vec<&str> = v
            .members
            .iter()
            .map(|m| m.name.as_str())
            .chain([me.as_str()])
            .collect();
        let collisions = slot::check_unique(names.iter().copied());
        let shared = |name: &str| {
            collisions
                .iter()
                .any(|c| c.first == name || c.second == name)
        };
        let missing: Vec<String> = v
            .members
            .iter()
            .filter(|m| m.name != me && !shared(&m.name))
            .map(|m| postgres::slot_name(&m.name))
            .filter(|s| !obs.slots.contains(s))
            .collect();
        let mut problems: Vec<String> = collisions.iter().map(|c| c.to_string()).collect();
        if !missing.is_empty() {
            match self.pg.create_slots(&missing) {
                Ok(created) if !created.is_empty() => log(format!(
                    "created missing replication slots: {}",
                    created.join(", ")
                )),
                Ok(_) => {}
                Err(e) => problems.push(format!(
                    "cannot create replication slots {}: {e}",
                    missing.join(", ")
                )),
            }
        }
        if obs.running && obs.in_recovery {
            self.follow_leader_slots(v, obs, &mut problems);
        }
        if obs.running && !obs.in_recovery {
            self.follow_cascaded_members(v, obs, &mut problems);
            let current: Vec<String> = names.iter().map(|n| postgres::slot_name(n)).collect();
            let legacy: Vec<(String, &str)> = obs
                .inactive_slots
                .iter()
                .filter(|s| !current.contains(s))
                .filter_map(|s| {
                    names
                        .iter()
                        .find(|n| slot::legacy_slot_names(n).contains(s))
                        .map(|n| (s.clone(), *n))
                })
                .collect();
            if !legacy.is_empty() {
                let slots: Vec<String> = legacy.iter().map(|(s, _)| s.clone()).collect();
                match self.pg.drop_unused_slots(&slots) {
                    Ok(dropped) => {
                        for (s, n) in legacy.iter().filter(|(s, _)| dropped.contains(s)) {
                            warn(format!(
                                "dropped replication slot {s}: an older naming rule made it for {n}, whose slot is {} now, and nothing streamed from it",
                                postgres::slot_name(n)
                            ));
                        }
                    }
                    Err(e) => problems.push(format!(
                        "cannot drop the unused slots {} of an older naming rule: {e}",
                        slots.join(", ")
                    )),
                }
            }
        }
        if obs.running {
            self.expire_member_slots(v, obs, &mut problems);
        }
        let problem = (!problems.is_empty()).then(|| problems.join("; "));
        if problem.is_some() && problem != self.node.slot_error {
            warn(problem.clone().unwrap_or_default());
        }
        self.node.slot_error = problem;
    }

    /// On a standby: each slot moved to where the leader's slot for the same member is
    /// (the leader's own slot to the leader's position), never past what this standby
    /// replayed. A member slot that reserves no WAL (made before slots reserved on creation)
    /// cannot be moved: it is dropped, and made again on the next loop.
    fn follow_leader_slots(&mut self, v: &View, obs: &Observed, problems: &mut Vec<String>) {
        let me = self.cfg.name.as_str();
        let Some(leader) = v
            .leader
            .as_ref()
            .and_then(|l| v.member(&l.name))
            .filter(|l| l.name != me)
        else {
            return;
        };
        let leader_slot = postgres::slot_name(&leader.name);
        let targets: Vec<(String, u64)> = obs
            .slot_lsns
            .iter()
            .filter(|(s, _)| obs.inactive_slots.contains(s))
            .filter_map(|(s, at)| {
                let wanted = if *s == leader_slot {
                    leader.lsn
                } else {
                    *leader.slot_lsns.get(s)?
                };
                let to = wanted.min(obs.replayed_lsn);
                (to > *at).then(|| (s.clone(), to))
            })
            .collect();
        if !targets.is_empty() {
            if let Err(e) = self.pg.advance_slots(&targets) {
                problems.push(format!("cannot advance the replication slots: {e}"));
            }
        }
        let members: Vec<String> = v
            .members
            .iter()
            .filter(|m| m.name != me)
            .map(|m| postgres::slot_name(&m.name))
            .collect();
        let unreserved: Vec<String> = obs
            .inactive_slots
            .iter()
            .filter(|s| members.contains(s) && !obs.slot_lsns.contains_key(*s))
            .cloned()
            .collect();
        if !unreserved.is_empty() {
            match self.pg.drop_unused_slots(&unreserved) {
                Ok(dropped) if !dropped.is_empty() => log(format!(
                    "dropped replication slots {} to make them again reserving WAL",
                    dropped.join(", ")
                )),
                Ok(_) => {}
                Err(e) => problems.push(format!(
                    "cannot drop the slots {} that reserve no WAL: {e}",
                    unreserved.join(", ")
                )),
            }
        }
    }

    /// On the leader: the slot of a member that streams from another standby (cascading)
    /// goes unused here; it moves with what that member received, so it keeps what the
    /// member would need from this node, not everything since it last streamed here.
    fn follow_cascaded_members(&mut self, v: &View, obs: &Observed, problems: &mut Vec<String>) {
        let me = self.cfg.name.as_str();
        let targets: Vec<(String, u64)> = v
            .members
            .iter()
            .filter(|m| {
                m.state == NodeState::Streaming && m.upstream.as_deref().is_some_and(|u| u != me)
            })
            .filter_map(|m| {
                let slot = postgres::slot_name(&m.name);
                let at = *obs.slot_lsns.get(&slot)?;
                (obs.inactive_slots.contains(&slot) && m.lsn > at).then_some((slot, m.lsn))
            })
            .collect();
        if !targets.is_empty() {
            if let Err(e) = self.pg.advance_slots(&targets) {
                problems.push(format!(
                    "cannot advance the slots of cascading members: {e}"
                ));
            }
        }
    }

    /// A member's slot outlives its absence for `member_slots_ttl`: the leader keeps `seen`
    /// (when it last saw each member, refreshed every minute at most), and every node
    /// drops, once unused, the slots of members gone longer, never of one in maintenance.
    /// Only names in `seen` are members': an operator's own slots are never touched.
    fn expire_member_slots(&mut self, v: &View, obs: &Observed, problems: &mut Vec<String>) {
        let ttl = self.cfg.replication.member_slots_ttl;
        let now = unix_now();
        let me = self.cfg.name.as_str();
        let present = |n: &str| n == me || v.member(n).is_some();
        let leading = !obs.in_recovery && v.leader.as_ref().is_some_and(|l| l.name == me);
        if leading {
            // Often enough that a member present at its last refresh is never judged gone
            // for longer than it was.
            let refresh = (ttl / 4).clamp(1, 60);
            let mut seen = v.seen.clone();
            for name in v.members.iter().map(|m| m.name.as_str()).chain([me]) {
                if seen
                    .get(name)
                    .is_none_or(|t| now.saturating_sub(*t) >= refresh)
                {
                    seen.insert(name.to_string(), now);
                }
            }
            if seen != v.seen {
                if let Err(e) = self.store.write_seen(&seen) {
                    problems.push(format!("cannot record which members were seen: {e}"));
                }
            }
        }
        if ttl == 0 {
            return;
        }
        let expired: Vec<(String, &str, u64)> = v
            .seen
            .iter()
            .filter(|(n, _)| !present(n) && !v.down.contains(*n))
            .map(|(n, t)| (postgres::slot_name(n), n.as_str(), now.saturating_sub(*t)))
            .filter(|(s, _, gone)| *gone > ttl && obs.inactive_slots.contains(s))
            .collect();
        if expired.is_empty() {
            return;
        }
        let slots: Vec<String> = expired.iter().map(|(s, _, _)| s.clone()).collect();
        match self.pg.drop_unused_slots(&slots) {
            Ok(dropped) => {
                for (s, n, gone) in expired.iter().filter(|(s, _, _)| dropped.contains(s)) {
                    warn(format!(
                        "dropped replication slot {s}: {n} has been gone {gone} s (member_slots_ttl {ttl} s); it needs a rebuild to come back"
                    ));
                }
            }
            Err(e) => problems.push(format!(
                "cannot drop the slots {} of members gone longer than member_slots_ttl: {e}",
                slots.join(", ")
            )),
        }
    }
}
