//! The command line, as clap parses it: one tree of subcommands, each with only the flags it
//! means. Nothing here reads a file, so `--help` works on every level without a
//! configuration. Exit codes: 0 done, 1 refused or failed (the reason on stderr), 2 usage.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "pgshift",
    version,
    about = "Highly available PostgreSQL: the per-host agent and its CLI",
    long_about = "Highly available PostgreSQL: the per-host agent (`pgshift agent`) and the \
                  commands operators run on any database host. Commands go through the local \
                  agent's API with this host's credentials and never prompt.",
    after_help = "Exit status: 0 done, 1 refused or failed (the reason on stderr), 2 usage."
)]
pub struct Cli {
    /// The agent's configuration (default /etc/pgshift/agent.toml; for `logical`,
    /// /etc/pgshift/logical.toml).
    #[arg(long, short = 'c', global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent (as PostgreSQL's owner; started as root it becomes that user).
    Agent,
    /// The cluster: leader, members, synchronous standby, pause, requests, warnings.
    Status {
        /// The same facts as JSON.
        #[arg(long, conflicts_with = "watch")]
        json: bool,
        /// Redraw the table in place until interrupted.
        #[arg(long)]
        watch: bool,
        /// Seconds between redraws with --watch.
        #[arg(long, default_value_t = 2.0, requires = "watch", value_name = "SECS")]
        interval: f64,
    },
    /// A planned move of the leader: a clean shutdown, no rewind, no lost commit.
    Switchover {
        /// The standby to hand over to (default: the best streaming one).
        #[arg(long, value_name = "NODE", conflicts_with = "cancel")]
        to: Option<String>,
        /// When: RFC 3339 (2026-12-01T10:00:00Z), +30s/+5m/+1h, or Unix seconds.
        #[arg(long, value_name = "TIME", conflicts_with = "cancel")]
        at: Option<String>,
        /// Cancel a pending (scheduled) switchover.
        #[arg(long)]
        cancel: bool,
        #[command(flatten)]
        wait: Wait,
    },
    /// Promote NODE when no healthy leader exists (also while paused).
    Failover {
        /// The standby to promote.
        #[arg(long, value_name = "NODE")]
        to: String,
        #[command(flatten)]
        wait: Wait,
    },
    /// Maintenance: out of rotation, never promoted; a leader hands over first.
    Down {
        /// The node (default: this one).
        node: Option<String>,
        #[command(flatten)]
        wait: Wait,
    },
    /// Back in rotation after `down`.
    Up {
        /// The node (default: this one).
        node: Option<String>,
        #[command(flatten)]
        wait: Wait,
    },
    /// Rebuild NODE's data directory: its agent stops PostgreSQL, moves the directory aside,
    /// copies a fresh one (--from pgbackrest: restored from the repository; leader: a base
    /// backup from a member tagged clonefrom, else the leader) and streams again.
    Reinit {
        /// The standby to rebuild (never the leader).
        node: String,
        /// Where the copy comes from (default: the node's [rebuild] method).
        #[arg(long, value_enum, value_name = "SOURCE")]
        from: Option<crate::config::RebuildMethod>,
        /// Even when it is a synchronous standby whose rebuild blocks writes (strict mode).
        #[arg(long)]
        force: bool,
        /// Seconds to wait for it to stream again.
        #[arg(long, default_value_t = 1800, value_name = "SECS")]
        timeout: u64,
    },
    /// Restart PostgreSQL on NODE or on every member: standbys first, then the leader by a
    /// switchover (no write outage beyond the switchover's).
    Restart {
        /// The member (default: every member).
        node: Option<String>,
        /// Only members with a setting waiting for a restart (pg_settings.pending_restart).
        #[arg(long)]
        pending: bool,
        /// When: RFC 3339 (2026-12-01T02:00:00Z), +30s/+5m/+1h, or Unix seconds; the command
        /// returns once scheduled.
        #[arg(long, value_name = "TIME")]
        at: Option<String>,
        /// Seconds to wait for the restarts.
        #[arg(long, default_value_t = 600, value_name = "SECS")]
        timeout: u64,
    },
    /// The cluster-wide configuration in etcd: timing, synchronous settings, PostgreSQL
    /// parameters (over each node's agent.toml).
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Stop automatic failover cluster-wide.
    Pause,
    /// Restart automatic failover.
    Resume,
    /// A multi-home pair (two writable nodes over logical replication).
    Logical {
        #[command(subcommand)]
        command: Logical,
    },
    /// Internal: the fence guard the agent starts (see guard.rs).
    #[command(hide = true)]
    FenceGuard {
        data_directory: PathBuf,
        /// A watchdog device to keep alive while writes are allowed (see watchdog.rs).
        #[arg(long, value_name = "DEVICE")]
        watchdog: Option<PathBuf>,
    },
}

