//! The HA decision: what this node knows (its PostgreSQL, the cluster as read from etcd, its
//! own clock) in, one action out. No I/O and no clock reading here, so every situation is a
//! row in a table test.
//!
//! Leadership is a key in etcd that the leader rewrites every `loop_wait` (each write bumps
//! its mod_revision). A follower does not wait for the key's lease to expire: it notes, by
//! its own monotonic clock, when it first saw the current revision, and treats the leader as
//! gone once that revision is `ttl` old. That matters because a new etcd raft leader re-arms
//! every lease to its full TTL: after a crash of the host that held both the PostgreSQL and
//! the etcd leadership, a lease-only design would wait up to TTL plus an election. The
//! takeover is a transaction on that same revision, so a leader that did write meanwhile
//! makes it fail. The leader fences itself (stops accepting writes) once its last successful
//! write is `retry_timeout` old, which is before any follower can count `ttl` from a
//! revision it saw no earlier than that write.

use std::cmp::Ordering;

use crate::records::{Request, RequestKind, SyncState};

/// Milliseconds on the caller's monotonic clock.
pub type Millis = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub ttl: Millis,
    pub loop_wait: Millis,
    pub retry_timeout: Millis,
}

/// What a node publishes about itself in its member key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub running: bool,
    pub in_recovery: bool,
    pub timeline: u32,
    /// Received (standby) or written (primary) WAL position.
    pub lsn: u64,
    pub nofailover: bool,
    pub priority: i32,
    /// In maintenance (`pgshift down`): out of rotation, never a candidate.
    pub down: bool,
    /// Streaming from `upstream`.
    pub streaming: bool,
    pub upstream: Option<String>,
}

/// The leader key: who, and the revision of its last write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leader {
    pub name: String,
    pub revision: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cluster {
    /// etcd did not answer (no quorum reachable).
    Unreachable,
    Read {
        leader: Option<Leader>,
        /// Members whose keys are alive (each bound to its node's lease), this node included
        /// or not; this node's own facts come from `Local`.
        members: Vec<Member>,
    },
}

/// This node's PostgreSQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Local {
    pub running: bool,
    pub in_recovery: bool,
    pub timeline: u32,
    pub lsn: u64,
    /// The node its replication is configured to follow.
    pub upstream: Option<String>,
    /// A standby whose history left the leader's (it was written to after the fork):
    /// streaming cannot resume without a rewind.
    pub diverged: bool,
    /// A running standby whose replication settings (primary_conninfo, slot) are not what
    /// following the leader writes: e.g. built before a TLS file or the slot rule changed.
    pub replication_stale: bool,
    /// The data directory is unusable until rebuilt (a pg_rewind failed half-way and the
    /// rebuild did not finish): it must not be started, only rebuilt.
    pub rebuild_pending: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    pub me: String,
    pub now: Millis,
    pub timing: Timing,
    pub cluster: Cluster,
    pub local: Local,
    /// The leader revision this node last saw change, and when it first saw it.
    pub leader_seen: Option<(i64, Millis)>,
    /// When this node's last leader-key write succeeded.
    pub last_leader_write: Option<Millis>,
    pub maximum_lag_on_failover: u64,
    pub nofailover: bool,
    pub priority: i32,
    /// Whether the cluster ever had a leader (etcd holds its history). Until then only a
    /// primary may take the key: a standby whose agent starts first must not promote.
    pub initialized: bool,
    /// Wall clock, Unix seconds (scheduled switchovers, request timeouts).
    pub wall: u64,
    /// Automatic failover is paused cluster-wide (`pgshift pause`).
    pub paused: bool,
    /// This node is in maintenance (`pgshift down`).
    pub down: bool,
    /// The pending switchover or failover request.
    pub request: Option<Request>,
    /// Synchronous mode: only the standby the sync record names may be promoted.
    pub synchronous_mode: bool,
    pub sync: Option<SyncState>,
    /// Quorum commit, on a voter while there is no leader: the voters' positions (this
    /// node's among them) each observed after this node saw the leader gone.
    pub heard: Vec<Heard>,
    /// Failsafe mode, on the leader: every member confirmed it within retry_timeout of now
    /// (etcd unreachable), which keeps it writable like a fresh leader write.
    pub failsafe_confirmed: bool,
    /// Failsafe mode, on a member: the leader that called within ttl (no one else may lead).
    pub failsafe_leader: Option<String>,
    /// The member to stream from instead of the leader (the `replicatefrom` tag).
    pub replicatefrom: Option<String>,
}

/// A voter's position as it answered a quorum round (see `quorum_takeover`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heard {
    pub name: String,
    pub timeline: u32,
    pub lsn: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start PostgreSQL as a standby of `leader` (None: keep its replication settings).
    StartStandby { leader: Option<String> },
    /// Start PostgreSQL as the primary (this node holds the leader key).
    StartPrimary,
    /// Rewrite the leader key (proves this node still leads).
    RenewLeader,
    /// Take the leader key with a transaction on `expected` (None: the key is absent), then
    /// promote when this node is a standby.
    TakeLeader {
        expected: Option<i64>,
        promote: bool,
    },
    /// Promote: this node holds the leader key but still runs as a standby.
    Promote,
    /// Stop accepting writes now.
    Fence { reason: String },
    /// Point replication at `leader` (primary_conninfo, reload).
    Follow { leader: String },
    /// Become `leader`'s standby after diverging from it: rewind (or rebuild), then stream.
    Rejoin { leader: String },
    /// Planned switchover: shut down cleanly, release the key to `to`, restart as a standby.
    HandOver { to: String },
    /// Renew the leader key, then close the pending request with this outcome.
    EndRequest { ok: bool, message: String },
    /// Nothing to do now.
    Wait { reason: String },
}

fn wait(reason: impl Into<String>) -> Action {
    Action::Wait {
        reason: reason.into(),
    }
}

pub fn decide(f: &Facts) -> Action {
    let writable = f.local.running && !f.local.in_recovery;
    let (leader, members) = match &f.cluster {
        Cluster::Unreachable => return without_etcd(f, writable),
        Cluster::Read { leader, members } => (leader.as_ref(), members),
    };
    let stale = leader.is_some_and(|l| is_stale(f, l));
    if f.local.rebuild_pending {
        // Never started, never promoted: only a rebuild from a live leader may use it.
        return match leader {
            Some(l) if l.name != f.me && !stale => follow(f, &l.name, writable, members),
            _ => wait("the data directory needs a rebuild, and no live leader to copy from"),
        };
    }
    match leader {
        Some(l) if l.name == f.me => {
            if !holds_lease(f) {
                // Renewals have been failing: stop writing before a follower can count ttl.
                if writable && f.last_leader_write.is_some() {
                    return Action::Fence {
                        reason: format!(
                            "no successful leader write for {} ms (retry_timeout {} ms)",
                            f.last_leader_write.map_or(0, |t| f.now.saturating_sub(t)),
                            f.timing.retry_timeout
                        ),
                    };
                }
                // Just started (or never wrote): prove leadership before acting on it.
                return Action::RenewLeader;
            }
            if !f.local.running {
                Action::StartPrimary
            } else if f.local.in_recovery {
                Action::Promote
            } else {
                leading(f, members)
            }
        }
        Some(l) if !stale => follow(f, &l.name, writable, members),
        _ => no_leader(f, leader, members, writable),
    }
}

