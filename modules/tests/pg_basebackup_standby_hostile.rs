//! pg_basebackup_standby against hostile input with two real PostgreSQL 15 servers: every case
//! is refused naming its option before anything changes (files hashed, the primary's slots
//! compared); values that can be escaped are, and reach the standby intact; and a failure the
//! module cannot foresee undoes what the run created and says so.

mod common;

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::time::{Duration, Instant};

use common::hostile::{assert_refused, mkfifo, snapshot};
use common::standby::{chown_to_owner, Pair};
use pgshift_testkit::free_port;
use serde_json::{json, Value};

/// Quotes, backslashes, blanks and non-ASCII: must work, never show.
const PW: &str = "p'a\"s s\\wörd-Hostile";

#[test]
fn hostile_inputs_are_refused_before_any_change() {
    let pair = Pair::new(PW);
    let d = pair.dir.path();
    let fifo = d.join("fifo");
    mkfifo(&fifo);
    let a_file = d.join("a-file");
    fs::write(&a_file, "x").unwrap();
    let no_entry = d.join("pgpass-other");
    fs::write(&no_entry, "otherhost:5432:replication:replicator:x\n").unwrap();
    fs::set_permissions(&no_entry, fs::Permissions::from_mode(0o600)).unwrap();
    chown_to_owner(&no_entry);
    let root_owned = d.join("pgpass-root");
    fs::write(&root_owned, "").unwrap();
    let dangling = d.join("pgpass-dangling");
    symlink(d.join("nowhere"), &dangling).unwrap();
    let fifo_dd = d.join("fifo-datadir");
    fs::create_dir(&fifo_dd).unwrap();
    mkfifo(&fifo_dd.join("postgresql.auto.conf"));
    let dead_port = free_port();
    let mut cases: Vec<(&str, Value, &str)> = vec![
        (
            "newline in application_name",
            json!({"application_name": "s1\nprimary_slot_name = 'x'"}),
            "application_name",
        ),
        (
            "NUL in application_name",
            json!({"application_name": "s1\u{0}x"}),
            "application_name",
        ),
        (
            "newline in replication_user",
            json!({"replication_user": "replicator\nx"}),
            "replication_user",
        ),
        (
            "empty replication_user",
            json!({"replication_user": ""}),
            "replication_user",
        ),
        (
            "newline in the password",
            json!({"replication_password": "Pw-Hidden-1\nx"}),
            "replication_password",
        ),
        (
            "empty password",
            json!({"replication_password": ""}),
            "replication_password",
        ),
        (
            "primary_host with a second keyword",
            json!({"primary_host": "127.0.0.1 sslmode=disable"}),
            "primary_host",
        ),
        (
            "primary_host with a newline",
            json!({"primary_host": "127.0.0.1\n"}),
            "primary_host",
        ),
        (
            "primary_port out of range",
            json!({"primary_port": 70000}),
            "primary_port",
        ),
        ("passfile is a FIFO", json!({"passfile": fifo}), "passfile"),
        (
            "passfile is a directory",
            json!({"passfile": d}),
            "passfile",
        ),
        (
            "passfile in a missing directory",
            json!({"passfile": d.join("no/pgpass")}),
            "passfile",
        ),
        (
            "passfile is a dangling link",
            json!({"passfile": dangling}),
            "passfile",
        ),
        (
            "passfile without the entry and no password",
            json!({"passfile": no_entry, "replication_password": null}),
            "passfile",
        ),
        (
            "ca_cert is a FIFO",
            json!({"ca_cert": fifo, "ssl_mode": "verify-ca"}),
            "ca_cert",
        ),
        (
            "max_rate with a shell tail",
            json!({"max_rate": "100M; rm -rf /"}),
            "max_rate",
        ),
        (
            "negative wait_streaming",
            json!({"wait_streaming": -1}),
            "wait_streaming",
        ),
        (
            "slot_name with a quote",
            json!({"slot_name": "x'; DROP ROLE replicator; --"}),
            "slot_name",
        ),
        (
            "data_directory is a file",
            json!({"data_directory": a_file}),
            "data_directory",
        ),
        (
            "data_directory is relative",
            json!({"data_directory": "standby"}),
            "data_directory",
        ),
        (
            "a FIFO in data_directory",
            json!({"data_directory": fifo_dd}),
            "data_directory",
        ),
        ("owner unknown", json!({"owner": "no-such-user-x"}), "owner"),
        (
            "pg_bin_dir without pg_basebackup",
            json!({"pg_bin_dir": d}),
            "pg_bin_dir",
        ),
        (
            "wrong password",
            json!({"replication_password": "Wrong-Pw-Hidden-2"}),
            "password authentication failed",
        ),
        (
            "unreachable primary",
            json!({"primary_port": dead_port}),
            "cannot reach the primary",
        ),
    ];
    if nix::unistd::Uid::effective().is_root() {
        cases.push((
            "passfile owned by another user",
            json!({"passfile": root_owned}),
            "passfile",
        ));
    }
    assert!(cases.len() >= 15);
    let before = snapshot(d);
    for (case, extra, option) in cases {
        let started = Instant::now();
        let out = pair.run(extra);
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{case}: too slow"
        );
        assert_refused(
            case,
            &out,
            option,
            &[PW, "Pw-Hidden-1", "Wrong-Pw-Hidden-2"],
        );
        before.assert_same(&snapshot(d), case);
        assert_eq!(pair.slots(), "", "{case}: a slot on the primary");
    }
}

