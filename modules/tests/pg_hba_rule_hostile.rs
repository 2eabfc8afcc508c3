//! pg_hba_rule against hostile input and hostile files, with a real PostgreSQL 15: every case
//! is refused naming its option with nothing changed (the data directory hashed, the server's
//! load time compared), or handled as PostgreSQL would read it (symbolic links, CRLF, quoted
//! names, trailing comments, /regex names, another process holding the lock).

mod common;

use std::fs;
use std::os::unix::fs::symlink;
use std::time::{Duration, Instant};

use common::hostile::{assert_refused, mkfifo, snapshot, snapshot_datadir};
use pgshift_testkit::PgServer;
use serde_json::{json, Value};

const SECRET: &str = "Hostile-Login-pw-91";

fn run(args: Value) -> Value {
    common::run_module("pg_hba_rule", args)
}

fn load_time(s: &PgServer) -> String {
    s.psql("SELECT pg_conf_load_time()")
}

/// A rule that is fine on its own; each case breaks one thing.
fn good(s: &PgServer) -> Value {
    json!({"path": s.hba_path(), "databases": "app", "users": "app", "address": "10.20.0.0/16", "method": "scram-sha-256"})
}

fn with(mut base: Value, extra: Value) -> Value {
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            base.as_object_mut().unwrap().remove(k);
        } else {
            base[k] = v.clone();
        }
    }
    base
}

#[test]
fn hostile_inputs_are_refused_naming_the_option_and_change_nothing() {
    let s = PgServer::start(&[]);
    let scratch = tempfile::tempdir().unwrap();
    let fifo = scratch.path().join("fifo");
    mkfifo(&fifo);
    let dangling = scratch.path().join("dangling.conf");
    symlink(scratch.path().join("nowhere"), &dangling).unwrap();
    let passwd = scratch.path().join("passwd");
    fs::write(
        &passwd,
        "root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1::/:/bin/false\n",
    )
    .unwrap();
    let sparse = scratch.path().join("huge.conf");
    fs::File::create(&sparse)
        .unwrap()
        .set_len(300 * 1024 * 1024)
        .unwrap();
    let a_file = scratch.path().join("a-file");
    fs::write(&a_file, "x").unwrap();
    let g = good(&s);
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "path is a FIFO",
            with(g.clone(), json!({"path": fifo})),
            "path",
        ),
        (
            "path is a FIFO, check mode",
            with(
                g.clone(),
                json!({"path": fifo, "_ansible_check_mode": true}),
            ),
            "path",
        ),
        (
            "path is a directory",
            with(g.clone(), json!({"path": s.data_dir})),
            "path",
        ),
        (
            "path is a device",
            with(g.clone(), json!({"path": "/dev/null"})),
            "path",
        ),
        (
            "path is a dangling link",
            with(g.clone(), json!({"path": dangling, "create": true})),
            "path",
        ),
        (
            "path is empty",
            with(g.clone(), json!({"path": ""})),
            "path",
        ),
        (
            "path is relative",
            with(g.clone(), json!({"path": "../pg_hba.conf"})),
            "path",
        ),
        (
            "path is not a pg_hba.conf",
            with(g.clone(), json!({"path": passwd})),
            "path",
        ),
        (
            "path is larger than the module reads",
            with(g.clone(), json!({"path": sparse})),
            "path",
        ),
        (
            "address with a second token",
            with(g.clone(), json!({"address": "0.0.0.0/0 trust"})),
            "address",
        ),
        (
            "address and netmask",
            with(g.clone(), json!({"address": "10.0.0.0 255.0.0.0"})),
            "address",
        ),
        (
            "address with a quote",
            with(g.clone(), json!({"address": "\"10.0.0.0/8\""})),
            "address",
        ),
        (
            "newline in databases",
            with(
                g.clone(),
                json!({"databases": ["app\nhost all all 0.0.0.0/0 trust"]}),
            ),
            "databases",
        ),
        (
            "newline in users",
            with(g.clone(), json!({"users": ["app\r\nlocal all all trust"]})),
            "users",
        ),
        (
            "NUL in users",
            with(g.clone(), json!({"users": ["app\u{0}x"]})),
            "users",
        ),
        (
            "lone quote in a quoted name",
            with(g.clone(), json!({"users": ["\"a\"b\""]})),
            "users",
        ),
        (
            "empty name",
            with(g.clone(), json!({"databases": ["\"\""]})),
            "databases",
        ),
        (
            "newline in comment",
            with(
                g.clone(),
                json!({"comment": "x\nhost all all 0.0.0.0/0 trust"}),
            ),
            "comment",
        ),
        (
            "comment ending in a backslash",
            with(g.clone(), json!({"comment": "joins the next line \\"})),
            "comment",
        ),
        (
            "newline in an option value",
            with(
                g.clone(),
                json!({"type": "local", "address": null, "method": "peer", "options": {"map": "x\nlocal all all trust"}}),
            ),
            "options",
        ),
        (
            "method with a newline",
            with(g.clone(), json!({"method": "md5\nhost all all all trust"})),
            "method",
        ),
        (
            "method unknown",
            with(g.clone(), json!({"method": "trusted"})),
            "method",
        ),
        (
            "type unknown",
            with(g.clone(), json!({"type": "hostx"})),
            "type",
        ),
        (
            "exclusive with no rules",
            json!({"path": s.hba_path(), "exclusive": true, "rules": []}),
            "no rules",
        ),
        (
            "rules item with a two-token address",
            json!({"path": s.hba_path(), "rules": [{"address": "10.0.0.0/8 md5", "method": "md5"}]}),
            "rules[0]: invalid address",
        ),
        (
            "anchor address with a blank",
            with(
                g.clone(),
                json!({"position": "before", "anchor": {"address": "all trust"}}),
            ),
            "anchor address",
        ),
        (
            "port not a number",
            with(g.clone(), json!({"login_port": "5432; rm -rf /"})),
            "login_port",
        ),
        (
            "data_directory is a file",
            with(g.clone(), json!({"data_directory": a_file})),
            "data_directory",
        ),
        (
            "ca_cert is a FIFO",
            with(g.clone(), json!({"ca_cert": fifo})),
            "ca_cert",
        ),
        (
            "wrong login password over TCP",
            with(
                g.clone(),
                json!({"login_host": "127.0.0.1", "login_port": s.port, "login_password": SECRET, "ssl_mode": "disable"}),
            ),
            "password authentication failed",
        ),
    ];
    assert!(cases.len() >= 15);
    let before = snapshot_datadir(&s.data_dir);
    let scratch_before = snapshot(scratch.path());
    let loaded = load_time(&s);
    for (case, args, option) in cases {
        let started = Instant::now();
        let out = run(args);
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{case}: too slow"
        );
        assert_refused(case, &out, option, &[SECRET]);
        before.assert_same(&snapshot_datadir(&s.data_dir), case);
        scratch_before.assert_same(&snapshot(scratch.path()), case);
        assert_eq!(load_time(&s), loaded, "{case}: the server was reloaded");
    }
}

