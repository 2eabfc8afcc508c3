//! `pgshift.cluster.pg_hba_rule`: add, update or remove pg_hba.conf rules without reordering
//! the file, validate before writing, reload the server and prove it accepted the result.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pgshift_core::atomic::{self, Ownership};
use pgshift_core::datadir::{DataDir, PostmasterPid};
use pgshift_core::hba::{
    Address, Change, ConnType, HbaFile, Position, Rule, RuleAction, RuleOutcome, Selector,
    ServerVersion,
};
use pgshift_core::pg::Client;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::args::{Arg, Default, Kind};
use crate::login::LoginParams;
use crate::protocol::{diff, Context, Failure, Module};

const TYPES: &[&str] = &[
    "local",
    "host",
    "hostssl",
    "hostnossl",
    "hostgssenc",
    "hostnogssenc",
];
const POSITIONS: &[&str] = &["first", "last", "before", "after"];
const STATES: &[&str] = &["present", "absent"];

/// The options that identify a rule; also what an `anchor` selects by.
const IDENTITY: [Arg; 4] = [
    Arg::new("type", Kind::Str)
        .choices(TYPES)
        .aliases(&["contype"]),
    Arg::new("databases", Kind::List).aliases(&["database"]),
    Arg::new("users", Kind::List).aliases(&["user"]),
    Arg::new("address", Kind::Str).aliases(&["source"]),
];
const ANCHOR: &[Arg] = &IDENTITY;

/// Options of one rule, shared by the top level and each `rules` item. Defaults are applied
/// in code so that "not given" can be told apart (top-level rule fields conflict with `rules`).
const RULE: &[Arg] = &[
    IDENTITY[0],
    IDENTITY[1],
    IDENTITY[2],
    IDENTITY[3],
    Arg::new("method", Kind::Str),
    Arg::new("options", Kind::Dict),
    Arg::new("comment", Kind::Str),
    Arg::new("state", Kind::Str).choices(STATES),
    Arg::new("position", Kind::Str).choices(POSITIONS),
    Arg::new("anchor", Kind::Dict).suboptions(ANCHOR),
];