#[test]
fn quotes_and_backslashes_reach_the_standby_intact() {
    let pair = Pair::new(PW);
    // Each would break postgresql.auto.conf or the connection string unescaped.
    let app = r#"it's a \ "test" #1 x' primary_slot_name='evil"#;
    let out = pair.run(json!({"application_name": app, "start": false}));
    assert_eq!(out["changed"], true, "{out}");
    assert!(!out.to_string().contains(PW), "{out}");
    let auto = fs::read_to_string(pair.standby_dir().join("postgresql.auto.conf")).unwrap();
    let settings = |name: &str| auto.lines().filter(|l| l.starts_with(name)).count();
    assert_eq!(settings("primary_slot_name"), 1, "{auto}");
    assert_eq!(settings("primary_conninfo"), 1, "{auto}");
    pair.localize();
    let out = pair.run(json!({"application_name": app}));
    assert_eq!(out["streaming"], true, "{out}");
    assert_eq!(
        pair.primary
            .psql("SELECT application_name FROM pg_stat_replication"),
        app
    );
    assert_eq!(pair.run(json!({"application_name": app}))["changed"], false);
}

#[test]
fn a_failure_after_the_base_backup_undoes_the_slot_the_directory_and_the_passfile() {
    let pair = Pair::new(PW);
    // Without host.conf the standby would start on the primary's port and socket: pg_ctl
    // start fails after the slot, the base backup and the passfile are done.
    let out = pair.run(json!({}));
    assert_eq!(out["failed"], true, "{out}");
    let msg = out["msg"].as_str().unwrap();
    assert!(msg.contains("undone:"), "{msg}");
    assert!(
        msg.contains("server log:"),
        "the reason survives the cleanup: {msg}"
    );
    assert!(msg.contains("dropped slot standby_one"), "{msg}");
    assert!(!msg.contains("NOT undone"), "{msg}");
    assert!(out["undone"].as_array().unwrap().len() >= 3, "{out}");
    assert!(
        !pair.standby_dir().exists(),
        "the data directory it created is gone"
    );
    assert!(!pair.passfile().exists(), "the passfile it created is gone");
    assert_eq!(pair.slots(), "");
    assert!(!out.to_string().contains(PW));
    // Nothing left behind: the next run builds without force_rebuild.
    let out = pair.run(json!({"start": false}));
    assert_eq!(out["changed"], true, "{out}");
}
