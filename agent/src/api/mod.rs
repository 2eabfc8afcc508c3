//! The HTTP API for load balancers and people: `/primary`, `/replica[?lag=bytes]`,
//! `/health`, `/status`, `/cluster`, `/metrics` (GET or HEAD). It serves the agent's latest
//! snapshot and never talks to PostgreSQL or etcd for them, so a slow database cannot stall
//! a health check; `/primary` re-checks the leadership deadline at request time, so a hung
//! agent stops being "primary" to HAProxy when its leadership runs out, not when it wakes up.
//! Mutating requests (POST, see `control`) are authenticated before their body is read.

pub mod control;
mod metrics;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use crate::config::Config;
use crate::dcs::MemberRecord;
use crate::guard::monotonic_ms;
use crate::records::Request;

pub use control::Control;
pub use metrics::Counters;

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
    /// This node is in maintenance: out of rotation for HAProxy.
    pub down: bool,
    pub paused: bool,
    /// The leader's key is being renewed (as this node times it).
    pub leader_alive: bool,
    pub sync_standby: Option<String>,
    pub request: Option<Request>,
    pub counters: Counters,
}

pub type Shared = Arc<Mutex<Snapshot>>;

pub fn serve(cfg: &Config, shared: Shared) -> Result<(), String> {
    let listener = TcpListener::bind(&cfg.api.listen)
        .map_err(|e| format!("cannot listen on {}: {e}", cfg.api.listen))?;
    let tls = match (&cfg.api.tls_cert, &cfg.api.tls_key) {
        (Some(c), Some(k)) => Some(crate::tls::server(c, k, cfg.api.tls_client_ca.as_deref())?),
        _ => None,
    };
    let control = Arc::new(Control::new(cfg)?);
    std::thread::Builder::new()
        .name("api".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                let shared = shared.clone();
                let control = control.clone();
                let tls = tls.clone();
                // Health checks are tiny and short: a thread each keeps one slow client
                // from delaying HAProxy's next check.
                let _ = std::thread::Builder::new()
                    .name("api-conn".into())
                    .spawn(move || {
                        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                        let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
                        match tls {
                            None => handle(stream, false, &shared, &control),
                            Some(config) => {
                                let Ok(conn) = rustls::ServerConnection::new(config) else {
                                    return;
                                };
                                let mut t = rustls::StreamOwned::new(conn, stream);
                                // Finish the handshake first: whether the client proved a
                                // certificate is known only then.
                                while t.conn.is_handshaking() {
                                    if t.conn.complete_io(&mut t.sock).is_err() {
                                        return;
                                    }
                                }
                                let verified = t.conn.peer_certificates().is_some();
                                handle(t, verified, &shared, &control);
                            }
                        }
                    });
            }
        })
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// A request's head: method, target and the headers we use.
pub struct Head {
    pub method: String,
    pub target: String,
    pub authorization: Option<String>,
    pub content_length: usize,
}

fn parse_head(text: &str) -> Head {
    let mut lines = text.split("\r\n");
    let mut first = lines.next().unwrap_or("").split_whitespace();
    let (method, target) = (
        first.next().unwrap_or("").to_string(),
        first.next().unwrap_or("/").to_string(),
    );
    let mut head = Head {
        method,
        target,
        authorization: None,
        content_length: 0,
    };
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        match k.trim().to_ascii_lowercase().as_str() {
            "authorization" => head.authorization = Some(v.trim().to_string()),
            "content-length" => head.content_length = v.trim().parse().unwrap_or(usize::MAX),
            _ => {}
        }
    }
    head
}

