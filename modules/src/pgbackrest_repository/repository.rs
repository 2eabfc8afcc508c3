//! `role: repository`: the repository host's configuration, directory, stanzas and schedules.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use pgshift_core::pgbackrest;
use pgshift_core::process::Owner;
use serde_json::{json, Map, Value};

use super::conf::{self, RemoteInstance, RepositoryGlobal};
use super::units::{self, Units};
use super::{
    pgbackrest, read_config, refuse_foreign, report, require_host_name, require_name, result, tls,
    ConfigChange, OwnedDir, Params, Stanza,
};
use crate::protocol::{Context, Failure};

/// A present stanza, checked: its instances as the repository reaches them and the client
/// certificate names it accepts.
struct Wanted<'a> {
    name: &'a str,
    instances: Vec<RemoteInstance<'a>>,
    clients: Vec<String>,
}

pub fn run(ctx: &mut Context, p: &Params, owner: &Owner) -> Result<Map<String, Value>, Failure> {
    refuse_foreign(p)?;
    let stanzas: &[Stanza] = p.stanzas.as_deref().unwrap_or_default();
    let present = p.state == "present";
    let wanted = check_stanzas(p, stanzas)?;
    let absent: Vec<&Stanza> = stanzas
        .iter()
        .filter(|s| s.state == "absent" || !present)
        .collect();
    if p.retention_full < 1 || p.retention_diff.is_some_and(|d| d < 1) {
        return Err("retention_full and retention_diff must be at least 1".into());
    }
    let schedules = check_schedules(p, &wanted)?;

    let repo = OwnedDir::check("repo_path", &p.repo_path, owner)?;
    let before = read_config(&p.config_file)?;
    let base = before.clone().unwrap_or_default();
    let mut want_units = Units::new();
    let (after, port) = if present {
        let tls = tls::check(
            ctx,
            p.tls
                .as_ref()
                .ok_or("role: repository needs tls (cert, key, ca): pgBackRest talks TLS to the database hosts")?,
            owner,
        )?;
        let global = conf::repository_global(
            &tls,
            &RepositoryGlobal {
                repo_path: &p.repo_path,
                retention_full: p.retention_full,
                retention_diff: p.retention_diff,
                auth: server_auth(&wanted),
            },
        );
        let sections: Vec<(String, conf::Keys)> = wanted
            .iter()
            .map(|w| {
                (
                    w.name.to_string(),
                    conf::repository_stanza(&tls, &w.instances),
                )
            })
            .collect();
        let removed: Vec<String> = absent.iter().map(|s| s.name.clone()).collect();
        let text = conf::render(
            &base,
            conf::owned(conf::GLOBAL_REPOSITORY),
            &global,
            &sections,
            &removed,
        );
        let (name, unit) = units::server(&p.config_file, owner);
        want_units.insert(name, unit);
        for (stanza, kind, on_calendar) in &schedules {
            want_units.extend(units::backup(
                &p.config_file,
                owner,
                stanza,
                kind,
                on_calendar,
            ));
        }
        (text, Some(tls.port))
    } else {
        let removed: Vec<String> = stanzas.iter().map(|s| s.name.clone()).collect();
        let text = conf::render(
            &base,
            conf::owned(conf::GLOBAL_REPOSITORY),
            &vec![],
            &[],
            &removed,
        );
        (text, None)
    };
    units::verify(&want_units)?;
    let unit_plan = units::plan(&p.units_dir, &want_units)?;
    let config = ConfigChange { before, after };

    let to_create: Vec<&str> = wanted
        .iter()
        .filter(|w| !stanza_exists(&p.repo_path, w.name))
        .map(|w| w.name)
        .collect();
    let to_delete: Vec<&str> = absent
        .iter()
        .filter(|s| s.delete_backups && stanza_exists(&p.repo_path, &s.name))
        .map(|s| s.name.as_str())
        .collect();
    let changed = config.changed()
        || !unit_plan.is_empty()
        || !to_create.is_empty()
        || !to_delete.is_empty()
        || (present && !repo.exists);

    let mut out = result(changed, String::new());
    out.insert("config_file".into(), json!(p.config_file));
    out.insert("stanzas_created".into(), json!(to_create));
    out.insert("stanzas_deleted".into(), json!(to_delete));
    report(
        ctx,
        &mut out,
        &p.config_file,
        &config,
        &unit_plan,
        &want_units,
    );
    if ctx.check_mode || !changed {
        out.insert(
            "msg".into(),
            summary(ctx.check_mode, changed, &to_create, &to_delete).into(),
        );
        out.insert("server_reloaded".into(), false.into());
        return Ok(out);
    }

    // Backups are deleted only for a stanza named absent with delete_backups, and while the
    // configuration still describes it.
    for name in &to_delete {
        let stanza = format!("--stanza={name}");
        pgbackrest(&p.config_file, owner, &[&stanza, "stop"])?;
        let deleted = pgbackrest(
            &p.config_file,
            owner,
            &[&stanza, "--force", "stanza-delete"],
        );
        let _ = pgbackrest(&p.config_file, owner, &[&stanza, "start"]);
        deleted?;
    }
    if present {
        repo.create(owner)?;
    }
    config.write(&p.config_file, owner)?;
    unit_plan.apply(&p.units_dir)?;
    // The server re-reads tls-server-auth (which stanzas each client may use) on SIGHUP;
    // reload before creating stanzas, so a failing stanza-create leaves it current too.
    let reloaded = match port {
        Some(port) if config.changed() => {
            pgbackrest::reload_servers(port, &p.config_file)
                .map_err(|e| Failure::from(e).with("changed", true))?
                > 0
        }
        _ => false,
    };
    // Offline: reads pg_control through the database hosts' TLS servers, so PostgreSQL need
    // not run and the instances need not be configured for archiving yet.
    for name in &to_create {
        let stanza = format!("--stanza={name}");
        pgbackrest(&p.config_file, owner, &[&stanza, "--no-online", "stanza-create"]).map_err(
            |e| {
                let hint = if e.contains("access denied") {
                    format!("each database host's pgBackRest server must let this host use stanza {name} (tls-server-auth, set by role: database with stanza: {name})")
                } else {
                    "is `pgbackrest server` running on every instance's host, and does each host's certificate carry its name?".to_string()
                };
                Failure::from(format!("{e} (the configuration is written; {hint})"))
                    .with("changed", true)
                    .with("server_reloaded", reloaded)
                    .with("stanzas_created", json!([]))
            },
        )?;
    }
    out.insert("server_reloaded".into(), reloaded.into());
    out.insert(
        "msg".into(),
        summary(false, changed, &to_create, &to_delete).into(),
    );
    Ok(out)
}

