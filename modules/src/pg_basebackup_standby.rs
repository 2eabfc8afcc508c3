//! `pgshift.cluster.pg_basebackup_standby`: turns an empty host into a streaming standby of a
//! primary (slot, pg_basebackup, passfile, primary_conninfo, standby.signal, start, wait until
//! streaming), converges an existing standby of the same primary, and never touches a live
//! primary: after a failover the inventory may be stale, and a re-run must not destroy it.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use pgshift_core::atomic::{self, Ownership};
use pgshift_core::datadir::{DataDir, PostmasterPid};
use pgshift_core::pg::replication::{ReplicationConn, SystemId};
use pgshift_core::pg::{Client, ConnectOptions};
use pgshift_core::pgconf::{conf_get, conf_set, conninfo, pgpass_merge};
use pgshift_core::process::{output_text, run_as, Owner, TempPassfile};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::args::{Arg, Default, Kind};
use crate::login::{LoginParams, TLS_ARGS};
use crate::protocol::{diff, Context, Failure, Module};

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
    start: bool,
    wait_streaming: i64,
    force_rebuild: bool,
    force: bool,
    state: String,
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
}

/// Everything resolved from the params before anything is touched.
struct Setup {
    dd: DataDir,
    owner: Owner,
    bin: PathBuf,
    debian: Option<(String, String)>,
    repl: ReplicationConn,
    host: String,
    port: u16,
    slot: String,
    app_name: String,
    passfile: PathBuf,
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
    fn resolve(p: &Params) -> Result<Setup, Failure> {
        let host = p
            .primary_host
            .clone()
            .filter(|h| !h.trim().is_empty())
            .ok_or("missing required arguments: primary_host")?;
        let port = u16::try_from(p.primary_port)
            .ok()
            .filter(|&x| x > 0)
            .ok_or_else(|| format!("primary_port {} is not a TCP port", p.primary_port))?;
        let owner = Owner::lookup(&p.owner)?;
        let dd = DataDir::new(&p.data_directory);
        if !p.data_directory.is_absolute() {
            return Err(format!(
                "data_directory must be an absolute path, got {}",
                p.data_directory.display()
            )
            .into());
        }
        let bin = match &p.pg_bin_dir {
            Some(b) => b.clone(),
            None => detect_bin_dir(&dd)?,
        };
        if !bin.join("pg_basebackup").is_file() {
            return Err(format!("no pg_basebackup in {} (set pg_bin_dir)", bin.display()).into());
        }
        let hostname = nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().to_string())
            .unwrap_or_else(|_| "standby".into());
        let slot = match &p.slot_name {
            Some(s) => s.clone(),
            None => slot_from(&hostname),
        };
        if slot.is_empty()
            || slot.len() > 63
            || !slot
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            return Err(
                format!("invalid slot_name {slot:?}: use 1 to 63 of a-z, 0-9 and _").into(),
            );
        }
        let app_name = p.application_name.clone().unwrap_or(hostname);
        let mut params = vec![
            ("host".to_string(), host.clone()),
            ("port".to_string(), port.to_string()),
            ("user".to_string(), p.replication_user.clone()),
            ("sslmode".to_string(), p.ssl_mode.clone()),
            ("connect_timeout".to_string(), "10".to_string()),
        ];
        for (k, v) in [
            ("sslrootcert", &p.ca_cert),
            ("sslcert", &p.ssl_cert),
            ("sslkey", &p.ssl_key),
        ] {
            if let Some(v) = v {
                params.push((k.to_string(), v.display().to_string()));
            }
        }
        let repl = ReplicationConn {
            bin_dir: bin.clone(),
            params,
            password: p.replication_password.clone(),
            owner: Some(owner.clone()),
        };
        let passfile = p
            .passfile
            .clone()
            .unwrap_or_else(|| owner.home.join(".pgpass"));
        let debian = dd.debian_cluster(Path::new("/etc/postgresql"));
        Ok(Setup {
            dd,
            owner,
            bin,
            debian,
            repl,
            host,
            port,
            slot,
            app_name,
            passfile,
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

    fn primary_conninfo(&self, p: &Params) -> String {
        let mut pairs: Vec<(&str, String)> = vec![
            ("user", p.replication_user.clone()),
            ("passfile", self.passfile.display().to_string()),
            ("host", self.host.clone()),
            ("port", self.port.to_string()),
            ("sslmode", p.ssl_mode.clone()),
        ];
        for (k, v) in [
            ("sslrootcert", &p.ca_cert),
            ("sslcert", &p.ssl_cert),
            ("sslkey", &p.ssl_key),
        ] {
            if let Some(v) = v {
                pairs.push((k, v.display().to_string()));
            }
        }
        pairs.push(("application_name", self.app_name.clone()));
        let refs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        conninfo(&refs)
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
        let out = run_as(&mut cmd, Some(&self.owner))
            .map_err(|e| format!("cannot run {action} for {}: {e}", self.dd.path.display()))?;
        if !out.status.success() {
            return Err(format!(
                "{action} of the server on {} failed: {}",
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
    match &plan {
        Plan::MoveAsideAndBuild(why) => {
            actions.push(format!("move {} aside ({why})", s.dd.path.display()));
            actions.push(format!("base backup from {}:{}", s.host, s.port));
        }
        Plan::Build => actions.push(format!("base backup from {}:{}", s.host, s.port)),
        Plan::Converge => {}
    }

    let conninfo = s.primary_conninfo(p);
    let use_slot = p.create_slot || slot_exists;
    let auto_path = s.dd.path.join("postgresql.auto.conf");
    let auto_before = if plan == Plan::Converge {
        fs::read_to_string(&auto_path).unwrap_or_default()
    } else {
        String::new()
    };
    let settings = [
        ("primary_conninfo", Some(conninfo.as_str())),
        ("primary_slot_name", use_slot.then_some(s.slot.as_str())),
    ];
    let auto_after_converge = conf_set(&auto_before, &settings);
    let passfile_before = fs::read_to_string(&s.passfile).unwrap_or_default();
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
    let write_passfile =
        passfile_after != passfile_before || (s.passfile.exists() && !mode_is(&s.passfile, 0o600));
    if write_passfile {
        actions.push(format!(
            "write the replication entry into {}",
            s.passfile.display()
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
            &auto_path.display().to_string(),
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

    // From here on, things change. Order: slot, data, settings, start, wait.
    let mut created_slot = false;
    if p.create_slot && !slot_exists {
        s.repl
            .create_slot(&s.slot)
            .map_err(|e| format!("cannot create slot {} on the primary: {e}", s.slot))?;
        created_slot = true;
    }
    let build = |s: &Setup| -> Result<(), Failure> {
        base_backup(p, s, use_slot).inspect_err(|_| {
            if created_slot {
                let _ = s.repl.drop_slot(&s.slot, false);
            }
        })
    };
    match &plan {
        Plan::MoveAsideAndBuild(_) => {
            if running.is_some() {
                s.ctl("stop")?;
            }
            let aside = move_aside(&s.dd.path)?;
            out.insert("moved_aside".into(), aside.display().to_string().into());
            build(s)?;
        }
        Plan::Build => build(s)?,
        Plan::Converge => {}
    }
    if write_passfile {
        let own = Ownership {
            uid: s.owner.uid,
            gid: s.owner.gid,
            mode: 0o600,
        };
        atomic::write_atomic(&s.passfile, passfile_after.as_bytes(), Some(own))
            .map_err(|e| format!("cannot write {}: {e}", s.passfile.display()))?;
    }
    let own = Ownership {
        uid: s.owner.uid,
        gid: s.owner.gid,
        mode: 0o600,
    };
    let current = fs::read_to_string(&auto_path).unwrap_or_default();
    let wanted = conf_set(&current, &settings);
    if wanted != current {
        atomic::write_atomic(&auto_path, wanted.as_bytes(), Some(own))
            .map_err(|e| format!("cannot write {}: {e}", auto_path.display()))?;
        if let (Plan::Converge, Some(_)) = (&plan, &running) {
            // primary_conninfo and primary_slot_name are reloadable since PostgreSQL 13.
            s.dd.reload()?;
        }
    }
    if !signal.exists() {
        atomic::write_atomic(&signal, b"", Some(own))
            .map_err(|e| format!("cannot write {}: {e}", signal.display()))?;
    }
    let running = if will_run { running } else { None };
    let running = match (running, p.start) {
        (Some(pm), _) => Some(pm),
        (None, true) => {
            s.ctl("start")?;
            s.dd.postmaster()?
        }
        (None, false) => None,
    };
    if let (Some(pm), true) = (&running, p.wait_streaming > 0) {
        wait_streaming(s, pm, p.wait_streaming)?;
        out.insert("streaming".into(), true.into());
    }
    out.insert("msg".into(), summary(&actions, true).into());
    if conf_get(
        &fs::read_to_string(&auto_path).unwrap_or_default(),
        "primary_conninfo",
    )
    .is_none()
    {
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
        return if p.force_rebuild {
            Ok(Plan::MoveAsideAndBuild(why))
        } else {
            Err(format!("{why}, or set force_rebuild: true to move it aside and rebuild").into())
        };
    }
    Ok(Plan::Converge)
}

fn base_backup(p: &Params, s: &Setup, use_slot: bool) -> Result<(), Failure> {
    let dir = &s.dd.path;
    if !dir.exists() {
        fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let mut d = dir.clone();
        // Hand the new directories to the owner (e.g. /var/lib/postgresql/15 and .../main).
        while d.starts_with(&s.owner.home) || d == *dir {
            let _ = nix::unistd::chown(&d, Some(s.owner.uid.into()), Some(s.owner.gid.into()));
            if !d.pop() || d == s.owner.home {
                break;
            }
        }
    }
    nix::unistd::chown(dir, Some(s.owner.uid.into()), Some(s.owner.gid.into()))
        .map_err(|e| format!("cannot chown {}: {e}", dir.display()))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .map_err(|e| format!("cannot chmod {}: {e}", dir.display()))?;
    let pass = match &p.replication_password {
        Some(pw) => Some(
            TempPassfile::new(pw, Some(&s.owner))
                .map_err(|e| format!("cannot write a temporary passfile: {e}"))?,
        ),
        None => None,
    };
    let mut pairs: Vec<(&str, &str)> = s
        .repl
        .params
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    pairs.push(("application_name", &s.app_name));
    let mut cmd = Command::new(s.bin.join("pg_basebackup"));
    cmd.arg("-D")
        .arg(dir)
        .args(["-X", "stream", "-c", "fast", "-w", "-d", &conninfo(&pairs)]);
    if use_slot {
        cmd.arg(format!("--slot={}", s.slot));
    }
    if let Some(rate) = &p.max_rate {
        cmd.arg(format!("--max-rate={rate}"));
    }
    match &pass {
        Some(pf) => cmd.env("PGPASSFILE", pf.path()),
        // Without a password given, libpq uses the owner's own passfile.
        None => cmd.env("PGPASSFILE", &s.passfile),
    };
    let out =
        run_as(&mut cmd, Some(&s.owner)).map_err(|e| format!("cannot run pg_basebackup: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "pg_basebackup from {}:{} failed: {}",
            s.host,
            s.port,
            output_text(&out)
        )
        .into());
    }
    Ok(())
}

fn move_aside(dir: &Path) -> Result<PathBuf, Failure> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let mut aside = dir.as_os_str().to_owned();
    aside.push(format!(".pgshift-old-{stamp}"));
    let aside = PathBuf::from(aside);
    fs::rename(dir, &aside).map_err(|e| {
        format!(
            "cannot move {} aside to {}: {e}",
            dir.display(),
            aside.display()
        )
    })?;
    Ok(aside)
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
        if !e.contains("is active") {
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

/// A slot name from the host name: lower case, anything but [a-z0-9_] becomes `_`.
fn slot_from(hostname: &str) -> String {
    let short = hostname.split('.').next().unwrap_or(hostname);
    short
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(63)
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_names_from_host_names() {
        assert_eq!(slot_from("db2"), "db2");
        assert_eq!(slot_from("DB-2.example.com"), "db_2");
    }
}
