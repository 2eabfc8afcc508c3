//! The replication slots the other members need, on this node's PostgreSQL: made from what
//! pg_replication_slots shows each loop, named by the one rule (`core::standby::slot`), with
//! slots an older naming rule left behind dropped by the leader once unused.

use pgshift_core::standby::slot;

use super::{log, warn, Agent};
use crate::dcs::View;
use crate::postgres::{self, Observed};

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
        if obs.running && !obs.in_recovery {
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
        let problem = (!problems.is_empty()).then(|| problems.join("; "));
        if problem.is_some() && problem != self.node.slot_error {
            warn(problem.clone().unwrap_or_default());
        }
        self.node.slot_error = problem;
    }
}
