//! `pgshift logical down NODE` / `up NODE`: read-only enforced by triggers (see the module
//! docs), and never two writable sides while replication between them is broken.

use std::time::{Duration, Instant};

use pgshift_core::pg::sql::quote_ident;
use pgshift_core::pg::Client;

use super::config::LogicalConfig;
use super::health::{self, Memory};
use super::status::is_down;

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
// Both nodes' watches may put the same side down at once: one at a time (the second finds
// it done), not a duplicate-key error from two CREATE SCHEMA IF NOT EXISTS.
const SERIALIZE: &str = "SELECT pg_advisory_xact_lock(7426128);";

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
            "BEGIN; SET LOCAL lock_timeout = '200ms'; {SERIALIZE} {INSTALL} COMMIT;"
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
    Memory::note(cfg, node, true);
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
/// between them is broken (two writable sides would diverge). Replication is judged over two
/// looks a moment apart (see `health`).
pub fn up(cfg: &LogicalConfig, node: &str) -> Result<String, String> {
    let (n, other) = cfg.pick(node)?;
    let here = super::status::read(cfg, n);
    if !here.reachable {
        return Err(format!(
            "{node} is unreachable: {}",
            here.error.unwrap_or_default()
        ));
    }
    if !here.down {
        return Ok(format!("{node} is already writable"));
    }
    let there = super::status::read(cfg, other);
    let other_writable = !there.reachable || !there.down;
    if other_writable {
        let (states, dirs) = health::settled(cfg, SETTLE);
        let there = states.iter().find(|s| s.name == other.name);
        let still = there.is_none_or(|t| !t.reachable || !t.down);
        if still && !health::all_ok(&dirs) {
            let why = match there {
                Some(t) if t.reachable => format!(
                    "{} is writable and replication is broken ({})",
                    other.name,
                    health::describe(&dirs)
                ),
                _ => format!(
                    "{} is unreachable, so its state and replication are unknown",
                    other.name
                ),
            };
            return Err(format!(
                "refusing to make {node} writable: {why}; both sides would take writes that never reach the other. Repair replication, or `pgshift logical down {}` first",
                other.name
            ));
        }
    }
    let mut c = cfg.connect(n)?;
    c.batch_execute(&format!(
        "BEGIN; {SERIALIZE} {REMOVE} ALTER DATABASE {} RESET default_transaction_read_only; COMMIT;",
        quote_ident(&cfg.database)
    ))
    .map_err(|e| format!("{node}: {e}"))?;
    Memory::note(cfg, node, false);
    Ok(format!("{node} is writable again"))
}

/// How far apart the two looks of `up` and `ddl` are.
pub const SETTLE: Duration = Duration::from_secs(2);

/// One look at the pair, judged against the previous one (`memory`, else the state file):
/// with both sides writable and replication broken, the side that is not `active` goes down
/// (writes diverge otherwise). An unreachable side counts as writable unless it was down
/// when last reached (a down side stays down until `up`). Ok(message) when nothing needed
/// doing or it was done; Err when the pair is unsafe and this could not fix it.
pub fn check(
    cfg: &LogicalConfig,
    timeout: Duration,
    memory: &mut Option<Memory>,
) -> Result<String, String> {
    let seen = health::look(cfg, memory);
    let (states, dirs) = (&seen.states, &seen.directions);
    if health::all_ok(dirs) {
        return Ok("replication flows both ways".into());
    }
    let broken = health::describe(dirs);
    if !seen.broken_before {
        return Ok(format!(
            "replication looks broken ({broken}); acting if the next check sees it too"
        ));
    }
    let active = cfg.active.as_deref().unwrap_or(&cfg.nodes[0].name);
    let (active, passive) = cfg.pick(active)?;
    let state = |name: &str| states.iter().find(|s| s.name == name).expect("both read");
    let (a, p) = (state(&active.name), state(&passive.name));
    let was_down = |name: &str| {
        memory
            .as_ref()
            .and_then(|m| m.down.get(name).copied())
            .unwrap_or(false)
    };
    if a.reachable && a.down {
        return Ok(format!(
            "replication is broken ({broken}); {} is down, so {} stays writable",
            a.name, p.name
        ));
    }
    if !a.reachable && was_down(&a.name) {
        return Ok(format!(
            "replication is broken ({broken}); {} is unreachable and was down when last seen, so {} stays writable",
            a.name, p.name
        ));
    }
    if p.reachable && !p.down {
        let msg = down(cfg, &p.name, timeout)?;
        return Ok(format!(
            "replication is broken ({broken}) while both sides were writable: {msg}"
        ));
    }
    if p.reachable {
        return Ok(format!(
            "replication is broken ({broken}); {} is already down",
            p.name
        ));
    }
    Err(format!(
        "replication is broken ({broken}) and {} (the side to put down) is unreachable: it may still take writes",
        p.name
    ))
}
