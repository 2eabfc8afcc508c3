//! What the local PostgreSQL adapter reports: the client's errors keep the server's SQLSTATE
//! (`pgshift_core::pg::PgError::code`), the standby steps' keep their kind
//! (`StandbyError`), and a program that failed says which and what it printed.

use std::io;

use pgshift_core::pg::{PgError, SqlState};
use pgshift_core::standby::StandbyError;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum LocalPgError {
    /// The local server refused a statement or the connection broke.
    #[error(transparent)]
    Client(#[from] PgError),
    #[error(transparent)]
    Standby(#[from] StandbyError),
    #[error("cannot run {program}: {source}")]
    Run {
        program: &'static str,
        source: io::Error,
    },
    #[error("{command} failed: {output}")]
    Failed { command: String, output: String },
    #[error("the leader's PostgreSQL at {conn} is unreachable: {reason}")]
    Unreachable { conn: String, reason: String },
    #[error("cannot create the log file {path}: {source}")]
    LogFile { path: String, source: io::Error },
    /// A rebuild was needed (`why`: pg_rewind reached the leader and could not work, now or
    /// before) and did not finish.
    #[error("{why}; the rebuild did not finish: {rebuild}")]
    Rebuild {
        why: String,
        rebuild: Box<LocalPgError>,
    },
    /// The server did not get where it was asked to in time, or is in a state the step
    /// cannot work from.
    #[error("{0}")]
    State(String),
    /// Called off by the operator before it changed anything more (`pgshift down`).
    #[error("cancelled: {0}")]
    Cancelled(String),
}

impl LocalPgError {
    /// The SQLSTATE the local server sent, if this is one of its answers.
    pub fn code(&self) -> Option<&SqlState> {
        match self {
            LocalPgError::Client(e) => e.code(),
            _ => None,
        }
    }

    /// A long step called off by the operator (see `worker`).
    pub fn is_cancelled(&self) -> bool {
        match self {
            LocalPgError::Cancelled(_) => true,
            LocalPgError::Standby(e) => e.is_cancelled(),
            LocalPgError::Rebuild { rebuild, .. } => rebuild.is_cancelled(),
            _ => false,
        }
    }
}
