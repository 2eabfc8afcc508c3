//! A standby's copies of the leader's replication slots (`LocalPg::create_slots` and
//! `advance_slots` on a real standby): made reserving WAL, moved forward to the positions
//! asked for, never past what the standby replayed and never back, so that once promoted it
//! still holds the WAL every other member needs.

use std::time::Duration;

use pgshift_agent::config::Config;
use pgshift_agent::postgres::LocalPg;
use pgshift_testkit::PgServer;

/// The agent's view of `server`: its socket, as the postgres user (trusted on the socket:
/// the test runs as root, whom peer authentication would refuse).
fn local_pg(server: &PgServer) -> LocalPg {
    let hba = server.hba_path();
    let rules = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(&hba, format!("local all postgres trust\n{rules}")).unwrap();
    server.psql("SELECT pg_reload_conf()");
    let text = format!(
        r#"
cluster = "t"
name = "db2"
[api]
listen = "127.0.0.1:{api}"
[etcd]
endpoints = ["http://127.0.0.1:9"]
[postgresql]
data_directory = "{data}"
bin_dir = "{bin}"
port = {port}
socket_dir = "{socket}"
connect_address = "db2:5432"
[replication]
user = "replicator"
passfile = "/nonexistent/.pgpass"
"#,
        api = pgshift_testkit::free_port(),
        data = server.data_dir.display(),
        bin = server.bin.display(),
        port = server.port,
        socket = server.socket_dir.display(),
    );
    let cfg = Config::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    LocalPg::new(&cfg).unwrap()
}

fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    for _ in 0..300 {
        if ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for {what}");
}

#[test]
fn a_standby_moves_its_slots_forward_only_and_never_past_its_replay() {
    let primary = PgServer::start(&[]);
    let standby = primary.standby(&[]);
    let mut pg = local_pg(&standby);
    let names = vec!["db1".to_string(), "db3".to_string()];
    assert_eq!(pg.create_slots(&names).unwrap(), names);
    // Made again: nothing to do.
    assert!(pg.create_slots(&names).unwrap().is_empty());
    let obs = pg.observe();
    assert!(obs.in_recovery);
    let start = obs.slot_lsns["db3"];
    assert!(start > 0 && obs.slot_lsns["db1"] > 0, "{:?}", obs.slot_lsns);

    // WAL moves on, the standby replays it.
    primary.psql("CREATE TABLE t AS SELECT generate_series(1, 10000) AS i; SELECT pg_switch_wal()");
    let target = primary.psql("SELECT pg_current_wal_lsn()");
    wait_until("the standby replaying the new WAL", || {
        standby.psql(&format!("SELECT pg_last_wal_replay_lsn() >= '{target}'")) == "t"
    });
    let replayed = pg.observe().replayed_lsn;
    assert!(replayed > start);

    // db3 asks for far beyond what the standby has: it stops at the replay point; db1 moves
    // by one byte.
    let moved = pg
        .advance_slots(&[
            ("db3".into(), replayed + (1 << 32)),
            ("db1".into(), start + 1),
            ("nobody".into(), replayed),
        ])
        .unwrap();
    assert_eq!(moved.len(), 2, "{moved:?}");
    let obs = pg.observe();
    let db3 = obs.slot_lsns["db3"];
    assert!(
        db3 >= replayed && db3 <= obs.replayed_lsn,
        "{db3:X} {replayed:X}"
    );
    assert_eq!(obs.slot_lsns["db1"], start + 1);
    assert!(!obs.slots.contains(&"nobody".to_string()));

    // Never back: asking for less than it keeps now changes nothing, and is no error.
    assert!(pg
        .advance_slots(&[("db3".into(), start)])
        .unwrap()
        .is_empty());
    assert_eq!(pg.observe().slot_lsns["db3"], db3);

    // Once promoted, the slots are still there with their positions: the WAL from db1's
    // position on is kept for it.
    standby.psql("SELECT pg_promote()");
    wait_until("the promotion", || {
        standby.psql("SELECT pg_is_in_recovery()") == "f"
    });
    let obs = pg.observe();
    assert_eq!(obs.slot_lsns["db1"], start + 1);
    assert_eq!(obs.slot_lsns["db3"], db3);
}
