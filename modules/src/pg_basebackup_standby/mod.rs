//! `pgshift.cluster.pg_basebackup_standby`: turns an empty host into a streaming standby of a
//! primary (slot, pg_basebackup or a restore from the pgBackRest repository, passfile,
//! primary_conninfo, standby.signal, start, wait until streaming), converges an existing
//! standby of the same primary, and never touches a live primary: after a failover the
//! inventory may be stale, and a re-run must not destroy it.

mod undo;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use pgshift_core::atomic::{self, Ownership};
use pgshift_core::datadir::{DataDir, PostmasterPid};
use pgshift_core::pg::replication::{ReplicationConn, SystemId};
use pgshift_core::pg::{Client, ConnectOptions, SqlState};
use pgshift_core::pgconf::{check_value, conf_get, pgpass_lookup, pgpass_merge};
use pgshift_core::process::{output_text, run_as, Owner};
use pgshift_core::standby::{
    self, move_aside, prepare_target, slot::is_valid_slot_name, BaseBackup, NewDir, ReplicationTls,
    Restore, Upstream,
};
use pgshift_core::userfile::UserFile;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::args::{Arg, Default, Kind};
use crate::login::{LoginParams, TLS_ARGS};
use crate::protocol::{diff, Context, Failure, Module};
use undo::{Step, Undo};

/// A passfile is a few lines; postgresql.auto.conf a few settings.
const MAX_PASSFILE: u64 = 1024 * 1024;
const MAX_AUTO_CONF: u64 = 16 * 1024 * 1024;

/// A base backup copies the whole cluster: generous, but not forever (a primary that
/// stops sending keeps pg_basebackup waiting without end).
const BASEBACKUP_DEADLINE: Duration = Duration::from_secs(12 * 3600);

const SPEC: &[Arg] = &[
    Arg::new("primary_host", Kind::Str),
    Arg::new("primary_port", Kind::Int).default(Default::Int(5432)),
    Arg::new("replication_user", Kind::Str).default(Default::Str("replicator")),
    Arg::new("replication_password", Kind::Str).no_log(),
    Arg::new("passfile", Kind::Path),
    Arg::new("data_directory", Kind::Path).required(),
    Arg::new("slot_name", Kind::Str),
    Arg::new("create_slot", Kind::Bool).default(Default::Bool(true)),
    Arg::new("application_name", Kind::Str),
    TLS_ARGS[0],
    TLS_ARGS[1],
    TLS_ARGS[2],
    TLS_ARGS[3],
    Arg::new("pg_bin_dir", Kind::Path),
    Arg::new("owner", Kind::Str).default(Default::Str("postgres")),
    Arg::new("max_rate", Kind::Str),
    Arg::new("method", Kind::Str)
        .choices(&["basebackup", "pgbackrest"])
        .default(Default::Str("basebackup")),
    Arg::new("stanza", Kind::Str).default(Default::Str("main")),
    Arg::new("pgbackrest_bin", Kind::Path).default(Default::Str("/usr/bin/pgbackrest")),
    Arg::new("pgbackrest_config", Kind::Path),
    Arg::new("start", Kind::Bool).default(Default::Bool(true)),
    Arg::new("wait_streaming", Kind::Int).default(Default::Int(60)),
    Arg::new("force_rebuild", Kind::Bool).default(Default::Bool(false)),
    Arg::new("force", Kind::Bool).default(Default::Bool(false)),
    Arg::new("state", Kind::Str)
        .choices(&["present", "absent"])
        .default(Default::Str("present")),
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    primary_host: Option<String>,
    primary_port: i64,
    replication_user: String,
    replication_password: Option<String>,
    passfile: Option<PathBuf>,
    data_directory: PathBuf,
    slot_name: Option<String>,
    create_slot: bool,
    application_name: Option<String>,
    ssl_mode: String,
    ca_cert: Option<PathBuf>,
    ssl_cert: Option<PathBuf>,
    ssl_key: Option<PathBuf>,
    pg_bin_dir: Option<PathBuf>,
    owner: String,
    max_rate: Option<String>,
    method: String,
    stanza: String,
    pgbackrest_bin: PathBuf,
    pgbackrest_config: Option<PathBuf>,
    start: bool,
    wait_streaming: i64,
    force_rebuild: bool,
    force: bool,
    state: String,
}

