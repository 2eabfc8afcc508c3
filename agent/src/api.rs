//! The HTTP API for load balancers and people: `/primary`, `/replica[?lag=bytes]`,
//! `/health`, `/status`, `/cluster` (GET or HEAD). It serves the agent's latest snapshot and
//! never talks to PostgreSQL or etcd itself, so a slow database cannot stall a health check;
//! `/primary` re-checks the leadership deadline at request time, so a hung agent stops being
//! "primary" to HAProxy when its leadership runs out, not when it wakes up.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use crate::dcs::MemberRecord;
use crate::guard::monotonic_ms;

/// What the agent last knew, shared with the API threads.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub me: Option<MemberRecord>,
    pub leader: Option<String>,
    pub members: Vec<MemberRecord>,
    /// Monotonic ms until which this node may act as primary (last write + retry_timeout).
    pub writable_until: u64,
    pub etcd_ok: bool,
    pub last_action: String,
}

pub type Shared = Arc<Mutex<Snapshot>>;

pub fn serve(listen: &str, shared: Shared) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen)?;
    std::thread::Builder::new()
        .name("api".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                let shared = shared.clone();
                // Health checks are tiny and short: a thread each keeps one slow client
                // from delaying HAProxy's next check.
                let _ = std::thread::Builder::new()
                    .name("api-conn".into())
                    .spawn(move || handle(stream, &shared));
            }
        })?;
    Ok(())
}

fn handle(mut s: TcpStream, shared: &Shared) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
    let mut buf = [0u8; 2048];
    let mut n = 0;
    while n < buf.len() {
        match s.read(&mut buf[n..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => {
                n += k;
                if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
        }
    }
    let head = String::from_utf8_lossy(&buf[..n]);
    let mut parts = head.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
    let snap = shared.lock().map(|g| g.clone()).unwrap_or_default();
    let (status, body) = route(method, target, &snap, monotonic_ms());
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let text = format!("{body}\n");
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        text.len()
    );
    if method != "HEAD" {
        out.push_str(&text);
    }
    let _ = s.write_all(out.as_bytes());
}

/// (status, JSON body) for a request; pure, so the rules are unit-tested.
pub fn route(method: &str, target: &str, snap: &Snapshot, now: u64) -> (u16, Value) {
    if method != "GET" && method != "HEAD" {
        return (405, json!({"error": "only GET and HEAD"}));
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let me = snap.me.as_ref();
    let status_body = || me.map(|m| json!(m)).unwrap_or(json!({"state": "starting"}));
    let ok = |yes: bool| if yes { 200 } else { 503 };
    match path {
        "/primary" | "/master" | "/read-write" => {
            let yes = me.is_some_and(|m| m.role == "primary")
                && snap.leader.as_deref() == me.map(|m| m.name.as_str())
                && now < snap.writable_until;
            (ok(yes), status_body())
        }
        "/replica" | "/read-only" => {
            let max_lag = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("lag="))
                .and_then(|v| v.parse::<u64>().ok());
            let leader_lsn = snap
                .leader
                .as_ref()
                .and_then(|l| snap.members.iter().find(|m| &m.name == l))
                .map(|m| m.lsn);
            let yes = me.is_some_and(|m| {
                m.role == "replica"
                    && m.state == "streaming"
                    && match (max_lag, leader_lsn) {
                        (Some(max), Some(l)) => l.saturating_sub(m.replayed_lsn) <= max,
                        (Some(_), None) => false,
                        (None, _) => true,
                    }
            });
            (ok(yes), status_body())
        }
        "/health" => (ok(me.is_some_and(|m| m.role != "stopped")), status_body()),
        "/status" | "/" => (200, status_body()),
        "/cluster" => (200, cluster_json(snap)),
        _ => (404, json!({"error": format!("no such endpoint: {path}")})),
    }
}

pub fn cluster_json(snap: &Snapshot) -> Value {
    json!({"leader": snap.leader, "members": snap.members})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(name: &str, role: &str, state: &str, lsn: u64) -> MemberRecord {
        MemberRecord {
            name: name.into(),
            conn: format!("{name}:5432"),
            api: format!("{name}:8008"),
            role: role.into(),
            state: state.into(),
            timeline: 1,
            lsn,
            replayed_lsn: lsn,
            upstream: None,
            nofailover: false,
            priority: 1,
            settings: Default::default(),
            warnings: vec![],
        }
    }

    #[test]
    fn endpoints() {
        let primary = Snapshot {
            me: Some(rec("db1", "primary", "running", 100)),
            leader: Some("db1".into()),
            members: vec![
                rec("db1", "primary", "running", 100),
                rec("db2", "replica", "streaming", 90),
            ],
            writable_until: 1_000,
            etcd_ok: true,
            last_action: String::new(),
        };
        assert_eq!(route("GET", "/primary", &primary, 999).0, 200);
        assert_eq!(route("HEAD", "/primary", &primary, 999).0, 200);
        // The deadline passes while the agent is stuck: no longer primary for HAProxy.
        assert_eq!(route("GET", "/primary", &primary, 1_000).0, 503);
        assert_eq!(route("GET", "/replica", &primary, 0).0, 503);
        assert_eq!(route("POST", "/primary", &primary, 0).0, 405);
        assert_eq!(route("GET", "/nope", &primary, 0).0, 404);

        let replica = Snapshot {
            me: Some(rec("db2", "replica", "streaming", 90)),
            ..primary.clone()
        };
        assert_eq!(route("GET", "/primary", &replica, 0).0, 503);
        assert_eq!(route("GET", "/replica", &replica, 0).0, 200);
        assert_eq!(route("GET", "/replica?lag=10", &replica, 0).0, 200);
        assert_eq!(route("GET", "/replica?lag=9", &replica, 0).0, 503);
        assert_eq!(route("GET", "/health", &replica, 0).0, 200);
        let body = route("GET", "/cluster", &replica, 0).1;
        assert_eq!(body["leader"], "db1");
        assert_eq!(body["members"].as_array().unwrap().len(), 2);

        let stopped = Snapshot {
            me: Some(rec("db2", "stopped", "stopped", 0)),
            ..primary
        };
        assert_eq!(route("GET", "/health", &stopped, 0).0, 503);
        assert_eq!(route("GET", "/replica", &stopped, 0).0, 503);
    }
}
