//! A blocking PostgreSQL client for modules: a current-thread tokio runtime that drives one
//! tokio-postgres connection. One thread keeps the effective-uid switch for peer
//! authentication well-defined.

use std::error::Error as _;
use std::path::PathBuf;

use thiserror::Error;
use tokio::runtime::Runtime;
use tokio_postgres::config::SslMode as PgSslMode;
pub use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Config, NoTls, Row};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::options::{ConnectOptions, SslMode};
use super::peer::EffectiveUser;
use super::tls::client_config;

/// What went wrong talking to PostgreSQL. An error the server sent keeps its SQLSTATE
/// ([`PgError::code`]): callers decide on the code, never on the message's words (which
/// depend on the server's version and lc_messages).
#[derive(Debug, Error)]
pub enum PgError {
    #[error("cannot connect to PostgreSQL at {target}: {reason}")]
    Connect {
        target: String,
        reason: String,
        /// Set when the server refused the connection (e.g. 28P01, 57P03 starting up).
        code: Option<SqlState>,
    },
    #[error("TLS setup failed: {0}")]
    Tls(String),
    /// The server refused the statement.
    #[error("query failed: {message}")]
    Server { code: SqlState, message: String },
    /// No answer within the client's deadline; the connection is unusable afterwards.
    #[error(
        "query failed: no answer from the server within {} s (is it stopped or frozen?)",
        .0.as_secs_f32()
    )]
    Timeout(std::time::Duration),
    /// The connection broke, or another failure without a SQLSTATE.
    #[error("query failed: {0}")]
    Query(String),
    #[error("cannot start the I/O runtime: {0}")]
    Runtime(String),
}

impl PgError {
    /// The SQLSTATE the server sent, if it sent one.
    pub fn code(&self) -> Option<&SqlState> {
        match self {
            PgError::Server { code, .. } => Some(code),
            PgError::Connect { code, .. } => code.as_ref(),
            _ => None,
        }
    }

    /// Whether the server sent exactly this SQLSTATE.
    pub fn is(&self, code: &SqlState) -> bool {
        self.code() == Some(code)
    }

    fn from_statement(e: &tokio_postgres::Error) -> PgError {
        match e.code() {
            Some(code) => PgError::Server {
                code: code.clone(),
                message: describe(e),
            },
            None => PgError::Query(describe(e)),
        }
    }
}

/// A statement without an answer this long means a server that is stopped (SIGSTOP) or a
/// host frozen after the connect: neither statement_timeout nor TCP notices those, and the
/// caller would wait forever. Long enough for any statement a module or the agent runs.
const DEFAULT_QUERY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

pub struct Client {
    rt: Runtime,
    inner: Option<tokio_postgres::Client>,
    /// The task driving the connection: on drop it gets a moment to say goodbye.
    conn: Option<tokio::task::JoinHandle<()>>,
    query_timeout: std::time::Duration,
}

impl Client {
    pub fn connect(opts: &ConnectOptions) -> Result<Client, PgError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| PgError::Runtime(e.to_string()))?;
        let mut cfg = Config::new();
        cfg.user(&opts.user)
            .dbname(&opts.dbname)
            .port(opts.port)
            .application_name(&opts.application_name)
            .connect_timeout(opts.connect_timeout);
        if let Some(pw) = &opts.password {
            cfg.password(pw);
        }
        let target = opts.describe();
        let fail = |reason: String| PgError::Connect {
            target: target.clone(),
            reason,
            code: None,
        };
        let refused = |e: tokio_postgres::Error| PgError::Connect {
            target: target.clone(),
            reason: describe(&e),
            code: e.code().cloned(),
        };
        let spawned;
        let inner = if opts.uses_socket() {
            let dir = match &opts.host {
                Some(h) if h.starts_with('/') => PathBuf::from(h),
                _ => opts.socket_dir(),
            };
            cfg.host_path(dir).ssl_mode(PgSslMode::Disable);
            let _as_user = EffectiveUser::become_named(&opts.user).map_err(&fail)?;
            let (client, conn) = rt.block_on(cfg.connect(NoTls)).map_err(&refused)?;
            spawned = Some(rt.spawn(drive(conn)));
            client
        } else {
            cfg.host(opts.host.as_deref().unwrap_or_default());
            match client_config(opts).map_err(PgError::Tls)? {
                None => {
                    cfg.ssl_mode(PgSslMode::Disable);
                    let (client, conn) = rt.block_on(cfg.connect(NoTls)).map_err(&refused)?;
                    spawned = Some(rt.spawn(drive(conn)));
                    client
                }
                Some(tls) => {
                    cfg.ssl_mode(if opts.ssl_mode == SslMode::Prefer {
                        PgSslMode::Prefer
                    } else {
                        PgSslMode::Require
                    });
                    let (client, conn) = rt
                        .block_on(cfg.connect(MakeRustlsConnect::new(tls)))
                        .map_err(&refused)?;
                    spawned = Some(rt.spawn(drive(conn)));
                    client
                }
            }
        };
        Ok(Client {
            rt,
            inner: Some(inner),
            conn: spawned,
            query_timeout: DEFAULT_QUERY_TIMEOUT,
        })
    }

    fn client(&self) -> &tokio_postgres::Client {
        self.inner.as_ref().expect("set until drop")
    }

    /// How long one statement may wait for the server's answer (default 120 s).
    pub fn set_query_timeout(&mut self, limit: std::time::Duration) {
        self.query_timeout = limit;
    }

    /// Runs one statement's future to its end, or to `query_timeout`. After a timeout the
    /// connection is in an unknown state (an answer may still arrive): callers drop it.
    fn wait<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, PgError> {
        let limit = self.query_timeout;
        // The timer must be made inside the runtime.
        match self
            .rt
            .block_on(async move { tokio::time::timeout(limit, work).await })
        {
            Ok(r) => r.map_err(|e| PgError::from_statement(&e)),
            Err(_) => Err(PgError::Timeout(limit)),
        }
    }

    pub fn query(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, PgError> {
        self.wait(self.client().query(sql, params))
    }

    pub fn query_one(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Row, PgError> {
        self.wait(self.client().query_one(sql, params))
    }

    pub fn execute(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, PgError> {
        self.wait(self.client().execute(sql, params))
    }

    pub fn batch_execute(&mut self, sql: &str) -> Result<(), PgError> {
        self.wait(self.client().batch_execute(sql))
    }
}

/// tokio-postgres's Display says only "db error"; the server's message is what helps.
fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut s = format!("{}: {}", db.severity(), db.message());
        if let Some(hint) = db.hint() {
            s.push_str(&format!(" (hint: {hint})"));
        }
        return s;
    }
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// The connection's I/O until the client goes (errors surface through the client's calls).
async fn drive<S, T>(conn: tokio_postgres::Connection<S, T>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let _ = conn.await;
}

impl Drop for Client {
    /// Dropping the client makes the connection send Terminate and close (over TLS with a
    /// close_notify); without this the runtime would vanish under it, the server would see
    /// the connection reset and log "could not receive data from client" for each session.
    fn drop(&mut self) {
        drop(self.inner.take());
        if let Some(conn) = self.conn.take() {
            let limit = std::time::Duration::from_millis(500);
            let _ = self
                .rt
                .block_on(async move { tokio::time::timeout(limit, conn).await });
        }
    }
}
