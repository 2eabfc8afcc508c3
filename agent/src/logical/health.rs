//! Whether changes really flow in each direction of the pair. One look is not enough: an
//! apply worker that fails on every change (a conflicting row) is restarted every
//! `wal_retrieve_retry_interval` and is "running" for a moment each time. So a direction
//! counts as flowing only when, compared with the previous look (the last `check`, kept in
//! a small state file, or a second look a moment later):
//! - the receiving side has an enabled subscription whose apply worker runs now,
//! - its error counters (apply and sync) did not rise,
//! - the sending side's slot for it is in use, and
//! - if the sending side had WAL the subscriber had not confirmed at the previous look, the
//!   slot's confirmed position moved since (an idle pair confirms up to the end at once,
//!   through keepalives, so "nothing waiting" is the normal idle state).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::config::LogicalConfig;
use super::status::{read_both, NodeState};

/// A previous look older than this proves nothing about "since the last check".
const MAX_AGE_SECS: u64 = 300;

/// What one look remembers for the next.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Memory {
    /// Unix seconds of the look.
    pub at: u64,
    /// "<node>/<subscription>" -> error count.
    pub errors: BTreeMap<String, i64>,
    /// "<node>/<slot>" -> confirmed position.
    pub confirmed: BTreeMap<String, i64>,
    /// "<node>" -> current WAL position.
    pub wal: BTreeMap<String, i64>,
    /// "<node>" -> whether it was down (read-only) when last reached. Kept while a node is
    /// unreachable: a down node stays down until `up`, which needs replication working or
    /// the other side down, so "down when last seen" stays true of an unreachable node.
    #[serde(default)]
    pub down: BTreeMap<String, bool>,
    /// This look found a direction not flowing. `check` acts only on two such looks in a row:
    /// a worker restarted on purpose (a certificate renewal) misses one look at most.
    #[serde(default)]
    pub broken: bool,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Memory {
    pub fn of(states: &[NodeState; 2]) -> Memory {
        let mut m = Memory {
            at: unix_now(),
            ..Memory::default()
        };
        for s in states.iter().filter(|s| s.reachable) {
            for sub in &s.subscriptions {
                m.errors
                    .insert(format!("{}/{}", s.name, sub.name), sub.errors);
            }
            for slot in &s.slots {
                if let Some(c) = slot.confirmed {
                    m.confirmed.insert(format!("{}/{}", s.name, slot.name), c);
                }
            }
            if let Some(w) = s.wal {
                m.wal.insert(s.name.clone(), w);
            }
            m.down.insert(s.name.clone(), s.down);
        }
        m
    }

    /// Recent enough to say what changed "since the last check".
    pub fn fresh(&self) -> bool {
        unix_now().saturating_sub(self.at) <= MAX_AGE_SECS
    }

    /// The previous look the file holds.
    pub fn load(path: &Path) -> Option<Memory> {
        serde_json::from_slice(&std::fs::read(path).ok()?).ok()
    }

    /// Records in the state file that `node` is now down (or writable): `down`/`up` run by
    /// an operator on this host tell the watch here at once, so a node taken down and then
    /// away (the transfer procedure) is known down while unreachable. Best effort.
    pub fn note(cfg: &LogicalConfig, node: &str, down: bool) {
        let path = cfg.state_file();
        let mut m = Memory::load(&path).unwrap_or_default();
        m.down.insert(node.to_string(), down);
        let _ = m.save(&path);
    }

    /// Best effort: a check that cannot remember still judges what it sees.
    pub fn save(&self, path: &Path) -> Result<(), String> {
        let mut bytes = serde_json::to_vec(self).map_err(|e| e.to_string())?;
        bytes.push(b'\n');
        let own = pgshift_core::atomic::Ownership {
            uid: nix::unistd::Uid::effective().as_raw(),
            gid: nix::unistd::Gid::effective().as_raw(),
            mode: 0o644,
        };
        pgshift_core::atomic::write_atomic(path, &bytes, Some(own))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))
    }
}

/// One direction of the pair: changes from `from` applied on `into`.
#[derive(Debug, Clone, Serialize)]
pub struct Direction {
    pub from: String,
    pub into: String,
    pub ok: bool,
    /// Why not, when not.
    pub why: Vec<String>,
}

