//! Running PostgreSQL's own programs (pg_basebackup, psql, pg_ctl) as the cluster's owner,
//! with secrets handed over in a private temporary passfile, never in argv or the environment.

use std::ffi::CString;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

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

/// Runs `cmd` (stdin closed), as `owner` when we are root, and returns its output.
pub fn run_as(cmd: &mut Command, owner: Option<&Owner>) -> io::Result<Output> {
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
    cmd.stdin(Stdio::null()).output()
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
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "pgshift-pass-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir(&dir)?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
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
        assert!(listening_socket_inode(std::process::id() as i32, port).is_some());
        drop(l);
        assert!(listening_socket_inode(std::process::id() as i32, port).is_none());
    }
}
