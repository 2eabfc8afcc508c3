//! pg_hba_rule against a real PostgreSQL 15: reload, pg_hba_file_rules, rollback, check mode.
//! The module binary runs as a child process, as Ansible runs it.

use std::fs;
use std::path::Path;

mod common;

use pgshift_testkit::PgServer;
use serde_json::{json, Value};

fn run_module(args: Value) -> Value {
    common::run_module("pg_hba_rule", args)
}

fn load_time(s: &PgServer) -> String {
    s.psql("SELECT pg_conf_load_time()")
}

fn app_rule(s: &PgServer) -> Value {
    json!({"path": s.hba_path(), "databases": "app", "users": "app", "address": "10.20.0.0/16", "method": "scram-sha-256", "comment": "app servers"})
}

#[test]
fn adds_reloads_and_is_idempotent() {
    let s = PgServer::start(&[]);
    let before = load_time(&s);
    let out = run_module(app_rule(&s));
    assert_eq!(out["changed"], true, "{out}");
    assert_eq!(out["reloaded"], true, "{out}");
    assert_ne!(
        load_time(&s),
        before,
        "the server re-read its configuration"
    );
    let rules = s.psql("SELECT type, database, user_name, address, auth_method FROM pg_hba_file_rules WHERE error IS NULL ORDER BY line_number DESC LIMIT 1");
    assert_eq!(rules, "host|{app}|{app}|10.20.0.0|scram-sha-256");
    let again = run_module(app_rule(&s));
    assert_eq!(again["changed"], false, "{again}");
    assert_eq!(again["reloaded"], false);
}

