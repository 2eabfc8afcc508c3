//! `/etc/pgshift/logical.toml`: the two nodes of a multi-home pair and how to reach them.
//!
//! ```toml
//! database = "app"
//! [[node]]
//! name = "db1"
//! host = "10.77.0.11"
//! passfile = "/root/.pgpass"
//! [[node]]
//! name = "db2"
//! host = "10.77.0.12"
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use pgshift_core::pg::{Client, ConnectOptions, SslMode};
use serde::Deserialize;

pub const DEFAULT_PATH: &str = "/etc/pgshift/logical.toml";
pub const DEFAULT_STATE_FILE: &str = "/var/lib/pgshift/logical-health.json";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogicalConfig {
    /// The replicated database on both nodes.
    pub database: String,
    /// The side that stays writable when replication breaks while both are writable
    /// (`pgshift logical check` puts the other one down); default the first node.
    pub active: Option<String>,
    #[serde(rename = "node")]
    pub nodes: Vec<Node>,
    /// Where `check`/`watch` keep what they saw for the next look (see `health`).
    pub state_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    pub name: String,
    pub host: String,
    #[serde(default = "default_port")]
    pub port: u16,
    #[serde(default = "default_user")]
    pub user: String,
    /// A .pgpass with the user's password (never in this file).
    pub passfile: Option<PathBuf>,
    #[serde(default = "default_sslmode")]
    pub sslmode: String,
    pub sslrootcert: Option<PathBuf>,
}

fn default_port() -> u16 {
    5432
}
fn default_user() -> String {
    "postgres".into()
}
fn default_sslmode() -> String {
    "prefer".into()
}

impl LogicalConfig {
    pub fn load(path: &Path) -> Result<LogicalConfig, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        LogicalConfig::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<LogicalConfig, String> {
        let c: LogicalConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        if c.nodes.len() != 2 {
            return Err(format!(
                "a multi-home pair has two [[node]] entries, found {}",
                c.nodes.len()
            ));
        }
        if c.nodes[0].name == c.nodes[1].name {
            return Err("the two nodes need different names".into());
        }
        if let Some(a) = &c.active {
            c.pick(a).map_err(|e| format!("active: {e}"))?;
        }
        for n in &c.nodes {
            n.sslmode
                .parse::<SslMode>()
                .map_err(|e| format!("node {}: {e}", n.name))?;
        }
        Ok(c)
    }

    pub fn state_file(&self) -> PathBuf {
        self.state_file
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_FILE))
    }

    /// (the node, the other one) for `name`.
    pub fn pick(&self, name: &str) -> Result<(&Node, &Node), String> {
        match self.nodes.iter().position(|n| n.name == name) {
            Some(i) => Ok((&self.nodes[i], &self.nodes[1 - i])),
            None => Err(format!(
                "no node named {name} (nodes: {}, {})",
                self.nodes[0].name, self.nodes[1].name
            )),
        }
    }

    pub fn connect(&self, n: &Node) -> Result<Client, String> {
        let mut opts = ConnectOptions {
            host: Some(n.host.clone()),
            port: n.port,
            user: n.user.clone(),
            dbname: self.database.clone(),
            ssl_mode: n.sslmode.parse()?,
            ca_cert: n.sslrootcert.clone(),
            connect_timeout: Duration::from_secs(3),
            application_name: "pgshift-logical".into(),
            ..ConnectOptions::default()
        };
        if let Some(f) = &n.passfile {
            opts.password_from_passfile(f)?;
        }
        let mut c = Client::connect(&opts).map_err(|e| format!("{}: {e}", n.name))?;
        // A node that is down makes new sessions read-only; ours must still change it.
        c.batch_execute("SET default_transaction_read_only = off")
            .map_err(|e| format!("{}: {e}", n.name))?;
        Ok(c)
    }
}
