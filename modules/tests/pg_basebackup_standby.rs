//! pg_basebackup_standby with two real PostgreSQL 15 servers on this host: build, converge,
//! stream, refuse what must be refused, and drop the slot on `absent`.

mod common;

use common::standby::{chown_to_owner, Pair};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use pgshift_testkit::PgServer;
use serde_json::json;

const PW: &str = "Standby-Repl-pw-77";

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn builds_streams_converges_and_drops_its_slot() {
    let pair = Pair::new(PW);
    // Check mode on a missing directory: a plan, nothing done.
    let out = pair.run(json!({"_ansible_check_mode": true}));
    assert_eq!(out["changed"], true, "{out}");
    assert!(!pair.standby_dir().exists());
    assert_eq!(
        pair.primary
            .psql("SELECT count(*) FROM pg_replication_slots"),
        "0"
    );

    let out = pair.run(json!({"start": false}));
    assert_eq!(out["changed"], true, "{out}");
    assert!(!out.to_string().contains(PW), "{out}");
    assert!(pair.standby_dir().join("standby.signal").exists());
    let auto = fs::read_to_string(pair.standby_dir().join("postgresql.auto.conf")).unwrap();
    assert!(auto.contains("primary_slot_name = 'standby_one'"), "{auto}");
    assert!(auto.contains("application_name="), "{auto}");
    assert!(!auto.contains(PW), "{auto}");
    let pass = fs::read_to_string(pair.passfile()).unwrap();
    assert_eq!(
        pass,
        format!(
            "127.0.0.1:{}:replication:replicator:{PW}\n",
            pair.primary.port
        )
    );
    assert_eq!(
        fs::metadata(pair.passfile()).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        pair.primary
            .psql("SELECT slot_name FROM pg_replication_slots"),
        "standby_one"
    );

    let (port, sock) = pair.localize();
    let out = pair.run(json!({}));
    assert_eq!(out["changed"], true, "{out}");
    assert_eq!(out["actions"], json!(["start PostgreSQL"]), "{out}");
    assert_eq!(out["streaming"], true);
    pair.primary
        .psql("CREATE TABLE t (v text); INSERT INTO t VALUES ('hello from the primary')");
    wait_for("the row on the standby", || {
        pair.standby_psql(
            port,
            &sock,
            "SELECT count(*) FROM pg_class WHERE relname = 't'",
        ) == "1"
            && pair.standby_psql(port, &sock, "SELECT v FROM t") == "hello from the primary"
    });
    assert_eq!(
        pair.primary
            .psql("SELECT active FROM pg_replication_slots WHERE slot_name = 'standby_one'"),
        "t"
    );

    let again = pair.run(json!({}));
    assert_eq!(again["changed"], false, "{again}");

    // absent: refused while the slot is in use, forced stops this standby and drops it.
    let out = pair.run(json!({"state": "absent"}));
    assert_eq!(out["failed"], true, "{out}");
    assert!(out["msg"].as_str().unwrap().contains("in use"), "{out}");
    let out = pair.run(json!({"state": "absent", "force": true}));
    assert_eq!(out["changed"], true, "{out}");
    assert_eq!(
        pair.primary
            .psql("SELECT count(*) FROM pg_replication_slots"),
        "0"
    );
    assert_eq!(pair.run(json!({"state": "absent"}))["changed"], false);
}

#[test]
fn bad_inputs_fail_clearly_and_change_nothing() {
    let pair = Pair::new(PW);
    let cases = [
        (
            json!({"replication_password": "wrong"}),
            "password authentication failed",
        ),
        (
            json!({"primary_host": "db-does-not-exist.invalid"}),
            "cannot reach the primary",
        ),
        (json!({"slot_name": "Bad-Slot"}), "invalid slot_name"),
        (
            json!({"colour": "blue"}),
            "Unsupported parameters for (pg_basebackup_standby) module: colour",
        ),
        (json!({"data_directory": "relative/dir"}), "absolute path"),
    ];
    for (extra, want) in cases {
        let out = pair.run(extra.clone());
        assert_eq!(out["failed"], true, "{extra}: {out}");
        assert!(
            out["msg"].as_str().unwrap().contains(want),
            "{extra}: {}",
            out["msg"]
        );
        assert!(!out.to_string().contains(PW));
        assert!(!pair.standby_dir().exists(), "{extra}");
        assert!(!pair.passfile().exists(), "{extra}");
        assert_eq!(
            pair.primary
                .psql("SELECT count(*) FROM pg_replication_slots"),
            "0",
            "{extra}"
        );
    }
}

