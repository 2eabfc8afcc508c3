//! Throw-away PostgreSQL servers for tests and the demo: `initdb` into a fresh directory,
//! start on a free port with the socket in that directory, stop and remove on drop.
//!
//! PostgreSQL refuses to run as root, so under root the server runs as `postgres` (the
//! directory is handed to it) and local connections use `peer`, exactly like a Debian host.

pub mod etcd;

use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use nix::unistd::{chown, Uid, User};

pub struct PgServer {
    pub root: PathBuf,
    pub data_dir: PathBuf,
    pub socket_dir: PathBuf,
    pub port: u16,
    pub bin: PathBuf,
    run_as: Option<User>,
    keep: bool,
}

/// Where the PostgreSQL 15 server binaries are (override with PGSHIFT_PG_BIN).
pub fn pg_bin() -> PathBuf {
    std::env::var_os("PGSHIFT_PG_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"))
}

/// PostgreSQL 16 server binaries (initdb, pg_ctl, postgres) for the multi-home tests, as
/// `scripts/deps.sh pg16` installs them (override with PGSHIFT_PG16_BIN); None when absent.
pub fn pg16_bin() -> Option<PathBuf> {
    let bin = std::env::var_os("PGSHIFT_PG16_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/pgshift/postgresql-16/bin"));
    bin.join("postgres").exists().then_some(bin)
}

/// A TCP port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port")
}

impl PgServer {
    /// initdb + start with the given extra postgresql.conf lines. Panics with the server's own
    /// output on failure: this is test setup.
    pub fn start(extra_conf: &[&str]) -> PgServer {
        let root = tempfile::Builder::new()
            .prefix("pgshift-pg-")
            .tempdir()
            .expect("tempdir")
            .keep();
        PgServer::start_in(&root, extra_conf, false)
    }

    /// [`PgServer::start`] with the server binaries in `bin` (e.g. [`pg16_bin`]).
    pub fn start_with_bin(bin: &Path, extra_conf: &[&str]) -> PgServer {
        let root = tempfile::Builder::new()
            .prefix("pgshift-pg-")
            .tempdir()
            .expect("tempdir")
            .keep();
        PgServer::start_full(&root, bin, extra_conf, false)
    }

    /// Starts in `root` (created if missing); `keep` leaves the server running after drop.
    pub fn start_in(root: &Path, extra_conf: &[&str], keep: bool) -> PgServer {
        PgServer::start_full(root, &pg_bin(), extra_conf, keep)
    }

    fn start_full(root: &Path, bin: &Path, extra_conf: &[&str], keep: bool) -> PgServer {
        let run_as = if Uid::effective().is_root() {
            Some(
                User::from_name("postgres")
                    .ok()
                    .flatten()
                    .expect("running as root needs a postgres user (Debian package postgresql-15)"),
            )
        } else {
            None
        };
        let server = PgServer::place(root, bin, run_as, keep);
        let local_auth = if server.run_as.is_some() {
            "peer"
        } else {
            "trust"
        };
        server.run_checked(
            Command::new(server.bin.join("initdb"))
                .args(["--no-sync", "-U", "postgres", "-E", "UTF8", "--locale=C"])
                .arg(format!("--auth-local={local_auth}"))
                .arg("--auth-host=scram-sha-256")
                .arg("-D")
                .arg(&server.data_dir),
        );
        let mut conf = format!(
            "port = {}\nunix_socket_directories = '{}'\nlisten_addresses = '127.0.0.1'\nfsync = off\nsynchronous_commit = off\nfull_page_writes = off\nshared_buffers = 16MB\nmax_connections = 20\nlog_min_messages = warning\n",
            server.port,
            server.socket_dir.display()
        );
        for line in extra_conf {
            conf.push_str(line);
            conf.push('\n');
        }
        let conf_path = server.data_dir.join("postgresql.conf");
        let mut base = fs::read_to_string(&conf_path).expect("read postgresql.conf");
        base.push_str(&conf);
        fs::write(&conf_path, base).expect("write postgresql.conf");
        server.run_checked(
            Command::new(server.bin.join("pg_ctl"))
                .args(["start", "-w", "-t", "30", "-s", "-D"])
                .arg(&server.data_dir)
                .arg("-l")
                .arg(server.log_path()),
        );
        server
    }

    pub fn log_path(&self) -> PathBuf {
        self.root.join("server.log")
    }

    pub fn hba_path(&self) -> PathBuf {
        self.data_dir.join("pg_hba.conf")
    }

    /// Runs psql as the superuser over the socket; returns stdout (unaligned, tuples only).
    /// (Debian's psql 15 also drives the PostgreSQL 16 servers, which come without one.)
    pub fn psql(&self, sql: &str) -> String {
        self.psql_db("postgres", sql)
    }