/// Both directions, judged against the previous look (None, or one too old: the instant's
/// view only).
pub fn judge(states: &[NodeState; 2], prev: Option<&Memory>) -> Vec<Direction> {
    let prev = prev.filter(|m| m.fresh());
    (0..2)
        .map(|i| {
            let (into, from) = (&states[i], &states[1 - i]);
            let why = direction(into, from, prev);
            Direction {
                from: from.name.clone(),
                into: into.name.clone(),
                ok: why.is_empty(),
                why,
            }
        })
        .collect()
}

fn direction(into: &NodeState, from: &NodeState, prev: Option<&Memory>) -> Vec<String> {
    for s in [into, from] {
        if !s.reachable {
            return vec![format!(
                "{} is unreachable ({})",
                s.name,
                s.error.as_deref().unwrap_or("no answer")
            )];
        }
    }
    let subs: Vec<_> = into.subscriptions.iter().filter(|s| s.enabled).collect();
    if subs.is_empty() {
        return vec![format!("{} has no enabled subscription", into.name)];
    }
    let mut why = Vec::new();
    for sub in subs {
        if !sub.worker {
            why.push(format!(
                "the apply worker of {} on {} is not running",
                sub.name, into.name
            ));
        }
        let key = format!("{}/{}", into.name, sub.name);
        if let Some(before) = prev.and_then(|m| m.errors.get(&key)) {
            if sub.errors > *before {
                why.push(format!(
                    "{} on {} failed {} time(s) since the last check",
                    sub.name,
                    into.name,
                    sub.errors - before
                ));
            }
        }
        let slot_name = sub.slot.as_deref().unwrap_or(&sub.name);
        let Some(slot) = from.slots.iter().find(|s| s.name == slot_name) else {
            why.push(format!("{} has no slot {slot_name}", from.name));
            continue;
        };
        if !slot.active {
            why.push(format!(
                "slot {slot_name} on {} is not in use (nothing streams from it)",
                from.name
            ));
        }
        let key = format!("{}/{}", from.name, slot_name);
        let earlier = prev.and_then(|m| Some((*m.confirmed.get(&key)?, *m.wal.get(&from.name)?)));
        if let Some((confirmed, wal)) = earlier {
            if wal > confirmed && slot.confirmed == Some(confirmed) {
                why.push(format!(
                    "{} confirmed none of {}'s WAL since the last check ({} bytes were waiting)",
                    into.name,
                    from.name,
                    wal - confirmed
                ));
            }
        }
    }
    why
}

/// What `check` sees: both sides, both directions, and whether the previous look (recent
/// enough) found replication broken too.
pub struct Look {
    pub states: [NodeState; 2],
    pub directions: Vec<Direction>,
    pub broken_before: bool,
}

/// `check`/`watch`: this look judged against the previous one (`memory`, else the state
/// file), which this look then replaces.
pub fn look(cfg: &LogicalConfig, memory: &mut Option<Memory>) -> Look {
    let states = read_both(cfg);
    let path = cfg.state_file();
    // The file first: `down`/`up` may have noted something since this process last looked.
    let prev = Memory::load(&path).or_else(|| memory.take());
    let dirs = judge(&states, prev.as_ref());
    let mut now = Memory::of(&states);
    now.down.extend(
        prev.iter()
            .flat_map(|m| m.down.iter())
            .filter(|(n, _)| states.iter().any(|s| &s.name == *n && !s.reachable))
            .map(|(n, d)| (n.clone(), *d)),
    );
    now.broken = !all_ok(&dirs);
    if let Err(e) = now.save(&path) {
        tracing::debug!("{e}");
    }
    *memory = Some(now);
    Look {
        states,
        directions: dirs,
        broken_before: prev.is_some_and(|m| m.fresh() && m.broken),
    }
}

/// `up`/`ddl`: two looks `gap` apart, the second judged against the first.
pub fn settled(cfg: &LogicalConfig, gap: Duration) -> ([NodeState; 2], Vec<Direction>) {
    let first = Memory::of(&read_both(cfg));
    std::thread::sleep(gap);
    let states = read_both(cfg);
    let dirs = judge(&states, Some(&first));
    (states, dirs)
}

pub fn all_ok(dirs: &[Direction]) -> bool {
    dirs.iter().all(|d| d.ok)
}

