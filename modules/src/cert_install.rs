//! `pgshift.cluster.cert_install`: installs a certificate/key pair for PostgreSQL, pgBackRest's
//! TLS server or the pgshift agent, checked before anything is touched, written atomically,
//! reloaded, and proven live by looking at the certificate the server now serves; the previous
//! files come back when it is not. The same binary is certbot's deploy hook (see `hook.rs`):
//! `deploy_hook: present` saves this installation so every renewal repeats it.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pgshift_core::atomic::{self, Ownership};
use pgshift_core::cert::{self, CertInfo, Requirements};
use pgshift_core::datadir::{DataDir, PostmasterPid};
use pgshift_core::ini;
use pgshift_core::pg::probe::{served_chain, Protocol};
use pgshift_core::pg::sql::quote_literal;
use pgshift_core::pg::Client;
use pgshift_core::pgbackrest;
use pgshift_core::process::{self, Owner};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::args::{Arg, Default, Kind};
use crate::login::LoginParams;
use crate::protocol::{Context, Failure, Module};

const SPEC: &[Arg] = &[
    Arg::new("cert", Kind::Path),
    Arg::new("key", Kind::Path),
    Arg::new("lineage", Kind::Path),
    Arg::new("ca_file", Kind::Path),
    Arg::new("hostname", Kind::Str),
    Arg::new("dest_dir", Kind::Path).required(),
    Arg::new("cert_name", Kind::Str).default(Default::Str("server.crt")),
    Arg::new("key_name", Kind::Str).default(Default::Str("server.key")),
    Arg::new("owner", Kind::Str).default(Default::Str("postgres")),
    Arg::new("group", Kind::Str),
    Arg::new("service", Kind::Str)
        .choices(&["postgres", "pgbackrest", "pgshift", "none"])
        .default(Default::Str("postgres")),
    Arg::new("data_directory", Kind::Path),
    Arg::new("config_file", Kind::Path),
    Arg::new("deploy_hook", Kind::Str)
        .choices(&["present", "absent", "unchanged"])
        .default(Default::Str("unchanged")),
    Arg::new("certbot_dir", Kind::Path).default(Default::Str("/etc/letsencrypt")),
    Arg::new("configure", Kind::Bool).default(Default::Bool(false)),
];

/// One installation: what the module was asked, and what the deploy hook replays.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Install {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub lineage: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub hostname: Option<String>,
    pub dest_dir: PathBuf,
    pub cert_name: String,
    pub key_name: String,
    pub owner: String,
    pub group: Option<String>,
    pub service: String,
    pub data_directory: Option<PathBuf>,
    pub config_file: Option<PathBuf>,
    #[serde(skip_serializing, default = "unchanged")]
    pub deploy_hook: String,
    pub certbot_dir: PathBuf,
    pub configure: bool,
}

fn unchanged() -> String {
    "unchanged".into()
}

pub struct CertInstall;

impl Module for CertInstall {
    const NAME: &'static str = "cert_install";
    const SPEC: &'static [Arg] = SPEC;
    const LOGIN: bool = true;
    type Params = Install;

    fn run(
        ctx: &mut Context,
        p: Install,
        login: LoginParams,
    ) -> Result<Map<String, Value>, Failure> {
        if p.deploy_hook == "present" && p.lineage.is_none() {
            return Err(
                "deploy_hook: present needs lineage (the certbot lineage the hook follows)".into(),
            );
        }
        if login.login_password.is_some() && p.deploy_hook == "present" {
            return Err("deploy_hook: present cannot replay a login_password (it is never saved); let the hook connect over the Unix socket".into());
        }
        let mut out = install(ctx, &p, &login)?;
        let hook_changed = crate::cert_hook::register(ctx, &p, &login, &mut out)?;
        if hook_changed {
            out.insert("changed".into(), true.into());
        }
        Ok(out)
    }
}

/// Sources, destinations and owner, resolved and checked.
struct Plan {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    info: CertInfo,
    cert_dest: PathBuf,
    key_dest: PathBuf,
    cert_own: Ownership,
    key_own: Ownership,
}

