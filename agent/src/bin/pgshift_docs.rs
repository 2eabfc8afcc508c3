//! `pgshift-docs DIR`: writes the shell completions (bash, zsh, fish) and the man page of
//! `pgshift`'s command line into DIR, from the clap tree itself, so they cannot drift from
//! the binary. Run by scripts/build.sh; playbooks/agent.yml installs the files.

use std::path::PathBuf;

use clap::CommandFactory;
use clap_complete::{generate_to, Shell};
use pgshift_agent::args::Cli;

fn main() {
    let Some(dir) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: pgshift-docs DIR");
        std::process::exit(2);
    };
    if let Err(e) = write(&dir) {
        eprintln!("pgshift-docs: {e}");
        std::process::exit(1);
    }
}

fn write(dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut cmd = Cli::command();
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        generate_to(shell, &mut cmd, "pgshift", dir)?;
    }
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd).render(&mut page)?;
    std::fs::write(dir.join("pgshift.1"), page)
}
