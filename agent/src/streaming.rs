//! A standby that does not stream from its leader: why, and whether rejoining it (pg_rewind,
//! or a rebuild) may help.
//!
//! Most reasons a standby stops streaming are not a diverged history, and a rewind does not
//! cure them: the leader's PostgreSQL is unreachable or still starting, or its slot for this
//! node is missing (the leader creates missing slots every loop, so that clears by itself).
//! Rewinding for those only restarts the standby again and again. So a stall counts as a
//! divergence only when no such cause is seen; and a rejoin that does not lead back to
//! streaming is retried a few times, then only after a growing pause, with a warning.

use crate::dcs::MemberRecord;
use crate::decide::Millis;

/// What a standby's agent can see about its stall.
#[derive(Debug, Clone)]
pub struct Evidence<'a> {
    /// How long it has not been streaming.
    pub for_ms: Millis,
    /// The WAL receiver's status; None when none runs.
    pub walreceiver: Option<&'a str>,
    /// The leader's published record.
    pub leader: &'a MemberRecord,
    /// This node's slot name on the leader.
    pub my_slot: &'a str,
    pub my_timeline: u32,
    /// Whether the leader's PostgreSQL accepts a TCP connection (the reason if not).
    pub leader_reachable: Result<(), String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A cause that a rejoin would not fix: wait for it to clear.
    Waiting(String),
    /// No cause found: this node's history may have left the leader's.
    Unexplained(String),
}

impl Verdict {
    pub fn reason(&self) -> &str {
        match self {
            Verdict::Waiting(r) | Verdict::Unexplained(r) => r,
        }
    }
}

pub fn diagnose(e: &Evidence) -> Verdict {
    let l = e.leader;
    let head = format!(
        "not streaming from {} for {} s ({})",
        l.name,
        e.for_ms / 1000,
        match e.walreceiver {
            Some(s) => format!("WAL receiver {s}"),
            None => "no WAL receiver running".to_string(),
        }
    );
    if let Err(why) = &e.leader_reachable {
        return Verdict::Waiting(format!("{head}: {why}"));
    }
    if l.role != "primary" {
        return Verdict::Waiting(format!(
            "{head}: {} is not a running primary yet ({})",
            l.name, l.role
        ));
    }
    if !l.slots.iter().any(|s| s == e.my_slot) {
        return Verdict::Waiting(format!(
            "{head}: {} has no replication slot {:?} (the leader creates missing slots every loop)",
            l.name, e.my_slot
        ));
    }
    if e.my_timeline > l.timeline {
        return Verdict::Unexplained(format!(
            "{head}: this node is on timeline {}, ahead of the leader's {}",
            e.my_timeline, l.timeline
        ));
    }
    Verdict::Unexplained(format!(
        "{head}: the leader is reachable and has this node's slot, so its history has probably forked from the leader's"
    ))
}

/// Rejoins quickly in a row before backing off.
pub const QUICK_REJOINS: u32 = 3;
const FIRST_PAUSE: Millis = 30_000;
const LONGEST_PAUSE: Millis = 600_000;

/// Rejoins since this node last streamed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rejoins {
    count: u32,
    last_at: Option<Millis>,
}

impl Rejoins {
    /// Streaming again: the count starts over.
    pub fn streaming(&mut self) {
        *self = Rejoins::default();
    }

    pub fn attempted(&mut self, now: Millis) {
        self.count += 1;
        self.last_at = Some(now);
    }

    pub fn count(&self) -> u32 {
        self.count
    }

    /// None when a rejoin may run now, else how long until it may.
    pub fn wait(&self, now: Millis) -> Option<Millis> {
        let last = self.last_at?;
        if self.count < QUICK_REJOINS {
            return None;
        }
        let pause = FIRST_PAUSE
            .saturating_mul(1 << (self.count - QUICK_REJOINS).min(16))
            .min(LONGEST_PAUSE);
        let next = last + pause;
        (now < next).then(|| next - now)
    }

    /// For people: rejoins that did not help, and when the next may run.
    pub fn warning(&self, now: Millis) -> Option<String> {
        if self.count < QUICK_REJOINS {
            return None;
        }
        Some(match self.wait(now) {
            Some(ms) => format!(
                "rejoined {} times without streaming afterwards; next attempt in {} s",
                self.count,
                ms.div_ceil(1000)
            ),
            None => format!("rejoined {} times without streaming afterwards", self.count),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leader() -> MemberRecord {
        MemberRecord {
            name: "db1".into(),
            conn: "db1:5432".into(),
            api: "db1:8008".into(),
            role: "primary".into(),
            state: "running".into(),
            timeline: 3,
            lsn: 100,
            replayed_lsn: 100,
            upstream: None,
            priority: 1,
            slots: vec!["db2".into()],
            ..Default::default()
        }
    }

    fn evidence(l: &MemberRecord) -> Evidence<'_> {
        Evidence {
            for_ms: 7_000,
            walreceiver: None,
            leader: l,
            my_slot: "db2",
            my_timeline: 3,
            leader_reachable: Ok(()),
        }
    }

    #[test]
    fn causes_a_rejoin_cannot_fix_are_waited_out() {
        let mut l = leader();
        l.slots.clear();
        let v = diagnose(&evidence(&l));
        assert!(
            matches!(&v, Verdict::Waiting(r) if r.contains("has no replication slot \"db2\"")),
            "{v:?}"
        );
        assert!(v
            .reason()
            .starts_with("not streaming from db1 for 7 s (no WAL receiver running)"));

        let l = leader();
        let mut e = evidence(&l);
        e.leader_reachable = Err("connection refused".into());
        assert!(matches!(diagnose(&e), Verdict::Waiting(r) if r.ends_with("connection refused")));

        let mut l = leader();
        l.role = "replica".into();
        assert!(
            matches!(diagnose(&evidence(&l)), Verdict::Waiting(r) if r.contains("not a running primary"))
        );
    }

    #[test]
    fn an_unexplained_stall_or_a_newer_timeline_may_be_a_divergence() {
        let l = leader();
        let mut e = evidence(&l);
        e.walreceiver = Some("waiting");
        let v = diagnose(&e);
        assert!(
            matches!(&v, Verdict::Unexplained(r) if r.contains("WAL receiver waiting")),
            "{v:?}"
        );
        e.my_timeline = 4;
        assert!(
            matches!(diagnose(&e), Verdict::Unexplained(r) if r.contains("timeline 4, ahead of the leader's 3"))
        );
    }

    #[test]
    fn rejoins_back_off_after_a_few_and_start_over_once_streaming() {
        let mut r = Rejoins::default();
        assert_eq!(r.wait(0), None);
        for t in [1_000, 8_000, 15_000] {
            assert_eq!(r.wait(t), None, "quick rejoin at {t}");
            r.attempted(t);
        }
        assert_eq!(r.wait(15_000), Some(30_000));
        assert_eq!(r.wait(44_000), Some(1_000));
        assert_eq!(r.wait(45_000), None);
        assert!(r.warning(20_000).unwrap().contains("rejoined 3 times"));
        r.attempted(45_000);
        assert_eq!(r.wait(45_000), Some(60_000));
        for i in 0..20 {
            r.attempted(100_000 + i);
        }
        assert_eq!(r.wait(100_019), Some(600_000), "capped at ten minutes");
        r.streaming();
        assert_eq!(r.wait(100_020), None);
        assert_eq!(r.warning(100_020), None);
    }
}
