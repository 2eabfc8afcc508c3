//! `pgshift.cluster.pg_replication_user`: a LOGIN REPLICATION role with exactly the attributes a
//! streaming-replication user needs, and a SCRAM-SHA-256 verifier computed on the host.

use pgshift_core::pg::sql::{quote_ident, quote_literal};
use pgshift_core::pg::Client;
use pgshift_core::pgconf::check_value;
use pgshift_core::scram::{self, Verifier};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::args::{Arg, Default, Kind};
use crate::login::LoginParams;
use crate::protocol::{Context, Failure, Module};

const SPEC: &[Arg] = &[
    Arg::new("name", Kind::Str).required().aliases(&["user"]),
    Arg::new("password", Kind::Str).no_log(),
    Arg::new("conn_limit", Kind::Int).default(Default::Int(-1)),
    Arg::new("state", Kind::Str)
        .choices(&["present", "absent"])
        .default(Default::Str("present")),
    Arg::new("force", Kind::Bool).default(Default::Bool(false)),
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    name: String,
    password: Option<String>,
    conn_limit: i64,
    state: String,
    force: bool,
}

/// The attributes a replication role must have, as (catalog column, SQL keyword if true,
/// keyword if false, wanted value).
const ATTRIBUTES: [(&str, &str, &str, bool); 5] = [
    ("rolcanlogin", "LOGIN", "NOLOGIN", true),
    ("rolreplication", "REPLICATION", "NOREPLICATION", true),
    ("rolsuper", "SUPERUSER", "NOSUPERUSER", false),
    ("rolcreatedb", "CREATEDB", "NOCREATEDB", false),
    ("rolcreaterole", "CREATEROLE", "NOCREATEROLE", false),
];

/// A role as found in pg_authid.
struct Role {
    flags: [bool; 5],
    conn_limit: i32,
    password: Option<String>,
}

impl Role {
    fn load(c: &mut Client, name: &str) -> Result<Option<Role>, Failure> {
        let rows = c.query(
            "SELECT rolcanlogin, rolreplication, rolsuper, rolcreatedb, rolcreaterole, rolconnlimit, rolpassword \
             FROM pg_authid WHERE rolname = $1",
            &[&name],
        )?;
        Ok(rows.first().map(|r| Role {
            flags: [r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)],
            conn_limit: r.get(5),
            password: r.get(6),
        }))
    }

    fn describe(&self, name: &str) -> Value {
        let mut m = Map::new();
        m.insert("name".into(), name.into());
        for (i, (_, yes, _, _)) in ATTRIBUTES.iter().enumerate() {
            m.insert(yes.to_ascii_lowercase(), self.flags[i].into());
        }
        m.insert("conn_limit".into(), self.conn_limit.into());
        let kind = match self.password.as_deref() {
            None => "none",
            Some(p) if p.starts_with("SCRAM-SHA-256$") => "scram-sha-256",
            Some(p) if p.starts_with("md5") => "md5",
            Some(_) => "other",
        };
        m.insert("password".into(), kind.into());
        Value::Object(m)
    }
}

pub struct PgReplicationUser;

impl Module for PgReplicationUser {
    const NAME: &'static str = "pg_replication_user";
    const SPEC: &'static [Arg] = SPEC;
    const LOGIN: bool = true;
    type Params = Params;

