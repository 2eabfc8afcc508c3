//! pgbackrest_repository without a lab: the configuration it writes (owned keys only, foreign
//! keys and comments kept, 0640), systemd units, idempotence, check mode, state absent, and
//! every bad input refused with nothing changed. Backups, archiving and restore over TLS
//! between real hosts are tested in the lab (tests/backup).

mod common;

use common::owner;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::certs::{ca, chown_postgres, issue, issue_for, Ca};
use common::run_module;
use rcgen::ExtendedKeyUsagePurpose as Eku;
use serde_json::{json, Value};

const MODULE: &str = "pgbackrest_repository";

struct Host {
    dir: tempfile::TempDir,
    ca: Ca,
    cert: PathBuf,
    key: PathBuf,
}

impl Host {
    /// A directory standing for a host's /etc/pgbackrest, /etc/systemd/system and spool,
    /// with a certificate for `name` from a fresh CA.
    fn new(name: &str) -> Host {
        let dir = tempfile::Builder::new()
            .prefix("pgshift-brt-")
            .tempdir()
            .unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let ca = ca("Test CA");
        let (cert, key) = issue(&ca, dir.path(), name, name, (-1, 90));
        fs::write(dir.path().join("ca.crt"), ca.cert.pem()).unwrap();
        for f in [&cert, &key] {
            chown_postgres(f);
        }
        Host { dir, ca, cert, key }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn tls(&self, name: &str) -> Value {
        json!({"cert": self.cert, "key": self.key, "ca": self.path("ca.crt"), "name": name})
    }

    fn database(&self) -> Value {
        json!({
            "role": "database", "stanza": "main", "instance": "15/main",
            "repository_host": "aux", "tls": self.tls("db1"),
            "config_file": self.path("pgbackrest.conf"), "units_dir": self.path("units"),
            "spool_path": self.path("spool"), "user": owner(),
        })
    }

    fn repository(&self) -> Value {
        json!({
            "role": "repository",
            "stanzas": [{"name": "main", "instances": [
                {"host": "db1", "name": "15/main"}, {"host": "db2", "path": "/srv/pg", "port": 5433}]}],
            "schedules": [{"type": "full", "on_calendar": "Sun *-*-* 01:00:00"},
                          {"type": "diff", "on_calendar": "Mon..Sat *-*-* 01:00:00"}],
            "repo_path": self.path("repo"), "tls": self.tls("aux"),
            "config_file": self.path("pgbackrest.conf"), "units_dir": self.path("units"), "user": owner(),
        })
    }

    fn snapshot(&self) -> Vec<(PathBuf, Vec<u8>)> {
        let mut out = Vec::new();
        for e in walk(self.dir.path()) {
            let bytes = fs::read(&e).unwrap_or_default();
            out.push((e, bytes));
        }
        out.sort();
        out
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.push(p.clone());
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn with(mut base: Value, patch: Value) -> Value {
    for (k, v) in patch.as_object().unwrap() {
        base[k] = v.clone();
    }
    base
}

fn ok(r: &Value) {
    assert_ne!(r["failed"], json!(true), "{r:#}");
}

#[test]
fn database_side_keeps_foreign_keys_and_converges() {
    let h = Host::new("db1");
    let conf = h.path("pgbackrest.conf");
    fs::write(&conf, "# site-wide settings\n[global]\nlog-level-file=detail\ncompress-type=zst\n\n[main]\npg1-path=/old\n# keep me\nbackup-standby=y\n").unwrap();

    let check = run_module(
        MODULE,
        with(h.database(), json!({"_ansible_check_mode": true})),
    );
    ok(&check);
    assert_eq!(check["changed"], json!(true));
    assert!(
        check["diff"][0]["after"]
            .as_str()
            .unwrap()
            .contains("repo1-host=aux"),
        "{check:#}"
    );
    assert!(
        fs::read_to_string(&conf).unwrap().contains("pg1-path=/old"),
        "check mode wrote"
    );
    assert!(
        !h.path("spool").exists() && !h.path("units").exists(),
        "check mode created directories"
    );

    let first = run_module(MODULE, h.database());
    ok(&first);
    assert_eq!(first["changed"], json!(true));
    let text = fs::read_to_string(&conf).unwrap();
    for line in [
        "# site-wide settings",
        "log-level-file=detail",
        "compress-type=zst",
        "# keep me",
        "backup-standby=y",
        "repo1-host=aux",
        "repo1-host-type=tls",
        "archive-async=y",
        "tls-server-auth=aux=main",
        "pg1-path=/var/lib/postgresql/15/main",
        "[global:archive-push]",
        "archive-timeout=5",
        "io-timeout=10",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "{line:?} missing from:\n{text}"
        );
    }
    assert!(!text.contains("pg1-path=/old"), "{text}");
    let m = fs::metadata(&conf).unwrap();
    assert_eq!(m.mode() & 0o777, 0o640);
    assert_eq!(
        m.uid(),
        nix::unistd::User::from_name(&owner())
            .unwrap()
            .unwrap()
            .uid
            .as_raw()
    );
    assert_eq!(fs::metadata(h.path("spool")).unwrap().mode() & 0o777, 0o750);
    assert!(h.path("units/pgbackrest-server.service").is_file());
    assert_eq!(
        first["archive_command"],
        json!(format!(
            "pgbackrest --config={} --stanza=main archive-push %p",
            conf.display()
        ))
    );

    let second = run_module(MODULE, h.database());
    ok(&second);
    assert_eq!(second["changed"], json!(false), "{second:#}");
    assert_eq!(fs::read_to_string(&conf).unwrap(), text);

    // Absent: our keys go, the operator's stay.
    let gone = run_module(MODULE, with(h.database(), json!({"state": "absent"})));
    ok(&gone);
    let text = fs::read_to_string(&conf).unwrap();
    assert!(
        !text.contains("repo1-host") && !text.contains("tls-server") && !text.contains("pg1-path"),
        "{text}"
    );
    assert!(
        text.contains("compress-type=zst") && text.contains("backup-standby=y"),
        "{text}"
    );
    assert!(!h.path("units/pgbackrest-server.service").exists());
}

#[test]
fn repository_check_mode_reports_everything_and_writes_nothing() {
    let h = Host::new("aux");
    let before = h.snapshot();
    let r = run_module(
        MODULE,
        with(h.repository(), json!({"_ansible_check_mode": true})),
    );
    ok(&r);
    assert_eq!(r["changed"], json!(true));
    assert_eq!(r["stanzas_created"], json!(["main"]));
    assert_eq!(
        r["units"],
        json!([
            "pgbackrest-main-diff-backup.service",
            "pgbackrest-main-diff-backup.timer",
            "pgbackrest-main-full-backup.service",
            "pgbackrest-main-full-backup.timer",
            "pgbackrest-server.service"
        ])
    );
    let conf = r["diff"][0]["after"].as_str().unwrap();
    for line in [
        "pg1-host=db1",
        "pg1-path=/var/lib/postgresql/15/main",
        "pg2-host=db2",
        "pg2-path=/srv/pg",
        "pg2-port=5433",
        "tls-server-auth=db1=main",
        "tls-server-auth=db2=main",
        "repo1-retention-full=2",
    ] {
        assert!(
            conf.lines().any(|l| l == line),
            "{line:?} missing from:\n{conf}"
        );
    }
    assert_eq!(h.snapshot(), before, "check mode changed files");
}

#[test]
fn bad_inputs_fail_clearly_and_change_nothing() {
    let h = Host::new("aux");
    let conf = h.path("pgbackrest.conf");
    fs::write(&conf, "[global]\nlog-level-file=detail\n").unwrap();
    let (server_only, server_only_key) = issue_for(
        &h.ca,
        h.dir.path(),
        "serveronly",
        "aux",
        (-1, 90),
        &[Eku::ServerAuth],
    );
    let (expired, expired_key) = issue(&h.ca, h.dir.path(), "expired", "aux", (-60, -1));
    for f in [&server_only, &server_only_key, &expired, &expired_key] {
        chown_postgres(f);
    }
    let open_key = h.path("open.key");
    fs::copy(&h.key, &open_key).unwrap();
    fs::set_permissions(&open_key, fs::Permissions::from_mode(0o644)).unwrap();
    let foreign_repo = h.path("foreign-repo");
    fs::create_dir(&foreign_repo).unwrap();
    nix::unistd::chown(&foreign_repo, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();

    let tls = |cert: &Path, key: &Path| json!({"cert": cert, "key": key, "ca": h.path("ca.crt"), "name": "aux"});
    let stanza_on =
        |host: &str| json!([{"name": "main", "instances": [{"host": host, "name": "15/main"}]}]);
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "no clientAuth",
            json!({"tls": tls(&server_only, &server_only_key)}),
            "clientAuth",
        ),
        (
            "expired",
            json!({"tls": tls(&expired, &expired_key)}),
            "expired",
        ),
        (
            "key readable by others",
            json!({"tls": tls(&h.cert, &open_key)}),
            "0644",
        ),
        (
            "wrong host name",
            json!({"tls": with(h.tls("aux"), json!({"name": "db9"}))}),
            "db9",
        ),
        (
            "IP as instance host",
            json!({"stanzas": stanza_on("10.77.0.11")}),
            "IP address 10.77.0.11",
        ),
        (
            "unknown stanza in schedule",
            json!({"schedules": [{"type": "full", "on_calendar": "daily", "stanza": "nope"}]}),
            "\"nope\"",
        ),
        (
            "bad calendar",
            json!({"schedules": [{"type": "full", "on_calendar": "bogus"}]}),
            "bogus",
        ),
        (
            "repository owned by another user",
            json!({"repo_path": foreign_repo}),
            "owned by uid 65534",
        ),
        (
            "option of the other role",
            json!({"repository_host": "aux"}),
            "repository_host only applies to role: database",
        ),
        (
            "delete without absent",
            json!({"stanzas": [{"name": "main", "delete_backups": true, "instances": [{"host": "db1", "name": "15/main"}]}]}),
            "delete_backups needs state: absent",
        ),
        (
            "instance without name or path",
            json!({"stanzas": [{"name": "main", "instances": [{"host": "db1"}]}]}),
            "name (Debian's version/cluster",
        ),
    ];
    let before = h.snapshot();
    for (what, patch, expect) in cases {
        let r = run_module(MODULE, with(h.repository(), patch));
        assert_eq!(r["failed"], json!(true), "{what}: {r:#}");
        let msg = r["msg"].as_str().unwrap();
        assert!(
            msg.contains(expect),
            "{what}: {msg:?} should mention {expect:?}"
        );
        assert!(!msg.contains("PRIVATE KEY"), "{what}: {msg}");
        assert_eq!(h.snapshot(), before, "{what}: files changed");
    }
    // Control: the same setup with nothing wrong is accepted (check mode: no stanza-create).
    let r = run_module(
        MODULE,
        with(h.repository(), json!({"_ansible_check_mode": true})),
    );
    ok(&r);
}

/// Hostile input: every case refused naming its option, with nothing written (the host's
/// directory hashed before and after); a line break in any value would add keys to
/// pgbackrest.conf or directives to a systemd unit.
#[test]
fn hostile_inputs_are_refused_naming_the_option() {
    use common::hostile::{assert_refused, mkfifo, snapshot};
    let h = Host::new("aux");
    let conf = h.path("pgbackrest.conf");
    fs::write(&conf, "[global]\nlog-level-file=detail\n").unwrap();
    let fifo = h.path("fifo");
    mkfifo(&fifo);
    let fifo_conf = h.path("fifo.conf");
    mkfifo(&fifo_conf);
    let dangling = h.path("dangling.conf");
    std::os::unix::fs::symlink(h.path("nowhere/x.conf"), &dangling).unwrap();
    let repo = h.repository();
    let db = h.database();
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "config_file is a FIFO",
            with(repo.clone(), json!({"config_file": fifo_conf})),
            "config_file",
        ),
        (
            "config_file is a directory",
            with(repo.clone(), json!({"config_file": h.dir.path()})),
            "config_file",
        ),
        (
            "config_file is a dangling link",
            with(repo.clone(), json!({"config_file": dangling})),
            "config_file",
        ),
        (
            "config_file with a newline",
            with(repo.clone(), json!({"config_file": "/tmp/x\n[global]"})),
            "config_file",
        ),
        (
            "repo_path injects a key",
            with(
                repo.clone(),
                json!({"repo_path": "/var/lib/x\nrepo1-cipher-type=none"}),
            ),
            "repo_path",
        ),
        (
            "stanza name injects a section",
            with(
                repo.clone(),
                json!({"stanzas": [{"name": "main]\n[evil", "instances": [{"host": "db1", "name": "15/main"}]}]}),
            ),
            "stanzas[0].name",
        ),
        (
            "instance host with a newline",
            with(
                repo.clone(),
                json!({"stanzas": [{"name": "main", "instances": [{"host": "db1\npg1-host=evil", "name": "15/main"}]}]}),
            ),
            "stanzas[0].instances[0].host",
        ),
        (
            "client with a newline",
            with(
                repo.clone(),
                json!({"stanzas": [{"name": "main", "clients": ["db1\nx"], "instances": [{"host": "db1", "name": "15/main"}]}]}),
            ),
            "stanzas[0].clients[0]",
        ),
        (
            "on_calendar injects a directive",
            with(
                repo.clone(),
                json!({"schedules": [{"type": "full", "on_calendar": "daily\nExecStartPre=/bin/sh -c id"}]}),
            ),
            "schedules[0].on_calendar",
        ),
        (
            "tls.cert is a FIFO",
            with(
                repo.clone(),
                json!({"tls": with(h.tls("aux"), json!({"cert": fifo}))}),
            ),
            "tls.cert",
        ),
        (
            "tls.key is a FIFO",
            with(
                repo.clone(),
                json!({"tls": with(h.tls("aux"), json!({"key": fifo}))}),
            ),
            "tls.key",
        ),
        (
            "tls.ca is a directory",
            with(
                repo.clone(),
                json!({"tls": with(h.tls("aux"), json!({"ca": h.dir.path()}))}),
            ),
            "tls.ca",
        ),
        (
            "tls.name with a newline",
            with(
                repo.clone(),
                json!({"tls": with(h.tls("aux"), json!({"name": "aux\nx"}))}),
            ),
            "tls.name",
        ),
        (
            "tls.port out of range",
            with(
                repo.clone(),
                json!({"tls": with(h.tls("aux"), json!({"port": 70000}))}),
            ),
            "tls.port",
        ),
        (
            "retention not a number",
            with(repo.clone(), json!({"retention_full": "two"})),
            "retention_full",
        ),
        (
            "user unknown",
            with(repo.clone(), json!({"user": "no-such-user-x"})),
            "user",
        ),
        (
            "role not a choice",
            with(repo.clone(), json!({"role": "both"})),
            "role",
        ),
        (
            "queue max not a size",
            with(db.clone(), json!({"archive_push_queue_max": "4GiB; x"})),
            "archive_push_queue_max",
        ),
        (
            "queue max with a newline",
            with(db.clone(), json!({"archive_push_queue_max": "4GiB\nx=y"})),
            "archive_push_queue_max",
        ),
        (
            "repository_host with a newline",
            with(
                db.clone(),
                json!({"repository_host": "aux\nrepo1-host=evil"}),
            ),
            "repository_host",
        ),
        (
            "stanza with a quote",
            with(db.clone(), json!({"stanza": "main'x"})),
            "stanza",
        ),
        (
            "io_timeout zero",
            with(db.clone(), json!({"io_timeout": 0})),
            "io_timeout",
        ),
    ];
    assert!(cases.len() >= 15);
    let before = snapshot(h.dir.path());
    for (case, args, option) in cases {
        let out = run_module(MODULE, args);
        assert_refused(case, &out, option, &["PRIVATE KEY"]);
        before.assert_same(&snapshot(h.dir.path()), case);
    }
}

/// A configuration file that is a symbolic link: the target is edited in place, the link
/// stays a link (it used to be replaced by a regular file, leaving the target stale).
#[test]
fn a_linked_config_file_is_edited_through_the_link() {
    let h = Host::new("db1");
    let real = h.path("real.conf");
    fs::write(&real, "[global]\nlog-level-file=detail\n").unwrap();
    chown_postgres(&real);
    let link = h.path("pgbackrest.conf");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let r = run_module(MODULE, h.database());
    ok(&r);
    assert_eq!(r["changed"], json!(true), "{r:#}");
    assert!(fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    let text = fs::read_to_string(&real).unwrap();
    assert!(text.contains("repo1-host=aux"), "{text}");
    assert!(text.contains("log-level-file=detail"), "{text}");
}
