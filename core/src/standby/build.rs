//! The long steps: a base backup into an empty directory, a restore from the pgBackRest
//! repository, a data directory kept aside, and pg_rewind. Each child process runs as the cluster's owner under a deadline and can be
//! called off (`cancel`), so neither a module nor the agent waits on one forever.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use super::{StandbyError, Upstream};
use crate::pgconf::conninfo;
use crate::process::{output_text, run_cancellable, Owner, TempPassfile};

/// pg_basebackup from `upstream` into `target` (empty or missing: see [`prepare_target`]),
/// WAL streamed alongside.
pub struct BaseBackup<'a> {
    pub bin_dir: &'a Path,
    pub target: &'a Path,
    pub upstream: &'a Upstream,
    /// A password for this run only, handed over in a 0600 temporary passfile; None: the
    /// upstream's passfile.
    pub password: Option<&'a str>,
    /// Keep WAL on the primary from the backup's start through this slot (it must exist).
    pub slot: Option<&'a str>,
    /// pg_basebackup's --max-rate (e.g. `100M`): a rebuild need not saturate the primary.
    pub max_rate: Option<&'a str>,
    pub owner: &'a Owner,
    pub deadline: Duration,
    pub cancel: Option<&'a AtomicBool>,
}

impl BaseBackup<'_> {
    pub fn run(&self) -> Result<(), StandbyError> {
        let pass = match self.password {
            Some(pw) => {
                Some(TempPassfile::new(pw, Some(self.owner)).map_err(StandbyError::Passfile)?)
            }
            None => None,
        };
        let params = self.upstream.tool_params(pass.is_none());
        let pairs: Vec<(&str, &str)> = params
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let mut cmd = Command::new(self.bin_dir.join("pg_basebackup"));
        cmd.arg("-D").arg(self.target).args([
            "-X",
            "stream",
            "-c",
            "fast",
            "-w",
            "-d",
            &conninfo(&pairs),
        ]);
        if let Some(slot) = self.slot {
            cmd.arg(format!("--slot={slot}"));
        }
        if let Some(rate) = self.max_rate {
            cmd.arg(format!("--max-rate={rate}"));
        }
        match (&pass, &self.upstream.passfile) {
            (Some(pf), _) => {
                cmd.env("PGPASSFILE", pf.path());
            }
            (None, Some(f)) => {
                cmd.env("PGPASSFILE", f);
            }
            (None, None) => {}
        }
        let out = run_cancellable(&mut cmd, Some(self.owner), self.deadline, self.cancel).map_err(
            |source| StandbyError::Run {
                program: "pg_basebackup",
                source,
            },
        )?;
        if !out.status.success() {
            return Err(StandbyError::BaseBackup {
                from: self.upstream.describe(),
                output: output_text(&out),
            });
        }
        Ok(())
    }
}

/// `pgbackrest restore --type=standby` of the stanza's latest backup into `target`: the
/// repository carries the copy instead of the primary. pgBackRest writes standby.signal and
/// a restore_command (archive-get), so the standby replays the archive up to where it can
/// stream; the caller then writes primary_conninfo and the slot as after a base backup.
pub struct Restore<'a> {
    /// The pgbackrest program.
    pub program: &'a Path,
    /// pgBackRest's configuration, when not its default file.
    pub config: Option<&'a Path>,
    pub stanza: &'a str,
    pub target: &'a Path,
    /// Restore over an existing directory, copying only files that differ (`--delta`).
    pub delta: bool,
    pub owner: &'a Owner,
    pub deadline: Duration,
    pub cancel: Option<&'a AtomicBool>,
}

impl Restore<'_> {
    pub fn run(&self) -> Result<(), StandbyError> {
        let mut cmd = Command::new(self.program);
        if let Some(c) = self.config {
            cmd.arg(format!("--config={}", c.display()));
        }
        cmd.arg(format!("--stanza={}", self.stanza))
            .arg(format!("--pg1-path={}", self.target.display()))
            .args(["--type=standby", "--log-level-console=warn"]);
        if self.delta {
            cmd.arg("--delta");
        }
        cmd.arg("restore");
        let out = run_cancellable(&mut cmd, Some(self.owner), self.deadline, self.cancel).map_err(
            |source| StandbyError::Run {
                program: "pgbackrest",
                source,
            },
        )?;
        if !out.status.success() {
            return Err(StandbyError::Restore {
                stanza: self.stanza.to_string(),
                output: output_text(&out),
            });
        }
        Ok(())
    }
}

