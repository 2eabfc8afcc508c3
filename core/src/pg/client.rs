//! A blocking PostgreSQL client for modules: a current-thread tokio runtime that drives one
//! tokio-postgres connection. One thread keeps the effective-uid switch for peer
//! authentication well-defined.

use std::error::Error as _;
use std::path::PathBuf;

use thiserror::Error;
use tokio::runtime::Runtime;
use tokio_postgres::config::SslMode as PgSslMode;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Config, NoTls, Row};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::options::{ConnectOptions, SslMode};
use super::peer::EffectiveUser;
use super::tls::client_config;

#[derive(Debug, Error)]
pub enum PgError {
    #[error("cannot connect to PostgreSQL at {target}: {reason}")]
    Connect { target: String, reason: String },
    #[error("TLS setup failed: {0}")]
    Tls(String),
    #[error("query failed: {0}")]
    Query(String),
    #[error("cannot start the I/O runtime: {0}")]
    Runtime(String),
}

pub struct Client {
    rt: Runtime,
    inner: tokio_postgres::Client,
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
        };
        let inner = if opts.uses_socket() {
            let dir = match &opts.host {
                Some(h) if h.starts_with('/') => PathBuf::from(h),
                _ => opts.socket_dir(),
            };
            cfg.host_path(dir).ssl_mode(PgSslMode::Disable);
            let _as_user = EffectiveUser::become_named(&opts.user);
            let (client, conn) = rt
                .block_on(cfg.connect(NoTls))
                .map_err(|e| fail(describe(&e)))?;
            rt.spawn(conn);
            client
        } else {
            cfg.host(opts.host.as_deref().unwrap_or_default());
            match client_config(opts).map_err(PgError::Tls)? {
                None => {
                    cfg.ssl_mode(PgSslMode::Disable);
                    let (client, conn) = rt
                        .block_on(cfg.connect(NoTls))
                        .map_err(|e| fail(describe(&e)))?;
                    rt.spawn(conn);
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
                        .map_err(|e| fail(describe(&e)))?;
                    rt.spawn(conn);
                    client
                }
            }
        };
        Ok(Client { rt, inner })
    }

    pub fn query(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, PgError> {
        self.rt
            .block_on(self.inner.query(sql, params))
            .map_err(|e| PgError::Query(describe(&e)))
    }

    pub fn query_one(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Row, PgError> {
        self.rt
            .block_on(self.inner.query_one(sql, params))
            .map_err(|e| PgError::Query(describe(&e)))
    }

    pub fn execute(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, PgError> {
        self.rt
            .block_on(self.inner.execute(sql, params))
            .map_err(|e| PgError::Query(describe(&e)))
    }

    pub fn batch_execute(&mut self, sql: &str) -> Result<(), PgError> {
        self.rt
            .block_on(self.inner.batch_execute(sql))
            .map_err(|e| PgError::Query(describe(&e)))
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
