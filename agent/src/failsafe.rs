//! Failsafe mode: etcd unreachable while every database host is healthy (etcd members
//! crashed, a disk full, a botched etcd upgrade) should not stop a cluster that needs no
//! election. The leader that can no longer renew its key asks every member it last saw in
//! etcd, over their authenticated API (`POST /failsafe`), whether they still take it for
//! the leader; while all of them say yes it keeps PostgreSQL writable, and it fences as soon
//! as one does not answer or says no.
//!
//! Why no second writer can appear: a member that says yes remembers the call for `ttl` by
//! its own clock and takes no leadership meanwhile; the leader counts each round from when it
//! started it and stays writable only `retry_timeout` (< ttl) past that. A member that can
//! still read etcd and sees another leader says no. Standbys never promote without etcd.

use std::sync::Mutex;
use std::time::Duration;

use serde_json::json;

use crate::api::Snapshot;
use crate::decide::Millis;
use crate::peers::Peers;

pub const PATH: &str = "/failsafe";

/// On a member: the last leader that called in failsafe mode, and when (monotonic ms).
#[derive(Debug, Default)]
pub struct Seen {
    last: Mutex<Option<(String, Millis)>>,
}

impl Seen {
    pub fn record(&self, leader: &str, now: Millis) {
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some((leader.to_string(), now));
    }

    /// The leader that called within `ttl` of `now`.
    pub fn leader_within(&self, now: Millis, ttl: Millis) -> Option<String> {
        self.last
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .filter(|(_, at)| now.saturating_sub(*at) < ttl)
            .map(|(l, _)| l.clone())
    }
}

/// A member's answer to `caller`'s failsafe call: whether it takes `caller` for the leader,
/// and if not, why.
pub fn answer(me: &str, caller: &str, snap: &Snapshot) -> Result<(), String> {
    if caller == me {
        return Err("a node does not vouch for itself".into());
    }
    if let Some(m) = &snap.me {
        if m.role == "primary" {
            return Err(format!("{me} runs as a primary itself"));
        }
    }
    match snap.leader.as_deref() {
        Some(l) if l != caller && snap.leader_alive => {
            Err(format!("{l} holds the leader key (etcd answers here)"))
        }
        _ => Ok(()),
    }
}

/// The leader's side: asks every member (name, API host:port); Ok when each said yes
/// within `timeout`.
pub fn round(
    peers: &Peers,
    me: &str,
    members: &[(String, String)],
    timeout: Duration,
) -> Result<(), String> {
    let body = json!({"leader": me});
    let token = peers.token()?;
    for (name, api) in members {
        let (status, doc) = peers.post((name, api), PATH, &body, token.as_deref(), timeout)?;
        if status != 200 || doc["ok"] != json!(true) {
            return Err(format!(
                "{name} says no ({status}): {}",
                doc["why"].as_str().or(doc["error"].as_str()).unwrap_or("")
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dcs::MemberRecord;

    fn snap(role: &str, leader: Option<&str>, alive: bool) -> Snapshot {
        Snapshot {
            me: Some(MemberRecord {
                name: "db2".into(),
                role: role.into(),
                ..Default::default()
            }),
            leader: leader.map(str::to_string),
            leader_alive: alive,
            ..Snapshot::default()
        }
    }

    #[test]
    fn members_vouch_only_for_the_one_leader_they_know() {
        // etcd unreachable here too: the last leader seen, or none, is fine.
        assert_eq!(
            answer("db2", "db1", &snap("replica", Some("db1"), false)),
            Ok(())
        );
        assert_eq!(answer("db2", "db1", &snap("replica", None, false)), Ok(()));
        // etcd answers here and another node renews the key: no.
        let e = answer("db2", "db1", &snap("replica", Some("db3"), true)).unwrap_err();
        assert!(e.contains("db3 holds the leader key"), "{e}");
        // A stale key of another node is no reason to refuse.
        assert_eq!(
            answer("db2", "db1", &snap("replica", Some("db3"), false)),
            Ok(())
        );
        // A member that is a primary itself, or a call from oneself: no.
        assert!(answer("db2", "db1", &snap("primary", Some("db1"), false)).is_err());
        assert!(answer("db2", "db2", &snap("replica", None, false)).is_err());
    }

    #[test]
    fn a_call_is_remembered_for_ttl() {
        let s = Seen::default();
        assert_eq!(s.leader_within(1_000, 3_000), None);
        s.record("db1", 1_000);
        assert_eq!(s.leader_within(3_999, 3_000).as_deref(), Some("db1"));
        assert_eq!(s.leader_within(4_000, 3_000), None);
    }
}
