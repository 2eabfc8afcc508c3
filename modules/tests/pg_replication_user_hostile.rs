//! pg_replication_user against hostile input with a real PostgreSQL 15: every case is refused
//! naming its option with the catalog unchanged (pg_authid compared, no statement logged);
//! names and passwords with quotes, backslashes, blanks and non-ASCII work; roles that are not
//! replication roles are never altered or dropped without force.

mod common;

use std::fs;

use common::hostile::{assert_refused, mkfifo};
use pgshift_core::pg::{Client, ConnectOptions};
use pgshift_testkit::{free_port, PgServer};
use serde_json::{json, Value};

const PW: &str = "Q'uo\"te \\back ünï-Hostile";

fn server() -> PgServer {
    PgServer::start(&["log_statement = 'all'", "log_min_messages = info"])
}

fn run(s: &PgServer, mut args: Value) -> Value {
    if args.get("login_host").is_none() {
        args["login_unix_socket"] = json!(s.socket_dir);
        args["login_port"] = json!(s.port);
    }
    common::run_module("pg_replication_user", args)
}

fn catalog(s: &PgServer) -> String {
    s.psql("SELECT string_agg(format('%s|%s|%s|%s|%s|%s|%s|%s', rolname, rolsuper, rolreplication, rolcanlogin, rolcreatedb, rolcreaterole, rolconnlimit, rolpassword), E'\\n' ORDER BY rolname) FROM pg_authid")
}

/// Logs in over TCP with SCRAM as `user` with `password`.
fn can_log_in(s: &PgServer, user: &str, password: &str) -> Result<(), String> {
    let opts = ConnectOptions {
        host: Some("127.0.0.1".into()),
        port: s.port,
        user: user.into(),
        password: Some(password.into()),
        ssl_mode: "disable".parse().unwrap(),
        ..ConnectOptions::default()
    };
    Client::connect(&opts).map(drop).map_err(|e| e.to_string())
}

#[test]
fn hostile_inputs_are_refused_and_the_catalog_is_unchanged() {
    let s = server();
    s.psql("CREATE ROLE app LOGIN PASSWORD 'app'; CREATE ROLE admin SUPERUSER LOGIN; CREATE ROLE repl LOGIN REPLICATION");
    let scratch = tempfile::tempdir().unwrap();
    let fifo = scratch.path().join("fifo");
    mkfifo(&fifo);
    let long = "r".repeat(64);
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "alter an application role",
            json!({"name": "app", "password": PW}),
            "force",
        ),
        ("alter a superuser", json!({"name": "admin"}), "force"),
        (
            "alter the bootstrap superuser",
            json!({"name": "postgres", "conn_limit": 3}),
            "force",
        ),
        (
            "drop an application role",
            json!({"name": "app", "state": "absent"}),
            "force",
        ),
        (
            "drop a superuser",
            json!({"name": "admin", "state": "absent"}),
            "force",
        ),
        ("empty name", json!({"name": ""}), "name"),
        ("NUL in name", json!({"name": "repl\u{0}x"}), "name"),
        ("newline in name", json!({"name": "repl\nx"}), "name"),
        ("name over 63 bytes", json!({"name": long}), "name"),
        (
            "newline in password",
            json!({"name": "newrole", "password": "Hidden-Pw-1\nx"}),
            "password",
        ),
        (
            "NUL in password",
            json!({"name": "newrole", "password": "Hidden-Pw-2\u{0}"}),
            "password",
        ),
        (
            "empty password",
            json!({"name": "newrole", "password": ""}),
            "password",
        ),
        (
            "broken verifier",
            json!({"name": "newrole", "password": "SCRAM-SHA-256$4096:bad"}),
            "password",
        ),
        (
            "negative conn_limit",
            json!({"name": "newrole", "conn_limit": -5}),
            "conn_limit",
        ),
        (
            "conn_limit not a number",
            json!({"name": "newrole", "conn_limit": "ten"}),
            "conn_limit",
        ),
        (
            "conn_limit too large",
            json!({"name": "newrole", "conn_limit": 9_999_999_999i64}),
            "conn_limit",
        ),
        (
            "unknown option",
            json!({"name": "newrole", "superuser": true}),
            "superuser",
        ),
        (
            "state not a choice",
            json!({"name": "newrole", "state": "gone"}),
            "state",
        ),
        (
            "ca_cert is a FIFO",
            json!({"name": "newrole", "ca_cert": fifo}),
            "ca_cert",
        ),
        (
            "wrong login password",
            json!({"name": "newrole", "login_host": "127.0.0.1", "login_port": s.port, "login_password": "Hidden-Pw-3", "ssl_mode": "disable"}),
            "password authentication failed",
        ),
        (
            "unreachable server",
            json!({"name": "newrole", "login_host": "127.0.0.1", "login_port": free_port()}),
            "cannot connect",
        ),
    ];
    assert!(cases.len() >= 15);
    let before = catalog(&s);
    let log_before = fs::read_to_string(s.log_path()).unwrap().len();
    for (case, args, option) in cases {
        let out = run(&s, args);
        assert_refused(
            case,
            &out,
            option,
            &[PW, "Hidden-Pw-1", "Hidden-Pw-2", "Hidden-Pw-3"],
        );
        assert_eq!(catalog(&s), before, "{case}: the catalog changed");
    }
    let log = fs::read_to_string(s.log_path()).unwrap();
    let log = &log[log_before..];
    for stmt in ["ALTER ROLE", "CREATE ROLE", "DROP ROLE"] {
        assert!(!log.contains(stmt), "a refused case ran {stmt}: {log}");
    }
}

