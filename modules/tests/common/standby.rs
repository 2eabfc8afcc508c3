//! A primary and a place for a standby, for the pg_basebackup_standby tests (plain and hostile).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use pgshift_testkit::{free_port, PgServer};
use serde_json::{json, Value};

use super::{owner, run_module};

pub struct Pair {
    pub primary: PgServer,
    pub dir: tempfile::TempDir,
    password: &'static str,
}

impl Pair {
    /// A primary with a `replicator` role whose password is `password`.
    pub fn new(password: &'static str) -> Pair {
        Pair::with_conf(password, &[])
    }

    /// [`Pair::new`] with more postgresql.conf lines on the primary.
    pub fn with_conf(password: &'static str, extra: &[&str]) -> Pair {
        // The standby's copy of postgresql.conf includes host.conf for its own port/socket.
        let mut conf = vec!["include_if_exists = 'host.conf'", "wal_keep_size = '64MB'"];
        conf.extend_from_slice(extra);
        let primary = PgServer::start(&conf);
        primary.psql(&format!(
            "CREATE ROLE replicator LOGIN REPLICATION PASSWORD '{}'",
            password.replace('\'', "''")
        ));
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        Pair {
            primary,
            dir,
            password,
        }
    }

    pub fn standby_dir(&self) -> PathBuf {
        self.dir.path().join("standby")
    }

    pub fn passfile(&self) -> PathBuf {
        self.dir.path().join("pgpass")
    }

    /// The module's arguments for this pair, with `extra` on top (a null removes an argument).
    pub fn args(&self, extra: Value) -> Value {
        let mut a = json!({
            "primary_host": "127.0.0.1",
            "primary_port": self.primary.port,
            "replication_user": "replicator",
            "replication_password": self.password,
            "data_directory": self.standby_dir(),
            "passfile": self.passfile(),
            "slot_name": "standby_one",
            "owner": owner(),
            "wait_streaming": 30,
        });
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                a.as_object_mut().unwrap().remove(k);
            } else {
                a[k] = v.clone();
            }
        }
        a
    }

    pub fn run(&self, extra: Value) -> Value {
        run_module("pg_basebackup_standby", self.args(extra))
    }

    pub fn slots(&self) -> String {
        self.primary
            .psql("SELECT string_agg(slot_name, ',') FROM pg_replication_slots")
    }

    /// Host-specific settings of the standby (port, socket), outside the copied config.
    pub fn localize(&self) -> (u16, PathBuf) {
        let port = free_port();
        let sock = self.dir.path().join("run");
        fs::create_dir_all(&sock).unwrap();
        chown_to_owner(&sock);
        fs::write(
            self.standby_dir().join("host.conf"),
            format!(
                "port = {port}\nunix_socket_directories = '{}'\n",
                sock.display()
            ),
        )
        .unwrap();
        chown_to_owner(&self.standby_dir().join("host.conf"));
        (port, sock)
    }

    pub fn standby_psql(&self, port: u16, sock: &Path, sql: &str) -> String {
        let out = self.primary.run_checked(
            std::process::Command::new(self.primary.bin.join("psql"))
                .args(["-X", "-At", "-U", "postgres", "-d", "postgres", "-h"])
                .arg(sock)
                .args(["-p", &port.to_string(), "-c", sql]),
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        if self.standby_dir().join("postmaster.pid").exists() {
            let mut c = std::process::Command::new(self.primary.bin.join("pg_ctl"));
            c.args(["stop", "-m", "immediate", "-D"])
                .arg(self.standby_dir());
            if nix::unistd::Uid::effective().is_root() {
                use std::os::unix::process::CommandExt;
                let pg = nix::unistd::User::from_name("postgres").unwrap().unwrap();
                c.uid(pg.uid.as_raw()).gid(pg.gid.as_raw());
            }
            let _ = c.output();
        }
    }
}

/// The test files the standby's PostgreSQL reads belong to its owner (postgres under root).
pub fn chown_to_owner(p: &Path) {
    if nix::unistd::Uid::effective().is_root() {
        let pg = nix::unistd::User::from_name("postgres").unwrap().unwrap();
        nix::unistd::chown(p, Some(pg.uid), Some(pg.gid)).unwrap();
    }
}
