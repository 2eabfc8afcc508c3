//! pg_hba_rule's memory on a large file: the model holds the bytes once plus 12 bytes a
//! record, and the new file is streamed, so the peak stays well under 4x the file. Its own
//! test binary, so that the kernel's peak-RSS accounting of this process's children sees only
//! the module.

use std::fs;
use std::process::Command;

use serde_json::{json, Value};

/// Peak resident memory of the module on a large file, from the kernel's accounting of
/// this test process's children (this test binary runs nothing else).
#[test]
fn memory_stays_within_four_times_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pg_hba.conf");
    let mut text = String::from("# generated\n");
    let mut n = 0u32;
    while text.len() < 20 * 1024 * 1024 {
        text.push_str(&format!(
            "host db{n} u{n} 10.{}.{}.0/24 scram-sha-256 # r{n}\n",
            (n >> 8) & 255,
            n & 255
        ));
        n += 1;
    }
    fs::write(&path, &text).unwrap();
    let size = text.len() as i64;
    drop(text);
    let out = memory_of(
        json!({"path": path, "databases": "new", "users": "new", "address": "10.250.0.0/16", "method": "md5", "position": "first", "reload": false}),
    );
    let (out, peak_kib) = out;
    assert_eq!(out["changed"], true, "{out}");
    eprintln!("peak RSS {peak_kib} KiB for a {size}-byte file");
    assert!(
        peak_kib * 1024 < 4 * size,
        "peak RSS {peak_kib} KiB for a {size}-byte file"
    );
}

fn memory_of(args: Value) -> (Value, i64) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("args.json");
    let mut args = args;
    args["_ansible_module_name"] = json!("pg_hba_rule");
    fs::write(&file, args.to_string()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pgshift-module"))
        .arg(&file)
        .output()
        .unwrap();
    // SAFETY: getrusage only writes the struct it is given.
    let mut usage: nix::libc::rusage = unsafe { std::mem::zeroed() };
    assert_eq!(
        unsafe { nix::libc::getrusage(nix::libc::RUSAGE_CHILDREN, &mut usage) },
        0
    );
    (
        serde_json::from_slice(&out.stdout).unwrap(),
        usage.ru_maxrss,
    )
}
