//! The edit planner: applies "this rule present/absent" and "exactly these rules" to a parsed
//! file, touching only the records it must. Nothing here does I/O, so every plan can be shown
//! (check mode, diff) before anything is written.

use super::address::Address;
use super::error::HbaError;
use super::file::HbaFile;
use super::rule::{ConnType, Rule};
use super::shadow::covers;
use super::token::Token;

/// Picks rules by any of type/databases/users/address; omitted parts match anything.
#[derive(Debug, Clone, Default)]
pub struct Selector {
    pub conn_type: Option<ConnType>,
    pub databases: Option<Vec<Token>>,
    pub users: Option<Vec<Token>>,
    pub address: Option<Address>,
}

impl Selector {
    pub fn matches(&self, r: &Rule) -> bool {
        let probe = Rule {
            conn_type: self.conn_type.unwrap_or(r.conn_type),
            databases: self
                .databases
                .clone()
                .unwrap_or_else(|| r.databases.clone()),
            users: self.users.clone().unwrap_or_else(|| r.users.clone()),
            address: match &self.address {
                Some(a) => Some(a.clone()),
                None => r.address.clone(),
            },
            method: String::new(),
            options: Vec::new(),
            comment: None,
        };
        probe.same_identity(r)
    }

    fn describe(&self) -> String {
        let names = |t: &Option<Vec<Token>>| {
            t.as_ref()
                .map(|v| v.iter().map(Token::render).collect::<Vec<_>>().join(","))
        };
        let parts = [
            self.conn_type.map(|t| format!("type={}", t.as_str())),
            names(&self.databases).map(|d| format!("databases={d}")),
            names(&self.users).map(|u| format!("users={u}")),
            self.address.as_ref().map(|a| format!("address={a}")),
        ];
        parts.into_iter().flatten().collect::<Vec<_>>().join(" ")
    }
}

/// Where a new rule goes. An existing rule (same identity) is updated where it stands.
#[derive(Debug, Clone)]
pub enum Position {
    First,
    Last,
    /// Before the first rule the selector matches.
    Before(Selector),
    /// After the last rule the selector matches.
    After(Selector),
}

#[derive(Debug, Clone)]
pub enum Change {
    Present {
        rule: Rule,
        position: Position,
    },
    /// Removes every rule with this rule's identity (its method/options are ignored).
    Absent {
        rule: Rule,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleAction {
    Added,
    Updated,
    Removed,
    Unchanged,
}

impl RuleAction {
    pub fn as_str(self) -> &'static str {
        match self {
            RuleAction::Added => "added",
            RuleAction::Updated => "updated",
            RuleAction::Removed => "removed",
            RuleAction::Unchanged => "unchanged",
        }
    }
}

#[derive(Debug, Clone)]
pub struct RuleOutcome {
    pub rule: Rule,
    pub action: RuleAction,
}

impl HbaFile {
    /// Index of the first record holding a rule with `rule`'s identity.
    pub fn find(&self, rule: &Rule) -> Option<usize> {
        self.rules()
            .find(|(_, r)| r.same_identity(rule))
            .map(|(i, _)| i)
    }

    pub fn apply(&mut self, change: &Change) -> Result<RuleOutcome, HbaError> {
        match change {
            Change::Present { rule, position } => self.ensure_present(rule, position),
            Change::Absent { rule } => Ok(self.ensure_absent(rule)),
        }
    }

    fn ensure_present(
        &mut self,
        rule: &Rule,
        position: &Position,
    ) -> Result<RuleOutcome, HbaError> {
        let found = self.rules().find(|(_, r)| r.same_identity(rule));
        if let Some((i, existing)) = found {
            let want = rule.keeping_comment_of(&existing);
            let action = if existing.same_content(&want) {
                RuleAction::Unchanged
            } else {
                self.replace_rule(i, &want);
                RuleAction::Updated
            };
            return Ok(RuleOutcome { rule: want, action });
        }
        let want = rule.keeping_comment_of(rule);
        let at = self.insertion_point(position)?;
        if at > 0 && self.dangles(at - 1) {
            return Err(HbaError::Plan(format!(
                "line {} ends with a continuation backslash at the end of the file, so a rule written after it would be joined to it; remove the backslash first",
                self.line_of(at - 1)
            )));
        }
        self.insert_rule(at, &want);
        Ok(RuleOutcome {
            rule: want,
            action: RuleAction::Added,
        })
    }

