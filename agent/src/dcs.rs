//! The cluster's state in etcd, under `/pgshift/<cluster>/`:
//! - `leader`: the leader's node name, bound to its agent's lease and rewritten every loop
//!   (each write bumps the key's mod_revision, which followers time; see `decide`);
//! - `members/<name>`: each node's published facts (JSON), bound to its agent's lease;
//! - `history`: the leader changes, newest last (JSON list);
//! - `request`: the pending switchover or failover (`records::Request`), `outcome`: what
//!   became of the last one;
//! - `sync`: the synchronous standby (`records::SyncState`), written by the leader;
//! - `pause`: present while automatic failover is paused;
//! - `down/<name>`: present while that node is in maintenance;
//! - `reinit/<name>`: an operator's request that that node rebuild its data directory
//!   (`records::Reinit`), until its agent takes it;
//! - `restart/<name>`: an operator's request that that node restart PostgreSQL
//!   (`records::Restart`), until it has;
//! - `config`: the cluster-wide configuration (`cluster_config::ClusterConfig`), versioned by
//!   its mod_revision.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cluster_config::ClusterConfig;
use crate::decide::{Leader, Member};
use crate::etcd::{self, Client};
use crate::records::{Outcome, Reinit, Request, Restart, SyncState};
use crate::state::{NodeState, Role};

/// What a node publishes about itself; also what `/cluster` and `pgshift status` show.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    pub name: String,
    /// host:port of its PostgreSQL, as other nodes reach it.
    pub conn: String,
    /// host:port of its API.
    pub api: String,
    /// "primary", "replica" or "stopped".
    pub role: Role,
    /// What the agent is doing: "running", "streaming", "starting", "promoting", "rejoining",
    /// "rewinding", "rebuilding", "fenced", ...
    pub state: NodeState,
    pub timeline: u32,
    /// Written (primary) or received (standby) WAL position.
    pub lsn: u64,
    pub replayed_lsn: u64,
    /// The node it streams from.
    pub upstream: Option<String>,
    pub nofailover: bool,
    pub priority: i32,
    /// Tags other nodes act on: out of the read-only pool, never synchronous.
    #[serde(default)]
    pub noloadbalance: bool,
    #[serde(default)]
    pub nosync: bool,
    #[serde(default)]
    pub clonefrom: bool,
    /// Its agent can rebuild it from the pgBackRest repository ([rebuild] stanza).
    #[serde(default)]
    pub pgbackrest: bool,
    /// The settings a standby needs at least as high as its primary's (PostgreSQL pauses
    /// recovery otherwise), so every node can compare itself with the leader.
    #[serde(default)]
    pub settings: BTreeMap<String, i64>,
    /// Problems this node sees in itself, for people (status, /status).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// The node applies maintenance (`pgshift down`): what the CLI waits for.
    #[serde(default)]
    pub down: bool,
    /// The physical replication slots on its PostgreSQL (a standby checks the leader has
    /// its own before it suspects anything worse).
    #[serde(default)]
    pub slots: Vec<String>,
    /// On the leader: the oldest WAL each of its slots keeps (restart_lsn), by slot name.
    /// Standbys advance their copies of the slots to these positions.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub slot_lsns: BTreeMap<String, u64>,
    /// Rejoins by pg_rewind and by rebuild since its agent started.
    #[serde(default)]
    pub rewinds: u64,
    #[serde(default)]
    pub rebuilds: u64,
    /// A changed PostgreSQL setting waits for a restart.
    #[serde(default)]
    pub pending_restart: bool,
    /// When its running PostgreSQL started (Unix seconds; 0 when stopped).
    #[serde(default)]
    pub started_at: u64,
}

/// Settings that must be at least the primary's on every standby.
pub const STANDBY_MINIMUMS: &[&str] = &[
    "max_connections",
    "max_wal_senders",
    "max_worker_processes",
    "max_prepared_transactions",
    "max_locks_per_transaction",
];

