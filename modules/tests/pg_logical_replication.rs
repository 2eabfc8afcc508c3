//! pg_logical_replication against two real PostgreSQL 16 servers on loopback (and a 15 for
//! the version refusal): both ways without loops, idempotence, check mode, refresh after DDL,
//! and refusals that change nothing on either side.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use pgshift_testkit::{pg16_bin, PgServer};
use serde_json::{json, Value};

const CONF: &[&str] = &[
    "wal_level = logical",
    "max_replication_slots = 10",
    "max_wal_senders = 10",
    "max_logical_replication_workers = 8",
    "log_min_messages = warning",
];

struct Pair {
    a: PgServer,
    b: PgServer,
    passfile: PathBuf,
}

fn pg16() -> PathBuf {
    pg16_bin().expect(
        "PostgreSQL 16 binaries are missing: scripts/deps.sh pg16 (make test installs them)",
    )
}

/// Two servers with a database `app`, the superuser's password known, and a passfile the
/// servers' user can read (the subscription names it).
fn pair() -> Pair {
    let bin = pg16();
    let (a, b) = (
        PgServer::start_with_bin(&bin, CONF),
        PgServer::start_with_bin(&bin, CONF),
    );
    for s in [&a, &b] {
        s.psql("CREATE DATABASE app");
        s.psql("ALTER ROLE postgres PASSWORD 'multi-home-pw'");
    }
    let passfile = a.root.join("pgpass");
    std::fs::write(&passfile, "127.0.0.1:*:*:postgres:multi-home-pw\n").unwrap();
    std::fs::set_permissions(&passfile, std::fs::Permissions::from_mode(0o600)).unwrap();
    let owner = common::owner();
    let user = nix::unistd::User::from_name(&owner).unwrap().unwrap();
    nix::unistd::chown(&passfile, Some(user.uid), Some(user.gid)).unwrap();
    Pair { a, b, passfile }
}

/// The module on `here`, subscribing to `peer`.
fn run(here: &PgServer, peer: &PgServer, passfile: &PathBuf, extra: Value) -> Value {
    let mut args = json!({
        "login_unix_socket": here.socket_dir,
        "login_port": here.port,
        "login_db": "app",
        "peer_host": "127.0.0.1",
        "peer_port": peer.port,
        "peer_passfile": passfile,
        "peer_ssl_mode": "disable",
    });
    for (k, v) in extra.as_object().unwrap() {
        args[k] = v.clone();
    }
    common::run_module("pg_logical_replication", args)
}

fn both(p: &Pair, sql: &str) {
    p.a.psql_db("app", sql);
    p.b.psql_db("app", sql);
}

