//! The agent's HTTP client (ureq) against scripted servers on loopback: framing enforced
//! (short Content-Length bodies, broken or unfinished chunked ones, TLS cut short, bodies
//! with no framing at all are errors), answers over the cap refused, one deadline for the whole
//! request, connections reused (counted on the server) and stale ones replaced unnoticed.

use std::time::{Duration, Instant};

use pgshift_agent::http::{Client, Error};
use pgshift_agent::tls;

mod common;
use common::fake::{self, answer, json, After};

const T: Duration = Duration::from_secs(3);

fn url(f: &fake::Fake, path: &str) -> String {
    format!("http://{}{path}", f.addr)
}

#[test]
fn bodies_are_framed_as_announced() {
    let client = Client::new(None, 1 << 20);
    let get = |raw: &'static str| {
        let f = fake::serve(move |_| (answer(raw), After::Close));
        client.get(&url(&f, "/"), false, T)
    };
    // Content-Length: exactly that many bytes, or an error.
    let ok = get("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello").unwrap();
    assert_eq!((ok.status, ok.body.as_slice()), (200, b"hello".as_slice()));
    let short = get("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello");
    assert!(short.is_err(), "{short:?}");
    // Chunked: decoded; a bad size or a missing last chunk is an error.
    let chunked = get(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n4\r\n\":1}\r\n0\r\n\r\n",
    )
    .unwrap();
    assert_eq!(chunked.body, b"{\"a\":1}");
    let bad = get("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n");
    assert!(bad.is_err(), "{bad:?}");
    let unfinished = get("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n");
    assert!(unfinished.is_err(), "{unfinished:?}");
    // Not HTTP at all.
    let garbage = get("SSH-2.0-OpenSSH_9.2\r\n\r\n");
    assert!(matches!(garbage, Err(Error::Protocol(_))), "{garbage:?}");
    // Errors are answers too, with their body.
    let refused = get("HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\n\r\nnope").unwrap();
    assert_eq!(
        (refused.status, refused.body.as_slice()),
        (404, b"nope".as_slice())
    );
}