/// What `mine` has below `leader`'s, e.g. "max_connections 100 < 200 on db1".
pub fn settings_below(mine: &BTreeMap<String, i64>, leader: &MemberRecord) -> Vec<String> {
    STANDBY_MINIMUMS
        .iter()
        .filter_map(|k| {
            let (m, l) = (mine.get(*k)?, leader.settings.get(*k)?);
            (m < l).then(|| format!("{k} {m} < {l} on {}", leader.name))
        })
        .collect()
}

impl MemberRecord {
    pub fn host(&self) -> &str {
        self.conn.rsplit_once(':').map_or(&self.conn, |(h, _)| h)
    }

    /// `down`: whether etcd has it in maintenance (the record may not say so yet).
    pub fn as_member(&self, down: bool) -> Member {
        Member {
            name: self.name.clone(),
            running: self.role != Role::Stopped,
            in_recovery: self.role == Role::Replica,
            timeline: self.timeline,
            lsn: self.lsn,
            nofailover: self.nofailover,
            priority: self.priority,
            down: down || self.down,
            streaming: self.state == NodeState::Streaming,
            upstream: self.upstream.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub leader: String,
    pub timeline: u32,
    /// Unix seconds.
    pub at: u64,
    pub reason: String,
}

/// One consistent read of the cluster.
#[derive(Debug, Clone, Default)]
pub struct View {
    pub leader: Option<Leader>,
    pub members: Vec<MemberRecord>,
    pub history: Vec<HistoryEntry>,
    /// The pending request and its key's mod_revision.
    pub request: Option<(Request, i64)>,
    pub outcome: Option<Outcome>,
    pub sync: Option<SyncState>,
    pub paused: bool,
    pub down: BTreeSet<String>,
    /// Every member the leader has seen, and when it last saw it (Unix seconds): whose
    /// replication slots are members' and how long they have been gone (see `slots`).
    pub seen: BTreeMap<String, u64>,
    /// Pending reinit requests by node, with their keys' mod_revision.
    pub reinit: BTreeMap<String, (Reinit, i64)>,
    /// Pending restart requests by node, with their keys' mod_revision.
    pub restart: BTreeMap<String, (Restart, i64)>,
    /// The cluster-wide configuration and its revision; a document no agent can read is
    /// kept as its error (`Err`), so nobody mistakes it for none.
    pub config: Option<(Result<ClusterConfig, String>, i64)>,
}

impl View {
    pub fn member(&self, name: &str) -> Option<&MemberRecord> {
        self.members.iter().find(|m| m.name == name)
    }

    /// The sync record, when the current leader wrote it (an earlier leader's names nobody
    /// who confirms this one's commits).
    pub fn leader_sync(&self) -> Option<&SyncState> {
        let leader = self.leader.as_ref()?;
        self.sync.as_ref().filter(|s| s.leader == leader.name)
    }

    /// Whether `m` may be one of `leader`'s synchronous standbys: a replica streaming from
    /// it, not in maintenance, neither nofailover (a synchronous standby is one a failover
    /// may promote) nor nosync.
    pub fn can_be_synchronous(&self, m: &MemberRecord, leader: &str) -> bool {
        m.name != leader
            && m.role == Role::Replica
            && m.state == NodeState::Streaming
            && m.upstream.as_deref() == Some(leader)
            && !m.down
            && !self.down.contains(&m.name)
            && !m.nofailover
            && !m.nosync
    }
}

pub struct Dcs {
    pub etcd: Client,
    prefix: String,
}

impl Dcs {
    pub fn new(etcd: Client, cluster: &str) -> Dcs {
        Dcs {
            etcd,
            prefix: format!("/pgshift/{cluster}/"),
        }
    }

    pub fn leader_key(&self) -> String {
        format!("{}leader", self.prefix)
    }

    fn member_key(&self, name: &str) -> String {
        format!("{}members/{name}", self.prefix)
    }

    pub fn read(&self) -> Result<View, etcd::Error> {
        let (_, kvs) = self.etcd.range_prefix(&self.prefix)?;
        let mut view = View::default();
        for kv in kvs {
            let Some(rest) = kv.key.strip_prefix(&self.prefix) else {
                continue;
            };
            if rest == "leader" {
                view.leader = Some(Leader {
                    name: kv.value,
                    revision: kv.mod_revision,
                });
            } else if rest.starts_with("members/") {
                // A record we cannot read (another version's) is skipped, not fatal.
                if let Ok(m) = serde_json::from_str::<MemberRecord>(&kv.value) {
                    view.members.push(m);
                }
            } else if rest == "history" {
                view.history = serde_json::from_str(&kv.value).unwrap_or_default();
            } else if rest == "request" {
                view.request = serde_json::from_str(&kv.value)
                    .ok()
                    .map(|r| (r, kv.mod_revision));
            } else if rest == "outcome" {
                view.outcome = serde_json::from_str(&kv.value).ok();
            } else if rest == "sync" {
                view.sync = serde_json::from_str(&kv.value).ok();
            } else if rest == "seen" {
                view.seen = serde_json::from_str(&kv.value).unwrap_or_default();
            } else if rest == "pause" {
                view.paused = true;
            } else if let Some(name) = rest.strip_prefix("down/") {
                view.down.insert(name.to_string());
            } else if let Some(name) = rest.strip_prefix(&format!("{}/", Reinit::KIND)) {
                if let Ok(r) = serde_json::from_str(&kv.value) {
                    view.reinit.insert(name.to_string(), (r, kv.mod_revision));
                }
            } else if rest == "config" {
                let doc = serde_json::from_str(&kv.value).map_err(|e| e.to_string());
                view.config = Some((doc, kv.mod_revision));
            } else if let Some(name) = rest.strip_prefix(&format!("{}/", Restart::KIND)) {
                if let Ok(r) = serde_json::from_str(&kv.value) {
                    view.restart.insert(name.to_string(), (r, kv.mod_revision));
                }
            }
        }
        view.members.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(view)
    }

    pub fn publish(&self, me: &MemberRecord, lease: i64) -> Result<(), etcd::Error> {
        let value = serde_json::to_string(me).expect("serializable");
        self.etcd
            .put(&self.member_key(&me.name), &value, lease)
            .map(|_| ())
    }

    /// Takes or renews the leader key on `expected` (None: only if absent); the new
    /// revision, or None when someone else changed it first.
    pub fn write_leader(
        &self,
        me: &str,
        lease: i64,
        expected: Option<i64>,
    ) -> Result<Option<i64>, etcd::Error> {
        self.etcd.put_if(&self.leader_key(), me, lease, expected)
    }

    /// `write_leader` given `budget` rather than the client's per-call timeout.
    pub fn write_leader_within(
        &self,
        me: &str,
        lease: i64,
        expected: Option<i64>,
        budget: Duration,
    ) -> Result<Option<i64>, etcd::Error> {
        self.etcd
            .put_if_within(&self.leader_key(), me, lease, expected, budget)
    }

    /// Gives the key up (a fenced or demoted leader), only if it is still ours.
    pub fn release_leader(&self, revision: i64) -> Result<bool, etcd::Error> {
        self.etcd.delete_if(&self.leader_key(), revision)
    }

    fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.prefix)
    }

