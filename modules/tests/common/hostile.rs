//! What every refused hostile input must show: a failed result whose message names the
//! option, no panic, no secret anywhere in the output, and nothing changed on disk (the
//! files are hashed before and after; callers compare the catalog themselves).

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde_json::Value;

/// Asserts the result is a clean refusal naming `option`, with none of `secrets` in it.
pub fn assert_refused(case: &str, out: &Value, option: &str, secrets: &[&str]) {
    assert_eq!(out["failed"], true, "{case}: not refused: {out}");
    assert_ne!(out["changed"], true, "{case}: refused but changed: {out}");
    let msg = out["msg"].as_str().unwrap_or_default();
    assert!(
        !msg.contains("internal error") && !msg.contains("panicked"),
        "{case}: a panic: {msg}"
    );
    assert!(
        msg.contains(option),
        "{case}: the message does not name {option}: {msg}"
    );
    let printed = out.to_string();
    for s in secrets {
        assert!(
            !printed.contains(s),
            "{case}: secret {s:?} in the output: {printed}"
        );
    }
}

/// Every entry under `root`: type, mode, owner and (for regular files) the content's hash.
#[derive(PartialEq, Eq)]
pub struct Tree(BTreeMap<PathBuf, String>);

/// Only the entries that differ, so a failure says what changed.
impl std::fmt::Debug for Tree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} entries", self.0.len())
    }
}

impl Tree {
    pub fn assert_same(&self, now: &Tree, case: &str) {
        let mut diff = Vec::new();
        for (k, v) in &self.0 {
            match now.0.get(k) {
                Some(w) if w == v => {}
                Some(w) => diff.push(format!("changed {}: {v} -> {w}", k.display())),
                None => diff.push(format!("removed {}", k.display())),
            }
        }
        for k in now.0.keys().filter(|k| !self.0.contains_key(*k)) {
            diff.push(format!("added {}", k.display()));
        }
        assert!(diff.is_empty(), "{case}: files changed: {diff:#?}");
    }
}

pub fn snapshot(root: &Path) -> Tree {
    let mut out = BTreeMap::new();
    walk(root, true, &mut out);
    Tree(out)
}

/// A data directory's own files (configuration, signal files, PG_VERSION) and the names in
/// it, not the relation files and WAL the running server writes by itself.
pub fn snapshot_datadir(dir: &Path) -> Tree {
    let mut out = BTreeMap::new();
    walk(dir, false, &mut out);
    Tree(out)
}

fn walk(dir: &Path, deep: bool, out: &mut BTreeMap<PathBuf, String>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        let Ok(m) = fs::symlink_metadata(&path) else {
            continue;
        };
        let t = m.file_type();
        let what = if t.is_symlink() {
            format!("link -> {}", fs::read_link(&path).unwrap().display())
        } else if t.is_dir() {
            if deep {
                walk(&path, deep, out);
            }
            "dir".to_string()
        } else if t.is_file() && m.len() > 8 << 20 {
            // Large (test-made sparse) files: size and modification time are enough.
            format!("file {} mtime {}.{}", m.len(), m.mtime(), m.mtime_nsec())
        } else if t.is_file() {
            let bytes = fs::read(&path).unwrap_or_default();
            format!("file {} {:x}", bytes.len(), fxhash(&bytes))
        } else if t.is_fifo() {
            "fifo".to_string()
        } else {
            "other".to_string()
        };
        out.insert(
            path,
            format!("{what} mode {:o} uid {}", m.mode() & 0o7777, m.uid()),
        );
    }
}

/// A content fingerprint (not cryptographic; it only has to tell files apart in a test).
fn fxhash(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf29ce484222325u64, |h, &c| {
        (h ^ u64::from(c)).wrapping_mul(0x100000001b3)
    })
}

pub fn mkfifo(path: &Path) {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
}