#[test]
fn postgres_rejection_restores_the_previous_file() {
    let s = PgServer::start(&[]);
    let original = fs::read(s.hba_path()).unwrap();
    // Valid to our checks, rejected by PostgreSQL (it parses LDAP URLs with libldap).
    let out = run_module(json!({
        "path": s.hba_path(), "databases": "all", "users": "all", "address": "10.0.0.0/8",
        "method": "ldap", "options": {"ldapurl": "nonsense"}, "backup": true
    }));
    assert_eq!(out["failed"], true, "{out}");
    let msg = out["msg"].as_str().unwrap();
    assert!(msg.contains("PostgreSQL rejected line"), "{msg}");
    assert!(msg.contains("could not parse LDAP URL"), "{msg}");
    assert!(msg.contains("restored"), "{msg}");
    assert_eq!(fs::read(s.hba_path()).unwrap(), original);
    let leftovers: Vec<_> = fs::read_dir(&s.data_dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("pg_hba.conf.") || n.starts_with(".pg_hba.conf"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "backup/temp files left: {leftovers:?}"
    );
    assert_eq!(
        s.psql("SELECT count(*) FROM pg_hba_file_rules WHERE error IS NOT NULL"),
        "0"
    );
}

#[test]
fn a_broken_line_already_in_the_file_is_named() {
    let s = PgServer::start(&[]);
    let mut text = fs::read_to_string(s.hba_path()).unwrap();
    // PostgreSQL 15 rejects this line (2 secrets for 1 server) but names no error in
    // pg_hba_file_rules, only in its log.
    text.push_str(
        "host all all 10.9.0.0/16 radius radiusservers=r.example.com radiussecrets=\"a,b\"\n",
    );
    fs::write(s.hba_path(), &text).unwrap();
    let out = run_module(app_rule(&s));
    assert_eq!(out["failed"], true, "{out}");
    let msg = out["msg"].as_str().unwrap();
    let line = text.lines().count();
    assert!(
        msg.contains(&format!("line {line} (`host all all 10.9.0.0/16 radius")),
        "{msg}"
    );
    assert!(msg.contains("see the server log"), "{msg}");
    assert_eq!(fs::read_to_string(s.hba_path()).unwrap(), text);
}

#[test]
fn check_mode_touches_nothing() {
    let s = PgServer::start(&[]);
    let original = fs::read(s.hba_path()).unwrap();
    let before = load_time(&s);
    let mut args = app_rule(&s);
    args["_ansible_check_mode"] = json!(true);
    let out = run_module(args);
    assert_eq!(out["changed"], true, "{out}");
    assert!(out["diff"]["after"]
        .as_str()
        .unwrap()
        .contains("10.20.0.0/16"));
    assert_eq!(fs::read(s.hba_path()).unwrap(), original);
    assert_eq!(load_time(&s), before);
}

#[test]
fn remove_restores_original_bytes_and_backup_is_kept() {
    let s = PgServer::start(&[]);
    let original = fs::read(s.hba_path()).unwrap();
    let mut add = app_rule(&s);
    add["backup"] = json!(true);
    add["position"] = json!("first");
    let out = run_module(add);
    let backup = out["backup_file"].as_str().expect("backup_file");
    assert_eq!(fs::read(backup).unwrap(), original);
    let first = s.psql("SELECT database FROM pg_hba_file_rules ORDER BY line_number LIMIT 1");
    assert_eq!(first, "{app}");
    let mut del = app_rule(&s);
    del["state"] = json!("absent");
    del["method"] = Value::Null;
    let out = run_module(del);
    assert_eq!(out["changed"], true, "{out}");
    assert_eq!(fs::read(s.hba_path()).unwrap(), original);
}

#[test]
fn server_found_from_file_location_and_wrong_file_refused() {
    let s = PgServer::start(&[]);
    // No data_directory: the file sits in the data directory, so the server is found.
    let out = run_module(
        json!({"path": s.hba_path(), "type": "local", "databases": "app", "users": "app", "method": "peer"}),
    );
    assert_eq!(out["reloaded"], true, "{out}");
    // A copy elsewhere with data_directory given: the server does not read it; refuse.
    let other = s.root.join("other_hba.conf");
    fs::copy(s.hba_path(), &other).unwrap();
    let original = fs::read(&other).unwrap();
    let out = run_module(
        json!({"path": other, "data_directory": s.data_dir, "type": "local", "databases": "x", "method": "peer"}),
    );
    assert_eq!(out["failed"], true, "{out}");
    assert!(out["msg"].as_str().unwrap().contains("reads"), "{out}");
    assert_eq!(fs::read(&other).unwrap(), original);
}

#[test]
fn bad_input_changes_nothing() {
    let s = PgServer::start(&[]);
    let original = fs::read(s.hba_path()).unwrap();
    let cases = [
        (
            json!({"databases": "app", "address": "10.0.0.0/33", "method": "md5"}),
            "invalid address",
        ),
        (
            json!({"type": "local", "address": "10.0.0.0/8", "method": "peer"}),
            "not allowed for local",
        ),
        (
            json!({"address": "10.0.0.0/8", "method": "md6"}),
            "invalid method \"md6\"",
        ),
        (
            json!({"address": "10.0.0.0/8", "method": "md5", "options": {"clientcert": "verify-full"}}),
            "hostssl",
        ),
        (json!({"address": "10.0.0.0/8"}), "missing: method"),
        (
            json!({"address": "10.0.0.0/8", "method": "md5", "bogus": 1}),
            "Unsupported parameters for (pg_hba_rule) module: bogus",
        ),
        (
            json!({"address": "10.0.0.0/8", "method": "md5", "position": "before"}),
            "missing: anchor",
        ),
        (
            json!({"address": "10.0.0.0/8", "method": "md5", "position": "before", "anchor": {"users": "nobody"}}),
            "matches no rule",
        ),
        (
            json!({"rules": [{"address": "10.0.0.0/8", "method": "md5"}], "method": "md5"}),
            "mutually exclusive",
        ),
    ];
    for (mut args, want) in cases {
        args["path"] = json!(s.hba_path());
        let out = run_module(args.clone());
        assert_eq!(out["failed"], true, "{args}: {out}");
        assert!(
            out["msg"].as_str().unwrap().contains(want),
            "{args}: {}",
            out["msg"]
        );
        assert_eq!(fs::read(s.hba_path()).unwrap(), original, "{args}");
    }
}

#[test]
fn missing_file_needs_create() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pg_hba.conf");
    let args = json!({"path": path, "type": "local", "method": "peer"});
    let out = run_module(args.clone());
    assert!(
        out["msg"].as_str().unwrap().contains("create: true"),
        "{out}"
    );
    assert!(!Path::new(&path).exists());
    let mut args = args;
    args["create"] = json!(true);
    let out = run_module(args);
    assert_eq!(out["changed"], true, "{out}");
    assert!(fs::read_to_string(&path)
        .unwrap()
        .starts_with("local   all             all"));
}

#[test]
fn login_password_never_appears_in_output() {
    let s = PgServer::start(&[]);
    let original = fs::read(s.hba_path()).unwrap();
    let out = run_module(json!({
        "path": s.hba_path(), "address": "10.30.0.0/16", "method": "md5",
        "login_host": "127.0.0.1", "login_port": s.port, "login_password": "Sup3rSecret-pw", "ssl_mode": "disable"
    }));
    // Authentication fails (postgres has no password) before anything is written, and the
    // secret is nowhere in the result.
    assert_eq!(out["failed"], true, "{out}");
    assert!(!out.to_string().contains("Sup3rSecret-pw"), "{out}");
    assert!(
        out["msg"]
            .as_str()
            .unwrap()
            .contains("authentication failed"),
        "{out}"
    );
    assert_eq!(fs::read(s.hba_path()).unwrap(), original);
}
