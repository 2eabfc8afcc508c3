//! An old primary restarted as a standby of the leader that replaced it, with commits of its
//! own past the fork: its WAL receiver streams the old timeline up to the fork now and then
//! (every wal_retrieve_retry_interval) before finding it cannot go on, but the agent must
//! never count it as streaming, or `/replica` would offer readers commits that pg_rewind is
//! about to take away (the stress battery's history checker saw one such read through
//! HAProxy's read-only port).

use pgshift_agent::postgres::STREAMING;
use pgshift_testkit::PgServer;

/// Samples the WAL receiver every millisecond for about `ms` ms on `server`:
/// (times its status said streaming, times the agent's STREAMING said so).
fn sample(server: &PgServer, ms: u32) -> (u32, u32) {
    let out = server.psql(&format!(
        "DO $$
         DECLARE raw int := 0; agent int := 0; r bool; a bool;
         BEGIN
           FOR i IN 1..{ms} LOOP
             SELECT status = 'streaming' INTO r FROM pg_stat_wal_receiver;
             SELECT {STREAMING} INTO a;
             IF r THEN raw := raw + 1; END IF;
             IF a THEN agent := agent + 1; END IF;
             PERFORM pg_sleep(0.001);
           END LOOP;
           PERFORM set_config('pgshift.raw', raw::text, false), set_config('pgshift.agent', agent::text, false);
         END $$;
         SELECT current_setting('pgshift.raw') || ' ' || current_setting('pgshift.agent')"
    ));
    // The last line: psql also prints the DO's command tag.
    let last = out.lines().last().unwrap_or_default();
    let mut n = last.split_whitespace().map(|v| v.parse::<u32>().unwrap());
    (n.next().unwrap(), n.next().unwrap())
}

fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    for _ in 0..300 {
        if ok() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("timed out waiting for {what}");
}

#[test]
fn an_old_primary_with_a_forked_history_is_never_streaming() {
    // The WAL receiver retries every 5 ms instead of 5 s: many tries within the sample.
    let a = PgServer::start(&["wal_retrieve_retry_interval = '5ms'"]);
    a.psql("CREATE TABLE t (id int); INSERT INTO t VALUES (1)");
    let b = a.standby(&[]);
    // A healthy standby streams, in the agent's eyes too.
    wait_until("the standby streaming", || {
        b.psql(&format!("SELECT {STREAMING}")) == "t"
    });
    wait_until("the row on the standby", || {
        b.psql("SELECT count(*) FROM t") == "1"
    });

    // The standby is promoted; the old primary commits on its own (the commit no standby
    // acknowledged), stops, and comes back as the new primary's standby.
    b.psql("SELECT pg_promote()");
    // (testkit servers run with synchronous_commit off: this commit must reach the WAL file.)
    a.psql("SET synchronous_commit = on; INSERT INTO t VALUES (2)");
    a.stop();
    a.follow(&b);
    a.start_again();
    // It serves the commit the cluster does not have...
    assert_eq!(
        a.psql("SELECT string_agg(id::text, ',' ORDER BY id) FROM t"),
        "1,2"
    );
    // ...its WAL receiver says streaming now and then, and the agent never does.
    let (raw, agent) = sample(&a, 3000);
    assert!(
        raw > 0,
        "the premise: the WAL receiver of the forked standby never said streaming in 3000 samples"
    );
    assert_eq!(
        agent, 0,
        "counted as streaming {agent} times (its receiver: {raw})"
    );
}

#[test]
fn a_restarted_standby_of_an_idle_primary_is_streaming() {
    let a = PgServer::start(&[]);
    a.psql("CREATE TABLE t (id int); INSERT INTO t VALUES (1)");
    let b = a.standby(&[]);
    wait_until("the standby streaming", || {
        b.psql(&format!("SELECT {STREAMING}")) == "t"
    });
    // A commit, replayed: the standby's position is in the middle of a WAL segment.
    a.psql("SET synchronous_commit = on; INSERT INTO t VALUES (2)");
    wait_until("the row on the standby", || {
        b.psql("SELECT count(*) FROM t") == "2"
    });
    b.stop();
    b.start_again();
    // The primary writes nothing now: the restarted WAL receiver gets again what the standby
    // has already replayed, and nothing past it to flush (its flushed_lsn stays at the
    // segment's start), yet it streams, and a rejoin would only repeat this.
    let before = a.psql("SELECT pg_current_wal_insert_lsn()");
    let mut streaming = false;
    for _ in 0..50 {
        if b.psql(&format!("SELECT {STREAMING}")) == "t" {
            streaming = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let receiver = b.psql("SELECT status, flushed_lsn, written_lsn, pg_last_wal_replay_lsn() FROM pg_stat_wal_receiver");
    assert_eq!(
        a.psql("SELECT pg_current_wal_insert_lsn()"),
        before,
        "the premise: the primary stayed idle"
    );
    assert!(streaming, "not counted as streaming in 5 s: {receiver}");
}
