//! `pgshift.cluster.pgbackrest_repository`: a dedicated pgBackRest repository host reached
//! over TLS. `role: repository` writes the repository's configuration (its stanzas and their
//! database instances), creates the repository directory and new stanzas offline
//! (`stanza-create --no-online`), and schedules backups as systemd timers; `role: database`
//! configures a database host's side (its TLS server, asynchronous archiving to the
//! repository) and sets `archive_command`. Only the keys this module owns are written: foreign
//! keys and comments in pgbackrest.conf survive.

mod conf;
mod database;
mod repository;
mod tls;
mod units;

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use pgshift_core::atomic::{self, Ownership};
use pgshift_core::pgbackrest::DEFAULT_CONFIG;
use pgshift_core::pgconf::check_value;
use pgshift_core::process::{output_text, run_as, Owner};
use pgshift_core::userfile::UserFile;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::args::{Arg, Default, Kind};
use crate::login::LoginParams;
use crate::protocol::{diff, Context, Failure, Module};

/// stanza-create, check and info take seconds; check waits for an archived segment, which
/// pgBackRest itself bounds by archive-timeout (60 s by default).
const PGBACKREST_DEADLINE: std::time::Duration = std::time::Duration::from_secs(600);

const TLS: &[Arg] = &[
    Arg::new("cert", Kind::Path).required(),
    Arg::new("key", Kind::Path).required(),
    Arg::new("ca", Kind::Path).required(),
    Arg::new("port", Kind::Int).default(Default::Int(8432)),
    Arg::new("address", Kind::Str).default(Default::Str("*")),
    Arg::new("name", Kind::Str),
];

const INSTANCE: &[Arg] = &[
    Arg::new("host", Kind::Str).required(),
    Arg::new("name", Kind::Str),
    Arg::new("path", Kind::Path),
    Arg::new("port", Kind::Int).default(Default::Int(5432)),
    Arg::new("config_file", Kind::Path),
];

const STANZA: &[Arg] = &[
    Arg::new("name", Kind::Str).required(),
    Arg::new("instances", Kind::ListOfDicts).suboptions(INSTANCE),
    Arg::new("clients", Kind::List),
    Arg::new("state", Kind::Str)
        .choices(&["present", "absent"])
        .default(Default::Str("present")),
    Arg::new("delete_backups", Kind::Bool).default(Default::Bool(false)),
];

const SCHEDULE: &[Arg] = &[
    Arg::new("type", Kind::Str)
        .required()
        .choices(&["full", "diff", "incr"]),
    Arg::new("on_calendar", Kind::Str).required(),
    Arg::new("stanza", Kind::Str),
];

