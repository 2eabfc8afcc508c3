//! `GET /metrics`: Prometheus text format, from the snapshot and the agent's counters.

use std::fmt::Write;

use super::slots::Stats;
use super::Snapshot;

/// What the loop counts and times, for `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    /// Changes of the leader key's holder this agent saw.
    pub leader_changes: u64,
    /// The last successful leader-key write's round trip (ms), on the leader.
    pub renew_ms: Option<u64>,
    /// The last promotion of this node: from the last sign of life of the old leader (or
    /// the handover) to the promotion done (ms).
    pub last_failover_ms: Option<u64>,
    pub promotions: u64,
    /// Rejoins of this node by pg_rewind, and by a rebuild from a base backup.
    pub rewinds: u64,
    pub rebuilds: u64,
    /// Restarts of this node's PostgreSQL asked for by `pgshift restart`.
    pub restarts: u64,
    /// Callbacks that ended, by result.
    pub callbacks: crate::callbacks::Totals,
}

pub fn render(snap: &Snapshot) -> String {
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: String| {
        let _ = writeln!(out, "# HELP pgshift_{name} {help}");
        let _ = writeln!(out, "# TYPE pgshift_{name} {kind}");
        let _ = writeln!(out, "pgshift_{name} {value}");
    };
    let me = snap.me.as_ref();
    let role = me.map_or("unknown", |m| m.role.as_str());
    let is = |r: &str| if role == r { "1" } else { "0" };
    let leading = me.is_some_and(|m| snap.leader.as_deref() == Some(m.name.as_str()));
    metric(
        "primary",
        "gauge",
        "1 when this node's PostgreSQL runs as the primary.",
        is("primary").into(),
    );
    metric(
        "replica",
        "gauge",
        "1 when this node's PostgreSQL runs as a standby.",
        is("replica").into(),
    );
    metric(
        "leader",
        "gauge",
        "1 when this node holds the leader key.",
        u8::from(leading).to_string(),
    );
    let leader_lsn = snap
        .leader
        .as_ref()
        .and_then(|l| snap.members.iter().find(|m| &m.name == l))
        .map(|m| m.lsn);
    let lag = match (me, leader_lsn) {
        (Some(m), Some(l)) if m.role == "replica" => l.saturating_sub(m.replayed_lsn) as i64,
        (Some(m), _) if m.role == "primary" => 0,
        _ => -1,
    };
    metric(
        "lag_bytes",
        "gauge",
        "Bytes this standby's replay is behind the leader's last published position (-1 unknown).",
        lag.to_string(),
    );
    metric(
        "timeline",
        "gauge",
        "The PostgreSQL timeline.",
        me.map_or(0, |m| m.timeline).to_string(),
    );
    metric(
        "down",
        "gauge",
        "1 while this node is in maintenance.",
        u8::from(snap.down).to_string(),
    );
    metric(
        "failsafe",
        "gauge",
        "1 while failsafe mode is active (etcd unreachable; the leader confirmed by every member).",
        u8::from(snap.failsafe).to_string(),
    );
    metric(
        "paused",
        "gauge",
        "1 while automatic failover is paused.",
        u8::from(snap.paused).to_string(),
    );
    metric(
        "streaming",
        "gauge",
        "1 when this node's PostgreSQL is a standby streaming from its upstream.",
        u8::from(me.is_some_and(|m| m.role == "replica" && m.state == "streaming")).to_string(),
    );
    metric(
        "warnings",
        "gauge",
        "Problems this node reports about itself (pgshift status shows them).",
        me.map_or(0, |m| m.warnings.len()).to_string(),
    );
    metric(
        "etcd_reachable",
        "gauge",
        "1 when the last etcd read succeeded.",
        u8::from(snap.etcd_ok).to_string(),
    );
    let c = &snap.counters;
    metric(
        "leader_changes_total",
        "counter",
        "Changes of the leader this agent saw.",
        c.leader_changes.to_string(),
    );
    metric(
        "promotions_total",
        "counter",
        "Promotions of this node.",
        c.promotions.to_string(),
    );
    metric(
        "rewinds_total",
        "counter",
        "Rejoins of this node by pg_rewind.",
        c.rewinds.to_string(),
    );
    metric(
        "rebuilds_total",
        "counter",
        "Rebuilds of this node's data directory (pg_rewind could not work, or pgshift reinit).",
        c.rebuilds.to_string(),
    );
    metric(
        "restarts_total",
        "counter",
        "Restarts of this node's PostgreSQL in place, asked for by pgshift restart.",
        c.restarts.to_string(),
    );
    metric(
        "lease_renew_seconds",
        "gauge",
        "Round trip of the last leader-key renewal (NaN when not leader yet).",
        c.renew_ms
            .map_or("NaN".into(), |ms| format!("{:.3}", ms as f64 / 1000.0)),
    );
    metric(
        "last_failover_duration_seconds",
        "gauge",
        "The last promotion of this node, from the old leader's last sign of life to the promotion done.",
        c.last_failover_ms
            .map_or("NaN".into(), |ms| format!("{:.3}", ms as f64 / 1000.0)),
    );
    let _ = writeln!(
        out,
        "# HELP pgshift_callbacks_total Callbacks ended, by result (ok, failed, timeout, superseded).\n# TYPE pgshift_callbacks_total counter"
    );
    let t = &c.callbacks;
    for (result, n) in [
        ("ok", t.ok),
        ("failed", t.failed),
        ("timeout", t.timed_out),
        ("superseded", t.superseded),
    ] {
        let _ = writeln!(out, "pgshift_callbacks_total{{result=\"{result}\"}} {n}");
    }
    out
}

