//! Mutating requests (POST): switchover, failover, down/up, pause/resume, reinit, restart,
//! config. Each is checked
//! against a fresh read of etcd and written there; the agents carry them out. Credentials
//! are a client certificate verified during the TLS handshake (api.tls_client_ca) or the
//! bearer token in api.token_file.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{json, Value};
use subtle::ConstantTimeEq;

use super::Snapshot;
use crate::cluster_config::ClusterConfig;
use crate::config::{Config, RebuildMethod};
use crate::dcs::{Dcs, MemberRecord, View};
use crate::records::{unix_now, Outcome, Reinit, Request, RequestKind, Restart};
use crate::state::NodeState;

pub struct Control {
    dcs: Mutex<Dcs>,
    /// The last leader that called in failsafe mode (the loop reads it).
    pub failsafe: std::sync::Arc<crate::failsafe::Seen>,
    me: String,
    token_file: Option<PathBuf>,
    client_ca: bool,
    /// (synchronous_node_count, strict) in synchronous mode: what a reinit of a synchronous
    /// standby would cost.
    sync: Option<(usize, bool)>,
    /// This node's agent.toml: a cluster-wide configuration must make a valid one over it.
    base: Mutex<Config>,
}

type Answer = (u16, Value);

fn error(status: u16, why: impl Into<String>) -> Answer {
    (status, json!({"error": why.into()}))
}

/// The token, refusing a file others can read (it would be a password lying around).
pub fn read_token(path: &std::path::Path) -> Result<String, String> {
    let meta = fs_err::metadata(path).map_err(|e| e.to_string())?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(format!(
            "{} is accessible to group or others: chmod 600 it",
            path.display()
        ));
    }
    let token = fs_err::read_to_string(path)
        .map_err(|e| e.to_string())?
        .trim()
        .to_string();
    if token.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(token)
}

impl Control {
    /// A new etcd client from `cfg` (SIGHUP: rotated client certificates, other endpoints);
    /// on error the one in use stays.
    pub fn reload_etcd(&self, cfg: &Config) -> Result<(), String> {
        *self.base.lock().unwrap_or_else(|e| e.into_inner()) = cfg.clone();
        let dcs = Dcs::new(cfg.etcd_client(Duration::from_secs(2))?, &cfg.cluster);
        *self.dcs.lock().unwrap_or_else(|e| e.into_inner()) = dcs;
        Ok(())
    }

    pub fn new(cfg: &Config) -> Result<Control, String> {
        Ok(Control {
            dcs: Mutex::new(Dcs::new(
                cfg.etcd_client(Duration::from_secs(2))?,
                &cfg.cluster,
            )),
            failsafe: Default::default(),
            me: cfg.name.clone(),
            token_file: cfg.api.token_file.clone(),
            client_ca: cfg.api.tls_client_ca.is_some(),
            sync: cfg.replication.synchronous_mode.enabled().then_some((
                cfg.replication.synchronous_node_count,
                cfg.replication.synchronous_mode_strict,
            )),
            base: Mutex::new(cfg.clone()),
        })
    }

    /// Ok, or (401 without credentials | 403 with wrong ones or none configured, why).
    pub fn authorize(
        &self,
        client_cert: bool,
        authorization: Option<&str>,
    ) -> Result<(), (u16, String)> {
        if client_cert && self.client_ca {
            return Ok(());
        }
        let Some(path) = &self.token_file else {
            return Err(if self.client_ca {
                (
                    401,
                    "present a client certificate signed by the API's client CA".into(),
                )
            } else {
                (
                    403,
                    "requests that change the cluster are disabled on this node: set api.token_file or api.tls_client_ca"
                        .into(),
                )
            });
        };
        // Read at each request: rotating the token needs no restart.
        let token = read_token(path).map_err(|e| (500, e))?;
        match authorization.and_then(|a| a.strip_prefix("Bearer ")) {
            None => Err((
                401,
                "this request needs credentials: Authorization: Bearer <token> or a client certificate"
                    .into(),
            )),
            Some(t) if bool::from(t.trim().as_bytes().ct_eq(token.as_bytes())) => Ok(()),
            Some(_) => Err((403, "the bearer token is not valid".into())),
        }
    }

