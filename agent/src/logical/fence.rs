//! `pgshift logical down NODE` / `up NODE`: read-only enforced by triggers (see the module
//! docs), and never two writable sides while replication between them is broken.

use std::time::{Duration, Instant};

use pgshift_core::pg::sql::quote_ident;
use pgshift_core::pg::Client;

use super::config::LogicalConfig;
use super::status::{is_down, read, replication_ok};

// In one transaction; the DDL guard is dropped first and re-created last (event-trigger
// commands do not fire event triggers), so running it again on a down node works.
const INSTALL: &str = r#"
DROP EVENT TRIGGER IF EXISTS pgshift_logical_down;
CREATE SCHEMA IF NOT EXISTS pgshift;
CREATE OR REPLACE FUNCTION pgshift.refuse_write() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
  RAISE EXCEPTION 'this database is down (pgshift logical down): writes are refused here, write on the other node'
    USING ERRCODE = 'read_only_sql_transaction';
END $f$;
CREATE OR REPLACE FUNCTION pgshift.refuse_ddl() RETURNS event_trigger LANGUAGE plpgsql AS $f$
BEGIN
  -- Replication itself stays manageable on a down side: repairing it is why one goes down.
  IF tg_tag LIKE '% SUBSCRIPTION' OR tg_tag LIKE '% PUBLICATION' THEN
    RETURN;
  END IF;
  RAISE EXCEPTION 'this database is down (pgshift logical down): schema changes are refused'
    USING ERRCODE = 'read_only_sql_transaction';
END $f$;
DO $d$
DECLARE t regclass;
BEGIN
  FOR t IN SELECT c.oid::regclass FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pgshift')
             AND n.nspname !~ '^pg_'
  LOOP
    EXECUTE format('CREATE OR REPLACE TRIGGER pgshift_down BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON %s '
                   'FOR EACH STATEMENT EXECUTE FUNCTION pgshift.refuse_write()', t);
  END LOOP;
  CREATE EVENT TRIGGER pgshift_logical_down ON ddl_command_start EXECUTE FUNCTION pgshift.refuse_ddl();
END $d$;
"#;

// Event-trigger commands do not fire event triggers, so this runs while the DDL guard is on.
const REMOVE: &str = r#"
DROP EVENT TRIGGER IF EXISTS pgshift_logical_down;
DROP SCHEMA IF EXISTS pgshift CASCADE;
"#;

