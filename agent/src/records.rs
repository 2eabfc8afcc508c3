//! The operator's requests and the leader's synchronous-replication record, as they live in
//! etcd (JSON). Plain data: `decide` reads them, the API writes requests, the leader writes
//! the sync record.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// The wall clock in Unix seconds: the unit of every time in these records.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RequestKind {
    /// A planned move of a healthy leader: it hands over after a clean shutdown.
    Switchover,
    /// A forced promotion of `to` while no healthy leader exists.
    Failover,
}

/// `/pgshift/<cluster>/request`: at most one at a time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub kind: RequestKind,
    /// The leader when the switchover was asked for; only it acts on it.
    #[serde(default)]
    pub from: Option<String>,
    /// The node to promote (None: the leader picks the best standby).
    #[serde(default)]
    pub to: Option<String>,
    /// Not before this time (Unix seconds): a scheduled switchover.
    #[serde(default)]
    pub at: Option<u64>,
    /// Unix seconds when it was asked for.
    pub requested_at: u64,
    /// Set by the leader once it has shut down cleanly and released the key.
    #[serde(default)]
    pub handed_over: Option<HandedOver>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandedOver {
    pub to: String,
    /// Where the old leader's shutdown checkpoint record starts: the candidate takes over
    /// only once it received past it, so it has every record the old leader wrote.
    pub lsn: u64,
    /// Unix seconds.
    pub at: u64,
}

/// How long a request may wait for its moment before the leader drops it (seconds after
/// `at`, or after `requested_at` when unscheduled).
pub const REQUEST_TIMEOUT_SECS: u64 = 60;

/// How long other nodes keep out of a handover's way (seconds after it): if the candidate
/// has not taken the key by then, normal election resumes (the old leader, a clean standby
/// with every record, is a fine candidate itself).
pub const HANDOVER_TIMEOUT_SECS: u64 = 15;

impl Request {
    /// The moment it may run (Unix seconds).
    pub fn due(&self) -> u64 {
        self.at.unwrap_or(self.requested_at)
    }

    pub fn expired(&self, wall: u64) -> bool {
        match &self.handed_over {
            Some(h) => wall >= h.at + HANDOVER_TIMEOUT_SECS,
            None => wall >= self.due() + REQUEST_TIMEOUT_SECS,
        }
    }

    /// The node this request wants promoted now, if it names one and is still in force.
    pub fn promotes(&self, wall: u64) -> Option<&str> {
        if self.expired(wall) {
            return None;
        }
        match (&self.kind, &self.handed_over) {
            (_, Some(h)) => Some(&h.to),
            (RequestKind::Failover, None) => self.to.as_deref(),
            (RequestKind::Switchover, None) => None,
        }
    }
}

/// `/pgshift/<cluster>/reinit/<node>`: an operator asked that node to rebuild its data
/// directory (`pgshift reinit`). Only that node's agent acts on it: it marks its directory for
/// a rebuild and deletes the key; its next rejoin copies a fresh one and moves the old aside.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reinit {
    /// Unix seconds when it was asked for.
    pub requested_at: u64,
    /// The node whose API took the request.
    pub by: String,
    /// Where the copy comes from (None: the node's [rebuild] method).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<crate::config::RebuildMethod>,
}

impl Reinit {
    /// Its keys' prefix: `reinit/<node>`.
    pub const KIND: &'static str = "reinit";
}

/// `/pgshift/<cluster>/restart/<node>`: an operator asked that node to restart PostgreSQL
/// (`pgshift restart`), e.g. for a setting that is `pending_restart`. A standby restarts when
/// it is due; a leader waits until no other member has a restart pending (standbys first),
/// then hands over by a switchover, which restarts it as a standby. The key goes once the
/// node's server started after the request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restart {
    /// Unix seconds when it was asked for.
    pub requested_at: u64,
    /// The node whose API took the request.
    pub by: String,
    /// Not before this time (Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<u64>,
}

/// How long a due restart may stay undone before its node drops it (seconds): a leader with
/// no standby able to take over would otherwise keep asking for switchovers for ever.
pub const RESTART_TIMEOUT_SECS: u64 = 600;

impl Restart {
    /// Its keys' prefix: `restart/<node>`.
    pub const KIND: &'static str = "restart";

    /// The moment it may run (Unix seconds).
    pub fn due(&self) -> u64 {
        self.at.unwrap_or(self.requested_at)
    }
}

/// `/pgshift/<cluster>/sync`: the standbys that confirm every commit of `leader`. A standby
/// is added by the leader only after it is synchronous (and caught up), and removed before
/// the leader stops waiting for it, so every one it names holds every acknowledged commit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncState {
    pub leader: String,
    /// The first of `standbys`: all that agents before `synchronous_node_count` read (they
    /// promote only that one, which is safe).
    #[serde(default)]
    pub standby: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub standbys: Vec<String>,
    /// Quorum commit (`synchronous_mode = "quorum"`, PostgreSQL's `ANY k`): every commit
    /// the leader acknowledged is on at least `quorum` of `voters`. Kept apart from
    /// `standbys`, each of which holds every commit: an agent that knows only those sees
    /// nobody to promote but the last leader, which is safe.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub voters: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quorum: Option<usize>,
}

impl SyncState {
    pub fn new(leader: impl Into<String>, standbys: Vec<String>) -> SyncState {
        SyncState {
            leader: leader.into(),
            standby: standbys.first().cloned(),
            standbys,
            ..SyncState::default()
        }
    }

    /// A quorum record: every acknowledged commit of `leader` is on `quorum` of `voters`.
    pub fn quorum(leader: impl Into<String>, voters: Vec<String>, quorum: usize) -> SyncState {
        SyncState {
            leader: leader.into(),
            voters,
            quorum: Some(quorum),
            ..SyncState::default()
        }
    }

    /// The voters and their quorum, for a quorum record.
    pub fn voting(&self) -> Option<(&[String], usize)> {
        self.quorum.map(|q| (self.voters.as_slice(), q))
    }

    /// The synchronous standbys (a record of an older agent names one in `standby`).
    pub fn names(&self) -> Vec<&str> {
        if self.standbys.is_empty() {
            self.standby.iter().map(String::as_str).collect()
        } else {
            self.standbys.iter().map(String::as_str).collect()
        }
    }
}

/// `/pgshift/<cluster>/outcome`: what became of the last request, for the CLI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub request: Request,
    pub ok: bool,
    pub message: String,
    /// Unix seconds.
    pub at: u64,
}
