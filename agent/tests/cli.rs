//! The command line as a user meets it: `--help` on every level without any configuration,
//! usage errors exit 2 with clap's message, failures exit 1 with the reason.

use std::process::Command;

fn pgshift(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pgshift"))
        .args(args)
        // No configuration anywhere it could be read from.
        .env_clear()
        .current_dir("/")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_on_every_level_needs_no_configuration() {
    let levels: &[&[&str]] = &[
        &[],
        &["agent"],
        &["status"],
        &["switchover"],
        &["failover"],
        &["down"],
        &["up"],
        &["pause"],
        &["resume"],
        &["logical"],
        &["logical", "status"],
        &["logical", "down"],
        &["logical", "up"],
        &["logical", "check"],
        &["logical", "watch"],
        &["logical", "ddl"],
    ];
    for level in levels {
        let mut args = level.to_vec();
        args.push("--help");
        let (code, out, err) = pgshift(&args);
        assert_eq!(code, 0, "{args:?}: {err}");
        assert!(out.contains("Usage: pgshift"), "{args:?}: {out}");
    }
    let (code, out, _) = pgshift(&["--version"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("pgshift "), "{out}");
}

#[test]
fn usage_errors_exit_2_and_failures_exit_1() {
    for bad in [
        &["status", "--to", "db2"][..],
        &["failover"],
        &["switchover", "--cancel", "--at", "+5m"],
        &["logical", "frobnicate"],
        &["bogus"],
    ] {
        let (code, _, err) = pgshift(bad);
        assert_eq!(code, 2, "{bad:?}: {err}");
        assert!(
            err.contains("Usage:") || err.contains("error:"),
            "{bad:?}: {err}"
        );
    }
    let (code, _, err) = pgshift(&["status", "--config", "/nonexistent/agent.toml"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("/nonexistent/agent.toml"), "{err}");
}
