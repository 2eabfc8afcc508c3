//! `pgshift-scratch-pg start DIR [conf-line...]` / `stop DIR`: a throw-away PostgreSQL for
//! the demo and the Ansible-level tests, sharing the Rust tests' setup code.

use std::path::Path;
use std::process::exit;

use pgshift_testkit::PgServer;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [cmd, dir, conf @ ..] if cmd == "start" => {
            let extra: Vec<&str> = conf.iter().map(String::as_str).collect();
            let s = PgServer::start_in(Path::new(dir), &extra, true);
            // Shell-friendly facts for the caller.
            println!("PGDATA={}", s.data_dir.display());
            println!("PGHOST={}", s.socket_dir.display());
            println!("PGPORT={}", s.port);
        }
        [cmd, dir] if cmd == "stop" => {
            let data = Path::new(dir).join("data");
            let mut c = std::process::Command::new(pgshift_testkit::pg_bin().join("pg_ctl"));
            c.args(["stop", "-m", "fast", "-w", "-s", "-D"]).arg(&data);
            if nix::unistd::Uid::effective().is_root() {
                use std::os::unix::process::CommandExt;
                if let Ok(Some(u)) = nix::unistd::User::from_name("postgres") {
                    c.uid(u.uid.as_raw()).gid(u.gid.as_raw());
                }
            }
            let ok = c.status().map(|s| s.success()).unwrap_or(false);
            let _ = std::fs::remove_dir_all(dir);
            exit(if ok { 0 } else { 1 });
        }
        _ => {
            eprintln!("usage: pgshift-scratch-pg start DIR [postgresql.conf line ...] | stop DIR");
            exit(2);
        }
    }
}