fn wait_rows(s: &PgServer, query: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = s.psql_db("app", query);
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "{query}: {got:?}, want {want:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn replicates_both_ways_without_loops() {
    let p = pair();
    both(&p, "CREATE TABLE t (id int PRIMARY KEY, origin text)");
    p.a.psql_db("app", "INSERT INTO t VALUES (1, 'a before')");

    // a subscribes to b (no copy: b is empty), then b to a, copying a's existing row.
    let out = run(&p.a, &p.b, &p.passfile, json!({}));
    assert_eq!(out["changed"], true, "{out}");
    assert_eq!(out["subscription"], "pgshift_from_127_0_0_1");
    let q = out["queries"].to_string();
    assert!(
        q.contains("peer: CREATE PUBLICATION") && q.contains("here: CREATE PUBLICATION"),
        "{q}"
    );
    assert!(q.contains("origin = none"), "{q}");
    let again = run(&p.a, &p.b, &p.passfile, json!({}));
    assert_eq!(again["changed"], false, "{again}");
    let out = run(&p.b, &p.a, &p.passfile, json!({"copy_data": true}));
    assert_eq!(out["changed"], true, "{out}");
    assert!(
        out["queries"].to_string().contains("copy_data = true"),
        "{out}"
    );
    assert_eq!(
        run(&p.b, &p.a, &p.passfile, json!({"copy_data": true}))["changed"],
        false
    );

    wait_rows(&p.b, "SELECT count(*) FROM t", "1");
    p.a.psql_db("app", "INSERT INTO t VALUES (2, 'a')");
    p.b.psql_db("app", "INSERT INTO t VALUES (3, 'b')");
    for s in [&p.a, &p.b] {
        wait_rows(
            s,
            "SELECT string_agg(id::text, ',' ORDER BY id) FROM t",
            "1,2,3",
        );
    }
    // No loop: a moment later still exactly one copy of each row, and the apply workers
    // never hit a duplicate key (a looped change would).
    std::thread::sleep(Duration::from_secs(1));
    for s in [&p.a, &p.b] {
        assert_eq!(s.psql_db("app", "SELECT count(*) FROM t"), "3");
        let log = std::fs::read_to_string(s.log_path()).unwrap();
        assert!(!log.contains("duplicate key"), "{log}");
        // The catalog holds a passfile, never a password.
        let info = s.psql_db("app", "SELECT subconninfo FROM pg_subscription");
        assert!(
            info.contains("passfile=") && !info.contains("password"),
            "{info}"
        );
    }

    // DDL on both sides, then refresh: rows of the new table flow both ways.
    both(&p, "CREATE TABLE u (id int PRIMARY KEY)");
    let check = run(
        &p.a,
        &p.b,
        &p.passfile,
        json!({"refresh": true, "_ansible_check_mode": true}),
    );
    assert_eq!(check["changed"], true, "{check}");
    assert!(
        check["queries"].to_string().contains("REFRESH PUBLICATION"),
        "{check}"
    );
    assert_eq!(
        p.a.psql_db("app", "SELECT count(*) FROM pg_subscription_rel"),
        "1",
        "check mode changed nothing"
    );
    let without = run(&p.a, &p.b, &p.passfile, json!({}));
    assert_eq!(without["changed"], false, "{without}");
    assert!(
        without["warnings"].to_string().contains("refresh: true"),
        "{without}"
    );
    for (here, peer) in [(&p.a, &p.b), (&p.b, &p.a)] {
        let out = run(here, peer, &p.passfile, json!({"refresh": true}));
        assert_eq!(out["changed"], true, "{out}");
        assert_eq!(
            run(here, peer, &p.passfile, json!({"refresh": true}))["changed"],
            false
        );
    }
    p.a.psql_db("app", "INSERT INTO u VALUES (10)");
    p.b.psql_db("app", "INSERT INTO u VALUES (20)");
    for s in [&p.a, &p.b] {
        wait_rows(
            s,
            "SELECT string_agg(id::text, ',' ORDER BY id) FROM u",
            "10,20",
        );
    }

    // absent removes this node's half only.
    let out = run(&p.a, &p.b, &p.passfile, json!({"state": "absent"}));
    assert_eq!(out["changed"], true, "{out}");
    assert_eq!(
        p.a.psql_db("app", "SELECT count(*) FROM pg_subscription"),
        "0"
    );
    assert_eq!(
        p.a.psql_db("app", "SELECT count(*) FROM pg_publication"),
        "0"
    );
    assert_eq!(
        p.b.psql_db("app", "SELECT count(*) FROM pg_publication"),
        "1"
    );
}