/// etcd unreachable: nobody can be elected, a primary keeps writing only while its last
/// write is fresh, and a stopped PostgreSQL may always start as a standby.
fn without_etcd(f: &Facts, writable: bool) -> Action {
    if writable {
        if f.failsafe_confirmed {
            wait("etcd unreachable; failsafe: every member confirmed this leader")
        } else if holds_lease(f) {
            wait("etcd unreachable; leadership still within retry_timeout")
        } else {
            Action::Fence {
                reason: "etcd unreachable: leadership cannot be renewed".into(),
            }
        }
    } else if f.local.rebuild_pending {
        wait("etcd unreachable, and the data directory needs a rebuild")
    } else if !f.local.running {
        Action::StartStandby { leader: None }
    } else {
        wait("etcd unreachable; staying a standby")
    }
}

fn holds_lease(f: &Facts) -> bool {
    f.failsafe_confirmed
        || f.last_leader_write
            .is_some_and(|t| f.now.saturating_sub(t) < f.timing.retry_timeout)
}

fn is_stale(f: &Facts, l: &Leader) -> bool {
    match f.leader_seen {
        Some((rev, since)) if rev == l.revision => f.now.saturating_sub(since) >= f.timing.ttl,
        // A revision we have not timed yet is fresh.
        _ => false,
    }
}

/// Whom this node streams from while `leader` leads: the member its `replicatefrom` tag
/// names while that one streams from the leader itself (one level of cascading: no chain
/// or loop can form), else the leader.
pub fn upstream_for<'a>(
    me: &str,
    replicatefrom: Option<&'a str>,
    leader: &'a str,
    members: &'a [Member],
) -> &'a str {
    replicatefrom
        .filter(|src| *src != leader && *src != me)
        .and_then(|src| members.iter().find(|m| m.name == src))
        .filter(|m| {
            m.running
                && m.in_recovery
                && m.streaming
                && !m.down
                && m.upstream.as_deref() == Some(leader)
        })
        .map_or(leader, |m| m.name.as_str())
}

/// Another node leads and is alive. A rejoin is always against the leader; streaming
/// from `upstream_for`.
fn follow(f: &Facts, leader: &str, writable: bool, members: &[Member]) -> Action {
    if writable {
        // Two writers must never coexist: a writable node that is not the leader has
        // diverged by definition (it may have taken writes the leader never saw).
        return Action::Rejoin {
            leader: leader.to_string(),
        };
    }
    if f.local.rebuild_pending {
        return if f.down {
            wait(format!(
                "the data directory needs a rebuild from {leader}; in maintenance, so not until `pgshift up`"
            ))
        } else {
            Action::Rejoin {
                leader: leader.to_string(),
            }
        };
    }
    let source = upstream_for(&f.me, f.replicatefrom.as_deref(), leader, members);
    if !f.local.running {
        return Action::StartStandby {
            leader: Some(source.to_string()),
        };
    }
    if f.local.diverged && f.down {
        // A rejoin stops the server and may copy the whole cluster: not while an operator
        // keeps this node out of the way (`pgshift down` also calls a running one off).
        return wait(format!(
            "diverged from {leader}; in maintenance, so no rejoin until `pgshift up`"
        ));
    }
    if f.local.diverged {
        return Action::Rejoin {
            leader: leader.to_string(),
        };
    }
    if f.local.upstream.as_deref() != Some(source) || f.local.replication_stale {
        return Action::Follow {
            leader: source.to_string(),
        };
    }
    if source != leader {
        return wait(format!(
            "streaming from {source} (cascading; {leader} leads)"
        ));
    }
    wait(format!("streaming from {leader}"))
}

/// This node leads and PostgreSQL is its writable primary: renew, or carry out a request.
fn leading(f: &Facts, members: &[Member]) -> Action {
    let end = |ok: bool, message: String| Action::EndRequest { ok, message };
    if let Some(r) = &f.request {
        match (&r.kind, &r.handed_over) {
            // Someone took over through the request and it is me: it is done. (A failover
            // naming another node while I lead is moot.)
            (_, Some(h)) => {
                return end(h.to == f.me, format!("{} leads now", f.me));
            }
            (RequestKind::Failover, None) => {
                return end(
                    r.to.as_deref() == Some(f.me.as_str()),
                    format!("{} leads now", f.me),
                );
            }
            (RequestKind::Switchover, None) => {
                if r.from.as_deref().is_some_and(|from| from != f.me) {
                    return end(
                        false,
                        format!(
                            "{} is no longer the leader ({} is)",
                            r.from.as_deref().unwrap_or(""),
                            f.me
                        ),
                    );
                }
                if r.expired(f.wall) {
                    return end(
                        false,
                        format!(
                            "not carried out within {} s of its time: {}",
                            crate::records::REQUEST_TIMEOUT_SECS,
                            match switchover(f, members, r.to.as_deref()) {
                                Step::Wait(why) | Step::Refuse(why) => why,
                                Step::Go(_) => "the candidate became ready too late".into(),
                            }
                        ),
                    );
                }
                if r.due() <= f.wall {
                    return match switchover(f, members, r.to.as_deref()) {
                        Step::Go(to) => Action::HandOver { to },
                        Step::Refuse(why) => end(false, why),
                        // Leadership must go on while we wait for the candidate.
                        Step::Wait(_) => Action::RenewLeader,
                    };
                }
            }
        }
    }
    if f.down {
        // Maintenance on the leader: hand over to whoever can take it; with nobody, go on
        // leading (status shows why).
        if let Step::Go(to) = switchover(f, members, None) {
            return Action::HandOver { to };
        }
    }
    Action::RenewLeader
}

enum Step {
    Go(String),
    Wait(String),
    Refuse(String),
}

/// Whether a switchover to `to` (or the best standby) can go now.
fn switchover(f: &Facts, members: &[Member], to: Option<&str>) -> Step {
    let streams = |m: &Member| {
        m.running && m.in_recovery && m.streaming && m.upstream.as_deref() == Some(&f.me)
    };
    let candidate = match to {
        Some(name) if name == f.me => {
            return Step::Refuse(format!("{name} is already the leader"));
        }
        Some(name) => match members.iter().find(|m| m.name == name) {
            Some(m) if m.down => return Step::Refuse(format!("{name} is down (maintenance)")),
            Some(m) if m.nofailover => return Step::Refuse(format!("{name} is tagged nofailover")),
            Some(m) => m,
            None => return Step::Refuse(format!("{name} is not a member of the cluster")),
        },
        None => {
            let best = members
                .iter()
                .filter(|m| streams(m) && !m.down && !m.nofailover)
                .max_by(|a, b| rank(a, b));
            match best {
                Some(m) => m,
                None => {
                    return Step::Refuse(
                        "no standby can take over (none is streaming, up and failover-eligible)"
                            .into(),
                    )
                }
            }
        }
    };
    if !streams(candidate) {
        return Step::Wait(format!(
            "waiting for {} to stream from {}",
            candidate.name, f.me
        ));
    }
    // The clean shutdown sends it everything; a big backlog would only make that long.
    let lag = f.local.lsn.saturating_sub(candidate.lsn);
    if lag > f.maximum_lag_on_failover {
        return Step::Wait(format!(
            "waiting for {} to catch up ({lag} bytes behind)",
            candidate.name
        ));
    }
    Step::Go(candidate.name.clone())
}