/// Validates and installs one certificate; used by the module and by the deploy hook.
pub fn install(
    ctx: &mut Context,
    p: &Install,
    login: &LoginParams,
) -> Result<Map<String, Value>, Failure> {
    let plan = Plan::build(p)?;
    let old_cert = read_opt(&plan.cert_dest)?;
    let old_key = read_opt(&plan.key_dest)?;
    let same_files = old_cert.as_deref() == Some(&plan.cert_pem[..])
        && old_key.as_deref() == Some(&plan.key_pem[..])
        && ownership_is(&plan.cert_dest, plan.cert_own)
        && ownership_is(&plan.key_dest, plan.key_own);
    let mut server = Server::connect(p, login, &plan)?;
    let settings = server.settings_to_change(p, &plan)?;
    let changed = !same_files || !settings.is_empty();

    let mut out = Map::new();
    out.insert("cert_sha256".into(), plan.info.sha256.clone().into());
    out.insert("subject".into(), plan.info.subject.clone().into());
    out.insert("names".into(), json!(plan.info.names));
    out.insert(
        "not_after".into(),
        cert::format_time(plan.info.not_after).into(),
    );
    out.insert("reloaded".into(), false.into());
    out.insert(
        "diff".into(),
        json!({
            "before": format!("{}: {}\n", plan.cert_dest.display(), old_cert.as_deref().map(fingerprint).unwrap_or_else(|| "(none)".into())),
            "after": format!("{}: {}\n", plan.cert_dest.display(), plan.info.sha256),
            "before_header": plan.cert_dest.display().to_string(),
            "after_header": plan.cert_dest.display().to_string(),
        }),
    );
    if !settings.is_empty() {
        out.insert(
            "settings".into(),
            json!(settings
                .iter()
                .map(|(k, v)| format!("{k} = {v}"))
                .collect::<Vec<_>>()),
        );
    }
    out.insert("changed".into(), changed.into());
    if !changed {
        out.insert(
            "msg".into(),
            format!(
                "{} already installed in {}",
                plan.info.sha256,
                p.dest_dir.display()
            )
            .into(),
        );
        return Ok(out);
    }
    if ctx.check_mode {
        out.insert(
            "msg".into(),
            format!(
                "would install {} into {}",
                plan.info.sha256,
                p.dest_dir.display()
            )
            .into(),
        );
        return Ok(out);
    }

    // Write both files, then switch the server; on any failure put both back.
    let restore = |server: &mut Server, why: String| -> Failure {
        let mut problems = Vec::new();
        for (dest, old) in [(&plan.cert_dest, &old_cert), (&plan.key_dest, &old_key)] {
            let r = match old {
                Some(bytes) => atomic::write_atomic(dest, bytes, None),
                None => fs::remove_file(dest).or_else(|e| {
                    if e.kind() == io::ErrorKind::NotFound {
                        Ok(())
                    } else {
                        Err(e)
                    }
                }),
            };
            if let Err(e) = r {
                problems.push(format!("restoring {} failed: {e}", dest.display()));
            }
        }
        server.undo_settings();
        server.reload_quietly();
        if problems.is_empty() {
            Failure::from(format!(
                "{why}; the previous certificate and key were put back"
            ))
        } else {
            Failure::from(format!("{why}; {}", problems.join("; ")))
        }
    };
    atomic::write_atomic(&plan.cert_dest, &plan.cert_pem, Some(plan.cert_own)).map_err(|e| {
        restore(
            &mut server,
            format!("cannot write {}: {e}", plan.cert_dest.display()),
        )
    })?;
    atomic::write_atomic(&plan.key_dest, &plan.key_pem, Some(plan.key_own)).map_err(|e| {
        restore(
            &mut server,
            format!("cannot write {}: {e}", plan.key_dest.display()),
        )
    })?;
    if let Err(e) = server.apply_settings(&settings) {
        return Err(restore(&mut server, e));
    }
    match server.reload_and_verify(&plan) {
        Ok(Some(served)) => {
            out.insert("reloaded".into(), true.into());
            out.insert("served_sha256".into(), served.into());
            out.insert(
                "msg".into(),
                format!(
                    "installed {} into {}; {} serves it",
                    plan.info.sha256,
                    p.dest_dir.display(),
                    p.service
                )
                .into(),
            );
        }
        Ok(None) => {
            let why = server
                .not_verified
                .clone()
                .unwrap_or_else(|| "nothing to reload".into());
            out.insert(
                "msg".into(),
                format!(
                    "installed {} into {} ({why})",
                    plan.info.sha256,
                    p.dest_dir.display()
                )
                .into(),
            );
            if p.service != "none" {
                ctx.warn(format!("{}: {why}", p.service));
            }
        }
        Err(e) => return Err(restore(&mut server, e)),
    }
    Ok(out)
}