const SPEC: &[Arg] = &[
    Arg::new("role", Kind::Str)
        .required()
        .choices(&["repository", "database"]),
    Arg::new("state", Kind::Str)
        .choices(&["present", "absent"])
        .default(Default::Str("present")),
    Arg::new("config_file", Kind::Path).default(Default::Str(DEFAULT_CONFIG)),
    Arg::new("user", Kind::Str).default(Default::Str("postgres")),
    Arg::new("tls", Kind::Dict).suboptions(TLS),
    Arg::new("units_dir", Kind::Path).default(Default::Str("/etc/systemd/system")),
    // role: repository
    Arg::new("stanzas", Kind::ListOfDicts).suboptions(STANZA),
    Arg::new("repo_path", Kind::Path).default(Default::Str("/var/lib/pgbackrest")),
    Arg::new("retention_full", Kind::Int).default(Default::Int(2)),
    Arg::new("retention_diff", Kind::Int),
    Arg::new("schedules", Kind::ListOfDicts).suboptions(SCHEDULE),
    // role: database
    Arg::new("stanza", Kind::Str),
    Arg::new("instance", Kind::Str),
    Arg::new("pg_path", Kind::Path),
    Arg::new("pg_port", Kind::Int).default(Default::Int(5432)),
    Arg::new("repository_host", Kind::Str),
    Arg::new("repository_config_file", Kind::Path),
    Arg::new("spool_path", Kind::Path).default(Default::Str("/var/spool/pgbackrest")),
    Arg::new("archive_push_queue_max", Kind::Str).default(Default::Str("4GiB")),
    Arg::new("archive_timeout", Kind::Int).default(Default::Int(5)),
    Arg::new("io_timeout", Kind::Int).default(Default::Int(10)),
    Arg::new("data_directory", Kind::Path),
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
    port: i64,
    address: String,
    name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Instance {
    host: String,
    name: Option<String>,
    path: Option<PathBuf>,
    port: i64,
    config_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stanza {
    name: String,
    instances: Option<Vec<Instance>>,
    clients: Option<Vec<String>>,
    state: String,
    delete_backups: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    #[serde(rename = "type")]
    kind: String,
    on_calendar: String,
    stanza: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    role: String,
    state: String,
    config_file: PathBuf,
    user: String,
    tls: Option<Tls>,
    units_dir: PathBuf,
    stanzas: Option<Vec<Stanza>>,
    repo_path: PathBuf,
    retention_full: i64,
    retention_diff: Option<i64>,
    schedules: Option<Vec<Schedule>>,
    stanza: Option<String>,
    instance: Option<String>,
    pg_path: Option<PathBuf>,
    pg_port: i64,
    repository_host: Option<String>,
    repository_config_file: Option<PathBuf>,
    spool_path: PathBuf,
    archive_push_queue_max: String,
    archive_timeout: i64,
    io_timeout: i64,
    data_directory: Option<PathBuf>,
}

pub struct PgbackrestRepository;

impl Module for PgbackrestRepository {
    const NAME: &'static str = "pgbackrest_repository";
    const SPEC: &'static [Arg] = SPEC;
    const LOGIN: bool = true;
    type Params = Params;

    fn run(
        ctx: &mut Context,
        p: Params,
        login: LoginParams,
    ) -> Result<Map<String, Value>, Failure> {
        check_one_line(&p)?;
        let owner = Owner::lookup(&p.user).map_err(|e| format!("user: {e}"))?;
        if p.io_timeout < 1 || p.archive_timeout < 1 {
            return Err(format!(
                "io_timeout and archive_timeout must be at least 1 second, got {} and {}",
                p.io_timeout, p.archive_timeout
            )
            .into());
        }
        match p.role.as_str() {
            "repository" => repository::run(ctx, &p, &owner),
            _ => database::run(ctx, &p, &owner, &login),
        }
    }
}

/// Options that belong to the other role: naming them is a mistake worth stopping for.
fn refuse_foreign(p: &Params) -> Result<(), Failure> {
    let repository_only = [
        ("stanzas", p.stanzas.is_some()),
        ("schedules", p.schedules.is_some()),
        ("retention_diff", p.retention_diff.is_some()),
    ];
    let database_only = [
        ("stanza", p.stanza.is_some()),
        ("instance", p.instance.is_some()),
        ("pg_path", p.pg_path.is_some()),
        ("repository_host", p.repository_host.is_some()),
        ("repository_config_file", p.repository_config_file.is_some()),
        ("data_directory", p.data_directory.is_some()),
    ];
    let (foreign, other) = if p.role == "repository" {
        (&database_only[..], "database")
    } else {
        (&repository_only[..], "repository")
    };
    let named: Vec<&str> = foreign
        .iter()
        .filter(|(_, set)| *set)
        .map(|(n, _)| *n)
        .collect();
    if named.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} only appl{} to role: {other}, not role: {}",
            named.join(", "),
            if named.len() == 1 { "ies" } else { "y" },
            p.role
        )
        .into())
    }
}

/// pgBackRest matches certificates by DNS name, never by IP address: a host given as an
/// address would fail at the first connection, so it is refused up front.
fn require_host_name(what: &str, host: &str) -> Result<(), Failure> {
    if host
        .trim_matches(['[', ']'])
        .parse::<std::net::IpAddr>()
        .is_ok()
    {
        return Err(format!(
            "{what} is the IP address {host}: pgBackRest checks TLS certificates by host name, not address; give the host name in the certificate (and in /etc/hosts or DNS)"
        )
        .into());
    }
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(format!("{what} {host:?} is not a host name").into());
    }
    Ok(())
}

fn require_name(what: &str, name: &str) -> Result<(), Failure> {
    if pgshift_core::pgbackrest::valid_name(name) {
        Ok(())
    } else {
        Err(format!("{what} {name:?} may only hold letters, digits, '_', '-' and '.'").into())
    }
}

/// A directory pgBackRest writes to (repository, spool): created for `owner` (0750) when
/// missing; an existing one must already be the owner's, we never take over someone's data.
struct OwnedDir<'a> {
    path: &'a Path,
    exists: bool,
}

