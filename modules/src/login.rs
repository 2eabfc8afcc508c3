//! The shared connection options (community.postgresql's names) and how they become
//! [`ConnectOptions`], defaulting to the local server's socket when its data directory is known.

use std::path::PathBuf;
use std::time::Duration;

use pgshift_core::datadir::PostmasterPid;
use pgshift_core::pg::{Client, ConnectOptions, PgError};
use serde::{Deserialize, Serialize};

use crate::args::{Arg, Default, Kind};

/// libpq's sslmode values (every option naming one accepts these).
pub const SSL_MODES: &[&str] = &[
    "allow",
    "disable",
    "prefer",
    "require",
    "verify-ca",
    "verify-full",
];

/// libpq's TLS options under community.postgresql's names; also used by modules that connect
/// with other credentials (e.g. a standby's replication connection).
pub const TLS_ARGS: [Arg; 4] = [
    Arg::new("ssl_mode", Kind::Str)
        .choices(SSL_MODES)
        .default(Default::Str("prefer"))
        .aliases(&["sslmode"]),
    Arg::new("ca_cert", Kind::Path).aliases(&["ssl_rootcert"]),
    Arg::new("ssl_cert", Kind::Path),
    Arg::new("ssl_key", Kind::Path),
];

pub const LOGIN_ARGS: &[Arg] = &[
    Arg::new("login_host", Kind::Str).aliases(&["host", "login_hostname"]),
    Arg::new("login_port", Kind::Int).aliases(&["port"]),
    Arg::new("login_user", Kind::Str)
        .default(Default::Str("postgres"))
        .aliases(&["login"]),
    Arg::new("login_password", Kind::Str).no_log(),
    Arg::new("login_unix_socket", Kind::Path).aliases(&["unix_socket"]),
    Arg::new("login_db", Kind::Str)
        .default(Default::Str("postgres"))
        .aliases(&["db", "login_database"]),
    TLS_ARGS[0],
    TLS_ARGS[1],
    TLS_ARGS[2],
    TLS_ARGS[3],
    Arg::new("connect_timeout", Kind::Int).default(Default::Int(10)),
];

#[derive(Debug, Clone, Deserialize, Serialize, std::default::Default)]
#[serde(deny_unknown_fields)]
pub struct LoginParams {
    pub login_host: Option<String>,
    pub login_port: Option<i64>,
    pub login_user: Option<String>,
    pub login_password: Option<String>,
    pub login_unix_socket: Option<PathBuf>,
    pub login_db: Option<String>,
    pub ssl_mode: Option<String>,
    pub ca_cert: Option<PathBuf>,
    pub ssl_cert: Option<PathBuf>,
    pub ssl_key: Option<PathBuf>,
    pub connect_timeout: Option<i64>,
}

/// How long one statement of a module may run, and wait for a lock, before the task fails
/// (an ALTER ROLE behind another session's open transaction would otherwise wait for good).
const STATEMENT_TIMEOUT: &str = "SET statement_timeout = '60s'; SET lock_timeout = '30s'";

impl LoginParams {
    /// A session for a module's short statements: connected with `connect_timeout`, every
    /// statement bounded by [`STATEMENT_TIMEOUT`].
    pub fn connect(&self, local: Option<&PostmasterPid>) -> Result<Client, String> {
        self.connector(local)?().map_err(|e| e.to_string())
    }

    /// Opens such sessions again and again (options checked once), each failure with the
    /// server's SQLSTATE when it sent one.
    pub fn connector(
        &self,
        local: Option<&PostmasterPid>,
    ) -> Result<impl Fn() -> Result<Client, PgError>, String> {
        let opts = self.connect_options(local)?;
        Ok(move || {
            let mut c = Client::connect(&opts)?;
            c.batch_execute(STATEMENT_TIMEOUT)?;
            Ok(c)
        })
    }

    /// The certificate and key files name regular files (a FIFO would hang the TLS setup).
    pub fn check_files(&self) -> Result<(), pgshift_core::userfile::FileError> {
        for (option, path) in [
            ("ca_cert", &self.ca_cert),
            ("ssl_cert", &self.ssl_cert),
            ("ssl_key", &self.ssl_key),
        ] {
            if let Some(p) = path {
                pgshift_core::userfile::UserFile::existing(option, p)?;
            }
        }
        Ok(())
    }

    /// Connection options; a running local server (`postmaster.pid`) supplies the socket
    /// directory and port unless the user set them.
    pub fn connect_options(&self, local: Option<&PostmasterPid>) -> Result<ConnectOptions, String> {
        self.check_files().map_err(|e| e.to_string())?;
        let port = match (self.login_port, local) {
            (Some(p), _) => p,
            (None, Some(pm)) => i64::from(pm.port),
            (None, None) => 5432,
        };
        let port = u16::try_from(port)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("login_port {port} is not a TCP port"))?;
        let timeout = self.connect_timeout.unwrap_or(10);
        if timeout <= 0 {
            return Err(format!(
                "connect_timeout must be a positive number of seconds, got {timeout}"
            ));
        }
        let o = ConnectOptions {
            host: self.login_host.clone().filter(|h| !h.is_empty()),
            port,
            user: self.login_user.clone().unwrap_or_else(|| "postgres".into()),
            password: self.login_password.clone(),
            unix_socket: self
                .login_unix_socket
                .clone()
                .or_else(|| local.and_then(|pm| pm.socket_dir.clone())),
            dbname: self.login_db.clone().unwrap_or_else(|| "postgres".into()),
            ssl_mode: self.ssl_mode.as_deref().unwrap_or("prefer").parse()?,
            ca_cert: self.ca_cert.clone(),
            ssl_cert: self.ssl_cert.clone(),
            ssl_key: self.ssl_key.clone(),
            connect_timeout: Duration::from_secs(timeout as u64),
            application_name: "pgshift".into(),
        };
        Ok(o)
    }
}
