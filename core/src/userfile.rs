//! Files a user names in a task (pg_hba.conf, a passfile, a certificate, pgbackrest.conf), checked
//! before anything reads or writes them.
//!
//! Why this exists: `fs::read` on a FIFO blocks until a writer appears (a task hangs for good),
//! on a character device it may have side effects, and `rename` over a symbolic link replaces the
//! link with a regular file while its target keeps the old content. So a user's path is resolved
//! here first — without opening anything — and only a regular file is ever opened (with
//! `O_NONBLOCK`, and `fstat` on the descriptor proves it is still the regular file that was
//! checked). A symbolic link is followed deliberately: the target is what gets edited, and only
//! when root or the target's owner made the link (what Linux's `protected_symlinks` guards
//! against: someone who may write the directory pointing a root-run task at another file).
//! Reads are bounded, and an edit takes the file's advisory lock (`flock`) with a deadline and
//! checks before the final rename that nobody changed the file since it was read.

use std::fs::{self, File, Metadata, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg, OFlag};
use thiserror::Error;

/// How many symbolic links are followed before giving up (Linux's own limit).
const MAX_LINKS: usize = 40;

#[derive(Debug, Error)]
pub enum FileError {
    #[error("{option} {path} is {kind}, not a regular file; refusing to open it")]
    NotRegular {
        option: &'static str,
        path: PathBuf,
        kind: &'static str,
    },
    #[error("{option} must be an absolute path, got {path:?}")]
    NotAbsolute { option: &'static str, path: PathBuf },
    #[error("{option} {path} does not exist")]
    Missing { option: &'static str, path: PathBuf },
    #[error("{option} {path}: its directory {dir} does not exist or is not a directory")]
    NoDirectory {
        option: &'static str,
        path: PathBuf,
        dir: PathBuf,
    },
    #[error("{option} {path} is a symbolic link to {target}, which does not exist; give the target's path if that is the file to create")]
    Dangling {
        option: &'static str,
        path: PathBuf,
        target: PathBuf,
    },
    #[error("{option} {path} is a symbolic link owned by uid {link_uid} pointing to {target}, owned by uid {target_uid}: a link is only followed when root or the target's owner made it")]
    UnsafeLink {
        option: &'static str,
        path: PathBuf,
        target: PathBuf,
        link_uid: u32,
        target_uid: u32,
    },
    #[error("{option} {path}: more than {MAX_LINKS} symbolic links (a loop?)")]
    LinkLoop { option: &'static str, path: PathBuf },
    #[error("{option} {path} is {size} bytes; this module reads at most {limit} bytes from it")]
    TooLarge {
        option: &'static str,
        path: PathBuf,
        size: u64,
        limit: u64,
    },
    #[error("{option} {path} is locked by another process (flock) and was not released within {secs} s; try again when that process is done")]
    Locked {
        option: &'static str,
        path: PathBuf,
        secs: u64,
    },
    #[error("{option} {path} changed while this task was editing it (another process wrote to it); nothing was written, run the task again")]
    Changed { option: &'static str, path: PathBuf },
    #[error("cannot {action} {option} {path}: {source}")]
    Io {
        option: &'static str,
        path: PathBuf,
        action: &'static str,
        source: io::Error,
    },
}

/// A path from a task's options, resolved: `real` is the file that is read and replaced.
#[derive(Debug, Clone)]
pub struct UserFile {
    /// The option that named it, for messages (`path`, `passfile`, `cert`, ...).
    pub option: &'static str,
    /// As the user gave it.
    pub named: PathBuf,
    /// The file itself: `named`, or the target of the symbolic link(s) it names.
    pub real: PathBuf,
    /// Whether `named` is a symbolic link.
    pub via_link: bool,
    /// Metadata of `real` when it exists (a regular file).
    pub meta: Option<Metadata>,
}

/// What a non-regular file is, for messages.
fn kind_of(m: &Metadata) -> &'static str {
    let t = m.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO (named pipe)"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

impl UserFile {
    /// Resolves `path` without opening it. An existing path must be a regular file (after
    /// following links as described in the module docs); a missing one needs an existing
    /// parent directory (so it can be created). Nothing is read, nothing blocks.
    pub fn resolve(option: &'static str, path: &Path) -> Result<UserFile, FileError> {
        let io_err = |action, source| FileError::Io {
            option,
            path: path.to_path_buf(),
            action,
            source,
        };
        if !path.is_absolute() {
            return Err(FileError::NotAbsolute {
                option,
                path: path.to_path_buf(),
            });
        }
        let mut real = path.to_path_buf();
        let mut links: Vec<u32> = Vec::new();
        loop {
            match fs::symlink_metadata(&real) {
                Ok(m) if m.file_type().is_symlink() => {
                    if links.len() >= MAX_LINKS {
                        return Err(FileError::LinkLoop {
                            option,
                            path: path.to_path_buf(),
                        });
                    }
                    links.push(m.uid());
                    let target = fs::read_link(&real).map_err(|e| io_err("read the link", e))?;
                    real = match real.parent() {
                        Some(dir) if target.is_relative() => dir.join(target),
                        _ => target,
                    };
                }
                Ok(m) => {
                    if !m.file_type().is_file() {
                        return Err(FileError::NotRegular {
                            option,
                            path: path.to_path_buf(),
                            kind: kind_of(&m),
                        });
                    }
                    if let Some(&link_uid) = links.iter().find(|&&u| u != 0 && u != m.uid()) {
                        return Err(FileError::UnsafeLink {
                            option,
                            path: path.to_path_buf(),
                            target: real,
                            link_uid,
                            target_uid: m.uid(),
                        });
                    }
                    return Ok(UserFile {
                        option,
                        named: path.to_path_buf(),
                        real,
                        via_link: !links.is_empty(),
                        meta: Some(m),
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    if !links.is_empty() {
                        return Err(FileError::Dangling {
                            option,
                            path: path.to_path_buf(),
                            target: real,
                        });
                    }
                    let dir = parent(&real);
                    if !fs::metadata(&dir).is_ok_and(|m| m.is_dir()) {
                        return Err(FileError::NoDirectory {
                            option,
                            path: path.to_path_buf(),
                            dir,
                        });
                    }
                    return Ok(UserFile {
                        option,
                        named: path.to_path_buf(),
                        real,
                        via_link: false,
                        meta: None,
                    });
                }
                Err(e) => return Err(io_err("inspect", e)),
            }
        }
    }

    /// [`UserFile::resolve`] for a file in a directory that may not exist yet (this run
    /// creates it): resolved now when the directory exists, otherwise taken as named (every
    /// read still opens it non-blocking and checks it is a regular file).
    pub fn in_new_dir(option: &'static str, path: &Path) -> Result<UserFile, FileError> {
        if path.parent().is_some_and(|d| d.is_dir()) {
            return UserFile::resolve(option, path);
        }
        Ok(UserFile {
            option,
            named: path.to_path_buf(),
            real: path.to_path_buf(),
            via_link: false,
            meta: None,
        })
    }

    /// [`UserFile::resolve`] for a file that must exist.
    pub fn existing(option: &'static str, path: &Path) -> Result<UserFile, FileError> {
        let f = UserFile::resolve(option, path)?;
        if f.meta.is_none() {
            return Err(FileError::Missing {
                option,
                path: path.to_path_buf(),
            });
        }
        Ok(f)
    }

    pub fn exists(&self) -> bool {
        self.meta.is_some()
    }

    fn err(&self, action: &'static str, source: io::Error) -> FileError {
        FileError::Io {
            option: self.option,
            path: self.named.clone(),
            action,
            source,
        }
    }

    /// Opens the resolved regular file for reading: non-blocking and without following a
    /// link that appeared since [`UserFile::resolve`], then proves with `fstat` that the
    /// descriptor is a regular file. `None` when it does not exist.
    fn open(&self, write: bool) -> Result<Option<File>, FileError> {
        let flags = OFlag::O_NONBLOCK | OFlag::O_NOFOLLOW | OFlag::O_NOCTTY;
        let f = match OpenOptions::new()
            .read(true)
            .write(write)
            .custom_flags(flags.bits())
            .open(&self.real)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.err("open", e)),
        };
        let m = f.metadata().map_err(|e| self.err("inspect", e))?;
        if !m.file_type().is_file() {
            return Err(FileError::NotRegular {
                option: self.option,
                path: self.named.clone(),
                kind: kind_of(&m),
            });
        }
        Ok(Some(f))
    }

    /// The whole file, at most `limit` bytes (more is refused, not truncated); `None` when it
    /// does not exist.
    pub fn read(&self, limit: u64) -> Result<Option<Vec<u8>>, FileError> {
        match self.open(false)? {
            Some(mut f) => self.read_from(&mut f, limit).map(Some),
            None => Ok(None),
        }
    }

    /// [`UserFile::read`] as UTF-8 text.
    pub fn read_text(&self, limit: u64) -> Result<Option<String>, FileError> {
        match self.read(limit)? {
            Some(bytes) => String::from_utf8(bytes).map(Some).map_err(|_| {
                self.err(
                    "read",
                    io::Error::new(io::ErrorKind::InvalidData, "the file is not UTF-8 text"),
                )
            }),
            None => Ok(None),
        }
    }

    fn read_from(&self, f: &mut File, limit: u64) -> Result<Vec<u8>, FileError> {
        let size = f.metadata().map_err(|e| self.err("inspect", e))?.len();
        let too_large = |size| FileError::TooLarge {
            option: self.option,
            path: self.named.clone(),
            size,
            limit,
        };
        if size > limit {
            return Err(too_large(size));
        }
        // Exactly the size the file has: no doubling growth on a large file. Reading one byte
        // past `limit` tells a file that grew meanwhile from one that fits.
        let mut buf = Vec::with_capacity(size as usize);
        f.take(limit + 1)
            .read_to_end(&mut buf)
            .map_err(|e| self.err("read", e))?;
        if buf.len() as u64 > limit {
            return Err(too_large(buf.len() as u64));
        }
        Ok(buf)
    }

    /// Takes the file's advisory lock (waiting at most `wait` for another holder) and reads
    /// it. The lock is held until the returned guard is dropped; a missing file gets no lock.
    pub fn read_locked(
        &self,
        limit: u64,
        wait: Duration,
    ) -> Result<(Option<FileLock>, Option<Vec<u8>>), FileError> {
        let Some(f) = self.open(false)? else {
            return Ok((None, None));
        };
        let mut lock = self.lock(f, wait)?;
        let bytes = self.read_from(&mut lock.0, limit)?;
        Ok((Some(lock), Some(bytes)))
    }

    /// Locks an already opened file (see [`UserFile::read_locked`]).
    fn lock(&self, mut f: File, wait: Duration) -> Result<FileLock, FileError> {
        let deadline = Instant::now() + wait;
        loop {
            match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
                Ok(l) => return Ok(FileLock(l)),
                Err((back, nix::errno::Errno::EWOULDBLOCK)) => {
                    if Instant::now() >= deadline {
                        return Err(FileError::Locked {
                            option: self.option,
                            path: self.named.clone(),
                            secs: wait.as_secs(),
                        });
                    }
                    f = back;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err((_, e)) => return Err(self.err("lock", io::Error::from(e))),
            }
        }
    }

    /// Locks the file now at `real` (e.g. the one this task just wrote) so that cooperating
    /// editors wait while the server is verified or the old file restored.
    pub fn lock_current(&self, wait: Duration) -> Result<Option<FileLock>, FileError> {
        match self.open(false)? {
            Some(f) => self.lock(f, wait).map(Some),
            None => Ok(None),
        }
    }

    /// Proves the file still holds `expected` (`None`: still does not exist), streaming it
    /// in small pieces. Called right before the new file is renamed over it, so writes by
    /// processes that ignore the advisory lock are not lost silently.
    pub fn unchanged_since(&self, expected: Option<&[u8]>) -> Result<(), FileError> {
        let changed = || FileError::Changed {
            option: self.option,
            path: self.named.clone(),
        };
        let f = self.open(false)?;
        let (mut f, expected) = match (f, expected) {
            (None, None) => return Ok(()),
            (Some(f), Some(e)) => (f, e),
            _ => return Err(changed()),
        };
        if f.metadata().map_err(|e| self.err("inspect", e))?.len() != expected.len() as u64 {
            return Err(changed());
        }
        let mut buf = vec![0u8; 64 * 1024];
        let mut at = 0;
        loop {
            let n = f.read(&mut buf).map_err(|e| self.err("read", e))?;
            if n == 0 {
                break;
            }
            if at + n > expected.len() || buf[..n] != expected[at..at + n] {
                return Err(changed());
            }
            at += n;
        }
        if at == expected.len() {
            Ok(())
        } else {
            Err(changed())
        }
    }

    /// SHA-256 of the file's current content, streamed; `None` when it does not exist.
    pub fn sha256(&self) -> Result<Option<[u8; 32]>, FileError> {
        use sha2::{Digest, Sha256};
        let Some(mut f) = self.open(false)? else {
            return Ok(None);
        };
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = f.read(&mut buf).map_err(|e| self.err("read", e))?;
            if n == 0 {
                return Ok(Some(h.finalize().into()));
            }
            h.update(&buf[..n]);
        }
    }

    /// Whether the file can be read by `uid` with groups `gids` (e.g. "can the server read it").
    pub fn readable_by(&self, uid: u32, gids: &[u32]) -> bool {
        let Some(m) = &self.meta else {
            return false;
        };
        let mode = m.mode();
        uid == 0
            || (m.uid() == uid && mode & 0o400 != 0)
            || (gids.contains(&m.gid()) && mode & 0o040 != 0)
            || mode & 0o004 != 0
    }
}

/// An advisory lock on a file, released on drop.
#[derive(Debug)]
pub struct FileLock(Flock<File>);

fn parent(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn fifo(path: &Path) {
        nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    }

    #[test]
    fn refuses_what_is_not_a_regular_file_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pipe");
        fifo(&p);
        let err = UserFile::resolve("path", &p).unwrap_err();
        assert!(err.to_string().contains("a FIFO"), "{err}");
        assert!(err.to_string().starts_with("path "), "{err}");
        let err = UserFile::resolve("cert", dir.path()).unwrap_err();
        assert!(err.to_string().contains("a directory"), "{err}");
        let err = UserFile::resolve("cert", Path::new("/dev/null")).unwrap_err();
        assert!(err.to_string().contains("character device"), "{err}");
        // A FIFO that appears after resolve is caught when opened (O_NONBLOCK: no hang).
        let q = dir.path().join("later");
        fs::write(&q, "x").unwrap();
        let f = UserFile::resolve("path", &q).unwrap();
        fs::remove_file(&q).unwrap();
        fifo(&q);
        assert!(matches!(f.read(10), Err(FileError::NotRegular { .. })));
    }

    #[test]
    fn follows_links_to_the_target_and_refuses_dangling_ones() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("real.conf");
        fs::write(&target, "x").unwrap();
        let link = dir.path().join("link.conf");
        symlink("real.conf", &link).unwrap();
        let f = UserFile::resolve("path", &link).unwrap();
        assert!(f.via_link);
        assert_eq!(f.real, target);
        assert_eq!(f.read(10).unwrap().unwrap(), b"x");
        let dangling = dir.path().join("dangling");
        symlink("nowhere", &dangling).unwrap();
        let err = UserFile::resolve("path", &dangling).unwrap_err();
        assert!(matches!(err, FileError::Dangling { .. }), "{err}");
        let looped = dir.path().join("loop");
        symlink("loop", &looped).unwrap();
        assert!(matches!(
            UserFile::resolve("path", &looped),
            Err(FileError::LinkLoop { .. })
        ));
    }

    #[test]
    fn a_link_made_by_someone_else_is_not_followed() {
        if !nix::unistd::Uid::effective().is_root() {
            return; // needs two users
        }
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("root-only");
        fs::write(&target, "secret").unwrap();
        let link = dir.path().join("pg_hba.conf");
        symlink(&target, &link).unwrap();
        // The link belongs to another user than the target (root): refused, target untouched.
        nix::unistd::fchownat(
            None,
            &link,
            Some(nix::unistd::Uid::from_raw(65534)),
            None,
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .unwrap();
        let err = UserFile::resolve("path", &link).unwrap_err();
        assert!(matches!(err, FileError::UnsafeLink { .. }), "{err}");
        assert!(err.to_string().contains("uid 65534"), "{err}");
    }

    #[test]
    fn missing_file_needs_its_directory() {
        let dir = tempfile::tempdir().unwrap();
        let f = UserFile::resolve("passfile", &dir.path().join("new")).unwrap();
        assert!(!f.exists());
        assert_eq!(f.read(10).unwrap(), None);
        let err = UserFile::resolve("passfile", &dir.path().join("no/new")).unwrap_err();
        assert!(matches!(err, FileError::NoDirectory { .. }), "{err}");
        assert!(matches!(
            UserFile::existing("cert", &dir.path().join("new")),
            Err(FileError::Missing { .. })
        ));
        for relative in ["", "pg_hba.conf", "../x"] {
            let err = UserFile::resolve("path", Path::new(relative)).unwrap_err();
            assert!(
                err.to_string().starts_with("path must be an absolute path"),
                "{err}"
            );
        }
    }

    #[test]
    fn reads_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big");
        fs::write(&p, vec![b'a'; 100]).unwrap();
        let f = UserFile::resolve("cert", &p).unwrap();
        assert_eq!(f.read(100).unwrap().unwrap().len(), 100);
        let err = f.read(99).unwrap_err();
        assert!(err.to_string().contains("at most 99 bytes"), "{err}");
    }

    #[test]
    fn lock_waits_then_gives_up_and_changes_are_noticed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        fs::write(&p, "one").unwrap();
        let f = UserFile::resolve("path", &p).unwrap();
        let (held, bytes) = f.read_locked(100, Duration::from_secs(1)).unwrap();
        assert_eq!(bytes.as_deref(), Some(&b"one"[..]));
        let started = Instant::now();
        let err = f.read_locked(100, Duration::from_millis(200)).unwrap_err();
        assert!(matches!(err, FileError::Locked { .. }), "{err}");
        assert!(started.elapsed() >= Duration::from_millis(200));
        drop(held);
        assert!(f.read_locked(100, Duration::from_millis(200)).is_ok());
        f.unchanged_since(Some(b"one")).unwrap();
        fs::write(&p, "one\nappended").unwrap();
        assert!(matches!(
            f.unchanged_since(Some(b"one")),
            Err(FileError::Changed { .. })
        ));
        assert!(f.unchanged_since(None).is_err());
    }
}