#[test]
fn names_and_passwords_with_quotes_backslashes_and_non_ascii_work() {
    let s = server();
    for name in [
        r#"x"; DROP ROLE postgres; --"#,
        "it's ünïcode \\ role",
        "replicator",
    ] {
        let out = run(&s, json!({"name": name, "password": PW}));
        assert_eq!(out["changed"], true, "{name}: {out}");
        assert!(!out.to_string().contains(PW), "{out}");
        can_log_in(&s, name, PW).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(can_log_in(&s, name, "wrong").is_err());
        let again = run(&s, json!({"name": name, "password": PW}));
        assert_eq!(again["changed"], false, "{name}: {again}");
    }
    assert_eq!(
        s.psql("SELECT count(*) FROM pg_roles WHERE rolname = 'postgres'"),
        "1"
    );
}

#[test]
fn force_allows_taking_over_and_dropping_a_foreign_role() {
    let s = server();
    s.psql("CREATE ROLE app LOGIN");
    let out = run(&s, json!({"name": "app", "force": true}));
    assert_eq!(out["changed"], true, "{out}");
    assert_eq!(
        s.psql("SELECT rolreplication FROM pg_roles WHERE rolname = 'app'"),
        "t"
    );
    s.psql("CREATE ROLE other LOGIN");
    let out = run(
        &s,
        json!({"name": "other", "state": "absent", "force": true}),
    );
    assert_eq!(out["changed"], true, "{out}");
    assert_eq!(
        s.psql("SELECT count(*) FROM pg_roles WHERE rolname = 'other'"),
        "0"
    );
    // A replication role is dropped without force (when nobody streams with it).
    s.psql("CREATE ROLE r2 LOGIN REPLICATION");
    let out = run(&s, json!({"name": "r2", "state": "absent"}));
    assert_eq!(out["changed"], true, "{out}");
}

/// A role locked by another session's open transaction: the module's ALTER ROLE waits at most
/// lock_timeout, then fails with nothing changed (it used to wait as long as the other session).
#[test]
fn a_lock_held_elsewhere_fails_the_task_in_bounded_time() {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};
    let s = server();
    s.psql("CREATE ROLE held LOGIN REPLICATION CONNECTION LIMIT 2");
    let mut holder = Command::new(s.bin.join("psql"));
    holder
        .args(["-X", "-h"])
        .arg(&s.socket_dir)
        .args([
            "-p",
            &s.port.to_string(),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-c",
        ])
        .arg("BEGIN; ALTER ROLE held CONNECTION LIMIT 4; SELECT pg_sleep(120);")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if nix::unistd::Uid::effective().is_root() {
        use std::os::unix::process::CommandExt;
        let pg = nix::unistd::User::from_name("postgres").unwrap().unwrap();
        holder.uid(pg.uid.as_raw()).gid(pg.gid.as_raw());
    }
    let mut holder = holder.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.psql("SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'BEGIN; ALTER ROLE held%'")
        != "1"
    {
        assert!(Instant::now() < deadline, "the lock holder did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let started = Instant::now();
    let out = run(&s, json!({"name": "held", "conn_limit": 5}));
    let took = started.elapsed();
    let _ = holder.kill();
    let _ = holder.wait();
    assert_eq!(out["failed"], true, "{out}");
    assert!(
        out["msg"].as_str().unwrap().contains("lock timeout"),
        "{out}"
    );
    assert!(took < Duration::from_secs(60), "waited {took:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.psql("SELECT rolconnlimit FROM pg_roles WHERE rolname = 'held'") != "2" {
        assert!(Instant::now() < deadline, "the role changed");
        std::thread::sleep(Duration::from_millis(50));
    }
}
