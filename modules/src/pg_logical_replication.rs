//! `pgshift.cluster.pg_logical_replication`: one side of a two-node multi-home pair over
//! bidirectional logical replication (PostgreSQL 16+, `origin = none` so changes do not loop
//! back). Run on one node it ensures the publication on this node AND on the peer (it connects
//! to both), then this node's subscription to the peer's publication; run on each node in
//! turn, the pair replicates both ways. Every check (versions, tables on both ends, rows on
//! both ends with copy_data) comes before the first change.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use pgshift_core::pg::sql::{quote_ident, quote_literal};
use pgshift_core::pg::{Client, ConnectOptions, SslMode};
use pgshift_core::pgconf::{check_value, conninfo};
use pgshift_core::userfile::UserFile;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::args::{Arg, Default, Kind};
use crate::login::{LoginParams, SSL_MODES};
use crate::protocol::{Context, Failure, Module};

const SPEC: &[Arg] = &[
    Arg::new("publication", Kind::Str).default(Default::Str("pgshift_multihome")),
    Arg::new("tables", Kind::List),
    Arg::new("subscription", Kind::Str),
    Arg::new("peer_host", Kind::Str).required(),
    Arg::new("peer_port", Kind::Int).default(Default::Int(5432)),
    Arg::new("peer_user", Kind::Str).default(Default::Str("postgres")),
    Arg::new("subscription_user", Kind::Str),
    Arg::new("peer_dbname", Kind::Str),
    Arg::new("peer_passfile", Kind::Path),
    Arg::new("peer_ssl_mode", Kind::Str)
        .choices(SSL_MODES)
        .default(Default::Str("prefer")),
    Arg::new("peer_ca_cert", Kind::Path),
    Arg::new("peer_ssl_cert", Kind::Path),
    Arg::new("peer_ssl_key", Kind::Path),
    Arg::new("copy_data", Kind::Bool).default(Default::Bool(false)),
    Arg::new("refresh", Kind::Bool).default(Default::Bool(false)),
    Arg::new("state", Kind::Str)
        .choices(&["present", "absent"])
        .default(Default::Str("present")),
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    publication: String,
    tables: Option<Vec<String>>,
    subscription: Option<String>,
    peer_host: String,
    peer_port: i64,
    peer_user: String,
    subscription_user: Option<String>,
    peer_dbname: Option<String>,
    peer_passfile: Option<PathBuf>,
    peer_ssl_mode: String,
    peer_ca_cert: Option<PathBuf>,
    peer_ssl_cert: Option<PathBuf>,
    peer_ssl_key: Option<PathBuf>,
    copy_data: bool,
    refresh: bool,
    state: String,
}

