//! `/etc/pgshift/agent.toml`: read once at start and checked as a whole, so a typo is one
//! clear error naming the key instead of an agent that misbehaves later.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::decide::Timing;

pub const DEFAULT_PATH: &str = "/etc/pgshift/agent.toml";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Cluster name: etcd keys live under `/pgshift/<cluster>/`.
    pub cluster: String,
    /// This node's name (the inventory host name).
    pub name: String,
    #[serde(default)]
    pub api: Api,
    pub etcd: Etcd,
    pub postgresql: Postgresql,
    pub replication: Replication,
    #[serde(default)]
    pub timing: TimingConfig,
    #[serde(default)]
    pub tags: Tags,
    /// Where this node keeps state that must survive restarts without etcd (maintenance).
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    #[serde(default)]
    pub log: Log,
    /// With etcd unreachable, the leader stays writable while every member it last saw
    /// confirms it over the API (see `failsafe`); off: it fences after retry_timeout.
    #[serde(default = "default_failsafe_mode")]
    pub failsafe_mode: bool,
    /// Rules in pg_hba.conf for load balancers that check by logging in (see `hba_checks`).
    #[serde(default)]
    pub hba_checks: Option<crate::hba_checks::HbaChecksConfig>,
    /// A watchdog device the fence guard keeps alive while this node may accept writes.
    #[serde(default)]
    pub watchdog: Watchdog,
    /// Programs run when PostgreSQL starts, stops or changes role (see `callbacks`).
    #[serde(default)]
    pub callbacks: crate::callbacks::Config,
    /// Where a rebuild (a rejoin pg_rewind cannot do, `pgshift reinit`) copies from.
    #[serde(default)]
    pub rebuild: Rebuild,
}

/// `[rebuild]`: a base backup over replication (from a member tagged clonefrom, else the
/// leader), or a restore from the pgBackRest repository, which spares the leader the copy.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rebuild {
    #[serde(default)]
    pub method: RebuildMethod,
    /// The pgBackRest stanza holding this cluster's backups (its configuration, e.g. the
    /// repository host, in pgBackRest's own file); needed by `method = "pgbackrest"` and by
    /// `pgshift reinit --from pgbackrest`.
    pub stanza: Option<String>,
    #[serde(default = "default_pgbackrest")]
    pub pgbackrest: PathBuf,
}

impl Default for Rebuild {
    fn default() -> Self {
        Rebuild {
            method: RebuildMethod::default(),
            stanza: None,
            pgbackrest: default_pgbackrest(),
        }
    }
}

fn default_pgbackrest() -> PathBuf {
    "/usr/bin/pgbackrest".into()
}

/// Where a rebuild copies from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum RebuildMethod {
    /// pg_basebackup over replication: from a member tagged clonefrom, else the leader.
    #[default]
    #[serde(alias = "basebackup")]
    Leader,
    /// `pgbackrest restore --type=standby` of the latest backup, then streaming; the leader
    /// if that fails.
    Pgbackrest,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Watchdog {
    #[serde(default)]
    pub mode: WatchdogMode,
    #[serde(default = "default_watchdog_device")]
    pub device: PathBuf,
}

impl Default for Watchdog {
    fn default() -> Self {
        Watchdog {
            mode: WatchdogMode::Off,
            device: default_watchdog_device(),
        }
    }
}

fn default_watchdog_device() -> PathBuf {
    "/dev/watchdog".into()
}

/// off: none; automatic: used when the device can be written at start, else a warning;
/// required: the agent does not start without it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WatchdogMode {
    #[default]
    Off,
    Automatic,
    Required,
}

fn default_failsafe_mode() -> bool {
    true
}