#[test]
fn the_only_rule_removed_is_refused_and_the_file_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pg_hba.conf");
    fs::write(&path, "# one rule\nlocal all all peer\n").unwrap();
    let out = run(json!({"path": path, "type": "local", "state": "absent"}));
    assert_refused("last rule removed", &out, "no rules", &[]);
    assert_eq!(
        fs::read_to_string(&path).unwrap(),
        "# one rule\nlocal all all peer\n"
    );
}

#[test]
fn a_link_made_by_another_user_is_refused() {
    if !nix::unistd::Uid::effective().is_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("root-owned.conf");
    fs::write(&target, "# root's\nlocal all all peer\n").unwrap();
    let link = dir.path().join("pg_hba.conf");
    symlink(&target, &link).unwrap();
    nix::unistd::fchownat(
        None,
        &link,
        Some(nix::unistd::Uid::from_raw(65534)),
        None,
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .unwrap();
    let before = snapshot(dir.path());
    let out = run(json!({"path": link, "type": "local", "users": "x", "method": "peer"}));
    assert_refused("foreign link", &out, "path", &[]);
    assert!(
        out["msg"].as_str().unwrap().contains("symbolic link"),
        "{out}"
    );
    before.assert_same(&snapshot(dir.path()), "foreign link");
}

#[test]
fn a_symbolic_link_is_followed_and_its_target_replaced() {
    let s = PgServer::start(&[]);
    // The real file lives elsewhere; the data directory's pg_hba.conf points to it.
    let real = s.root.join("hba-real.conf");
    fs::copy(s.hba_path(), &real).unwrap();
    let owner = fs::metadata(s.hba_path()).unwrap();
    std::os::unix::fs::chown(
        &real,
        Some(std::os::unix::fs::MetadataExt::uid(&owner)),
        Some(std::os::unix::fs::MetadataExt::gid(&owner)),
    )
    .unwrap();
    fs::remove_file(s.hba_path()).unwrap();
    symlink(&real, s.hba_path()).unwrap();
    let out = run(good(&s));
    assert_eq!(out["changed"], true, "{out}");
    assert_eq!(out["reloaded"], true, "{out}");
    assert_eq!(out["target"], json!(real), "{out}");
    assert!(
        fs::symlink_metadata(s.hba_path())
            .unwrap()
            .file_type()
            .is_symlink(),
        "the link is still a link"
    );
    assert!(fs::read_to_string(&real).unwrap().contains("10.20.0.0/16"));
    assert_eq!(
        s.psql("SELECT count(*) FROM pg_hba_file_rules WHERE database = '{app}'"),
        "1"
    );
    assert_eq!(run(good(&s))["changed"], false);
}

#[test]
fn crlf_quotes_commas_and_trailing_comments_survive() {
    let s = PgServer::start(&[]);
    let text = fs::read_to_string(s.hba_path())
        .unwrap()
        .replace('\n', "\r\n")
        + "host \"db,one\",\"q\"\"uote\" all 10.1.0.0/16 md5 # ticket 42\r\n";
    fs::write(s.hba_path(), &text).unwrap();
    // The same rule, named as a user would: no comment given, names unquoted in a list.
    let same = json!({"path": s.hba_path(), "databases": ["db,one", "q\"uote"], "address": "10.1.0.0/16", "method": "md5"});
    let out = run(same.clone());
    assert_eq!(out["changed"], false, "matched, comment kept: {out}");
    assert_eq!(fs::read_to_string(s.hba_path()).unwrap(), text);
    // A new rule in a CRLF file is written with CRLF and read back by PostgreSQL.
    let out = run(
        json!({"path": s.hba_path(), "databases": ["a b", "c,d"], "users": ["\"all\"", "x\"y"], "address": "10.2.0.0/16", "method": "md5", "comment": "spaces, commas # and quotes\""}),
    );
    assert_eq!(out["changed"], true, "{out}");
    let new = fs::read_to_string(s.hba_path()).unwrap();
    assert_eq!(
        new.matches("\r\n").count(),
        new.matches('\n').count(),
        "{new:?}"
    );
    assert_eq!(
        s.psql("SELECT array_to_json(database)::text || array_to_json(user_name)::text FROM pg_hba_file_rules WHERE address = '10.2.0.0'"),
        r#"["a b","c,d"]["all","x\"y"]"#
    );
    assert_eq!(
        s.psql("SELECT array_to_json(database)::text FROM pg_hba_file_rules WHERE address = '10.1.0.0'"),
        r#"["db,one","q\"uote"]"#
    );
    // Changing the method keeps the trailing comment; an empty comment removes it.
    run(with(same.clone(), json!({"method": "scram-sha-256"})));
    assert!(fs::read_to_string(s.hba_path())
        .unwrap()
        .contains("scram-sha-256 # ticket 42\r\n"));
    run(with(
        same,
        json!({"method": "scram-sha-256", "comment": ""}),
    ));
    assert!(!fs::read_to_string(s.hba_path())
        .unwrap()
        .contains("ticket 42"));
}

#[test]
fn regex_names_on_15_are_written_with_a_warning() {
    let s = PgServer::start(&[]);
    let out = run(with(good(&s), json!({"databases": "/^app"})));
    assert_eq!(out["changed"], true, "{out}");
    let warnings = out["warnings"].to_string();
    assert!(warnings.contains("literal names"), "{out}");
    assert_eq!(
        s.psql("SELECT database FROM pg_hba_file_rules WHERE address = '10.20.0.0'"),
        "{/^app}"
    );
}

#[test]
fn rules_that_lock_out_the_module_are_rolled_back_with_the_reason() {
    let s = PgServer::start(&[]);
    let original = fs::read(s.hba_path()).unwrap();
    let out = run(json!({"path": s.hba_path(), "exclusive": true, "rules": [
        {"type": "local", "users": "nobody", "method": "peer"},
        {"address": "127.0.0.1/32", "method": "reject"},
    ]}));
    assert_eq!(out["failed"], true, "{out}");
    let msg = out["msg"].as_str().unwrap();
    assert!(msg.contains("refused a new connection"), "{msg}");
    assert!(msg.contains("restored"), "{msg}");
    assert_eq!(fs::read(s.hba_path()).unwrap(), original);
    // The server is back on the old rules: a new connection works.
    assert_eq!(s.psql("SELECT 1"), "1");
}

#[test]
fn a_writer_holding_the_lock_is_waited_for_and_its_lines_kept() {
    let s = PgServer::start(&[]);
    let f = fs::OpenOptions::new()
        .append(true)
        .open(s.hba_path())
        .unwrap();
    let mut locked = nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive).unwrap();
    let args = good(&s);
    let module = std::thread::spawn(move || run(args));
    std::thread::sleep(Duration::from_millis(500));
    // The lock holder appends while the module waits for it.
    use std::io::Write;
    writeln!(locked, "host appended all 10.99.0.0/16 md5").unwrap();
    drop(locked);
    let out = module.join().unwrap();
    assert_eq!(out["changed"], true, "{out}");
    let text = fs::read_to_string(s.hba_path()).unwrap();
    assert!(
        text.contains("host appended all 10.99.0.0/16 md5"),
        "{text}"
    );
    assert!(text.contains("10.20.0.0/16"), "{text}");
}

#[test]
fn a_lock_never_released_fails_the_task_in_bounded_time() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pg_hba.conf");
    fs::write(&path, "local all all peer\n").unwrap();
    let f = fs::File::open(&path).unwrap();
    let _locked = nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive).unwrap();
    let started = Instant::now();
    let out = run(json!({"path": path, "type": "local", "users": "x", "method": "peer"}));
    assert_refused("lock held", &out, "path", &[]);
    assert!(out["msg"].as_str().unwrap().contains("locked"), "{out}");
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(fs::read_to_string(&path).unwrap(), "local all all peer\n");
}

#[test]
fn a_fifo_beside_the_file_does_not_hang_the_search_for_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pg_hba.conf");
    fs::write(&path, "local all all peer\n").unwrap();
    mkfifo(&dir.path().join("postgresql.conf"));
    let out = run(json!({"path": path, "type": "local", "users": "x", "method": "peer"}));
    assert_refused("fifo postgresql.conf", &out, "postgresql.conf", &[]);
}
