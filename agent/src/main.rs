//! `pgshift`: the per-host HA agent (`pgshift agent`) and its CLI.

use std::path::PathBuf;
use std::process::exit;

use pgshift_agent::config::{Config, DEFAULT_PATH};
use pgshift_agent::{agent, cli, guard};

const USAGE: &str = "usage:
  pgshift agent [--config FILE]      run the agent (default config /etc/pgshift/agent.toml)
  pgshift status [--json] [--config FILE]
  pgshift --version";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut config = PathBuf::from(DEFAULT_PATH);
    let mut json = false;
    let mut rest = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--config" | "-c" => match it.next() {
                Some(f) => config = PathBuf::from(f),
                None => fail("--config needs a file"),
            },
            "--json" => json = true,
            _ => rest.push(a.as_str()),
        }
    }
    match rest.as_slice() {
        ["--version" | "-V" | "version"] => println!("pgshift {}", env!("CARGO_PKG_VERSION")),
        ["--help" | "-h" | "help"] => println!("{USAGE}"),
        ["agent"] => {
            let cfg = Config::load(&config).unwrap_or_else(|e| fail(&e));
            let a = agent::Agent::new(cfg).unwrap_or_else(|e| fail(&e));
            a.run()
        }
        ["status"] => {
            let cfg = Config::load(&config).unwrap_or_else(|e| fail(&e));
            match cli::status(&cfg, json) {
                Ok(text) => print!("{text}{}", if json { "\n" } else { "" }),
                Err(e) => fail(&e),
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
