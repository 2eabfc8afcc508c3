//! `pgshift logical ddl FILE`: one schema change on both sides of the pair, in the order
//! that keeps replication working: both sides down (no writes, so nothing is in flight
//! against the old schema once both have applied each other's last changes), the file on
//! one side then the other (each in one transaction), each subscription refreshed without
//! copying (the file ran on both, so both start alike), then each side back as it was.
//! It stops at the first error and says where things stand.

use std::time::{Duration, Instant};

use pgshift_core::pg::sql::quote_ident;
use pgshift_core::pg::Client;

use super::config::LogicalConfig;
use super::fence::{down, up, SETTLE};
use super::health;
use super::status::read;

/// Waits until each side's slots have confirmed all of its WAL (the peer applied it).
fn drained(cfg: &LogicalConfig, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        let lags: Vec<Option<i64>> = cfg.nodes.iter().map(|n| read(cfg, n).lag_bytes).collect();
        if lags.iter().all(|l| l.is_some_and(|l| l <= 0)) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "replication did not catch up within {} s (bytes behind: {lags:?})",
                timeout.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The file in one transaction, with the down state's DDL guard off for this transaction.
fn apply(c: &mut Client, sql: &str) -> Result<(), String> {
    c.batch_execute("BEGIN; ALTER EVENT TRIGGER pgshift_logical_down DISABLE")
        .map_err(|e| e.to_string())?;
    let r = c
        .batch_execute(sql)
        .and_then(|_| c.batch_execute("ALTER EVENT TRIGGER pgshift_logical_down ENABLE"))
        .and_then(|_| c.batch_execute("COMMIT"));
    if let Err(e) = r {
        let _ = c.batch_execute("ROLLBACK");
        return Err(e.to_string());
    }
    Ok(())
}

pub fn ddl(cfg: &LogicalConfig, file: &str, timeout: Duration) -> Result<String, String> {
    let sql = std::fs::read_to_string(file).map_err(|e| format!("cannot read {file}: {e}"))?;
    if sql.trim().is_empty() {
        return Err(format!("{file} is empty"));
    }
    let (before, dirs) = health::settled(cfg, SETTLE);
    if !health::all_ok(&dirs) {
        return Err(format!(
            "replication is not flowing both ways ({}): repair it first (pgshift logical status); nothing was changed",
            health::describe(&dirs)
        ));
    }
    let names: Vec<String> = cfg.nodes.iter().map(|n| n.name.clone()).collect();
    let mut log = Vec::new();
    for n in &names {
        down(cfg, n, timeout)?;
    }
    log.push(format!("{} and {} down", names[0], names[1]));
    // Restores the sides that were writable (used when nothing was applied anywhere).
    let restore = |log: &mut Vec<String>| {
        for (n, s) in names.iter().zip(&before) {
            if !s.down {
                match up(cfg, n) {
                    Ok(_) => log.push(format!("{n} writable again")),
                    Err(e) => log.push(format!("{n} stays down: {e}")),
                }
            }
        }
    };
    if let Err(e) = drained(cfg, timeout) {
        restore(&mut log);
        return Err(format!("{e}; nothing was changed ({})", log.join(", ")));
    }
    let mut clients = Vec::new();
    for n in &cfg.nodes {
        clients.push(cfg.connect(n)?);
    }
    if let Err(e) = apply(&mut clients[0], &sql) {
        restore(&mut log);
        return Err(format!(
            "{file} failed on {} and was rolled back there; nothing was changed on {} ({}): {e}",
            names[0],
            names[1],
            log.join(", ")
        ));
    }
    log.push(format!("applied on {}", names[0]));
    if let Err(e) = apply(&mut clients[1], &sql) {
        return Err(format!(
            "{file} was applied on {} but failed on {} (rolled back there): {e}. Both sides stay down: \
             make {} match {} (fix and apply the change there by hand), then pgshift logical up each side",
            names[0], names[1], names[1], names[0]
        ));
    }
    log.push(format!("applied on {}", names[1]));
    // The file ran on both sides, so new tables start alike: refresh without copying.
    for (i, c) in clients.iter_mut().enumerate() {
        // The subscriptions status read before (the file is not meant to change those).
        for sub in before[i].subscriptions.iter().map(|s| &s.name) {
            // Before any write: changes for a table the subscription does not know yet are
            // skipped, not queued.
            c.batch_execute(&format!(
                "ALTER SUBSCRIPTION {} REFRESH PUBLICATION WITH (copy_data = false)",
                quote_ident(sub)
            ))
            .map_err(|e| {
                format!(
                    "the change is on both sides, but refreshing {sub} on {} failed: {e}; both sides stay down",
                    names[i]
                )
            })?;
            log.push(format!("{sub} refreshed on {}", names[i]));
        }
    }
    for (n, s) in names.iter().zip(&before) {
        if s.down {
            // Still down, and the new tables get the write guard too.
            down(cfg, n, timeout)?;
        } else {
            up(cfg, n)?;
            log.push(format!("{n} writable again"));
        }
    }
    Ok(format!("{file} applied to both sides: {}", log.join(", ")))
}