    fn run(
        ctx: &mut Context,
        p: Params,
        login: LoginParams,
    ) -> Result<Map<String, Value>, Failure> {
        check_name(&p.name)?;
        if let Some(pw) = &p.password {
            if pw.starts_with("SCRAM-SHA-256$") && !scram::is_verifier(pw) {
                return Err("password starts like a SCRAM-SHA-256 verifier but is not a valid one; give the plaintext or the verifier exactly as pg_authid holds it".into());
            }
            check_value("password", pw, "a role's password", true)?;
        }
        let conn_limit = i32::try_from(p.conn_limit)
            .ok()
            .filter(|&l| l >= -1)
            .ok_or_else(|| {
                format!(
                    "conn_limit must be -1 (no limit) or a non-negative number, got {}",
                    p.conn_limit
                )
            })?;
        if p.state == "absent" && p.password.is_some() {
            ctx.warn("password is ignored with state: absent");
        }
        let mut c = login.connect(None)?;
        let current = Role::load(&mut c, &p.name)?;
        let before = current.as_ref().map(|r| r.describe(&p.name));

        // (statement to run, statement to show): the shown one never carries the verifier.
        let mut statements: Vec<(String, String)> = Vec::new();
        let ident = quote_ident(&p.name);
        let mut after_role = None;
        if let Some(role) = &current {
            refuse_foreign_role(&p, role)?;
        }
        if p.state == "absent" {
            if current.is_some() {
                refuse_while_streaming(&mut c, &p.name, p.force, &mut statements)?;
                let sql = format!("DROP ROLE {ident}");
                statements.push((sql.clone(), sql));
            }
        } else {
            let password = match p.password.as_deref() {
                Some("") => {
                    return Err(
                        "password must not be empty (omit it to leave the password alone)".into(),
                    )
                }
                Some(pw) => new_verifier(pw, current.as_ref().and_then(|r| r.password.as_deref())),
                None => None,
            };
            let wanted: Vec<&str> = ATTRIBUTES
                .iter()
                .map(|(_, y, n, want)| if *want { *y } else { *n })
                .collect();
            match &current {
                None => {
                    let base = format!(
                        "CREATE ROLE {ident} {} CONNECTION LIMIT {conn_limit}",
                        wanted.join(" ")
                    );
                    statements.push(with_password(&base, password.as_deref()));
                }
                Some(role) => {
                    let mut changes: Vec<&str> = ATTRIBUTES
                        .iter()
                        .zip(role.flags)
                        .filter(|((_, _, _, want), have)| want != have)
                        .map(|((_, y, n, want), _)| if *want { *y } else { *n })
                        .collect();
                    let limit = format!("CONNECTION LIMIT {conn_limit}");
                    if role.conn_limit != conn_limit {
                        changes.push(&limit);
                    }
                    if !changes.is_empty() {
                        let sql = format!("ALTER ROLE {ident} WITH {}", changes.join(" "));
                        statements.push((sql.clone(), sql));
                    }
                    if password.is_some() {
                        statements.push(with_password(
                            &format!("ALTER ROLE {ident}"),
                            password.as_deref(),
                        ));
                    }
                }
            }
            let mut flags = [false; 5];
            for (i, (_, _, _, want)) in ATTRIBUTES.iter().enumerate() {
                flags[i] = *want;
            }
            let stored = password.or_else(|| current.as_ref().and_then(|r| r.password.clone()));
            after_role = Some(
                Role {
                    flags,
                    conn_limit,
                    password: stored,
                }
                .describe(&p.name),
            );
        }

        let changed = !statements.is_empty();
        if changed && !ctx.check_mode {
            c.batch_execute("BEGIN")?;
            for (sql, shown) in &statements {
                if let Err(e) = c.batch_execute(sql) {
                    let _ = c.batch_execute("ROLLBACK");
                    return Err(format!("{shown}: {e}").into());
                }
            }
            c.batch_execute("COMMIT")?;
        }
        let mut out = Map::new();
        out.insert("changed".into(), changed.into());
        out.insert(
            "queries".into(),
            statements
                .iter()
                .map(|(_, shown)| shown.clone())
                .collect::<Vec<_>>()
                .into(),
        );
        out.insert("role".into(), after_role.clone().unwrap_or(Value::Null));
        out.insert(
            "diff".into(),
            json!({
                "before": before.map(|b| format!("{}\n", serde_json::to_string_pretty(&b).unwrap_or_default())).unwrap_or_default(),
                "after": after_role.map(|a| format!("{}\n", serde_json::to_string_pretty(&a).unwrap_or_default())).unwrap_or_default(),
                "before_header": format!("role {}", p.name),
                "after_header": format!("role {}", p.name),
            }),
        );
        let verb = match (changed, ctx.check_mode) {
            (false, _) => "is as requested",
            (true, true) => "would be changed",
            (true, false) => "changed",
        };
        out.insert(
            "msg".into(),
            format!("replication role {} {verb}", p.name).into(),
        );
        Ok(out)
    }
}