impl Params {
    /// `method: pgbackrest`: copies come from the pgBackRest repository.
    fn restores(&self) -> bool {
        self.method == "pgbackrest"
    }
}

/// What to do with the data directory.
#[derive(Debug, PartialEq, Eq)]
enum Plan {
    /// Missing or empty: base backup into it.
    Build,
    /// Already a standby of this primary: converge settings only.
    Converge,
    /// Holds something else; `force_rebuild` moves it aside, then Build.
    MoveAsideAndBuild(String),
    /// A former primary of this cluster, with `method: pgbackrest` and `force_rebuild`: a
    /// delta restore in place copies only the files that differ.
    DeltaRestore(String),
}

/// Everything resolved from the params before anything is touched.
struct Setup {
    dd: DataDir,
    owner: Owner,
    bin: PathBuf,
    debian: Option<(String, String)>,
    repl: ReplicationConn,
    /// How this standby reaches the primary (primary_conninfo, the base backup).
    upstream: Upstream,
    host: String,
    port: u16,
    slot: String,
    passfile: UserFile,
    /// The passfile as read before anything changed.
    passfile_text: String,
}

pub struct PgBasebackupStandby;

impl Module for PgBasebackupStandby {
    const NAME: &'static str = "pg_basebackup_standby";
    const SPEC: &'static [Arg] = SPEC;
    const LOGIN: bool = false;
    type Params = Params;

    fn run(ctx: &mut Context, p: Params, _: LoginParams) -> Result<Map<String, Value>, Failure> {
        let s = Setup::resolve(&p)?;
        let mut out = Map::new();
        out.insert(
            "data_directory".into(),
            s.dd.path.display().to_string().into(),
        );
        out.insert("slot_name".into(), s.slot.clone().into());
        out.insert("pg_bin_dir".into(), s.bin.display().to_string().into());
        if let Some((v, c)) = &s.debian {
            out.insert("debian_cluster".into(), format!("{v}/{c}").into());
        }
        if p.state == "absent" {
            return absent(ctx, &p, &s, out);
        }
        present(ctx, &p, &s, out)
    }
}

