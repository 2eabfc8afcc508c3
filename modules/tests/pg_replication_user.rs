//! pg_replication_user against a real PostgreSQL 15: exact attributes, SCRAM verifier made on
//! the host (the plaintext never reaches the server), idempotence, check mode, force.

mod common;

use std::fs;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pgshift_core::scram::Verifier;
use pgshift_testkit::PgServer;
use serde_json::{json, Value};

const PW: &str = "Repl-Pa55word-unique";

fn server() -> PgServer {
    // log_statement = all: every statement the module sends lands in the server log.
    PgServer::start(&["log_statement = 'all'", "log_min_messages = info"])
}

fn run(s: &PgServer, mut args: Value) -> Value {
    args["login_unix_socket"] = json!(s.socket_dir);
    args["login_port"] = json!(s.port);
    common::run_module("pg_replication_user", args)
}

fn attrs(s: &PgServer, name: &str) -> String {
    s.psql(&format!(
        "SELECT rolcanlogin, rolreplication, rolsuper, rolcreatedb, rolcreaterole, rolconnlimit FROM pg_roles WHERE rolname = '{name}'"
    ))
}

fn stored(s: &PgServer, name: &str) -> String {
    s.psql(&format!(
        "SELECT rolpassword FROM pg_authid WHERE rolname = '{name}'"
    ))
}

#[test]
fn creates_exact_role_without_sending_the_plaintext() {
    let s = server();
    let out = run(
        &s,
        json!({"name": "replicator", "password": PW, "conn_limit": 5}),
    );
    assert_eq!(out["changed"], true, "{out}");
    assert_eq!(attrs(&s, "replicator"), "t|t|f|f|f|5");
    let v = Verifier::parse(&stored(&s, "replicator")).expect("a SCRAM verifier");
    assert!(v.verifies(PW));
    assert_eq!(v.iterations, 4096);
    let queries = out["queries"].to_string();
    assert!(queries.contains("PASSWORD '********'"), "{queries}");
    assert!(!out.to_string().contains(PW), "{out}");
    assert!(
        !out.to_string().contains("SCRAM-SHA-256$"),
        "the verifier is not shown either"
    );
    let log = fs::read_to_string(s.log_path()).unwrap();
    assert!(log.contains("CREATE ROLE"), "statements are logged: {log}");
    assert!(!log.contains(PW), "the plaintext reached the server log");
    assert_eq!(out["role"]["replication"], true);
    assert_eq!(out["role"]["password"], "scram-sha-256");

    let again = run(
        &s,
        json!({"name": "replicator", "password": PW, "conn_limit": 5}),
    );
    assert_eq!(
        again["changed"], false,
        "unchanged password detected: {again}"
    );
    assert_eq!(again["queries"], json!([]));
}

#[test]
fn corrects_attributes_and_password() {
    let s = server();
    s.psql("CREATE ROLE replicator SUPERUSER CREATEDB NOLOGIN PASSWORD 'old'");
    // A superuser is someone else's role: refused unless forced.
    let out = run(&s, json!({"name": "replicator", "password": PW}));
    assert_eq!(out["failed"], true, "{out}");
    assert!(
        out["msg"].as_str().unwrap().contains("force: true"),
        "{out}"
    );
    assert_eq!(attrs(&s, "replicator"), "f|f|t|t|f|-1");
    let out = run(
        &s,
        json!({"name": "replicator", "password": PW, "force": true}),
    );
    assert_eq!(out["changed"], true, "{out}");
    let q = out["queries"].as_array().unwrap();
    assert_eq!(
        q[0],
        "ALTER ROLE \"replicator\" WITH LOGIN REPLICATION NOSUPERUSER NOCREATEDB"
    );
    assert_eq!(q[1], "ALTER ROLE \"replicator\" PASSWORD '********'");
    assert_eq!(attrs(&s, "replicator"), "t|t|f|f|f|-1");
    assert!(out["diff"]["before"]
        .as_str()
        .unwrap()
        .contains("\"superuser\": true"));
    assert!(Verifier::parse(&stored(&s, "replicator"))
        .unwrap()
        .verifies(PW));
    // A new password is applied; the old verifier no longer matches it.
    let out = run(&s, json!({"name": "replicator", "password": "another-one"}));
    assert_eq!(
        out["queries"],
        json!(["ALTER ROLE \"replicator\" PASSWORD '********'"])
    );
    assert!(Verifier::parse(&stored(&s, "replicator"))
        .unwrap()
        .verifies("another-one"));
}

#[test]
fn a_given_verifier_is_stored_as_is() {
    let s = server();
    let verifier = pgshift_core::scram::make_verifier("from-a-vault");
    let out = run(&s, json!({"name": "r2", "password": verifier}));
    assert_eq!(out["changed"], true);
    assert_eq!(stored(&s, "r2"), verifier);
    assert_eq!(
        run(&s, json!({"name": "r2", "password": verifier}))["changed"],
        false
    );
}

#[test]
fn check_mode_changes_nothing() {
    let s = server();
    let out = run(
        &s,
        json!({"name": "replicator", "password": PW, "_ansible_check_mode": true}),
    );
    assert_eq!(out["changed"], true, "{out}");
    assert_eq!(attrs(&s, "replicator"), "");
}

#[test]
fn absent_refuses_while_streaming_unless_forced() {
    let s = server();
    run(&s, json!({"name": "replicator", "password": PW}));
    // A replication connection (a walsender) held open by this role.
    let mut walsender = Command::new(s.bin.join("psql"))
        .args(["-X", "-c", "SELECT pg_sleep(60)"])
        .arg(format!(
            "host=127.0.0.1 port={} user=replicator dbname=postgres replication=database",
            s.port
        ))
        .env("PGPASSWORD", PW)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.psql("SELECT count(*) FROM pg_stat_activity WHERE usename = 'replicator' AND backend_type = 'walsender'") != "1" {
        assert!(Instant::now() < deadline, "walsender did not appear");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = run(&s, json!({"name": "replicator", "state": "absent"}));
    assert_eq!(out["failed"], true, "{out}");
    assert!(
        out["msg"]
            .as_str()
            .unwrap()
            .contains("live replication connection"),
        "{out}"
    );
    assert_eq!(attrs(&s, "replicator"), "t|t|f|f|f|-1", "nothing changed");
    let out = run(
        &s,
        json!({"name": "replicator", "state": "absent", "force": true}),
    );
    assert_eq!(out["changed"], true, "{out}");
    assert_eq!(attrs(&s, "replicator"), "");
    let _ = walsender.kill();
    let _ = walsender.wait();
    assert_eq!(
        run(&s, json!({"name": "replicator", "state": "absent"}))["changed"],
        false
    );
}

#[test]
fn bad_input_is_refused() {
    let s = server();
    for (args, want) in [
        (json!({"name": "r", "conn_limit": -5}), "conn_limit must be"),
        (
            json!({"name": "r", "password": ""}),
            "password must not be empty",
        ),
        (
            json!({"name": "r", "superuser": true}),
            "Unsupported parameters for (pg_replication_user) module: superuser",
        ),
        (json!({"password": PW}), "missing required arguments: name"),
    ] {
        let out = run(&s, args.clone());
        assert_eq!(out["failed"], true, "{args}");
        assert!(out["msg"].as_str().unwrap().contains(want), "{args}: {out}");
        assert!(!out.to_string().contains(PW));
    }
    assert_eq!(attrs(&s, "r"), "");
}