const SPEC: &[Arg] = &[
    Arg::new("path", Kind::Path).required().aliases(&["dest"]),
    RULE[0],
    RULE[1],
    RULE[2],
    RULE[3],
    RULE[4],
    RULE[5],
    RULE[6],
    RULE[7],
    RULE[8],
    RULE[9],
    Arg::new("rules", Kind::ListOfDicts).suboptions(RULE),
    Arg::new("exclusive", Kind::Bool).default(Default::Bool(false)),
    Arg::new("create", Kind::Bool).default(Default::Bool(false)),
    Arg::new("backup", Kind::Bool).default(Default::Bool(false)),
    Arg::new("data_directory", Kind::Path),
    Arg::new("reload", Kind::Bool).default(Default::Bool(true)),
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnchorParams {
    #[serde(rename = "type")]
    conn_type: Option<String>,
    databases: Option<Vec<String>>,
    users: Option<Vec<String>>,
    address: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleParams {
    #[serde(rename = "type")]
    conn_type: Option<String>,
    databases: Option<Vec<String>>,
    users: Option<Vec<String>>,
    address: Option<String>,
    method: Option<String>,
    options: Option<Map<String, Value>>,
    comment: Option<String>,
    state: Option<String>,
    position: Option<String>,
    anchor: Option<AnchorParams>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    path: PathBuf,
    #[serde(flatten)]
    rule: RuleParams,
    rules: Option<Vec<RuleParams>>,
    exclusive: bool,
    create: bool,
    backup: bool,
    data_directory: Option<PathBuf>,
    reload: bool,
}

pub struct PgHbaRule;

impl Module for PgHbaRule {
    const NAME: &'static str = "pg_hba_rule";
    const SPEC: &'static [Arg] = SPEC;
    const LOGIN: bool = true;
    type Params = Params;

    fn run(
        ctx: &mut Context,
        p: Params,
        login: LoginParams,
    ) -> Result<Map<String, Value>, Failure> {
        let datadir = p
            .data_directory
            .clone()
            .map(DataDir::new)
            .or_else(|| DataDir::for_config_file(&p.path));
        let version = datadir
            .as_ref()
            .and_then(DataDir::major_version)
            .map(ServerVersion);
        let plan = Plan::build(&p, version)?;

        let original = match fs::read(&p.path) {
            Ok(b) => Some(b),
            Err(e) if e.kind() == io::ErrorKind::NotFound && p.create => None,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(format!(
                    "{} does not exist; set create: true to create it",
                    p.path.display()
                )
                .into())
            }
            Err(e) => return Err(format!("cannot read {}: {e}", p.path.display()).into()),
        };
        let before = original.clone().unwrap_or_default();
        let mut file = HbaFile::parse(&before);
        let outcomes = plan.apply(&mut file)?;
        if version.is_some_and(|v| v.0 < 16) {
            refuse_16_syntax(&file, &p.path, version)?;
        }
        let after = file.render();
        let changed = original.as_deref() != Some(after.as_slice());
        for o in outcomes.iter().filter(|o| o.action != RuleAction::Removed) {
            for w in file.warnings_for(&o.rule) {
                ctx.warn(w);
            }
        }

        let mut out = Map::new();
        out.insert("changed".into(), changed.into());
        out.insert("path".into(), p.path.display().to_string().into());
        out.insert("rules".into(), outcomes_json(&file, &outcomes));
        out.insert(
            "diff".into(),
            diff(&p.path.display().to_string(), &before, &after),
        );
        out.insert("reloaded".into(), false.into());
        let summary = summarize(&outcomes);
        if !changed {
            out.insert(
                "msg".into(),
                format!("{} already as requested", p.path.display()).into(),
            );
            return Ok(out);
        }
        if ctx.check_mode {
            out.insert(
                "msg".into(),
                format!("would change {}: {summary}", p.path.display()).into(),
            );
            return Ok(out);
        }

        let ownership = match original {
            Some(_) => None,
            None => Some(new_file_ownership(&p.path, datadir.as_ref())?),
        };
        let backup_file = match (p.backup, &original) {
            (true, Some(_)) => Some(
                atomic::backup(&p.path)
                    .map_err(|e| format!("cannot back up {}: {e}", p.path.display()))?,
            ),
            _ => None,
        };
        // From here on, a failure puts the previous file back and drops the backup copy, so
        // a failed task leaves the disk as it found it.
        let undo = |server: Option<&Server>, reason: String| {
            if let Some(b) = &backup_file {
                let _ = std::fs::remove_file(b);
            }
            restore(&p.path, original.as_deref(), server, reason)
        };
        atomic::write_atomic(&p.path, &after, ownership)
            .map_err(|e| undo(None, format!("cannot write {}: {e}", p.path.display())))?;
        if let Some(b) = &backup_file {
            out.insert("backup_file".into(), b.display().to_string().into());
        }

        let running = match (&datadir, p.reload) {
            (Some(dd), true) => dd.postmaster().map_err(|e| undo(None, e.to_string()))?,
            _ => None,
        };
        let mut msg = format!("{}: {summary}", p.path.display());
        match (running, datadir) {
            (Some(pm), Some(dd)) => {
                let server = Server {
                    dd: &dd,
                    pm: &pm,
                    login: &login,
                };
                server
                    .verify_and_reload(ctx, &p.path, &file)
                    .map_err(|e| undo(Some(&server), e))?;
                out.insert("reloaded".into(), true.into());
                msg.push_str("; PostgreSQL reloaded and accepted every line");
            }
            _ if !p.reload => msg.push_str("; not reloaded (reload: false)"),
            (None, Some(dd)) => msg.push_str(&format!(
                "; no server running on {}, nothing reloaded",
                dd.path.display()
            )),
            (_, None) => {
                msg.push_str("; no data directory known (set data_directory to reload a server)")
            }
        }
        out.insert("msg".into(), msg.into());
        Ok(out)
    }
}

/// The validated changes, computed before the file is read, so bad input touches nothing.
struct Plan {
    changes: Vec<Change>,
    exclusive: Option<Vec<Rule>>,
}

impl Plan {
    fn build(p: &Params, version: Option<ServerVersion>) -> Result<Plan, Failure> {
        let top_level: Vec<&str> = [
            ("type", p.rule.conn_type.is_some()),
            ("databases", p.rule.databases.is_some()),
            ("users", p.rule.users.is_some()),
            ("address", p.rule.address.is_some()),
            ("method", p.rule.method.is_some()),
            ("options", p.rule.options.is_some()),
            ("comment", p.rule.comment.is_some()),
            ("anchor", p.rule.anchor.is_some()),
        ]
        .into_iter()
        .filter_map(|(n, set)| set.then_some(n))
        .collect();
        let items: Vec<(String, &RuleParams)> = match &p.rules {
            Some(rules) => {
                if let Some(first) = top_level.first() {
                    return Err(format!("parameters are mutually exclusive: rules|{first}").into());
                }
                rules
                    .iter()
                    .enumerate()
                    .map(|(i, r)| (format!("rules[{i}]"), r))
                    .collect()
            }
            None => vec![(String::new(), &p.rule)],
        };
        let mut changes = Vec::new();
        for (label, item) in items {
            let change = build_change(item, &p.rule, version).map_err(|e| {
                if label.is_empty() {
                    e
                } else {
                    format!("{label}: {e}")
                }
            })?;
            changes.push(change);
        }
        if !p.exclusive {
            return Ok(Plan {
                changes,
                exclusive: None,
            });
        }
        let mut rules = Vec::new();
        for c in changes {
            match c {
                Change::Present { rule, .. } => rules.push(rule),
                Change::Absent { rule } => {
                    return Err(format!("exclusive: true makes the file exactly the listed rules; state: absent has no meaning there (`{rule}`)").into())
                }
            }
        }
        Ok(Plan {
            changes: Vec::new(),
            exclusive: Some(rules),
        })
    }

    fn apply(&self, file: &mut HbaFile) -> Result<Vec<RuleOutcome>, Failure> {
        if let Some(rules) = &self.exclusive {
            return Ok(file.set_exclusive(rules)?);
        }
        self.changes
            .iter()
            .map(|c| file.apply(c).map_err(Failure::from))
            .collect()
    }
}

fn build_change(
    r: &RuleParams,
    top: &RuleParams,
    version: Option<ServerVersion>,
) -> Result<Change, String> {
    let state = r
        .state
        .as_deref()
        .or(top.state.as_deref())
        .unwrap_or("present");
    let conn_type =
        ConnType::parse(r.conn_type.as_deref().unwrap_or("host")).ok_or("invalid type")?;
    let address = match (&r.address, conn_type) {
        (None, ConnType::Local) => None,
        (None, t) => return Err(format!("address is required for {} rules (a CIDR network, an IP address, a host name, all, samehost or samenet)", t.as_str())),
        (Some(a), ConnType::Local) => return Err(format!("address {a:?} is not allowed for local rules (they match Unix-socket connections)")),
        (Some(a), _) => Some(Address::parse_user(a).map_err(|e| format!("invalid address {a:?}: {e}"))?),
    };
    let method = match (&r.method, state) {
        (Some(m), _) => m.clone(),
        (None, "absent") => String::new(),
        (None, _) => {
            return Err("state is present but all of the following are missing: method".into())
        }
    };
    let options = r
        .options
        .iter()
        .flatten()
        .map(|(k, v)| {
            let v = match v {
                Value::String(s) => s.clone(),
                Value::Bool(b) => if *b { "1" } else { "0" }.to_string(),
                Value::Number(n) => n.to_string(),
                other => {
                    return Err(format!(
                        "invalid options {k}={other}: values must be strings, numbers or booleans"
                    ))
                }
            };
            Ok((k.clone(), v))
        })
        .collect::<Result<Vec<_>, String>>()?;
    let rule = Rule {
        conn_type,
        databases: names("databases", r.databases.as_deref())?,
        users: names("users", r.users.as_deref())?,
        address,
        method,
        options,
        comment: r
            .comment
            .clone()
            .filter(|c| !c.trim().is_empty())
            .map(|c| c.trim().to_string()),
    };
    if state == "absent" {
        return Ok(Change::Absent { rule });
    }
    rule.validate(version).map_err(|e| e.to_string())?;
    let anchor = r.anchor.as_ref().or(top.anchor.as_ref());
    let position = match r
        .position
        .as_deref()
        .or(top.position.as_deref())
        .unwrap_or("last")
    {
        "first" => Position::First,
        "last" => Position::Last,
        pos => {
            let a = anchor.ok_or_else(|| {
                format!("position is {pos} but all of the following are missing: anchor")
            })?;
            let sel = selector(a)?;
            if pos == "before" {
                Position::Before(sel)
            } else {
                Position::After(sel)
            }
        }
    };
    Ok(Change::Present { rule, position })
}

fn names(
    field: &'static str,
    items: Option<&[String]>,
) -> Result<Vec<pgshift_core::hba::Token>, String> {
    let items = items
        .map(<[String]>::to_vec)
        .unwrap_or_else(|| vec!["all".into()]);
    pgshift_core::hba::parse_names(field, &items).map_err(|e| e.to_string())
}

fn selector(a: &AnchorParams) -> Result<Selector, String> {
    let sel = Selector {
        conn_type: a.conn_type.as_deref().and_then(ConnType::parse),
        databases: a
            .databases
            .as_deref()
            .map(|d| names("databases", Some(d)))
            .transpose()?,
        users: a
            .users
            .as_deref()
            .map(|u| names("users", Some(u)))
            .transpose()?,
        address: a
            .address
            .as_deref()
            .map(|s| {
                Address::parse_user(s).map_err(|e| format!("invalid anchor address {s:?}: {e}"))
            })
            .transpose()?,
    };
    if sel.conn_type.is_none()
        && sel.databases.is_none()
        && sel.users.is_none()
        && sel.address.is_none()
    {
        return Err("anchor needs at least one of type, databases, users, address".into());
    }
    Ok(sel)
}

fn refuse_16_syntax(
    file: &HbaFile,
    path: &Path,
    version: Option<ServerVersion>,
) -> Result<(), Failure> {
    let v = version.map(|v| v.0).unwrap_or_default();
    if file.has_includes() {
        return Err(format!("{} has include lines, which need PostgreSQL 16 or later; the server is PostgreSQL {v}, so the file is left as it is", path.display()).into());
    }
    if let Some((i, _)) = file.rules().find(|(_, r)| r.needs_16()) {
        return Err(format!(
            "line {} (`{}`) uses a /regex name, which needs PostgreSQL 16 or later; the server is PostgreSQL {v}, so the file is left as it is",
            file.line_of(i),
            file.records[i].text().trim()
        )
        .into());
    }
    Ok(())
}

/// A new file belongs to whoever owns its directory (postgres for /etc/postgresql/...);
/// private inside a data directory, group-readable elsewhere, as Debian lays them out.
fn new_file_ownership(path: &Path, datadir: Option<&DataDir>) -> Result<Ownership, Failure> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let owner = Ownership::of(dir).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    let in_datadir =
        datadir.is_some_and(|dd| fs::canonicalize(&dd.path).ok() == fs::canonicalize(dir).ok());
    Ok(Ownership {
        mode: if in_datadir { 0o600 } else { 0o640 },
        ..owner
    })
}

