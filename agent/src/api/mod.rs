//! The HTTP API for load balancers and people: `/primary`, `/replica[?lag=bytes]`,
//! `/health`, `/status`, `/cluster`, `/metrics`, `/position` (GET or HEAD). It serves the agent's latest
//! snapshot and never talks to PostgreSQL or etcd for them, so a slow database cannot stall
//! a health check; `/primary` re-checks the leadership deadline at request time, so a hung
//! agent stops being "primary" to HAProxy when its leadership runs out, not when it wakes up.
//! Mutating requests (POST, see `control`) are authenticated before their body is read.
//! The transport (hyper on one thread, a connection cap that idle clients cannot use to
//! lock health checks out, deadlines) is `server`, `slots` and `respond`.

pub mod control;
mod metrics;
mod respond;
mod server;
pub mod slots;

use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

use crate::config::Config;
use crate::dcs::MemberRecord;
use crate::records::Request;

pub use control::Control;
pub use metrics::Counters;
pub use respond::MAX_BODY;
pub use server::{Handle, MAX_HEAD};

/// What the agent last knew, shared with the API threads.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub me: Option<MemberRecord>,
    /// When the agent observed PostgreSQL for `me` (monotonic ms; see `quorum`).
    pub observed_at: u64,
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
    /// The synchronous standbys the sync record names (the first is `sync_standby`).
    pub sync_standbys: Vec<String>,
    /// Quorum commit: the leader's voters and how many of them hold every commit.
    pub quorum: Option<(Vec<String>, usize)>,
    pub request: Option<Request>,
    pub counters: Counters,
    /// Failsafe mode is active: on the leader, every member confirmed it without etcd; on a
    /// member, a leader called within ttl.
    pub failsafe: bool,
}

pub type Shared = Arc<Mutex<Snapshot>>;

/// Starts the API on `api.listen` (see `server`); errors (address in use, unreadable
/// certificates) are reported here, before the agent goes on.
pub fn serve(cfg: &Config, shared: Shared) -> Result<(), String> {
    start(cfg, shared).map(|_| ())
}

/// `serve`, returning where the server listens and its counters (for tests and tools).
pub fn start(cfg: &Config, shared: Shared) -> Result<Handle, String> {
    let addr: std::net::SocketAddr = cfg
        .api
        .listen
        .parse()
        .map_err(|_| format!("api.listen {:?} is not an address:port", cfg.api.listen))?;
    let tls = match (&cfg.api.tls_cert, &cfg.api.tls_key) {
        (Some(c), Some(k)) => Some(crate::tls::reloadable_server(
            c,
            k,
            cfg.api.tls_client_ca.as_deref(),
        )?),
        _ => None,
    };
    let control = Control::new(cfg)?;
    server::start(
        addr,
        server::Settings {
            max_connections: cfg.api.max_connections,
            request_timeout: cfg.api.request_timeout(),
            tls,
        },
        shared,
        control,
    )
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
                        && !m.noloadbalance
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
        crate::quorum::PATH => (200, crate::quorum::answer(snap, now)),
        _ => (404, json!({"error": format!("no such endpoint: {path}")})),
    }
}

pub fn cluster_json(snap: &Snapshot) -> Value {
    json!({
        "leader": snap.leader,
        "members": snap.members,
        "paused": snap.paused,
        "sync_standby": snap.sync_standbys.first(),
        "sync_standbys": snap.sync_standbys,
        "quorum": snap.quorum.as_ref().map(|(_, q)| q),
        "quorum_voters": snap.quorum.as_ref().map(|(v, _)| v),
        "request": snap.request,
        "failsafe": snap.failsafe,
    })
}

impl Handle {
    /// What this node's API heard of a leader in failsafe mode.
    pub fn failsafe_seen(&self) -> Arc<crate::failsafe::Seen> {
        self.control.failsafe.clone()
    }

    /// SIGHUP: the API's certificate and key and the etcd client of its requests, read
    /// again from `cfg` (same listener, same client CA). Each part that fails keeps what it
    /// had; the reasons are returned.
    pub fn reload(&self, cfg: &Config) -> Vec<String> {
        let mut failed = Vec::new();
        if let (Some(identity), Some(cert), Some(key)) =
            (&self.identity, &cfg.api.tls_cert, &cfg.api.tls_key)
        {
            if let Err(e) = identity.reload(cert, key) {
                failed.push(format!("API certificate not reloaded: {e}"));
            }
        }
        if let Err(e) = self.control.reload_etcd(cfg) {
            failed.push(format!("etcd client of API requests not reloaded: {e}"));
        }
        failed
    }
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
            ..Default::default()
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
        // noloadbalance: streaming, healthy, and still out of the read-only pool.
        let mut reporting = replica.clone();
        reporting.me.as_mut().unwrap().noloadbalance = true;
        assert_eq!(route("GET", "/replica", &reporting, 0).0, 503);
        assert_eq!(route("GET", "/health", &reporting, 0).0, 200);
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

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn any_request_gets_a_known_status(method in "[A-Z]{0,8}", target in "\\PC{0,64}", now in any::<u64>()) {
                let snap = Snapshot {
                    me: Some(rec("db2", "replica", "streaming", 90)),
                    leader: Some("db1".into()),
                    members: vec![rec("db1", "primary", "running", 100)],
                    ..Snapshot::default()
                };
                let (status, _) = route(&method, &target, &snap, now);
                prop_assert!([200, 404, 405, 503].contains(&status));
                if method != "GET" && method != "HEAD" {
                    prop_assert_eq!(status, 405);
                }
            }

            #[test]
            fn replica_lag_is_compared_with_the_leader(lag in any::<u64>(), behind in 0u64..1000) {
                let snap = Snapshot {
                    me: Some(rec("db2", "replica", "streaming", 1000 - behind)),
                    leader: Some("db1".into()),
                    members: vec![rec("db1", "primary", "running", 1000)],
                    ..Snapshot::default()
                };
                let (status, _) = route("GET", &format!("/replica?lag={lag}"), &snap, 0);
                prop_assert_eq!(status == 200, behind <= lag);
            }
        }
    }
}