impl Plan {
    fn build(p: &Install) -> Result<Plan, Failure> {
        let (cert_src, key_src) = match (&p.lineage, &p.cert, &p.key) {
            (Some(l), None, None) => (l.join("fullchain.pem"), l.join("privkey.pem")),
            (None, Some(c), Some(k)) => (c.clone(), k.clone()),
            (Some(_), _, _) => return Err("lineage and cert/key are mutually exclusive".into()),
            _ => return Err("give cert and key, or lineage".into()),
        };
        let cert_pem = fs::read(&cert_src)
            .map_err(|e| format!("cannot read the certificate {}: {e}", cert_src.display()))?;
        let key_pem = fs::read(&key_src)
            .map_err(|e| format!("cannot read the key {}: {e}", key_src.display()))?;
        let chain = cert::load_certs(&cert_pem, &cert_src.display().to_string())?;
        let key = cert::load_key(&key_pem, &key_src.display().to_string())?;
        let ca = match &p.ca_file {
            Some(f) => Some(cert::load_certs(
                &fs::read(f).map_err(|e| format!("cannot read ca_file {}: {e}", f.display()))?,
                &f.display().to_string(),
            )?),
            None => None,
        };
        let req = Requirements {
            hostname: p.hostname.as_deref(),
            ca: ca.as_deref(),
            server_auth: true,
            // pgBackRest uses one certificate as server and as client.
            client_auth: p.service == "pgbackrest",
        };
        let info = cert::check_now(&chain, &key, &req)
            .map_err(|e| format!("{}: {e}", cert_src.display()))?;
        if !p.dest_dir.is_dir() {
            return Err(format!(
                "destination directory {} does not exist",
                p.dest_dir.display()
            )
            .into());
        }
        for name in [&p.cert_name, &p.key_name] {
            if name.is_empty() || name.contains('/') {
                return Err(
                    format!("invalid file name {name:?}: a plain name inside dest_dir").into(),
                );
            }
        }
        let owner = Owner::lookup(&p.owner)?;
        let gid = match &p.group {
            Some(g) => nix::unistd::Group::from_name(g)
                .map_err(|e| format!("cannot look up group {g:?}: {e}"))?
                .ok_or_else(|| format!("no group named {g:?}"))?
                .gid
                .as_raw(),
            None => owner.gid,
        };
        // PostgreSQL accepts a key it owns at 0600, or a root-owned key at 0640 with its group.
        let key_mode = if owner.uid == 0 { 0o640 } else { 0o600 };
        Ok(Plan {
            cert_pem,
            key_pem,
            info,
            cert_dest: p.dest_dir.join(&p.cert_name),
            key_dest: p.dest_dir.join(&p.key_name),
            cert_own: Ownership {
                uid: owner.uid,
                gid,
                mode: 0o644,
            },
            key_own: Ownership {
                uid: owner.uid,
                gid,
                mode: key_mode,
            },
        })
    }
}

/// The service that uses the files: how to check its settings, reload it, and see what it serves.
struct Server {
    kind: String,
    pg: Option<(DataDir, PostmasterPid, Client)>,
    /// For pgBackRest: where its TLS server listens.
    tls_endpoint: Option<(String, u16)>,
    pgbackrest_config: PathBuf,
    /// Settings changed by `configure`, with their previous values.
    previous: Vec<(String, String)>,
    not_verified: Option<String>,
}