/// How [`prepare_target`] found the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NewDir {
    /// It did not exist: `top` is the outermost directory made for it (what an undo removes).
    Created { top: PathBuf },
    /// It existed (empty): an undo empties it again.
    Existing,
}

/// Makes `dir` ready for a base backup: created when missing (the new directories inside the
/// owner's home given to the owner, e.g. /var/lib/postgresql/15 and .../main), owned by the
/// owner with mode 0700 as PostgreSQL requires.
pub fn prepare_target(dir: &Path, owner: &Owner) -> Result<NewDir, StandbyError> {
    let fail = |source| StandbyError::Directory {
        path: dir.to_path_buf(),
        source,
    };
    let how = if dir.exists() {
        NewDir::Existing
    } else {
        let mut top = dir.to_path_buf();
        while top.parent().is_some_and(|d| !d.exists()) {
            top.pop();
        }
        fs::create_dir_all(dir).map_err(fail)?;
        let mut d = dir.to_path_buf();
        while d.starts_with(&owner.home) || d == dir {
            let _ = nix::unistd::chown(&d, Some(owner.uid.into()), Some(owner.gid.into()));
            if !d.pop() || d == owner.home || !d.starts_with(&top) {
                break;
            }
        }
        NewDir::Created { top }
    };
    nix::unistd::chown(dir, Some(owner.uid.into()), Some(owner.gid.into()))
        .map_err(|e| fail(e.into()))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(fail)?;
    Ok(how)
}

/// Moves a data directory out of the way, never deleting it: `<dir>.pgshift-old-<unix
/// seconds>` (`-2`, `-3`, ... when that exists). The one naming scheme for kept directories.
pub fn move_aside(dir: &Path) -> Result<PathBuf, StandbyError> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let name = |n: u32| {
        let mut s = dir.as_os_str().to_owned();
        s.push(format!(".pgshift-old-{stamp}"));
        if n > 1 {
            s.push(format!("-{n}"));
        }
        PathBuf::from(s)
    };
    let aside = (1..)
        .map(name)
        .find(|p| fs::symlink_metadata(p).is_err())
        .expect("an unused name");
    fs::rename(dir, &aside).map_err(|source| StandbyError::MoveAside {
        dir: dir.to_path_buf(),
        aside: aside.clone(),
        source,
    })?;
    Ok(aside)
}

/// pg_rewind of the stopped `target` from `upstream`'s server, as `user`.
pub struct Rewind<'a> {
    pub bin_dir: &'a Path,
    pub target: &'a Path,
    pub upstream: &'a Upstream,
    pub user: &'a str,
    /// postgresql.conf when it lives outside the data directory (Debian): pg_rewind's
    /// crash-recovery step runs a single-user server that needs it.
    pub config_file: Option<&'a Path>,
    pub owner: &'a Owner,
    pub deadline: Duration,
    pub cancel: Option<&'a AtomicBool>,
}