/// The API server's own counts: what a connection flood did to it.
pub fn render_api(stats: &Stats) -> String {
    let mut out = String::new();
    for (name, kind, help, counter) in [
        (
            "api_connections_accepted_total",
            "counter",
            "Connections accepted by the API.",
            &stats.accepted,
        ),
        (
            "api_requests_total",
            "counter",
            "Requests whose head the API received.",
            &stats.requests,
        ),
        (
            "api_connections_refused_total",
            "counter",
            "Connections closed at once: every slot was busy answering.",
            &stats.refused,
        ),
        (
            "api_connections_evicted_total",
            "counter",
            "Connections closed to make room: they had waited longest without sending a request.",
            &stats.evicted,
        ),
        (
            "api_connections_timed_out_total",
            "counter",
            "Connections closed for not sending a whole request within api.request_timeout.",
            &stats.timed_out,
        ),
        (
            "api_accept_errors_total",
            "counter",
            "Failed accepts (out of descriptors or memory), each followed by a pause.",
            &stats.accept_errors,
        ),
        (
            "api_connections_open",
            "gauge",
            "Connections being served now.",
            &stats.open,
        ),
        (
            "api_connections_peak",
            "gauge",
            "The most connections served at once since the agent started.",
            &stats.peak,
        ),
    ] {
        let _ = writeln!(out, "# HELP pgshift_{name} {help}");
        let _ = writeln!(out, "# TYPE pgshift_{name} {kind}");
        let _ = writeln!(out, "pgshift_{name} {}", Stats::get(counter));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text() {
        let snap = Snapshot {
            counters: Counters {
                leader_changes: 3,
                renew_ms: Some(4),
                rewinds: 2,
                ..Counters::default()
            },
            ..Snapshot::default()
        };
        let text = render(&snap) + &render_api(&Stats::default());
        assert!(text.contains(
            "# TYPE pgshift_leader_changes_total counter\npgshift_leader_changes_total 3\n"
        ));
        assert!(text.contains("pgshift_lease_renew_seconds 0.004\n"));
        assert!(text.contains("pgshift_rewinds_total 2\n"));
        assert!(text.contains("pgshift_rebuilds_total 0\n"));
        assert!(text.contains("pgshift_streaming 0\n"));
        assert!(text.contains("pgshift_last_failover_duration_seconds NaN\n"));
        assert!(text.contains("pgshift_lag_bytes -1\n"));
        assert!(text.contains("pgshift_callbacks_total{result=\"timeout\"} 0\n"));
        assert!(text.contains("pgshift_api_connections_evicted_total 0\n"));
        // Every sample line is `name value` with the prefix.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = l.split_once(' ').unwrap();
            assert!(name.starts_with("pgshift_"), "{l}");
            assert!(value == "NaN" || value.parse::<f64>().is_ok(), "{l}");
        }
    }
}
