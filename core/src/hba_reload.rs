//! Proving that PostgreSQL loaded a new pg_hba.conf, and putting the old one back when not:
//! the one place the `pg_hba_rule` module and the agent (which keeps its own health-check
//! rules in step with its role) reload a pg_hba.conf.
//!
//! `pg_hba_file_rules` parses the file on disk when it is queried, not what the server has
//! loaded, and a reload that fails ("pg_hba.conf was not reloaded") still advances
//! `pg_conf_load_time`. What does prove a load: the postmaster re-reads pg_hba.conf in the
//! same step as postgresql.conf, before it accepts the next connection, and a new backend
//! inherits the postmaster's load time. So a connection opened after the SIGHUP whose
//! `pg_conf_load_time()` is newer than before was forked by a postmaster that had finished
//! loading this very file (the caller holds its lock and checked its bytes), and the file
//! then loaded when `pg_hba_file_rules` reports no line PostgreSQL rejects and at least one
//! rule (a file without entries is refused with only a log line). The new connection also
//! proves the new rules still admit the caller's own connection; if they do not, the change
//! is undone.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::atomic;
use crate::datadir::DataDir;
use crate::hba::HbaFile;
use crate::pg::{Client, PgError, SqlState};
use crate::userfile::UserFile;

/// How long the server gets to re-read its configuration after SIGHUP.
const RELOAD_DEADLINE: Duration = Duration::from_secs(10);

/// Opens a new session to the server (the same way each time).
pub type Connect<'a> = &'a dyn Fn() -> Result<Client, PgError>;

/// The server that reads the file, connected and checked before the file is written: wrong
/// credentials, an unreachable server or a server that reads another file fail with nothing
/// changed.
pub struct HbaServer<'a> {
    pub dd: &'a DataDir,
    connect: Connect<'a>,
    session: Client,
}