fn handle<S: Read + Write>(mut s: S, client_cert: bool, shared: &Shared, control: &Control) {
    let mut buf = vec![0u8; 8192];
    let mut n = 0;
    let mut end = None;
    while n < buf.len() {
        match s.read(&mut buf[n..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => {
                n += k;
                if let Some(p) = buf[..n].windows(4).position(|w| w == b"\r\n\r\n") {
                    end = Some(p);
                    break;
                }
            }
        }
    }
    let Some(end) = end else {
        return respond(
            &mut s,
            "GET",
            400,
            json!({"error": "incomplete request head"}),
            "",
        );
    };
    let head = parse_head(&String::from_utf8_lossy(&buf[..end]));
    let snap = shared.lock().map(|g| g.clone()).unwrap_or_default();
    if head.method == "POST" {
        // Credentials first: an unauthenticated client never gets its body read.
        if let Err((status, why)) = control.authorize(client_cert, head.authorization.as_deref()) {
            let extra = if status == 401 {
                "WWW-Authenticate: Bearer realm=\"pgshift\"\r\n"
            } else {
                ""
            };
            return respond(&mut s, "POST", status, json!({"error": why}), extra);
        }
        if head.content_length > 4096 {
            return respond(&mut s, "POST", 413, json!({"error": "body too large"}), "");
        }
        let mut body = buf[end + 4..n].to_vec();
        while body.len() < head.content_length {
            let mut chunk = [0u8; 1024];
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(k) => body.extend_from_slice(&chunk[..k]),
            }
        }
        body.truncate(head.content_length);
        let (status, answer) = control.handle(&head.target, &body, &snap);
        return respond(&mut s, "POST", status, answer, "");
    }
    if head.target.split('?').next() == Some("/metrics") {
        let text = metrics::render(&snap);
        return respond_text(&mut s, &head.method, 200, &text);
    }
    let (status, body) = route(&head.method, &head.target, &snap, monotonic_ms());
    respond(&mut s, &head.method, status, body, "");
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Payload Too Large",
        500 => "Internal Server Error",
        _ => "Service Unavailable",
    }
}

fn respond<S: Write>(s: &mut S, method: &str, status: u16, body: Value, extra: &str) {
    let text = format!("{body}\n");
    respond_raw(s, method, status, "application/json", &text, extra);
}

fn respond_text<S: Write>(s: &mut S, method: &str, status: u16, text: &str) {
    respond_raw(s, method, status, "text/plain; version=0.0.4", text, "");
}

fn respond_raw<S: Write>(
    s: &mut S,
    method: &str,
    status: u16,
    content_type: &str,
    text: &str,
    extra: &str,
) {
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
        reason(status),
        text.len()
    );
    if method != "HEAD" {
        out.push_str(text);
    }
    let _ = s.write_all(out.as_bytes());
    let _ = s.flush();
}

/// (status, JSON body) for a request; pure, so the rules are unit-tested.
pub fn route(method: &str, target: &str, snap: &Snapshot, now: u64) -> (u16, Value) {
    if method != "GET" && method != "HEAD" {
        return (
            405,
            json!({"error": "only GET and HEAD (POST for requests)"}),
        );
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let me = snap.me.as_ref();
    let status_body = || me.map(|m| json!(m)).unwrap_or(json!({"state": "starting"}));
    let ok = |yes: bool| if yes { 200 } else { 503 };
    match path {
        // A node in maintenance answers 503 to both: HAProxy drains it.
        "/primary" | "/master" | "/read-write" => {
            let yes = !snap.down
                && me.is_some_and(|m| m.role == "primary")
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
            let yes = !snap.down
                && me.is_some_and(|m| {
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
    json!({
        "leader": snap.leader,
        "members": snap.members,
        "paused": snap.paused,
        "sync_standby": snap.sync_standby,
        "request": snap.request,
    })
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
            down: false,
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
            leader_alive: true,
            ..Snapshot::default()
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
        // Maintenance: out of rotation for both checks.
        let down = Snapshot {
            down: true,
            ..replica.clone()
        };
        assert_eq!(route("GET", "/replica", &down, 0).0, 503);
        let down_primary = Snapshot {
            down: true,
            ..primary.clone()
        };
        assert_eq!(route("GET", "/primary", &down_primary, 999).0, 503);
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
