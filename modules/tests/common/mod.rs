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
