//! `role: database`: a database host's side — its `pgbackrest server` (the repository reads
//! pg_control and files through it), the repository it archives to, asynchronous archiving,
//! and PostgreSQL's `archive_command`.

use std::path::Path;

use pgshift_core::datadir::DataDir;
use pgshift_core::ini;
use pgshift_core::pg::sql::quote_literal;
use pgshift_core::pg::Client;
use pgshift_core::pgbackrest;
use pgshift_core::process::Owner;
use serde_json::{json, Map, Value};

use super::conf::{self, DatabaseGlobal};
use super::repository::instance_path;
use super::units::{self, Units};
use super::{
    read_config, refuse_foreign, report, require_host_name, require_name, result, tls,
    ConfigChange, OwnedDir, Params,
};
use crate::login::LoginParams;
use crate::protocol::{Context, Failure};

pub fn run(
    ctx: &mut Context,
    p: &Params,
    owner: &Owner,
    login: &LoginParams,
) -> Result<Map<String, Value>, Failure> {
    refuse_foreign(p)?;
    let stanza = p
        .stanza
        .as_deref()
        .ok_or("role: database needs stanza (the repository's stanza for this cluster)")?;
    require_name("stanza", stanza)?;
    let present = p.state == "present";
    let archive_command = format!(
        "pgbackrest --config={} --stanza={stanza} archive-push %p",
        p.config_file.display()
    );
    let restore_command = format!(
        "pgbackrest --config={} --stanza={stanza} archive-get %f \"%p\"",
        p.config_file.display()
    );

    let before = read_config(&p.config_file)?;
    let base = before.clone().unwrap_or_default();
    let mut want_units = Units::new();
    let mut spool = None;
    let mut port = None;
    let after = if present {
        let repository_host = p
            .repository_host
            .as_deref()
            .ok_or("role: database needs repository_host (the repository's host name, as in its certificate)")?;
        require_host_name("repository_host", repository_host)?;
        let pg_path = match (&p.pg_path, &p.instance, &p.data_directory) {
            (Some(path), _, _) => instance_path(None, Some(path))?,
            (None, Some(name), _) => instance_path(Some(name), None)?,
            (None, None, Some(dd)) => instance_path(None, Some(dd))?,
            (None, None, None) => {
                return Err(
                    "role: database needs pg_path, instance (e.g. 15/main) or data_directory"
                        .into(),
                )
            }
        };
        if !(1..=65535).contains(&p.pg_port) {
            return Err(format!("pg_port {} is not a TCP port", p.pg_port).into());
        }
        let tls = tls::check(
            ctx,
            p.tls
                .as_ref()
                .ok_or("role: database needs tls (cert, key, ca): the repository reaches this host's pgbackrest server over TLS")?,
            owner,
        )?;
        spool = Some(OwnedDir::check("spool_path", &p.spool_path, owner)?);
        port = Some(tls.port);
        let global = conf::database_global(
            &tls,
            &DatabaseGlobal {
                repository_host,
                repository_config: p
                    .repository_config_file
                    .as_deref()
                    .unwrap_or(&p.config_file),
                spool_path: &p.spool_path,
                queue_max: &p.archive_push_queue_max,
                // The repository's certificate name may use this stanza through our server.
                auth: vec![format!("{repository_host}={stanza}")],
            },
        );
        let stanza_keys = conf::database_stanza(Path::new(&pg_path), p.pg_port);
        let (name, unit) = units::server(&p.config_file, owner);
        want_units.insert(name, unit);
        let text = conf::render(
            &base,
            conf::owned(conf::GLOBAL_DATABASE),
            &global,
            &[(stanza.to_string(), stanza_keys)],
            &[],
        );
        let push = conf::archive_push(p.archive_timeout, p.io_timeout);
        ini::set_section(
            &text,
            conf::ARCHIVE_PUSH_SECTION,
            conf::is_archive_push_key,
            &push,
        )
    } else {
        let text = conf::render(
            &base,
            conf::owned(conf::GLOBAL_DATABASE),
            &vec![],
            &[],
            &[stanza.to_string()],
        );
        ini::set_section(
            &text,
            conf::ARCHIVE_PUSH_SECTION,
            conf::is_archive_push_key,
            &[],
        )
    };
    units::verify(&want_units)?;
    let unit_plan = units::plan(&p.units_dir, &want_units)?;
    let config = ConfigChange { before, after };

    // archive_command, when we are told which server to set it on.
    let mut pg = None;
    let mut archive_change = false;
    if let (true, Some(dd)) = (present, &p.data_directory) {
        let dd = DataDir::new(dd.clone());
        match dd.postmaster()? {
            Some(pm) => {
                let mut client = Client::connect(&login.connect_options(Some(&pm))?)?;
                let current: String = client.query_one("SHOW archive_command", &[])?.get(0);
                let mode: String = client.query_one("SHOW archive_mode", &[])?.get(0);
                if mode == "off" {
                    ctx.warn(format!(
                        "archive_mode is off on {}: set archive_mode = on and restart PostgreSQL, or no WAL reaches the repository",
                        dd.path.display()
                    ));
                }
                archive_change = current != archive_command;
                pg = Some(client);
            }
            None => ctx.warn(format!(
                "no PostgreSQL is running on {}: archive_command was not set; run again once it runs",
                dd.path.display()
            )),
        }
    }

    let spool_missing = spool.as_ref().is_some_and(|s| !s.exists);
    let changed = config.changed() || !unit_plan.is_empty() || archive_change || spool_missing;
    let mut out = result(changed, String::new());
    out.insert("config_file".into(), json!(p.config_file));
    out.insert("archive_command".into(), archive_command.clone().into());
    out.insert("restore_command".into(), restore_command.into());
    out.insert("archive_command_changed".into(), archive_change.into());
    report(
        ctx,
        &mut out,
        &p.config_file,
        &config,
        &unit_plan,
        &want_units,
    );
    let msg = match (changed, ctx.check_mode) {
        (false, _) => "database host's pgBackRest configuration is up to date",
        (true, true) => "would update the database host's pgBackRest configuration",
        (true, false) => "database host's pgBackRest configuration updated",
    };
    out.insert("msg".into(), msg.into());
    out.insert("server_reloaded".into(), false.into());
    if ctx.check_mode || !changed {
        return Ok(out);
    }

    if let Some(s) = &spool {
        s.create(owner)?;
    }
    config.write(&p.config_file, owner)?;
    unit_plan.apply(&p.units_dir)?;
    if let (true, Some(client)) = (archive_change, pg.as_mut()) {
        // ALTER SYSTEM also works on a standby (it writes postgresql.auto.conf, not WAL), so
        // every node archives the same way once it is promoted.
        client.batch_execute(&format!(
            "ALTER SYSTEM SET archive_command = {}",
            quote_literal(&archive_command)
        ))?;
        client.batch_execute("SELECT pg_reload_conf()")?;
    }
    if let (true, Some(port)) = (config.changed(), port) {
        out.insert(
            "server_reloaded".into(),
            (pgbackrest::reload_servers(port, &p.config_file)? > 0).into(),
        );
    }
    Ok(out)
}
