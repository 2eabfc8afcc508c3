//! Running PostgreSQL's own programs (pg_basebackup, psql, pg_ctl) as the cluster's owner,
//! with secrets handed over in a private temporary passfile, never in argv or the environment.

use std::ffi::CString;
use std::fs;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::unistd::{chown, getgrouplist, setgid, setgroups, setuid, Gid, Uid, User};

/// The operating-system user a cluster runs as.
#[derive(Debug, Clone)]
pub struct Owner {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

impl Owner {
    pub fn lookup(name: &str) -> Result<Owner, String> {
        match User::from_name(name) {
            Ok(Some(u)) => Ok(Owner {
                name: u.name,
                uid: u.uid.as_raw(),
                gid: u.gid.as_raw(),
                home: u.dir,
            }),
            Ok(None) => Err(format!(
                "no operating-system user named {name:?} on this host"
            )),
            Err(e) => Err(format!("cannot look up user {name:?}: {e}")),
        }
    }
}

/// Makes this whole process `owner` for good: supplementary groups, gid, uid (real, effective
/// and saved), as a daemon started by root does once it needs nothing of root any more. Call
/// it before any thread starts. Checked: root cannot be regained afterwards.
pub fn become_for_good(owner: &Owner) -> Result<(), String> {
    let (uid, gid) = (Uid::from_raw(owner.uid), Gid::from_raw(owner.gid));
    let groups = CString::new(owner.name.clone())
        .ok()
        .and_then(|n| getgrouplist(&n, gid).ok())
        .unwrap_or_else(|| vec![gid]);
    let who = &owner.name;
    setgroups(&groups).map_err(|e| format!("cannot take the groups of {who:?}: {e}"))?;
    setgid(gid).map_err(|e| format!("cannot take the group of {who:?}: {e}"))?;
    setuid(uid).map_err(|e| format!("cannot become {who:?}: {e}"))?;
    if owner.uid != 0 && setuid(Uid::from_raw(0)).is_ok() {
        return Err(format!(
            "still able to become root after switching to {who:?}"
        ));
    }
    Ok(())
}

/// Runs `cmd` (stdin closed), as `owner` when we are root, and returns its output; kills it
/// once `deadline` has passed (an error of kind `TimedOut` that names the deadline).
///
/// Its stdout and stderr go to unnamed temporary files, never pipes: a daemon the command
/// leaves behind (the postmaster `pg_ctl start` forks) may inherit them, and a pipe would
/// then never reach end-of-file and block the caller for good.
pub fn run_as(cmd: &mut Command, owner: Option<&Owner>, deadline: Duration) -> io::Result<Output> {
    run_cancellable(cmd, owner, deadline, None)
}

/// [`run_as`] that also ends the command early when `cancel` is set (checked while it runs):
/// an error of kind `Interrupted`. For long commands on a worker (a base backup, pg_rewind)
/// that an operator may call off.
pub fn run_cancellable(
    cmd: &mut Command,
    owner: Option<&Owner>,
    deadline: Duration,
    cancel: Option<&AtomicBool>,
) -> io::Result<Output> {
    prepare(cmd, owner);
    let (mut out, mut err) = (tempfile::tempfile()?, tempfile::tempfile()?);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(err.try_clone()?)
        .spawn()?;
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        let program = || {
            Path::new(cmd.get_program())
                .file_name()
                .map_or_else(|| cmd.get_program().to_owned(), |f| f.to_owned())
                .to_string_lossy()
                .into_owned()
        };
        if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::new(
                io::ErrorKind::Interrupted,
                format!("{} was cancelled and killed", program()),
            ));
        }
        if started.elapsed() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "{} did not finish within {} s and was killed",
                    program(),
                    deadline.as_secs_f32()
                ),
            ));
        }
        // Short at first (most commands end in milliseconds), then gentler.
        let waited = started.elapsed();
        std::thread::sleep(if waited < Duration::from_millis(100) {
            Duration::from_millis(2)
        } else {
            Duration::from_millis(20)
        });
    };
    Ok(Output {
        status,
        stdout: read_all(&mut out)?,
        stderr: read_all(&mut err)?,
    })
}

fn read_all(f: &mut fs::File) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    f.seek(SeekFrom::Start(0))?;
    f.read_to_end(&mut buf)?;
    Ok(buf)
}

