//! Leadership timing, on this host's monotonic clock: when this node first saw the leader
//! key's current revision (followers give up on a leader once that revision is `ttl` old),
//! and, while this node leads, its own last revision and when the write that made it was
//! *sent* (the fence guard's deadline counts from there: see `decide` and the architecture
//! document's fencing argument). Only arithmetic here, unit-tested.

use crate::decide::{Leader, Millis};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaderClock {
    /// The leader revision last seen to change, and when (first seen).
    seen: Option<(i64, Millis)>,
    /// This node's own last leader revision (what a renewal compares against).
    mine: Option<i64>,
    /// When this node's last successful leader write was sent.
    last_write: Option<Millis>,
    /// `seen`'s time before a takeover overwrote it: the old leader's last sign of life.
    seen_before_takeover: Option<Millis>,
    /// The last leader name seen, to count changes of holder.
    last_leader: Option<String>,
}

impl LeaderClock {
    /// Notes what etcd shows at `now`; true when the key changed holder (not the first one
    /// seen).
    pub fn observe(&mut self, leader: Option<&Leader>, now: Millis) -> bool {
        let name = leader.map(|l| l.name.clone());
        let mut changed = false;
        if name.is_some() && name != self.last_leader {
            changed = self.last_leader.is_some();
            self.last_leader = name;
        }
        match leader {
            Some(l) if self.seen.is_none_or(|(rev, _)| rev != l.revision) => {
                self.seen = Some((l.revision, now));
            }
            None => self.seen = None,
            _ => {}
        }
        changed
    }

    /// A leader write sent at `sent` succeeded with revision `rev`: until when this node
    /// may accept writes (the fence guard's deadline). It counts from the request, not the
    /// answer: an agent frozen between the two must not wake up with a fresh deadline for a
    /// write followers have been timing since before the freeze.
    pub fn wrote(&mut self, rev: i64, sent: Millis, retry_timeout: Millis) -> Millis {
        self.mine = Some(rev);
        self.seen = Some((rev, sent));
        self.last_write = Some(sent);
        sent + retry_timeout
    }

    /// This node no longer leads (fenced, released, or the key changed under it).
    pub fn lost(&mut self) {
        self.mine = None;
        self.last_write = None;
    }

    /// A takeover begins: keep when the old leader was last seen alive.
    pub fn takeover_begins(&mut self) {
        self.seen_before_takeover = self.seen.map(|(_, since)| since);
    }

    /// The old leader's last sign of life before the takeover (`fallback` if unknown).
    pub fn old_leader_last_seen(&self, fallback: Millis) -> Millis {
        self.seen_before_takeover.unwrap_or(fallback)
    }

    pub fn seen(&self) -> Option<(i64, Millis)> {
        self.seen
    }

    pub fn my_revision(&self) -> Option<i64> {
        self.mine
    }

    pub fn last_write(&self) -> Option<Millis> {
        self.last_write
    }

    /// This node holds the key (by its own last write).
    pub fn leading(&self) -> bool {
        self.mine.is_some()
    }

    /// The current revision is younger than `ttl` at `now`: its writer is alive.
    pub fn leader_alive(&self, now: Millis, ttl: Millis) -> bool {
        self.seen
            .is_some_and(|(_, since)| now.saturating_sub(since) < ttl)
    }

    /// Until when this node may accept writes, by its last write (0: not at all).
    pub fn writable_until(&self, retry_timeout: Millis) -> Millis {
        self.last_write.map_or(0, |t| t + retry_timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leader(name: &str, revision: i64) -> Leader {
        Leader {
            name: name.into(),
            revision,
        }
    }

    #[test]
    fn a_revision_is_timed_from_when_it_was_first_seen() {
        let mut c = LeaderClock::default();
        assert!(!c.observe(Some(&leader("db1", 7)), 1_000));
        assert!(!c.observe(Some(&leader("db1", 7)), 2_500));
        assert_eq!(c.seen(), Some((7, 1_000)));
        // ttl 3000: alive just under it, gone at it.
        assert!(c.leader_alive(3_999, 3_000));
        assert!(!c.leader_alive(4_000, 3_000));
        // A new revision starts the count again.
        c.observe(Some(&leader("db1", 8)), 3_900);
        assert!(c.leader_alive(6_000, 3_000));
        // No key: nothing timed, nobody alive.
        c.observe(None, 6_100);
        assert_eq!(c.seen(), None);
        assert!(!c.leader_alive(6_100, 3_000));
    }

    #[test]
    fn changes_of_holder_are_counted_but_not_the_first_one() {
        let mut c = LeaderClock::default();
        assert!(!c.observe(Some(&leader("db1", 1)), 0));
        assert!(!c.observe(None, 10));
        assert!(c.observe(Some(&leader("db2", 5)), 20));
        assert!(!c.observe(Some(&leader("db2", 6)), 30));
    }

    #[test]
    fn a_write_counts_from_when_it_was_sent() {
        let mut c = LeaderClock::default();
        c.observe(Some(&leader("db1", 7)), 1_000);
        // Sent at 5000, answered much later: the deadline is 5000 + retry_timeout.
        assert_eq!(c.wrote(9, 5_000, 1_500), 6_500);
        assert_eq!(c.seen(), Some((9, 5_000)));
        assert_eq!(c.my_revision(), Some(9));
        assert!(c.leading());
        assert_eq!(c.writable_until(1_500), 6_500);
        // Seeing our own revision again does not move its time.
        c.observe(Some(&leader("db2", 9)), 5_800);
        assert_eq!(c.seen(), Some((9, 5_000)));
        c.lost();
        assert!(!c.leading());
        assert_eq!(c.writable_until(1_500), 0);
        assert_eq!(c.last_write(), None);
    }

    #[test]
    fn a_takeover_remembers_the_old_leaders_last_sign_of_life() {
        let mut c = LeaderClock::default();
        assert_eq!(c.old_leader_last_seen(42), 42);
        c.observe(Some(&leader("db1", 7)), 1_000);
        c.takeover_begins();
        c.wrote(8, 4_100, 1_500);
        assert_eq!(c.old_leader_last_seen(4_100), 1_000);
    }
}