    fn ensure_absent(&mut self, rule: &Rule) -> RuleOutcome {
        let doomed: Vec<usize> = self
            .rules()
            .filter(|(_, r)| r.same_identity(rule))
            .map(|(i, _)| i)
            .collect();
        let removed = self.remove_records(|i| doomed.binary_search(&i).is_ok());
        RuleOutcome {
            rule: rule.clone(),
            action: if removed > 0 {
                RuleAction::Removed
            } else {
                RuleAction::Unchanged
            },
        }
    }

    fn insertion_point(&mut self, position: &Position) -> Result<usize, HbaError> {
        // First and last record index of the rules `pick` accepts.
        let bounds = |f: &HbaFile, pick: &dyn Fn(&Rule) -> bool| {
            f.rules()
                .filter(|(_, r)| pick(r))
                .fold(None, |acc: Option<(usize, usize)>, (i, _)| {
                    Some(acc.map_or((i, i), |(first, _)| (first, i)))
                })
        };
        let matching = |f: &HbaFile, sel: &Selector| {
            bounds(f, &|r| sel.matches(r)).ok_or_else(|| {
                HbaError::Plan(format!(
                    "anchor ({}) matches no rule in the file",
                    sel.describe()
                ))
            })
        };
        Ok(match position {
            Position::First => match bounds(self, &|_| true) {
                Some((first, _)) => self.block_start(first),
                None => self.len(),
            },
            Position::Last => bounds(self, &|_| true).map_or(self.len(), |(_, last)| last + 1),
            Position::Before(sel) => {
                let (first, _) = matching(self, sel)?;
                self.block_start(first)
            }
            Position::After(sel) => matching(self, sel)?.1 + 1,
        })
    }

    /// Makes the file's rules exactly `rules`, in order, keeping the leading comment block.
    /// Records whose content is already right keep their bytes (and comments).
    pub fn set_exclusive(&mut self, rules: &[Rule]) -> Result<Vec<RuleOutcome>, HbaError> {
        for (i, a) in rules.iter().enumerate() {
            if let Some(j) = rules[i + 1..].iter().position(|b| b.same_identity(a)) {
                return Err(HbaError::Plan(format!(
                    "rules[{i}] and rules[{}] have the same type, databases, users and address: `{a}`",
                    i + 1 + j
                )));
            }
        }
        let mut outcomes = Vec::new();
        let mut body = Vec::with_capacity(rules.len());
        for want in rules {
            let found = self.rules().find(|(_, r)| r.same_identity(want));
            let (action, item, want) = match found {
                Some((i, r)) => {
                    let want = want.keeping_comment_of(&r);
                    if r.same_content(&want) && !self.dangles(i) {
                        (RuleAction::Unchanged, Ok(i), want)
                    } else {
                        (RuleAction::Updated, Err(want.clone()), want)
                    }
                }
                None => {
                    let want = want.keeping_comment_of(want);
                    (RuleAction::Added, Err(want.clone()), want)
                }
            };
            outcomes.push(RuleOutcome { rule: want, action });
            body.push(item);
        }
        for (_, old) in self.rules() {
            if !rules.iter().any(|w| w.same_identity(&old)) {
                outcomes.push(RuleOutcome {
                    rule: old,
                    action: RuleAction::Removed,
                });
            }
        }
        // Already exactly these rules, in this order, with nothing but blank lines and
        // comments between them: leave the file alone (comments in the middle stay).
        let already = self.rule_count() == rules.len()
            && self
                .rules()
                .zip(&outcomes)
                .all(|((_, r), o)| r.same_content(&o.rule))
            && !self.has_other_lines();
        if !already {
            self.rebuild(body)?;
        }
        Ok(outcomes)
    }

