//! Property tests: the pg_hba model never panics on any input, gives untouched files back byte
//! for byte, and adding then removing a rule restores the original bytes.

use pgshift_core::hba::{Address, Change, ConnType, HbaFile, Position, Rule, Token};
use proptest::prelude::*;

/// Lines that look like pg_hba.conf, and plenty that do not.
fn line() -> impl Strategy<Value = String> {
    prop_oneof![
        "[ -~\t]{0,60}",
        Just(String::new()),
        "# [a-z \\\\]{0,20}",
        "(local|host|hostssl|hostnossl|include_dir|\"host\") +(all|replication|\"all\"|db[0-9],db2|\"a b\") +(all|\\+grp|@file|u[0-9]) +(10\\.0\\.0\\.[0-9]/[0-9]{1,2}|::1/128|all|samenet|x\\.example\\.com|10\\.0\\.0\\.1 255\\.255\\.0\\.0)? *(md5|peer|trust|scram-sha-256|ldap) *(map=x|clientcert=verify-full|ldapserver=\"a,b\")? *(# c)?\\\\?",
        any::<String>().prop_map(|s| s.replace('\n', " ")),
    ]
}

fn file_text() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(line(), 0..25),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(lines, final_nl, crlf)| {
            let sep = if crlf { "\r\n" } else { "\n" };
            let mut text = lines.join(sep);
            if final_nl && !text.is_empty() {
                text.push_str(sep);
            }
            text
        })
}

fn new_rule(n: u8, local: bool) -> Rule {
    Rule {
        conn_type: if local {
            ConnType::Local
        } else {
            ConnType::Host
        },
        databases: vec![Token::bare(&format!("propdb{n}"))],
        users: vec![Token {
            value: "prop user".into(),
            quoted: true,
        }],
        address: (!local).then(|| Address::parse_user(&format!("10.{n}.0.0/16")).unwrap()),
        method: "scram-sha-256".into(),
        options: vec![],
        comment: Some("added by a property test".into()),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn parse_render_round_trips(text in file_text()) {
        let f = HbaFile::parse(text.as_bytes()).unwrap();
        prop_assert_eq!(f.render(), text.as_bytes());
        prop_assert!(f.renders_as(text.as_bytes()));
    }

    #[test]
    fn arbitrary_bytes_round_trip(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        let f = HbaFile::parse(bytes.clone()).unwrap();
        prop_assert_eq!(f.render(), bytes);
    }

    #[test]
    fn add_then_remove_restores_bytes(text in file_text(), n in any::<u8>(), local in any::<bool>(), pos in 0..2usize) {
        let mut f = HbaFile::parse(text.as_bytes()).unwrap();
        let rule = new_rule(n, local);
        let position = if pos == 0 { Position::First } else { Position::Last };
        if let Err(e) = f.apply(&Change::Present { rule: rule.clone(), position }) {
            // The one refusal: appending after a final line that ends in a backslash.
            prop_assert!(e.to_string().contains("continuation backslash"), "{}", e);
            prop_assert!(text.trim_end_matches(['\r', '\n']).ends_with('\\'));
            return Ok(());
        }
        let after = f.render();
        // The new rule parses back as itself.
        let reparsed = HbaFile::parse(after).unwrap();
        prop_assert!(reparsed.find(&rule).is_some());
        let _ = reparsed.warnings_for(&rule);
        f.apply(&Change::Absent { rule }).unwrap();
        prop_assert_eq!(f.render(), text.as_bytes());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn exclusive_is_idempotent(text in file_text(), ns in prop::collection::btree_set(any::<u8>(), 0..5)) {
        let rules: Vec<Rule> = ns.iter().map(|&n| new_rule(n, n % 2 == 0)).collect();
        let mut f = HbaFile::parse(text.as_bytes()).unwrap();
        if let Err(e) = f.set_exclusive(&rules) {
            prop_assert!(e.to_string().contains("continuation backslash"), "{}", e);
            return Ok(());
        }
        let once = f.render();
        let mut again = HbaFile::parse(once.clone()).unwrap();
        let got: Vec<Rule> = again.rules().map(|(_, r)| r).collect();
        prop_assert_eq!(got.len(), rules.len());
        for (g, want) in got.iter().zip(&rules) {
            prop_assert!(g.same_content(want));
        }
        again.set_exclusive(&rules).unwrap();
        prop_assert_eq!(again.render(), once);
    }
}