fn default_state_dir() -> PathBuf {
    "/var/lib/pgshift".into()
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Log {
    /// "text" (default) or "json" (one object per line, for log shippers).
    #[serde(default)]
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Api {
    #[serde(default = "default_listen")]
    pub listen: String,
    /// host:port others (and the CLI) use to reach this node's API.
    pub connect_address: Option<String>,
    /// A file (mode 0600) holding the bearer token mutating requests must present.
    pub token_file: Option<PathBuf>,
    /// Serve the API over TLS with this certificate and key (PEM).
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Accept mutating requests from clients presenting a certificate signed by this CA.
    pub tls_client_ca: Option<PathBuf>,
    /// The CA that signed the agents' API certificates: the CLI verifies the API with it
    /// (and presents tls_cert/tls_key as its own client certificate).
    pub tls_ca: Option<PathBuf>,
    /// Connections served at once. Past it, a new connection takes the slot of the one that
    /// has waited longest without sending a whole request head (a health check is never
    /// locked out by idle clients); with every slot busy past its head it is closed at once.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Seconds a connection gets, from its accept, to finish the TLS handshake and send a
    /// whole request head and body; then it is closed (408 for a late body).
    #[serde(default = "default_request_timeout")]
    pub request_timeout: f64,
}

impl Default for Api {
    fn default() -> Self {
        Api {
            listen: default_listen(),
            connect_address: None,
            token_file: None,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            tls_ca: None,
            max_connections: default_max_connections(),
            request_timeout: default_request_timeout(),
        }
    }
}

impl Api {
    pub fn request_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(self.request_timeout)
    }
}

fn default_listen() -> String {
    "0.0.0.0:8008".into()
}
// HAProxy's checks need one slot each for a few ms; 64 leave room for operators and
// scrapers while bounding the descriptors a flood can take (the unit's limit is larger).
fn default_max_connections() -> usize {
    64
}
// A health check sends its request right after connecting; 2 s is ample on any LAN,
// TLS handshake included, and bounds what a client sending a byte a second can hold.
fn default_request_timeout() -> f64 {
    2.0
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Etcd {
    /// `http://host:port` or `https://host:port` client URLs of the etcd members.
    pub endpoints: Vec<String>,
    /// For https endpoints: the CA that signed etcd's certificates.
    pub ca_file: Option<PathBuf>,
    /// A client certificate and key, when etcd asks for one (client-cert-auth).
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Postgresql {
    pub data_directory: PathBuf,
    /// postgresql.conf (Debian keeps it outside the data directory); unset: the data
    /// directory's own.
    pub config_file: Option<PathBuf>,
    /// Where `pg_ctl start` sends the server's output (all of it, or what comes before the
    /// logging collector starts). Unset: Debian's /var/log/postgresql/postgresql-<version>-
    /// <cluster>.log for a Debian cluster, `<state_dir>/postgresql.log` otherwise.
    pub log_file: Option<PathBuf>,
    #[serde(default = "default_bin_dir")]
    pub bin_dir: PathBuf,
    #[serde(default = "default_port")]
    pub port: u16,
    #[serde(default = "default_socket_dir")]
    pub socket_dir: PathBuf,
    /// The operating-system user PostgreSQL runs as.
    #[serde(default = "default_user")]
    pub user: String,
    /// host:port other nodes use to reach this PostgreSQL (replication, rewind).
    pub connect_address: String,
}

fn default_bin_dir() -> PathBuf {
    "/usr/lib/postgresql/15/bin".into()
}
fn default_port() -> u16 {
    5432
}
fn default_socket_dir() -> PathBuf {
    "/var/run/postgresql".into()
}
/// `replication.synchronous_mode`: off, `FIRST k` (true) or quorum commit (`ANY k`).
/// Written as agent.toml and the cluster configuration take it: false, true or "quorum".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncMode {
    #[default]
    Off,
    First,
    Quorum,
}

impl SyncMode {
    pub fn enabled(self) -> bool {
        self != SyncMode::Off
    }
}

impl std::str::FromStr for SyncMode {
    type Err = String;
    fn from_str(s: &str) -> Result<SyncMode, String> {
        match s {
            "false" | "off" => Ok(SyncMode::Off),
            "true" | "on" => Ok(SyncMode::First),
            "quorum" => Ok(SyncMode::Quorum),
            _ => Err(format!(
                "synchronous_mode = {s:?}: give true, false or \"quorum\""
            )),
        }
    }
}

impl std::fmt::Display for SyncMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SyncMode::Off => "false",
            SyncMode::First => "true",
            SyncMode::Quorum => "quorum",
        })
    }
}

impl Serialize for SyncMode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            SyncMode::Quorum => s.serialize_str("quorum"),
            m => s.serialize_bool(*m == SyncMode::First),
        }
    }
}

impl<'de> Deserialize<'de> for SyncMode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<SyncMode, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bool(bool),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bool(b) => Ok(if b { SyncMode::First } else { SyncMode::Off }),
            Raw::Text(t) if t == "quorum" => Ok(SyncMode::Quorum),
            Raw::Text(t) => Err(serde::de::Error::custom(format!(
                "synchronous_mode = {t:?}: give true, false or \"quorum\""
            ))),
        }
    }
}

