//! `pgshift logical` against two real PostgreSQL 16 servers replicating both ways on
//! loopback: status, down (enforced against SET and table owners, survives a restart, ends
//! sessions still writing), up refused while the other side is writable and replication is
//! broken, and check putting the non-active side down when replication breaks.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use pgshift_testkit::{pg16_bin, pg_bin, PgServer};

const CONF: &[&str] = &[
    "wal_level = logical",
    "max_replication_slots = 10",
    "max_wal_senders = 10",
    "log_min_messages = warning",
];

struct Pair {
    db1: PgServer,
    db2: PgServer,
    config: PathBuf,
    passfile: PathBuf,
}

fn setup() -> Pair {
    let bin = pg16_bin().expect(
        "PostgreSQL 16 binaries are missing: scripts/deps.sh pg16 (make test installs them)",
    );
    let (db1, db2) = (
        PgServer::start_with_bin(&bin, CONF),
        PgServer::start_with_bin(&bin, CONF),
    );
    let passfile = db1.root.join("pgpass");
    std::fs::write(
        &passfile,
        "127.0.0.1:*:*:postgres:pair-pw\n127.0.0.1:*:*:writer:writer-pw\n",
    )
    .unwrap();
    std::fs::set_permissions(&passfile, std::fs::Permissions::from_mode(0o600)).unwrap();
    if nix::unistd::Uid::effective().is_root() {
        let u = nix::unistd::User::from_name("postgres").unwrap().unwrap();
        nix::unistd::chown(&passfile, Some(u.uid), Some(u.gid)).unwrap();
    }
    for s in [&db1, &db2] {
        s.psql("CREATE DATABASE app");
        s.psql("ALTER ROLE postgres PASSWORD 'pair-pw'");
        s.psql("CREATE ROLE writer LOGIN PASSWORD 'writer-pw'");
        s.psql_db("app", "CREATE TABLE t (id int PRIMARY KEY, origin text)");
        s.psql_db("app", "ALTER TABLE t OWNER TO writer");
        s.psql_db("app", "CREATE PUBLICATION pgshift_multihome FOR ALL TABLES");
    }
    for (here, peer, name) in [(&db1, &db2, "from_db2"), (&db2, &db1, "from_db1")] {
        here.psql_db(
            "app",
            &format!(
                "CREATE SUBSCRIPTION {name} CONNECTION 'host=127.0.0.1 port={} dbname=app user=postgres passfile={}' \
                 PUBLICATION pgshift_multihome WITH (origin = none, copy_data = false)",
                peer.port,
                passfile.display()
            ),
        );
    }
    let config = db1.root.join("logical.toml");
    std::fs::write(
        &config,
        format!(
            "database = \"app\"\nactive = \"db1\"\nstate_file = {:?}\n\
             [[node]]\nname = \"db1\"\nhost = \"127.0.0.1\"\nport = {}\npassfile = {:?}\n\
             [[node]]\nname = \"db2\"\nhost = \"127.0.0.1\"\nport = {}\npassfile = {:?}\n",
            db1.root.join("logical-health.json"),
            db1.port,
            passfile,
            db2.port,
            passfile
        ),
    )
    .unwrap();
    Pair {
        db1,
        db2,
        config,
        passfile,
    }
}

