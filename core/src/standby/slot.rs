//! Replication slot names: one rule, used by the module, the agent and (through the module's
//! answer) the playbooks.
//!
//! **The rule.** A member's slot is its name in lower case, with every character outside
//! `[a-z0-9_]` replaced by `_` (`DB1` → `db1`, `db2.lab.example` → `db2_lab_example`). A
//! result longer than 63 bytes (PostgreSQL's limit) keeps its first 54 bytes and gets `_` and
//! the first 8 hex digits of the SHA-256 of the member name, so two long names that share a
//! prefix still get two slots. Two members whose names give the same slot (`db-1`, `db_1`)
//! are a configuration error that [`check_unique`] reports: they would share one slot and
//! each would take WAL from under the other.
//!
//! Before this rule there were others (the playbook's `regex_replace('[^a-z0-9_]', '_')`,
//! which made `DB1` into `__1`; the module's default from the short host name, which made
//! `db1.example.com` into `db1`). [`legacy_slot_names`] lists what they gave for a member, so
//! the leader can find such a slot and drop it once nobody streams from it: a forgotten slot
//! keeps WAL forever.

use sha2::{Digest, Sha256};
use thiserror::Error;

/// PostgreSQL's NAMEDATALEN - 1.
pub const MAX_SLOT_LEN: usize = 63;

/// The replication slot of the member called `member` (see the module documentation).
pub fn slot_name(member: &str) -> String {
    let plain: String = member
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '_') => c,
            _ => '_',
        })
        .collect();
    if plain.len() <= MAX_SLOT_LEN {
        return plain;
    }
    let digest = Sha256::digest(member.as_bytes());
    let hex: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    format!("{}_{hex}", &plain[..MAX_SLOT_LEN - 9])
}

/// Whether `slot` is a name PostgreSQL accepts for a slot (and so one this rule could make).
pub fn is_valid_slot_name(slot: &str) -> bool {
    !slot.is_empty()
        && slot.len() <= MAX_SLOT_LEN
        && slot
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Two members whose names give one slot.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[error("members {first:?} and {second:?} would share the replication slot {slot:?}: rename one of them")]
pub struct SlotCollision {
    pub first: String,
    pub second: String,
    pub slot: String,
}

/// Every collision among `members` (each pair once, in the order given).
pub fn check_unique<'a>(members: impl IntoIterator<Item = &'a str>) -> Vec<SlotCollision> {
    let mut seen: Vec<(String, &str)> = Vec::new();
    let mut out = Vec::new();
    for m in members {
        let slot = slot_name(m);
        match seen.iter().find(|(s, n)| *s == slot && *n != m) {
            Some((_, first)) => out.push(SlotCollision {
                first: first.to_string(),
                second: m.to_string(),
                slot,
            }),
            None => seen.push((slot, m)),
        }
    }
    out
}

/// Slot names older rules gave `member` that differ from [`slot_name`]'s: the playbook's
/// (`[^a-z0-9_]` → `_` without lowering the case first) and the module's former default
/// (the short name, up to the first dot, lowered).
pub fn legacy_slot_names(member: &str) -> Vec<String> {
    let playbook: String = member
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '_' => c,
            _ => '_',
        })
        .collect();
    let short = member.split('.').next().unwrap_or(member);
    let module: String = short
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(MAX_SLOT_LEN)
        .collect();
    let current = slot_name(member);
    let mut out: Vec<String> = Vec::new();
    for s in [playbook, module] {
        if s != current && is_valid_slot_name(&s) && !out.contains(&s) {
            out.push(s);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_rule() {
        assert_eq!(slot_name("db1"), "db1");
        assert_eq!(slot_name("DB1"), "db1");
        assert_eq!(slot_name("db2.lab.example"), "db2_lab_example");
        assert_eq!(slot_name("db-1.Lab"), "db_1_lab");
        // Non-ASCII letters are one `_` each, not one per byte.
        assert_eq!(slot_name("nöde"), "n_de");
        for name in ["DB1", "db2.lab.example", "x", "ÄÖÜ"] {
            assert!(is_valid_slot_name(&slot_name(name)), "{name}");
        }
    }

    #[test]
    fn long_names_stay_within_63_bytes_and_apart() {
        let a = format!("{}.a", "n".repeat(80));
        let b = format!("{}.b", "n".repeat(80));
        let (sa, sb) = (slot_name(&a), slot_name(&b));
        assert_eq!(sa.len(), 63, "{sa}");
        assert!(is_valid_slot_name(&sa) && is_valid_slot_name(&sb));
        assert_ne!(sa, sb);
        assert!(sa.starts_with(&"n".repeat(54)));
        // Exactly 63 bytes is kept as it is.
        assert_eq!(slot_name(&"m".repeat(63)), "m".repeat(63));
        assert_eq!(slot_name(&"m".repeat(64)).len(), 63);
    }

    #[test]
    fn collisions_are_reported() {
        assert!(check_unique(["DB1", "db2.lab.example", "aux"]).is_empty());
        let c = check_unique(["db-1", "db2", "db_1"]);
        assert_eq!(
            c,
            [SlotCollision {
                first: "db-1".into(),
                second: "db_1".into(),
                slot: "db_1".into()
            }]
        );
        assert!(c[0]
            .to_string()
            .contains("would share the replication slot"));
        // The same name twice is one member, not a collision.
        assert!(check_unique(["db1", "db1"]).is_empty());
    }

    #[test]
    fn what_the_older_rules_gave() {
        // The playbook's regex made upper case into `_`; the module's default cut at the dot.
        assert_eq!(legacy_slot_names("DB1"), ["__1"]);
        assert_eq!(legacy_slot_names("db2.lab.example"), ["db2"]);
        assert_eq!(legacy_slot_names("Db-2.Lab"), ["_b_2__ab", "db_2"]);
        // Plain names were the same under every rule.
        assert!(legacy_slot_names("db1").is_empty());
        assert!(legacy_slot_names("db_1").is_empty());
    }
}