    /// [`PgServer::psql`] in database `db`.
    pub fn psql_db(&self, db: &str, sql: &str) -> String {
        let out = self.run_checked(
            Command::new(pg_bin().join("psql"))
                .args([
                    "-X",
                    "-At",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-U",
                    "postgres",
                    "-d",
                    db,
                    "-h",
                ])
                .arg(&self.socket_dir)
                .args(["-p", &self.port.to_string(), "-c", sql]),
        );
        String::from_utf8_lossy(&out.stdout).trim_end().to_string()
    }

    /// Runs a command as the server's user, panicking with its output on failure.
    pub fn run_checked(&self, cmd: &mut Command) -> Output {
        if let Some(u) = &self.run_as {
            cmd.uid(u.uid.as_raw())
                .gid(u.gid.as_raw())
                .env("HOME", &self.root);
        }
        cmd.stdin(Stdio::null())
            .env_remove("PGPASSWORD")
            .env_remove("PGHOST")
            .env_remove("PGPORT");
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
        if !out.status.success() {
            let log = fs::read_to_string(self.log_path()).unwrap_or_default();
            panic!(
                "{cmd:?} failed: {}\nstdout: {}\nstderr: {}\nserver log:\n{log}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        out
    }

    /// A streaming standby of this server, started: `pg_basebackup -R` over the socket into a
    /// root of its own, with its own port and socket (lines appended to the copied
    /// postgresql.conf win over the primary's).
    pub fn standby(&self, extra_conf: &[&str]) -> PgServer {
        let root = tempfile::Builder::new()
            .prefix("pgshift-pg-")
            .tempdir()
            .expect("tempdir")
            .keep();
        let standby = PgServer::place(&root, &self.bin, self.run_as.clone(), false);
        self.run_checked(
            Command::new(self.bin.join("pg_basebackup"))
                .args(["-U", "postgres", "-R", "-X", "stream", "-h"])
                .arg(&self.socket_dir)
                .args(["-p", &self.port.to_string(), "-D"])
                .arg(&standby.data_dir),
        );
        let mut conf = format!(
            "port = {}\nunix_socket_directories = '{}'\n",
            standby.port,
            standby.socket_dir.display()
        );
        for line in extra_conf {
            conf.push_str(line);
            conf.push('\n');
        }
        let conf_path = standby.data_dir.join("postgresql.conf");
        let mut base = fs::read_to_string(&conf_path).expect("read postgresql.conf");
        base.push_str(&conf);
        fs::write(&conf_path, base).expect("write postgresql.conf");
        standby.start_again();
        standby
    }

    /// A server's place under `root`: the socket directory made, both handed to `run_as`, a
    /// free port; nothing in `data` yet.
    fn place(root: &Path, bin: &Path, run_as: Option<User>, keep: bool) -> PgServer {
        let socket_dir = root.join("run");
        fs::create_dir_all(&socket_dir).expect("mkdir");
        fs::set_permissions(root, fs::Permissions::from_mode(0o755)).expect("chmod");
        if let Some(u) = &run_as {
            chown(root, Some(u.uid), Some(u.gid)).expect("chown");
            chown(&socket_dir, Some(u.uid), Some(u.gid)).expect("chown");
        }
        PgServer {
            root: root.to_path_buf(),
            data_dir: root.join("data"),
            socket_dir,
            port: free_port(),
            bin: bin.to_path_buf(),
            run_as,
            keep,
        }
    }

    /// `pg_ctl start` of a stopped server.
    pub fn start_again(&self) {
        self.run_checked(
            Command::new(self.bin.join("pg_ctl"))
                .args(["start", "-w", "-t", "30", "-s", "-D"])
                .arg(&self.data_dir)
                .arg("-l")
                .arg(self.log_path()),
        );
    }

    /// Makes this (stopped) server a standby of `upstream`: standby.signal, and
    /// primary_conninfo to its socket.
    pub fn follow(&self, upstream: &PgServer) {
        let signal = self.data_dir.join("standby.signal");
        fs::write(&signal, "").expect("standby.signal");
        let auto = self.data_dir.join("postgresql.auto.conf");
        let mut conf = fs::read_to_string(&auto).unwrap_or_default();
        conf.push_str(&format!(
            "primary_conninfo = 'host={} port={} user=postgres'\n",
            upstream.socket_dir.display(),
            upstream.port
        ));
        fs::write(&auto, conf).expect("postgresql.auto.conf");
        if let Some(u) = &self.run_as {
            chown(&signal, Some(u.uid), Some(u.gid)).expect("chown");
            chown(&auto, Some(u.uid), Some(u.gid)).expect("chown");
        }
    }

    pub fn stop(&self) {
        let mut cmd = Command::new(self.bin.join("pg_ctl"));
        cmd.args(["stop", "-m", "immediate", "-w", "-s", "-D"])
            .arg(&self.data_dir);
        if let Some(u) = &self.run_as {
            cmd.uid(u.uid.as_raw()).gid(u.gid.as_raw());
        }
        let _ = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if !self.keep {
            self.stop();
            let _ = fs::remove_dir_all(&self.root);
        }
    }
}
