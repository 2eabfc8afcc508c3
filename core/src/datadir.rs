//! Facts about a PostgreSQL data directory: its version, whether a postmaster runs on it
//! (from `postmaster.pid`), where it listens, and how to make it reload.

use std::fs;
use std::io;
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

/// What `pg_controldata` says about a data directory (with the server up or down).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlData {
    pub system_identifier: String,
    /// e.g. `in production`, `in archive recovery`, `shut down`, `shut down in recovery`.
    pub state: String,
    /// Where the last checkpoint record starts (after a clean shutdown: the shutdown
    /// checkpoint, the server's last WAL record).
    pub latest_checkpoint: Option<String>,
}

impl ControlData {
    pub fn parse(text: &str) -> Option<ControlData> {
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim_start_matches(':').trim().to_string())
        };
        Some(ControlData {
            system_identifier: field("Database system identifier")?,
            state: field("Database cluster state")?,
            latest_checkpoint: field("Latest checkpoint location"),
        })
    }
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
        crate::pgconf::conf_get(&conf, "data_directory").map(DataDir::new)
    }

    /// Major version from `PG_VERSION` (e.g. 15).
    pub fn major_version(&self) -> Option<u32> {
        fs::read_to_string(self.path.join("PG_VERSION"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Runs `pg_controldata` from `bin_dir` (C locale, so the labels are stable).
    pub fn control_data(&self, bin_dir: &Path) -> Result<ControlData, DataDirError> {
        let mut cmd = std::process::Command::new(bin_dir.join("pg_controldata"));
        cmd.arg("-D").arg(&self.path).env("LC_ALL", "C");
        let out = crate::process::run_as(&mut cmd, None, std::time::Duration::from_secs(30))
            .map_err(|source| DataDirError::Read {
                path: bin_dir.join("pg_controldata"),
                source,
            })?;
        let text = String::from_utf8_lossy(&out.stdout);
        ControlData::parse(&text).ok_or_else(|| DataDirError::Malformed {
            path: self.path.join("global/pg_control"),
            reason: format!(
                "pg_controldata: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        })
    }

    /// `(version, cluster)` when a Debian cluster configuration under `etc` (normally
    /// /etc/postgresql) names this directory as its `data_directory`.
    pub fn debian_cluster(&self, etc: &Path) -> Option<(String, String)> {
        let want = fs::canonicalize(&self.path).unwrap_or_else(|_| self.path.clone());
        for version in fs::read_dir(etc).ok()?.flatten() {
            for cluster in fs::read_dir(version.path()).into_iter().flatten().flatten() {
                let Ok(conf) = fs::read_to_string(cluster.path().join("postgresql.conf")) else {
                    continue;
                };
                let Some(dir) = crate::pgconf::conf_get(&conf, "data_directory") else {
                    continue;
                };
                let dir = PathBuf::from(dir);
                if fs::canonicalize(&dir).unwrap_or(dir) == want {
                    return Some((
                        version.file_name().to_string_lossy().to_string(),
                        cluster.file_name().to_string_lossy().to_string(),
                    ));
                }
            }
        }
        None
    }

    /// True when the directory does not exist or has nothing in it.
    pub fn is_missing_or_empty(&self) -> bool {
        match fs::read_dir(&self.path) {
            Ok(mut entries) => entries.next().is_none(),
            Err(e) => e.kind() == io::ErrorKind::NotFound,
        }
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
    fn finds_data_directory_from_a_debian_config_dir() {
        let dir = tempfile::tempdir().unwrap();
        let conf = "#data_directory = '/nope'\ndata_directory = '/var/lib/postgresql/15/main'\t\t# use data in another directory\n";
        fs::write(dir.path().join("postgresql.conf"), conf).unwrap();
        let dd = DataDir::for_config_file(&dir.path().join("pg_hba.conf")).unwrap();
        assert_eq!(dd.path, PathBuf::from("/var/lib/postgresql/15/main"));
        fs::write(dir.path().join("PG_VERSION"), "15\n").unwrap();
        let dd = DataDir::for_config_file(&dir.path().join("pg_hba.conf")).unwrap();
        assert_eq!(dd.path, dir.path());
        assert_eq!(dd.major_version(), Some(15));
    }

    #[test]
    fn parses_control_data() {
        let text = "pg_control version number:            1300\nDatabase system identifier:           7311234567890123456\nDatabase cluster state:               in archive recovery\n";
        let cd = ControlData::parse(text).unwrap();
        assert_eq!(cd.system_identifier, "7311234567890123456");
        assert_eq!(cd.state, "in archive recovery");
        assert!(ControlData::parse("garbage").is_none());
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
