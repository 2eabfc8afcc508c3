//! What can go wrong while making or keeping a standby, typed so callers decide by kind
//! (e.g. the agent retries a rewind that could not reach the leader, and rebuilds only after a
//! rewind that reached it and failed).

use std::io;
use std::path::PathBuf;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum StandbyError {
    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot prepare {}: {source}", path.display())]
    Directory { path: PathBuf, source: io::Error },
    #[error("cannot move {} aside to {}: {source}", dir.display(), aside.display())]
    MoveAside {
        dir: PathBuf,
        aside: PathBuf,
        source: io::Error,
    },
    #[error("cannot write a temporary passfile: {0}")]
    Passfile(io::Error),
    /// The program could not start, ran past its deadline or was cancelled (`source`'s kind
    /// says which: `TimedOut`, `Interrupted`, or a spawn error).
    #[error("cannot run {program}: {source}")]
    Run {
        program: &'static str,
        source: io::Error,
    },
    #[error("pg_basebackup from {from} failed: {output}")]
    BaseBackup { from: String, output: String },
    #[error("pgbackrest restore of stanza {stanza} failed: {output}")]
    Restore { stanza: String, output: String },
    /// pg_rewind did not get as far as the source server: try again later, nothing changed.
    #[error("pg_rewind cannot reach {from}: {output}")]
    RewindUnreachable { from: String, output: String },
    /// pg_rewind reached the source and could not make the target a copy of its history
    /// (a rebuild is what is left).
    #[error("pg_rewind from {from} failed: {output}")]
    Rewind { from: String, output: String },
}

impl StandbyError {
    /// The operation was called off (see `process::run_cancellable`).
    pub fn is_cancelled(&self) -> bool {
        matches!(self, StandbyError::Run { source, .. } if source.kind() == io::ErrorKind::Interrupted)
    }
}
