//! Maintenance (`pgshift down`) on this node's disk. etcd holds the operator's word
//! (`down/<name>`); the agent copies it into `<state_dir>/down` so a node that boots while
//! etcd is unreachable still keeps itself out of rotation.

use std::io;
use std::path::{Path, PathBuf};

use pgshift_core::atomic::{self, Ownership};

fn marker(state_dir: &Path) -> PathBuf {
    state_dir.join("down")
}

pub fn on_disk(state_dir: &Path) -> bool {
    marker(state_dir).exists()
}

/// Makes the disk agree with etcd (a no-op when it does).
pub fn persist(state_dir: &Path, down: bool) -> io::Result<()> {
    let path = marker(state_dir);
    match (down, path.exists()) {
        (true, false) => {
            fs_err::create_dir_all(state_dir)?;
            let own = Ownership {
                uid: 0,
                gid: 0,
                mode: 0o644,
            };
            let own = nix::unistd::geteuid().is_root().then_some(own);
            atomic::write_atomic(
                &path,
                b"# pgshift: this node is in maintenance (pgshift down); pgshift up ends it\n",
                own,
            )
        }
        (false, true) => {
            fs_err::remove_file(&path)?;
            // The removal must survive a crash as the creation would.
            fs_err::File::open(state_dir)?.sync_all()
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_etcd() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        assert!(!on_disk(&state));
        persist(&state, true).unwrap();
        assert!(on_disk(&state));
        persist(&state, true).unwrap();
        persist(&state, false).unwrap();
        assert!(!on_disk(&state));
        persist(&state, false).unwrap();
    }
}