    /// Files a request unless one is pending; false when one is.
    pub fn file_request(&self, r: &Request) -> Result<bool, etcd::Error> {
        let value = serde_json::to_string(r).expect("serializable");
        Ok(self
            .etcd
            .put_if(&self.key("request"), &value, 0, None)?
            .is_some())
    }

    /// Replaces the request at `revision` (the leader marking its handover).
    pub fn update_request(&self, r: &Request, revision: i64) -> Result<bool, etcd::Error> {
        let value = serde_json::to_string(r).expect("serializable");
        Ok(self
            .etcd
            .put_if(&self.key("request"), &value, 0, Some(revision))?
            .is_some())
    }

    /// Closes the request at `revision` and records its outcome.
    pub fn end_request(&self, revision: i64, outcome: &Outcome) -> Result<bool, etcd::Error> {
        if !self.etcd.delete_if(&self.key("request"), revision)? {
            return Ok(false);
        }
        let value = serde_json::to_string(outcome).expect("serializable");
        self.etcd.put(&self.key("outcome"), &value, 0)?;
        Ok(true)
    }

    pub fn write_sync(&self, s: &SyncState) -> Result<(), etcd::Error> {
        let value = serde_json::to_string(s).expect("serializable");
        self.etcd.put(&self.key("sync"), &value, 0).map(|_| ())
    }