#[test]
fn occupied_directories_are_refused_and_a_live_primary_always() {
    let pair = Pair::new(PW);
    // A directory holding another cluster.
    let other = PgServer::start(&[]);
    other.stop();
    let out = pair.run(json!({"data_directory": other.data_dir}));
    assert_eq!(out["failed"], true, "{out}");
    assert!(
        out["msg"]
            .as_str()
            .unwrap()
            .contains("holds another cluster"),
        "{out}"
    );
    assert!(other.data_dir.join("PG_VERSION").exists(), "untouched");
    let out =
        pair.run(json!({"data_directory": other.data_dir, "force_rebuild": true, "start": false}));
    assert_eq!(out["changed"], true, "{out}");
    let aside = PathBuf::from(out["moved_aside"].as_str().unwrap());
    assert!(
        aside.join("PG_VERSION").exists(),
        "moved aside, never deleted"
    );
    assert!(
        other.data_dir.join("standby.signal").exists(),
        "rebuilt as a standby"
    );
    let _ = fs::remove_dir_all(&aside);

    // A non-empty directory without a cluster.
    fs::create_dir_all(pair.standby_dir()).unwrap();
    fs::write(pair.standby_dir().join("notes.txt"), "mine").unwrap();
    let out = pair.run(json!({}));
    assert!(
        out["msg"]
            .as_str()
            .unwrap()
            .contains("holds no PostgreSQL cluster"),
        "{out}"
    );
    assert_eq!(
        fs::read_to_string(pair.standby_dir().join("notes.txt")).unwrap(),
        "mine"
    );

    // The running primary's own directory: refused even with force_rebuild.
    let out = pair.run(json!({"data_directory": pair.primary.data_dir, "force_rebuild": true}));
    assert_eq!(out["failed"], true, "{out}");
    assert!(
        out["msg"].as_str().unwrap().contains("running primary"),
        "{out}"
    );
    assert_eq!(pair.primary.psql("SELECT pg_is_in_recovery()"), "f");
    assert!(!pair.primary.data_dir.join("standby.signal").exists());
}

/// Without slot_name the slot is application_name by the agent's rule (one slot per member
/// whatever the name's case or dots), and every TLS file reaches primary_conninfo, with the
/// passfile (no password in it): what the agent writes for the same member.
/// The primary is reached through a passfile entry for the database `replication`.
#[test]
fn the_default_slot_and_the_connection_are_the_agents() {
    let pair = Pair::new(PW);
    let dir = pair.dir.path();
    for f in ["ca.crt", "repl.crt", "repl.key"] {
        fs::write(dir.join(f), "not read in check mode\n").unwrap();
    }
    let mut args = pair.args(json!({
        "_ansible_check_mode": true,
        "application_name": "DB2.Lab.example",
        // The files are not TLS files: with TLS off libpq never reads them.
        "ssl_mode": "disable",
        "ca_cert": dir.join("ca.crt"),
        "ssl_cert": dir.join("repl.crt"),
        "ssl_key": dir.join("repl.key"),
    }));
    args.as_object_mut().unwrap().remove("slot_name");
    // No password: the passfile's wildcard entry for the database `replication`, as the
    // playbooks write it (the module's replication connections must find it there too).
    args.as_object_mut().unwrap().remove("replication_password");
    fs::write(
        pair.passfile(),
        format!("*:*:replication:replicator:{PW}\n"),
    )
    .unwrap();
    fs::set_permissions(pair.passfile(), fs::Permissions::from_mode(0o600)).unwrap();
    chown_to_owner(&pair.passfile());
    let out = common::run_module("pg_basebackup_standby", args);
    assert_eq!(out["slot_name"], "db2_lab_example", "{out}");
    let expected = pgshift_core::standby::Upstream {
        host: "127.0.0.1".into(),
        port: pair.primary.port,
        user: "replicator".into(),
        passfile: Some(pair.passfile()),
        tls: pgshift_core::standby::ReplicationTls {
            sslmode: "disable".into(),
            sslrootcert: Some(dir.join("ca.crt")),
            sslcert: Some(dir.join("repl.crt")),
            sslkey: Some(dir.join("repl.key")),
        },
        application_name: "DB2.Lab.example".into(),
    };
    assert_eq!(
        out["primary_conninfo"],
        expected.primary_conninfo(),
        "{out}"
    );
    assert!(
        !out["primary_conninfo"].as_str().unwrap().contains(PW),
        "{out}"
    );
    assert_eq!(
        pair.primary
            .psql("SELECT count(*) FROM pg_replication_slots"),
        "0",
        "check mode made a slot"
    );
}

/// A pgBackRest repository in a directory of its own (posix, no TLS), archiving the primary.
struct Repository {
    dir: tempfile::TempDir,
}

