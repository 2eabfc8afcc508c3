//! Connection options under community.postgresql's names (`login_host`, `login_port`, ...),
//! so playbooks written for it port over unchanged.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

/// libpq's `sslmode`. `allow` is accepted and treated as `prefer` (it only differs in the
/// order of attempts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    Disable,
    #[default]
    Prefer,
    /// Encrypt, do not verify (unless a CA file is given: then as verify-ca, like libpq).
    Require,
    /// Verify the chain to the CA, not the host name.
    VerifyCa,
    /// Verify the chain and that the certificate names the host.
    VerifyFull,
}

impl FromStr for SslMode {
    type Err = String;
    fn from_str(s: &str) -> Result<SslMode, String> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "allow" | "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return Err(format!("invalid sslmode {s:?}: expected disable, allow, prefer, require, verify-ca or verify-full")),
        })
    }
}

#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// `login_host`: a host name or address; empty means the Unix socket.
    pub host: Option<String>,
    /// `login_port`.
    pub port: u16,
    /// `login_user`.
    pub user: String,
    /// `login_password`: handed to the protocol in memory, never to a child process's argv.
    pub password: Option<String>,
    /// `login_unix_socket`: the socket directory.
    pub unix_socket: Option<PathBuf>,
    /// `login_db`.
    pub dbname: String,
    pub ssl_mode: SslMode,
    pub ca_cert: Option<PathBuf>,
    pub ssl_cert: Option<PathBuf>,
    pub ssl_key: Option<PathBuf>,
    pub connect_timeout: Duration,
    pub application_name: String,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            host: None,
            port: 5432,
            user: "postgres".into(),
            password: None,
            unix_socket: None,
            dbname: "postgres".into(),
            ssl_mode: SslMode::Prefer,
            ca_cert: None,
            ssl_cert: None,
            ssl_key: None,
            connect_timeout: Duration::from_secs(10),
            application_name: "pgshift".into(),
        }
    }
}

impl ConnectOptions {
    /// Socket directory when connecting locally (libpq's default on Debian).
    pub fn socket_dir(&self) -> PathBuf {
        self.unix_socket
            .clone()
            .unwrap_or_else(|| PathBuf::from("/var/run/postgresql"))
    }

    /// True when the connection goes over a Unix socket: no host, or a host that is a path.
    pub fn uses_socket(&self) -> bool {
        match &self.host {
            None => true,
            Some(h) => h.is_empty() || h.starts_with('/'),
        }
    }

    /// Sets the password from a `.pgpass` file, as libpq would pick it for this host, port,
    /// database and user (none when no line matches). The password stays in memory.
    pub fn password_from_passfile(&mut self, path: &Path) -> Result<(), String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let host = match &self.host {
            Some(h) if !self.uses_socket() => h.as_str(),
            // libpq matches socket connections as "localhost".
            _ => "localhost",
        };
        self.password =
            crate::pgconf::pgpass_lookup(&text, host, self.port, &self.dbname, &self.user);
        Ok(())
    }

    /// Where we connect, for messages: never includes the password.
    pub fn describe(&self) -> String {
        if self.uses_socket() {
            let dir = match &self.host {
                Some(h) if h.starts_with('/') => PathBuf::from(h),
                _ => self.socket_dir(),
            };
            format!("{}/.s.PGSQL.{} as {}", dir.display(), self.port, self.user)
        } else {
            format!(
                "{}:{} as {}",
                self.host.as_deref().unwrap_or_default(),
                self.port,
                self.user
            )
        }
    }
}
