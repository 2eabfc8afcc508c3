//! Callbacks as the loop runs them: real programs, the loop never waiting for one.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use pgshift_agent::callbacks::{Callbacks, Config, State};

fn script(dir: &Path, name: &str, body: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(10);
    while !ok() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn each_change_runs_its_program_with_action_role_and_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("calls");
    let record = script(
        dir.path(),
        "record",
        &format!("echo \"$@\" >> {}", log.display()),
    );
    let mut cb = Callbacks::new(
        Config {
            on_start: Some(record.clone()),
            on_stop: Some(record.clone()),
            on_role_change: Some(record),
            ..Config::default()
        },
        "main",
    );
    let calls = || std::fs::read_to_string(&log).unwrap_or_default();
    // The agent starting next to a stopped server is no change; a server that does not
    // answer (None) neither.
    cb.observe(Some(State::Stopped));
    cb.observe(Some(State::Replica));
    wait_for("on_start", || cb.counts.ok.load(Ordering::Relaxed) == 1);
    cb.observe(None);
    cb.observe(Some(State::Replica));
    cb.observe(Some(State::Primary));
    wait_for("on_role_change", || {
        cb.counts.ok.load(Ordering::Relaxed) == 2
    });
    cb.observe(Some(State::Stopped));
    wait_for("on_stop", || cb.counts.ok.load(Ordering::Relaxed) == 3);
    assert_eq!(
        calls(),
        "on_start replica main\non_role_change primary main\non_stop primary main\n"
    );
}

#[test]
fn a_slow_callback_never_holds_the_loop_and_is_killed_at_its_timeout_or_by_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let slow = script(dir.path(), "slow", "exec sleep 30");
    let mut cb = Callbacks::new(
        Config {
            on_role_change: Some(slow.clone()),
            on_stop: Some(slow),
            timeout: 1.0,
            ..Config::default()
        },
        "main",
    );
    cb.observe(Some(State::Replica));
    let started = Instant::now();
    cb.observe(Some(State::Primary));
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(100),
        "the loop waited {took:?} for a callback"
    );
    wait_for("the timeout", || {
        cb.counts.timed_out.load(Ordering::Relaxed) == 1
    });
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "killed after {:?}",
        started.elapsed()
    );

    // A newer change kills a callback still running.
    cb.observe(Some(State::Replica));
    std::thread::sleep(Duration::from_millis(200));
    cb.observe(Some(State::Stopped));
    assert_eq!(cb.counts.superseded.load(Ordering::Relaxed), 1);
    wait_for("the second timeout", || {
        cb.counts.timed_out.load(Ordering::Relaxed) == 2
    });
    assert_eq!(cb.counts.ok.load(Ordering::Relaxed), 0);
}

#[test]
fn a_failing_or_missing_program_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let fail = script(dir.path(), "fail", "exit 3");
    let mut cb = Callbacks::new(
        Config {
            on_start: Some(fail),
            on_stop: Some(dir.path().join("missing")),
            ..Config::default()
        },
        "main",
    );
    cb.observe(Some(State::Stopped));
    cb.observe(Some(State::Primary));
    wait_for("the failure", || {
        cb.counts.failed.load(Ordering::Relaxed) == 1
    });
    cb.observe(Some(State::Stopped));
    assert_eq!(cb.counts.failed.load(Ordering::Relaxed), 2);
}
