//! Atomic file replacement: a temp file in the same directory, written, given the right
//! owner/group/mode, fsynced, renamed over the target, then the directory fsynced. Readers see
//! the old file or the new one, never a torn one, also across a crash.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use nix::unistd::{fchown, Gid, Uid};

/// Who owns a file and with which permission bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ownership {
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
}

impl Ownership {
    pub fn of(path: &Path) -> io::Result<Ownership> {
        let m = fs::metadata(path)?;
        Ok(Ownership {
            uid: m.uid(),
            gid: m.gid(),
            mode: m.mode() & 0o7777,
        })
    }
}

/// Replaces `path` with `contents`. An existing file keeps its owner, group and mode unless
/// `ownership` says otherwise; a new file gets `ownership` or the caller's ids with mode 0600.
pub fn write_atomic(path: &Path, contents: &[u8], ownership: Option<Ownership>) -> io::Result<()> {
    let mut r = Replacement::new(path, ownership)?;
    r.writer().write_all(contents)?;
    r.commit()
}

/// A new version of a file, written to a temporary file beside it and renamed over it by
/// [`Replacement::commit`]; dropped without a commit, it leaves nothing behind. For contents
/// that are streamed rather than held in memory (a large pg_hba.conf), and for callers that
/// must check something between writing and the rename.
pub struct Replacement {
    target: PathBuf,
    tmp: PathBuf,
    file: Option<BufWriter<File>>,
    own: Ownership,
}

impl Replacement {
    /// Ownership as for [`write_atomic`].
    pub fn new(path: &Path, ownership: Option<Ownership>) -> io::Result<Replacement> {
        let own = match (ownership, Ownership::of(path)) {
            (Some(o), _) => o,
            (None, Ok(existing)) => existing,
            (None, Err(e)) if e.kind() == io::ErrorKind::NotFound => Ownership {
                uid: Uid::effective().as_raw(),
                gid: Gid::effective().as_raw(),
                mode: 0o600,
            },
            (None, Err(e)) => return Err(e),
        };
        let tmp = temp_path(path);
        // 0600 until the final mode is set, so a secret is never briefly world-readable.
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        Ok(Replacement {
            target: path.to_path_buf(),
            tmp,
            file: Some(BufWriter::new(f)),
            own,
        })
    }

    pub fn writer(&mut self) -> &mut impl Write {
        self.file.as_mut().expect("open until commit")
    }

    /// Owner and mode, fsync, rename over the target, fsync the directory.
    pub fn commit(mut self) -> io::Result<()> {
        let f = self
            .file
            .take()
            .expect("open until commit")
            .into_inner()
            .map_err(|e| e.into_error())?;
        let own = self.own;
        if Uid::effective().is_root() || own.uid == Uid::effective().as_raw() {
            fchown(
                f.as_raw_fd(),
                Some(Uid::from_raw(own.uid)),
                Some(Gid::from_raw(own.gid)),
            )
            .map_err(io::Error::from)?;
        }
        f.set_permissions(fs::Permissions::from_mode(own.mode))?;
        f.sync_all()?;
        fs::rename(&self.tmp, &self.target)?;
        File::open(parent_dir(&self.target))?.sync_all()
    }
}

impl Drop for Replacement {
    fn drop(&mut self) {
        // Still open: not committed (an error, or the caller gave up).
        if self.file.take().is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Copies `path` next to itself as `<name>.<pid>.<timestamp>~` (Ansible's backup naming),
/// keeping owner and mode, and returns the backup's path.
pub fn backup(path: &Path) -> io::Result<PathBuf> {
    backup_of(path, &fs::read(path)?)
}

/// [`backup`] of a file whose `contents` the caller already holds (no second read).
pub fn backup_of(path: &Path, contents: &[u8]) -> io::Result<PathBuf> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let name = format!(
        "{}.{}.{}.{:06}~",
        path.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id(),
        stamp.as_secs(),
        stamp.subsec_micros()
    );
    let dest = parent_dir(path).join(name);
    write_atomic(&dest, contents, Some(Ownership::of(path)?))?;
    Ok(dest)
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn temp_path(path: &Path) -> PathBuf {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    parent_dir(path).join(format!(".{name}.pgshift-{}-{n}.tmp", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_mode_and_replaces_content() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.conf");
        fs::write(&p, "old").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).unwrap();
        write_atomic(&p, b"new", None).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"new");
        assert_eq!(Ownership::of(&p).unwrap().mode, 0o640);
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file left"
        );
    }

    #[test]
    fn new_file_is_private_by_default() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("new");
        write_atomic(&p, b"x", None).unwrap();
        assert_eq!(Ownership::of(&p).unwrap().mode, 0o600);
    }

    #[test]
    fn failure_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("missing-dir").join("f");
        assert!(write_atomic(&p, b"x", None).is_err());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn replacement_dropped_without_commit_leaves_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        fs::write(&p, "old").unwrap();
        let mut r = Replacement::new(&p, None).unwrap();
        r.writer().write_all(b"new").unwrap();
        drop(r);
        assert_eq!(fs::read(&p).unwrap(), b"old");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        let mut r = Replacement::new(&p, None).unwrap();
        r.writer().write_all(b"new").unwrap();
        r.commit().unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"new");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn backup_copies_with_ansible_naming() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pg_hba.conf");
        fs::write(&p, "rules").unwrap();
        let b = backup(&p).unwrap();
        assert!(b
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("pg_hba.conf."));
        assert!(b.to_string_lossy().ends_with('~'));
        assert_eq!(fs::read(b).unwrap(), b"rules");
    }
}
