//! "Would this rule ever be used?" PostgreSQL takes the first rule whose type, database, user
//! and address match, so a rule is dead when an earlier one matches every connection it would.
//! The check is conservative: it only claims coverage it can prove (groups, `@file` lists,
//! `samerole` and host names are compared literally).

use super::rule::Rule;
use super::token::Token;

/// True when `earlier` matches every connection that `later` matches.
pub fn covers(earlier: &Rule, later: &Rule) -> bool {
    earlier.conn_type.covers(later.conn_type)
        && names_cover(&earlier.databases, &later.databases, true)
        && names_cover(&earlier.users, &later.users, false)
        && match (&earlier.address, &later.address) {
            (None, None) => true,
            (Some(a), Some(b)) => a.covers(b),
            _ => false,
        }
}

fn names_cover(earlier: &[Token], later: &[Token], databases: bool) -> bool {
    later.iter().all(|b| {
        earlier.iter().any(|a| {
            // `all` in the database column does not match replication connections.
            let all_covers = a.is_keyword("all") && !(databases && b.is_keyword("replication"));
            all_covers || a.key() == b.key()
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hba::token::tokenize;

    fn rule(line: &str) -> Rule {
        let t = tokenize(line);
        Rule::from_fields(&t.fields, t.comment).unwrap()
    }

    #[test]
    fn detects_dead_rules() {
        let cases = [
            (
                "host all all 0.0.0.0/0 reject",
                "host app app 10.0.0.1/32 md5",
                true,
            ),
            (
                "host all all 10.0.0.0/8 md5",
                "hostssl app app 10.1.0.0/16 cert",
                true,
            ),
            (
                "hostssl all all 10.0.0.0/8 md5",
                "host app app 10.1.0.0/16 md5",
                false,
            ),
            (
                "host all all 0.0.0.0/0 md5",
                "host replication repl 10.0.0.1/32 md5",
                false,
            ),
            (
                "host replication all 10.0.0.0/8 md5",
                "host replication repl 10.0.0.1/32 md5",
                true,
            ),
            (
                "host app,other all all md5",
                "host app x db.example.com md5",
                true,
            ),
            (
                "host app +admins all md5",
                "host app alice 10.0.0.1/32 md5",
                false,
            ),
            ("local all all peer", "host all all 127.0.0.1/32 md5", false),
            ("local all all peer", "local app app md5", true),
            (
                "host all all ::/0 md5",
                "host all all 10.0.0.1/32 md5",
                false,
            ),
        ];
        for (a, b, want) in cases {
            assert_eq!(covers(&rule(a), &rule(b)), want, "{a} ⊇ {b}");
        }
    }
}
