//! `pgshift status`: the cluster as etcd has it, from any database host (it reads the local
//! agent's configuration for the cluster name and the etcd endpoints).

use std::time::Duration;

use serde_json::{json, Value};

use crate::config::Config;
use crate::dcs::{Dcs, View};

pub fn status(cfg: &Config, as_json: bool) -> Result<String, String> {
    let etcd = cfg.etcd_client(Duration::from_secs(3))?;
    let (doc, note) = match Dcs::new(etcd, &cfg.cluster).read() {
        Ok(view) => {
            let mut doc = status_json(&view);
            doc["etcd_reachable"] = json!(true);
            (doc, None)
        }
        Err(e) => {
            let why = format!(
                "{e} (endpoints: {}); is etcd running there?",
                cfg.etcd.endpoints.join(", ")
            );
            // The local agent still knows its last view, and whether failsafe mode holds.
            let Ok(local) = crate::ctl::get_local(cfg, "/cluster") else {
                return Err(why);
            };
            (from_local_agent(&local), Some(why))
        }
    };
    if as_json {
        return Ok(serde_json::to_string_pretty(&doc).expect("serializable"));
    }
    let mut out = String::new();
    if let Some(why) = note {
        out.push_str(&format!(
            "etcd unreachable: {why}\nshown: the local agent's last view\n"
        ));
        if doc["failsafe"] == json!(true) {
            out.push_str(
                "FAILSAFE: the leader keeps writing, confirmed by every member without etcd\n",
            );
        }
    }
    out.push_str(&table(&cfg.cluster, &doc));
    Ok(out)
}

/// `status_json`'s shape from the local agent's `/cluster` (etcd unreachable), with
/// `etcd_reachable: false` and `failsafe`.
fn from_local_agent(local: &Value) -> Value {
    let members: Vec<crate::dcs::MemberRecord> =
        serde_json::from_value(local["members"].clone()).unwrap_or_default();
    let view = View {
        leader: local["leader"].as_str().map(|l| crate::decide::Leader {
            name: l.to_string(),
            revision: 0,
        }),
        members,
        ..View::default()
    };
    let mut doc = status_json(&view);
    doc["etcd_reachable"] = json!(false);
    doc["failsafe"] = local["failsafe"].clone();
    doc["paused"] = local["paused"].clone();
    doc["sync_standby"] = local["sync_standby"].clone();
    doc["sync_standbys"] = local["sync_standbys"].clone();
    doc["quorum"] = local["quorum"].clone();
    doc["quorum_voters"] = local["quorum_voters"].clone();
    doc
}

/// The contract other tools read: `leader` (a name or null) and `members`, each with
/// `name`, `host`, `role`, `state`, `timeline`, `lag_bytes`, `down`, `warnings`, `slots`,
/// `rewinds`, `rebuilds`; also `paused`,
/// `sync_standby` (the first of `sync_standbys`), with quorum commit `quorum` and
/// `quorum_voters` (any `quorum` of them hold every commit), the pending `request` and the
/// last request's `outcome`.
pub fn status_json(view: &View) -> Value {
    let leader = view.leader.as_ref().map(|l| l.name.clone());
    let leader_lsn = leader.as_ref().and_then(|l| view.member(l)).map(|m| m.lsn);
    let members: Vec<Value> = view
        .members
        .iter()
        .map(|m| {
            let lag = match (m.role.as_str(), leader_lsn) {
                ("replica", Some(l)) => json!(l.saturating_sub(m.replayed_lsn)),
                ("primary", _) => json!(0),
                _ => Value::Null,
            };
            json!({
                "name": m.name,
                "host": m.host(),
                "role": m.role,
                "state": m.state,
                "timeline": m.timeline,
                "lag_bytes": lag,
                "leader": leader.as_deref() == Some(m.name.as_str()),
                "upstream": m.upstream,
                "api": m.api,
                "down": view.down.contains(&m.name),
                "warnings": m.warnings,
                "slots": m.slots,
                "rewinds": m.rewinds,
                "rebuilds": m.rebuilds,
                "pending_restart": m.pending_restart,
                "restart_requested": view.restart.get(&m.name).map(|(r, _)| r),
            })
        })
        .collect();
    let sync = view.leader_sync();
    let sync_standbys: Vec<&str> = sync.map(|s| s.names()).unwrap_or_default();
    let voting = sync.and_then(|s| s.voting());
    json!({
        "leader": leader,
        "members": members,
        "paused": view.paused,
        "sync_standby": sync_standbys.first(),
        "sync_standbys": sync_standbys,
        "quorum": voting.map(|(_, q)| q),
        "quorum_voters": voting.map(|(v, _)| v),
        "request": view.request.as_ref().map(|(r, _)| r),
        "outcome": view.outcome,
    })
}

fn table(cluster: &str, doc: &Value) -> String {
    let mut rows = vec![[
        "MEMBER".to_string(),
        "HOST".into(),
        "ROLE".into(),
        "STATE".into(),
        "TL".into(),
        "LAG".into(),
        "LEADER".into(),
        "NOTE".into(),
    ]];
    for m in doc["members"].as_array().into_iter().flatten() {
        let s = |k: &str| match &m[k] {
            Value::String(s) => s.clone(),
            Value::Null => "-".into(),
            v => v.to_string(),
        };
        rows.push([
            s("name"),
            s("host"),
            s("role"),
            s("state"),
            s("timeline"),
            s("lag_bytes"),
            if m["leader"] == json!(true) {
                "*".into()
            } else {
                String::new()
            },
            [
                (m["down"] == json!(true)).then_some("down (maintenance)".to_string()),
                (m["pending_restart"] == json!(true)).then_some("pending restart".to_string()),
                m["restart_requested"]
                    .as_object()
                    .map(|r| match r["at"].as_u64() {
                        Some(at) => format!("restart at {at}"),
                        None => "restarting".to_string(),
                    }),
                doc["sync_standbys"]
                    .as_array()
                    .is_some_and(|s| s.contains(&m["name"]))
                    .then_some("synchronous".to_string()),
                doc["quorum_voters"]
                    .as_array()
                    .is_some_and(|s| s.contains(&m["name"]))
                    .then(|| format!("quorum voter (any {})", doc["quorum"])),
            ]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(", "),
        ]);
    }
    let widths: Vec<usize> = (0..8)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = format!(
        "cluster {cluster}, leader: {}\n",
        doc["leader"].as_str().unwrap_or("none")
    );
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    if doc["paused"] == json!(true) {
        out.push_str("automatic failover is PAUSED (pgshift resume)\n");
    }
    if let Some(r) = doc["request"].as_object() {
        out.push_str(&format!(
            "pending {}: to {}{}\n",
            r["kind"].as_str().unwrap_or("request"),
            r["to"].as_str().unwrap_or("the best standby"),
            r["at"]
                .as_u64()
                .map(|t| format!(" at {t}"))
                .unwrap_or_default()
        ));
    }
    for m in doc["members"].as_array().into_iter().flatten() {
        for w in m["warnings"].as_array().into_iter().flatten() {
            out.push_str(&format!(
                "{}: {}\n",
                m["name"].as_str().unwrap_or(""),
                w.as_str().unwrap_or("")
            ));
        }
    }
    out
}