impl Setup {
    /// Resolves and checks every option before anything is read from the primary or
    /// written: values that land in a connection string, postgresql.auto.conf or the
    /// passfile, every file the run will need, and the passfile's entry when no password is
    /// given (a bad passfile found after the base backup would leave a slot and a full
    /// data directory behind).
    fn resolve(p: &Params) -> Result<Setup, Failure> {
        let host = p
            .primary_host
            .clone()
            .filter(|h| !h.trim().is_empty())
            .ok_or("missing required arguments: primary_host")?;
        check_value("primary_host", &host, "a connection string", false)?;
        if host.contains(char::is_whitespace) {
            return Err(format!("primary_host {host:?} is not a host name or address").into());
        }
        let port = u16::try_from(p.primary_port)
            .ok()
            .filter(|&x| x > 0)
            .ok_or_else(|| format!("primary_port {} is not a TCP port", p.primary_port))?;
        if p.replication_user.is_empty() {
            return Err("replication_user must not be empty".into());
        }
        check_value(
            "replication_user",
            &p.replication_user,
            "a connection string",
            false,
        )?;
        if let Some(pw) = &p.replication_password {
            if pw.is_empty() {
                return Err(
                    "replication_password must not be empty (omit it to use the passfile's entry)"
                        .into(),
                );
            }
            check_value("replication_password", pw, "the passfile", true)?;
        }
        if let Some(a) = &p.application_name {
            check_value("application_name", a, "primary_conninfo", false)?;
        }
        if let Some(rate) = &p.max_rate {
            let digits = rate.trim_end_matches(['k', 'M']);
            if digits.is_empty()
                || !digits.bytes().all(|b| b.is_ascii_digit())
                || rate.len() - digits.len() > 1
            {
                return Err(format!(
                    "max_rate {rate:?} is not a transfer rate: a number of kB/s, optionally with k or M (e.g. 100M)"
                )
                .into());
            }
        }
        if p.restores() {
            if !pgshift_core::pgbackrest::valid_name(&p.stanza) {
                return Err(format!(
                    "stanza {:?} is not a pgBackRest stanza name (letters, digits, - _ .)",
                    p.stanza
                )
                .into());
            }
            if let Some(c) = &p.pgbackrest_config {
                UserFile::existing("pgbackrest_config", c)?;
                check_value(
                    "pgbackrest_config",
                    &c.display().to_string(),
                    "restore_command",
                    false,
                )?;
            }
            if UserFile::existing("pgbackrest_bin", &p.pgbackrest_bin).is_err() {
                return Err(format!(
                    "no pgbackrest at {} (install pgBackRest or set pgbackrest_bin)",
                    p.pgbackrest_bin.display()
                )
                .into());
            }
        }
        if p.wait_streaming < 0 {
            return Err(format!(
                "wait_streaming must be 0 (do not wait) or a number of seconds, got {}",
                p.wait_streaming
            )
            .into());
        }
        for (option, path) in [
            ("ca_cert", &p.ca_cert),
            ("ssl_cert", &p.ssl_cert),
            ("ssl_key", &p.ssl_key),
        ] {
            if let Some(path) = path {
                UserFile::existing(option, path)?;
                check_value(
                    option,
                    &path.display().to_string(),
                    "primary_conninfo",
                    false,
                )?;
            }
        }
        let owner = Owner::lookup(&p.owner).map_err(|e| format!("owner: {e}"))?;
        if !p.data_directory.is_absolute() {
            return Err(format!(
                "data_directory must be an absolute path, got {}",
                p.data_directory.display()
            )
            .into());
        }
        if fs::metadata(&p.data_directory).is_ok_and(|m| !m.is_dir()) {
            return Err(format!(
                "data_directory {} exists and is not a directory",
                p.data_directory.display()
            )
            .into());
        }
        let dd = DataDir::new(&p.data_directory);
        for f in [
            "postgresql.auto.conf",
            "postmaster.pid",
            "PG_VERSION",
            "standby.signal",
        ] {
            UserFile::in_new_dir("a file in data_directory", &dd.path.join(f))?;
        }
        let bin = match &p.pg_bin_dir {
            Some(b) => b.clone(),
            None => detect_bin_dir(&dd)?,
        };
        if UserFile::existing("pg_bin_dir", &bin.join("pg_basebackup")).is_err() {
            return Err(format!("no pg_basebackup in {} (set pg_bin_dir)", bin.display()).into());
        }
        let hostname = nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().to_string())
            .unwrap_or_else(|_| "standby".into());
        let app_name = p.application_name.clone().unwrap_or(hostname);
        // The member's slot by the one rule the agent uses too (core::standby::slot).
        let slot = match &p.slot_name {
            Some(s) => s.clone(),
            None => standby::slot_name(&app_name),
        };
        if !is_valid_slot_name(&slot) {
            return Err(
                format!("invalid slot_name {slot:?}: use 1 to 63 of a-z, 0-9 and _").into(),
            );
        }
        let passfile = p
            .passfile
            .clone()
            .unwrap_or_else(|| owner.home.join(".pgpass"));
        check_value(
            "passfile",
            &passfile.display().to_string(),
            "primary_conninfo",
            false,
        )?;
        let pass = UserFile::resolve("passfile", &passfile)?;
        if let Some(m) = &pass.meta {
            if m.uid() != owner.uid {
                return Err(format!(
                    "passfile {} is owned by uid {}, not by {} (uid {}), who reads it for the standby; chown it or choose another passfile",
                    passfile.display(),
                    m.uid(),
                    owner.name,
                    owner.uid
                )
                .into());
            }
        }
        let passfile_text = pass.read_text(MAX_PASSFILE)?.unwrap_or_default();
        if p.replication_password.is_none()
            && pgpass_lookup(
                &passfile_text,
                &host,
                port,
                "replication",
                &p.replication_user,
            )
            .is_none()
        {
            return Err(format!(
                "passfile {} has no entry for {host}:{port}, database replication, user {} and no replication_password is given; give replication_password or add the entry",
                passfile.display(),
                p.replication_user
            )
            .into());
        }
        let upstream = Upstream {
            host: host.clone(),
            port,
            user: p.replication_user.clone(),
            passfile: Some(passfile.clone()),
            tls: ReplicationTls {
                sslmode: p.ssl_mode.clone(),
                sslrootcert: p.ca_cert.clone(),
                sslcert: p.ssl_cert.clone(),
                sslkey: p.ssl_key.clone(),
            },
            application_name: app_name,
        };
        let repl = ReplicationConn {
            bin_dir: bin.clone(),
            // Without a password every connection, psql's included, uses the passfile.
            params: upstream.tool_params(p.replication_password.is_none()),
            password: p.replication_password.clone(),
            owner: Some(owner.clone()),
        };
        let debian = dd.debian_cluster(Path::new("/etc/postgresql"));
        Ok(Setup {
            dd,
            owner,
            bin,
            debian,
            repl,
            upstream,
            host,
            port,
            slot,
            passfile: pass,
            passfile_text,
        })
    }

    fn primary(&self) -> Result<SystemId, Failure> {
        self.repl.identify_system().map_err(|e| {
            format!("cannot reach the primary at {}: {e}", self.repl.describe()).into()
        })
    }

    /// The local server's role, when it runs: true = in recovery (a standby).
    fn local_in_recovery(&self, pm: &PostmasterPid) -> Result<bool, Failure> {
        let mut c = self.local_client(pm)?;
        Ok(c.query_one("SELECT pg_is_in_recovery()", &[])?.get(0))
    }

    fn local_client(&self, pm: &PostmasterPid) -> Result<Client, Failure> {
        let opts = ConnectOptions {
            user: self.owner.name.clone(),
            unix_socket: pm.socket_dir.clone(),
            port: pm.port,
            ..ConnectOptions::default()
        };
        Ok(Client::connect(&opts)?)
    }

    /// pg_ctlcluster for a Debian cluster, pg_ctl otherwise.
    fn ctl(&self, action: &str) -> Result<(), Failure> {
        let mut cmd;
        match &self.debian {
            Some((version, cluster)) => {
                cmd = Command::new("pg_ctlcluster");
                cmd.args([version.as_str(), cluster.as_str(), action]);
                if action == "stop" {
                    cmd.args(["-m", "fast"]);
                }
            }
            None => {
                cmd = Command::new(self.bin.join("pg_ctl"));
                cmd.args(["-D"])
                    .arg(&self.dd.path)
                    .args(["-w", "-t", "120"]);
                if action == "start" {
                    cmd.arg("-l").arg(self.dd.path.join("startup.log"));
                } else {
                    cmd.args(["-m", "fast"]);
                }
                cmd.arg(action);
            }
        }
        // pg_ctl's own -t 120 ends first; this only guards against pg_ctl itself hanging.
        let out = run_as(&mut cmd, Some(&self.owner), Duration::from_secs(180))
            .map_err(|e| format!("cannot run {action} for {}: {e}", self.dd.path.display()))?;
        if !out.status.success() {
            // pg_ctl's log lives in the data directory, which a failed build removes: keep
            // its last lines in the message.
            let log = UserFile::in_new_dir("startup.log", &self.dd.path.join("startup.log"))
                .ok()
                .and_then(|f| f.read_text(MAX_AUTO_CONF).ok().flatten())
                .map(|t| {
                    let lines: Vec<&str> = t.lines().collect();
                    format!(
                        " (server log: {})",
                        lines[lines.len().saturating_sub(5)..].join(" | ")
                    )
                })
                .unwrap_or_default();
            return Err(format!(
                "{action} of the server on {} failed: {}{log}",
                self.dd.path.display(),
                output_text(&out)
            )
            .into());
        }
        Ok(())
    }
}