/// How long a command waits for the cluster to show its result.
#[derive(Debug, Args)]
pub struct Wait {
    /// Seconds to wait for the result.
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    pub timeout: u64,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print it (TOML) with its revision.
    Show {
        #[arg(long)]
        json: bool,
    },
    /// Change keys: ttl, loop_wait, retry_timeout, maximum_lag_on_failover,
    /// synchronous_mode, synchronous_mode_strict, synchronous_node_count, or a PostgreSQL
    /// parameter (NAME or postgresql.NAME); an empty value removes the key.
    Set {
        #[arg(required = true, value_name = "KEY=VALUE")]
        assignments: Vec<String>,
        /// Refuse unless it is still at this revision (as `config show` printed it).
        #[arg(long, value_name = "N")]
        revision: Option<i64>,
    },
    /// Edit it in $VISUAL / $EDITOR; refused if someone changed it meanwhile.
    Edit,
}

#[derive(Debug, Subcommand)]
pub enum Logical {
    /// Both sides: down state, subscriptions, workers, errors, lag, sessions.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Make NODE read-only (sessions that wrote get --timeout, then are ended).
    Down {
        node: String,
        /// Seconds writing sessions get before they are ended.
        #[arg(long, default_value_t = 30, value_name = "SECS")]
        timeout: u64,
    },
    /// Make NODE writable again (refused while replication is broken).
    Up { node: String },
    /// Put the non-active side down if replication broke.
    Check {
        #[arg(long, default_value_t = 30, value_name = "SECS")]
        timeout: u64,
    },
    /// `check` every --interval seconds, for ever.
    Watch {
        #[arg(long, default_value_t = 5, value_name = "SECS")]
        interval: u64,
        #[arg(long, default_value_t = 30, value_name = "SECS")]
        timeout: u64,
    },
    /// A schema change on both sides: both down, the file on each, refresh, both back.
    Ddl {
        file: PathBuf,
        #[arg(long, default_value_t = 30, value_name = "SECS")]
        timeout: u64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_tree_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn flags_are_taken_only_where_they_mean_something() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("pgshift").chain(args.iter().copied()))
        };
        assert!(parse(&["status", "--json"]).is_ok());
        assert!(parse(&["switchover", "--to", "db2", "--at", "+5m"]).is_ok());
        assert!(parse(&["down", "db2", "-c", "/x.toml"]).is_ok());
        assert!(parse(&["reinit", "db2", "--force", "--timeout", "60"]).is_ok());
        assert!(parse(&["reinit", "db2", "--from", "pgbackrest"]).is_ok());
        assert!(parse(&["restart", "--pending", "--at", "+5m"]).is_ok());
        assert!(parse(&["restart", "db2"]).is_ok());
        assert!(parse(&[
            "config",
            "set",
            "ttl=5",
            "shared_buffers=1GB",
            "--revision",
            "7"
        ])
        .is_ok());
        assert!(parse(&["config", "show", "--json"]).is_ok());
        for bad in [
            &["status", "--to", "db2"][..],
            &["switchover", "--cancel", "--to", "db2"],
            &["failover"],
            &["pause", "--json"],
            &["status", "--interval", "3"],
            &["logical", "down"],
            &["reinit"],
            &["reinit", "db2", "--to", "db1"],
            &["reinit", "db2", "--from", "s3"],
            &["restart", "db1", "db2"],
            &["restart", "--force"],
            &["config", "set"],
            &["config"],
            &["nonsense"],
        ] {
            let e = parse(bad).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad:?}: {e}");
        }
    }
}
