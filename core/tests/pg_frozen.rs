//! A server that stops answering after the connect (its backend stopped with SIGSTOP, as a
//! frozen host would be): a statement gives up at the client's query timeout with a clear
//! error instead of waiting forever.

use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use pgshift_core::pg::{Client, ConnectOptions};
use pgshift_testkit::PgServer;

#[test]
fn a_frozen_backend_fails_the_statement_at_the_query_timeout() {
    let s = PgServer::start(&[]);
    let opts = ConnectOptions {
        unix_socket: Some(s.socket_dir.clone()),
        port: s.port,
        ..ConnectOptions::default()
    };
    let mut c = Client::connect(&opts).unwrap();
    let pid: i32 = c.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    c.set_query_timeout(Duration::from_millis(700));
    kill(Pid::from_raw(pid), Signal::SIGSTOP).unwrap();
    let started = Instant::now();
    let r = c.query_one("SELECT 1", &[]);
    let took = started.elapsed();
    kill(Pid::from_raw(pid), Signal::SIGCONT).unwrap();
    let e = r.unwrap_err().to_string();
    assert!(e.contains("no answer from the server within 0.7 s"), "{e}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    // A fresh connection works once the server answers again.
    let mut c = Client::connect(&opts).unwrap();
    let one: i32 = c.query_one("SELECT 1", &[]).unwrap().get(0);
    assert_eq!(one, 1);
}