fn present(
    ctx: &mut Context,
    p: &Params,
    s: &Setup,
    mut out: Map<String, Value>,
) -> Result<Map<String, Value>, Failure> {
    let primary = s.primary()?;
    out.insert(
        "system_identifier".into(),
        primary.system_identifier.clone().into(),
    );
    let running = s.dd.postmaster()?;
    let plan = decide(p, s, &primary, running.as_ref())?;
    let slot_exists = s
        .repl
        .slot_exists(&s.slot)
        .map_err(|e| format!("cannot read slot {} on the primary: {e}", s.slot))?;
    let mut actions: Vec<String> = Vec::new();
    if p.create_slot && !slot_exists {
        actions.push(format!("create slot {} on {}", s.slot, s.host));
    }
    let copy = if p.restores() {
        format!(
            "restore of stanza {} from the pgBackRest repository",
            p.stanza
        )
    } else {
        format!("base backup from {}:{}", s.host, s.port)
    };
    match &plan {
        Plan::MoveAsideAndBuild(why) => {
            actions.push(format!("move {} aside ({why})", s.dd.path.display()));
            actions.push(copy);
        }
        Plan::DeltaRestore(why) => actions.push(format!("delta {copy} over {why}")),
        Plan::Build => actions.push(copy),
        Plan::Converge => {}
    }

    let conninfo = s.upstream.primary_conninfo();
    let use_slot = p.create_slot || slot_exists;
    let auto = UserFile::in_new_dir(
        "data_directory's postgresql.auto.conf",
        &s.dd.path.join("postgresql.auto.conf"),
    )?;
    let auto_before = if plan == Plan::Converge {
        auto.read_text(MAX_AUTO_CONF)?.unwrap_or_default()
    } else {
        String::new()
    };
    let slot = use_slot.then_some(s.slot.as_str());
    let auto_after_converge = standby::standby_settings(&auto_before, &conninfo, slot);
    let passfile_before = s.passfile_text.clone();
    let passfile_after = match &p.replication_password {
        Some(pw) => pgpass_merge(
            &passfile_before,
            &s.host,
            s.port,
            "replication",
            &p.replication_user,
            pw,
        ),
        None => passfile_before.clone(),
    };
    // Rewrite when the entry differs, or when an existing passfile is readable by others
    // (libpq ignores a passfile with group/world access).
    let write_passfile = passfile_after != passfile_before
        || (s.passfile.exists() && !mode_is(&s.passfile.real, 0o600));
    if write_passfile {
        actions.push(format!(
            "write the replication entry into {}",
            s.passfile.named.display()
        ));
    }
    let signal = s.dd.path.join("standby.signal");
    if plan == Plan::Converge {
        if auto_after_converge != auto_before {
            actions
                .push("update primary_conninfo/primary_slot_name in postgresql.auto.conf".into());
        }
        if !signal.exists() {
            actions.push("create standby.signal".into());
        }
    } else {
        actions.push("write primary_conninfo, primary_slot_name and standby.signal".into());
    }
    let will_run = running.is_some() && plan == Plan::Converge;
    if p.start && !will_run {
        actions.push("start PostgreSQL".into());
    }
    out.insert("primary_conninfo".into(), conninfo.clone().into());
    out.insert(
        "diff".into(),
        diff(
            &auto.named.display().to_string(),
            auto_before.as_bytes(),
            auto_after_converge.as_bytes(),
        ),
    );
    let changed = !actions.is_empty();
    out.insert("changed".into(), changed.into());
    out.insert("actions".into(), json!(actions));
    if ctx.check_mode || !changed {
        if !changed && p.start && p.wait_streaming > 0 {
            if let Some(pm) = &running {
                wait_streaming(s, pm, p.wait_streaming)?;
            }
        }
        let verb = if changed { "would" } else { "nothing to do:" };
        out.insert(
            "msg".into(),
            format!("{verb} {}", summary(&actions, changed)).into(),
        );
        return Ok(out);
    }

    // From here on, things change, each recorded so that a failure undoes them all.
    // Order: data directory aside, slot, base backup, passfile, settings, start, wait.
    let mut undo = Undo::default();
    let own = Ownership {
        uid: s.owner.uid,
        gid: s.owner.gid,
        mode: 0o600,
    };
    let result = (|| -> Result<(), String> {
        if let Plan::MoveAsideAndBuild(_) = &plan {
            if running.is_some() {
                s.ctl("stop").map_err(|e| e.msg)?;
                undo.push(Step::Stopped);
            }
            let aside = move_aside(&s.dd.path).map_err(|e| e.to_string())?;
            out.insert("moved_aside".into(), aside.display().to_string().into());
            undo.push(Step::MovedAside {
                dir: s.dd.path.clone(),
                aside,
            });
        }
        if p.create_slot && !slot_exists {
            s.repl
                .create_slot(&s.slot)
                .map_err(|e| format!("cannot create slot {} on the primary: {e}", s.slot))?;
            undo.push(Step::Slot);
        }
        match &plan {
            Plan::Converge => {}
            Plan::DeltaRestore(_) => restore(p, s, true, &mut undo).map_err(|e| e.msg)?,
            _ if p.restores() => restore(p, s, false, &mut undo).map_err(|e| e.msg)?,
            _ => base_backup(p, s, use_slot, &mut undo).map_err(|e| e.msg)?,
        }
        if write_passfile {
            undo.push(Step::File {
                path: s.passfile.real.clone(),
                before: s
                    .passfile
                    .exists()
                    .then(|| passfile_before.clone().into_bytes()),
                own,
            });
            atomic::write_atomic(&s.passfile.real, passfile_after.as_bytes(), Some(own))
                .map_err(|e| format!("cannot write {}: {e}", s.passfile.named.display()))?;
        }
        // Checked above (UserFile) not to lead outside the data directory.
        let before = standby::write_replication_settings(&s.dd.path, &conninfo, slot, own)
            .map_err(|e| e.to_string())?;
        if let Some(before) = before {
            undo.push(Step::File {
                path: auto.real.clone(),
                before,
                own,
            });
            if let (Plan::Converge, Some(_)) = (&plan, &running) {
                // primary_conninfo and primary_slot_name are reloadable since PostgreSQL 13.
                s.dd.reload().map_err(|e| e.to_string())?;
                undo.push(Step::Reloaded);
            }
        }
        if standby::write_signal(&s.dd.path, own).map_err(|e| e.to_string())? {
            undo.push(Step::File {
                path: signal.clone(),
                before: None,
                own,
            });
        }
        let running = if will_run { running.clone() } else { None };
        let running = match (running, p.start) {
            (Some(pm), _) => Some(pm),
            (None, true) => {
                s.ctl("start").map_err(|e| e.msg)?;
                undo.push(Step::Started);
                s.dd.postmaster().map_err(|e| e.to_string())?
            }
            (None, false) => None,
        };
        if let (Some(pm), true) = (&running, p.wait_streaming > 0) {
            wait_streaming(s, pm, p.wait_streaming).map_err(|e| e.msg)?;
            out.insert("streaming".into(), true.into());
        }
        Ok(())
    })();
    if let Err(why) = result {
        return Err(undo.fail(s, why));
    }
    out.insert("msg".into(), summary(&actions, true).into());
    let now = auto
        .read_text(MAX_AUTO_CONF)
        .ok()
        .flatten()
        .unwrap_or_default();
    if conf_get(&now, "primary_conninfo").is_none() {
        ctx.warn("primary_conninfo is not set in postgresql.auto.conf after the run");
    }
    Ok(out)
}