    /// Warnings about `rule` as it stands in the file: an earlier rule that already matches
    /// every connection it would (so it is never used), and later duplicates it hides.
    pub fn warnings_for(&self, rule: &Rule) -> Vec<String> {
        let Some(at) = self.find(rule) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        if let Some((i, _)) = self
            .rules()
            .take_while(|&(i, _)| i < at)
            .find(|(_, r)| covers(r, rule))
        {
            out.push(format!(
                "rule `{}` (line {}) will never be used: line {} (`{}`) already matches every connection it would",
                rule,
                self.line_of(at),
                self.line_of(i),
                self.text(i).trim()
            ));
        }
        for (i, _) in self
            .rules()
            .filter(|(i, r)| *i > at && r.same_identity(rule))
        {
            out.push(format!(
                "line {} (`{}`) has the same type, databases, users and address as line {} and is never used",
                self.line_of(i),
                self.text(i).trim(),
                self.line_of(at)
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hba::token::tokenize;

    const BASE: &str = "# header\n\
        # more header\n\
        \n\
        # admin\n\
        local   all             postgres                                peer\n\
        \n\
        # IPv4 local connections:\n\
        host    all             all             127.0.0.1/32            scram-sha-256\n\
        host    replication     all             127.0.0.1/32            scram-sha-256\n";

    fn parse(b: &[u8]) -> HbaFile {
        HbaFile::parse(b).unwrap()
    }

    fn rule(line: &str) -> Rule {
        let t = tokenize(line);
        Rule::from_fields(&t.fields, t.comment).unwrap()
    }

    fn sel(line: &str) -> Selector {
        let r = rule(line);
        Selector {
            conn_type: Some(r.conn_type),
            databases: Some(r.databases),
            users: Some(r.users),
            address: r.address,
        }
    }

    fn present(f: &mut HbaFile, line: &str, position: Position) -> RuleAction {
        f.apply(&Change::Present {
            rule: rule(line),
            position,
        })
        .unwrap()
        .action
    }

    fn text(f: &HbaFile) -> String {
        String::from_utf8(f.render()).unwrap()
    }

    #[test]
    fn add_then_remove_restores_bytes() {
        for (base, pos) in [
            (BASE, Position::Last),
            (BASE, Position::First),
            ("local all all peer", Position::Last),
            ("", Position::Last),
            ("# only comments\n", Position::First),
        ] {
            let mut f = parse(base.as_bytes());
            assert_eq!(
                present(&mut f, "host app app 10.0.0.0/8 scram-sha-256", pos.clone()),
                RuleAction::Added
            );
            assert_ne!(text(&f), base);
            assert_eq!(
                present(&mut f, "host app app 10.0.0.0/8 scram-sha-256", pos),
                RuleAction::Unchanged
            );
            let out = f
                .apply(&Change::Absent {
                    rule: rule("host app app 10.0.0.0/8 md5"),
                })
                .unwrap();
            assert_eq!(out.action, RuleAction::Removed);
            assert_eq!(text(&f), base);
        }
    }

    #[test]
    fn positions() {
        let mut f = parse(BASE.as_bytes());
        present(&mut f, "host a a 10.0.0.1/32 md5", Position::First);
        present(
            &mut f,
            "host b b 10.0.0.2/32 md5",
            Position::Before(sel("host all all 127.0.0.1/32 x")),
        );
        present(
            &mut f,
            "host c c 10.0.0.3/32 md5",
            Position::After(sel("host all all 127.0.0.1/32 x")),
        );
        present(&mut f, "host d d 10.0.0.4/32 md5", Position::Last);
        let lines: Vec<String> = text(&f)
            .lines()
            .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
            .collect();
        assert_eq!(
            lines,
            [
                "# header",
                "# more",
                "",
                "host a",
                "# admin",
                "local all",
                "",
                "host b",
                "# IPv4",
                "host all",
                "host c",
                "host replication",
                "host d"
            ]
        );
        let err = f
            .apply(&Change::Present {
                rule: rule("host e e 10.0.0.5/32 md5"),
                position: Position::After(sel("host nope nope 1.1.1.1/32 x")),
            })
            .unwrap_err();
        assert!(err.to_string().contains("matches no rule"), "{err}");
    }

    #[test]
    fn update_in_place_touches_one_line() {
        let mut f = parse(BASE.as_bytes());
        assert_eq!(
            present(
                &mut f,
                "host all all 127.0.0.1/32 md5 # legacy",
                Position::First
            ),
            RuleAction::Updated
        );
        let before: Vec<&str> = BASE.lines().collect();
        let t = text(&f);
        let after: Vec<&str> = t.lines().collect();
        assert_eq!(before.len(), after.len());
        let diff: Vec<usize> = (0..before.len())
            .filter(|&i| before[i] != after[i])
            .collect();
        assert_eq!(diff, [7]);
        assert!(after[7].ends_with("md5 # legacy"));
    }

    #[test]
    fn exclusive_keeps_header_and_is_idempotent() {
        let mut f = parse(BASE.as_bytes());
        let want = [
            rule("local all postgres peer"),
            rule("host app app 10.0.0.0/8 scram-sha-256"),
        ];
        let out = f.set_exclusive(&want).unwrap();
        let actions: Vec<_> = out.iter().map(|o| o.action).collect();
        assert_eq!(
            actions,
            [
                RuleAction::Unchanged,
                RuleAction::Added,
                RuleAction::Removed,
                RuleAction::Removed
            ]
        );
        let first = text(&f);
        assert!(first
            .starts_with("# header\n# more header\n\n# admin\nlocal   all             postgres"));
        assert_eq!(first.matches('\n').count(), 6);
        let mut again = parse(first.as_bytes());
        again.set_exclusive(&want).unwrap();
        assert_eq!(text(&again), first);
        assert!(f
            .set_exclusive(&[want[1].clone(), want[1].clone()])
            .is_err());
    }

    #[test]
    fn crlf_files_get_crlf_lines() {
        let base = "# header\r\nlocal all all peer\r\n";
        let mut f = parse(base.as_bytes());
        present(&mut f, "host app app 10.0.0.0/8 md5", Position::Last);
        present(&mut f, "host b b 10.0.0.0/8 md5", Position::First);
        let t = text(&f);
        assert_eq!(t.matches("\r\n").count(), t.matches('\n').count(), "{t:?}");
        let mut f = parse(b"local all all peer\r\nlocal x x peer");
        present(&mut f, "host app app 10.0.0.0/8 md5", Position::Last);
        let t = text(&f);
        assert!(
            t.starts_with("local all all peer\r\nlocal x x peer\r\nhost"),
            "{t:?}"
        );
        assert!(!t.ends_with('\n'), "no final newline, as before: {t:?}");
    }

    #[test]
    fn a_trailing_comment_on_a_matching_rule_is_kept_and_no_change() {
        let base = "host app app 10.0.0.0/8 md5 # ticket 42\n";
        let mut f = parse(base.as_bytes());
        assert_eq!(
            present(&mut f, "host app app 10.0.0.0/8 md5", Position::Last),
            RuleAction::Unchanged
        );
        assert_eq!(text(&f), base);
        // A changed method keeps the comment.
        present(
            &mut f,
            "host app app 10.0.0.0/8 scram-sha-256",
            Position::Last,
        );
        assert!(
            text(&f).ends_with("scram-sha-256 # ticket 42\n"),
            "{}",
            text(&f)
        );
        // exclusive keeps it too.
        let mut f = parse(base.as_bytes());
        let out = f
            .set_exclusive(&[rule("host app app 10.0.0.0/8 md5")])
            .unwrap();
        assert_eq!(out[0].action, RuleAction::Unchanged);
        assert_eq!(text(&f), base);
    }

    #[test]
    fn quoted_names_with_commas_and_quotes_are_matched() {
        let base = "host \"db,one\",\"a\"\"b\" all 10.0.0.0/8 md5\n";
        let mut f = parse(base.as_bytes());
        let names =
            crate::hba::parse_names("databases", &["db,one".into(), "a\"b".into()]).unwrap();
        let mut r = rule("host x all 10.0.0.0/8 md5");
        r.databases = names;
        let out = f
            .apply(&Change::Present {
                rule: r.clone(),
                position: Position::Last,
            })
            .unwrap();
        assert_eq!(out.action, RuleAction::Unchanged);
        assert_eq!(text(&f), base);
        // Written fresh, it reads back as the same names.
        let mut f = parse(b"");
        f.apply(&Change::Present {
            rule: r.clone(),
            position: Position::Last,
        })
        .unwrap();
        let back = parse(text(&f).as_bytes());
        assert!(back.rule(0).unwrap().same_content(&r), "{}", text(&f));
    }

    #[test]
    fn warns_about_shadowed_and_duplicate_rules() {
        let mut f = parse(b"host all all 0.0.0.0/0 reject\n");
        present(&mut f, "host app app 10.0.0.1/32 md5", Position::Last);
        let w = f.warnings_for(&rule("host app app 10.0.0.1/32 md5"));
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("line 1"), "{w:?}");
        let f = parse(b"host a a 10.0.0.1/32 md5\nhost a a 10.0.0.1/32 trust\n");
        assert_eq!(f.warnings_for(&rule("host a a 10.0.0.1/32 md5")).len(), 1);
    }
}