/// The subscription logs in as a replication role while the module administers the peer as
/// its superuser (a `FOR ALL TABLES` publication needs one): the role's own entry in the
/// passfile, never the superuser's, and replication flows through it.
#[test]
fn subscription_logs_in_as_subscription_user() {
    let p = pair();
    both(&p, "CREATE TABLE t (id int PRIMARY KEY)");
    p.b.psql("CREATE ROLE repl LOGIN REPLICATION PASSWORD 'repl-pw'");
    let mut entries = std::fs::read_to_string(&p.passfile).unwrap();
    entries.push_str("127.0.0.1:*:*:repl:repl-pw\n");
    std::fs::write(&p.passfile, entries).unwrap();
    let out = run(
        &p.a,
        &p.b,
        &p.passfile,
        json!({"subscription_user": "repl"}),
    );
    assert_eq!(out["changed"], true, "{out}");
    let info =
        p.a.psql_db("app", "SELECT subconninfo FROM pg_subscription");
    assert!(
        info.contains("user=repl ") && !info.contains("password"),
        "{info}"
    );
    // The peer's publication was made by the module's own (superuser) connection.
    assert_eq!(
        p.b.psql_db("app", "SELECT pubowner::regrole FROM pg_publication"),
        "postgres"
    );
    p.b.psql_db("app", "INSERT INTO t VALUES (1)");
    wait_rows(&p.a, "SELECT count(*) FROM t", "1");
    assert_eq!(
        p.b.psql_db(
            "app",
            "SELECT usename FROM pg_stat_replication WHERE application_name = 'pgshift_from_127_0_0_1'"
        ),
        "repl"
    );
    let again = run(
        &p.a,
        &p.b,
        &p.passfile,
        json!({"subscription_user": "repl"}),
    );
    assert_eq!(again["changed"], false, "{again}");
}

fn nothing_created(p: &Pair) {
    for s in [&p.a, &p.b] {
        assert_eq!(
            s.psql_db("app", "SELECT (SELECT count(*) FROM pg_publication) + (SELECT count(*) FROM pg_subscription)"),
            "0"
        );
    }
}

#[test]
fn refusals_change_nothing() {
    let p = pair();
    // A table only on this side: the peer could not apply its changes.
    p.a.psql_db("app", "CREATE TABLE only_here (id int PRIMARY KEY)");
    let out = run(&p.a, &p.b, &p.passfile, json!({}));
    assert_eq!(out["failed"], true, "{out}");
    assert!(
        out["msg"]
            .as_str()
            .unwrap()
            .contains("lacks tables this node publishes"),
        "{out}"
    );
    assert!(
        out["msg"].as_str().unwrap().contains("public.only_here"),
        "{out}"
    );
    nothing_created(&p);
    // ... and the other way round.
    let out = run(&p.b, &p.a, &p.passfile, json!({}));
    assert!(
        out["msg"]
            .as_str()
            .unwrap()
            .contains("this node lacks tables the peer"),
        "{out}"
    );
    nothing_created(&p);

    // copy_data with rows on both sides would duplicate them.
    p.b.psql_db("app", "CREATE TABLE only_here (id int PRIMARY KEY)");
    p.a.psql_db("app", "INSERT INTO only_here VALUES (1)");
    p.b.psql_db("app", "INSERT INTO only_here VALUES (2)");
    let out = run(&p.a, &p.b, &p.passfile, json!({"copy_data": true}));
    assert_eq!(out["failed"], true, "{out}");
    assert!(
        out["msg"]
            .as_str()
            .unwrap()
            .contains("both sides hold rows of public.only_here"),
        "{out}"
    );
    nothing_created(&p);

    // A named table that does not exist, an unreachable peer.
    let out = run(&p.a, &p.b, &p.passfile, json!({"tables": ["nosuch"]}));
    assert!(
        out["msg"]
            .as_str()
            .unwrap()
            .contains("no such table on this node: public.nosuch"),
        "{out}"
    );
    let mut dead = json!({});
    dead["peer_port"] = json!(pgshift_testkit::free_port());
    let out = run(&p.a, &p.b, &p.passfile, dead);
    assert!(
        out["msg"]
            .as_str()
            .unwrap()
            .contains("cannot connect to the peer"),
        "{out}"
    );
    nothing_created(&p);

    // PostgreSQL 15 has no origin = none.
    let old = PgServer::start(&["wal_level = logical"]);
    old.psql("CREATE DATABASE app");
    let out = run(&old, &p.b, &p.passfile, json!({}));
    assert_eq!(out["failed"], true, "{out}");
    assert!(
        out["msg"]
            .as_str()
            .unwrap()
            .contains("needs PostgreSQL 16 or later"),
        "{out}"
    );
    nothing_created(&p);
}

