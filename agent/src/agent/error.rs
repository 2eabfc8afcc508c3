//! Why an action did not complete. Typed by where it failed, so the loop (and its tests)
//! can tell the local server's answer (with its SQLSTATE) from etcd's and from a refusal.

use thiserror::Error;

use crate::etcd;
use crate::postgres::LocalPgError;

#[derive(Debug, Error)]
pub enum ActError {
    #[error(transparent)]
    Pg(#[from] LocalPgError),
    #[error(transparent)]
    Etcd(#[from] etcd::Error),
    /// The cluster is not as the action needs (another node took the key first, the leader
    /// has not published its address, the request changed meanwhile).
    #[error("{0}")]
    Refused(String),
}

impl From<String> for ActError {
    fn from(s: String) -> ActError {
        ActError::Refused(s)
    }
}

impl From<&str> for ActError {
    fn from(s: &str) -> ActError {
        ActError::Refused(s.to_string())
    }
}
