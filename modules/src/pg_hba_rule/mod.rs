//! `pgshift.cluster.pg_hba_rule`: add, update or remove pg_hba.conf rules without reordering
//! the file, validate before writing, reload the server and prove it accepted the result.

mod verify;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use pgshift_core::atomic::{self, Ownership, Replacement};
use pgshift_core::datadir::DataDir;
use pgshift_core::hba::{
    Address, Change, ConnType, HbaFile, Position, Rule, RuleAction, RuleOutcome, Selector,
    ServerVersion,
};
use pgshift_core::userfile::UserFile;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::args::{Arg, Default, Kind};
use crate::login::LoginParams;
use crate::protocol::{diff, Context, Failure, Module};
use verify::Server;

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

/// The largest pg_hba.conf the module reads. Real files are kilobytes; this leaves room for
/// generated ones while bounding memory (about 1.5x the file, see `core::hba::file`).
const MAX_HBA_BYTES: u64 = 256 * 1024 * 1024;

/// How long another process may hold the file's advisory lock before the task gives up.
const LOCK_WAIT: Duration = Duration::from_secs(10);

/// Above this size the diff shows the changed rules only, not the whole file twice.
const FULL_DIFF_BYTES: usize = 1024 * 1024;

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
        // Everything the task was given is checked before the file is even opened.
        let target = UserFile::resolve("path", &p.path)?;
        let datadir = find_datadir(&p)?;
        let version = datadir
            .as_ref()
            .and_then(DataDir::major_version)
            .map(ServerVersion);
        let plan = Plan::build(&p, version)?;
        login.check_files()?;
        if !target.exists() && !p.create {
            return Err(format!(
                "path {} does not exist; set create: true to create it",
                p.path.display()
            )
            .into());
        }

        // Read under the file's advisory lock, held until the task ends.
        let (_lock, original) = target.read_locked(MAX_HBA_BYTES, LOCK_WAIT)?;
        let existed = original.is_some();
        let mut file = HbaFile::parse(original.unwrap_or_default())?;
        if !file.looks_like_hba() {
            return Err(format!(
                "path {} is not a pg_hba.conf: no line in it is a rule, a comment or blank; refusing to edit it",
                target.named.display()
            )
            .into());
        }
        let source_len = file.source().len();
        let before = source_len
            .le(&FULL_DIFF_BYTES)
            .then(|| file.source().to_vec());
        let outcomes = plan.apply(&mut file)?;
        check_version(ctx, &file, &p.path, version)?;
        // A missing file changes when it gets content; an existing one when its bytes do.
        let changed = if existed {
            !file.renders_as(file.source())
        } else {
            !file.is_empty()
        };
        if changed && file.rule_count() == 0 {
            return Err(format!(
                "the result would have no rules: PostgreSQL refuses to load a pg_hba.conf without entries (\"configuration file contains no entries\") and would not start with it; {} is left as it is",
                p.path.display()
            )
            .into());
        }
        for o in outcomes.iter().filter(|o| o.action != RuleAction::Removed) {
            for w in file.warnings_for(&o.rule) {
                ctx.warn(w);
            }
        }

        let mut out = Map::new();
        out.insert("changed".into(), changed.into());
        out.insert("path".into(), p.path.display().to_string().into());
        if target.via_link {
            out.insert("target".into(), target.real.display().to_string().into());
        }
        out.insert("rules".into(), outcomes_json(&file, &outcomes));
        if ctx.diff {
            out.insert(
                "diff".into(),
                file_diff(&p.path, before.as_deref(), &file, &outcomes),
            );
        }
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

        // The server is reached (and shown to read this file) before anything is written.
        let running = match (&datadir, p.reload) {
            (Some(dd), true) => dd.postmaster()?,
            _ => None,
        };
        let connect = running
            .as_ref()
            .map(|pm| verify::connector(&login, pm))
            .transpose()?;
        let mut server = match (&connect, &datadir) {
            (Some(connect), Some(dd)) => Some(Server::connect(dd, connect, &target)?),
            _ => None,
        };

        let ownership = match existed {
            true => None,
            false => Some(new_file_ownership(&target.real, datadir.as_ref())?),
        };
        let original = existed.then(|| file.source());
        let backup_file = match (p.backup, original) {
            (true, Some(bytes)) => Some(
                atomic::backup_of(&target.real, bytes)
                    .map_err(|e| format!("cannot back up {}: {e}", p.path.display()))?,
            ),
            _ => None,
        };
        let drop_backup = || {
            if let Some(b) = &backup_file {
                let _ = fs::remove_file(b);
            }
        };
        // The new file is streamed next to the old one; right before the rename, the old one
        // must still hold what was read (a writer that ignores the lock loses nothing).
        let written = file.sha256();
        let write = || -> Result<(), Failure> {
            let cannot = |e: io::Error| format!("cannot write {}: {e}", p.path.display());
            let mut r = Replacement::new(&target.real, ownership).map_err(cannot)?;
            file.write_to(r.writer()).map_err(cannot)?;
            target.unchanged_since(original)?;
            r.commit().map_err(cannot)?;
            Ok(())
        };
        write().inspect_err(|_| drop_backup())?;
        // Cooperating editors now wait on the new file while the server is checked.
        let _new_lock = target.lock_current(LOCK_WAIT).ok().flatten();
        if let Some(b) = &backup_file {
            out.insert("backup_file".into(), b.display().to_string().into());
        }

        let mut msg = format!("{}: {summary}", p.path.display());
        match (&mut server, &datadir) {
            (Some(server), _) => {
                server.verify_and_reload(ctx, &file).map_err(|e| {
                    drop_backup();
                    verify::restore(&target, original, &written, Some(server.dd), e)
                })?;
                out.insert("reloaded".into(), true.into());
                msg.push_str("; PostgreSQL reloaded and loaded the new file (a new connection sees the reload, pg_hba_file_rules rejects no line)");
            }
            _ if !p.reload => msg.push_str("; not reloaded (reload: false)"),
            (None, Some(dd)) => msg.push_str(&format!(
                "; no server running on {}, nothing reloaded",
                dd.path.display()
            )),
            (None, None) => {
                msg.push_str("; no data directory known (set data_directory to reload a server)")
            }
        }
        out.insert("msg".into(), msg.into());
        Ok(out)
    }
}

