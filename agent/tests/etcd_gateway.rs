//! The etcd client against scripted gateways on loopback: answers the real etcd never
//! gives on demand (no leader on one member, a member that hangs, a revision that is not a
//! number), so fail-over, the per-call deadline, typed errors and connection reuse are seen
//! exactly. `etcd.rs` runs the same client against a real etcd.

use std::time::{Duration, Instant};

use pgshift_agent::etcd::{Client, Code, Error};

mod common;
use common::fake::{self, json, After, Seen};

const RANGE_OK: &str = r#"{"header":{"revision":"12"},"kvs":[{"key":"L3Bnc2hpZnQvdC9sZWFkZXI=","value":"ZGIx","mod_revision":"11","lease":"7"}],"count":"1"}"#;

fn client(urls: &[String], timeout: Duration) -> Client {
    Client::new(urls, timeout, None).unwrap()
}

fn url(f: &fake::Fake) -> String {
    format!("http://{}", f.addr)
}

#[test]
fn a_member_without_leader_is_skipped_and_the_good_one_kept() {
    let no_leader = fake::serve(|_| {
        (
            json(
                503,
                r#"{"error":"etcdserver: no leader","code":14,"message":"etcdserver: no leader"}"#,
            ),
            After::KeepAlive,
        )
    });
    let good = fake::serve(|_| (json(200, RANGE_OK), After::KeepAlive));
    let c = client(&[url(&no_leader), url(&good)], Duration::from_secs(2));
    for _ in 0..10 {
        let kv = c.get("/pgshift/t/leader").unwrap().unwrap();
        assert_eq!(
            (
                kv.key.as_str(),
                kv.value.as_str(),
                kv.mod_revision,
                kv.lease
            ),
            ("/pgshift/t/leader", "db1", 11, 7)
        );
    }
    // The leaderless member was asked once; then the good one first, on one connection.
    assert_eq!(no_leader.requests(), 1);
    assert_eq!((good.requests(), good.accepts()), (10, 1));
}

#[test]
fn a_definite_refusal_is_a_typed_error_and_not_retried_elsewhere() {
    let refusing = fake::serve(|_| {
        (
            json(
                400,
                r#"{"error":"etcdserver: mvcc: required revision has been compacted","code":11,"message":"etcdserver: mvcc: required revision has been compacted"}"#,
            ),
            After::KeepAlive,
        )
    });
    let other = fake::serve(|_| (json(200, RANGE_OK), After::KeepAlive));
    let c = client(&[url(&refusing), url(&other)], Duration::from_secs(2));
    match c.range_prefix("/pgshift/t/") {
        Err(Error::Server(e)) => {
            assert_eq!((e.status, e.code), (400, Some(Code::OutOfRange)));
            assert!(e.message.contains("compacted"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(other.requests(), 0);
}

#[test]
fn malformed_answers_are_errors_not_zeros() {
    let cases = [
        (r#"{"header":{"revision":"twelve"}}"#, "revision"),
        (r#"{"header":{}}"#, "revision"),
        (r#"{"kvs":[]}"#, "header"),
        (
            r#"{"header":{"revision":"3"},"kvs":[{"key":"eA==","mod_revision":""}]}"#,
            "integer",
        ),
        (
            r#"{"header":{"revision":"3"},"kvs":[{"key":"%%%","mod_revision":"2"}]}"#,
            "base64",
        ),
        ("<html>proxy error</html>", "expected"),
    ];
    for (body, why) in cases {
        let f = fake::serve(move |_| (json(200, body), After::Close));
        let c = client(&[url(&f)], Duration::from_secs(2));
        match c.range_prefix("/pgshift/t/") {
            Err(e @ Error::Malformed { .. }) => {
                assert!(e.to_string().contains(why), "{body}: {e}")
            }
            other => panic!("{body}: {other:?}"),
        }
    }
    // A transaction's revision too: a failed decode is not "comparison failed".
    let f = fake::serve(|_| {
        (
            json(200, r#"{"header":{"revision":"-1"},"succeeded":true}"#),
            After::Close,
        )
    });
    let c = client(&[url(&f)], Duration::from_secs(2));
    let r = c.put_if("/pgshift/t/leader", "db1", 0, Some(5));
    assert!(matches!(r, Err(Error::Malformed { .. })), "{r:?}");
}

#[test]
fn the_call_budget_holds_with_a_hanging_member() {
    let (hanging, _t) = fake::black_hole();
    let good = fake::serve(|_| (json(200, RANGE_OK), After::KeepAlive));
    let budget = Duration::from_millis(500);
    // The hanging member first: it gets its share, the good one answers within the budget.
    let c = client(&[format!("http://{hanging}"), url(&good)], budget);
    let t = Instant::now();
    assert!(c.get("/pgshift/t/leader").unwrap().is_some());
    assert!(t.elapsed() < budget, "{:?}", t.elapsed());
    // Only hanging members: unreachable, at the budget.
    let (h2, _t2) = fake::black_hole();
    let c = client(
        &[format!("http://{hanging}"), format!("http://{h2}")],
        budget,
    );
    let t = Instant::now();
    let r = c.get("/pgshift/t/leader");
    assert!(matches!(r, Err(Error::Unreachable(_))), "{r:?}");
    assert!(
        t.elapsed() >= budget.mul_f32(0.8) && t.elapsed() < budget + Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
}

#[test]
fn a_call_that_ran_out_of_time_is_followed_by_one_that_starts_with_the_members_not_asked() {
    // Two members that hold a write up (an etcd leader moving) spend a write's whole budget
    // between them; the third answers.
    let (h1, _t1) = fake::black_hole();
    let (h2, _t2) = fake::black_hole();
    let good = fake::serve(|_| {
        (
            json(200, r#"{"header":{"revision":"12"},"succeeded":true}"#),
            After::KeepAlive,
        )
    });
    let c = client(
        &[format!("http://{h1}"), format!("http://{h2}"), url(&good)],
        Duration::from_millis(500),
    );
    let r = c.put_if("/pgshift/t/leader", "db1", 0, Some(11));
    match r {
        Err(Error::Unreachable(why)) => assert!(why.ends_with("no time left"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(good.requests(), 0);
    let t = Instant::now();
    assert_eq!(
        c.put_if("/pgshift/t/leader", "db1", 0, Some(11)).unwrap(),
        Some(12)
    );
    assert!(
        t.elapsed() < Duration::from_millis(200),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(good.requests(), 1);
}

#[test]
fn requests_are_what_the_gateway_expects() {
    let f = fake::serve(|seen: &Seen| {
        let body: serde_json::Value = serde_json::from_slice(&seen.body).unwrap();
        let ok = seen.method == "POST"
            && seen.path == "/v3/kv/txn"
            && body["compare"][0]["mod_revision"] == "41"
            && body["success"][0]["request_put"]["lease"] == "9";
        let answer = if ok {
            r#"{"header":{"revision":"42"},"succeeded":true}"#
        } else {
            r#"{"header":{"revision":"42"}}"#
        };
        (json(200, answer), After::KeepAlive)
    });
    let c = client(&[url(&f)], Duration::from_secs(2));
    assert_eq!(
        c.put_if("/pgshift/t/leader", "db1", 9, Some(41)).unwrap(),
        Some(42)
    );
}