struct Server<'a> {
    dd: &'a DataDir,
    pm: &'a PostmasterPid,
    login: &'a LoginParams,
}

impl Server<'_> {
    fn connect(&self) -> Result<Client, String> {
        let opts = self.login.connect_options(Some(self.pm))?;
        Client::connect(&opts).map_err(|e| e.to_string())
    }

    /// Asks PostgreSQL to parse the new file (pg_hba_file_rules re-reads it from disk), then
    /// reloads and waits until the server has re-read its configuration.
    fn verify_and_reload(
        &self,
        ctx: &mut Context,
        path: &Path,
        file: &HbaFile,
    ) -> Result<(), String> {
        let mut c = self.connect()?;
        let hba_file: String = c
            .query_one("SELECT current_setting('hba_file')", &[])
            .map_err(|e| e.to_string())?
            .get(0);
        if fs::canonicalize(&hba_file).ok() != fs::canonicalize(path).ok() {
            return Err(format!(
                "the server on {} reads {hba_file}, not {}; set data_directory to the server that uses this file (or reload: false)",
                self.dd.path.display(),
                path.display()
            ));
        }
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
            file.record_at_line(line as usize)
                .map(|i| file.records[i].text())
                .unwrap_or_default()
        };
        for row in &rows {
            let line: i32 = row.get::<_, Option<i32>>(0).unwrap_or_default();
            let loads: bool = row.get(1);
            let error: String = row.get(2);
            if !loads {
                return Err(format!(
                    "PostgreSQL rejected line {line} (`{}`): {error}",
                    line_text(line).trim()
                ));
            }
            ctx.warn(format!(
                "line {line} (`{}`): {error}",
                line_text(line).trim()
            ));
        }
        let loaded: String = c
            .query_one("SELECT pg_conf_load_time()::text", &[])
            .map_err(|e| e.to_string())?
            .get(0);
        self.dd.reload().map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let now: String = c
                .query_one("SELECT pg_conf_load_time()::text", &[])
                .map_err(|e| e.to_string())?
                .get(0);
            if now != loaded {
                break;
            }
            if Instant::now() > deadline {
                return Err(
                    "the server did not re-read its configuration within 10 s of SIGHUP".into(),
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }
}