impl<'a> OwnedDir<'a> {
    fn check(what: &str, path: &'a Path, owner: &Owner) -> Result<OwnedDir<'a>, Failure> {
        if !path.is_absolute() {
            return Err(format!("{what} must be an absolute path, got {}", path.display()).into());
        }
        match fs::metadata(path) {
            Ok(m) if !m.is_dir() => {
                Err(format!("{what} {} exists and is not a directory", path.display()).into())
            }
            Ok(m) if m.uid() != owner.uid => Err(format!(
                "{what} {} is owned by uid {}, not by {} (uid {}): pgBackRest runs as {} and must own it; chown it or choose another path",
                path.display(),
                m.uid(),
                owner.name,
                owner.uid,
                owner.name
            )
            .into()),
            Ok(_) => Ok(OwnedDir { path, exists: true }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let parent = path.parent().unwrap_or(Path::new("/"));
                if !parent.is_dir() {
                    return Err(format!(
                        "{what} {}: its parent directory {} does not exist",
                        path.display(),
                        parent.display()
                    )
                    .into());
                }
                Ok(OwnedDir {
                    path,
                    exists: false,
                })
            }
            Err(e) => Err(format!("cannot inspect {what} {}: {e}", path.display()).into()),
        }
    }

    fn create(&self, owner: &Owner) -> Result<bool, Failure> {
        if self.exists {
            return Ok(false);
        }
        fs::create_dir(self.path)
            .and_then(|_| fs::set_permissions(self.path, fs::Permissions::from_mode(0o750)))
            .and_then(|_| {
                nix::unistd::chown(self.path, Some(owner.uid.into()), Some(owner.gid.into()))
                    .map_err(io::Error::from)
            })
            .map_err(|e| format!("cannot create {}: {e}", self.path.display()))?;
        Ok(true)
    }
}

/// The configuration file's new text and whether it differs, plus its diff.
struct ConfigChange {
    before: Option<String>,
    after: String,
}

impl ConfigChange {
    fn changed(&self) -> bool {
        self.before.as_deref() != Some(self.after.as_str())
    }

    fn diff(&self, path: &Path) -> Value {
        diff(
            &path.display().to_string(),
            self.before.as_deref().unwrap_or_default().as_bytes(),
            self.after.as_bytes(),
        )
    }

