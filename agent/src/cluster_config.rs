//! Cluster-wide configuration in etcd (`/pgshift/<cluster>/config`, `pgshift config`): the
//! agents' timing, the synchronous-mode settings and PostgreSQL parameters, kept once for the
//! whole cluster. Each agent lays the document over its agent.toml, which keeps what is per
//! node (names, addresses, files, tags), and the result must pass agent.toml's own checks: a
//! document that would make any node's configuration invalid is refused before it is written.
//! PostgreSQL parameters reach every server through ALTER SYSTEM (see `agent::settings`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::Config;

/// What `pgshift config` edits. Every field is optional: an absent one leaves each node's
/// agent.toml value.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loop_wait: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_timeout: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maximum_lag_on_failover: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synchronous_mode: Option<crate::config::SyncMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synchronous_mode_strict: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synchronous_node_count: Option<usize>,
    /// PostgreSQL parameters by name, as ALTER SYSTEM takes them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub postgresql: BTreeMap<String, String>,
}

/// Parameters the agent sets itself on each node: never cluster-wide.
const AGENT_OWNED: &[&str] = &[
    "synchronous_standby_names",
    "primary_conninfo",
    "primary_slot_name",
    "port",
];

impl ClusterConfig {
    /// `KEY=VALUE`: an agent setting, or a PostgreSQL parameter (`NAME` or
    /// `postgresql.NAME`); an empty value removes the key (each node's own value again).
    pub fn set(&mut self, assignment: &str) -> Result<(), String> {
        let (key, value) = assignment
            .split_once('=')
            .ok_or_else(|| format!("{assignment:?} is not KEY=VALUE"))?;
        let (key, value) = (key.trim(), value.trim());
        let clear = value.is_empty();
        fn parse<T: std::str::FromStr>(key: &str, v: &str, what: &str) -> Result<T, String> {
            v.parse().map_err(|_| format!("{key} = {v:?}: give {what}"))
        }
        match key {
            "ttl" | "loop_wait" | "retry_timeout" => {
                let v = if clear {
                    None
                } else {
                    Some(parse::<f64>(key, value, "seconds")?)
                };
                match key {
                    "ttl" => self.ttl = v,
                    "loop_wait" => self.loop_wait = v,
                    _ => self.retry_timeout = v,
                }
            }
            "maximum_lag_on_failover" => {
                self.maximum_lag_on_failover =
                    (!clear).then(|| parse(key, value, "bytes")).transpose()?;
            }
            "synchronous_mode" => {
                self.synchronous_mode = (!clear).then(|| value.parse()).transpose()?;
            }
            "synchronous_mode_strict" => {
                self.synchronous_mode_strict = (!clear)
                    .then(|| parse::<bool>(key, value, "true or false"))
                    .transpose()?;
            }
            "synchronous_node_count" => {
                self.synchronous_node_count = (!clear)
                    .then(|| parse(key, value, "a number of standbys"))
                    .transpose()?;
            }
            _ => {
                let name = key.strip_prefix("postgresql.").unwrap_or(key);
                check_parameter(name, value)?;
                if clear {
                    self.postgresql.remove(name);
                } else {
                    self.postgresql.insert(name.to_string(), value.to_string());
                }
            }
        }
        Ok(())
    }

    /// `base` (a node's agent.toml) with this document laid over it, checked as agent.toml
    /// is checked.
    pub fn over(&self, base: &Config) -> Result<Config, String> {
        for (name, value) in &self.postgresql {
            check_parameter(name, value)?;
        }
        let mut c = base.clone();
        let t = &mut c.timing;
        t.ttl = self.ttl.unwrap_or(t.ttl);
        t.loop_wait = self.loop_wait.unwrap_or(t.loop_wait);
        t.retry_timeout = self.retry_timeout.unwrap_or(t.retry_timeout);
        t.maximum_lag_on_failover = self
            .maximum_lag_on_failover
            .unwrap_or(t.maximum_lag_on_failover);
        let r = &mut c.replication;
        r.synchronous_mode = self.synchronous_mode.unwrap_or(r.synchronous_mode);
        r.synchronous_mode_strict = self
            .synchronous_mode_strict
            .unwrap_or(r.synchronous_mode_strict);
        r.synchronous_node_count = self
            .synchronous_node_count
            .unwrap_or(r.synchronous_node_count);
        c.check()
            .map_err(|e| format!("with the cluster configuration: {e}"))?;
        Ok(c)
    }

    /// The document as people edit it.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("serializable")
    }
}

/// A PostgreSQL parameter name as it appears in pg_settings (a custom one has one dot), not
/// one the agent sets itself, and a value that fits on a line.
fn check_parameter(name: &str, value: &str) -> Result<(), String> {
    let word = |w: &str| {
        w.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && w.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    };
    let ok = match name.split_once('.') {
        Some((a, b)) => word(a) && word(b),
        None => word(name),
    };
    if !ok {
        return Err(format!(
            "{name:?} is neither a pgshift setting (ttl, loop_wait, retry_timeout, maximum_lag_on_failover, synchronous_mode, synchronous_mode_strict, synchronous_node_count) nor a PostgreSQL parameter name"
        ));
    }
    if AGENT_OWNED.contains(&name) {
        return Err(format!(
            "{name} is set by each node's agent, never cluster-wide"
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(format!("{name}: the value must be one line of text"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SyncMode;

    fn base() -> Config {
        crate::agent::tests::config("db1", std::path::Path::new("/var/lib/pgshift"), "")
    }

    #[test]
    fn assignments_are_typed_and_checked_as_a_whole() {
        let mut c = ClusterConfig::default();
        c.set("ttl=5").unwrap();
        c.set("retry_timeout = 2").unwrap();
        c.set("synchronous_node_count=2").unwrap();
        c.set("synchronous_mode=quorum").unwrap();
        c.set("shared_buffers=256MB").unwrap();
        c.set("postgresql.pg_stat_statements.max=5000").unwrap();
        let merged = c.over(&base()).unwrap();
        assert_eq!(merged.timing.ttl, 5.0);
        assert_eq!(merged.replication.synchronous_node_count, 2);
        assert_eq!(merged.replication.synchronous_mode, SyncMode::Quorum);
        assert_eq!(c.postgresql["shared_buffers"], "256MB");
        assert_eq!(c.postgresql["pg_stat_statements.max"], "5000");
        // Back as TOML, and read again.
        let again: ClusterConfig = toml::from_str(&c.to_toml()).unwrap();
        assert_eq!(again, c);
        // An empty value removes the key.
        c.set("shared_buffers=").unwrap();
        assert!(!c.postgresql.contains_key("shared_buffers"));
        c.set("ttl=").unwrap();
        assert_eq!(c.ttl, None);

        // The combination agent.toml refuses is refused here too.
        let mut bad = ClusterConfig::default();
        bad.set("retry_timeout=2.5").unwrap();
        let e = bad.over(&base()).unwrap_err();
        assert!(e.contains("must be less than ttl"), "{e}");
        for (assignment, want) in [
            ("ttl=soon", "ttl = \"soon\": give seconds"),
            ("synchronous_mode=yes", "give true, false or \"quorum\""),
            ("synchronous_mode_strict=quorum", "give true or false"),
            ("primary_conninfo=host=x", "set by each node's agent"),
            ("Shared-Buffers=1", "nor a PostgreSQL parameter name"),
            ("work_mem=4MB\n; x", "one line"),
            ("ttl", "is not KEY=VALUE"),
        ] {
            let e = ClusterConfig::default().set(assignment).unwrap_err();
            assert!(e.contains(want), "{assignment}: {e}");
        }
    }
}
