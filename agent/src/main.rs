//! `pgshift`: the per-host HA agent (`pgshift agent`) and its CLI (see `args`).

use std::path::{Path, PathBuf};
use std::process::exit;
use std::time::Duration;

use clap::Parser;
use pgshift_agent::args::{Cli, Command, ConfigCommand, Logical};
use pgshift_agent::config::{Config, DEFAULT_PATH};
use pgshift_agent::ctl::{parse_at, Ctl};
use pgshift_agent::logical::{self, LogicalConfig};
use pgshift_agent::{agent, cli, guard};

fn main() {
    let args = Cli::parse();
    let config = args
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PATH));
    let load = || Config::load(&config).unwrap_or_else(|e| fail(&e));
    match args.command {
        Command::Agent => {
            let cfg = load();
            agent::drop_root(&cfg).unwrap_or_else(|e| fail(&e));
            let a = agent::Agent::new(config.clone(), cfg).unwrap_or_else(|e| fail(&e));
            a.run()
        }
        Command::Status {
            json,
            watch,
            interval,
        } => {
            let cfg = load();
            if !watch {
                return match cli::status(&cfg, json) {
                    Ok(text) => print!("{text}{}", if json { "\n" } else { "" }),
                    Err(e) => fail(&e),
                };
            }
            let pause = Duration::from_secs_f64(interval.clamp(0.2, 3600.0));
            loop {
                // Home, then clear: the table is redrawn in place.
                let text = cli::status(&cfg, false).unwrap_or_else(|e| format!("pgshift: {e}\n"));
                print!("\x1b[H\x1b[2J{text}");
                std::thread::sleep(pause);
            }
        }
        Command::Switchover {
            to,
            at,
            cancel,
            wait,
        } => {
            let cfg = load();
            let ctl = ctl(&cfg);
            if cancel {
                return done(ctl.cancel());
            }
            let now = pgshift_agent::records::unix_now();
            let at = at.map(|t| parse_at(&t, now).unwrap_or_else(|e| fail(&e)));
            done(ctl.switchover(to.as_deref(), at, secs(wait.timeout)))
        }
        Command::Failover { to, wait } => {
            let cfg = load();
            done(ctl(&cfg).failover(&to, secs(wait.timeout)))
        }
        Command::Down { node, wait } => {
            let cfg = load();
            done(ctl(&cfg).maintenance(node.as_deref(), true, secs(wait.timeout)))
        }
        Command::Up { node, wait } => {
            let cfg = load();
            done(ctl(&cfg).maintenance(node.as_deref(), false, secs(wait.timeout)))
        }
        Command::Reinit {
            node,
            from,
            force,
            timeout,
        } => {
            let cfg = load();
            done(ctl(&cfg).reinit(&node, from, force, secs(timeout)))
        }
        Command::Restart {
            node,
            pending,
            at,
            timeout,
        } => {
            let cfg = load();
            let now = pgshift_agent::records::unix_now();
            let at = at.map(|t| parse_at(&t, now).unwrap_or_else(|e| fail(&e)));
            done(ctl(&cfg).restart(node.as_deref(), pending, at, secs(timeout)))
        }
        Command::Config { command } => {
            let cfg = load();
            let ctl = ctl(&cfg);
            done(match command {
                ConfigCommand::Show { json } => ctl.config_show(json),
                ConfigCommand::Set {
                    assignments,
                    revision,
                } => ctl.config_set(&assignments, revision),
                ConfigCommand::Edit => ctl.config_edit(),
            })
        }
        Command::Pause => done(ctl(&load()).pause(true)),
        Command::Resume => done(ctl(&load()).pause(false)),
        Command::Logical { command } => {
            let path = args
                .config
                .clone()
                .unwrap_or_else(|| PathBuf::from(logical::config::DEFAULT_PATH));
            let cfg = LogicalConfig::load(&path).unwrap_or_else(|e| fail(&e));
            match command {
                Logical::Status { json } => print!(
                    "{}{}",
                    logical::status(&cfg, json),
                    if json { "\n" } else { "" }
                ),
                Logical::Down { node, timeout } => done(logical::down(&cfg, &node, secs(timeout))),
                Logical::Up { node } => done(logical::up(&cfg, &node)),
                Logical::Check { timeout } => done(logical::check(&cfg, secs(timeout), &mut None)),
                Logical::Ddl { file, timeout } => done(logical::ddl(
                    &cfg,
                    &file.display().to_string(),
                    secs(timeout),
                )),
                Logical::Watch { interval, timeout } => {
                    let mut memory = None;
                    loop {
                        match logical::check(&cfg, secs(timeout), &mut memory) {
                            Ok(m) if m.contains("flows both ways") => {}
                            Ok(m) => eprintln!("pgshift logical: {m}"),
                            Err(e) => eprintln!("pgshift logical: {e}"),
                        }
                        std::thread::sleep(secs(interval.max(1)));
                    }
                }
            }
        }
        Command::FenceGuard {
            data_directory,
            watchdog,
        } => exit(guard::run(Path::new(&data_directory), watchdog)),
    }
}

fn ctl(cfg: &Config) -> Ctl<'_> {
    Ctl::new(cfg).unwrap_or_else(|e| fail(&e))
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn done(r: Result<String, String>) {
    match r {
        Ok(text) => println!("{text}"),
        Err(e) => fail(&e),
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("pgshift: {msg}");
    exit(1)
}
