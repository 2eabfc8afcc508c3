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
use pgshift_core::cert::{self, CertError, CertInfo, Requirements};
use pgshift_core::datadir::{DataDir, PostmasterPid};
use pgshift_core::ini;
use pgshift_core::pg::probe::{served_chain, Protocol};
use pgshift_core::pg::sql::quote_literal;
use pgshift_core::pg::Client;
use pgshift_core::pgbackrest;
use pgshift_core::pgconf::{check_value, conninfo_get};
use pgshift_core::process::{self, Owner};
use pgshift_core::userfile::UserFile;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::args::{Arg, Default, Kind};
use crate::login::LoginParams;
use crate::protocol::{Context, Failure, Module};

/// Certificates, keys and pgbackrest.conf are kilobytes; more is not one of them.
const MAX_PEM: u64 = 1024 * 1024;

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
    let old_cert = read_opt("cert_name", &plan.cert_dest)?;
    let old_key = read_opt("key_name", &plan.key_dest)?;
    let same_files = old_cert.as_deref() == Some(&plan.cert_pem[..])
        && old_key.as_deref() == Some(&plan.key_pem[..])
        && ownership_is(&plan.cert_dest, plan.cert_own)
        && ownership_is(&plan.key_dest, plan.key_own);
    let mut server = Server::connect(p, login, &plan)?;
    let client_ok = plan
        .info
        .extended_key_usage
        .as_ref()
        .is_none_or(|u| u.contains(&"clientAuth"));
    if !server.subscriptions.is_empty() && !client_ok {
        return Err(format!(
            "cert {}: the subscription(s) {} present the installed files as their client certificate, and this certificate lacks the clientAuth usage; nothing was installed",
            plan.cert_dest.display(),
            server.subscription_names()
        )
        .into());
    }
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
    let verified = server
        .reload_and_verify(&plan)
        .and_then(|v| server.reconnect_subscriptions().map(|_| v));
    match verified {
        Ok(Some(served)) => {
            out.insert("reloaded".into(), true.into());
            if !server.subscriptions.is_empty() {
                out.insert(
                    "subscriptions".into(),
                    json!(server
                        .subscriptions
                        .iter()
                        .map(|(_, n)| n)
                        .collect::<Vec<_>>()),
                );
            }
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
        Err(e) => {
            let mut failure = restore(&mut server, e);
            // Back on the old files: the workers reconnect with them.
            if let Err(e) = server.reconnect_subscriptions() {
                failure.msg.push_str(&format!("; after the restore: {e}"));
            }
            return Err(failure);
        }
    }
    Ok(out)
}

