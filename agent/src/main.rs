//! `pgshift`: the per-host HA agent (`pgshift agent`) and its CLI.

use std::path::PathBuf;
use std::process::exit;
use std::time::Duration;

use pgshift_agent::config::{Config, DEFAULT_PATH};
use pgshift_agent::ctl::{parse_at, Ctl};
use pgshift_agent::logical::{self, LogicalConfig};
use pgshift_agent::{agent, cli, guard};

const USAGE: &str = "usage:
  pgshift agent [--config FILE]      run the agent (default config /etc/pgshift/agent.toml)
  pgshift status [--json]            the cluster: leader, members, sync standby, pause, requests
  pgshift switchover [--to NODE] [--at TIME] [--timeout SECS]
                                     planned move of the leader (TIME: RFC 3339, +30s, +5m)
  pgshift switchover --cancel        cancel a scheduled switchover
  pgshift failover --to NODE [--timeout SECS]
                                     promote NODE when no healthy leader exists
  pgshift down [NODE] [--timeout SECS]
                                     maintenance: out of rotation, never promoted (this node
                                     by default; a leader hands over first)
  pgshift up [NODE]                  back in rotation
  pgshift pause | resume             stop / restart automatic failover cluster-wide
  pgshift logical status [--json]    a multi-home pair (config /etc/pgshift/logical.toml)
  pgshift logical down NODE [--timeout SECS] | up NODE
                                     make one side read-only / writable again
  pgshift logical ddl FILE           a schema change on both sides (both down, DDL, refresh, up)
  pgshift logical check | watch [--interval SECS]
                                     put the non-active side down if replication broke
  pgshift --version
every command takes --config FILE; none ever prompts";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut config = PathBuf::from(DEFAULT_PATH);
    let mut config_given = false;
    let mut interval = Duration::from_secs(5);
    let mut json = false;
    let mut cancel = false;
    let mut to = None;
    let mut at = None;
    let mut timeout = Duration::from_secs(60);
    let mut rest = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| -> String {
            it.next()
                .cloned()
                .unwrap_or_else(|| fail(&format!("{name} needs a value")))
        };
        match a.as_str() {
            "--config" | "-c" => {
                config = PathBuf::from(value("--config"));
                config_given = true;
            }
            "--interval" => {
                let v = value("--interval");
                let secs: u64 = v
                    .parse()
                    .unwrap_or_else(|_| fail(&format!("--interval {v:?}: give seconds")));
                interval = Duration::from_secs(secs.max(1));
            }
            "--json" => json = true,
            "--cancel" => cancel = true,
            "--to" => to = Some(value("--to")),
            "--at" => at = Some(value("--at")),
            "--timeout" => {
                let v = value("--timeout");
                let secs: u64 = v
                    .parse()
                    .unwrap_or_else(|_| fail(&format!("--timeout {v:?}: give seconds")));
                timeout = Duration::from_secs(secs);
            }
            _ => rest.push(a.as_str()),
        }
    }
    let load = || Config::load(&config).unwrap_or_else(|e| fail(&e));
    let done = |r: Result<String, String>| match r {
        Ok(text) => println!("{text}"),
        Err(e) => fail(&e),
    };
    match rest.as_slice() {
        ["--version" | "-V" | "version"] => println!("pgshift {}", env!("CARGO_PKG_VERSION")),
        ["--help" | "-h" | "help"] => println!("{USAGE}"),
        ["agent"] => {
            let a = agent::Agent::new(config.clone(), load()).unwrap_or_else(|e| fail(&e));
            a.run()
        }
        ["status"] => {
            let cfg = load();
            match cli::status(&cfg, json) {
                Ok(text) => print!("{text}{}", if json { "\n" } else { "" }),
                Err(e) => fail(&e),
            }
        }
        ["switchover"] => {
            let cfg = load();
            let ctl = Ctl::new(&cfg).unwrap_or_else(|e| fail(&e));
            if cancel {
                return done(ctl.cancel());
            }
            let now = pgshift_agent::records::unix_now();
            let at = at.map(|t| parse_at(&t, now).unwrap_or_else(|e| fail(&e)));
            done(ctl.switchover(to.as_deref(), at, timeout))
        }
        ["failover"] => {
            let Some(to) = to else {
                fail("failover needs --to NODE (the standby to promote)")
            };
            let cfg = load();
            let ctl = Ctl::new(&cfg).unwrap_or_else(|e| fail(&e));
            done(ctl.failover(&to, timeout))
        }
        [cmd @ ("down" | "up"), node @ ..] if node.len() <= 1 => {
            let cfg = load();
            let ctl = Ctl::new(&cfg).unwrap_or_else(|e| fail(&e));
            done(ctl.maintenance(node.first().copied(), *cmd == "down", timeout))
        }
        [cmd @ ("pause" | "resume")] => {
            let cfg = load();
            let ctl = Ctl::new(&cfg).unwrap_or_else(|e| fail(&e));
            done(ctl.pause(*cmd == "pause"))
        }
        ["logical", rest @ ..] => {
            let path = if config_given {
                config.clone()
            } else {
                PathBuf::from(logical::config::DEFAULT_PATH)
            };
            let cfg = LogicalConfig::load(&path).unwrap_or_else(|e| fail(&e));
            let down_timeout = if timeout == Duration::from_secs(60) {
                Duration::from_secs(30)
            } else {
                timeout
            };
            match rest {
                ["status"] => print!(
                    "{}{}",
                    logical::status(&cfg, json),
                    if json { "\n" } else { "" }
                ),
                ["down", node] => done(logical::down(&cfg, node, down_timeout)),
                ["up", node] => done(logical::up(&cfg, node)),
                ["check"] => done(logical::check(&cfg, down_timeout)),
                ["ddl", file] => done(logical::ddl(&cfg, file, down_timeout)),
                ["watch"] => loop {
                    match logical::check(&cfg, down_timeout) {
                        Ok(m) if m.contains("flows both ways") => {}
                        Ok(m) => eprintln!("pgshift logical: {m}"),
                        Err(e) => eprintln!("pgshift logical: {e}"),
                    }
                    std::thread::sleep(interval);
                },
                _ => {
                    eprintln!("{USAGE}");
                    exit(2);
                }
            }
        }
        // Internal: started by the agent, see guard.rs.
        ["fence-guard", dir] => exit(guard::run(std::path::Path::new(dir))),
        _ => {
            eprintln!("{USAGE}");
            exit(2);
        }
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("pgshift: {msg}");
    exit(1)
}
