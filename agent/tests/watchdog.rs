//! The fence guard and a watchdog device, with a FIFO standing in for `/dev/watchdog` (no
//! watchdog driver exists on the test machines): a reader records every byte the guard writes
//! and when. A real device resets the host `timeout` seconds after the last keepalive unless
//! it was closed with 'V' first.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use pgshift_agent::guard::monotonic_ms;
use pgshift_testkit::PgServer;

/// What the device saw: each byte with the monotonic ms it arrived at, then the close.
struct Device {
    bytes: mpsc::Receiver<Option<(u8, u64)>>,
}

impl Device {
    fn at(path: &Path) -> Device {
        nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let (tx, rx) = mpsc::channel();
        let path = path.to_owned();
        thread::spawn(move || {
            // Blocks until the guard opens the device (arms it).
            let mut f = File::open(&path).unwrap();
            let mut b = [0u8; 1];
            while let Ok(1) = f.read(&mut b) {
                let _ = tx.send(Some((b[0], monotonic_ms())));
            }
            let _ = tx.send(None);
        });
        Device { bytes: rx }
    }

    /// Everything until the guard closes the device, or until `within` passes.
    fn until_closed(&self, within: Duration) -> (Vec<(u8, u64)>, Option<u64>) {
        let end = Instant::now() + within;
        let mut seen = Vec::new();
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            match self.bytes.recv_timeout(left) {
                Ok(Some(b)) => seen.push(b),
                Ok(None) => return (seen, Some(monotonic_ms())),
                Err(_) => break,
            }
        }
        (seen, None)
    }
}

fn guard(data_dir: &Path, device: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_pgshift"))
        .arg("fence-guard")
        .arg(data_dir)
        .arg("--watchdog")
        .arg(device)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap()
}

fn postmaster_running(pg: &PgServer) -> bool {
    pg.data_dir.join("postmaster.pid").exists()
}

#[test]
fn keepalives_while_writes_are_allowed_then_fence_and_magic_close() {
    let pg = PgServer::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let device = Device::at(&dir.path().join("watchdog"));
    let mut g = guard(&pg.data_dir, &dir.path().join("watchdog"));
    let deadline = monotonic_ms() + 1500;
    {
        let mut stdin = g.stdin.take().unwrap();
        writeln!(stdin, "P {deadline} 1").unwrap();
        // The agent is gone now (its end of the pipe closes): the guard still holds the
        // deadline, and the device.
    }
    let (seen, closed) = device.until_closed(Duration::from_secs(10));
    let closed = closed.expect("the guard never closed the watchdog");
    let pings: Vec<u64> = seen
        .iter()
        .filter(|(b, _)| *b == b'1')
        .map(|(_, t)| *t)
        .collect();
    assert_eq!(
        seen.last().map(|(b, _)| *b),
        Some(b'V'),
        "no magic close: {seen:?}"
    );
    assert_eq!(pings.len() + 1, seen.len(), "unexpected bytes: {seen:?}");
    // Timeout 1 s: a keepalive every 250 ms, all before the deadline.
    assert!(
        pings.len() >= 5,
        "{} keepalives in 1.5 s: {pings:?}",
        pings.len()
    );
    assert!(
        pings.iter().all(|t| *t <= deadline),
        "keepalive after the deadline {deadline}: {pings:?}"
    );
    let gaps: Vec<u64> = pings.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps.iter().all(|g| *g < 500),
        "gaps between keepalives: {gaps:?}"
    );
    // Disarmed only once PostgreSQL was down.
    assert!(
        closed >= deadline,
        "closed at {closed}, before the deadline {deadline}"
    );
    assert!(
        !postmaster_running(&pg),
        "PostgreSQL still runs after the deadline"
    );
    println!(
        "[watchdog] {} keepalives, gaps {:?} ms; fenced and disarmed {} ms after the deadline",
        pings.len(),
        gaps,
        closed - deadline
    );
    assert!(g.wait().unwrap().success());
}

#[test]
fn a_standby_disarms_and_a_renewal_rearms() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("watchdog");
    let device = Device::at(&path);
    let mut g = guard(dir.path(), &path);
    let mut stdin = g.stdin.take().unwrap();
    writeln!(stdin, "P {} 2", monotonic_ms() + 60_000).unwrap();
    let (seen, closed) = device.until_closed(Duration::from_millis(1200));
    assert!(
        closed.is_none(),
        "closed while writes are allowed: {seen:?}"
    );
    // Timeout 2 s: a keepalive every 500 ms.
    assert!((2..=4).contains(&seen.len()), "{seen:?}");
    let standby_at = monotonic_ms();
    writeln!(stdin, "S").unwrap();
    let (seen, closed) = device.until_closed(Duration::from_secs(5));
    let closed = closed.expect("a standby's guard kept the watchdog armed");
    assert_eq!(seen.last().map(|(b, _)| *b), Some(b'V'), "{seen:?}");
    assert!(
        closed - standby_at < 500,
        "disarmed {} ms after the standby message",
        closed - standby_at
    );

    // Leader again: the guard opens (arms) the device again.
    let device = Device::at(&dir.path().join("watchdog2"));
    drop(stdin);
    let _ = g.wait();
    let mut g = guard(dir.path(), &dir.path().join("watchdog2"));
    let mut stdin = g.stdin.take().unwrap();
    writeln!(stdin, "S").unwrap();
    writeln!(stdin, "P {} 1", monotonic_ms() + 60_000).unwrap();
    let (seen, _) = device.until_closed(Duration::from_millis(600));
    assert!(
        seen.len() >= 2 && seen.iter().all(|(b, _)| *b == b'1'),
        "{seen:?}"
    );
    // A frozen guard sends nothing more: a real device would reset the host.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(g.id() as i32),
        nix::sys::signal::Signal::SIGSTOP,
    )
    .unwrap();
    thread::sleep(Duration::from_millis(100));
    let _already_sent: Vec<_> = device.bytes.try_iter().collect();
    let (seen, _) = device.until_closed(Duration::from_millis(1000));
    assert!(seen.is_empty(), "keepalives from a stopped guard: {seen:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(g.id() as i32),
        nix::sys::signal::Signal::SIGCONT,
    )
    .unwrap();
    writeln!(stdin, "S").unwrap();
    let (seen, closed) = device.until_closed(Duration::from_secs(5));
    assert!(
        closed.is_some() && seen.last().map(|(b, _)| *b) == Some(b'V'),
        "{seen:?}"
    );
    drop(stdin);
    assert!(g.wait().unwrap().success());
}
