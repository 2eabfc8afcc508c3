//! The edit planner: applies "this rule present/absent" and "exactly these rules" to a parsed
//! file, touching only the records it must. Nothing here does I/O, so every plan can be shown
//! (check mode, diff) before anything is written.

use super::address::Address;
use super::error::HbaError;
use super::file::{HbaFile, Record, RecordKind};
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
        let outcome = |action| {
            Ok(RuleOutcome {
                rule: rule.clone(),
                action,
            })
        };
        if let Some(i) = self.find(rule) {
            if self.records[i].rule().is_some_and(|r| r.same_content(rule)) {
                return outcome(RuleAction::Unchanged);
            }
            self.records[i] = Record::from_rule(rule.clone());
            return outcome(RuleAction::Updated);
        }
        let at = self.insertion_point(position)?;
        if at > 0 && self.records[at - 1].dangles() {
            return Err(HbaError::Plan(format!(
                "line {} ends with a continuation backslash at the end of the file, so a rule written after it would be joined to it; remove the backslash first",
                self.line_of(at - 1)
            )));
        }
        self.records.insert(at, Record::from_rule(rule.clone()));
        outcome(RuleAction::Added)
    }

    fn ensure_absent(&mut self, rule: &Rule) -> RuleOutcome {
        let before = self.records.len();
        self.records
            .retain(|r| !r.rule().is_some_and(|r| r.same_identity(rule)));
        let action = if self.records.len() < before {
            RuleAction::Removed
        } else {
            RuleAction::Unchanged
        };
        RuleOutcome {
            rule: rule.clone(),
            action,
        }
    }

    fn insertion_point(&self, position: &Position) -> Result<usize, HbaError> {
        let rules: Vec<usize> = self.rules().map(|(i, _)| i).collect();
        let matching = |sel: &Selector| -> Result<Vec<usize>, HbaError> {
            let m: Vec<usize> = self
                .rules()
                .filter(|(_, r)| sel.matches(r))
                .map(|(i, _)| i)
                .collect();
            if m.is_empty() {
                return Err(HbaError::Plan(format!(
                    "anchor ({}) matches no rule in the file",
                    sel.describe()
                )));
            }
            Ok(m)
        };
        Ok(match position {
            Position::First => rules
                .first()
                .map_or(self.records.len(), |&i| self.block_start(i)),
            Position::Last => rules.last().map_or(self.records.len(), |&i| i + 1),
            Position::Before(sel) => self.block_start(matching(sel)?[0]),
            Position::After(sel) => matching(sel)?.last().copied().unwrap_or_default() + 1,
        })
    }

    /// Start of the comment lines directly above record `i` (they describe it, so a rule
    /// inserted "before" it goes above them) unless they are the file's opening header.
    fn block_start(&self, i: usize) -> usize {
        let mut j = i;
        while j > 0 && self.records[j - 1].is_comment() {
            j -= 1;
        }
        if j == 0 {
            i
        } else {
            j
        }
    }

    /// Makes the file's rules exactly `rules`, in order, keeping the leading comment block.
    /// Records whose content is already right keep their bytes.
    pub fn set_exclusive(&mut self, rules: &[Rule]) -> Result<Vec<RuleOutcome>, HbaError> {
        for (i, a) in rules.iter().enumerate() {
            if let Some(j) = rules[i + 1..].iter().position(|b| b.same_identity(a)) {
                return Err(HbaError::Plan(format!(
                    "rules[{i}] and rules[{}] have the same type, databases, users and address: `{a}`",
                    i + 1 + j
                )));
            }
        }
        let current: Vec<&Record> = self
            .records
            .iter()
            .filter(|r| !matches!(r.kind, RecordKind::Blank | RecordKind::Comment))
            .collect();
        let already = current.len() == rules.len()
            && current
                .iter()
                .zip(rules)
                .all(|(r, want)| r.rule().is_some_and(|r| r.same_content(want)));
        let mut outcomes = Vec::new();
        for want in rules {
            let action = match self.find(want).map(|i| &self.records[i]) {
                Some(r) if r.rule().is_some_and(|r| r.same_content(want)) => RuleAction::Unchanged,
                Some(_) => RuleAction::Updated,
                None => RuleAction::Added,
            };
            outcomes.push(RuleOutcome {
                rule: want.clone(),
                action,
            });
        }
        for (_, old) in self.rules() {
            if !rules.iter().any(|w| w.same_identity(old)) {
                outcomes.push(RuleOutcome {
                    rule: old.clone(),
                    action: RuleAction::Removed,
                });
            }
        }
        if already {
            return Ok(outcomes);
        }
        let header: Vec<Record> = self
            .records
            .iter()
            .take_while(|r| matches!(r.kind, RecordKind::Blank | RecordKind::Comment))
            .cloned()
            .collect();
        if let Some(last) = header.last().filter(|r| r.dangles() && !rules.is_empty()) {
            return Err(HbaError::Plan(format!(
                "the comment `{}` ends with a continuation backslash at the end of the file, so rules written after it would be joined to it; remove the backslash first",
                last.text()
            )));
        }
        let body = rules.iter().map(|want| {
            self.rules()
                .find(|(i, r)| r.same_content(want) && !self.records[*i].dangles())
                .map(|(i, _)| self.records[i].clone())
                .unwrap_or_else(|| Record::from_rule(want.clone()))
        });
        self.records = header.into_iter().chain(body).collect();
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
                self.records[i].text().trim()
            ));
        }
        for (i, _) in self
            .rules()
            .filter(|&(i, r)| i > at && r.same_identity(rule))
        {
            out.push(format!(
                "line {} (`{}`) has the same type, databases, users and address as line {} and is never used",
                self.line_of(i),
                self.records[i].text().trim(),
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
            let mut f = HbaFile::parse(base.as_bytes());
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
        let mut f = HbaFile::parse(BASE.as_bytes());
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
        let mut f = HbaFile::parse(BASE.as_bytes());
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
        let mut f = HbaFile::parse(BASE.as_bytes());
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
        let mut again = HbaFile::parse(first.as_bytes());
        again.set_exclusive(&want).unwrap();
        assert_eq!(text(&again), first);
        assert!(f
            .set_exclusive(&[want[1].clone(), want[1].clone()])
            .is_err());
    }

    #[test]
    fn warns_about_shadowed_and_duplicate_rules() {
        let mut f = HbaFile::parse(b"host all all 0.0.0.0/0 reject\n");
        present(&mut f, "host app app 10.0.0.1/32 md5", Position::Last);
        let w = f.warnings_for(&rule("host app app 10.0.0.1/32 md5"));
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("line 1"), "{w:?}");
        let f = HbaFile::parse(b"host a a 10.0.0.1/32 md5\nhost a a 10.0.0.1/32 trust\n");
        assert_eq!(f.warnings_for(&rule("host a a 10.0.0.1/32 md5")).len(), 1);
    }
}