/// Every value that lands in the subscription's connection string or in SQL is one line,
/// and every file named is a regular file (a FIFO passfile would hang the task), before
/// either server is asked anything.
fn check_inputs(p: &Params) -> Result<(), Failure> {
    let mut values: Vec<(String, String)> = vec![
        ("publication".into(), p.publication.clone()),
        ("peer_host".into(), p.peer_host.clone()),
        ("peer_user".into(), p.peer_user.clone()),
    ];
    values.extend(
        p.subscription
            .clone()
            .map(|v| ("subscription".to_string(), v)),
    );
    values.extend(
        p.subscription_user
            .clone()
            .map(|v| ("subscription_user".to_string(), v)),
    );
    values.extend(
        p.peer_dbname
            .clone()
            .map(|v| ("peer_dbname".to_string(), v)),
    );
    for (i, t) in p.tables.iter().flatten().enumerate() {
        values.push((format!("tables[{i}]"), t.clone()));
    }
    for (option, path) in [
        ("peer_passfile", &p.peer_passfile),
        ("peer_ca_cert", &p.peer_ca_cert),
        ("peer_ssl_cert", &p.peer_ssl_cert),
        ("peer_ssl_key", &p.peer_ssl_key),
    ] {
        if let Some(path) = path {
            UserFile::existing(option, path)?;
            values.push((option.into(), path.display().to_string()));
        }
    }
    for (what, v) in &values {
        check_value(
            what,
            v,
            "the subscription's connection string or SQL",
            false,
        )?;
    }
    if p.peer_host.contains(char::is_whitespace) {
        return Err(format!("peer_host {:?} is not a host name or address", p.peer_host).into());
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Here,
    Peer,
}

/// A statement, the side it runs on, and whether it may run inside a transaction.
struct Step {
    side: Side,
    sql: String,
    transactional: bool,
}

pub struct PgLogicalReplication;

/// PostgreSQL 16 brought `origin = none`; without it two-way replication loops.
const MIN_VERSION: i32 = 160_000;

fn version(c: &mut Client, what: &str) -> Result<i32, Failure> {
    let v: i32 = c
        .query_one("SELECT current_setting('server_version_num')::int", &[])?
        .get(0);
    if v < MIN_VERSION {
        return Err(format!(
            "{what} runs PostgreSQL {}.{}: multi-home replication needs PostgreSQL 16 or later (subscriptions with origin = none)",
            v / 10_000,
            v % 10_000
        )
        .into());
    }
    Ok(v)
}

/// "schema.table" names of the user tables.
fn user_tables(c: &mut Client) -> Result<BTreeSet<String>, Failure> {
    Ok(c.query(
        "SELECT format('%s.%s', n.nspname, c.relname) FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition \
               AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_'",
        &[],
    )?
    .iter()
    .map(|r| r.get(0))
    .collect())
}

/// The publication as it is: (FOR ALL TABLES?, its tables), or None.
fn publication(c: &mut Client, name: &str) -> Result<Option<(bool, BTreeSet<String>)>, Failure> {
    let rows = c.query(
        "SELECT puballtables FROM pg_publication WHERE pubname = $1",
        &[&name],
    )?;
    let Some(all) = rows.first().map(|r| r.get::<_, bool>(0)) else {
        return Ok(None);
    };
    let tables = c
        .query(
            "SELECT format('%s.%s', schemaname, tablename) FROM pg_publication_tables WHERE pubname = $1",
            &[&name],
        )?
        .iter()
        .map(|r| r.get(0))
        .collect();
    Ok(Some((all, tables)))
}

/// `schema.table` as a quoted SQL name.
fn qualified(name: &str) -> String {
    let (schema, table) = name.split_once('.').unwrap_or(("public", name));
    format!("{}.{}", quote_ident(schema), quote_ident(table))
}

/// The steps that make `name` on `side` publish `want` (None: all tables).
fn publication_steps(
    side: Side,
    name: &str,
    have: &Option<(bool, BTreeSet<String>)>,
    want: &Option<BTreeSet<String>>,
) -> Vec<Step> {
    let target = match want {
        None => "FOR ALL TABLES".to_string(),
        Some(t) => format!(
            "FOR TABLE {}",
            t.iter()
                .map(|n| qualified(n))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let step = |sql: String| Step {
        side,
        sql,
        transactional: true,
    };
    let ident = quote_ident(name);
    match (have, want) {
        (None, _) => vec![step(format!("CREATE PUBLICATION {ident} {target}"))],
        (Some((true, _)), None) => vec![],
        (Some((false, have)), Some(want)) if have == want => vec![],
        (Some((false, _)), Some(want)) => vec![step(format!(
            "ALTER PUBLICATION {ident} SET TABLE {}",
            want.iter()
                .map(|n| qualified(n))
                .collect::<Vec<_>>()
                .join(", ")
        ))],
        // FOR ALL TABLES cannot be altered into a list or back: replace it.
        _ => vec![
            step(format!("DROP PUBLICATION {ident}")),
            step(format!("CREATE PUBLICATION {ident} {target}")),
        ],
    }
}

/// The subscription as it is in this database.
struct Subscription {
    conninfo: String,
    publications: Vec<String>,
    origin: String,
    enabled: bool,
    tables: BTreeSet<String>,
}

fn subscription(c: &mut Client, name: &str) -> Result<Option<Subscription>, Failure> {
    let rows = c.query(
        "SELECT s.subconninfo, s.subpublications, s.suborigin, s.subenabled, \
                coalesce((SELECT array_agg(format('%s.%s', n.nspname, k.relname)) \
                            FROM pg_subscription_rel r JOIN pg_class k ON k.oid = r.srrelid \
                            JOIN pg_namespace n ON n.oid = k.relnamespace WHERE r.srsubid = s.oid), '{}') \
         FROM pg_subscription s \
         WHERE s.subname = $1 AND s.subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
        &[&name],
    )?;
    Ok(rows.first().map(|r| Subscription {
        conninfo: r.get(0),
        publications: r.get(1),
        origin: r.get(2),
        enabled: r.get(3),
        tables: r.get::<_, Vec<String>>(4).into_iter().collect(),
    }))
}

/// A subscription name from the peer's host: `pgshift_from_<host>` in [a-z0-9_].
fn default_subscription(peer_host: &str) -> String {
    let host: String = peer_host
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("pgshift_from_{host}")
}

fn has_rows(c: &mut Client, table: &str) -> Result<bool, Failure> {
    Ok(c.query_one(
        &format!("SELECT EXISTS (SELECT 1 FROM {})", qualified(table)),
        &[],
    )?
    .get(0))
}

impl Module for PgLogicalReplication {
    const NAME: &'static str = "pg_logical_replication";
    const SPEC: &'static [Arg] = SPEC;
    const LOGIN: bool = true;
    type Params = Params;

    fn run(
        ctx: &mut Context,
        p: Params,
        login: LoginParams,
    ) -> Result<Map<String, Value>, Failure> {
        if p.publication.is_empty() {
            return Err("publication must not be empty".into());
        }
        check_inputs(&p)?;
        let sub_name = p
            .subscription
            .clone()
            .unwrap_or_else(|| default_subscription(&p.peer_host));
        let local_opts = login.connect_options(None)?;
        let mut here = Client::connect(&local_opts)?;
        version(&mut here, "this node")?;
        let pub_here = publication(&mut here, &p.publication)?;
        let sub_here = subscription(&mut here, &sub_name)?;
        let before = json!({
            "publication": pub_here.as_ref().map(|(all, t)| json!({"all_tables": all, "tables": t})),
            "subscription": sub_here.as_ref().map(|s| json!({
                "publications": s.publications, "origin": s.origin, "enabled": s.enabled, "tables": s.tables,
            })),
        });

        let mut steps: Vec<Step> = Vec::new();
        let mut after = json!({"publication": null, "subscription": null});
        if p.state == "absent" {
            // This node's half only: its subscription (DROP SUBSCRIPTION also drops the slot
            // on the peer) and its publication. The peer's half is the peer's run.
            if sub_here.is_some() {
                steps.push(Step {
                    side: Side::Here,
                    sql: format!("DROP SUBSCRIPTION {}", quote_ident(&sub_name)),
                    transactional: false,
                });
            }
            if pub_here.is_some() {
                steps.push(Step {
                    side: Side::Here,
                    sql: format!("DROP PUBLICATION {}", quote_ident(&p.publication)),
                    transactional: true,
                });
            }
            return finish(ctx, &mut here, None, steps, before, after, &p, &sub_name);
        }

        let peer_dbname = p.peer_dbname.clone().unwrap_or(local_opts.dbname.clone());
        let peer_port = u16::try_from(p.peer_port)
            .ok()
            .filter(|v| *v > 0)
            .ok_or_else(|| format!("peer_port {} is not a TCP port", p.peer_port))?;
        let ssl_mode: SslMode = p.peer_ssl_mode.parse()?;
        let mut peer_opts = ConnectOptions {
            host: Some(p.peer_host.clone()),
            port: peer_port,
            user: p.peer_user.clone(),
            password: None,
            unix_socket: None,
            dbname: peer_dbname.clone(),
            ssl_mode,
            ca_cert: p.peer_ca_cert.clone(),
            ssl_cert: p.peer_ssl_cert.clone(),
            ssl_key: p.peer_ssl_key.clone(),
            connect_timeout: Duration::from_secs(10),
            application_name: "pgshift".into(),
        };
        if let Some(f) = &p.peer_passfile {
            peer_opts
                .password_from_passfile(f)
                .map_err(|e| format!("peer_passfile: {e}"))?;
        }
        let mut peer = Client::connect(&peer_opts)
            .map_err(|e| format!("cannot connect to the peer {}: {e}", peer_opts.describe()))?;
        version(&mut peer, &format!("the peer {}", p.peer_host))?;

        let tables_here = user_tables(&mut here)?;
        let tables_peer = user_tables(&mut peer)?;
        // What each side publishes: the given tables, or all of its own.
        let want: Option<BTreeSet<String>> = p.tables.as_ref().map(|t| {
            t.iter()
                .map(|n| {
                    if n.contains('.') {
                        n.clone()
                    } else {
                        format!("public.{n}")
                    }
                })
                .collect()
        });
        if let Some(w) = &want {
            if w.is_empty() {
                return Err("tables is empty: omit it to publish all tables".into());
            }
            let missing: Vec<&String> = w.difference(&tables_here).collect();
            if !missing.is_empty() {
                return Err(format!("no such table on this node: {}", join(missing)).into());
            }
        }
        let published_here = want.clone().unwrap_or(tables_here.clone());
        let published_peer = want.clone().unwrap_or(tables_peer.clone());
        // A table missing on the receiving end stops the whole apply stream.
        let peer_lacks: Vec<&String> = published_here.difference(&tables_peer).collect();
        if !peer_lacks.is_empty() {
            return Err(format!(
                "the peer {} lacks tables this node publishes (create them there first): {}",
                p.peer_host,
                join(peer_lacks)
            )
            .into());
        }
        let here_lacks: Vec<&String> = published_peer.difference(&tables_here).collect();
        if !here_lacks.is_empty() {
            return Err(format!(
                "this node lacks tables the peer {} publishes (create them here first): {}",
                p.peer_host,
                join(here_lacks)
            )
            .into());
        }
        let copying = p.copy_data && (sub_here.is_none() || (p.refresh && sub_here.is_some()));
        if copying {
            // Copying into a side that has rows of the same table, while that side's rows
            // come back the other way, duplicates data.
            let mut both = Vec::new();
            for t in &published_peer {
                if has_rows(&mut here, t)? && has_rows(&mut peer, t)? {
                    both.push(t);
                }
            }
            if !both.is_empty() {
                return Err(format!(
                    "copy_data: both sides hold rows of {}: copying would duplicate them; copy on one side only (copy_data: false here)",
                    join(both)
                )
                .into());
            }
        }

        let pub_peer = publication(&mut peer, &p.publication)?;
        steps.extend(publication_steps(
            Side::Peer,
            &p.publication,
            &pub_peer,
            &want,
        ));
        steps.extend(publication_steps(
            Side::Here,
            &p.publication,
            &pub_here,
            &want,
        ));

        // The subscription's connection: a passfile, never a password, in the catalog.
        let mut pairs: Vec<(&str, String)> = vec![
            ("host", p.peer_host.clone()),
            ("port", peer_port.to_string()),
            // The module administers the peer as peer_user; the subscription may log in as
            // a replication role (e.g. by its client certificate).
            (
                "user",
                p.subscription_user.clone().unwrap_or(p.peer_user.clone()),
            ),
            ("dbname", peer_dbname.clone()),
            ("sslmode", p.peer_ssl_mode.clone()),
        ];
        for (k, v) in [
            ("passfile", &p.peer_passfile),
            ("sslrootcert", &p.peer_ca_cert),
            ("sslcert", &p.peer_ssl_cert),
            ("sslkey", &p.peer_ssl_key),
        ] {
            if let Some(v) = v {
                pairs.push((k, v.display().to_string()));
            }
        }
        let info = conninfo(
            &pairs
                .iter()
                .map(|(k, v)| (*k, v.as_str()))
                .collect::<Vec<_>>(),
        );
        let sub = quote_ident(&sub_name);
        let sub_step = |sql: String| Step {
            side: Side::Here,
            sql,
            transactional: false,
        };
        match &sub_here {
            None => steps.push(sub_step(format!(
                "CREATE SUBSCRIPTION {sub} CONNECTION {} PUBLICATION {} WITH (origin = none, copy_data = {})",
                quote_literal(&info),
                quote_ident(&p.publication),
                p.copy_data
            ))),
            Some(s) => {
                if s.conninfo != info {
                    steps.push(sub_step(format!(
                        "ALTER SUBSCRIPTION {sub} CONNECTION {}",
                        quote_literal(&info)
                    )));
                }
                if s.publications != [p.publication.clone()] {
                    steps.push(sub_step(format!(
                        "ALTER SUBSCRIPTION {sub} SET PUBLICATION {} WITH (refresh = false)",
                        quote_ident(&p.publication)
                    )));
                }
                if s.origin != "none" {
                    steps.push(sub_step(format!("ALTER SUBSCRIPTION {sub} SET (origin = none)")));
                }
                if !s.enabled {
                    steps.push(sub_step(format!("ALTER SUBSCRIPTION {sub} ENABLE")));
                }
                // New tables on the peer reach this node only after a refresh.
                if p.refresh && s.tables != published_peer {
                    steps.push(sub_step(format!(
                        "ALTER SUBSCRIPTION {sub} REFRESH PUBLICATION WITH (copy_data = {})",
                        p.copy_data
                    )));
                } else if s.tables != published_peer {
                    ctx.warn(format!(
                        "subscription {sub_name} does not receive {} yet: run with refresh: true",
                        join(published_peer.difference(&s.tables).collect())
                    ));
                }
            }
        }
        after = json!({
            "publication": {"all_tables": want.is_none(), "tables": published_here},
            "subscription": {
                "publications": [p.publication], "origin": "none", "enabled": true,
                "tables": if sub_here.is_none() || p.refresh { published_peer.clone() }
                          else { sub_here.as_ref().map(|s| s.tables.clone()).unwrap_or_default() },
            },
        });
        finish(
            ctx,
            &mut here,
            Some(&mut peer),
            steps,
            before,
            after,
            &p,
            &sub_name,
        )
    }
}

fn join(items: Vec<&String>) -> String {
    items
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

#[allow(clippy::too_many_arguments)]
fn finish(
    ctx: &mut Context,
    here: &mut Client,
    mut peer: Option<&mut Client>,
    steps: Vec<Step>,
    before: Value,
    after: Value,
    p: &Params,
    sub_name: &str,
) -> Result<Map<String, Value>, Failure> {
    let changed = !steps.is_empty();
    if changed && !ctx.check_mode {
        for side in [Side::Peer, Side::Here] {
            let c: &mut Client = match side {
                Side::Here => &mut *here,
                Side::Peer => match peer.as_deref_mut() {
                    Some(c) => c,
                    None => continue,
                },
            };
            let mine: Vec<&Step> = steps.iter().filter(|s| s.side == side).collect();
            // Publication changes on one side are one transaction; subscription commands
            // cannot run inside one and go one by one.
            let tx: Vec<&&Step> = mine.iter().filter(|s| s.transactional).collect();
            if !tx.is_empty() {
                c.batch_execute("BEGIN")?;
                for s in &tx {
                    if let Err(e) = c.batch_execute(&s.sql) {
                        let _ = c.batch_execute("ROLLBACK");
                        return Err(format!("{}: {e}", s.sql).into());
                    }
                }
                c.batch_execute("COMMIT")?;
            }
            for s in mine.iter().filter(|s| !s.transactional) {
                c.batch_execute(&s.sql)
                    .map_err(|e| format!("{}: {e}", s.sql))?;
            }
        }
    }
    let mut out = Map::new();
    out.insert("changed".into(), changed.into());
    out.insert(
        "queries".into(),
        steps
            .iter()
            .map(|s| {
                format!(
                    "{}: {}",
                    if s.side == Side::Here { "here" } else { "peer" },
                    s.sql
                )
            })
            .collect::<Vec<_>>()
            .into(),
    );
    out.insert("publication".into(), p.publication.clone().into());
    out.insert("subscription".into(), sub_name.into());
    let pretty = |v: &Value| format!("{}\n", serde_json::to_string_pretty(v).unwrap_or_default());
    out.insert(
        "diff".into(),
        json!({
            "before": pretty(&before),
            "after": pretty(&after),
            "before_header": format!("logical replication from {}", p.peer_host),
            "after_header": format!("logical replication from {}", p.peer_host),
        }),
    );
    let verb = match (changed, ctx.check_mode) {
        (false, _) => "is as requested",
        (true, true) => "would be changed",
        (true, false) => "changed",
    };
    out.insert(
        "msg".into(),
        format!(
            "publication {} and subscription {sub_name} (from {}) {verb}",
            p.publication, p.peer_host
        )
        .into(),
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publication_plans() {
        let list = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        let sql = |steps: Vec<Step>| steps.into_iter().map(|s| s.sql).collect::<Vec<_>>();
        assert_eq!(
            sql(publication_steps(Side::Here, "p", &None, &None)),
            ["CREATE PUBLICATION \"p\" FOR ALL TABLES"]
        );
        let all = Some((true, list(&["public.a"])));
        assert!(publication_steps(Side::Here, "p", &all, &None).is_empty());
        let some = Some((false, list(&["public.a"])));
        assert!(publication_steps(Side::Here, "p", &some, &Some(list(&["public.a"]))).is_empty());
        assert_eq!(
            sql(publication_steps(
                Side::Here,
                "p",
                &some,
                &Some(list(&["public.a", "s.B"]))
            )),
            ["ALTER PUBLICATION \"p\" SET TABLE \"public\".\"a\", \"s\".\"B\""]
        );
        assert_eq!(
            sql(publication_steps(
                Side::Here,
                "p",
                &all,
                &Some(list(&["public.a"]))
            )),
            [
                "DROP PUBLICATION \"p\"",
                "CREATE PUBLICATION \"p\" FOR TABLE \"public\".\"a\""
            ]
        );
        assert_eq!(default_subscription("DB-2.lab"), "pgshift_from_db_2_lab");
    }
}
