//! Connections to PostgreSQL: libpq-compatible options and `sslmode`, peer authentication as
//! the right operating-system user, and a small blocking client for modules.

mod client;
mod options;
mod peer;
pub mod probe;
pub mod replication;
pub mod sql;
mod tls;

pub use client::{Client, PgError, SqlState};
pub use options::{ConnectOptions, SslMode};