    pub fn write_seen(&self, seen: &BTreeMap<String, u64>) -> Result<(), etcd::Error> {
        let value = serde_json::to_string(seen).expect("serializable");
        self.etcd.put(&self.key("seen"), &value, 0).map(|_| ())
    }

    pub fn set_paused(&self, paused: bool, by: &str) -> Result<(), etcd::Error> {
        if paused {
            self.etcd.put(&self.key("pause"), by, 0).map(|_| ())
        } else {
            self.etcd.delete(&self.key("pause"))
        }
    }

    /// Maintenance on or off for `node` (not bound to any lease: it outlives every agent).
    pub fn set_down(&self, node: &str, down: bool, by: &str) -> Result<(), etcd::Error> {
        let key = self.key(&format!("down/{node}"));
        if down {
            self.etcd.put(&key, by, 0).map(|_| ())
        } else {
            self.etcd.delete(&key)
        }
    }

    /// Files `r` at `<kind>/<node>` (`Reinit::KIND`, `Restart::KIND`: a request only that
    /// node's agent carries out) unless one is pending there; false when one is.
    pub fn file_node_request<T: Serialize>(
        &self,
        kind: &str,
        node: &str,
        r: &T,
    ) -> Result<bool, etcd::Error> {
        let value = serde_json::to_string(r).expect("serializable");
        Ok(self
            .etcd
            .put_if(&self.key(&format!("{kind}/{node}")), &value, 0, None)?
            .is_some())
    }

    /// Deletes `<kind>/<node>` at `revision` (its agent carried it out).
    pub fn end_node_request(
        &self,
        kind: &str,
        node: &str,
        revision: i64,
    ) -> Result<bool, etcd::Error> {
        self.etcd
            .delete_if(&self.key(&format!("{kind}/{node}")), revision)
    }

    /// Writes the cluster-wide configuration if it is still at `expected` (None: only if there
    /// is none); its new revision, or None when it changed meanwhile.
    pub fn write_config(
        &self,
        doc: &ClusterConfig,
        expected: Option<i64>,
    ) -> Result<Option<i64>, etcd::Error> {
        let value = serde_json::to_string(doc).expect("serializable");
        self.etcd.put_if(&self.key("config"), &value, 0, expected)
    }

    pub fn record_history(&self, view: &View, entry: HistoryEntry) -> Result<(), etcd::Error> {
        let mut history = view.history.clone();
        history.push(entry);
        // The last 100 changes are plenty for people and tools.
        let skip = history.len().saturating_sub(100);
        let value = serde_json::to_string(&history[skip..]).expect("serializable");
        self.etcd
            .put(&format!("{}history", self.prefix), &value, 0)
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standby_minimums() {
        let mut leader = MemberRecord {
            name: "db1".into(),
            conn: "db1:5432".into(),
            api: "db1:8008".into(),
            role: "primary".into(),
            state: "running".into(),
            timeline: 1,
            lsn: 0,
            replayed_lsn: 0,
            upstream: None,
            nofailover: false,
            priority: 1,
            settings: BTreeMap::new(),
            warnings: vec![],
            down: false,
            ..Default::default()
        };
        leader.settings.insert("max_connections".into(), 200);
        leader.settings.insert("max_wal_senders".into(), 10);
        let mut mine = BTreeMap::new();
        mine.insert("max_connections".to_string(), 100);
        mine.insert("max_wal_senders".to_string(), 10);
        assert_eq!(
            settings_below(&mine, &leader),
            ["max_connections 100 < 200 on db1"]
        );
        mine.insert("max_connections".to_string(), 200);
        assert!(settings_below(&mine, &leader).is_empty());
        // A record from an older agent without settings compares as nothing.
        leader.settings.clear();
        assert!(settings_below(&mine, &leader).is_empty());
    }
}
