//! Runs the module binary as Ansible does: `<module> <args-file>`, one JSON object back.

pub mod certs;

use std::fs;
use std::process::Command;

use serde_json::{json, Value};

pub fn run_module(name: &str, args: Value) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("args.json");
    let mut args = args;
    args["_ansible_module_name"] = json!(name);
    if args.get("_ansible_diff").is_none() {
        args["_ansible_diff"] = json!(true);
    }
    fs::write(&file, args.to_string()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pgshift-module"))
        .arg(&file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "not one JSON object ({e}): {stdout:?} stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
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