fn default_user() -> String {
    "postgres".into()
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Replication {
    pub user: String,
    /// A .pgpass holding the replication user's password (the agent never holds it).
    pub passfile: PathBuf,
    #[serde(default = "default_sslmode")]
    pub sslmode: String,
    /// The role pg_rewind connects as (pg_ls_dir, pg_stat_file, pg_read_binary_file),
    /// its password in the same passfile.
    #[serde(default = "default_rewind_user")]
    pub rewind_user: String,
    /// `true`: the leader keeps `synchronous_node_count` standbys synchronous (`FIRST k`)
    /// and only they may be promoted; `"quorum"`: any k of all healthy standbys confirm a
    /// commit (`ANY k`), and a failover first hears enough of them to find the most
    /// advanced. Either way no acknowledged commit is lost by a failover.
    #[serde(default)]
    pub synchronous_mode: SyncMode,
    /// With fewer healthy standbys than `synchronous_node_count`, block writes (true) rather
    /// than go on with those there are (none: asynchronously).
    #[serde(default)]
    pub synchronous_mode_strict: bool,
    /// How many standbys confirm every commit (PostgreSQL's `FIRST k (...)`); each of them
    /// may be promoted.
    #[serde(default = "default_sync_count")]
    pub synchronous_node_count: usize,
    /// Seconds a member may be gone from etcd (not in maintenance) before every node drops
    /// the replication slot that keeps WAL for it (0: never). It needs a rebuild after.
    #[serde(default = "default_member_slots_ttl")]
    pub member_slots_ttl: u64,
    /// TLS files of replication and pg_rewind connections (libpq's names): the CA that signed
    /// the other members' server certificates, and a client certificate with its key.
    pub sslrootcert: Option<PathBuf>,
    pub sslcert: Option<PathBuf>,
    pub sslkey: Option<PathBuf>,
    /// pg_basebackup's --max-rate for a rebuild (e.g. "50M"); unset: as fast as it goes.
    pub rebuild_max_rate: Option<String>,
    /// Seconds a rejoin (pg_rewind, then a rebuild if needed) may take before it is killed.
    #[serde(default = "default_rebuild_timeout")]
    pub rebuild_timeout: f64,
}

fn default_rebuild_timeout() -> f64 {
    1800.0
}

fn default_rewind_user() -> String {
    "pgshift_rewind".into()
}

fn default_sslmode() -> String {
    "prefer".into()
}

/// Seconds, as operators write them.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimingConfig {
    #[serde(default = "default_ttl")]
    pub ttl: f64,
    #[serde(default = "default_loop_wait")]
    pub loop_wait: f64,
    #[serde(default = "default_retry_timeout")]
    pub retry_timeout: f64,
    /// Bytes a standby may be behind the last known leader position and still be promoted.
    #[serde(default = "default_max_lag")]
    pub maximum_lag_on_failover: u64,
}

impl Default for TimingConfig {
    fn default() -> Self {
        TimingConfig {
            ttl: default_ttl(),
            loop_wait: default_loop_wait(),
            retry_timeout: default_retry_timeout(),
            maximum_lag_on_failover: default_max_lag(),
        }
    }
}

