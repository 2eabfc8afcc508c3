//! Runs the module binary as Ansible does: `<module> <args-file>`, one JSON object back.

pub mod certs;
#[allow(dead_code)] // not every test binary uses every check
pub mod hostile;
#[allow(dead_code)] // only the pg_basebackup_standby tests use it
pub mod standby;

use std::fs;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// A module that has not answered after this long is hung: the test fails instead of hanging.
const MODULE_DEADLINE: Duration = Duration::from_secs(120);

pub fn run_module(name: &str, args: Value) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("args.json");
    let mut args = args;
    args["_ansible_module_name"] = json!(name);
    if args.get("_ansible_diff").is_none() {
        args["_ansible_diff"] = json!(true);
    }
    fs::write(&file, args.to_string()).unwrap();
    let (out_path, err_path) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_pgshift-module"))
        .arg(&file)
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out_path).unwrap())
        .stderr(fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > MODULE_DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{name} did not finish within {MODULE_DEADLINE:?} (hung) with {args}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let stdout = fs::read_to_string(&out_path).unwrap();
    let stderr = fs::read_to_string(&err_path).unwrap();
    let out: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!("not one JSON object ({e}): {stdout:?} stderr: {stderr} status: {status}")
    });
    // Ansible ignores the exit code when the JSON is valid, but a signal means a crash.
    assert!(
        status.code().is_some(),
        "{name} was killed by a signal ({status}): {stdout} {stderr}"
    );
    out
}

/// The operating-system user the servers and files of a test belong to: postgres under
/// root (PostgreSQL refuses to run as root), otherwise whoever runs the tests.
#[allow(dead_code)] // not every test binary needs it
pub fn owner() -> String {
    if nix::unistd::Uid::effective().is_root() {
        "postgres".into()
    } else {
        nix::unistd::User::from_uid(nix::unistd::Uid::effective())
            .unwrap()
            .unwrap()
            .name
    }
}