/// Puts the previous bytes back (or removes a file we created), reloads if a server is there,
/// and returns the failure message saying so.
fn restore(
    path: &Path,
    original: Option<&[u8]>,
    server: Option<&Server>,
    reason: String,
) -> Failure {
    let restored = match original {
        Some(bytes) => atomic::write_atomic(path, bytes, None),
        None => fs::remove_file(path),
    };
    if let Some(s) = server {
        let _ = s.dd.reload();
    }
    match restored {
        Ok(()) => Failure::from(format!(
            "{reason}; the previous {} was restored",
            path.display()
        )),
        Err(e) => Failure::from(format!(
            "{reason}; restoring the previous {} FAILED: {e}",
            path.display()
        )),
    }
}

fn summarize(outcomes: &[RuleOutcome]) -> String {
    let count = |a| outcomes.iter().filter(|o| o.action == a).count();
    format!(
        "{} added, {} updated, {} removed, {} unchanged",
        count(RuleAction::Added),
        count(RuleAction::Updated),
        count(RuleAction::Removed),
        count(RuleAction::Unchanged)
    )
}

fn outcomes_json(file: &HbaFile, outcomes: &[RuleOutcome]) -> Value {
    outcomes
        .iter()
        .map(|o| {
            let line = (o.action != RuleAction::Removed)
                .then(|| file.find(&o.rule).map(|i| file.line_of(i)))
                .flatten();
            json!({"rule": o.rule.to_string(), "action": o.action.as_str(), "line": line})
        })
        .collect()
}
