//! Property test against a real PostgreSQL 15: any rule the module writes — names with quotes,
//! commas, blanks, `#`, backslashes and non-ASCII, keywords, groups, option values and
//! comments of the same kind — is read back by PostgreSQL (`pg_hba_file_rules`) as exactly
//! the rule the task asked for, and a second run with the same input changes nothing.

mod common;

use std::fs;
use std::net::IpAddr;

use pgshift_testkit::PgServer;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{json, Value};

/// A name as a user writes it in a list item (taken literally), never blank, never wrapped
/// in double quotes (that would make it a quoted name, a different input) and never an
/// `@file` include.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9 ,#'\\\\ü_.\"-]{1,12}",
        Just("all".to_string()),
        Just("+admins".to_string()),
        Just("/^app".to_string()),
        Just("a b, \"c\" #d\\".to_string()),
    ]
    .prop_filter("a usable literal name", |n| {
        let wrapped = n.len() >= 2 && n.starts_with('"') && n.ends_with('"');
        !(n.trim().is_empty() || n.starts_with('@') || wrapped)
    })
}

/// (address as given, address and netmask as pg_hba_file_rules shows them)
fn address() -> impl Strategy<Value = (String, String, String)> {
    prop_oneof![
        Just(("10.1.2.0/24", "10.1.2.0", "255.255.255.0")),
        Just(("192.168.1.7", "192.168.1.7", "255.255.255.255")),
        Just(("::1/128", "::1", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")),
        Just(("db.example.com", "db.example.com", "")),
        Just((".example.com", ".example.com", "")),
        Just(("all", "all", "")),
        Just(("samenet", "samenet", "")),
    ]
    .prop_map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
}

#[derive(Debug, Clone)]
struct Case {
    local: bool,
    databases: Vec<String>,
    users: Vec<String>,
    address: (String, String, String),
    method: String,
    map: Option<String>,
    comment: Option<String>,
}

fn case() -> impl Strategy<Value = Case> {
    (
        any::<bool>(),
        prop::collection::vec(name(), 1..3),
        prop::collection::vec(name(), 1..3),
        address(),
        prop::sample::select(vec!["md5", "scram-sha-256", "trust", "reject"]),
        prop::option::of("[a-zA-Z0-9 ,#'\"\\\\ü=_-]{1,10}"),
        prop::option::of("[a-zA-Z0-9 ,#'\"ü=_-]{0,20}"),
    )
        .prop_map(|(local, databases, users, address, method, map, comment)| {
            // peer (local only) takes a map, the others take no option.
            let method = if local && map.is_some() {
                "peer"
            } else {
                method
            };
            Case {
                local,
                databases,
                users,
                address,
                method: method.to_string(),
                map: map.filter(|_| local),
                comment,
            }
        })
}

impl Case {
    fn args(&self, i: usize) -> Value {
        // A first name unique to the rule, so rules of one case never share an identity.
        let mut databases = vec![format!("prop{i}")];
        databases.extend(self.databases.iter().cloned());
        let mut r = json!({
            "type": if self.local { "local" } else { "host" },
            "databases": databases,
            "users": self.users,
            "method": self.method,
        });
        if !self.local {
            r["address"] = json!(self.address.0);
        }
        if let Some(m) = &self.map {
            r["options"] = json!({"map": m});
        }
        if let Some(c) = &self.comment {
            r["comment"] = json!(c);
        }
        r
    }

    /// The row PostgreSQL should show for it.
    fn expected(&self, i: usize) -> Value {
        let mut databases = vec![format!("prop{i}")];
        databases.extend(self.databases.iter().cloned());
        let (address, netmask) = if self.local {
            (Value::Null, Value::Null)
        } else {
            let (_, a, m) = &self.address;
            let a = match a.parse::<IpAddr>() {
                Ok(ip) => json!(ip.to_string()),
                Err(_) => json!(a),
            };
            (a, if m.is_empty() { Value::Null } else { json!(m) })
        };
        json!({
            "type": if self.local { "local" } else { "host" },
            "database": databases,
            "user_name": self.users,
            "address": address,
            "netmask": netmask,
            "auth_method": self.method,
            "options": self.map.as_ref().map(|m| json!([format!("map={m}")])),
            "error": Value::Null,
        })
    }
}

#[test]
fn rules_written_are_read_back_by_postgresql_as_asked() {
    let s = PgServer::start(&[]);
    let original = fs::read(s.hba_path()).unwrap();
    let original_lines = String::from_utf8_lossy(&original).lines().count();
    let mut runner = TestRunner::new(Config::with_cases(48));
    runner
        .run(&prop::collection::vec(case(), 1..4), |cases| {
            fs::write(s.hba_path(), &original).unwrap();
            let rules: Vec<Value> = cases.iter().enumerate().map(|(i, c)| c.args(i)).collect();
            let args = json!({"path": s.hba_path(), "rules": rules});
            let out = common::run_module("pg_hba_rule", args.clone());
            prop_assert_eq!(&out["changed"], &json!(true), "{}", out);
            prop_assert_eq!(&out["reloaded"], &json!(true), "{}", out);
            let rows: Value = serde_json::from_str(&s.psql(&format!(
                "SELECT coalesce(json_agg(json_build_object('type', type, 'database', database, 'user_name', user_name, 'address', address, 'netmask', netmask, 'auth_method', auth_method, 'options', options, 'error', error) ORDER BY line_number), '[]') FROM pg_hba_file_rules WHERE line_number > {original_lines}"
            )))
            .unwrap();
            let want: Vec<Value> = cases.iter().enumerate().map(|(i, c)| c.expected(i)).collect();
            prop_assert_eq!(rows, Value::from(want), "{}", fs::read_to_string(s.hba_path()).unwrap());
            let again = common::run_module("pg_hba_rule", args);
            prop_assert_eq!(&again["changed"], &json!(false), "{}", again);
            Ok(())
        })
        .unwrap();
}