// Crash failover takes about ttl plus one loop plus the promotion; the leader fences after
// retry_timeout without a successful write, which must also outlast an etcd election
// (~0.5-1 s with the lab's election timeout of 500 ms).
fn default_ttl() -> f64 {
    3.0
}
fn default_loop_wait() -> f64 {
    0.5
}
fn default_retry_timeout() -> f64 {
    1.5
}
fn default_max_lag() -> u64 {
    1 << 20
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tags {
    /// Never promoted, by failover or switchover.
    #[serde(default)]
    pub nofailover: bool,
    /// Out of the read-only pool: `/replica` answers 503 (e.g. a reporting or backup host).
    #[serde(default)]
    pub noloadbalance: bool,
    /// Never a synchronous standby (e.g. a remote one whose round trip would slow commits).
    #[serde(default)]
    pub nosync: bool,
    /// Cascading: stream from this member instead of the leader while it streams from the
    /// leader itself (else from the leader).
    #[serde(default)]
    pub replicatefrom: Option<String>,
    /// A preferred source of base backups: another member's rebuild copies from this one
    /// (while it streams from the leader) rather than from the leader.
    #[serde(default)]
    pub clonefrom: bool,
    #[serde(default = "default_priority")]
    pub priority: i32,
}

fn default_sync_count() -> usize {
    1
}

fn default_member_slots_ttl() -> u64 {
    1800
}

fn default_priority() -> i32 {
    1
}

impl Default for Tags {
    fn default() -> Self {
        Tags {
            nofailover: false,
            noloadbalance: false,
            nosync: false,
            replicatefrom: None,
            clonefrom: false,
            priority: default_priority(),
        }
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, String> {
        let text = fs_err::read_to_string(path).map_err(|e| e.to_string())?;
        Config::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Config, String> {
        let c: Config = toml::from_str(text).map_err(|e| e.to_string())?;
        c.check()?;
        Ok(c)
    }

    pub(crate) fn check(&self) -> Result<(), String> {
        let name_ok = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        };
        if !name_ok(&self.cluster) {
            return Err(format!(
                "cluster {:?}: use letters, digits, '-', '_' or '.'",
                self.cluster
            ));
        }
        if !name_ok(&self.name) {
            return Err(format!(
                "name {:?}: use letters, digits, '-', '_' or '.'",
                self.name
            ));
        }
        self.api
            .listen
            .parse::<SocketAddr>()
            .map_err(|_| format!("api.listen {:?} is not an address:port", self.api.listen))?;
        if self.etcd.endpoints.is_empty() {
            return Err("etcd.endpoints is empty: list the etcd members' client URLs".into());
        }
        for e in &self.etcd.endpoints {
            let ep =
                crate::etcd::Endpoint::parse(e).map_err(|why| format!("etcd.endpoints: {why}"))?;
            if ep.tls && self.etcd.ca_file.is_none() {
                return Err(format!(
                    "etcd.endpoints: {e} is https: set etcd.ca_file to the CA that signed etcd's certificate"
                ));
            }
        }
        if self.etcd.cert_file.is_some() != self.etcd.key_file.is_some() {
            return Err("etcd.cert_file and etcd.key_file go together".into());
        }
        if !self.postgresql.data_directory.is_absolute() {
            return Err("postgresql.data_directory must be an absolute path".into());
        }
        host_port(
            "postgresql.connect_address",
            &self.postgresql.connect_address,
        )?;
        if let Some(a) = &self.api.connect_address {
            host_port("api.connect_address", a)?;
        }
        if self.api.tls_cert.is_some() != self.api.tls_key.is_some() {
            return Err("api.tls_cert and api.tls_key go together".into());
        }
        if !(1..=4096).contains(&self.api.max_connections) {
            return Err(format!(
                "api.max_connections = {}: give 1 to 4096",
                self.api.max_connections
            ));
        }
        let rt = self.api.request_timeout;
        if !(rt.is_finite() && (0.05..=60.0).contains(&rt)) {
            return Err(format!(
                "api.request_timeout = {rt}: give seconds between 0.05 and 60"
            ));
        }
        if self.api.tls_client_ca.is_some() && self.api.tls_cert.is_none() {
            return Err("api.tls_client_ca needs api.tls_cert and api.tls_key (client certificates need TLS)".into());
        }
        if let Some(h) = &self.hba_checks {
            h.check()?;
        }
        if self.replication.sslcert.is_some() != self.replication.sslkey.is_some() {
            return Err("replication.sslcert and replication.sslkey go together".into());
        }
        let rt = self.replication.rebuild_timeout;
        if !(rt.is_finite() && rt >= 1.0) {
            return Err(format!(
                "replication.rebuild_timeout = {rt}: give seconds, at least 1"
            ));
        }
        if self.rebuild.method == RebuildMethod::Pgbackrest && self.rebuild.stanza.is_none() {
            return Err("rebuild.method = \"pgbackrest\" needs rebuild.stanza".into());
        }
        if let Some(st) = &self.rebuild.stanza {
            if !pgshift_core::pgbackrest::valid_name(st) {
                return Err(format!(
                    "rebuild.stanza = {st:?}: a pgBackRest stanza name (letters, digits, - _ .)"
                ));
            }
        }
        if self.replication.synchronous_mode_strict && !self.replication.synchronous_mode.enabled()
        {
            return Err(
                "replication.synchronous_mode_strict needs synchronous_mode = true or \"quorum\""
                    .into(),
            );
        }
        if self.replication.synchronous_node_count == 0 {
            return Err("replication.synchronous_node_count must be at least 1".into());
        }
        let t = &self.timing;
        for (k, v) in [
            ("ttl", t.ttl),
            ("loop_wait", t.loop_wait),
            ("retry_timeout", t.retry_timeout),
        ] {
            if !(v.is_finite() && v > 0.0 && v <= 3600.0) {
                return Err(format!("timing.{k} = {v}: give seconds between 0 and 3600"));
            }
        }
        // A leader fences after retry_timeout without a successful write; it checks every
        // loop_wait. Both must fit inside ttl, or a follower could promote first.
        if t.retry_timeout + t.loop_wait >= t.ttl {
            return Err(format!(
                "timing: retry_timeout ({}) + loop_wait ({}) must be less than ttl ({}), so a leader that cannot renew fences itself before its followers give up on it",
                t.retry_timeout, t.loop_wait, t.ttl
            ));
        }
        if self.watchdog.mode != WatchdogMode::Off
            && crate::watchdog::timeout_for(&self.timing()).is_none()
        {
            return Err(format!(
                "watchdog: ttl ({}) - retry_timeout ({}) must leave at least 1 s, the watchdog's timeout, so the device resets a stuck leader before its followers give up on it",
                t.ttl, t.retry_timeout
            ));
        }
        if !self.watchdog.device.is_absolute() {
            return Err("watchdog.device must be an absolute path".into());
        }
        self.callbacks.check()?;
        Ok(())
    }

    pub fn timing(&self) -> Timing {
        let ms = |s: f64| (s * 1000.0).round() as u64;
        Timing {
            ttl: ms(self.timing.ttl),
            loop_wait: ms(self.timing.loop_wait),
            retry_timeout: ms(self.timing.retry_timeout),
        }
    }

    /// A client for this cluster's etcd, over TLS where the endpoints say https.
    pub fn etcd_client(&self, timeout: std::time::Duration) -> Result<crate::etcd::Client, String> {
        let e = &self.etcd;
        let tls = match &e.ca_file {
            Some(ca) => Some(crate::tls::client(
                ca,
                e.cert_file.as_deref().zip(e.key_file.as_deref()),
            )?),
            None => None,
        };
        crate::etcd::Client::new(&e.endpoints, timeout, tls)
    }

    /// TLS for a client of an agent's API (the CLI, the other agents): `api.tls_ca` to
    /// verify the server, this node's API certificate and key as its identity. None: plain
    /// HTTP (no `api.tls_cert` or no `api.tls_ca`).
    pub fn api_client_tls(&self) -> Result<Option<crate::http::ClientTls>, String> {
        match (&self.api.tls_cert, &self.api.tls_ca) {
            (Some(cert), Some(ca)) => {
                crate::tls::client(ca, self.api.tls_key.as_deref().map(|k| (cert.as_path(), k)))
                    .map(Some)
            }
            _ => Ok(None),
        }
    }

    /// The API address others use: connect_address, or the listen address.
    pub fn api_address(&self) -> String {
        self.api
            .connect_address
            .clone()
            .unwrap_or_else(|| self.api.listen.clone())
    }
}

fn host_port(what: &str, v: &str) -> Result<(), String> {
    match v.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0) => Ok(()),
        _ => Err(format!("{what} {v:?} is not host:port")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
cluster = "main"
name = "db1"
[api]
connect_address = "10.77.0.11:8008"
[etcd]
endpoints = ["http://10.77.0.11:2379", "http://10.77.0.12:2379"]
[postgresql]
data_directory = "/var/lib/postgresql/15/main"
config_file = "/etc/postgresql/15/main/postgresql.conf"
connect_address = "db1:5432"
[replication]
user = "replicator"
passfile = "/var/lib/postgresql/.pgpass"
"#;

    #[test]
    fn defaults() {
        let c = Config::parse(GOOD).unwrap();
        assert_eq!(c.api.listen, "0.0.0.0:8008");
        assert_eq!(c.api.max_connections, 64);
        assert_eq!(c.api.request_timeout(), std::time::Duration::from_secs(2));
        assert_eq!(
            c.timing(),
            Timing {
                ttl: 3000,
                loop_wait: 500,
                retry_timeout: 1500
            }
        );
        assert_eq!(c.tags.priority, 1);
        assert!(!c.tags.nofailover);
        assert_eq!(c.watchdog.mode, WatchdogMode::Off);
        assert_eq!(c.callbacks, crate::callbacks::Config::default());
        let c = Config::parse(&format!(
            "{GOOD}[watchdog]\nmode = \"required\"\n[callbacks]\non_role_change = \"/usr/local/bin/vip\"\n"
        ))
        .unwrap();
        assert_eq!(c.watchdog.mode, WatchdogMode::Required);
        assert_eq!(c.watchdog.device, Path::new("/dev/watchdog"));
        assert_eq!(c.callbacks.timeout, 30.0);
        assert_eq!(c.replication.synchronous_mode, SyncMode::Off);
        for (written, mode) in [("true", SyncMode::First), ("\"quorum\"", SyncMode::Quorum)] {
            let c = Config::parse(&GOOD.replace(
                "[replication]",
                &format!("[replication]\nsynchronous_mode = {written}"),
            ))
            .unwrap();
            assert_eq!(c.replication.synchronous_mode, mode);
        }
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            (
                GOOD.replace("name = \"db1\"", "name = \"db 1\""),
                "name \"db 1\"",
            ),
            (
                GOOD.replace("[api]", "[api]\nlisten = \"8008\""),
                "api.listen",
            ),
            (
                GOOD.replace("\"http://10.77.0.11:2379\", ", "\"https//x\", "),
                "etcd.endpoints",
            ),
            (
                GOOD.replace("db1:5432", "db1"),
                "postgresql.connect_address",
            ),
            (
                format!("{GOOD}[timing]\nttl = 2\n"),
                "must be less than ttl",
            ),
            (format!("{GOOD}[timing]\nttl = -1\n"), "timing.ttl"),
            (
                GOOD.replace("[api]", "[api]\nmax_connections = 0"),
                "api.max_connections = 0",
            ),
            (
                GOOD.replace("[api]", "[api]\nrequest_timeout = 0.0"),
                "api.request_timeout = 0",
            ),
            (
                GOOD.replace("[api]", "[api]\nrequest_timeout = inf"),
                "api.request_timeout = inf",
            ),
            (
                GOOD.replace("[replication]", "[replication]\nbogus = 1"),
                "unknown field `bogus`",
            ),
            (
                format!("{GOOD}[rebuild]\nmethod = \"pgbackrest\"\n"),
                "rebuild.method = \"pgbackrest\" needs rebuild.stanza",
            ),
            (
                format!("{GOOD}[rebuild]\nstanza = \"main; rm\"\n"),
                "rebuild.stanza = \"main; rm\": a pgBackRest stanza name",
            ),
            (
                format!("{GOOD}[rebuild]\nmethod = \"s3\"\n"),
                "unknown variant `s3`",
            ),
            (
                GOOD.replace(
                    "[replication]",
                    "[replication]\nsynchronous_node_count = 0",
                ),
                "replication.synchronous_node_count must be at least 1",
            ),
            (
                GOOD.replace("[replication]", "[replication]\nsynchronous_mode = \"any\""),
                "synchronous_mode = \"any\": give true, false or \"quorum\"",
            ),
            (
                GOOD.replace("[replication]", "[replication]\nsynchronous_mode_strict = true"),
                "synchronous_mode_strict needs synchronous_mode = true or \"quorum\"",
            ),
            (
                GOOD.replace("[replication]", "[replication]\nsslcert = \"/tls/r.crt\""),
                "replication.sslcert and replication.sslkey go together",
            ),
            (
                GOOD.replace("[replication]", "[replication]\nrebuild_timeout = 0.5"),
                "replication.rebuild_timeout = 0.5",
            ),
            (
                GOOD.replace("cluster = \"main\"\n", ""),
                "missing field `cluster`",
            ),
            (
                format!("{GOOD}[hba_checks]\nrw_user = \"c\"\nload_balancers = []\n"),
                "hba_checks.load_balancers is empty",
            ),
            // A watchdog needs a whole second between the fence and the followers.
            (
                format!("{GOOD}[timing]\nttl = 2.0\nretry_timeout = 1.2\nloop_wait = 0.4\n[watchdog]\nmode = \"automatic\"\n"),
                "watchdog: ttl (2) - retry_timeout (1.2) must leave at least 1 s",
            ),
            (
                format!("{GOOD}[watchdog]\nmode = \"sometimes\"\n"),
                "unknown variant `sometimes`",
            ),
            (
                format!("{GOOD}[callbacks]\non_stop = \"vip\"\n"),
                "callbacks.on_stop must be an absolute path",
            ),
        ];
        for (text, want) in cases {
            let e = Config::parse(&text).unwrap_err();
            assert!(e.contains(want), "{want:?} not in {e:?}");
        }
    }
}