/// "db1 -> db2: why; ..." for the directions that do not flow.
pub fn describe(dirs: &[Direction]) -> String {
    dirs.iter()
        .filter(|d| !d.ok)
        .map(|d| format!("{} -> {}: {}", d.from, d.into, d.why.join(", ")))
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::super::status::{Slot, Subscription};
    use super::*;

    fn node(
        name: &str,
        worker: bool,
        errors: i64,
        slot_active: bool,
        confirmed: i64,
        wal: i64,
    ) -> NodeState {
        let peer = if name == "db1" { "db2" } else { "db1" };
        NodeState {
            name: name.into(),
            reachable: true,
            error: None,
            down: false,
            subscriptions: vec![Subscription {
                name: format!("from_{peer}"),
                enabled: true,
                worker,
                errors,
                slot: Some(format!("from_{peer}")),
            }],
            // The slot the peer's subscription uses on this node.
            slots: vec![Slot {
                name: format!("from_{name}"),
                active: slot_active,
                confirmed: Some(confirmed),
            }],
            wal: Some(wal),
            lag_bytes: Some(wal - confirmed),
            sessions: vec![],
        }
    }

    fn healthy() -> [NodeState; 2] {
        [
            node("db1", true, 0, true, 1000, 1000),
            node("db2", true, 0, true, 2000, 2000),
        ]
    }

    #[test]
    fn a_healthy_idle_pair_flows_with_or_without_memory() {
        let s = healthy();
        assert!(all_ok(&judge(&s, None)));
        assert!(all_ok(&judge(&s, Some(&Memory::of(&s)))));
    }

    #[test]
    fn a_worker_failing_between_looks_is_caught_even_when_running_now() {
        let before = healthy();
        let mut now = healthy();
        // Restarted after its error: running at this instant, one more error.
        now[0].subscriptions[0].errors = 1;
        let dirs = judge(&now, Some(&Memory::of(&before)));
        assert!(!dirs[0].ok && dirs[1].ok, "{dirs:?}");
        assert!(dirs[0].why[0].contains("failed 1 time"), "{dirs:?}");
        // The instant alone sees nothing wrong: that is why the rule needs two looks.
        assert!(all_ok(&judge(&now, None)));
    }

    #[test]
    fn confirmed_position_must_move_while_the_peer_has_written() {
        // db2 wrote 500 bytes db1 had not confirmed; a moment later still not confirmed.
        let mut before = healthy();
        before[1].wal = Some(2500);
        let mut now = before.clone();
        now[1].wal = Some(2600);
        let dirs = judge(&now, Some(&Memory::of(&before)));
        assert!(!dirs[0].ok, "{dirs:?}");
        assert!(
            dirs[0].why[0].contains("confirmed none of db2's WAL"),
            "{dirs:?}"
        );
        // Once confirmed moves, the direction flows again.
        now[1].slots[0].confirmed = Some(2550);
        assert!(all_ok(&judge(&now, Some(&Memory::of(&before)))));
    }

    #[test]
    fn a_stale_memory_proves_nothing() {
        let before = healthy();
        let mut now = healthy();
        now[0].subscriptions[0].errors = 3;
        let mut old = Memory::of(&before);
        old.at -= MAX_AGE_SECS + 1;
        assert!(all_ok(&judge(&now, Some(&old))));
        assert!(!all_ok(&judge(&now, Some(&Memory::of(&before)))));
    }

    #[test]
    fn stopped_worker_inactive_slot_missing_slot_and_unreachable_peer() {
        let mut s = healthy();
        s[0].subscriptions[0].worker = false;
        s[0].slots[0].active = false;
        let dirs = judge(&s, None);
        assert!(
            dirs[0].why.iter().any(|w| w.contains("not running")),
            "{dirs:?}"
        );
        assert!(
            dirs[1].why.iter().any(|w| w.contains("not in use")),
            "{dirs:?}"
        );
        let mut s = healthy();
        s[1].slots.clear();
        assert!(judge(&s, None)[0].why[0].contains("db2 has no slot"));
        let mut s = healthy();
        s[1].reachable = false;
        let dirs = judge(&s, None);
        assert!(!dirs[0].ok && !dirs[1].ok);
        let mut s = healthy();
        s[0].subscriptions[0].enabled = false;
        assert!(judge(&s, None)[0].why[0].contains("no enabled subscription"));
    }
}