/// The leader key is absent or stale: the most advanced eligible node takes it.
fn no_leader(f: &Facts, leader: Option<&Leader>, members: &[Member], writable: bool) -> Action {
    let expected = leader.map(|l| l.revision);
    if writable {
        // A primary without the key (it expired, e.g. after an etcd outage): it is the most
        // advanced node by construction, so it reclaims the key or, failing that, rejoins.
        return Action::TakeLeader {
            expected,
            promote: false,
        };
    }
    if !f.local.running {
        return Action::StartStandby { leader: None };
    }
    if leader.is_none() && !f.initialized {
        return wait("no leader has been elected yet: waiting for the primary's agent");
    }
    // A leader without etcd vouched for by this node: nobody else may lead before its call
    // is ttl old (it stays writable only retry_timeout past each call).
    if let Some(l) = f.failsafe_leader.as_deref().filter(|l| *l != f.me) {
        return wait(format!("{l} leads in failsafe mode (it called within ttl)"));
    }
    // An operator's request names the node to promote: it alone takes the key, whatever
    // the automatic rules would say (pause, ranking, synchronous mode).
    if let Some(r) = &f.request {
        if let Some(target) = r.promotes(f.wall) {
            if target != f.me {
                return wait(format!("{target} is taking over ({:?})", r.kind));
            }
            if f.local.diverged {
                return wait("asked to take over, but this node's history diverged");
            }
            if let Some(h) = r.handed_over.as_ref().filter(|h| f.local.lsn <= h.lsn) {
                return wait(format!(
                    "receiving the old leader's last records (at {:X}, need past {:X})",
                    f.local.lsn, h.lsn
                ));
            }
            return Action::TakeLeader {
                expected,
                promote: true,
            };
        }
    }
    if f.paused {
        return wait("no leader, and automatic failover is paused");
    }
    if f.down {
        return wait("no leader, and this node is down (maintenance)");
    }
    if f.nofailover {
        return wait("no leader, and this node is tagged nofailover");
    }
    if f.local.diverged {
        return wait("no leader, and this node's history diverged: it cannot be promoted");
    }
    if f.synchronous_mode {
        // Only a node known to hold every acknowledged commit: a synchronous standby, or
        // the leader that wrote the record (a primary holds its own commits). Without the
        // second, a leader that fenced itself over an etcd hiccup while no standby was
        // synchronous left the cluster leaderless for good. It must still be the most
        // advanced node: were anyone on a newer timeline, that one was promoted after it.
        let sync = f.sync.as_ref();
        let voting = sync.and_then(SyncState::voting);
        // A quorum record's voters may be ahead of the last leader as synchronous
        // standbys may: they take over themselves (below, `quorum_takeover`).
        let standbys = match voting {
            Some((voters, _)) => voters.iter().map(String::as_str).collect(),
            None => sync.map(|s| s.names()).unwrap_or_default(),
        };
        let former = sync.map(|s| s.leader.as_str());
        let me = f.me.as_str();
        let take = Action::TakeLeader {
            expected,
            promote: true,
        };
        if let Some((voters, q)) = voting.filter(|(v, q)| *q > 0 && v.iter().any(|n| n == me)) {
            return quorum_takeover(f, voters, q, members, take);
        }
        // Ahead of the last leader, on its own timeline, is only a synchronous standby that
        // will take over itself: anyone else can be a few bytes ahead at most (the start of
        // a record the leader never completed before it stopped, see below), never by an
        // acknowledged commit, and deferring to a node that cannot take over left a cluster
        // of three leaderless (the synchronous standby crashed, the leader fenced, the third
        // member a record-start ahead of it).
        let ahead = members.iter().find(|m| {
            m.name != me
                && (m.timeline > f.local.timeline
                    || (m.timeline == f.local.timeline
                        && m.lsn > f.local.lsn
                        && standbys.contains(&m.name.as_str())))
                && (m.running || leader.is_some_and(|l| l.name == m.name))
        });
        // The last leader ran without a synchronous standby and is a standby itself now,
        // behind this node: this node holds all the WAL it wrote, so every commit it
        // acknowledged alone. It defers to such a node (above), so one of the two must go
        // on, or the cluster stays leaderless: a standby can end up a few bytes ahead of the
        // old leader's replayed end, having received the start of a record the old leader
        // never completed before it was fenced.
        let led_alone = match voting {
            Some((_, q)) => q == 0,
            None => standbys.is_empty(),
        };
        let former_behind = former
            .filter(|_| led_alone)
            .and_then(|name| members.iter().find(|m| m.name == name))
            .is_some_and(|m| {
                m.running && m.in_recovery && (f.local.timeline, f.local.lsn) > (m.timeline, m.lsn)
            });
        // With several synchronous standbys (synchronous_node_count > 1) each holds every
        // acknowledged commit: the best-ranked running one goes first, the others follow
        // it (and need no rewind, having nothing it lacks but unacknowledged WAL).
        let me_ranked = candidate_of(f);
        let better_sync = members.iter().find(|m| {
            standbys.contains(&m.name.as_str())
                && m.running
                && m.in_recovery
                && !m.down
                && !m.nofailover
                && rank(m, &me_ranked) == Ordering::Greater
        });
        let is_sync = voting.is_none() && standbys.contains(&me);
        return match (is_sync, former == Some(me), ahead) {
            (true, _, _) => match better_sync {
                Some(b) => wait(format!(
                    "no leader; {} is the better synchronous standby",
                    b.name
                )),
                None => take,
            },
            (false, true, None) => take,
            (false, false, None) if former_behind => take,
            (false, true, Some(a)) => wait(format!(
                "no leader; this node led last but {} is ahead of it (timeline {}, at {:X})",
                a.name, a.timeline, a.lsn
            )),
            (false, false, _) => wait(format!(
                "no leader; synchronous mode allows only a synchronous standby ({}) or the last leader ({}) to be promoted",
                if standbys.is_empty() { "none".to_string() } else { standbys.join(", ") },
                former.unwrap_or("none")
            )),
        };
    }
    let leader_lsn = leader
        .and_then(|l| members.iter().find(|m| m.name == l.name))
        .map(|m| m.lsn);
    if let Some(lsn) = leader_lsn {
        let lag = lsn.saturating_sub(f.local.lsn);
        if lag > f.maximum_lag_on_failover {
            return wait(format!(
                "no leader, but this node is {lag} bytes behind it (maximum_lag_on_failover {})",
                f.maximum_lag_on_failover
            ));
        }
    }
    let me = candidate_of(f);
    let better = members.iter().find(|m| {
        m.name != f.me
            && leader.is_none_or(|l| l.name != m.name)
            && m.running
            && m.in_recovery
            && !m.nofailover
            && !m.down
            && rank(m, &me) == Ordering::Greater
    });
    if let Some(b) = better {
        return wait(format!("no leader; {} is the better candidate", b.name));
    }
    Action::TakeLeader {
        expected,
        promote: true,
    }
}

