//! Replication-protocol commands (IDENTIFY_SYSTEM, slots) against a primary, through `psql` in
//! physical replication mode. tokio-postgres cannot open replication connections, and these
//! must authenticate exactly as the standby will (same user, same pg_hba `replication` rule).

use std::path::PathBuf;
use std::process::Command;

use super::sql::quote_ident as ident;
use crate::pgconf::conninfo;
use crate::process::{output_text, run_as, Owner, TempPassfile};

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
    fn run(&self, command: &str) -> Result<Vec<Vec<String>>, String> {
        let mut pairs: Vec<(&str, &str)> = self
            .params
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        pairs.push(("replication", "true"));
        let pass = match &self.password {
            Some(p) => Some(
                TempPassfile::new(p, self.owner.as_ref())
                    .map_err(|e| format!("cannot write a temporary passfile: {e}"))?,
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
            "-c",
            command,
            "-d",
            &conninfo(&pairs),
        ]);
        if let Some(p) = &pass {
            cmd.env("PGPASSFILE", p.path());
        }
        let out =
            run_as(&mut cmd, self.owner.as_ref()).map_err(|e| format!("cannot run psql: {e}"))?;
        if !out.status.success() {
            let text = output_text(&out);
            return Err(text.strip_prefix("psql: ").unwrap_or(&text).to_string());
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| l.split('\t').map(str::to_string).collect())
            .collect())
    }

    pub fn identify_system(&self) -> Result<SystemId, String> {
        let rows = self.run("IDENTIFY_SYSTEM")?;
        let row = rows
            .first()
            .filter(|r| r.len() >= 2)
            .ok_or("IDENTIFY_SYSTEM returned nothing")?;
        Ok(SystemId {
            system_identifier: row[0].clone(),
            timeline: row[1]
                .parse()
                .map_err(|_| format!("unexpected timeline {:?}", row[1]))?,
        })
    }

    /// Whether a physical slot of that name exists (READ_REPLICATION_SLOT, PostgreSQL 15+).
    pub fn slot_exists(&self, slot: &str) -> Result<bool, String> {
        let rows = self.run(&format!("READ_REPLICATION_SLOT {}", ident(slot)))?;
        Ok(rows
            .first()
            .is_some_and(|r| r.first().is_some_and(|t| !t.is_empty())))
    }

    pub fn create_slot(&self, slot: &str) -> Result<(), String> {
        self.run(&format!(
            "CREATE_REPLICATION_SLOT {} PHYSICAL RESERVE_WAL",
            ident(slot)
        ))
        .map(drop)
    }

    /// Drops the slot; `wait` waits for an active slot to be released instead of failing.
    pub fn drop_slot(&self, slot: &str, wait: bool) -> Result<(), String> {
        let w = if wait { " WAIT" } else { "" };
        self.run(&format!("DROP_REPLICATION_SLOT {}{w}", ident(slot)))
            .map(drop)
    }
}