fn pgshift(p: &Pair, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pgshift"))
        .args(["--config", p.config.to_str().unwrap(), "logical"])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// psql over TCP as `user` (password from the passfile): Ok(stdout) or Err(stderr). Each
/// `;;`-separated part is its own `-c` (its own transaction).
fn sql_as(s: &PgServer, user: &str, passfile: &Path, sql: &str) -> Result<String, String> {
    let mut cmd = Command::new(pg_bin().join("psql"));
    cmd.args(["-XAtq", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p"])
        .arg(s.port.to_string())
        .args(["-U", user, "-d", "app"]);
    for part in sql.split(";;") {
        cmd.args(["-c", part]);
    }
    let out = cmd.env("PGPASSFILE", passfile).output().unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).to_string())
    }
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn workers_running(s: &PgServer) -> bool {
    s.psql_db(
        "app",
        "SELECT count(*) FROM pg_stat_subscription WHERE pid IS NOT NULL AND relid IS NULL",
    ) == "1"
}

#[test]
fn down_is_enforced_survives_restart_and_up_refuses_split_brain() {
    let p = setup();
    wait_for("both apply workers", || {
        workers_running(&p.db1) && workers_running(&p.db2)
    });
    let (ok, out) = pgshift(&p, &["status"]);
    assert!(ok && out.contains("flowing both ways"), "{out}");

    // A session that already wrote and is still open when db1 goes down is ended.
    let passfile = p.passfile.clone();
    let port = p.db1.port;
    let holder = std::thread::spawn(move || {
        Command::new(pg_bin().join("psql"))
            .args([
                "-XAtq",
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-U",
                "writer",
                "-d",
                "app",
            ])
            .args([
                "-c",
                "BEGIN; INSERT INTO t VALUES (99, 'open'); SELECT pg_sleep(20); COMMIT;",
            ])
            .env("PGPASSFILE", &passfile)
            .output()
            .unwrap()
    });
    wait_for("the open write", || {
        p.db1.psql_db("app", "SELECT count(*) FROM pg_stat_activity WHERE backend_xid IS NOT NULL AND usename = 'writer'") == "1"
    });
    let started = Instant::now();
    let (ok, out) = pgshift(&p, &["down", "db1", "--timeout", "1"]);
    assert!(ok, "{out}");
    assert!(out.contains("ended 1 session"), "{out}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(!holder.join().unwrap().status.success());

    // Again: nothing to do, says so.
    let (ok, out) = pgshift(&p, &["down", "db1"]);
    assert!(ok && out.contains("still down"), "{out}");

    // Refused for a client, also after SET, and for the table's owner trying to disable the
    // trigger; replication from db2 still applies.
    // New sessions start read-only; SET that back and the trigger still refuses.
    let e = sql_as(
        &p.db1,
        "writer",
        &p.passfile,
        "INSERT INTO t VALUES (1, 'db1')",
    )
    .unwrap_err();
    assert!(e.contains("read-only transaction"), "{e}");
    let e = sql_as(
        &p.db1,
        "writer",
        &p.passfile,
        "SET default_transaction_read_only = off;; INSERT INTO t VALUES (1, 'db1')",
    )
    .unwrap_err();
    assert!(e.contains("this database is down"), "{e}");
    let e = sql_as(
        &p.db1,
        "writer",
        &p.passfile,
        "SET default_transaction_read_only = off;; ALTER TABLE t DISABLE TRIGGER ALL",
    )
    .unwrap_err();
    assert!(e.contains("schema changes are refused"), "{e}");
    sql_as(
        &p.db2,
        "writer",
        &p.passfile,
        "INSERT INTO t VALUES (2, 'db2')",
    )
    .unwrap();
    wait_for("db2's row on db1", || {
        p.db1.psql_db("app", "SELECT count(*) FROM t WHERE id = 2") == "1"
    });
    let (_, out) = pgshift(&p, &["status"]);
    assert!(
        out.contains("db1: DOWN (read-only)") && out.contains("db2: writable"),
        "{out}"
    );

    // Down survives a restart of the server.
    p.db1.run_checked(
        Command::new(p.db1.bin.join("pg_ctl"))
            .args(["restart", "-w", "-s", "-D"])
            .arg(&p.db1.data_dir)
            .arg("-l")
            .arg(p.db1.log_path()),
    );
    let e = sql_as(
        &p.db1,
        "writer",
        &p.passfile,
        "INSERT INTO t VALUES (3, 'db1')",
    )
    .unwrap_err();
    assert!(
        e.contains("down") || e.contains("read-only transaction"),
        "{e}"
    );

    // Replication into db2 breaks: db1 must not become writable beside a writable db2.
    p.db2.psql_db("app", "ALTER SUBSCRIPTION from_db1 DISABLE");
    wait_for("db2's worker gone", || !workers_running(&p.db2));
    let (ok, out) = pgshift(&p, &["up", "db1"]);
    assert!(
        !ok && out.contains("refusing to make db1 writable"),
        "{out}"
    );
    let e = sql_as(
        &p.db1,
        "writer",
        &p.passfile,
        "INSERT INTO t VALUES (4, 'db1')",
    )
    .unwrap_err();
    assert!(
        e.contains("down") || e.contains("read-only transaction"),
        "{e}"
    );
    // Repaired: up works, writes flow both ways again.
    p.db2.psql_db("app", "ALTER SUBSCRIPTION from_db1 ENABLE");
    wait_for("db2's worker back", || workers_running(&p.db2));
    let (ok, out) = pgshift(&p, &["up", "db1"]);
    assert!(ok, "{out}");
    sql_as(
        &p.db1,
        "writer",
        &p.passfile,
        "INSERT INTO t VALUES (5, 'db1')",
    )
    .unwrap();
    wait_for("db1's row on db2", || {
        p.db2.psql_db("app", "SELECT count(*) FROM t WHERE id = 5") == "1"
    });
    for s in [&p.db1, &p.db2] {
        assert_eq!(
            s.psql_db("app", "SELECT string_agg(id::text, ',' ORDER BY id) FROM t"),
            "2,5"
        );
    }
}

#[test]
fn check_puts_the_passive_side_down_when_replication_breaks() {
    let p = setup();
    wait_for("both apply workers", || {
        workers_running(&p.db1) && workers_running(&p.db2)
    });
    let (ok, out) = pgshift(&p, &["check"]);
    assert!(ok && out.contains("flows both ways"), "{out}");
    p.db1.psql_db("app", "ALTER SUBSCRIPTION from_db2 DISABLE");
    wait_for("db1's worker gone", || !workers_running(&p.db1));
    // One broken look is only noted (a worker restarting looks the same for an instant);
    // the next check that sees it too acts.
    let (ok, out) = pgshift(&p, &["check"]);
    assert!(
        ok && out.contains("acting if the next check sees it too"),
        "{out}"
    );
    sql_as(
        &p.db2,
        "writer",
        &p.passfile,
        "INSERT INTO t VALUES (3, 'db2')",
    )
    .unwrap();
    let (ok, out) = pgshift(&p, &["check"]);
    assert!(ok && out.contains("db2 is down"), "{out}");
    let e = sql_as(
        &p.db2,
        "writer",
        &p.passfile,
        "INSERT INTO t VALUES (1, 'db2')",
    )
    .unwrap_err();
    assert!(
        e.contains("down") || e.contains("read-only transaction"),
        "{e}"
    );
    sql_as(
        &p.db1,
        "writer",
        &p.passfile,
        "INSERT INTO t VALUES (2, 'db1')",
    )
    .unwrap();
    let (ok, out) = pgshift(&p, &["status", "--json"]);
    assert!(ok, "{out}");
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["replication_ok"], false);
    assert_eq!(doc["nodes"][1]["down"], true);
}

#[test]
fn ddl_changes_both_sides_and_replication_carries_the_new_table() {
    let p = setup();
    wait_for("both apply workers", || {
        workers_running(&p.db1) && workers_running(&p.db2)
    });
    // A bad file stops at the first side, rolls back there, and leaves both writable.
    let bad = p.db1.root.join("bad.sql");
    std::fs::write(
        &bad,
        "CREATE TABLE v (id int PRIMARY KEY);\nCREATE TABLE oops (;\n",
    )
    .unwrap();
    let (ok, out) = pgshift(&p, &["ddl", bad.to_str().unwrap()]);
    assert!(
        !ok && out.contains("failed on db1 and was rolled back"),
        "{out}"
    );
    for s in [&p.db1, &p.db2] {
        assert_eq!(
            s.psql_db("app", "SELECT count(*) FROM pg_class WHERE relname = 'v'"),
            "0"
        );
    }
    sql_as(
        &p.db1,
        "writer",
        &p.passfile,
        "INSERT INTO t VALUES (1, 'db1')",
    )
    .unwrap();

    let good = p.db1.root.join("good.sql");
    std::fs::write(
        &good,
        "CREATE TABLE u (id int PRIMARY KEY, note text);\nALTER TABLE u OWNER TO writer;\n",
    )
    .unwrap();
    let started = Instant::now();
    let (ok, out) = pgshift(&p, &["ddl", good.to_str().unwrap()]);
    assert!(ok, "{out}");
    assert!(
        out.contains("refreshed on db1") && out.contains("refreshed on db2"),
        "{out}"
    );
    eprintln!("ddl took {:?}: {out}", started.elapsed());
    sql_as(
        &p.db1,
        "writer",
        &p.passfile,
        "INSERT INTO u VALUES (1, 'db1')",
    )
    .unwrap();
    sql_as(
        &p.db2,
        "writer",
        &p.passfile,
        "INSERT INTO u VALUES (2, 'db2')",
    )
    .unwrap();
    for s in [&p.db1, &p.db2] {
        wait_for("rows of u on both sides", || {
            s.psql_db("app", "SELECT string_agg(id::text, ',' ORDER BY id) FROM u") == "1,2"
        });
        assert_eq!(s.psql_db("app", "SELECT count(*) FROM t"), "1");
    }
}