/// The child's identity (uid, groups, home) and a libpq environment cleared of the caller's
/// connection settings.
fn prepare(cmd: &mut Command, owner: Option<&Owner>) {
    if let Some(o) = owner.filter(|_| Uid::effective().is_root()) {
        // Like login: the owner's supplementary groups too (Debian's postgres reads the
        // snakeoil key through ssl-cert). std's uid()/gid() would drop them, so switch in
        // pre_exec; the list is computed before fork, the child only makes syscalls.
        let (uid, gid) = (Uid::from_raw(o.uid), Gid::from_raw(o.gid));
        let groups = CString::new(o.name.clone())
            .ok()
            .and_then(|n| getgrouplist(&n, gid).ok())
            .unwrap_or_else(|| vec![gid]);
        // SAFETY: setgroups/setgid/setuid are async-signal-safe system calls.
        unsafe {
            cmd.pre_exec(move || {
                setgroups(&groups).map_err(io::Error::from)?;
                setgid(gid).map_err(io::Error::from)?;
                setuid(uid).map_err(io::Error::from)?;
                Ok(())
            });
        }
        cmd.env("HOME", &o.home)
            .env("USER", &o.name)
            .env("LOGNAME", &o.name);
        // A root cwd the owner cannot enter makes some tools fail; their home always works.
        if o.home.is_dir() {
            cmd.current_dir(&o.home);
        } else {
            cmd.current_dir("/");
        }
    }
    // Keep libpq from picking up the caller's connection settings or passwords (but keep
    // what the caller set on purpose, such as PGPASSFILE).
    let set: Vec<std::ffi::OsString> = cmd
        .get_envs()
        .filter(|(_, v)| v.is_some())
        .map(|(k, _)| k.to_owned())
        .collect();
    for var in [
        "PGPASSWORD",
        "PGPASSFILE",
        "PGHOST",
        "PGPORT",
        "PGUSER",
        "PGDATABASE",
        "PGSERVICE",
        "PGSSLMODE",
    ] {
        if !set.iter().any(|k| k == var) {
            cmd.env_remove(var);
        }
    }
}

/// Combined, trimmed stderr/stdout of a failed command, for error messages.
pub fn output_text(out: &Output) -> String {
    let mut s = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if s.is_empty() {
        s = String::from_utf8_lossy(&out.stdout).trim().to_string();
    }
    s
}

/// A `.pgpass` with one wildcard entry, readable only by the owner, removed on drop. Set
/// `PGPASSFILE` to [`TempPassfile::path`] so libpq programs find the password.
pub struct TempPassfile {
    dir: PathBuf,
    path: PathBuf,
}

