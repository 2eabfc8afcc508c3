//! `pgshift logical status`: both sides' read-only state, subscriptions (worker running,
//! errors), the logical slots the peer's subscription uses, how far behind the peer is on
//! this side's WAL, and client sessions by application_name.

use pgshift_core::pg::Client;
use serde::Serialize;
use serde_json::json;

use super::config::{LogicalConfig, Node};
use super::health::{self, Memory};

#[derive(Debug, Clone, Serialize)]
pub struct Subscription {
    pub name: String,
    pub enabled: bool,
    /// Its apply worker runs (it stops on an error and restarts after a pause).
    pub worker: bool,
    /// apply + sync errors since the statistics were reset.
    pub errors: i64,
    /// The slot on the peer it streams from.
    pub slot: Option<String>,
}

/// A logical slot of this node's database (the peer's subscription streams from one).
#[derive(Debug, Clone, Serialize)]
pub struct Slot {
    pub name: String,
    pub active: bool,
    /// confirmed_flush_lsn, as a byte position.
    pub confirmed: Option<i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeState {
    pub name: String,
    pub reachable: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub down: bool,
    pub subscriptions: Vec<Subscription>,
    pub slots: Vec<Slot>,
    /// This node's current WAL position, in bytes.
    pub wal: Option<i64>,
    /// Bytes of this node's WAL the peer has not confirmed (its logical slots).
    pub lag_bytes: Option<i64>,
    /// Client sessions in the database by application_name.
    pub sessions: Vec<(String, i64)>,
}

impl NodeState {
    /// An enabled subscription with a running worker: the instant's view only; whether
    /// changes really flow takes two looks (see `health`).
    pub fn receiving(&self) -> bool {
        self.reachable && self.subscriptions.iter().any(|s| s.enabled && s.worker)
    }
}

pub fn is_down(c: &mut Client) -> Result<bool, String> {
    c.query_one(
        "SELECT EXISTS (SELECT 1 FROM pg_event_trigger WHERE evtname = 'pgshift_logical_down')",
        &[],
    )
    .map(|r| r.get(0))
    .map_err(|e| e.to_string())
}

pub fn read(cfg: &LogicalConfig, n: &Node) -> NodeState {
    let mut st = NodeState {
        name: n.name.clone(),
        reachable: false,
        error: None,
        down: false,
        subscriptions: vec![],
        slots: vec![],
        wal: None,
        lag_bytes: None,
        sessions: vec![],
    };
    let r = cfg.connect(n).and_then(|mut c| {
        st.down = is_down(&mut c)?;
        let q = |c: &mut Client, sql: &str| c.query(sql, &[]).map_err(|e| e.to_string());
        st.subscriptions = q(
            &mut c,
            "SELECT s.subname::text, s.subenabled, st.pid IS NOT NULL, \
                    coalesce(ss.apply_error_count + ss.sync_error_count, 0), \
                    coalesce(s.subslotname::text, s.subname::text) \
             FROM pg_subscription s \
             LEFT JOIN pg_stat_subscription st ON st.subid = s.oid AND st.relid IS NULL \
             LEFT JOIN pg_stat_subscription_stats ss ON ss.subid = s.oid \
             WHERE s.subdbid = (SELECT oid FROM pg_database WHERE datname = current_database()) \
             ORDER BY 1",
        )?
        .iter()
        .map(|r| Subscription {
            name: r.get(0),
            enabled: r.get(1),
            worker: r.get(2),
            errors: r.get(3),
            slot: r.get(4),
        })
        .collect();
        st.slots = q(
            &mut c,
            "SELECT slot_name::text, active, pg_wal_lsn_diff(confirmed_flush_lsn, '0/0')::bigint \
             FROM pg_replication_slots WHERE slot_type = 'logical' AND database = current_database() \
             ORDER BY 1",
        )?
        .iter()
        .map(|r| Slot {
            name: r.get(0),
            active: r.get(1),
            confirmed: r.get(2),
        })
        .collect();
        st.wal = q(
            &mut c,
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint",
        )?
        .first()
        .and_then(|r| r.get(0));
        st.lag_bytes = st
            .slots
            .iter()
            .filter_map(|s| Some(st.wal? - s.confirmed?))
            .max();
        st.sessions = q(
            &mut c,
            "SELECT coalesce(nullif(application_name, ''), '(none)'), count(*) FROM pg_stat_activity \
             WHERE backend_type = 'client backend' AND datname = current_database() \
               AND pid <> pg_backend_pid() GROUP BY 1 ORDER BY 1",
        )?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
        Ok(())
    });
    match r {
        Ok(()) => st.reachable = true,
        Err(e) => st.error = Some(e),
    }
    st
}

/// Both sides as they are now.
pub fn read_both(cfg: &LogicalConfig) -> [NodeState; 2] {
    [read(cfg, &cfg.nodes[0]), read(cfg, &cfg.nodes[1])]
}

/// `status`: judged against what the last check remembered (read only, never updated here).
pub fn status(cfg: &LogicalConfig, as_json: bool) -> String {
    let states = read_both(cfg);
    let memory = Memory::load(&cfg.state_file());
    let dirs = health::judge(&states, memory.as_ref());
    let ok = dirs.iter().all(|d| d.ok);
    if as_json {
        return serde_json::to_string_pretty(&json!({
            "database": cfg.database, "replication_ok": ok, "directions": dirs, "nodes": states,
        }))
        .expect("serializable");
    }
    let mut out = format!(
        "multi-home {}: replication {}\n",
        cfg.database,
        if ok { "flowing both ways" } else { "BROKEN" }
    );
    for d in &dirs {
        out.push_str(&format!(
            "  {} -> {}: {}\n",
            d.from,
            d.into,
            if d.ok {
                "flowing".to_string()
            } else {
                d.why.join("; ")
            }
        ));
    }
    for s in &states {
        if !s.reachable {
            out.push_str(&format!(
                "{}: unreachable ({})\n",
                s.name,
                s.error.as_deref().unwrap_or("")
            ));
            continue;
        }
        out.push_str(&format!(
            "{}: {}, peer behind on its WAL: {}\n",
            s.name,
            if s.down {
                "DOWN (read-only)"
            } else {
                "writable"
            },
            s.lag_bytes
                .map_or("-".to_string(), |l| format!("{l} bytes"))
        ));
        for sub in &s.subscriptions {
            out.push_str(&format!(
                "  subscription {}: {}{}, {} errors\n",
                sub.name,
                if sub.enabled { "enabled" } else { "disabled" },
                if sub.worker {
                    ", applying"
                } else {
                    ", NO WORKER"
                },
                sub.errors
            ));
        }
        for slot in &s.slots {
            out.push_str(&format!(
                "  slot {}: {}\n",
                slot.name,
                if slot.active { "active" } else { "INACTIVE" }
            ));
        }
        let sessions: Vec<String> = s
            .sessions
            .iter()
            .map(|(app, n)| format!("{app} {n}"))
            .collect();
        out.push_str(&format!(
            "  sessions: {}\n",
            if sessions.is_empty() {
                "none".to_string()
            } else {
                sessions.join(", ")
            }
        ));
    }
    out
}