/// Quorum commit (`ANY q` of `voters`): every acknowledged commit is on at least q voters,
/// so any |voters| - q + 1 of them include one that holds it, and the most advanced of
/// those holds them all (they followed one leader on one timeline). A voter takes over once
/// it heard that many, itself included, each observed after the leader was gone (its last
/// acknowledged commit was flushed before it fenced, so before then), and none of them is
/// ahead of it, or level and better placed (priority, then name). A voter ahead that cannot
/// take over (down, stopped) is waited for: a less advanced one may lack a commit.
fn quorum_takeover(
    f: &Facts,
    voters: &[String],
    q: usize,
    members: &[Member],
    take: Action,
) -> Action {
    let need = (voters.len() + 1).saturating_sub(q).max(1);
    let heard: Vec<&Heard> = f
        .heard
        .iter()
        .filter(|h| voters.contains(&h.name))
        .collect();
    let names = || {
        let n: Vec<&str> = heard.iter().map(|h| h.name.as_str()).collect();
        if n.is_empty() {
            "none".to_string()
        } else {
            n.join(", ")
        }
    };
    if heard.len() < need {
        return wait(format!(
            "no leader; quorum commit (any {q} of {}): heard {} of the {need} voters needed to know the most advanced ({})",
            voters.len(),
            heard.len(),
            names()
        ));
    }
    let Some(mine) = heard.iter().find(|h| h.name == f.me) else {
        return wait("no leader; quorum commit: this node's own position after the leader went is not known yet");
    };
    let top = heard
        .iter()
        .map(|h| (h.timeline, h.lsn))
        .max()
        .expect("heard holds this node");
    if (mine.timeline, mine.lsn) < top {
        let a = heard
            .iter()
            .find(|h| (h.timeline, h.lsn) == top)
            .expect("top is heard");
        return wait(format!(
            "no leader; quorum commit: {} is more advanced (timeline {}, at {:X}), heard from {}",
            a.name,
            a.timeline,
            a.lsn,
            names()
        ));
    }
    // Level voters hold the same WAL: the best placed of those that can take over goes.
    let able = |h: &&&Heard| {
        h.name == f.me
            || members
                .iter()
                .any(|m| m.name == h.name && m.running && m.in_recovery && !m.down && !m.nofailover)
    };
    let placed = |name: &str| {
        let priority = members
            .iter()
            .find(|m| m.name == name)
            .map_or(f.priority, |m| m.priority);
        (priority, std::cmp::Reverse(name.to_string()))
    };
    let first = heard
        .iter()
        .filter(|h| (h.timeline, h.lsn) == top)
        .filter(able)
        .max_by(|a, b| placed(&a.name).cmp(&placed(&b.name)))
        .expect("this node is level with the top and able");
    if first.name != f.me {
        return wait(format!(
            "no leader; quorum commit: {} is as advanced and placed first",
            first.name
        ));
    }
    take
}

/// This node as a candidate, to rank against the others.
fn candidate_of(f: &Facts) -> Member {
    Member {
        name: f.me.clone(),
        running: true,
        in_recovery: true,
        timeline: f.local.timeline,
        lsn: f.local.lsn,
        nofailover: false,
        priority: f.priority,
        down: false,
        streaming: true,
        upstream: None,
    }
}