impl TempPassfile {
    pub fn new(password: &str, owner: Option<&Owner>) -> io::Result<TempPassfile> {
        // A random name (mode 0700): a predictable one in a shared /tmp could be taken first
        // by anyone, or by the same pid in another pid namespace.
        let dir = tempfile::Builder::new()
            .prefix("pgshift-pass-")
            .tempdir()?
            .keep();
        let guard = TempPassfile {
            path: dir.join("pgpass"),
            dir,
        };
        let escaped = crate::pgconf::pgpass_escape(password);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&guard.path)?;
        writeln!(f, "*:*:*:*:{escaped}")?;
        f.sync_all()?;
        if let Some(o) = owner.filter(|_| Uid::effective().is_root()) {
            for p in [&guard.dir, &guard.path] {
                chown(p.as_path(), Some(o.uid.into()), Some(o.gid.into()))
                    .map_err(io::Error::from)?;
            }
        }
        Ok(guard)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempPassfile {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The processes running `exe` (by file name) with `arg` among their arguments, e.g.
/// `pgbackrest … server` or `pgshift agent …`.
pub fn find(exe: &str, arg: &str) -> Result<Vec<i32>, String> {
    let mut pids = Vec::new();
    for entry in fs::read_dir("/proc")
        .map_err(|e| format!("cannot list /proc: {e}"))?
        .flatten()
    {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        // Gone already, or a kernel thread: either way not ours.
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        let exe_matches = args.first().is_some_and(|a| {
            Path::new(std::str::from_utf8(a).unwrap_or_default())
                .file_name()
                .is_some_and(|f| f == exe)
        });
        if exe_matches && args[1..].contains(&arg.as_bytes()) {
            pids.push(pid);
        }
    }
    Ok(pids)
}

/// SIGHUP to each of `pids`; a process that exited meanwhile is not an error.
pub fn hup(pids: &[i32]) -> Result<(), String> {
    use nix::sys::signal::{kill, Signal};
    for &pid in pids {
        match kill(nix::unistd::Pid::from_raw(pid), Signal::SIGHUP) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
            Err(e) => return Err(format!("cannot signal process {pid}: {e}")),
        }
    }
    Ok(())
}

/// The inode of the TCP socket listening on `port` in the network namespace of process `pid`,
/// read from `/proc/<pid>/net/tcp{,6}`. A server that re-binds on reload (pgBackRest does)
/// gets a new inode, which tells us when it is safe to connect again.
pub fn listening_socket_inode(pid: i32, port: u16) -> Option<u64> {
    ["tcp", "tcp6"].iter().find_map(|table| {
        let text = fs::read_to_string(format!("/proc/{pid}/net/{table}")).ok()?;
        listening_inode_in(&text, port)
    })
}

/// Parses one `/proc/net/tcp` table: columns are `sl local_address rem_address st … inode`,
/// addresses as `HEXADDR:HEXPORT`, state `0A` = LISTEN.
fn listening_inode_in(table: &str, port: u16) -> Option<u64> {
    table.lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let local_port = cols.get(1)?.rsplit(':').next()?;
        if u16::from_str_radix(local_port, 16).ok()? != port || *cols.get(3)? != "0A" {
            return None;
        }
        cols.get(9)?.parse().ok()
    })
}

#[cfg(test)]
mod run_tests {
    use super::*;

    #[test]
    fn output_is_captured_and_a_daemon_left_behind_does_not_block() {
        // The grandchild keeps stdout and stderr open for 5 s after its parent exits.
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo out; echo err >&2; (sleep 5 &) ; exit 3"]);
        let started = Instant::now();
        let out = run_as(&mut cmd, None, Duration::from_secs(10)).unwrap();
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(out.stdout, b"out\n");
        assert_eq!(out.stderr, b"err\n");
    }

    #[test]
    fn a_command_past_its_deadline_is_killed() {
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let started = Instant::now();
        let e = run_as(&mut cmd, None, Duration::from_millis(300)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(
            e.to_string().contains("sleep did not finish within 0.3 s"),
            "{e}"
        );
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn a_cancelled_command_is_killed_at_once() {
        let cancel = std::sync::Arc::new(AtomicBool::new(false));
        let flag = cancel.clone();
        let setter = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            flag.store(true, Ordering::Relaxed);
        });
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let started = Instant::now();
        let e =
            run_cancellable(&mut cmd, None, Duration::from_secs(60), Some(&cancel)).unwrap_err();
        setter.join().unwrap();
        assert_eq!(e.kind(), io::ErrorKind::Interrupted);
        assert!(e.to_string().contains("sleep was cancelled"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}

#[cfg(test)]
mod listening_tests {
    use super::*;

    #[test]
    fn finds_the_listener_not_a_connection_on_the_same_port() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:20F0 0100007F:D431 01 00000000:00000000 00:00000000 00000000   108        0 99 1\n\
   1: 00000000:20F0 00000000:0000 0A 00000000:00000000 00:00000000 00000000   108        0 4242 1\n";
        assert_eq!(listening_inode_in(table, 8432), Some(4242));
        assert_eq!(listening_inode_in(table, 5432), None);
    }

    #[test]
    fn sees_our_own_listener() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let ours = listening_socket_inode(std::process::id() as i32, port);
        assert!(ours.is_some());
        drop(l);
        // Gone: another test thread of this process may have been given the freed port at
        // once (one full run saw the port listening again right after the drop), but never
        // this socket. A child another test thread forks in that moment holds a copy of the
        // descriptor until its exec closes it (close-on-exec), so the socket may outlive the
        // drop by that window (a fresh-clone run saw it once): it must be gone within 2 s.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while listening_socket_inode(std::process::id() as i32, port) == ours {
            assert!(
                std::time::Instant::now() < deadline,
                "the dropped listener on port {port} is still there after 2 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}