fn summary(check: bool, changed: bool, created: &[&str], deleted: &[&str]) -> String {
    if !changed {
        return "repository configuration is up to date".into();
    }
    let mut parts = vec![if check {
        "would update the repository configuration".to_string()
    } else {
        "repository configuration updated".to_string()
    }];
    if !created.is_empty() {
        parts.push(format!("stanzas created: {}", created.join(", ")));
    }
    if !deleted.is_empty() {
        parts.push(format!(
            "stanzas deleted with their backups: {}",
            deleted.join(", ")
        ));
    }
    parts.join("; ")
}

fn check_stanzas<'a>(p: &'a Params, stanzas: &'a [Stanza]) -> Result<Vec<Wanted<'a>>, Failure> {
    let mut seen = Vec::new();
    let mut wanted = Vec::new();
    for s in stanzas {
        require_name("stanza name", &s.name)?;
        if s.name == "global" || s.name.contains(':') {
            return Err(format!("{:?} cannot be a stanza name", s.name).into());
        }
        if seen.contains(&s.name.as_str()) {
            return Err(format!("stanza {} is listed twice", s.name).into());
        }
        seen.push(s.name.as_str());
        if s.delete_backups && s.state != "absent" {
            return Err(format!(
                "stanza {}: delete_backups needs state: absent (backups are only ever deleted for a stanza being removed)",
                s.name
            )
            .into());
        }
        if s.state == "absent" || p.state == "absent" {
            continue;
        }
        let instances = s.instances.as_deref().unwrap_or_default();
        if instances.is_empty() {
            return Err(format!(
                "stanza {} has no instances (each needs host and name or path)",
                s.name
            )
            .into());
        }
        let mut remote = Vec::new();
        for inst in instances {
            require_host_name(&format!("stanza {}: instance host", s.name), &inst.host)?;
            let path = instance_path(inst.name.as_deref(), inst.path.as_deref())
                .map_err(|e| format!("stanza {}, instance on {}: {e}", s.name, inst.host))?;
            if !(1..=65535).contains(&inst.port) {
                return Err(format!(
                    "stanza {}, instance on {}: port {} is not a TCP port",
                    s.name, inst.host, inst.port
                )
                .into());
            }
            remote.push(RemoteInstance {
                host: &inst.host,
                path,
                port: inst.port,
                config_file: inst.config_file.as_deref().unwrap_or(&p.config_file),
            });
        }
        let clients = match &s.clients {
            Some(c) if !c.is_empty() => c.clone(),
            _ => instances.iter().map(|i| i.host.clone()).collect(),
        };
        wanted.push(Wanted {
            name: &s.name,
            instances: remote,
            clients,
        });
    }
    Ok(wanted)
}

