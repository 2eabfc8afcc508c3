//! Quorum commit's election (`synchronous_mode = "quorum"`, see `decide::quorum_takeover`).
//!
//! A voter that sees no leader must know the positions of enough voters, each observed after
//! the leader was gone: the leader acknowledged its last commit before it fenced, so before
//! its key ran out, and a position observed after that includes every acknowledged commit
//! its member holds. A position in etcd cannot prove its age, so the voter asks the others'
//! APIs (`GET /position`), which answer with when their agent last observed PostgreSQL and
//! what their own monotonic clock reads now. The first answer of a round sets a mark on that
//! member's clock; only an answer observed after the mark counts. A round thus costs one of
//! the member's loops (loop_wait) more than trusting etcd would.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::api::Snapshot;
use crate::decide::{Heard, Millis};
use crate::peers::Peers;

pub const PATH: &str = "/position";

/// GET /position's answer: this node's position as its agent last observed it, when (its
/// monotonic ms), and that clock now.
pub fn answer(snap: &Snapshot, now: u64) -> Value {
    match &snap.me {
        Some(m) => json!({
            "name": m.name,
            "running": m.role != crate::state::Role::Stopped,
            "in_recovery": m.role == crate::state::Role::Replica,
            "timeline": m.timeline,
            "lsn": m.lsn,
            "observed_at": snap.observed_at,
            "now": now,
        }),
        None => json!({"state": "starting", "observed_at": 0, "now": now}),
    }
}

/// One member's answer (`answer`).
#[derive(Debug, Clone, Deserialize)]
pub struct Position {
    pub name: String,
    pub running: bool,
    pub in_recovery: bool,
    pub timeline: u32,
    pub lsn: u64,
    pub observed_at: u64,
    pub now: u64,
}

/// The positions a voter gathered since it saw the leader gone.
#[derive(Debug)]
pub struct Round {
    started: Millis,
    /// Each member's clock at its first answer.
    marks: BTreeMap<String, u64>,
    heard: BTreeMap<String, Heard>,
}

impl Round {
    /// A round that began when this node saw the leader gone (`started`, its own clock).
    pub fn new(started: Millis) -> Round {
        Round {
            started,
            marks: BTreeMap::new(),
            heard: BTreeMap::new(),
        }
    }

    /// This node's own observation, taken at `observed_at`: it counts once taken after the
    /// round began. Only a running standby's position counts.
    pub fn local(&mut self, p: &Position, observed_at: Millis) {
        if observed_at > self.started {
            self.take(p);
        }
    }

    /// Another member's answer: the first sets its mark, later ones count once observed
    /// after it. A clock behind the mark is a host that rebooted: its mark starts again.
    pub fn answer(&mut self, p: &Position) {
        match self.marks.get(&p.name) {
            Some(mark) if p.now < *mark => {
                self.marks.insert(p.name.clone(), p.now);
                self.heard.remove(&p.name);
            }
            None => {
                self.marks.insert(p.name.clone(), p.now);
            }
            Some(mark) if p.observed_at > *mark => self.take(p),
            Some(_) => {}
        }
    }

    fn take(&mut self, p: &Position) {
        if p.running && p.in_recovery {
            self.heard.insert(
                p.name.clone(),
                Heard {
                    name: p.name.clone(),
                    timeline: p.timeline,
                    lsn: p.lsn,
                },
            );
        } else {
            self.heard.remove(&p.name);
        }
    }

    pub fn heard(&self) -> Vec<Heard> {
        self.heard.values().cloned().collect()
    }

    /// What a takeover decided on, for its history entry and log: "db2 at 0/7000100 on
    /// timeline 3, db3 at ...".
    pub fn describe(&self) -> String {
        self.heard
            .values()
            .map(|h| {
                format!(
                    "{} at {:X}/{:X} on timeline {}",
                    h.name,
                    h.lsn >> 32,
                    h.lsn & 0xffff_ffff,
                    h.timeline
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Asks each of `voters` (name, API address) at once, each within `timeout`; the answers
/// that came, from the members asked (an answer under another name is dropped).
pub fn ask(peers: &Peers, voters: &[(String, String)], timeout: Duration) -> Vec<Position> {
    std::thread::scope(|s| {
        let asks: Vec<_> = voters
            .iter()
            .map(|(name, api)| {
                s.spawn(move || {
                    let (status, doc) = peers.get((name, api), PATH, timeout).ok()?;
                    let p: Position = serde_json::from_value(doc).ok()?;
                    (status == 200 && &p.name == name).then_some(p)
                })
            })
            .collect();
        asks.into_iter()
            .filter_map(|h| h.join().ok().flatten())
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(name: &str, lsn: u64, observed_at: u64, now: u64) -> Position {
        Position {
            name: name.into(),
            running: true,
            in_recovery: true,
            timeline: 1,
            lsn,
            observed_at,
            now,
        }
    }

    #[test]
    fn only_positions_observed_after_the_round_began_count() {
        let mut r = Round::new(1_000);
        // Its own observation from before the round: not yet.
        r.local(&pos("db2", 50, 0, 0), 1_000);
        assert!(r.heard().is_empty());
        r.local(&pos("db2", 60, 0, 0), 1_001);
        assert_eq!(r.heard().len(), 1);
        // db3's first answer sets the mark (its clock read 7 000), whatever it observed.
        r.answer(&pos("db3", 90, 6_990, 7_000));
        assert_eq!(r.heard().len(), 1);
        // Still the observation from before the mark.
        r.answer(&pos("db3", 90, 6_990, 7_010));
        assert_eq!(r.heard().len(), 1);
        // Observed after the mark: it counts, with the position of then.
        r.answer(&pos("db3", 120, 7_400, 7_420));
        assert_eq!(
            r.heard()[1],
            Heard {
                name: "db3".into(),
                timeline: 1,
                lsn: 120
            }
        );
        // A member whose PostgreSQL stopped or was promoted no longer counts.
        r.answer(&Position {
            running: false,
            ..pos("db3", 120, 7_900, 7_910)
        });
        assert_eq!(r.heard().len(), 1);
        // Its host rebooted (its clock starts again): a new mark, and only what it observes
        // after that counts.
        r.answer(&pos("db3", 130, 40, 50));
        r.answer(&pos("db3", 130, 45, 60));
        assert_eq!(r.heard().len(), 1);
        r.answer(&pos("db3", 130, 70, 80));
        assert_eq!(r.heard().len(), 2);
        assert_eq!(
            r.describe(),
            "db2 at 0/3C on timeline 1, db3 at 0/82 on timeline 1"
        );
    }

    #[test]
    fn the_answer_says_when_it_was_observed() {
        let snap = Snapshot {
            me: Some(crate::dcs::MemberRecord {
                name: "db3".into(),
                role: crate::state::Role::Replica,
                timeline: 2,
                lsn: 77,
                ..Default::default()
            }),
            observed_at: 5_000,
            ..Default::default()
        };
        let p: Position = serde_json::from_value(answer(&snap, 5_200)).unwrap();
        assert_eq!((p.name.as_str(), p.timeline, p.lsn), ("db3", 2, 77));
        assert!(p.running && p.in_recovery);
        assert_eq!((p.observed_at, p.now), (5_000, 5_200));
        // Before the first observation there is nothing to count.
        let none = answer(&Snapshot::default(), 1);
        assert!(serde_json::from_value::<Position>(none).is_err());
    }
}