fn decide(
    p: &Params,
    s: &Setup,
    primary: &SystemId,
    running: Option<&PostmasterPid>,
) -> Result<Plan, Failure> {
    let dir = s.dd.path.display();
    if let Some(pm) = running {
        if !s.local_in_recovery(pm)? {
            return Err(format!(
                "{dir} is served by a running primary (not in recovery); refusing to turn it into a standby, even with force_rebuild (after a failover the inventory may be stale)"
            )
            .into());
        }
    }
    if s.dd.is_missing_or_empty() {
        return Ok(Plan::Build);
    }
    if !s.dd.path.join("PG_VERSION").is_file() {
        let why = format!("{dir} is not empty and holds no PostgreSQL cluster");
        return if p.force_rebuild {
            Ok(Plan::MoveAsideAndBuild(why))
        } else {
            Err(format!("{why}; set force_rebuild: true to move it aside and rebuild").into())
        };
    }
    let local = s.dd.control_data(&s.bin)?;
    if local.system_identifier != primary.system_identifier {
        let why = format!(
            "{dir} holds another cluster (system identifier {}, the primary's is {})",
            local.system_identifier, primary.system_identifier
        );
        return if p.force_rebuild {
            Ok(Plan::MoveAsideAndBuild(why))
        } else {
            Err(format!(
                "{why}; set force_rebuild: true to move it aside (it is never deleted) and rebuild"
            )
            .into())
        };
    }
    let standby = running.is_some() || s.dd.path.join("standby.signal").exists();
    if !standby {
        let why = format!(
            "{dir} belongs to the primary's cluster but is not a standby (no standby.signal, state {:?}): a former primary needs pg_rewind",
            local.state
        );
        return match (p.force_rebuild, p.restores()) {
            (true, true) => Ok(Plan::DeltaRestore(format!(
                "{dir}, a former primary of this cluster"
            ))),
            (true, false) => Ok(Plan::MoveAsideAndBuild(why)),
            (false, true) => Err(format!(
                "{why}, or set force_rebuild: true to restore over it with --delta"
            )
            .into()),
            (false, false) => Err(format!(
                "{why}, or set force_rebuild: true to move it aside and rebuild"
            )
            .into()),
        };
    }
    Ok(Plan::Converge)
}