impl Server {
    fn connect(p: &Install, login: &LoginParams, plan: &Plan) -> Result<Server, Failure> {
        let mut s = Server {
            kind: p.service.clone(),
            pg: None,
            tls_endpoint: None,
            pgbackrest_config: PathBuf::from(pgbackrest::DEFAULT_CONFIG),
            previous: Vec::new(),
            not_verified: None,
        };
        match p.service.as_str() {
            "postgres" => {
                let dd = DataDir::new(
                    p.data_directory
                        .clone()
                        .ok_or("service: postgres needs data_directory")?,
                );
                match dd.postmaster()? {
                    Some(pm) => {
                        let client = Client::connect(&login.connect_options(Some(&pm))?)?;
                        s.pg = Some((dd, pm, client));
                    }
                    None => {
                        s.not_verified = Some(format!(
                            "no server running on {}; it will use the files when it starts",
                            dd.path.display()
                        ))
                    }
                }
            }
            "pgbackrest" => {
                let conf = p
                    .config_file
                    .clone()
                    .unwrap_or_else(|| PathBuf::from(pgbackrest::DEFAULT_CONFIG));
                let text = fs::read_to_string(&conf)
                    .map_err(|e| format!("cannot read {}: {e}", conf.display()))?;
                for (key, want) in [
                    ("tls-server-cert-file", &plan.cert_dest),
                    ("tls-server-key-file", &plan.key_dest),
                ] {
                    let have = ini::get(&text, "global", key);
                    if have.as_deref().map(Path::new) != Some(want.as_path()) {
                        return Err(format!(
                            "{} sets {key} = {}; set {key}={} in [global] so pgBackRest uses the installed file",
                            conf.display(),
                            have.unwrap_or_else(|| "(nothing)".into()),
                            want.display()
                        )
                        .into());
                    }
                }
                let host = ini::get(&text, "global", "tls-server-address")
                    .filter(|a| a != "*" && a != "0.0.0.0")
                    .unwrap_or_else(|| "127.0.0.1".into());
                let port = ini::get(&text, "global", "tls-server-port")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(8432);
                s.tls_endpoint = Some((host, port));
                s.pgbackrest_config = conf;
            }
            _ => {}
        }
        Ok(s)
    }

    /// PostgreSQL's effective ssl settings must name the installed files (and ssl be on).
    fn settings_to_change(
        &mut self,
        p: &Install,
        plan: &Plan,
    ) -> Result<Vec<(String, String)>, Failure> {
        let Some((dd, _, client)) = &mut self.pg else {
            return Ok(Vec::new());
        };
        let rows = client.query("SELECT name, setting FROM pg_settings WHERE name IN ('ssl', 'ssl_cert_file', 'ssl_key_file')", &[])?;
        let get = |n: &str| {
            rows.iter()
                .find(|r| r.get::<_, String>(0) == n)
                .map(|r| r.get::<_, String>(1))
                .unwrap_or_default()
        };
        let abs = |v: String| {
            if v.starts_with('/') {
                PathBuf::from(v)
            } else {
                dd.path.join(v)
            }
        };
        let mut wrong = Vec::new();
        if abs(get("ssl_cert_file")) != plan.cert_dest {
            wrong.push((
                "ssl_cert_file".to_string(),
                plan.cert_dest.display().to_string(),
            ));
        }
        if abs(get("ssl_key_file")) != plan.key_dest {
            wrong.push((
                "ssl_key_file".to_string(),
                plan.key_dest.display().to_string(),
            ));
        }
        if get("ssl") != "on" {
            wrong.push(("ssl".to_string(), "on".to_string()));
        }
        if !wrong.is_empty() && !p.configure {
            let what: Vec<String> = wrong.iter().map(|(k, v)| format!("{k} = '{v}'")).collect();
            return Err(format!(
                "the server on {} does not use the installed files (its ssl_cert_file is {:?}, ssl_key_file {:?}, ssl {}); set {} or use configure: true",
                dd.path.display(),
                get("ssl_cert_file"),
                get("ssl_key_file"),
                get("ssl"),
                what.join(", ")
            )
            .into());
        }
        for (k, _) in &wrong {
            self.previous.push((k.clone(), get(k)));
        }
        Ok(wrong)
    }

    fn apply_settings(&mut self, settings: &[(String, String)]) -> Result<(), String> {
        let Some((_, _, client)) = &mut self.pg else {
            return Ok(());
        };
        for (k, v) in settings {
            client
                .batch_execute(&format!("ALTER SYSTEM SET {k} = {}", quote_literal(v)))
                .map_err(|e| format!("ALTER SYSTEM SET {k}: {e}"))?;
        }
        Ok(())
    }

    fn undo_settings(&mut self) {
        let Some((_, _, client)) = &mut self.pg else {
            return;
        };
        for (k, v) in self.previous.drain(..) {
            let _ = client.batch_execute(&format!("ALTER SYSTEM SET {k} = {}", quote_literal(&v)));
        }
    }