/// `15/main` is Debian's version/cluster and lives in /var/lib/postgresql/15/main; an
/// explicit path wins.
pub fn instance_path(name: Option<&str>, path: Option<&Path>) -> Result<String, String> {
    if let Some(p) = path {
        if !p.is_absolute() {
            return Err(format!("path must be absolute, got {}", p.display()));
        }
        return Ok(p.display().to_string());
    }
    let name = name.ok_or("give name (Debian's version/cluster, e.g. 15/main) or path")?;
    match name.split_once('/') {
        Some((version, cluster))
            if !version.is_empty()
                && version.bytes().all(|b| b.is_ascii_digit())
                && !cluster.is_empty()
                && !cluster.contains('/') =>
        {
            Ok(PathBuf::from("/var/lib/postgresql")
                .join(version)
                .join(cluster)
                .display()
                .to_string())
        }
        _ => Err(format!(
            "instance name {name:?} is not Debian's version/cluster (e.g. 15/main); give path instead"
        )),
    }
}

/// `tls-server-auth` lines: each client certificate name with the stanzas it may use.
fn server_auth(wanted: &[Wanted]) -> Vec<String> {
    let mut by_client: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for w in wanted {
        for c in &w.clients {
            by_client.entry(c).or_default().push(w.name);
        }
    }
    by_client
        .into_iter()
        .map(|(cn, stanzas)| format!("{cn}={}", stanzas.join(",")))
        .collect()
}

/// (stanza, type, OnCalendar) per timer; a schedule without a stanza covers every stanza.
fn check_schedules<'a>(
    p: &'a Params,
    wanted: &[Wanted<'a>],
) -> Result<Vec<(&'a str, &'a str, &'a str)>, Failure> {
    let mut out: Vec<(&str, &str, &str)> = Vec::new();
    for s in p.schedules.as_deref().unwrap_or_default() {
        if s.on_calendar.trim().is_empty() || s.on_calendar.contains('\n') {
            return Err(format!(
                "schedule {}: on_calendar {:?} is not a systemd calendar expression",
                s.kind, s.on_calendar
            )
            .into());
        }
        let targets: Vec<&str> = match &s.stanza {
            Some(name) => {
                let w = wanted.iter().find(|w| w.name == name).ok_or_else(|| {
                    format!(
                        "schedule {} names stanza {name:?}, which is not a present stanza of this task (stanzas: {})",
                        s.kind,
                        wanted.iter().map(|w| w.name).collect::<Vec<_>>().join(", ")
                    )
                })?;
                vec![w.name]
            }
            None => wanted.iter().map(|w| w.name).collect(),
        };
        for t in targets {
            if out.iter().any(|(st, k, _)| *st == t && *k == s.kind) {
                return Err(format!("two {} schedules for stanza {t}", s.kind).into());
            }
            out.push((t, &s.kind, &s.on_calendar));
        }
    }
    Ok(out)
}

fn stanza_exists(repo: &Path, name: &str) -> bool {
    repo.join("backup").join(name).join("backup.info").exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debian_instance_names() {
        assert_eq!(
            instance_path(Some("15/main"), None).unwrap(),
            "/var/lib/postgresql/15/main"
        );
        assert_eq!(
            instance_path(Some("15/main"), Some(Path::new("/srv/pg"))).unwrap(),
            "/srv/pg"
        );
        assert!(instance_path(Some("main"), None).is_err());
        assert!(instance_path(Some("15/a/b"), None).is_err());
        assert!(instance_path(None, Some(Path::new("rel"))).is_err());
        assert!(instance_path(None, None).is_err());
    }
}