impl Plan {
    /// Every source and destination checked, and the certificate checked against the key,
    /// the host name, the usages and the CA, before anything is written.
    fn build(p: &Install) -> Result<Plan, Failure> {
        let (cert_src, key_src) = match (&p.lineage, &p.cert, &p.key) {
            (Some(l), None, None) => (l.join("fullchain.pem"), l.join("privkey.pem")),
            (None, Some(c), Some(k)) => (c.clone(), k.clone()),
            (Some(_), _, _) => return Err("lineage and cert/key are mutually exclusive".into()),
            (None, Some(_), None) => {
                return Err("missing required arguments: key (with cert)".into())
            }
            (None, None, Some(_)) => {
                return Err("missing required arguments: cert (with key)".into())
            }
            _ => return Err("give cert and key, or lineage".into()),
        };
        let (cert_opt, key_opt) = if p.lineage.is_some() {
            ("lineage's fullchain.pem", "lineage's privkey.pem")
        } else {
            ("cert", "key")
        };
        let read = |option: &'static str, path: &Path| -> Result<Vec<u8>, Failure> {
            Ok(UserFile::existing(option, path)?
                .read(MAX_PEM)?
                .unwrap_or_default())
        };
        let cert_pem = read(cert_opt, &cert_src)?;
        let key_pem = read(key_opt, &key_src)?;
        let chain = cert::load_certs(&cert_pem, &format!("{cert_opt} {}", cert_src.display()))?;
        let key = cert::load_key(&key_pem, &format!("{key_opt} {}", key_src.display()))?;
        let ca = match &p.ca_file {
            Some(f) => Some(cert::load_certs(
                &read("ca_file", f)?,
                &format!("ca_file {}", f.display()),
            )?),
            None => None,
        };
        if let Some(h) = &p.hostname {
            check_value("hostname", h, "a certificate check", false)?;
        }
        let req = Requirements {
            hostname: p.hostname.as_deref(),
            ca: ca.as_deref(),
            server_auth: true,
            // pgBackRest uses one certificate as server and as client.
            client_auth: p.service == "pgbackrest",
        };
        let info = cert::check_now(&chain, &key, &req).map_err(|e| {
            let option = match e {
                CertError::NameMismatch { .. } => "hostname",
                CertError::Chain(_) => "ca_file",
                CertError::KeyMismatch { .. } | CertError::KeyUnsupported(_) => key_opt,
                _ => cert_opt,
            };
            format!("{option} {}: {e}", cert_src.display())
        })?;
        match fs::metadata(&p.dest_dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(format!("dest_dir {} is not a directory", p.dest_dir.display()).into())
            }
            Err(e) => {
                return Err(format!("dest_dir {}: {e}", p.dest_dir.display()).into());
            }
        }
        for (option, name) in [("cert_name", &p.cert_name), ("key_name", &p.key_name)] {
            if name.is_empty()
                || name.contains('/')
                || name == "."
                || name == ".."
                || check_value(option, name, "a file name", false).is_err()
            {
                return Err(format!(
                    "{option} {name:?} is not a file name: give a plain name for a file inside dest_dir"
                )
                .into());
            }
        }
        if p.cert_name == p.key_name {
            return Err(format!(
                "cert_name and key_name are both {:?}: the key would overwrite the certificate",
                p.cert_name
            )
            .into());
        }
        let cert_dest = UserFile::resolve("cert_name", &p.dest_dir.join(&p.cert_name))?;
        let key_dest = UserFile::resolve("key_name", &p.dest_dir.join(&p.key_name))?;
        let owner = Owner::lookup(&p.owner).map_err(|e| format!("owner: {e}"))?;
        let gid = match &p.group {
            Some(g) => nix::unistd::Group::from_name(g)
                .map_err(|e| format!("group: cannot look up {g:?}: {e}"))?
                .ok_or_else(|| format!("group: no group named {g:?}"))?
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
            cert_dest: cert_dest.real,
            key_dest: key_dest.real,
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
    /// Logical replication subscriptions (oid, name) whose connection presents the installed
    /// files as the client certificate: their apply workers must reconnect to use new ones.
    subscriptions: Vec<(u32, String)>,
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
            subscriptions: Vec::new(),
        };
        match p.service.as_str() {
            "postgres" => {
                let dir = p
                    .data_directory
                    .clone()
                    .ok_or("service: postgres needs data_directory")?;
                // A mistyped data directory must not pass as "not running": the files would
                // be installed for a server that does not exist.
                if !dir.join("PG_VERSION").is_file() {
                    return Err(format!(
                        "data_directory {} is not a PostgreSQL data directory (no PG_VERSION); nothing was installed",
                        dir.display()
                    )
                    .into());
                }
                UserFile::resolve(
                    "data_directory's postmaster.pid",
                    &dir.join("postmaster.pid"),
                )?;
                let dd = DataDir::new(dir);
                match dd.postmaster()? {
                    Some(pm) => {
                        let mut client = login.connect(Some(&pm))?;
                        s.subscriptions = subscriptions_using(&mut client, plan)?;
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
                let text = UserFile::existing("config_file", &conf)?
                    .read_text(MAX_PEM)?
                    .unwrap_or_default();
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

    fn subscription_names(&self) -> String {
        self.subscriptions
            .iter()
            .map(|(_, n)| n.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Ends the apply workers of `subscriptions` (they read the client certificate only
    /// when they connect; a terminated worker is not an apply error) and waits until the
    /// launcher has started each again and it has heard from the peer on its new
    /// connection, which the peer accepted with the files now in place: a new worker's
    /// `received_lsn` is empty until the first message from the peer (its timestamps are
    /// set at start, before it connects, and prove nothing).
    fn reconnect_subscriptions(&mut self) -> Result<(), String> {
        let Some((_, _, client)) = &mut self.pg else {
            return Ok(());
        };
        if self.subscriptions.is_empty() {
            return Ok(());
        }
        let oids: Vec<u32> = self.subscriptions.iter().map(|(o, _)| *o).collect();
        let old: Vec<i32> = client
            .query_one(
                "SELECT coalesce(array_agg(pid) FILTER (WHERE pid IS NOT NULL), '{}') \
                 FROM pg_stat_subscription WHERE subid = ANY($1) AND relid IS NULL",
                &[&oids],
            )
            .map_err(|e| e.to_string())?
            .get(0);
        client
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_subscription \
                 WHERE subid = ANY($1) AND relid IS NULL AND pid IS NOT NULL",
                &[&oids],
            )
            .map_err(|e| e.to_string())?;
        let want = oids.len() as i64;
        wait_until(SUBSCRIPTION_DEADLINE, || {
            client
                .query_one(
                    "SELECT count(DISTINCT subid) FROM pg_stat_subscription \
                     WHERE subid = ANY($1) AND relid IS NULL AND pid IS NOT NULL \
                       AND pid <> ALL($2) AND received_lsn IS NOT NULL",
                    &[&oids, &old],
                )
                .is_ok_and(|r| r.get::<_, i64>(0) == want)
        })
        .map_err(|_| {
            format!(
                "the apply worker of {} did not reconnect to its peer within {} s with the files now installed (the peer refused the client certificate? see both servers' logs)",
                self.subscription_names(),
                SUBSCRIPTION_DEADLINE.as_secs()
            )
        })
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

/// How long restarted apply workers get to reconnect: the launcher may wait
/// wal_retrieve_retry_interval (5 s by default) after a worker's last start.
const SUBSCRIPTION_DEADLINE: Duration = Duration::from_secs(20);

/// Enabled subscriptions whose connection names the installed certificate or key (as
/// `sslcert`/`sslkey`), in any database.
fn subscriptions_using(c: &mut Client, plan: &Plan) -> Result<Vec<(u32, String)>, Failure> {
    let rows = c.query(
        "SELECT oid, subname::text, subconninfo FROM pg_subscription WHERE subenabled ORDER BY 2",
        &[],
    )?;
    let names = |v: Option<String>, dest: &Path| {
        v.is_some_and(|v| {
            let p = Path::new(&v);
            p == dest || fs::canonicalize(p).ok().as_deref() == Some(dest)
        })
    };
    Ok(rows
        .iter()
        .filter(|r| {
            let info: String = r.get(2);
            names(conninfo_get(&info, "sslcert"), &plan.cert_dest)
                || names(conninfo_get(&info, "sslkey"), &plan.key_dest)
        })
        .map(|r| (r.get(0), r.get(1)))
        .collect())
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

fn read_opt(option: &'static str, path: &Path) -> Result<Option<Vec<u8>>, Failure> {
    Ok(UserFile::resolve(option, path)?.read(MAX_PEM)?)
}

fn ownership_is(path: &Path, want: Ownership) -> bool {
    Ownership::of(path).is_ok_and(|o| o == want)
}