/// The empty (or new) data directory ready for a copy, and what a failure removes (or
/// empties again) recorded before anything is copied.
fn prepare_empty_dir(s: &Setup, undo: &mut Undo) -> Result<(), Failure> {
    match prepare_target(&s.dd.path, &s.owner) {
        Ok(NewDir::Created { top }) => undo.push(Step::CreatedDir(top)),
        Ok(NewDir::Existing) => undo.push(Step::FilledDir(s.dd.path.clone())),
        Err(e) => return Err(e.to_string().into()),
    }
    Ok(())
}

fn base_backup(p: &Params, s: &Setup, use_slot: bool, undo: &mut Undo) -> Result<(), Failure> {
    prepare_empty_dir(s, undo)?;
    BaseBackup {
        bin_dir: &s.bin,
        target: &s.dd.path,
        upstream: &s.upstream,
        password: p.replication_password.as_deref(),
        slot: use_slot.then_some(s.slot.as_str()),
        max_rate: p.max_rate.as_deref(),
        owner: &s.owner,
        deadline: BASEBACKUP_DEADLINE,
        cancel: None,
    }
    .run()
    .map_err(|e| e.to_string().into())
}

/// `pgbackrest restore --type=standby` of the latest backup: into the empty (or new)
/// directory, which a failure empties or removes again; or, `delta`, over a stopped former
/// primary of this cluster, which a failure cannot give back (a re-run finishes it).
fn restore(p: &Params, s: &Setup, delta: bool, undo: &mut Undo) -> Result<(), Failure> {
    if !delta {
        prepare_empty_dir(s, undo)?;
    }
    Restore {
        program: &p.pgbackrest_bin,
        config: p.pgbackrest_config.as_deref(),
        stanza: &p.stanza,
        target: &s.dd.path,
        delta,
        owner: &s.owner,
        deadline: BASEBACKUP_DEADLINE,
        cancel: None,
    }
    .run()
    .map_err(|e| {
        let left = if delta {
            " (the data directory is partly restored: run again to finish)"
        } else {
            ""
        };
        format!("{e}{left}").into()
    })
}