/// The data directory whose server reads the file: `data_directory`, else found from the
/// file's location. Every file read on the way must be a regular file (a FIFO named
/// postgresql.conf must not hang the task).
fn find_datadir(p: &Params) -> Result<Option<DataDir>, Failure> {
    let check = |option: &'static str, path: PathBuf| -> Result<(), Failure> {
        UserFile::resolve(option, &path)?;
        Ok(())
    };
    if let Some(dd) = &p.data_directory {
        if !dd.is_absolute() || !dd.is_dir() {
            return Err(format!(
                "data_directory {} is not an absolute path to a directory",
                dd.display()
            )
            .into());
        }
        check("data_directory's PG_VERSION", dd.join("PG_VERSION"))?;
        check("data_directory's postmaster.pid", dd.join("postmaster.pid"))?;
        return Ok(Some(DataDir::new(dd)));
    }
    let Some(dir) = p.path.parent().filter(|d| d.is_absolute() && d.is_dir()) else {
        return Ok(None);
    };
    check("the PG_VERSION beside path", dir.join("PG_VERSION"))?;
    check(
        "the postgresql.conf beside path",
        dir.join("postgresql.conf"),
    )?;
    let dd = DataDir::for_config_file(&p.path);
    if let Some(dd) = &dd {
        if dd.path.is_dir() {
            check(
                "the data directory's PG_VERSION",
                dd.path.join("PG_VERSION"),
            )?;
            check(
                "the data directory's postmaster.pid",
                dd.path.join("postmaster.pid"),
            )?;
        }
    }
    Ok(dd)
}

/// PostgreSQL 16 syntax on an older server: `include` lines are refused (15 rejects the
/// whole file), `/regex` names are warned about (15 reads them as literal names).
fn check_version(
    ctx: &mut Context,
    file: &HbaFile,
    path: &Path,
    version: Option<ServerVersion>,
) -> Result<(), Failure> {
    let Some(v) = version.map(|v| v.0).filter(|v| *v < 16) else {
        return Ok(());
    };
    if file.has_includes() {
        return Err(format!("{} has include lines, which need PostgreSQL 16 or later; the server is PostgreSQL {v}, so the file is left as it is", path.display()).into());
    }
    let mut found = file.rules().filter(|(_, r)| r.needs_16()).map(|(i, r)| {
        (
            file.line_of(i),
            r.regex_names().map(str::to_string).collect::<Vec<_>>(),
        )
    });
    for (line, names) in found.by_ref().take(5) {
        ctx.warn(format!(
            "line {line}: {} start with /, which PostgreSQL {v} reads as literal names, not regular expressions (those need PostgreSQL 16)",
            names.join(", ")
        ));
    }
    let more = found.count();
    if more > 0 {
        ctx.warn(format!("{more} more lines have names starting with /"));
    }
    Ok(())
}

/// Before and after for Ansible's diff: the whole file when it is small, otherwise the
/// rules that change (a 50 MB file twice in the result would defeat bounded memory).
fn file_diff(
    path: &Path,
    before: Option<&[u8]>,
    file: &HbaFile,
    outcomes: &[RuleOutcome],
) -> Value {
    let header = path.display().to_string();
    if let Some(before) = before {
        let after = file.render();
        if after.len() <= FULL_DIFF_BYTES {
            return diff(&header, before, &after);
        }
    }
    let (mut b, mut a) = (String::new(), String::new());
    for o in outcomes {
        let line = format!("{}\n", o.rule);
        match o.action {
            RuleAction::Added => a.push_str(&line),
            RuleAction::Removed => b.push_str(&line),
            RuleAction::Updated => {
                b.push_str(&format!("(old version of) {line}"));
                a.push_str(&line);
            }
            RuleAction::Unchanged => {}
        }
    }
    diff(
        &format!("{header} (large file: changed rules only)"),
        b.as_bytes(),
        a.as_bytes(),
    )
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
        // Not given: an existing rule keeps its comment; "" removes it.
        comment: r.comment.as_ref().map(|c| c.trim().to_string()),
    };
    rule.validate_identity().map_err(|e| e.to_string())?;
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

/// A new file belongs to whoever owns its directory (postgres for /etc/postgresql/...);
/// private inside a data directory, group-readable elsewhere, as Debian lays them out.
fn new_file_ownership(path: &Path, datadir: Option<&DataDir>) -> Result<Ownership, Failure> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let owner = Ownership::of(dir).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    let in_datadir = verify::in_data_directory(datadir, dir);
    Ok(Ownership {
        mode: if in_datadir { 0o600 } else { 0o640 },
        ..owner
    })
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