impl Rewind<'_> {
    pub fn run(&self) -> Result<(), StandbyError> {
        let mut cmd = Command::new(self.bin_dir.join("pg_rewind"));
        cmd.arg("--target-pgdata").arg(self.target).arg(format!(
            "--source-server={}",
            self.upstream.rewind_source(self.user)
        ));
        if let Some(cf) = self.config_file {
            cmd.arg(format!("--config-file={}", cf.display()));
        }
        let out = run_cancellable(&mut cmd, Some(self.owner), self.deadline, self.cancel).map_err(
            |source| StandbyError::Run {
                program: "pg_rewind",
                source,
            },
        )?;
        if out.status.success() {
            return Ok(());
        }
        let output = output_text(&out);
        let from = self.upstream.describe();
        // pg_rewind says nothing but text; libpq's connection failures start like this. A
        // rewind that never reached the source changed nothing and is worth another try.
        if output.contains("connection to server") || output.contains("could not connect") {
            Err(StandbyError::RewindUnreachable { from, output })
        } else {
            Err(StandbyError::Rewind { from, output })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> Owner {
        let uid = nix::unistd::Uid::effective();
        let u = nix::unistd::User::from_uid(uid).unwrap().unwrap();
        Owner {
            name: u.name,
            uid: uid.as_raw(),
            gid: u.gid.as_raw(),
            home: PathBuf::from("/nonexistent-home"),
        }
    }

    #[test]
    fn kept_directories_get_one_name_and_never_overwrite() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("main");
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join("PG_VERSION"), "15\n").unwrap();
        let first = move_aside(&dir).unwrap();
        assert!(!dir.exists());
        let name = first.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with("main.pgshift-old-"), "{name}");
        assert_eq!(
            fs::read_to_string(first.join("PG_VERSION")).unwrap(),
            "15\n"
        );
        // Again within the same second: a second name, the first kept.
        fs::create_dir(&dir).unwrap();
        let second = move_aside(&dir).unwrap();
        assert_ne!(first, second);
        assert!(first.exists() && second.exists());
    }

    #[test]
    fn a_target_is_made_private_and_its_top_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("15/main");
        let how = prepare_target(&dir, &me()).unwrap();
        assert_eq!(
            how,
            NewDir::Created {
                top: tmp.path().join("15")
            }
        );
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        assert_eq!(prepare_target(&dir, &me()).unwrap(), NewDir::Existing);
    }

    #[test]
    fn a_failed_base_backup_names_its_source_and_a_cancelled_one_says_so() {
        let tmp = tempfile::tempdir().unwrap();
        // A stand-in pg_basebackup: fails, or sleeps (to be cancelled).
        let bin = tmp.path().join("bin");
        fs::create_dir(&bin).unwrap();
        let tool = bin.join("pg_basebackup");
        let write_tool = |body: &str| {
            fs::write(&tool, format!("#!/bin/sh\n{body}\n")).unwrap();
            fs::set_permissions(&tool, fs::Permissions::from_mode(0o755)).unwrap();
        };
        let upstream = Upstream {
            host: "db1".into(),
            port: 5432,
            user: "replicator".into(),
            passfile: None,
            tls: Default::default(),
            application_name: "db2".into(),
        };
        let owner = me();
        let target = tmp.path().join("data");
        let cancel = AtomicBool::new(false);
        let b = BaseBackup {
            bin_dir: &bin,
            target: &target,
            upstream: &upstream,
            password: Some("secret"),
            slot: Some("db2"),
            max_rate: Some("10M"),
            owner: &owner,
            deadline: Duration::from_secs(20),
            cancel: Some(&cancel),
        };
        // The arguments it got, and that the password is not among them.
        write_tool(&format!(
            "echo \"$@\" > {}/args; cat \"$PGPASSFILE\" >> {}/args; echo 'FATAL: no pg_hba.conf entry' >&2; exit 1",
            tmp.path().display(),
            tmp.path().display()
        ));
        let e = b.run().unwrap_err();
        assert!(matches!(e, StandbyError::BaseBackup { .. }), "{e}");
        assert!(
            e.to_string()
                .contains("from db1:5432 failed: FATAL: no pg_hba.conf entry"),
            "{e}"
        );
        let args = fs::read_to_string(tmp.path().join("args")).unwrap();
        let (argv, passfile) = args.split_once('\n').unwrap();
        assert!(
            argv.contains("--slot=db2") && argv.contains("--max-rate=10M"),
            "{argv}"
        );
        assert!(
            !argv.contains("secret") && !argv.contains("passfile="),
            "{argv}"
        );
        assert_eq!(passfile.trim(), "*:*:*:*:secret");
        write_tool("sleep 30");
        cancel.store(true, std::sync::atomic::Ordering::Relaxed);
        let e = b.run().unwrap_err();
        assert!(e.is_cancelled(), "{e}");
    }
}