    pub fn handle(&self, target: &str, body: &[u8], snap: &Snapshot) -> Answer {
        let args: Value = if body.iter().all(u8::is_ascii_whitespace) {
            json!({})
        } else {
            match serde_json::from_slice(body) {
                Ok(v @ Value::Object(_)) => v,
                _ => return error(400, "the body must be a JSON object"),
            }
        };
        // Failsafe calls come exactly when etcd is unreachable: answered from memory.
        if target == crate::failsafe::PATH {
            let Some(caller) = args["leader"].as_str() else {
                return error(400, "a failsafe call names its leader: {\"leader\": NAME}");
            };
            return match crate::failsafe::answer(&self.me, caller, snap) {
                Ok(()) => {
                    self.failsafe.record(caller, crate::guard::monotonic_ms());
                    (200, json!({"ok": true}))
                }
                Err(why) => (200, json!({"ok": false, "why": why})),
            };
        }
        let dcs = match self.dcs.lock() {
            Ok(d) => d,
            Err(_) => return error(500, "internal lock poisoned"),
        };
        let view = match dcs.read() {
            Ok(v) => v,
            Err(e) => return error(503, format!("{e}: nothing was changed")),
        };
        let node = |key: &str| args[key].as_str().map(str::to_string);
        match target {
            "/switchover" => self.switchover(&dcs, &view, snap, node("to"), args["at"].as_u64()),
            "/switchover/cancel" => cancel(&dcs, &view),
            "/failover" => self.failover(&dcs, &view, snap, node("to")),
            "/down" | "/up" => {
                let n = node("node").unwrap_or_else(|| self.me.clone());
                self.maintenance(&dcs, &view, &n, target == "/down")
            }
            "/reinit" => {
                let from = match args.get("from").filter(|f| !f.is_null()) {
                    None => None,
                    Some(f) => match serde_json::from_value(f.clone()) {
                        Ok(m) => Some(m),
                        Err(_) => return error(400, "from is \"leader\" or \"pgbackrest\""),
                    },
                };
                match node("node") {
                    Some(n) => {
                        let force = args["force"].as_bool() == Some(true);
                        self.reinit(&dcs, &view, &n, from, force)
                    }
                    None => error(400, "reinit names the node to rebuild: {\"node\": NAME}"),
                }
            }
            "/config" => self.config(&dcs, &view, &args),
            "/restart" => match node("node") {
                Some(n) => self.restart(&dcs, &view, &n, args["at"].as_u64()),
                None => error(400, "restart names the node: {\"node\": NAME}"),
            },
            "/pause" | "/resume" => {
                let paused = target == "/pause";
                match dcs.set_paused(paused, &self.me) {
                    Ok(()) => (200, json!({"paused": paused})),
                    Err(e) => error(503, e.to_string()),
                }
            }
            _ => error(404, format!("no such request: POST {target}")),
        }
    }

    fn switchover(
        &self,
        dcs: &Dcs,
        v: &View,
        snap: &Snapshot,
        to: Option<String>,
        at: Option<u64>,
    ) -> Answer {
        let Some(leader) = v.leader.as_ref().map(|l| l.name.clone()) else {
            return error(
                409,
                "there is no leader to switch over from: use failover --to NODE",
            );
        };
        if snap.leader.as_deref() == Some(leader.as_str()) && !snap.leader_alive {
            return error(
                409,
                format!("the leader {leader} is not renewing its key: use failover --to NODE"),
            );
        }
        if let Some(to) = &to {
            if let Err(e) = candidate(v, to) {
                return error(409, e);
            }
            if *to == leader {
                return error(409, format!("{to} is already the leader"));
            }
        }
        let now = unix_now();
        if at.is_some_and(|t| t + 1 < now) {
            return error(400, "the switchover time is in the past");
        }
        let r = Request {
            kind: RequestKind::Switchover,
            from: Some(leader),
            to,
            at,
            requested_at: now,
            handed_over: None,
        };
        file(dcs, v, r)
    }