/// Client sessions of the database holding a transaction id (they wrote), besides ours.
fn writers(c: &mut Client) -> Result<Vec<(i32, String)>, String> {
    c.query(
        "SELECT pid, coalesce(nullif(application_name, ''), '(none)') FROM pg_stat_activity \
         WHERE datname = current_database() AND backend_type = 'client backend' \
           AND backend_xid IS NOT NULL AND pid <> pg_backend_pid()",
        &[],
    )
    .map(|rows| rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    .map_err(|e| e.to_string())
}

/// Makes `node` read-only: new sessions start read-only at once, sessions that already wrote
/// get up to `timeout` to finish (then they are ended and their writes roll back), and the
/// triggers go in, which make it stick whatever a session SETs.
pub fn down(cfg: &LogicalConfig, node: &str, timeout: Duration) -> Result<String, String> {
    let (n, _) = cfg.pick(node)?;
    let mut c = cfg.connect(n)?;
    let was = is_down(&mut c)?;
    // Takes no table lock, so it cannot wait behind a writer.
    c.batch_execute(&format!(
        "ALTER DATABASE {} SET default_transaction_read_only = on",
        quote_ident(&cfg.database)
    ))
    .map_err(|e| format!("{node}: {e}"))?;
    let deadline = Instant::now() + timeout;
    let mut ended = Vec::new();
    loop {
        let left = writers(&mut c)?;
        if !left.is_empty() && Instant::now() >= deadline {
            for (pid, app) in left {
                c.execute("SELECT pg_terminate_backend($1)", &[&pid])
                    .map_err(|e| e.to_string())?;
                ended.push(app);
            }
        }
        // The triggers need a lock each writer holds: try briefly, again after the wait.
        let installed = c.batch_execute(&format!(
            "BEGIN; SET LOCAL lock_timeout = '200ms'; {INSTALL} COMMIT;"
        ));
        match installed {
            Ok(()) => break,
            Err(e) if e.to_string().contains("lock timeout") => {
                let _ = c.batch_execute("ROLLBACK");
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => {
                let _ = c.batch_execute("ROLLBACK");
                return Err(format!("{node}: {e}"));
            }
        }
    }
    let note = if ended.is_empty() {
        String::new()
    } else {
        format!(
            "; ended {} session(s) still writing after {} s ({})",
            ended.len(),
            timeout.as_secs(),
            ended.join(", ")
        )
    };
    Ok(format!(
        "{node} is {}down: writes and schema changes are refused there, replication still applies{note}",
        if was { "still " } else { "" }
    ))
}

/// Makes `node` writable again, unless the other node is writable while replication
/// between them is broken (two writable sides would diverge).
pub fn up(cfg: &LogicalConfig, node: &str) -> Result<String, String> {
    let (n, other) = cfg.pick(node)?;
    let (here, there) = (read(cfg, n), read(cfg, other));
    if !here.reachable {
        return Err(format!(
            "{node} is unreachable: {}",
            here.error.unwrap_or_default()
        ));
    }
    if !here.down {
        return Ok(format!("{node} is already writable"));
    }
    let other_writable = !there.reachable || !there.down;
    if other_writable && !replication_ok(&here, &there) {
        let why = if !there.reachable {
            format!(
                "{} is unreachable, so its state and replication are unknown",
                other.name
            )
        } else {
            let dir = |s: &super::status::NodeState| {
                if s.receiving() {
                    "flowing"
                } else {
                    "stopped"
                }
            };
            format!(
                "{} is writable and replication is broken (into {node}: {}, into {}: {})",
                other.name,
                dir(&here),
                other.name,
                dir(&there)
            )
        };
        return Err(format!(
            "refusing to make {node} writable: {why}; both sides would take writes that never reach the other. Repair replication, or `pgshift logical down {}` first",
            other.name
        ));
    }
    let mut c = cfg.connect(n)?;
    c.batch_execute(&format!(
        "BEGIN; {REMOVE} ALTER DATABASE {} RESET default_transaction_read_only; COMMIT;",
        quote_ident(&cfg.database)
    ))
    .map_err(|e| format!("{node}: {e}"))?;
    Ok(format!("{node} is writable again"))
}

/// One look at the pair: with both sides writable and replication broken, the side that is
/// not `active` goes down (writes diverge otherwise). Ok(message) when nothing needed doing
/// or it was done; Err when the pair is unsafe and this could not fix it.
pub fn check(cfg: &LogicalConfig, timeout: Duration) -> Result<String, String> {
    let states: Vec<_> = cfg.nodes.iter().map(|n| read(cfg, n)).collect();
    if replication_ok(&states[0], &states[1]) {
        return Ok("replication flows both ways".into());
    }
    let writable: Vec<&str> = states
        .iter()
        .filter(|s| s.reachable && !s.down)
        .map(|s| s.name.as_str())
        .collect();
    let active = cfg.active.as_deref().unwrap_or(&cfg.nodes[0].name);
    let (_, passive) = cfg.pick(active)?;
    let passive_state = states.iter().find(|s| s.name == passive.name);
    match passive_state {
        Some(s) if s.reachable && !s.down => {
            let msg = down(cfg, &passive.name, timeout)?;
            Ok(format!(
                "replication is broken while both sides were writable: {msg}"
            ))
        }
        Some(s) if s.reachable => Ok(format!(
            "replication is broken; {} is already down, {} writable",
            s.name,
            writable.join(", ")
        )),
        _ => Err(format!(
            "replication is broken and {} (the side to put down) is unreachable: it may still take writes; writable: {}",
            passive.name,
            writable.join(", ")
        )),
    }
}
