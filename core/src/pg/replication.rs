//! Replication-protocol commands (IDENTIFY_SYSTEM, slots) against a primary, through `psql` in
//! physical replication mode. tokio-postgres cannot open replication connections, and these
//! must authenticate exactly as the standby will (same user, same pg_hba `replication` rule).

use std::io;
use std::path::PathBuf;
use std::process::Command;

use thiserror::Error;

use super::sql::quote_ident as ident;
use super::SqlState;
use crate::pgconf::conninfo;
use crate::process::{output_text, run_as, Owner, TempPassfile};

/// A replication command that did not work.
#[derive(Debug, Error)]
pub enum ReplicationError {
    #[error("cannot write a temporary passfile: {0}")]
    Passfile(io::Error),
    #[error("cannot run psql: {0}")]
    Run(io::Error),
    /// psql failed: what it said, and the SQLSTATE when the server sent one (psql runs with
    /// VERBOSITY=verbose to show it; connection failures have none).
    #[error("{message}")]
    Failed {
        code: Option<SqlState>,
        message: String,
    },
    #[error("{0}")]
    Unexpected(String),
}

impl ReplicationError {
    pub fn is(&self, code: &SqlState) -> bool {
        matches!(self, ReplicationError::Failed { code: Some(c), .. } if c == code)
    }

    /// Reads psql's verbose error output: `ERROR:  55006: replication slot ... is active`.
    fn from_psql(text: &str) -> ReplicationError {
        let text = text.strip_prefix("psql: ").unwrap_or(text);
        let mut code = None;
        let mut lines = Vec::new();
        for line in text.lines() {
            if line.starts_with("LOCATION:") {
                continue;
            }
            let mut line = line.to_string();
            for level in ["ERROR:  ", "FATAL:  "] {
                if let Some(rest) = line.strip_prefix(level) {
                    if let Some((c, msg)) = rest.split_once(": ") {
                        if c.len() == 5
                            && c.bytes()
                                .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase())
                        {
                            code = code.or(Some(SqlState::from_code(c)));
                            line = format!("{level}{msg}");
                        }
                    }
                }
            }
            lines.push(line);
        }
        ReplicationError::Failed {
            code,
            message: lines.join("\n"),
        }
    }
}

/// A psql session here runs one short statement; a minute means something is wrong.
const PSQL_DEADLINE: std::time::Duration = std::time::Duration::from_secs(60);

pub struct ReplicationConn {
    pub bin_dir: PathBuf,
    /// libpq keywords without password (host, port, user, sslmode, ...).
    pub params: Vec<(String, String)>,
    pub password: Option<String>,
    pub owner: Option<Owner>,
}

/// What IDENTIFY_SYSTEM says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemId {
    pub system_identifier: String,
    pub timeline: u32,
}

impl ReplicationConn {
    pub fn describe(&self) -> String {
        let get = |k: &str| {
            self.params
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.as_str())
                .unwrap_or("?")
        };
        format!("{}:{} as {}", get("host"), get("port"), get("user"))
    }

    /// Runs one replication command; rows as tab-separated fields.
    fn run(&self, command: &str) -> Result<Vec<Vec<String>>, ReplicationError> {
        let mut pairs: Vec<(&str, &str)> = self
            .params
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        // dbname=replication as pg_basebackup and the WAL receiver send it: libpq looks the
        // password up in the passfile by this name (psql would use the user's name).
        pairs.retain(|(k, _)| *k != "dbname");
        pairs.push(("dbname", "replication"));
        pairs.push(("replication", "true"));
        let pass = match &self.password {
            Some(p) => Some(
                TempPassfile::new(p, self.owner.as_ref()).map_err(ReplicationError::Passfile)?,
            ),
            None => None,
        };
        let mut cmd = Command::new(self.bin_dir.join("psql"));
        cmd.args([
            "-X",
            "-A",
            "-t",
            "-q",
            "-w",
            "-F",
            "\t",
            "-v",
            "ON_ERROR_STOP=1",
            "-v",
            "VERBOSITY=verbose",
            "-c",
            command,
            "-d",
            &conninfo(&pairs),
        ]);
        if let Some(p) = &pass {
            cmd.env("PGPASSFILE", p.path());
        }
        let out =
            run_as(&mut cmd, self.owner.as_ref(), PSQL_DEADLINE).map_err(ReplicationError::Run)?;
        if !out.status.success() {
            return Err(ReplicationError::from_psql(&output_text(&out)));
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| l.split('\t').map(str::to_string).collect())
            .collect())
    }

    pub fn identify_system(&self) -> Result<SystemId, ReplicationError> {
        let rows = self.run("IDENTIFY_SYSTEM")?;
        let row = rows.first().filter(|r| r.len() >= 2).ok_or_else(|| {
            ReplicationError::Unexpected("IDENTIFY_SYSTEM returned nothing".into())
        })?;
        Ok(SystemId {
            system_identifier: row[0].clone(),
            timeline: row[1].parse().map_err(|_| {
                ReplicationError::Unexpected(format!("unexpected timeline {:?}", row[1]))
            })?,
        })
    }

    /// Whether a physical slot of that name exists (READ_REPLICATION_SLOT, PostgreSQL 15+).
    pub fn slot_exists(&self, slot: &str) -> Result<bool, ReplicationError> {
        let rows = self.run(&format!("READ_REPLICATION_SLOT {}", ident(slot)))?;
        Ok(rows
            .first()
            .is_some_and(|r| r.first().is_some_and(|t| !t.is_empty())))
    }

    pub fn create_slot(&self, slot: &str) -> Result<(), ReplicationError> {
        self.run(&format!(
            "CREATE_REPLICATION_SLOT {} PHYSICAL RESERVE_WAL",
            ident(slot)
        ))
        .map(drop)
    }

    /// Drops the slot; `wait` waits for an active slot to be released instead of failing.
    pub fn drop_slot(&self, slot: &str, wait: bool) -> Result<(), ReplicationError> {
        let w = if wait { " WAIT" } else { "" };
        self.run(&format!("DROP_REPLICATION_SLOT {}{w}", ident(slot)))
            .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psql_errors_keep_their_sqlstate_out_of_the_message() {
        let e = ReplicationError::from_psql(
            "ERROR:  55006: replication slot \"s1\" is active for PID 4242\nLOCATION:  ReplicationSlotAcquire, slot.c:465",
        );
        assert!(e.is(&SqlState::OBJECT_IN_USE), "{e:?}");
        assert_eq!(
            e.to_string(),
            "ERROR:  replication slot \"s1\" is active for PID 4242"
        );
        let e = ReplicationError::from_psql(
            "psql: error: connection to server at \"db1\" (10.0.0.1), port 5432 failed: FATAL:  password authentication failed for user \"r\"",
        );
        assert!(
            matches!(e, ReplicationError::Failed { code: None, .. }),
            "{e:?}"
        );
        assert!(
            e.to_string().starts_with("error: connection to server"),
            "{e}"
        );
    }
}