/// Hostile input: each case refused naming its option before either server changes (both
/// catalogs' publications and subscriptions compared, files hashed).
#[test]
fn hostile_inputs_are_refused_naming_the_option() {
    use common::hostile::{assert_refused, mkfifo, snapshot};
    let p = pair();
    both(&p, "CREATE TABLE t (id int PRIMARY KEY)");
    let scratch = tempfile::tempdir().unwrap();
    let fifo = scratch.path().join("fifo");
    mkfifo(&fifo);
    let catalog = |s: &PgServer| {
        s.psql_db(
            "app",
            "SELECT (SELECT count(*) FROM pg_publication) || '/' || (SELECT count(*) FROM pg_subscription) || '/' || (SELECT count(*) FROM pg_replication_slots)",
        )
    };
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "peer_passfile is a FIFO",
            json!({"peer_passfile": fifo}),
            "peer_passfile",
        ),
        (
            "peer_passfile is a directory",
            json!({"peer_passfile": scratch.path()}),
            "peer_passfile",
        ),
        (
            "peer_passfile is missing",
            json!({"peer_passfile": scratch.path().join("none")}),
            "peer_passfile",
        ),
        (
            "peer_ca_cert is a FIFO",
            json!({"peer_ca_cert": fifo}),
            "peer_ca_cert",
        ),
        (
            "peer_host with a second keyword",
            json!({"peer_host": "127.0.0.1 sslmode=disable"}),
            "peer_host",
        ),
        (
            "peer_host with a newline",
            json!({"peer_host": "127.0.0.1\nx"}),
            "peer_host",
        ),
        (
            "peer_user with a newline",
            json!({"peer_user": "postgres\npassword=x"}),
            "peer_user",
        ),
        (
            "peer_dbname with NUL",
            json!({"peer_dbname": "app\u{0}"}),
            "peer_dbname",
        ),
        (
            "publication with a newline",
            json!({"publication": "p\n; DROP TABLE t"}),
            "publication",
        ),
        (
            "publication empty",
            json!({"publication": ""}),
            "publication",
        ),
        (
            "subscription with a newline",
            json!({"subscription": "s\nx"}),
            "subscription",
        ),
        (
            "subscription_user with a newline",
            json!({"subscription_user": "r\nx"}),
            "subscription_user",
        ),
        (
            "table with a newline",
            json!({"tables": ["t\n; DROP TABLE t"]}),
            "tables[0]",
        ),
        (
            "peer_port out of range",
            json!({"peer_port": 0}),
            "peer_port",
        ),
        (
            "peer_ssl_mode not a choice",
            json!({"peer_ssl_mode": "sometimes"}),
            "peer_ssl_mode",
        ),
        ("state not a choice", json!({"state": "gone"}), "state"),
        (
            "login_port not a number",
            json!({"login_port": "x"}),
            "login_port",
        ),
    ];
    assert!(cases.len() >= 15);
    let (a_before, b_before) = (catalog(&p.a), catalog(&p.b));
    let files = snapshot(scratch.path());
    let passfile = std::fs::read(&p.passfile).unwrap();
    for (case, extra, option) in cases {
        let out = run(&p.a, &p.b, &p.passfile, extra);
        assert_refused(case, &out, option, &["multi-home-pw"]);
        assert_eq!(catalog(&p.a), a_before, "{case}");
        assert_eq!(catalog(&p.b), b_before, "{case}");
        files.assert_same(&snapshot(scratch.path()), case);
        assert_eq!(std::fs::read(&p.passfile).unwrap(), passfile, "{case}");
    }
}