impl Repository {
    fn new() -> Repository {
        let dir = tempfile::Builder::new()
            .prefix("pgshift-brt-repo-")
            .tempdir()
            .unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        for d in ["repo", "log", "lock", "spool"] {
            fs::create_dir(dir.path().join(d)).unwrap();
            common::standby::chown_to_owner(&dir.path().join(d));
        }
        Repository { dir }
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("pgbackrest.conf")
    }

    fn archive_command(&self) -> String {
        format!(
            "archive_command = 'pgbackrest --config={} --stanza=t archive-push %p'",
            self.config().display()
        )
    }

    /// The configuration for the primary, stanza `t`.
    fn write_config(&self, primary: &PgServer) {
        let d = self.dir.path().display();
        fs::write(
            self.config(),
            format!(
                "[global]\nrepo1-path={d}/repo\nlog-path={d}/log\nlock-path={d}/lock\nspool-path={d}/spool\nstart-fast=y\nlog-level-file=off\n\n[t]\npg1-path={}\npg1-port={}\npg1-socket-path={}\n",
                primary.data_dir.display(),
                primary.port,
                primary.socket_dir.display()
            ),
        )
        .unwrap();
        common::standby::chown_to_owner(&self.config());
    }

    fn run(&self, primary: &PgServer, args: &[&str]) {
        primary.run_checked(
            std::process::Command::new("pgbackrest")
                .arg(format!("--config={}", self.config().display()))
                .arg("--stanza=t")
                .args(args)
                .current_dir("/"),
        );
    }
}

fn requested_checkpoints(primary: &PgServer) -> String {
    primary.psql("SELECT checkpoints_req FROM pg_stat_bgwriter")
}

#[test]
fn builds_a_standby_from_the_pgbackrest_repository_without_a_base_backup() {
    let repo = Repository::new();
    let archive = repo.archive_command();
    let pair = Pair::with_conf(PW, &["archive_mode = on", &archive]);
    repo.write_config(&pair.primary);
    repo.run(&pair.primary, &["stanza-create"]);
    repo.run(&pair.primary, &["--type=full", "backup"]);
    pair.primary
        .psql("CREATE TABLE after_backup (v text); INSERT INTO after_backup VALUES ('from the archive or the stream')");
    let args = json!({"method": "pgbackrest", "stanza": "t", "pgbackrest_config": repo.config()});
    let with = |extra: serde_json::Value| {
        let mut a = args.clone();
        for (k, v) in extra.as_object().unwrap() {
            a[k] = v.clone();
        }
        a
    };

    // Check mode: the restore is the plan, nothing is done.
    let out = pair.run(with(json!({"_ansible_check_mode": true})));
    assert_eq!(out["changed"], true, "{out}");
    assert!(
        out["actions"]
            .to_string()
            .contains("restore of stanza t from the pgBackRest repository"),
        "{out}"
    );
    assert!(!pair.standby_dir().exists());

    let checkpoints = requested_checkpoints(&pair.primary);
    let out = pair.run(with(json!({"start": false})));
    assert_eq!(out["changed"], true, "{out}");
    let auto = fs::read_to_string(pair.standby_dir().join("postgresql.auto.conf")).unwrap();
    assert!(auto.contains("restore_command"), "{auto}");
    assert!(auto.contains("archive-get"), "{auto}");
    assert!(auto.contains("primary_slot_name = 'standby_one'"), "{auto}");
    assert!(pair.standby_dir().join("standby.signal").exists());
    let (port, sock) = pair.localize();
    let out = pair.run(with(json!({})));
    assert_eq!(out["changed"], true, "{out}");
    assert_eq!(out["streaming"], true, "{out}");
    wait_for("the row written after the backup", || {
        pair.standby_psql(
            port,
            &sock,
            "SELECT count(*) FROM pg_class WHERE relname = 'after_backup'",
        ) == "1"
    });
    // The primary served no base backup (each asks its source for a checkpoint).
    assert_eq!(requested_checkpoints(&pair.primary), checkpoints);
    // A second run changes nothing.
    let out = pair.run(with(json!({})));
    assert_eq!(out["changed"], false, "{out}");

    // Bad input: a stanza name that is no name, a missing pgbackrest; nothing touched.
    for (bad, want) in [
        (
            json!({"stanza": "t; rm -rf /"}),
            "is not a pgBackRest stanza name",
        ),
        (
            json!({"pgbackrest_bin": "/nonexistent/pgbackrest"}),
            "no pgbackrest at /nonexistent/pgbackrest",
        ),
    ] {
        let out = pair.run(with(bad));
        assert_eq!(out["failed"], true, "{out}");
        assert!(out["msg"].as_str().unwrap().contains(want), "{out}");
    }
}
