//! Property tests against a real PostgreSQL 15: any value `conf_set` writes into
//! postgresql.auto.conf is read back by the server (`pg_file_settings`) as the same value, and
//! a connection string built by `conninfo` — itself stored in postgresql.auto.conf, as
//! primary_conninfo is — is parsed by libpq with every value intact.

use std::fs;
use std::process::Command;

use pgshift_core::pgconf::{check_value, conf_set, conninfo};
use pgshift_testkit::{pg_bin, PgServer};
use proptest::prelude::*;
use proptest::test_runner::TestRunner;

/// Values that must survive: quotes, backslashes, blanks, `#`, `=`, non-ASCII.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        "[ -~]{0,40}",
        "[a-z '\\\\#=ü✓]{0,20}",
        Just("x' primary_slot_name='evil".to_string()),
        Just("\\".to_string()),
        Just("'\\''".to_string()),
    ]
}

fn file_setting(s: &PgServer, name: &str) -> String {
    s.psql(&format!(
        "SELECT coalesce(setting, '<null>') || '|' || coalesce(error, '') FROM pg_file_settings WHERE name = '{name}'"
    ))
}

fn runner() -> TestRunner {
    TestRunner::new(ProptestConfig::with_cases(64))
}

#[test]
fn auto_conf_values_read_back_as_written() {
    let s = PgServer::start(&[]);
    let auto = s.data_dir.join("postgresql.auto.conf");
    let base = fs::read_to_string(&auto).unwrap();
    runner()
        .run(&value(), |v| {
            prop_assume!(check_value("v", &v, "postgresql.auto.conf", false).is_ok());
            let text = conf_set(&base, &[("pgshift.probe", Some(&v))]);
            fs::write(&auto, &text).unwrap();
            prop_assert_eq!(file_setting(&s, "pgshift.probe"), format!("{v}|"));
            Ok(())
        })
        .unwrap();
}

#[test]
fn conninfo_in_auto_conf_reaches_libpq_intact() {
    let s = PgServer::start(&[]);
    let auto = s.data_dir.join("postgresql.auto.conf");
    let base = fs::read_to_string(&auto).unwrap();
    let sock = s.socket_dir.display().to_string();
    let port = s.port.to_string();
    runner()
        .run(&"[ -~]{0,40}", |app| {
            let ci = conninfo(&[
                ("host", &sock),
                ("port", &port),
                ("user", "postgres"),
                ("dbname", "postgres"),
                ("application_name", &app),
            ]);
            fs::write(&auto, conf_set(&base, &[("pgshift.conninfo", Some(&ci))])).unwrap();
            // The server reads the string back as written ...
            let stored =
                s.psql("SELECT setting FROM pg_file_settings WHERE name = 'pgshift.conninfo'");
            prop_assert_eq!(&stored, &ci);
            // ... and libpq parses it with application_name intact.
            let out = s.run_checked(
                Command::new(pg_bin().join("psql"))
                    .args(["-X", "-At", "-c", "SHOW application_name", "-d"])
                    .arg(&stored),
            );
            let shown = String::from_utf8_lossy(&out.stdout);
            prop_assert_eq!(shown.strip_suffix('\n').unwrap_or(&shown), app.as_str());
            Ok(())
        })
        .unwrap();
}
