//! The API server out of file descriptors (EMFILE on accept): it pauses between tries
//! instead of spinning on the pending connection, and serves it once descriptors are back.
//! Alone in its test binary: lowering RLIMIT_NOFILE applies to the whole process.

use std::fs::File;
use std::io::Write;
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgshift_agent::api::{self, slots::Stats, Snapshot};
use pgshift_agent::dcs::MemberRecord;

mod common;
use common::{config, read_all, NO_ETCD};

/// User + system CPU time of this process.
fn cpu_time() -> Duration {
    let mut u = std::mem::MaybeUninit::<nix::libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given.
    let u = unsafe {
        assert_eq!(
            nix::libc::getrusage(nix::libc::RUSAGE_SELF, u.as_mut_ptr()),
            0
        );
        u.assume_init()
    };
    let tv = |t: nix::libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    tv(u.ru_utime) + tv(u.ru_stime)
}

#[test]
fn out_of_descriptors_the_server_pauses_and_recovers() {
    let me = MemberRecord {
        name: "db1".into(),
        role: "replica".into(),
        state: "streaming".into(),
        ..Default::default()
    };
    let snap = Snapshot {
        me: Some(me),
        ..Snapshot::default()
    };
    let h = api::start(&config("", NO_ETCD), Arc::new(Mutex::new(snap))).unwrap();

    // Fill the descriptor table up to a low limit, then free exactly one for the client.
    let limit = 256;
    let rl = nix::libc::rlimit {
        rlim_cur: limit,
        rlim_max: 20_000,
    };
    // SAFETY: setrlimit reads the struct it is given.
    assert_eq!(
        unsafe { nix::libc::setrlimit(nix::libc::RLIMIT_NOFILE, &rl) },
        0
    );
    let mut filler = Vec::new();
    while let Ok(f) = File::open("/dev/null") {
        filler.push(f);
        assert!(filler.len() <= limit as usize, "the limit did not apply");
    }
    filler.pop();
    let mut client = TcpStream::connect(h.addr).unwrap();
    client
        .write_all(b"GET /health HTTP/1.1\r\nHost: db1\r\n\r\n")
        .unwrap();

    // The server cannot take it: over a second it tries a few times and burns no CPU.
    let cpu = cpu_time();
    std::thread::sleep(Duration::from_secs(1));
    let burnt = cpu_time() - cpu;
    let errors = Stats::get(&h.stats.accept_errors);
    eprintln!("out of descriptors for 1 s: {errors} accept errors, {burnt:?} of CPU");
    assert!((1..=20).contains(&errors), "{errors} accept errors");
    assert!(burnt < Duration::from_millis(300), "spinning: {burnt:?}");

    // Descriptors back: the waiting client is answered within the longest pause.
    drop(filler);
    let t = Instant::now();
    let r = read_all(&mut client, Duration::from_secs(3));
    assert_eq!(r.status, Some(200), "{r:?}");
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );
}