/// Candidate order: newer timeline, then more WAL, then higher priority, then the smaller
/// name (so two equal nodes agree on one).
fn rank(a: &Member, b: &Member) -> Ordering {
    a.timeline
        .cmp(&b.timeline)
        .then(a.lsn.cmp(&b.lsn))
        .then(a.priority.cmp(&b.priority))
        .then(b.name.cmp(&a.name))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMING: Timing = Timing {
        ttl: 4000,
        loop_wait: 1000,
        retry_timeout: 2000,
    };

    fn member(name: &str, in_recovery: bool, lsn: u64) -> Member {
        Member {
            name: name.into(),
            running: true,
            in_recovery,
            timeline: 1,
            lsn,
            nofailover: false,
            priority: 1,
            down: false,
            streaming: in_recovery,
            upstream: in_recovery.then(|| "db1".into()),
        }
    }

    fn standby(upstream: &str, lsn: u64) -> Local {
        Local {
            running: true,
            in_recovery: true,
            timeline: 1,
            lsn,
            upstream: Some(upstream.into()),
            diverged: false,
            replication_stale: false,
            rebuild_pending: false,
        }
    }

    fn primary(lsn: u64) -> Local {
        Local {
            running: true,
            in_recovery: false,
            timeline: 1,
            lsn,
            upstream: None,
            diverged: false,
            replication_stale: false,
            rebuild_pending: false,
        }
    }

    fn stopped() -> Local {
        Local {
            running: false,
            in_recovery: false,
            timeline: 1,
            lsn: 0,
            upstream: None,
            diverged: false,
            replication_stale: false,
            rebuild_pending: false,
        }
    }

    fn leader(name: &str, revision: i64) -> Option<Leader> {
        Some(Leader {
            name: name.into(),
            revision,
        })
    }

    /// db2's view at t=10 s unless the row changes it.
    fn facts(local: Local, cluster: Cluster) -> Facts {
        Facts {
            me: "db2".into(),
            now: 10_000,
            timing: TIMING,
            cluster,
            local,
            leader_seen: Some((7, 9_500)),
            last_leader_write: None,
            maximum_lag_on_failover: 1 << 20,
            nofailover: false,
            priority: 1,
            initialized: true,
            wall: 1_000_000,
            paused: false,
            down: false,
            request: None,
            synchronous_mode: false,
            sync: None,
            heard: vec![],
            failsafe_confirmed: false,
            failsafe_leader: None,
            replicatefrom: None,
        }
    }

    fn read(leader: Option<Leader>, members: Vec<Member>) -> Cluster {
        Cluster::Read { leader, members }
    }

    fn heard(name: &str, lsn: u64) -> Heard {
        Heard {
            name: name.into(),
            timeline: 1,
            lsn,
        }
    }

    fn take(expected: Option<i64>) -> Action {
        Action::TakeLeader {
            expected,
            promote: true,
        }
    }

    fn is_wait(a: &Action) -> bool {
        matches!(a, Action::Wait { .. })
    }

    #[test]
    fn table() {
        let both = |p: u64, s: u64| vec![member("db1", false, p), member("db2", true, s)];
        // (situation, facts, expected action or a predicate on it)
        type Check = Box<dyn Fn(&Action) -> bool>;
        let is = |want: Action| -> Check { Box::new(move |a| *a == want) };
        let waits: fn() -> Check = || Box::new(is_wait);
        let mut rows: Vec<(&str, Facts, Check)> = vec![
            (
                "healthy leader, I am it: renew",
                Facts {
                    me: "db1".into(),
                    last_leader_write: Some(9_200),
                    ..facts(primary(100), read(leader("db1", 7), both(100, 100)))
                },
                is(Action::RenewLeader),
            ),
            (
                "healthy leader, I stream from it: nothing",
                facts(standby("db1", 100), read(leader("db1", 7), both(100, 100))),
                waits(),
            ),
            (
                "healthy leader, I follow someone else: follow it",
                facts(standby("db3", 100), read(leader("db1", 7), both(100, 100))),
                is(Action::Follow {
                    leader: "db1".into(),
                }),
            ),
            (
                "replicatefrom db3, which streams from the leader: follow db3",
                Facts {
                    replicatefrom: Some("db3".into()),
                    ..facts(
                        standby("db1", 100),
                        read(leader("db1", 7), vec![member("db1", false, 100), member("db3", true, 100)]),
                    )
                },
                is(Action::Follow {
                    leader: "db3".into(),
                }),
            ),
            (
                "replicatefrom db3, streaming from it: nothing",
                Facts {
                    replicatefrom: Some("db3".into()),
                    ..facts(
                        standby("db3", 100),
                        read(leader("db1", 7), vec![member("db1", false, 100), member("db3", true, 100)]),
                    )
                },
                waits(),
            ),
            (
                "replicatefrom db3, which does not stream: back to the leader",
                Facts {
                    replicatefrom: Some("db3".into()),
                    ..facts(
                        standby("db3", 100),
                        read(
                            leader("db1", 7),
                            vec![
                                member("db1", false, 100),
                                Member {
                                    streaming: false,
                                    ..member("db3", true, 100)
                                },
                            ],
                        ),
                    )
                },
                is(Action::Follow {
                    leader: "db1".into(),
                }),
            ),
            (
                "replicatefrom db3, which itself cascades: from the leader (no chains, no loops)",
                Facts {
                    replicatefrom: Some("db3".into()),
                    ..facts(
                        standby("db1", 100),
                        read(
                            leader("db1", 7),
                            vec![
                                member("db1", false, 100),
                                Member {
                                    upstream: Some("db2".into()),
                                    ..member("db3", true, 100)
                                },
                            ],
                        ),
                    )
                },
                waits(),
            ),
            (
                "replicatefrom db3, stopped: start streaming from db3",
                Facts {
                    replicatefrom: Some("db3".into()),
                    ..facts(
                        stopped(),
                        read(leader("db1", 7), vec![member("db1", false, 100), member("db3", true, 100)]),
                    )
                },
                is(Action::StartStandby {
                    leader: Some("db3".into()),
                }),
            ),
            (
                "a data directory a half-done rewind left: rebuilt, never started",
                facts(
                    Local {
                        rebuild_pending: true,
                        ..stopped()
                    },
                    read(leader("db1", 7), both(100, 100)),
                ),
                is(Action::Rejoin {
                    leader: "db1".into(),
                }),
            ),
            (
                "the same without a leader: nothing (it must not start)",
                facts(
                    Local {
                        rebuild_pending: true,
                        ..stopped()
                    },
                    read(None, vec![]),
                ),
                waits(),
            ),
            (
                "the same without etcd: nothing (it must not start)",
                facts(
                    Local {
                        rebuild_pending: true,
                        ..stopped()
                    },
                    Cluster::Unreachable,
                ),
                waits(),
            ),
            (
                "the same in maintenance: nothing until up",
                Facts {
                    down: true,
                    ..facts(
                        Local {
                            rebuild_pending: true,
                            ..stopped()
                        },
                        read(leader("db1", 7), both(100, 100)),
                    )
                },
                waits(),
            ),
            (
                "diverged standby in maintenance: no rejoin",
                Facts {
                    down: true,
                    ..facts(
                        Local {
                            diverged: true,
                            ..standby("db1", 100)
                        },
                        read(leader("db1", 7), both(100, 100)),
                    )
                },
                waits(),
            ),
            (
                "a writable node that is not the leader rejoins even in maintenance",
                Facts {
                    down: true,
                    ..facts(primary(100), read(leader("db1", 7), both(100, 100)))
                },
                is(Action::Rejoin {
                    leader: "db1".into(),
                }),
            ),
            (
                "healthy leader, I stream from it with stale settings (no TLS file, old slot): follow it again",
                facts(
                    Local {
                        replication_stale: true,
                        ..standby("db1", 100)
                    },
                    read(leader("db1", 7), both(100, 100)),
                ),
                is(Action::Follow {
                    leader: "db1".into(),
                }),
            ),
            (
                "leader's revision not yet timed (fresh)",
                Facts {
                    leader_seen: Some((6, 0)),
                    ..facts(standby("db1", 100), read(leader("db1", 7), both(100, 100)))
                },
                waits(),
            ),
            (
                "leader stopped writing for ttl, I am the best: take it",
                Facts {
                    leader_seen: Some((7, 5_000)),
                    ..facts(
                        standby("db1", 100),
                        read(leader("db1", 7), vec![member("db2", true, 100)]),
                    )
                },
                is(take(Some(7))),
            ),
            (
                "leader stopped writing just under ttl: wait",
                Facts {
                    leader_seen: Some((7, 6_001)),
                    ..facts(
                        standby("db1", 100),
                        read(leader("db1", 7), vec![member("db2", true, 100)]),
                    )
                },
                waits(),
            ),
            (
                "no leader key (lease expired), I am the best: take it",
                facts(
                    standby("db1", 100),
                    read(None, vec![member("db2", true, 100)]),
                ),
                is(take(None)),
            ),
            (
                "no leader, another standby received more: wait for it",
                facts(
                    standby("db1", 100),
                    read(
                        None,
                        vec![member("db2", true, 100), member("db3", true, 150)],
                    ),
                ),
                waits(),
            ),
            (
                "no leader, the more advanced standby is nofailover: take it",
                facts(
                    standby("db1", 100),
                    read(
                        None,
                        vec![Member {
                            nofailover: true,
                            ..member("db3", true, 150)
                        }],
                    ),
                ),
                is(take(None)),
            ),
            (
                "no leader, equal LSN, higher priority elsewhere: wait",
                facts(
                    standby("db1", 100),
                    read(
                        None,
                        vec![Member {
                            priority: 5,
                            ..member("db3", true, 100)
                        }],
                    ),
                ),
                waits(),
            ),
            (
                "no leader, equal LSN and priority: the smaller name wins (db1 over me)",
                facts(
                    standby("x", 100),
                    read(None, vec![member("db1", true, 100)]),
                ),
                waits(),
            ),
            (
                "no leader, equal LSN and priority: I (db2) win over db3",
                facts(
                    standby("x", 100),
                    read(None, vec![member("db3", true, 100)]),
                ),
                is(take(None)),
            ),
            (
                "stale leader, but I lag more than maximum_lag_on_failover",
                Facts {
                    leader_seen: Some((7, 1_000)),
                    ..facts(
                        standby("db1", 100),
                        read(leader("db1", 7), both(100 + (2 << 20), 100)),
                    )
                },
                waits(),
            ),
            (
                "stale leader, lag within the limit: take it",
                Facts {
                    leader_seen: Some((7, 1_000)),
                    ..facts(standby("db1", 100), read(leader("db1", 7), both(200, 100)))
                },
                is(take(Some(7))),
            ),
            (
                "no leader, I am tagged nofailover",
                Facts {
                    nofailover: true,
                    ..facts(standby("db1", 100), read(None, vec![]))
                },
                waits(),
            ),
            (
                "no leader, my timeline diverged: never promote",
                facts(
                    Local {
                        diverged: true,
                        ..standby("db1", 100)
                    },
                    read(None, vec![]),
                ),
                waits(),
            ),
            (
                "a newer timeline beats more WAL on an older one",
                facts(
                    standby("db1", 500),
                    read(
                        None,
                        vec![Member {
                            timeline: 2,
                            ..member("db3", true, 100)
                        }],
                    ),
                ),
                waits(),
            ),
            (
                "leader alive, my history diverged: rejoin",
                facts(
                    Local {
                        diverged: true,
                        ..standby("db1", 100)
                    },
                    read(leader("db1", 7), both(100, 100)),
                ),
                is(Action::Rejoin {
                    leader: "db1".into(),
                }),
            ),
            (
                "another node leads and I am writable (old primary back): rejoin",
                facts(primary(100), read(leader("db1", 7), both(100, 100))),
                is(Action::Rejoin {
                    leader: "db1".into(),
                }),
            ),
            (
                "I hold the key but my last write is older than retry_timeout: fence",
                Facts {
                    me: "db1".into(),
                    last_leader_write: Some(7_000),
                    ..facts(primary(100), read(leader("db1", 7), both(100, 100)))
                },
                Box::new(|a| matches!(a, Action::Fence { .. })),
            ),
            (
                "etcd unreachable, I am primary with a fresh write: keep going",
                Facts {
                    me: "db1".into(),
                    last_leader_write: Some(9_000),
                    ..facts(primary(100), Cluster::Unreachable)
                },
                waits(),
            ),
            (
                "etcd unreachable, I am primary, write too old: fence",
                Facts {
                    me: "db1".into(),
                    last_leader_write: Some(8_000),
                    ..facts(primary(100), Cluster::Unreachable)
                },
                Box::new(|a| matches!(a, Action::Fence { .. })),
            ),
            (
                "etcd unreachable, write too old, but every member confirmed me (failsafe): keep going",
                Facts {
                    me: "db1".into(),
                    last_leader_write: Some(1_000),
                    failsafe_confirmed: true,
                    ..facts(primary(100), Cluster::Unreachable)
                },
                waits(),
            ),
            (
                "etcd back, my key with an old revision, failsafe confirmed: renew, not fence",
                Facts {
                    me: "db1".into(),
                    last_leader_write: Some(1_000),
                    failsafe_confirmed: true,
                    ..facts(primary(100), read(leader("db1", 7), both(100, 100)))
                },
                is(Action::RenewLeader),
            ),
            (
                "no leader key, but the leader called in failsafe within ttl: a standby waits",
                Facts {
                    failsafe_leader: Some("db1".into()),
                    ..facts(standby("db1", 100), read(None, vec![]))
                },
                waits(),
            ),
            (
                "no leader key, failsafe leader called, an operator's failover request: still waits",
                Facts {
                    failsafe_leader: Some("db1".into()),
                    request: Some(Request {
                        kind: RequestKind::Failover,
                        from: None,
                        to: Some("db2".into()),
                        at: None,
                        requested_at: 999_990,
                        handed_over: None,
                    }),
                    ..facts(standby("db1", 100), read(None, vec![]))
                },
                waits(),
            ),
            (
                "etcd unreachable, I am a standby: never promote",
                facts(standby("db1", 100), Cluster::Unreachable),
                waits(),
            ),
            (
                "etcd unreachable, PostgreSQL down: start it as a standby only",
                facts(stopped(), Cluster::Unreachable),
                is(Action::StartStandby { leader: None }),
            ),
            (
                "PostgreSQL down, another node leads: start as its standby",
                facts(stopped(), read(leader("db1", 7), both(100, 100))),
                is(Action::StartStandby {
                    leader: Some("db1".into()),
                }),
            ),
            (
                "PostgreSQL down, no leader: start as a standby, never as primary",
                facts(stopped(), read(None, vec![])),
                is(Action::StartStandby { leader: None }),
            ),
            (
                "PostgreSQL down, I hold a fresh leader key: start as primary",
                Facts {
                    me: "db1".into(),
                    last_leader_write: Some(9_500),
                    ..facts(stopped(), read(leader("db1", 7), both(100, 100)))
                },
                is(Action::StartPrimary),
            ),
            (
                "I hold the key but still recover (took it, promote pending): promote",
                Facts {
                    last_leader_write: Some(9_900),
                    ..facts(standby("db1", 100), read(leader("db2", 8), both(100, 100)))
                },
                is(Action::Promote),
            ),
            (
                "a primary without the key (etcd was down): reclaim it",
                Facts {
                    me: "db1".into(),
                    ..facts(primary(100), read(None, vec![member("db2", true, 100)]))
                },
                is(Action::TakeLeader {
                    expected: None,
                    promote: false,
                }),
            ),
            (
                "the key names me but I have not written it since starting: renew first",
                Facts {
                    me: "db1".into(),
                    ..facts(primary(100), read(leader("db1", 7), both(100, 100)))
                },
                is(Action::RenewLeader),
            ),
            (
                "the key names me, PostgreSQL down, no fresh write: renew before starting it",
                Facts {
                    me: "db1".into(),
                    ..facts(stopped(), read(leader("db1", 7), both(100, 100)))
                },
                is(Action::RenewLeader),
            ),
            (
                "a new cluster, no leader yet, I am a standby: never promote first",
                Facts {
                    initialized: false,
                    ..facts(standby("db1", 100), read(None, vec![]))
                },
                waits(),
            ),
            (
                "a new cluster, no leader yet, I am its primary: take the key",
                Facts {
                    me: "db1".into(),
                    initialized: false,
                    ..facts(primary(100), read(None, vec![]))
                },
                is(Action::TakeLeader {
                    expected: None,
                    promote: false,
                }),
            ),
        ];
        // Operator requests, maintenance, pause and synchronous mode.
        let lead = |request: Option<Request>| Facts {
            me: "db1".into(),
            last_leader_write: Some(9_800),
            request,
            ..facts(primary(100), read(leader("db1", 7), both(100, 100)))
        };
        let sw = |to: Option<&str>| Request {
            kind: RequestKind::Switchover,
            from: Some("db1".into()),
            to: to.map(Into::into),
            at: None,
            requested_at: 1_000_000,
            handed_over: None,
        };
        let handed = |to: &str, lsn: u64, at: u64| Request {
            handed_over: Some(crate::records::HandedOver {
                to: to.into(),
                lsn,
                at,
            }),
            ..sw(Some(to))
        };
        let ends = |ok: bool| -> Check {
            Box::new(move |a| matches!(a, Action::EndRequest { ok: o, .. } if *o == ok))
        };
        let hand = |to: &str| Action::HandOver { to: to.into() };
        rows.extend::<Vec<(&str, Facts, Check)>>(vec![
            (
                "switchover to a caught-up streaming standby: hand over",
                lead(Some(sw(Some("db2")))),
                is(hand("db2")),
            ),
            (
                "switchover to whoever is best: hand over to it",
                lead(Some(sw(None))),
                is(hand("db2")),
            ),
            (
                "switchover, candidate too far behind: keep leading meanwhile",
                Facts {
                    maximum_lag_on_failover: 10,
                    cluster: read(leader("db1", 7), both(100, 50)),
                    ..lead(Some(sw(Some("db2"))))
                },
                is(Action::RenewLeader),
            ),
            (
                "switchover, candidate not streaming yet: keep leading meanwhile",
                Facts {
                    cluster: read(
                        leader("db1", 7),
                        vec![Member {
                            streaming: false,
                            ..member("db2", true, 100)
                        }],
                    ),
                    ..lead(Some(sw(Some("db2"))))
                },
                is(Action::RenewLeader),
            ),
            (
                "switchover scheduled later: keep leading",
                lead(Some(Request {
                    at: Some(1_000_100),
                    ..sw(Some("db2"))
                })),
                is(Action::RenewLeader),
            ),
            (
                "switchover not possible within its time: end it, failed",
                lead(Some(Request {
                    requested_at: 1_000_000 - 61,
                    ..sw(Some("db3"))
                })),
                ends(false),
            ),
            (
                "switchover to a node in maintenance: refused",
                Facts {
                    cluster: read(
                        leader("db1", 7),
                        vec![Member {
                            down: true,
                            ..member("db2", true, 100)
                        }],
                    ),
                    ..lead(Some(sw(Some("db2"))))
                },
                ends(false),
            ),
            (
                "switchover asked of a former leader: refused",
                lead(Some(Request {
                    from: Some("db3".into()),
                    ..sw(None)
                })),
                ends(false),
            ),
            (
                "switchover with no standby at all: refused",
                Facts {
                    cluster: read(leader("db1", 7), vec![]),
                    ..lead(Some(sw(None)))
                },
                ends(false),
            ),
            (
                "the leader is put down: hand over",
                Facts {
                    down: true,
                    ..lead(None)
                },
                is(hand("db2")),
            ),
            (
                "the leader is put down, nobody can take over: go on leading",
                Facts {
                    down: true,
                    cluster: read(leader("db1", 7), vec![]),
                    ..lead(None)
                },
                is(Action::RenewLeader),
            ),
            (
                "I took over through a handover: close the request",
                Facts {
                    me: "db2".into(),
                    request: Some(handed("db2", 90, 999_999)),
                    cluster: read(leader("db2", 8), both(100, 100)),
                    ..lead(None)
                },
                ends(true),
            ),
            (
                "handed over to me, and I received past its last record: take the key",
                Facts {
                    request: Some(handed("db2", 90, 999_999)),
                    ..facts(standby("db1", 100), read(None, vec![]))
                },
                is(take(None)),
            ),
            (
                "handed over to me, last record not received yet: wait",
                Facts {
                    request: Some(handed("db2", 100, 999_999)),
                    ..facts(standby("db1", 100), read(None, vec![]))
                },
                waits(),
            ),
            (
                "handed over to db3: I stand back though I rank higher",
                Facts {
                    request: Some(handed("db3", 100, 999_999)),
                    ..facts(
                        standby("db1", 500),
                        read(None, vec![member("db3", true, 100)]),
                    )
                },
                waits(),
            ),
            (
                "a handover nobody completed in time: normal election",
                Facts {
                    request: Some(handed("db3", 100, 1_000_000 - 15)),
                    ..facts(standby("db1", 500), read(None, vec![]))
                },
                is(take(None)),
            ),
            (
                "failover --to me with a dead leader: take it despite lag and pause",
                Facts {
                    leader_seen: Some((7, 1_000)),
                    paused: true,
                    request: Some(Request {
                        kind: RequestKind::Failover,
                        from: None,
                        ..sw(Some("db2"))
                    }),
                    ..facts(
                        standby("db1", 100),
                        read(leader("db1", 7), both(100 + (2 << 20), 100)),
                    )
                },
                is(take(Some(7))),
            ),
            (
                "paused: a dead leader is not replaced",
                Facts {
                    paused: true,
                    ..facts(standby("db1", 100), read(None, vec![]))
                },
                waits(),
            ),
            (
                "down: never promoted",
                Facts {
                    down: true,
                    ..facts(standby("db1", 100), read(None, vec![]))
                },
                waits(),
            ),
            (
                "a better candidate is down: I take it",
                facts(
                    standby("db1", 100),
                    read(
                        None,
                        vec![Member {
                            down: true,
                            ..member("db3", true, 150)
                        }],
                    ),
                ),
                is(take(None)),
            ),
            (
                "synchronous mode, I am the synchronous standby: take it, lag or not",
                Facts {
                    leader_seen: Some((7, 1_000)),
                    synchronous_mode: true,
                    sync: Some(SyncState {
                        leader: "db1".into(),
                        standby: Some("db2".into()),
                        ..Default::default()
                    }),
                    ..facts(
                        standby("db1", 100),
                        read(leader("db1", 7), both(100 + (2 << 20), 100)),
                    )
                },
                is(take(Some(7))),
            ),
            (
                "quorum, any 1 of two: I heard both and am the most advanced: take it",
                Facts {
                    synchronous_mode: true,
                    sync: Some(SyncState::quorum("db1", vec!["db2".into(), "db3".into()], 1)),
                    heard: vec![heard("db2", 500), heard("db3", 400)],
                    ..facts(standby("db1", 500), read(None, vec![member("db3", true, 400)]))
                },
                is(take(None)),
            ),
            (
                "quorum, any 1 of two: only my own position is known: wait for the other",
                Facts {
                    synchronous_mode: true,
                    sync: Some(SyncState::quorum("db1", vec!["db2".into(), "db3".into()], 1)),
                    heard: vec![heard("db2", 500)],
                    // Its record in etcd shows it behind: that proves nothing about now.
                    ..facts(standby("db1", 500), read(None, vec![member("db3", true, 400)]))
                },
                waits(),
            ),
            (
                "quorum, any 1 of two: the other voter is more advanced: it goes first",
                Facts {
                    synchronous_mode: true,
                    sync: Some(SyncState::quorum("db1", vec!["db2".into(), "db3".into()], 1)),
                    heard: vec![heard("db2", 500), heard("db3", 600)],
                    ..facts(standby("db1", 500), read(None, vec![member("db3", true, 400)]))
                },
                waits(),
            ),
            (
                "quorum, any 1 of two: the other voter is ahead but down: wait (I may lack a commit)",
                Facts {
                    synchronous_mode: true,
                    sync: Some(SyncState::quorum("db1", vec!["db2".into(), "db3".into()], 1)),
                    heard: vec![heard("db2", 500), heard("db3", 600)],
                    ..facts(
                        standby("db1", 500),
                        read(None, vec![Member { down: true, ..member("db3", true, 600) }]),
                    )
                },
                waits(),
            ),
            (
                "quorum, any 1 of two: level with a voter placed first: it goes",
                Facts {
                    synchronous_mode: true,
                    sync: Some(SyncState::quorum("db1", vec!["db2".into(), "db3".into()], 1)),
                    heard: vec![heard("db2", 500), heard("db3", 500)],
                    ..facts(
                        standby("db1", 500),
                        read(None, vec![Member { priority: 5, ..member("db3", true, 500) }]),
                    )
                },
                waits(),
            ),
            (
                "quorum, any 1 of two: level with a voter placed first that is down: take it",
                Facts {
                    synchronous_mode: true,
                    sync: Some(SyncState::quorum("db1", vec!["db2".into(), "db3".into()], 1)),
                    heard: vec![heard("db2", 500), heard("db3", 500)],
                    ..facts(
                        standby("db1", 500),
                        read(
                            None,
                            vec![Member {
                                priority: 5,
                                down: true,
                                ..member("db3", true, 500)
                            }],
                        ),
                    )
                },
                is(take(None)),
            ),
            (
                "quorum, any 2 of two: each holds every commit, my own position is enough",
                Facts {
                    synchronous_mode: true,
                    sync: Some(SyncState::quorum("db1", vec!["db2".into(), "db3".into()], 2)),
                    heard: vec![heard("db2", 500)],
                    ..facts(standby("db1", 500), read(None, vec![]))
                },
                is(take(None)),
            ),
            (
                "quorum, any 2 of three: two heard, the third silent, I am ahead: take it",
                Facts {
                    synchronous_mode: true,
                    sync: Some(SyncState::quorum(
                        "db1",
                        vec!["db2".into(), "db3".into(), "db4".into()],
                        2,
                    )),
                    heard: vec![heard("db2", 500), heard("db4", 450)],
                    ..facts(standby("db1", 500), read(None, vec![member("db4", true, 450)]))
                },
                is(take(None)),
            ),
            (
                "quorum, any 1 of three: two heard of the three needed: wait",
                Facts {
                    synchronous_mode: true,
                    sync: Some(SyncState::quorum(
                        "db1",
                        vec!["db2".into(), "db3".into(), "db4".into()],
                        1,
                    )),
                    heard: vec![heard("db2", 500), heard("db4", 450)],
                    ..facts(standby("db1", 500), read(None, vec![member("db4", true, 450)]))
                },
                waits(),
            ),
            (
                "quorum, nothing proven yet (quorum 0): a voter is not promoted",
                Facts {
                    synchronous_mode: true,
                    sync: Some(SyncState::quorum("db1", vec!["db2".into(), "db3".into()], 0)),
                    heard: vec![heard("db2", 500), heard("db3", 400)],
                    ..facts(standby("db1", 500), read(None, vec![member("db3", true, 400)]))
                },
                waits(),
            ),
            (
                "quorum, not a voter: never promoted however advanced",
                Facts {
                    synchronous_mode: true,
                    sync: Some(SyncState::quorum("db1", vec!["db3".into(), "db4".into()], 1)),
                    heard: vec![heard("db2", 900), heard("db3", 400), heard("db4", 400)],
                    ..facts(standby("db1", 900), read(None, vec![member("db3", true, 400)]))
                },
                waits(),
            ),
            (
                "quorum, I led last (fenced, a standby now) and no voter is ahead: take it back",
                Facts {
                    synchronous_mode: true,
                    sync: Some(SyncState::quorum("db2", vec!["db3".into(), "db4".into()], 1)),
                    ..facts(standby("db3", 500), read(None, vec![member("db3", true, 500)]))
                },
                is(take(None)),
            ),
            (
                "quorum, I led last and a voter is ahead: it goes first",
                Facts {
                    synchronous_mode: true,
                    sync: Some(SyncState::quorum("db2", vec!["db3".into(), "db4".into()], 1)),
                    ..facts(standby("db3", 500), read(None, vec![member("db3", true, 510)]))
                },
                waits(),
            ),
            (
                "FIRST 2: I am one of two synchronous standbys and the more advanced: take it",
                Facts {
                    synchronous_mode: true,
                    sync: Some(SyncState::new("db1", vec!["db3".into(), "db2".into()])),
                    ..facts(
                        standby("db1", 500),
                        read(None, vec![member("db3", true, 400), member("db4", true, 900)]),
                    )
                },
                is(take(None)),
            ),
            (
                "FIRST 2: the other synchronous standby is more advanced: it goes first",
                Facts {
                    synchronous_mode: true,
                    sync: Some(SyncState::new("db1", vec!["db2".into(), "db3".into()])),
                    ..facts(standby("db1", 500), read(None, vec![member("db3", true, 600)]))
                },
                waits(),
            ),
            (
                "FIRST 2: the better synchronous standby is down (maintenance): take it",
                Facts {
                    synchronous_mode: true,
                    sync: Some(SyncState::new("db1", vec!["db2".into(), "db3".into()])),
                    ..facts(
                        standby("db1", 500),
                        read(
                            None,
                            vec![Member {
                                down: true,
                                ..member("db3", true, 600)
                            }],
                        ),
                    )
                },
                is(take(None)),
            ),
            (
                "FIRST 2: a standby outside the record waits, however advanced",
                Facts {
                    synchronous_mode: true,
                    sync: Some(SyncState::new("db1", vec!["db3".into(), "db4".into()])),
                    ..facts(standby("db1", 900), read(None, vec![member("db3", true, 100)]))
                },
                waits(),
            ),
            (
                "synchronous mode, another node is the synchronous standby: wait",
                Facts {
                    synchronous_mode: true,
                    sync: Some(SyncState {
                        leader: "db1".into(),
                        standby: Some("db3".into()),
                        ..Default::default()
                    }),
                    ..facts(standby("db1", 500), read(None, vec![]))
                },
                waits(),
            ),
            (
                "synchronous mode, no synchronous standby recorded: nobody is promoted",
                Facts {
                    synchronous_mode: true,
                    sync: Some(SyncState {
                        leader: "db1".into(),
                        standby: None,
                        ..Default::default()
                    }),
                    ..facts(standby("db1", 500), read(None, vec![]))
                },
                waits(),
            ),
            (
                "synchronous mode, I led last (fenced, now a standby) and nobody is ahead: take it back",
                Facts {
                    synchronous_mode: true,
                    sync: Some(SyncState {
                        leader: "db2".into(),
                        standby: None,
                        ..Default::default()
                    }),
                    ..facts(standby("db1", 500), read(None, vec![member("db1", true, 400)]))
                },
                is(take(None)),
            ),
            (
                "synchronous mode, I led last, the synchronous standby is gone and a standby outside the record is a few bytes ahead: take it back",
                Facts {
                    synchronous_mode: true,
                    sync: Some(SyncState::new("db2", vec!["db4".into()])),
                    ..facts(standby("db1", 500), read(None, vec![member("db3", true, 520)]))
                },
                is(take(None)),
            ),
            (
                "synchronous mode, I led last and the synchronous standby is ahead: it goes first",
                Facts {
                    synchronous_mode: true,
                    sync: Some(SyncState::new("db2", vec!["db3".into()])),
                    ..facts(standby("db1", 500), read(None, vec![member("db3", true, 520)]))
                },
                waits(),
            ),
            (
                "synchronous mode, I led last but a node on a newer timeline exists: wait",
                Facts {
                    synchronous_mode: true,
                    sync: Some(SyncState {
                        leader: "db2".into(),
                        standby: None,
                        ..Default::default()
                    }),
                    ..facts(
                        standby("db1", 500),
                        read(
                            None,
                            vec![Member {
                                timeline: 2,
                                ..member("db1", true, 100)
                            }],
                        ),
                    )
                },
                waits(),
            ),
            (
                "synchronous mode, the last leader led alone and is a standby behind me: take over",
                Facts {
                    synchronous_mode: true,
                    sync: Some(SyncState {
                        leader: "db1".into(),
                        standby: None,
                        ..Default::default()
                    }),
                    ..facts(standby("db1", 501), read(None, vec![member("db1", true, 500)]))
                },
                is(take(None)),
            ),
            (
                "synchronous mode, the last leader led alone and is level with me: it goes first",
                Facts {
                    synchronous_mode: true,
                    sync: Some(SyncState {
                        leader: "db1".into(),
                        standby: None,
                        ..Default::default()
                    }),
                    ..facts(standby("db1", 500), read(None, vec![member("db1", true, 500)]))
                },
                waits(),
            ),
            (
                "synchronous mode, the last leader led alone and is not running: wait for it",
                Facts {
                    synchronous_mode: true,
                    sync: Some(SyncState {
                        leader: "db1".into(),
                        standby: None,
                        ..Default::default()
                    }),
                    ..facts(
                        standby("db1", 501),
                        read(
                            None,
                            vec![Member {
                                running: false,
                                ..member("db1", true, 500)
                            }],
                        ),
                    )
                },
                waits(),
            ),
            (
                "synchronous mode, the last leader is a primary still: wait",
                Facts {
                    synchronous_mode: true,
                    sync: Some(SyncState {
                        leader: "db1".into(),
                        standby: None,
                        ..Default::default()
                    }),
                    ..facts(standby("db1", 501), read(None, vec![member("db1", false, 500)]))
                },
                waits(),
            ),
        ]);
        // Two candidates racing: both see the same stale revision and both decide to take
        // it; the transaction on that revision lets one win. Each side's decision is a take.
        let racing = |me: &str, other: &str| Facts {
            me: me.into(),
            leader_seen: Some((7, 1_000)),
            ..facts(
                standby("db1", 100),
                read(leader("db1", 7), vec![member(other, true, 100)]),
            )
        };
        rows.push((
            "two candidates racing (db2)",
            racing("db2", "db3"),
            is(take(Some(7))),
        ));
        rows.push((
            "two candidates racing, equal: db3 defers to db2",
            racing("db3", "db2"),
            waits(),
        ));
        for (name, f, check) in &rows {
            let got = decide(f);
            assert!(check(&got), "{name}: got {got:?}");
        }
    }
}