#[test]
fn answers_over_the_cap_are_refused() {
    let client = Client::new(None, 1024);
    let big = fake::serve(|_| {
        (
            answer(format!(
                "HTTP/1.1 200 OK\r\nContent-Length: 4096\r\n\r\n{}",
                "x".repeat(4096)
            )),
            After::Close,
        )
    });
    let r = client.get(&url(&big, "/"), false, T);
    assert!(matches!(r, Err(Error::TooLarge(_))), "{r:?}");
    // A chunked stream that never ends is cut at the cap too, not read forever.
    let endless = fake::serve(|_| {
        let mut steps = answer("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
        for _ in 0..64 {
            steps.push((
                b"40\r\n"
                    .iter()
                    .chain([b'y'; 64].iter())
                    .chain(b"\r\n")
                    .copied()
                    .collect(),
                Duration::ZERO,
            ));
        }
        (steps, After::Close)
    });
    let r = client.get(&url(&endless, "/"), false, T);
    assert!(matches!(r, Err(Error::TooLarge(_))), "{r:?}");
    let head = fake::serve(|_| {
        (
            answer(format!(
                "HTTP/1.1 200 OK\r\nX-Big: {}\r\nContent-Length: 0\r\n\r\n",
                "h".repeat(64 * 1024)
            )),
            After::Close,
        )
    });
    let r = client.get(&url(&head, "/"), false, T);
    assert!(matches!(r, Err(Error::TooLarge(_))), "{r:?}");
}

#[test]
fn one_deadline_covers_the_whole_request() {
    let client = Client::new(None, 1 << 20);
    let budget = Duration::from_millis(400);
    // Accepted, never answered.
    let (addr, _t) = fake::black_hole();
    let t = Instant::now();
    let r = client.get(&format!("http://{addr}/"), false, budget);
    assert!(matches!(r, Err(Error::Timeout(_))), "{r:?}");
    assert!(
        t.elapsed() >= budget && t.elapsed() < budget + Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
    // A byte every 50 ms: each read is quick, the whole is not.
    let trickle = fake::serve(|_| {
        let mut steps = answer("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n");
        steps.extend((0..100).map(|_| (b"z".to_vec(), Duration::from_millis(50))));
        (steps, After::Close)
    });
    let t = Instant::now();
    let r = client.get(&url(&trickle, "/"), false, budget);
    assert!(matches!(r, Err(Error::Timeout(_))), "{r:?}");
    assert!(
        t.elapsed() < budget + Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
}

#[test]
fn connections_are_reused_and_stale_ones_replaced() {
    let client = Client::new(None, 1 << 20);
    let kept = fake::serve(|_| (json(200, "{}"), After::KeepAlive));
    for _ in 0..20 {
        let r = client
            .post_json(&url(&kept, "/v3/kv/range"), None, b"{}", T)
            .unwrap();
        assert_eq!(r.status, 200);
    }
    assert_eq!((kept.accepts(), kept.requests()), (1, 20));

    // A server that closes every connection after its answer (as a restarted etcd does to
    // the idle one we hold): no request fails for it.
    let closing = fake::serve(|_| (json(200, "{}"), After::Close));
    for i in 0..10 {
        let r = client.post_json(&url(&closing, "/"), None, b"{}", T);
        assert_eq!(r.map(|r| r.status), Ok(200), "request {i}");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(closing.accepts(), 10);
}

#[test]
fn a_tls_answer_cut_without_close_notify_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let the_ca = common::ca(dir.path(), "ca");
    let (cert, key) = common::issue(&the_ca, dir.path(), "server");
    let server = tls::server(&cert, &key, None).unwrap();
    let client = Client::new(Some(&tls::client(&the_ca.path, None).unwrap()), 1 << 20);
    let https = |f: &fake::Fake| format!("https://localhost:{}/", f.addr.port());

    // Framed and closed cleanly: the test can pass.
    let clean = fake::serve_tls(server.clone(), |_| {
        (json(200, "{\"kvs\": []}"), After::CloseNotify)
    });
    let r = client.get(&https(&clean), false, T).unwrap();
    assert_eq!(r.body, b"{\"kvs\": []}");
    // A Content-Length or chunked body, then the TCP connection cut: truncation.
    let short = fake::serve_tls(server.clone(), |_| {
        (
            answer("HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{\"kvs\""),
            After::Close,
        )
    });
    let r = client.get(&https(&short), false, T);
    assert!(r.is_err(), "{r:?}");
    let short_chunks = fake::serve_tls(server.clone(), |_| {
        (
            answer("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\n{\"kvs\"\r\n"),
            After::Close,
        )
    });
    let r = client.get(&https(&short_chunks), false, T);
    assert!(r.is_err(), "{r:?}");
    // A body delimited by the close alone could be cut anywhere: refused, close_notify or
    // not (ureq itself would take the cut one for complete).
    let close_delimited = "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{\"kvs\": [";
    for after in [After::Close, After::CloseNotify] {
        let f = fake::serve_tls(server.clone(), move |_| (answer(close_delimited), after));
        let r = client.get(&https(&f), false, T);
        assert!(matches!(r, Err(Error::Protocol(_))), "{after:?}: {r:?}");
    }
    // A server the CA did not sign.
    let other = common::ca(dir.path(), "other");
    let (c2, k2) = common::issue(&other, dir.path(), "impostor");
    let impostor = fake::serve_tls(tls::server(&c2, &k2, None).unwrap(), |_| {
        (json(200, "{}"), After::Close)
    });
    let r = client.get(&https(&impostor), false, T);
    assert!(matches!(r, Err(Error::Tls(_))), "{r:?}");
    assert_eq!(impostor.requests(), 0);
}

#[test]
fn the_bearer_token_is_sent_and_never_echoed_in_errors() {
    let client = Client::new(None, 1 << 20);
    let f = fake::serve(|seen| {
        let ok = seen
            .head
            .lines()
            .any(|l| l.eq_ignore_ascii_case("authorization: bearer s3cret"));
        (json(if ok { 200 } else { 401 }, "{}"), After::KeepAlive)
    });
    let r = client
        .post_json(&url(&f, "/pause"), Some("s3cret"), b"{}", T)
        .unwrap();
    assert_eq!(r.status, 200);
    let (addr, _t) = fake::black_hole();
    let e = client
        .post_json(
            &format!("http://{addr}/pause"),
            Some("s3cret"),
            b"{}",
            Duration::from_millis(200),
        )
        .unwrap_err();
    assert!(!format!("{e} {e:?}").contains("s3cret"), "{e:?}");
}

#[test]
fn bytes_past_the_announced_body_do_not_poison_the_next_request() {
    let client = Client::new(None, 1 << 20);
    let f = fake::serve(|_| {
        (
            answer("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}HTTP/1.1 500 Injected\r\nContent-Length: 0\r\n\r\n"),
            After::KeepAlive,
        )
    });
    for i in 0..3 {
        let r = client.get(&url(&f, "/"), false, T).unwrap();
        assert_eq!(
            (r.status, r.body.as_slice()),
            (200, b"{}".as_slice()),
            "request {i}"
        );
    }
}
