//! `pgshift`: the per-host agent and its CLI. The HA agent arrives with the agent issues;
//! for now the binary reports its version so packaging and deployment can be wired up.

const USAGE: &str = "usage: pgshift --version | --help";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--version" | "-V" | "version") => println!("pgshift {}", env!("CARGO_PKG_VERSION")),
        Some("--help" | "-h" | "help") => println!("{USAGE}"),
        _ => {
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    }
}