    /// Writes the file (0640, the pgBackRest user's, readable by nobody else: it may hold
    /// cipher passphrases) and its directory when missing.
    fn write(&self, path: &Path, owner: &Owner) -> Result<(), Failure> {
        if !self.changed() {
            return Ok(());
        }
        if let Some(dir) = path.parent() {
            if !dir.is_dir() {
                fs::create_dir_all(dir)
                    .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            }
        }
        let own = Ownership {
            uid: owner.uid,
            gid: owner.gid,
            mode: 0o640,
        };
        // A link is followed: its target is replaced, the link stays.
        let target = UserFile::in_new_dir("config_file", path)?;
        atomic::write_atomic(&target.real, self.after.as_bytes(), Some(own))
            .map_err(|e| format!("cannot write {}: {e}", path.display()).into())
    }
}

/// pgbackrest.conf (or its link's target): a regular file, read bounded; `None` when new.
fn read_config(path: &Path) -> Result<Option<String>, Failure> {
    Ok(UserFile::in_new_dir("config_file", path)?.read_text(MAX_CONFIG)?)
}

/// pgbackrest.conf is a few kilobytes; more is not one.
const MAX_CONFIG: u64 = 16 * 1024 * 1024;

/// Every string that ends up in pgbackrest.conf (an INI file) or a systemd unit is one line:
/// a line break would add keys or directives of the caller's choosing.
fn check_one_line(p: &Params) -> Result<(), Failure> {
    let path = |v: &PathBuf| v.display().to_string();
    let mut values: Vec<(String, String)> = vec![
        ("config_file".into(), path(&p.config_file)),
        ("user".into(), p.user.clone()),
        ("units_dir".into(), path(&p.units_dir)),
        ("repo_path".into(), path(&p.repo_path)),
        ("spool_path".into(), path(&p.spool_path)),
        (
            "archive_push_queue_max".into(),
            p.archive_push_queue_max.clone(),
        ),
    ];
    let opt = |name: &str, v: &Option<String>| v.clone().map(|v| (name.to_string(), v));
    let opt_path =
        |name: &str, v: &Option<PathBuf>| v.as_ref().map(|v| (name.to_string(), path(v)));
    values.extend(opt("stanza", &p.stanza));
    values.extend(opt("instance", &p.instance));
    values.extend(opt("repository_host", &p.repository_host));
    values.extend(opt_path("pg_path", &p.pg_path));
    values.extend(opt_path(
        "repository_config_file",
        &p.repository_config_file,
    ));
    values.extend(opt_path("data_directory", &p.data_directory));
    if let Some(t) = &p.tls {
        values.push(("tls.cert".into(), path(&t.cert)));
        values.push(("tls.key".into(), path(&t.key)));
        values.push(("tls.ca".into(), path(&t.ca)));
        values.push(("tls.address".into(), t.address.clone()));
        values.extend(opt("tls.name", &t.name));
    }
    for (i, st) in p.stanzas.iter().flatten().enumerate() {
        values.push((format!("stanzas[{i}].name"), st.name.clone()));
        for (j, inst) in st.instances.iter().flatten().enumerate() {
            let at = format!("stanzas[{i}].instances[{j}]");
            values.push((format!("{at}.host"), inst.host.clone()));
            values.extend(opt(&format!("{at}.name"), &inst.name));
            values.extend(opt_path(&format!("{at}.path"), &inst.path));
            values.extend(opt_path(&format!("{at}.config_file"), &inst.config_file));
        }
        for (j, c) in st.clients.iter().flatten().enumerate() {
            values.push((format!("stanzas[{i}].clients[{j}]"), c.clone()));
        }
    }
    for (i, sc) in p.schedules.iter().flatten().enumerate() {
        values.push((
            format!("schedules[{i}].on_calendar"),
            sc.on_calendar.clone(),
        ));
        values.extend(opt(&format!("schedules[{i}].stanza"), &sc.stanza));
    }
    for (what, v) in &values {
        check_value(what, v, "pgbackrest.conf or a systemd unit", false)?;
    }
    let q = &p.archive_push_queue_max;
    let digits = q.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    if digits.is_empty()
        || !digits.bytes().all(|b| b.is_ascii_digit())
        || q.len() - digits.len() > 3
    {
        return Err(format!(
            "archive_push_queue_max {q:?} is not a size: a number with an optional unit (e.g. 4GiB)"
        )
        .into());
    }
    Ok(())
}

/// Runs `pgbackrest --config=<file> <args>` as the pgBackRest user; its output on failure.
fn pgbackrest(config: &Path, owner: &Owner, args: &[&str]) -> Result<String, String> {
    let mut cmd = Command::new("pgbackrest");
    cmd.arg(format!("--config={}", config.display()))
        .args(args)
        .env("LC_ALL", "C");
    let out = run_as(&mut cmd, Some(owner), PGBACKREST_DEADLINE).map_err(|e| {
        format!("cannot run pgbackrest (is the pgbackrest package installed?): {e}")
    })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "pgbackrest {} failed: {}",
            args.join(" "),
            output_text(&out)
        ))
    }
}

/// The result every run reports, filled in by the roles.
fn result(changed: bool, msg: String) -> Map<String, Value> {
    let mut out = Map::new();
    out.insert("changed".into(), changed.into());
    out.insert("msg".into(), msg.into());
    out
}

/// The keys both roles report about files: units written, removed and managed, and (in
/// diff mode) the configuration and each unit before and after.
fn report(
    ctx: &Context,
    out: &mut Map<String, Value>,
    config_file: &Path,
    config: &ConfigChange,
    units: &units::Plan,
    managed: &units::Units,
) {
    let written: Vec<&PathBuf> = units.write.iter().map(|(path, _, _)| path).collect();
    let removed: Vec<&PathBuf> = units.remove.iter().map(|(path, _)| path).collect();
    out.insert("units_written".into(), json!(written));
    out.insert("units_removed".into(), json!(removed));
    out.insert("units".into(), json!(managed.keys().collect::<Vec<_>>()));
    if !ctx.diff {
        return;
    }
    let mut d = Vec::new();
    if config.changed() {
        d.push(config.diff(config_file));
    }
    for (path, text, before) in &units.write {
        let before = before.as_deref().unwrap_or_default();
        d.push(diff(
            &path.display().to_string(),
            before.as_bytes(),
            text.as_bytes(),
        ));
    }
    for (path, text) in &units.remove {
        d.push(diff(&path.display().to_string(), text.as_bytes(), b""));
    }
    if !d.is_empty() {
        out.insert("diff".into(), json!(d));
    }
}