    fn failover(&self, dcs: &Dcs, v: &View, snap: &Snapshot, to: Option<String>) -> Answer {
        let Some(to) = to else {
            return error(400, "failover needs the node to promote: --to NODE");
        };
        if let Some(l) = &v.leader {
            if snap.leader_alive && snap.leader.as_deref() == Some(l.name.as_str()) {
                return error(
                    409,
                    format!("{} is a healthy leader: use switchover", l.name),
                );
            }
        }
        if let Err(e) = candidate(v, &to) {
            return error(409, e);
        }
        let r = Request {
            kind: RequestKind::Failover,
            from: None,
            to: Some(to),
            at: None,
            requested_at: unix_now(),
            handed_over: None,
        };
        file(dcs, v, r)
    }

    fn maintenance(&self, dcs: &Dcs, v: &View, node: &str, down: bool) -> Answer {
        let known = node == self.me
            || v.member(node).is_some()
            || v.down.contains(node)
            || v.history.iter().any(|h| h.leader == node);
        if !known {
            let names: Vec<&str> = v.members.iter().map(|m| m.name.as_str()).collect();
            return error(
                400,
                format!("no member named {node} (members: {})", names.join(", ")),
            );
        }
        match dcs.set_down(node, down, &self.me) {
            Ok(()) => (
                200,
                json!({
                    "node": node,
                    "down": down,
                    "leader": v.leader.as_ref().is_some_and(|l| l.name == node),
                }),
            ),
            Err(e) => error(503, e.to_string()),
        }
    }
}

impl Control {
    /// Asks `node`'s agent to rebuild its data directory (see `records::Reinit`). Refused
    /// on the leader, on a node in maintenance or without a running agent, and (unless
    /// `force`) on a synchronous standby whose absence would block writes in strict mode.
    fn reinit(
        &self,
        dcs: &Dcs,
        v: &View,
        node: &str,
        from: Option<RebuildMethod>,
        force: bool,
    ) -> Answer {
        let m = match running_member(v, node, "reinit") {
            Ok(m) => m,
            Err(answer) => return answer,
        };
        if v.leader.as_ref().is_some_and(|l| l.name == node) {
            return error(
                409,
                format!(
                    "{node} is the leader: switch over first (pgshift switchover), then reinit it"
                ),
            );
        }
        if v.down.contains(node) {
            return error(
                409,
                format!("{node} is down (maintenance), which holds rebuilds back: pgshift up {node} first"),
            );
        }
        if matches!(
            m.state,
            NodeState::Rejoining | NodeState::Rewinding | NodeState::Rebuilding
        ) {
            return error(409, format!("{node} is already {}", m.state));
        }
        if from == Some(RebuildMethod::Pgbackrest) && !m.pgbackrest {
            return error(
                409,
                format!("{node}'s agent.toml names no [rebuild] stanza: it cannot restore from the pgBackRest repository"),
            );
        }
        if let (Some((k, true)), false) = (self.sync, force) {
            if let Some(why) = blocks_writes(v, node, k) {
                return error(409, format!("{why}; --force to do it anyway"));
            }
        }
        let r = Reinit {
            requested_at: unix_now(),
            by: self.me.clone(),
            from,
        };
        match dcs.file_node_request(Reinit::KIND, node, &r) {
            Ok(true) => (
                202,
                json!({"node": node, "reinit": r, "rebuilds": m.rebuilds}),
            ),
            Ok(false) => error(409, format!("a reinit of {node} is already pending")),
            Err(e) => error(503, e.to_string()),
        }
    }
}

