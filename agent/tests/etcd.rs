//! The etcd client against a real etcd (Debian etcd-server) on loopback: the transactions
//! leadership rests on, leases, etcd's refusals as typed errors, and a clear "unreachable"
//! when etcd is gone.

use std::time::{Duration, Instant};

use pgshift_agent::etcd::{Client, Code, Error};
use pgshift_testkit::etcd::EtcdServer;

#[test]
fn revision_transactions_leases_and_outage() {
    let etcd = EtcdServer::start();
    let c = Client::new(
        std::slice::from_ref(&etcd.url),
        Duration::from_secs(2),
        None,
    )
    .unwrap();

    // Taking an absent key succeeds once; the loser of a race sees the comparison fail.
    let first = c.put_if("/pgshift/t/leader", "db1", 0, None).unwrap();
    let rev = first.expect("absent key taken");
    assert_eq!(c.put_if("/pgshift/t/leader", "db2", 0, None).unwrap(), None);
    // Renewal on the revision we hold bumps it; a stale revision no longer works.
    let renewed = c
        .put_if("/pgshift/t/leader", "db1", 0, Some(rev))
        .unwrap()
        .unwrap();
    assert!(renewed > rev);
    assert_eq!(
        c.put_if("/pgshift/t/leader", "db2", 0, Some(rev)).unwrap(),
        None
    );
    let kv = c.get("/pgshift/t/leader").unwrap().unwrap();
    assert_eq!((kv.value.as_str(), kv.mod_revision), ("db1", renewed));

    // Prefix reads see exactly the keys under the prefix.
    c.put("/pgshift/t/members/db1", "{}", 0).unwrap();
    c.put("/pgshift/u/other", "x", 0).unwrap();
    let (_, kvs) = c.range_prefix("/pgshift/t/").unwrap();
    let keys: Vec<&str> = kvs.iter().map(|k| k.key.as_str()).collect();
    assert_eq!(keys, ["/pgshift/t/leader", "/pgshift/t/members/db1"]);

    // A key bound to a lease goes when the lease is not kept alive.
    let lease = c.lease_grant(2).unwrap();
    c.put("/pgshift/t/members/db2", "{}", lease).unwrap();
    assert!(c.lease_keepalive(lease).unwrap());
    let t = Instant::now();
    while c.get("/pgshift/t/members/db2").unwrap().is_some() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "leased key outlived its lease"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !c.lease_keepalive(lease).unwrap(),
        "expired lease reported alive"
    );
    assert!(c.delete_if("/pgshift/t/leader", renewed).unwrap());

    // etcd's refusals come typed: a key bound to a lease that does not exist.
    match c.put("/pgshift/t/members/db3", "{}", 0x7ead_beef) {
        Err(Error::Server(e)) => {
            assert_eq!(e.code, Some(Code::NotFound), "{e}");
            assert!(e.message.contains("lease not found"), "{e}");
        }
        other => panic!("expected a NotFound refusal, got {other:?}"),
    }

    drop(etcd);
    let t = Instant::now();
    match c.get("/pgshift/t/leader") {
        Err(Error::Unreachable(_)) => {}
        other => panic!("expected unreachable, got {other:?}"),
    }
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "outage took {:?} to report",
        t.elapsed()
    );
}