impl<'a> HbaServer<'a> {
    /// `file` is the pg_hba.conf about to be written (`named` as the user gave it).
    pub fn connect(
        dd: &'a DataDir,
        connect: Connect<'a>,
        file: &UserFile,
    ) -> Result<HbaServer<'a>, String> {
        let mut session = connect().map_err(|e| e.to_string())?;
        let hba_file: String = session
            .query_one("SELECT current_setting('hba_file')", &[])
            .map_err(|e| e.to_string())?
            .get(0);
        if std::fs::canonicalize(&hba_file).ok() != std::fs::canonicalize(&file.real).ok() {
            return Err(format!(
                "the server on {} reads {hba_file}, not {}; set data_directory to the server that uses this file (or reload: false)",
                dd.path.display(),
                file.named.display()
            ));
        }
        Ok(HbaServer {
            dd,
            connect,
            session,
        })
    }

    /// Checks the file the server would load, reloads, and proves the load (module docs).
    /// Returns warnings about lines that load but can never match.
    pub fn verify_and_reload(&mut self, file: &HbaFile) -> Result<Vec<String>, String> {
        let warnings = file_rules(&mut self.session, file)?;
        let before = load_time(&mut self.session)?;
        self.dd.reload().map_err(|e| e.to_string())?;
        let deadline = Instant::now() + RELOAD_DEADLINE;
        let mut fresh = loop {
            match (self.connect)() {
                Ok(mut fresh) => {
                    if load_time(&mut fresh)? > before {
                        break fresh;
                    }
                }
                // 28000 (no pg_hba.conf entry, a failed peer or cert check) or 28P01 (a
                // password refused): the server answered, and the answer is no.
                Err(e)
                    if e.is(&SqlState::INVALID_AUTHORIZATION_SPECIFICATION)
                        || e.is(&SqlState::INVALID_PASSWORD) =>
                {
                    return Err(format!(
                        "after the reload PostgreSQL refused a new connection from this module ({e}); the new rules would lock out the connection that verifies them (use reload: false to write such a file)"
                    ));
                }
                Err(e) if Instant::now() > deadline => return Err(e.to_string()),
                Err(_) => {}
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the server did not re-read its configuration within {} s of SIGHUP",
                    RELOAD_DEADLINE.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        file_rules(&mut fresh, file)?;
        Ok(warnings)
    }
}

/// The server's configuration load time, in microseconds since the epoch.
fn load_time(c: &mut Client) -> Result<i64, String> {
    Ok(c.query_one(
        "SELECT (extract(epoch FROM pg_conf_load_time()) * 1000000)::int8",
        &[],
    )
    .map_err(|e| e.to_string())?
    .get(0))
}

/// Fails when PostgreSQL rejects a line of the file or finds no rule in it; returns
/// warnings about lines that load but cannot match.
fn file_rules(c: &mut Client, file: &HbaFile) -> Result<Vec<String>, String> {
    // A row without a type is a line PostgreSQL could not load (15 sometimes gives no
    // reason there, only in its log). A row with a type and an error loads but cannot
    // match (e.g. hostssl while ssl = off): a warning, not a rejection.
    let rows = c
        .query(
            "SELECT line_number, type IS NOT NULL, coalesce(error, 'rejected without a reason here; see the server log') \
             FROM pg_hba_file_rules WHERE error IS NOT NULL OR type IS NULL ORDER BY line_number",
            &[],
        )
        .map_err(|e| e.to_string())?;
    let line_text = |line: i32| {
        file.line_text(line.max(0) as usize)
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    let mut warnings = Vec::new();
    for row in &rows {
        let line: i32 = row.get::<_, Option<i32>>(0).unwrap_or_default();
        let loads: bool = row.get(1);
        let error: String = row.get(2);
        if !loads {
            return Err(format!(
                "PostgreSQL rejected line {line} (`{}`): {error}",
                line_text(line)
            ));
        }
        warnings.push(format!("line {line} (`{}`): {error}", line_text(line)));
    }
    let rules: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_hba_file_rules WHERE type IS NOT NULL",
            &[],
        )
        .map_err(|e| e.to_string())?
        .get(0);
    if rules == 0 {
        return Err(
            "PostgreSQL finds no rule in the file (\"configuration file contains no entries\") and would not load it"
                .into(),
        );
    }
    Ok(warnings)
}

/// Puts the previous bytes back (or removes a file this caller created) when the file still
/// holds what was written (`written`, its SHA-256), reloads if a server is there, and returns
/// the failure message saying what happened.
pub fn restore(
    target: &UserFile,
    original: Option<&[u8]>,
    written: &[u8; 32],
    dd: Option<&DataDir>,
    reason: String,
) -> String {
    let path = target.named.display();
    match target.sha256() {
        Ok(Some(now)) if &now == written => {}
        _ => {
            return format!(
                "{reason}; {path} was changed by another process since this task wrote it, so it was NOT restored: check it"
            )
        }
    }
    let restored = match original {
        Some(bytes) => atomic::write_atomic(&target.real, bytes, None),
        None => std::fs::remove_file(&target.real),
    };
    let reloaded = match dd {
        Some(dd) => match dd.reload() {
            Ok(_) => " and the server reloaded",
            Err(_) => " (reloading the server failed)",
        },
        None => "",
    };
    match restored {
        Ok(()) if original.is_none() => {
            format!("{reason}; {path}, which this task created, was removed{reloaded}")
        }
        Ok(()) => format!("{reason}; the previous {path} was restored{reloaded}"),
        Err(e) => format!("{reason}; restoring the previous {path} FAILED: {e}"),
    }
}

/// Whether `dir` is the data directory itself: used to pick modes for a new file.
pub fn in_data_directory(dd: Option<&DataDir>, dir: &Path) -> bool {
    dd.is_some_and(|dd| std::fs::canonicalize(&dd.path).ok() == std::fs::canonicalize(dir).ok())
}