impl Control {
    /// Writes the cluster-wide configuration `{"config": {...}, "revision": N}` if it is valid
    /// over this node's agent.toml and still at revision N (null: there was none).
    fn config(&self, dcs: &Dcs, v: &View, args: &Value) -> Answer {
        let doc: ClusterConfig = match serde_json::from_value(args["config"].clone()) {
            Ok(d) => d,
            Err(e) => return error(400, format!("config: {e}")),
        };
        let base = self.base.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Err(e) = doc.over(&base) {
            return error(400, format!("{e}: nothing was written"));
        }
        let expected = args["revision"].as_i64();
        let now = v.config.as_ref().map(|(_, r)| *r);
        if expected != now {
            return error(
                409,
                format!(
                    "the configuration changed since {} (now {}): nothing was written; read it again",
                    expected.map_or("none".into(), |r| format!("revision {r}")),
                    now.map_or("none".into(), |r| format!("revision {r}"))
                ),
            );
        }
        match dcs.write_config(&doc, expected) {
            Ok(Some(rev)) => (200, json!({"revision": rev, "config": doc})),
            Ok(None) => error(
                409,
                "the configuration changed at the same moment: nothing was written; read it again",
            ),
            Err(e) => error(503, e.to_string()),
        }
    }

    /// Asks `node`'s agent to restart PostgreSQL (see `records::Restart`); a leader needs a
    /// standby to hand over to.
    fn restart(&self, dcs: &Dcs, v: &View, node: &str, at: Option<u64>) -> Answer {
        if let Err(answer) = running_member(v, node, "restart") {
            return answer;
        }
        let now = unix_now();
        if at.is_some_and(|t| t + 1 < now) {
            return error(400, "the restart time is in the past");
        }
        let leader = v.leader.as_ref().is_some_and(|l| l.name == node);
        if leader {
            let standby = v.members.iter().any(|m| {
                m.name != node && m.state == NodeState::Streaming && candidate(v, &m.name).is_ok()
            });
            if !standby {
                return error(
                    409,
                    format!("{node} leads and no healthy standby could take over: a leader restarts by a switchover, never in place"),
                );
            }
        }
        let r = Restart {
            requested_at: now,
            by: self.me.clone(),
            at,
        };
        match dcs.file_node_request(Restart::KIND, node, &r) {
            Ok(true) => (202, json!({"node": node, "restart": r, "leader": leader})),
            Ok(false) => error(409, format!("a restart of {node} is already pending")),
            Err(e) => error(503, e.to_string()),
        }
    }
}

/// `node`'s member record, or the refusal of a request (`what`) only its running agent can
/// carry out.
fn running_member<'a>(v: &'a View, node: &str, what: &str) -> Result<&'a MemberRecord, Answer> {
    v.member(node).ok_or_else(|| {
        let names: Vec<&str> = v.members.iter().map(|m| m.name.as_str()).collect();
        error(
            409,
            format!(
                "no running agent on {node} (members: {}): its own agent carries a {what} out",
                names.join(", ")
            ),
        )
    })
}

/// Why rebuilding `node` would block writes in strict synchronous mode with `k` synchronous
/// standbys: it is one of them and fewer than `k` other healthy standbys could stand in.
fn blocks_writes(v: &View, node: &str, k: usize) -> Option<String> {
    let leader = v.leader.as_ref()?.name.as_str();
    let sync = v.leader_sync()?;
    if !sync.names().contains(&node) && !sync.voters.iter().any(|n| n == node) {
        return None;
    }
    let others = v
        .members
        .iter()
        .filter(|m| m.name != node && v.can_be_synchronous(m, leader))
        .count();
    (others < k).then(|| {
        format!(
            "{node} is a synchronous standby and synchronous_mode_strict is on: with {others} other healthy standby(s) for synchronous_node_count = {k}, writes on {leader} would block until its rebuild ends"
        )
    })
}