    fn reload_quietly(&mut self) {
        match self.kind.as_str() {
            "postgres" => {
                if let Some((dd, _, _)) = &self.pg {
                    let _ = dd.reload();
                }
            }
            // The same reload as the verified one: a probe or a connection in the gap
            // while pgBackRest re-binds its listener would kill the server we are restoring.
            "pgbackrest" => {
                if let Some((_, port)) = &self.tls_endpoint {
                    let _ = pgbackrest::reload_servers(*port, &self.pgbackrest_config);
                }
            }
            "pgshift" => {
                let _ = hup_agents();
            }
            _ => {}
        }
    }

    /// Reloads and returns the fingerprint the service now serves; `None` when there is
    /// nothing to verify (service none, not running, or no TLS endpoint yet).
    fn reload_and_verify(&mut self, plan: &Plan) -> Result<Option<String>, String> {
        match self.kind.as_str() {
            "postgres" => {
                let Some((dd, pm, client)) = &mut self.pg else {
                    return Ok(None);
                };
                let before: String = client
                    .query_one("SELECT pg_conf_load_time()::text", &[])
                    .map_err(|e| e.to_string())?
                    .get(0);
                dd.reload().map_err(|e| e.to_string())?;
                wait_until(Duration::from_secs(10), || {
                    client
                        .query_one("SELECT pg_conf_load_time()::text", &[])
                        .map(|r| r.get::<_, String>(0) != before)
                        .unwrap_or(false)
                })
                .map_err(|_| {
                    "PostgreSQL did not re-read its configuration within 10 s of SIGHUP".to_string()
                })?;
                let host = match pm.listen_address.as_deref() {
                    None | Some("") => return Err("PostgreSQL listens on no TCP address, so the served certificate cannot be checked".into()),
                    Some("*") | Some("0.0.0.0") => "127.0.0.1".to_string(),
                    Some("::") => "::1".to_string(),
                    Some(a) => a.to_string(),
                };
                let served = served_fingerprint(&host, pm.port, Protocol::Postgres)?;
                if served != plan.info.sha256 {
                    return Err(format!(
                        "PostgreSQL still serves {served}, not the new {} (it refused the new files: see its log for \"SSL configuration was not reloaded\")",
                        plan.info.sha256
                    ));
                }
                Ok(Some(served))
            }
            "pgbackrest" => {
                let (host, port) = self.tls_endpoint.clone().expect("set for pgbackrest");
                if pgbackrest::reload_servers(port, &self.pgbackrest_config)? == 0 {
                    self.not_verified = Some("no pgbackrest server is running".into());
                    return Ok(None);
                }
                let mut last = String::new();
                let ok = wait_until(Duration::from_secs(10), || {
                    match served_fingerprint(&host, port, Protocol::Tls) {
                        Ok(f) if f == plan.info.sha256 => true,
                        Ok(f) => {
                            last = format!("it serves {f}");
                            false
                        }
                        Err(e) => {
                            last = e;
                            false
                        }
                    }
                });
                ok.map(|_| Some(plan.info.sha256.clone()))
                    .map_err(|_| format!("pgBackRest's TLS server on {host}:{port} does not serve the new certificate after SIGHUP ({last})"))
            }
            "pgshift" => {
                hup_agents()?;
                self.not_verified =
                    Some("the pgshift agent has no TLS endpoint to check yet".into());
                Ok(None)
            }
            _ => Ok(None),
        }
    }
}

fn served_fingerprint(host: &str, port: u16, protocol: Protocol) -> Result<String, String> {
    let chain = served_chain(host, port, protocol, Duration::from_secs(5))?;
    Ok(cert::fingerprint(chain[0].as_ref()))
}

fn fingerprint(pem: &[u8]) -> String {
    cert::load_certs(pem, "installed certificate")
        .ok()
        .and_then(|c| cert::info(&c[0]).ok())
        .map(|i| i.sha256)
        .unwrap_or_else(|| "(not a certificate)".into())
}

/// SIGHUP to the pgshift agents running here.
fn hup_agents() -> Result<(), String> {
    process::hup(&process::find("pgshift", "agent")?)
}

fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> Result<(), ()> {
    let deadline = Instant::now() + limit;
    loop {
        if f() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn read_opt(path: &Path) -> Result<Option<Vec<u8>>, Failure> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display()).into()),
    }
}

fn ownership_is(path: &Path, want: Ownership) -> bool {
    Ownership::of(path).is_ok_and(|o| o == want)
}
