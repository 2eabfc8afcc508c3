//! The API's connection cap: at most `max` connections are served at once, and the cap
//! must not lock HAProxy out. A client that connects and sends nothing looks, until its
//! head arrives, exactly like a health check about to send one, so refusing newcomers when
//! the cap is full would let anyone who opens `max` idle connections (and reopens them as
//! they time out) fail every health check: the primary would leave HAProxy's pool.
//!
//! So a full cap is made room in: a newcomer takes the slot of the connection that has
//! waited longest without a complete request head (it is closed at once). A health check
//! sends its head right after connecting and is answered within a few ms, so to starve it
//! a flood must open `max` connections in those few ms, not just hold `max`. Connections
//! past their head (a request being answered, an authenticated body arriving) are never
//! evicted; when every slot is such a one, the newcomer is closed at once. Either way no
//! more than `max` are ever served, and every one is bounded in time by the request
//! deadline (see `server`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// Where a connection is in its (single) request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// TLS handshake or request head not complete yet: evictable.
    Head = 0,
    /// The head arrived: the request is being read or answered.
    Request = 1,
}

/// One connection's shared state: its phase, and the signal that evicts it.
#[derive(Debug)]
pub struct SlotState {
    phase: AtomicU8,
    evict: Notify,
}

impl SlotState {
    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Acquire) {
            0 => Phase::Head,
            _ => Phase::Request,
        }
    }

    pub fn head_received(&self) {
        self.phase.store(Phase::Request as u8, Ordering::Release);
    }

    /// Resolves when this connection is evicted (at once if it already was).
    pub async fn evicted(&self) {
        self.evict.notified().await
    }
}

/// Counts for `/metrics` and tests.
#[derive(Debug, Default)]
pub struct Stats {
    pub accepted: AtomicU64,
    /// Request heads received (each connection carries one request).
    pub requests: AtomicU64,
    /// Closed at once: the cap was full of connections past their head.
    pub refused: AtomicU64,
    /// Closed to make room for a newcomer: waited longest without a complete head.
    pub evicted: AtomicU64,
    /// Closed for not sending a whole head (and body) within the request deadline.
    pub timed_out: AtomicU64,
    /// accept() failures (EMFILE and the like), each followed by a pause.
    pub accept_errors: AtomicU64,
    /// Connections being served now, and the most ever at once.
    pub open: AtomicU64,
    pub peak: AtomicU64,
}

impl Stats {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    pub(super) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

#[derive(Debug)]
struct Table {
    next_id: u64,
    /// By admission order: the first entry in `Head` is the one that waited longest.
    open: BTreeMap<u64, Arc<SlotState>>,
}

/// The cap, shared by the accept loop and the connections' guards.
#[derive(Debug)]
pub struct Slots {
    max: usize,
    table: Mutex<Table>,
    pub stats: Arc<Stats>,
}

/// A connection's place; freed when dropped (the connection's task ends).
#[derive(Debug)]
pub struct Slot {
    id: u64,
    pub state: Arc<SlotState>,
    slots: Arc<Slots>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut t = self.slots.lock();
        t.open.remove(&self.id);
        self.slots
            .stats
            .open
            .store(t.open.len() as u64, Ordering::Relaxed);
    }
}

impl Slots {
    pub fn new(max: usize, stats: Arc<Stats>) -> Arc<Slots> {
        Arc::new(Slots {
            max: max.max(1),
            table: Mutex::new(Table {
                next_id: 0,
                open: BTreeMap::new(),
            }),
            stats,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        // Nothing panics while holding it; a poisoned table is still consistent.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot for a new connection: a free one, or the one of the connection waiting
    /// longest for its head (signalled to close); `None` when every slot is past its head.
    pub fn admit(self: &Arc<Self>) -> Option<Slot> {
        let mut t = self.lock();
        if t.open.len() >= self.max {
            let victim = t
                .open
                .iter()
                .find(|(_, s)| s.phase() == Phase::Head)
                .map(|(id, _)| *id)?;
            if let Some(s) = t.open.remove(&victim) {
                // notify_one keeps the permit if the task is not waiting yet.
                s.evict.notify_one();
                Stats::bump(&self.stats.evicted);
            }
        }
        let id = t.next_id;
        t.next_id += 1;
        let state = Arc::new(SlotState {
            phase: AtomicU8::new(Phase::Head as u8),
            evict: Notify::new(),
        });
        t.open.insert(id, state.clone());
        let n = t.open.len() as u64;
        self.stats.open.store(n, Ordering::Relaxed);
        self.stats.peak.fetch_max(n, Ordering::Relaxed);
        Some(Slot {
            id,
            state,
            slots: self.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_waiting_idle_connection_makes_room() {
        let slots = Slots::new(3, Arc::default());
        let a = slots.admit().unwrap();
        let b = slots.admit().unwrap();
        let c = slots.admit().unwrap();
        // a is answering: it keeps its slot; b waited longest for its head.
        a.state.head_received();
        let d = slots.admit().unwrap();
        assert_eq!(Stats::get(&slots.stats.evicted), 1);
        assert_eq!(Stats::get(&slots.stats.open), 3);
        // b was told to close (the permit waits for it), c was not.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            tokio::time::timeout(std::time::Duration::from_secs(1), b.state.evicted())
                .await
                .expect("b evicted");
            let c_left =
                tokio::time::timeout(std::time::Duration::from_millis(20), c.state.evicted()).await;
            assert!(c_left.is_err(), "c was evicted too");
        });
        // b's guard dropping later does not free anyone else's slot.
        drop(b);
        assert_eq!(Stats::get(&slots.stats.open), 3);
        // Every slot past its head: the newcomer is refused.
        c.state.head_received();
        d.state.head_received();
        assert!(slots.admit().is_none());
        drop(a);
        assert_eq!(Stats::get(&slots.stats.open), 2);
        assert!(slots.admit().is_some());
        assert_eq!(Stats::get(&slots.stats.peak), 3);
    }
}