/// Whether `name` can be promoted: a replica, not in maintenance, not nofailover.
fn candidate(v: &View, name: &str) -> Result<(), String> {
    let m = v.member(name).ok_or_else(|| {
        let names: Vec<&str> = v.members.iter().map(|m| m.name.as_str()).collect();
        format!(
            "no running member named {name} (members: {})",
            names.join(", ")
        )
    })?;
    if v.down.contains(name) {
        return Err(format!(
            "{name} is down (maintenance): pgshift up {name} first"
        ));
    }
    if m.nofailover {
        return Err(format!("{name} is tagged nofailover"));
    }
    if m.role != "replica" && v.leader.as_ref().is_none_or(|l| l.name != name) {
        return Err(format!("{name} is not running as a standby ({})", m.role));
    }
    Ok(())
}

/// Files `r` unless another request is in force (an expired one is replaced).
fn file(dcs: &Dcs, v: &View, r: Request) -> Answer {
    let written = match &v.request {
        Some((old, rev)) if old.expired(unix_now()) => dcs.update_request(&r, *rev),
        Some((old, _)) => {
            return error(
                409,
                format!(
                    "a {:?} request is already pending: {}",
                    old.kind,
                    serde_json::to_string(old).unwrap_or_default()
                ),
            )
        }
        None => dcs.file_request(&r),
    };
    match written {
        Ok(true) => (202, json!({"request": r})),
        Ok(false) => error(409, "another request was filed at the same moment"),
        Err(e) => error(503, e.to_string()),
    }
}

fn cancel(dcs: &Dcs, v: &View) -> Answer {
    match &v.request {
        Some((r, rev)) if r.handed_over.is_none() => {
            let outcome = Outcome {
                request: r.clone(),
                ok: false,
                message: "cancelled".into(),
                at: unix_now(),
            };
            match dcs.end_request(*rev, &outcome) {
                Ok(true) => (200, json!({"cancelled": r})),
                Ok(false) => error(409, "the request changed meanwhile"),
                Err(e) => error(503, e.to_string()),
            }
        }
        Some(_) => error(409, "the handover is already under way"),
        None => error(409, "no request is pending"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::Leader;
    use crate::records::SyncState;
    use crate::state::Role;

    fn standby(name: &str, nosync: bool) -> MemberRecord {
        MemberRecord {
            name: name.into(),
            role: Role::Replica,
            state: NodeState::Streaming,
            upstream: Some("db1".into()),
            nosync,
            ..Default::default()
        }
    }

    #[test]
    fn a_reinit_blocks_writes_only_of_a_synchronous_standby_nobody_can_replace() {
        let mut v = View {
            leader: Some(Leader {
                name: "db1".into(),
                revision: 1,
            }),
            members: vec![standby("db2", false), standby("db3", true)],
            sync: Some(SyncState::new("db1", vec!["db2".into()])),
            ..Default::default()
        };
        // db3 is nosync: nobody stands in for db2.
        let why = blocks_writes(&v, "db2", 1).expect("blocks");
        assert!(
            why.contains("with 0 other healthy standby(s) for synchronous_node_count = 1"),
            "{why}"
        );
        assert_eq!(blocks_writes(&v, "db3", 1), None);
        // A standby that can be synchronous stands in, unless it is down or not streaming.
        v.members[1].nosync = false;
        assert_eq!(blocks_writes(&v, "db2", 1), None);
        assert!(blocks_writes(&v, "db2", 2).is_some());
        v.down.insert("db3".into());
        assert!(blocks_writes(&v, "db2", 1).is_some());
        v.down.clear();
        v.members[1].state = NodeState::Rebuilding;
        assert!(blocks_writes(&v, "db2", 1).is_some());
        // A record of an earlier leader is not this leader's synchronous set.
        v.sync = Some(SyncState::new("db0", vec!["db2".into()]));
        assert_eq!(blocks_writes(&v, "db2", 1), None);
    }
}