fn wait_streaming(s: &Setup, pm: &PostmasterPid, timeout: i64) -> Result<(), Failure> {
    let deadline = Instant::now() + Duration::from_secs(timeout.max(1) as u64);
    let mut last = String::from("no WAL receiver");
    loop {
        if let Ok(mut c) = s.local_client(pm) {
            if let Ok(rows) = c.query("SELECT status FROM pg_stat_wal_receiver", &[]) {
                match rows.first() {
                    Some(r) if r.get::<_, String>(0) == "streaming" => return Ok(()),
                    Some(r) => last = format!("WAL receiver {}", r.get::<_, String>(0)),
                    None => {}
                }
            }
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the standby on {} is not streaming after {timeout} s ({last}); see its server log",
                s.dd.path.display()
            )
            .into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn absent(
    ctx: &mut Context,
    p: &Params,
    s: &Setup,
    mut out: Map<String, Value>,
) -> Result<Map<String, Value>, Failure> {
    let exists = s
        .repl
        .slot_exists(&s.slot)
        .map_err(|e| format!("cannot reach the primary at {}: {e}", s.repl.describe()))?;
    out.insert("changed".into(), exists.into());
    if !exists {
        out.insert(
            "msg".into(),
            format!("no slot {} on {}", s.slot, s.host).into(),
        );
        return Ok(out);
    }
    if ctx.check_mode {
        out.insert(
            "msg".into(),
            format!("would drop slot {} on {}", s.slot, s.host).into(),
        );
        return Ok(out);
    }
    if let Err(e) = s.repl.drop_slot(&s.slot, false) {
        // 55006 object_in_use: a WAL sender holds the slot.
        if !e.is(&SqlState::OBJECT_IN_USE) {
            return Err(format!("cannot drop slot {} on {}: {e}", s.slot, s.host).into());
        }
        if !p.force {
            return Err(format!(
                "slot {} on {} is in use by a standby ({e}); stop that standby or set force: true",
                s.slot, s.host
            )
            .into());
        }
        // Forced: stop this host's standby (never a primary), then wait for the slot to free.
        if let Some(pm) = s.dd.postmaster()? {
            if !s.local_in_recovery(&pm)? {
                return Err(
                    format!("{} runs as a primary; not stopping it", s.dd.path.display()).into(),
                );
            }
            s.ctl("stop")?;
            out.insert("stopped".into(), true.into());
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while let Err(e) = s.repl.drop_slot(&s.slot, false) {
            if !e.is(&SqlState::OBJECT_IN_USE) {
                return Err(format!("cannot drop slot {} on {}: {e}", s.slot, s.host).into());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "slot {} on {} is still in use after 30 s: {e}",
                    s.slot, s.host
                )
                .into());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    out.insert(
        "msg".into(),
        format!("dropped slot {} on {}", s.slot, s.host).into(),
    );
    Ok(out)
}

fn summary(actions: &[String], changed: bool) -> String {
    if changed {
        actions.join("; ")
    } else {
        "the standby is as requested".into()
    }
}

fn mode_is(path: &Path, mode: u32) -> bool {
    fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o7777 == mode)
        .unwrap_or(false)
}

/// /usr/lib/postgresql/<major>/bin for the data directory's version, else the newest installed.
fn detect_bin_dir(dd: &DataDir) -> Result<PathBuf, String> {
    let base = Path::new("/usr/lib/postgresql");
    if let Some(v) = dd.major_version() {
        return Ok(base.join(v.to_string()).join("bin"));
    }
    let mut versions: Vec<u32> = fs::read_dir(base)
        .map_err(|e| {
            format!(
                "cannot find PostgreSQL binaries in {}: {e} (set pg_bin_dir)",
                base.display()
            )
        })?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|v: &u32| base.join(v.to_string()).join("bin/pg_basebackup").is_file())
        .collect();
    versions.sort();
    versions
        .last()
        .map(|v| base.join(v.to_string()).join("bin"))
        .ok_or_else(|| "no PostgreSQL binaries under /usr/lib/postgresql (set pg_bin_dir)".into())
}
