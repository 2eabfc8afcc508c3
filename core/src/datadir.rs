//! Facts about a PostgreSQL data directory: its version, whether a postmaster runs on it
//! (from `postmaster.pid`), where it listens, and how to make it reload.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum DataDirError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path} is malformed: {reason}")]
    Malformed { path: PathBuf, reason: String },
    #[error("no PostgreSQL server is running on {0}")]
    NotRunning(PathBuf),
    #[error("cannot signal the postmaster (pid {pid}) of {path}: {reason}")]
    Signal {
        pid: i32,
        path: PathBuf,
        reason: String,
    },
}

/// The lines of `postmaster.pid` we use (PostgreSQL 10+ layout).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostmasterPid {
    pub pid: i32,
    pub data_directory: PathBuf,
    pub start_time: i64,
    pub port: u16,
    /// First Unix-socket directory, if the server listens on one.
    pub socket_dir: Option<PathBuf>,
    pub listen_address: Option<String>,
    /// `starting`, `stopping`, `ready` or `standby`.
    pub status: Option<String>,
}

impl PostmasterPid {
    pub fn parse(path: &Path, text: &str) -> Result<PostmasterPid, DataDirError> {
        let bad = |reason: &str| DataDirError::Malformed {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        };
        let lines: Vec<&str> = text.lines().collect();
        if lines.len() < 4 {
            return Err(bad("fewer than 4 lines"));
        }
        let non_empty = |i: usize| lines.get(i).map(|s| s.trim()).filter(|s| !s.is_empty());
        Ok(PostmasterPid {
            pid: lines[0]
                .trim()
                .parse()
                .map_err(|_| bad("line 1 is not a pid"))?,
            data_directory: PathBuf::from(lines[1].trim()),
            start_time: lines[2]
                .trim()
                .parse()
                .map_err(|_| bad("line 3 is not a start time"))?,
            port: lines[3]
                .trim()
                .parse()
                .map_err(|_| bad("line 4 is not a port"))?,
            socket_dir: non_empty(4).map(PathBuf::from),
            listen_address: non_empty(5).map(str::to_string),
            status: non_empty(7).map(str::to_string),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataDir {
    pub path: PathBuf,
}

impl DataDir {
    pub fn new(path: impl Into<PathBuf>) -> DataDir {
        DataDir { path: path.into() }
    }

    /// The data directory a configuration file belongs to: the file's own directory when it
    /// holds `PG_VERSION`, else the `data_directory` that a `postgresql.conf` beside it names
    /// (Debian keeps configuration in /etc/postgresql/<version>/<cluster>/).
    pub fn for_config_file(file: &Path) -> Option<DataDir> {
        let dir = file.parent()?;
        if dir.join("PG_VERSION").is_file() {
            return Some(DataDir::new(dir));
        }
        let conf = fs::read_to_string(dir.join("postgresql.conf")).ok()?;
        conf_value(&conf, "data_directory").map(DataDir::new)
    }

    /// Major version from `PG_VERSION` (e.g. 15).
    pub fn major_version(&self) -> Option<u32> {
        fs::read_to_string(self.path.join("PG_VERSION"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// uid/gid owning the directory: the operating-system user the server runs as.
    pub fn owner(&self) -> io::Result<(u32, u32)> {
        let m = fs::metadata(&self.path)?;
        Ok((m.uid(), m.gid()))
    }

    /// The running postmaster, or `None` when no live server holds this directory. A stale
    /// `postmaster.pid` (crash, or a pid reused by another process) counts as not running.
    pub fn postmaster(&self) -> Result<Option<PostmasterPid>, DataDirError> {
        let path = self.path.join("postmaster.pid");
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(DataDirError::Read { path, source }),
        };
        let pm = PostmasterPid::parse(&path, &text)?;
        Ok(self.is_our_postmaster(pm.pid).then_some(pm))
    }

    /// Alive and working in this directory: the postmaster chdirs into its data directory, so
    /// `/proc/<pid>/cwd` tells a real postmaster from an unrelated process with a reused pid.
    fn is_our_postmaster(&self, pid: i32) -> bool {
        if pid <= 0 || kill(Pid::from_raw(pid), None).is_err() {
            return false;
        }
        match (
            fs::canonicalize(format!("/proc/{pid}/cwd")),
            fs::canonicalize(&self.path),
        ) {
            (Ok(cwd), Ok(dir)) => cwd == dir,
            // Without access to /proc (another user), fall back to the process name.
            _ => fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "postgres"),
        }
    }

    /// SIGHUP to the postmaster: re-read postgresql.conf, pg_hba.conf, pg_ident.conf, certificates.
    pub fn reload(&self) -> Result<PostmasterPid, DataDirError> {
        let pm = self
            .postmaster()?
            .ok_or_else(|| DataDirError::NotRunning(self.path.clone()))?;
        kill(Pid::from_raw(pm.pid), Signal::SIGHUP).map_err(|e| DataDirError::Signal {
            pid: pm.pid,
            path: self.path.clone(),
            reason: e.desc().to_string(),
        })?;
        Ok(pm)
    }
}

/// The value of `key` in postgresql.conf text (last setting wins, as in PostgreSQL).
fn conf_value(conf: &str, key: &str) -> Option<String> {
    let mut found = None;
    for line in conf.lines() {
        let line = line.trim_start();
        let Some(rest) = line.strip_prefix(key) else {
            continue;
        };
        // The name must end here: `port` must not match `ports`. The `=` is optional.
        if !rest.starts_with(|c: char| c == '=' || c.is_whitespace()) {
            continue;
        }
        let rest = rest.trim_start();
        let rest = rest.strip_prefix('=').unwrap_or(rest).trim_start();
        found = Some(if let Some(q) = rest.strip_prefix('\'') {
            let mut v = String::new();
            let mut chars = q.chars().peekable();
            while let Some(c) = chars.next() {
                match c {
                    '\'' if chars.peek() == Some(&'\'') => {
                        chars.next();
                        v.push('\'');
                    }
                    '\'' => break,
                    '\\' => v.extend(chars.next()),
                    c => v.push(c),
                }
            }
            v
        } else {
            rest.split(|c: char| c.is_whitespace() || c == '#')
                .next()
                .unwrap_or("")
                .to_string()
        });
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_postmaster_pid() {
        let text = "4242\n/var/lib/postgresql/15/main\n1700000000\n5433\n/var/run/postgresql\n*\n  5433001         0\nready   \n";
        let pm = PostmasterPid::parse(Path::new("x"), text).unwrap();
        assert_eq!(pm.pid, 4242);
        assert_eq!(pm.port, 5433);
        assert_eq!(
            pm.socket_dir.as_deref(),
            Some(Path::new("/var/run/postgresql"))
        );
        assert_eq!(pm.listen_address.as_deref(), Some("*"));
        assert_eq!(pm.status.as_deref(), Some("ready"));
        assert!(PostmasterPid::parse(Path::new("x"), "12\n").is_err());
        assert!(PostmasterPid::parse(Path::new("x"), "x\n/d\n1\n5432\n").is_err());
    }

    #[test]
    fn reads_data_directory_from_postgresql_conf() {
        let conf = "#data_directory = '/nope'\ndata_directory = '/var/lib/postgresql/15/main'\t\t# use data in another directory\n";
        assert_eq!(
            conf_value(conf, "data_directory").as_deref(),
            Some("/var/lib/postgresql/15/main")
        );
        assert_eq!(
            conf_value("data_directory='/a''b'\n", "data_directory").as_deref(),
            Some("/a'b")
        );
        assert_eq!(
            conf_value("port 5433 # x\n", "port").as_deref(),
            Some("5433")
        );
        assert_eq!(conf_value("ports = 1\n", "port"), None);
    }

    #[test]
    fn stale_pid_file_means_not_running() {
        let dir = tempfile::tempdir().unwrap();
        // pid 1 exists but does not work in this directory.
        fs::write(
            dir.path().join("postmaster.pid"),
            "1\n/x\n1\n5432\n\n\n\nready\n",
        )
        .unwrap();
        assert_eq!(DataDir::new(dir.path()).postmaster().unwrap(), None);
        assert!(matches!(
            DataDir::new(dir.path()).reload(),
            Err(DataDirError::NotRunning(_))
        ));
    }
}