/// A role name PostgreSQL stores as given: not empty, no NUL or control characters (they
/// cannot be typed back), at most 63 bytes (longer names are silently truncated, so the role
/// created would not be the one named).
fn check_name(name: &str) -> Result<(), Failure> {
    if name.is_empty() {
        return Err("name must not be empty".into());
    }
    check_value("name", name, "a role name", false)?;
    if name.len() > 63 {
        return Err(format!(
            "name {name:?} is {} bytes; PostgreSQL truncates role names to 63 bytes, so it would manage another role",
            name.len()
        )
        .into());
    }
    Ok(())
}

/// A role that exists but is not a replication role, or is a superuser, belongs to someone
/// else: making it NOSUPERUSER (or dropping it) could lock out an administrator or an
/// application. Only `force: true` says that is intended.
fn refuse_foreign_role(p: &Params, role: &Role) -> Result<(), Failure> {
    let (superuser, replication) = (role.flags[2], role.flags[1]);
    if p.force || (replication && !superuser) {
        return Ok(());
    }
    let what = match (superuser, replication) {
        (true, _) => "is a superuser",
        _ => "is not a replication role (NOREPLICATION)",
    };
    let verb = if p.state == "absent" {
        "drop it"
    } else {
        "make it exactly LOGIN REPLICATION NOSUPERUSER NOCREATEDB NOCREATEROLE"
    };
    Err(format!(
        "role {} exists and {what}; refusing to {verb}: set force: true if that is intended (name the replication role you mean otherwise)",
        p.name
    )
    .into())
}

/// The verifier to store, or `None` when the stored one already matches: a verifier given by
/// the user is compared as text, a plaintext is checked against the stored verifier.
fn new_verifier(given: &str, stored: Option<&str>) -> Option<String> {
    if scram::is_verifier(given) {
        return (stored != Some(given)).then(|| given.to_string());
    }
    let unchanged = stored
        .and_then(Verifier::parse)
        .is_some_and(|v| v.verifies(given));
    (!unchanged).then(|| scram::make_verifier(given))
}

fn with_password(base: &str, verifier: Option<&str>) -> (String, String) {
    match verifier {
        Some(v) => (
            format!("{base} PASSWORD {}", quote_literal(v)),
            format!("{base} PASSWORD '********'"),
        ),
        None => (base.to_string(), base.to_string()),
    }
}

/// Dropping a role that a standby streams with would cut replication: refuse unless forced,
/// and when forced, end those sessions first (DROP ROLE would not stop them).
fn refuse_while_streaming(
    c: &mut Client,
    name: &str,
    force: bool,
    statements: &mut Vec<(String, String)>,
) -> Result<(), Failure> {
    let rows = c.query(
        "SELECT pid, coalesce(application_name, ''), coalesce(client_addr::text, 'local') \
         FROM pg_stat_activity WHERE usename = $1 AND backend_type = 'walsender'",
        &[&name],
    )?;
    if rows.is_empty() {
        return Ok(());
    }
    let who: Vec<String> = rows
        .iter()
        .map(|r| format!("{} from {}", r.get::<_, String>(1), r.get::<_, String>(2)))
        .collect();
    if !force {
        return Err(format!(
            "role {name} has {} live replication connection(s) ({}); set force: true to end them and drop the role",
            rows.len(),
            who.join(", ")
        )
        .into());
    }
    let sql = format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = {} AND backend_type = 'walsender'",
        quote_literal(name)
    );
    statements.push((sql.clone(), sql));
    Ok(())
}
