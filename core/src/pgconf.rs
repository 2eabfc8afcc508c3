//! Small PostgreSQL text formats that standby setup writes: `postgresql.auto.conf` settings,
//! libpq connection strings, and `.pgpass` entries.

use thiserror::Error;

/// A value that cannot be written into one of these formats.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("{what} {value:?} cannot be written into {format}: {reason}")]
pub struct Unrepresentable {
    pub what: String,
    pub value: String,
    pub format: &'static str,
    pub reason: &'static str,
}

/// Refuses what none of these line-based formats can carry: line breaks (a new line is a new
/// setting or entry), NUL (C strings end there) and other control characters. `what` names
/// the option for the message; a secret's `value` is never echoed (`secret`).
pub fn check_value(
    what: &str,
    value: &str,
    format: &'static str,
    secret: bool,
) -> Result<(), Unrepresentable> {
    let reason = if value.contains(['\n', '\r']) {
        "line breaks are refused"
    } else if value.contains('\0') {
        "NUL characters are refused"
    } else if value.chars().any(|c| c.is_control() && c != '\t') {
        "control characters are refused"
    } else {
        return Ok(());
    };
    Err(Unrepresentable {
        what: what.to_string(),
        value: if secret {
            "********".into()
        } else {
            value.to_string()
        },
        format,
        reason,
    })
}

/// Quotes a value for postgresql.conf / postgresql.auto.conf as ALTER SYSTEM does: `'...'`
/// with quotes doubled and backslashes doubled (the configuration scanner reads `\` escapes
/// inside quoted values, so a lone backslash would swallow the closing quote). Line breaks
/// cannot be represented: check values with [`check_value`] first.
pub fn conf_quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

/// Reads a quoted or bare value of a `key = value` line (the part after `=`), undoing the
/// escapes PostgreSQL's configuration scanner knows (`GUC_scanstr`).
fn conf_unquote(raw: &str) -> String {
    let raw = raw.trim();
    let Some(q) = raw.strip_prefix('\'') else {
        return raw
            .split(|c: char| c.is_whitespace() || c == '#')
            .next()
            .unwrap_or("")
            .to_string();
    };
    let mut out = String::new();
    let mut chars = q.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' if chars.peek() == Some(&'\'') => {
                chars.next();
                out.push('\'');
            }
            '\'' => break,
            '\\' => match chars.next() {
                Some('b') => out.push('\u{8}'),
                Some('f') => out.push('\u{c}'),
                Some('n') => out.push('\n'),
                Some('r') => out.push('\r'),
                Some('t') => out.push('\t'),
                Some(d @ '0'..='7') => {
                    let mut n = d.to_digit(8).unwrap_or(0);
                    for _ in 0..2 {
                        match chars.peek().and_then(|c| c.to_digit(8)) {
                            Some(x) => {
                                n = n * 8 + x;
                                chars.next();
                            }
                            None => break,
                        }
                    }
                    out.extend(char::from_u32(n));
                }
                Some(other) => out.push(other),
                None => {}
            },
            c => out.push(c),
        }
    }
    out
}

fn line_key(line: &str) -> Option<&str> {
    let t = line.trim_start();
    if t.starts_with('#') || t.is_empty() {
        return None;
    }
    let end = t
        .find(|c: char| c == '=' || c.is_whitespace())
        .unwrap_or(t.len());
    Some(&t[..end])
}

/// The value of `key` (the last setting wins, as in PostgreSQL).
pub fn conf_get(text: &str, key: &str) -> Option<String> {
    text.lines()
        .rev()
        .find(|l| line_key(l).is_some_and(|k| k.eq_ignore_ascii_case(key)))
        .map(|l| {
            let t = l.trim_start()[key.len()..].trim_start();
            conf_unquote(t.strip_prefix('=').unwrap_or(t))
        })
}

/// Sets (`Some`) or removes (`None`) settings, keeping every other line as it is. A key set
/// several times keeps one line, where it first stood.
pub fn conf_set(text: &str, settings: &[(&str, Option<&str>)]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut written: Vec<&str> = Vec::new();
    for line in text.lines() {
        let hit =
            line_key(line).and_then(|k| settings.iter().find(|(s, _)| s.eq_ignore_ascii_case(k)));
        match hit {
            None => out.push(line.to_string()),
            Some((k, _)) if written.contains(k) => {}
            Some((k, None)) => written.push(k),
            Some((k, Some(v))) => {
                out.push(format!("{k} = {}", conf_quote(v)));
                written.push(k);
            }
        }
    }
    for (k, v) in settings {
        if let (false, Some(v)) = (written.contains(k), v) {
            out.push(format!("{k} = {}", conf_quote(v)));
        }
    }
    let mut s = out.join("\n");
    if !s.is_empty() {
        s.push('\n');
    }
    s
}

/// A libpq connection string from key/value pairs, quoting values that need it (libpq reads
/// `\\` and `\'` inside quotes). Line breaks cannot be represented safely: check values with
/// [`check_value`] first.
pub fn conninfo(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| {
            if !v.is_empty() && !v.contains(|c: char| c.is_whitespace() || c == '\'' || c == '\\') {
                format!("{k}={v}")
            } else {
                format!("{k}='{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The value of `key` in a libpq keyword/value connection string (`key=value`, values
/// bare or single-quoted with `\\` and `\'` escapes, spaces around `=` allowed), as libpq
/// reads it; the last occurrence wins. None when absent or the string is malformed.
pub fn conninfo_get(info: &str, key: &str) -> Option<String> {
    let mut it = info.chars().peekable();
    let mut found = None;
    loop {
        while it.next_if(|c| c.is_whitespace()).is_some() {}
        if it.peek().is_none() {
            return found;
        }
        let mut k = String::new();
        while let Some(c) = it.next_if(|c| *c != '=' && !c.is_whitespace()) {
            k.push(c);
        }
        while it.next_if(|c| c.is_whitespace()).is_some() {}
        it.next_if_eq(&'=')?;
        while it.next_if(|c| c.is_whitespace()).is_some() {}
        let mut v = String::new();
        if it.next_if_eq(&'\'').is_some() {
            loop {
                match it.next()? {
                    '\\' => v.push(it.next()?),
                    '\'' => break,
                    c => v.push(c),
                }
            }
        } else {
            while let Some(c) = it.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    v.push(it.next()?);
                } else {
                    v.push(c);
                }
            }
        }
        if k == key {
            found = Some(v);
        }
    }
}

/// Escapes backslash and `:` in one `.pgpass` field.
pub fn pgpass_escape(field: &str) -> String {
    field.replace('\\', "\\\\").replace(':', "\\:")
}

fn pgpass_fields(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => fields.last_mut().expect("one field").extend(chars.next()),
            ':' => fields.push(String::new()),
            c => fields.last_mut().expect("one field").push(c),
        }
    }
    fields
}

/// The password `.pgpass` text holds for a connection, as libpq picks it: the first line
/// whose host, port, database and user match (`*` matches anything; comments skipped).
pub fn pgpass_lookup(
    text: &str,
    host: &str,
    port: u16,
    database: &str,
    user: &str,
) -> Option<String> {
    let port = port.to_string();
    let want = [host, port.as_str(), database, user];
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .map(pgpass_fields)
        .find(|f| {
            f.len() == 5
                && f[..4]
                    .iter()
                    .zip(want)
                    .all(|(have, w)| have == "*" || have == w)
        })
        .map(|f| f[4].clone())
}

/// One `.pgpass` line.
pub fn pgpass_line(host: &str, port: u16, database: &str, user: &str, password: &str) -> String {
    [host, &port.to_string(), database, user, password]
        .map(pgpass_escape)
        .join(":")
}

/// Merges an entry into `.pgpass` text: the line for the same host, port, database and user
/// is replaced in place (or appended); every other line stays.
pub fn pgpass_merge(
    text: &str,
    host: &str,
    port: u16,
    database: &str,
    user: &str,
    password: &str,
) -> String {
    let key = [
        host.to_string(),
        port.to_string(),
        database.to_string(),
        user.to_string(),
    ];
    let new = pgpass_line(host, port, database, user, password);
    let mut found = false;
    let mut out: Vec<String> = Vec::new();
    for line in text.lines() {
        let f = pgpass_fields(line);
        if !line.starts_with('#') && f.len() == 5 && f[..4] == key {
            if !found {
                out.push(new.clone());
                found = true;
            }
        } else {
            out.push(line.to_string());
        }
    }
    if !found {
        out.push(new);
    }
    out.join("\n") + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_conf_set_and_get() {
        let text = "# Do not edit this file manually!\n# It will be overwritten by the ALTER SYSTEM command.\nwork_mem = '8MB'\nprimary_conninfo = 'host=old'\nprimary_conninfo = 'host=older'\n";
        let new = conf_set(
            text,
            &[
                ("primary_conninfo", Some("host=db1 passfile='/x y'")),
                ("primary_slot_name", Some("db2")),
            ],
        );
        assert_eq!(
            new,
            "# Do not edit this file manually!\n# It will be overwritten by the ALTER SYSTEM command.\nwork_mem = '8MB'\nprimary_conninfo = 'host=db1 passfile=''/x y'''\nprimary_slot_name = 'db2'\n"
        );
        assert_eq!(
            conf_get(&new, "primary_conninfo").as_deref(),
            Some("host=db1 passfile='/x y'")
        );
        assert_eq!(conf_get(&new, "work_mem").as_deref(), Some("8MB"));
        assert_eq!(conf_get(&new, "primary_slot_name").as_deref(), Some("db2"));
        assert_eq!(conf_get(&new, "missing"), None);
        assert_eq!(
            conf_set(&new, &[("primary_slot_name", None)])
                .matches("slot")
                .count(),
            0
        );
        assert_eq!(
            conf_set(
                &new,
                &[
                    ("primary_conninfo", Some("host=db1 passfile='/x y'")),
                    ("primary_slot_name", Some("db2"))
                ]
            ),
            new
        );
    }

    #[test]
    fn hostile_values_round_trip_through_auto_conf() {
        for v in [
            "x' primary_slot_name='evil",
            "back\\slash\\",
            "\\'",
            "''",
            "host=db1 application_name='a\\'b'",
            "non-ASCII: ü ✓",
            "tab\there",
        ] {
            let text = conf_set("", &[("primary_conninfo", Some(v))]);
            assert_eq!(text.lines().count(), 1, "{text}");
            assert_eq!(
                conf_get(&text, "primary_conninfo").as_deref(),
                Some(v),
                "{text}"
            );
        }
        assert_eq!(conf_unquote(r"'a\nb\101\q'"), "a\nbAq");
    }

    #[test]
    fn check_value_refuses_line_breaks_and_hides_secrets() {
        assert!(check_value("application_name", "ok 'quoted' \\ ü", "conninfo", false).is_ok());
        let e = check_value("replication_password", "a\nb", ".pgpass", true).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("replication_password \"********\""),
            "{e}"
        );
        assert!(check_value("x", "nul\0", "f", false).is_err());
        assert!(check_value("x", "bell\u{7}", "f", false).is_err());
    }

    #[test]
    fn conninfo_quotes_only_when_needed() {
        assert_eq!(
            conninfo(&[("host", "db1"), ("passfile", "/a b/.pgpass"), ("x", "it's")]),
            "host=db1 passfile='/a b/.pgpass' x='it\\'s'"
        );
    }

    #[test]
    fn pgpass_lookup_first_match_wildcards_escapes() {
        let text =
            "# comment\nother:5432:*:u:no\n*:5432:db:u:first\n*:*:*:u:second\nh\\:x:1:*:v:p\\:w\n";
        assert_eq!(
            pgpass_lookup(text, "h1", 5432, "db", "u").as_deref(),
            Some("first")
        );
        assert_eq!(
            pgpass_lookup(text, "h1", 5433, "db", "u").as_deref(),
            Some("second")
        );
        assert_eq!(
            pgpass_lookup(text, "h:x", 1, "d", "v").as_deref(),
            Some("p:w")
        );
        assert_eq!(pgpass_lookup(text, "h1", 5432, "db", "nobody"), None);
    }

    #[test]
    fn pgpass_merges_in_place() {
        let text = "# mine\nother:5432:*:u:p\ndb1:5432:replication:repl:old\n";
        let merged = pgpass_merge(text, "db1", 5432, "replication", "repl", "n:ew\\pw");
        assert_eq!(
            merged,
            "# mine\nother:5432:*:u:p\ndb1:5432:replication:repl:n\\:ew\\\\pw\n"
        );
        assert_eq!(
            pgpass_merge(&merged, "db1", 5432, "replication", "repl", "n:ew\\pw"),
            merged
        );
        assert_eq!(
            pgpass_merge("", "db2", 5432, "replication", "repl", "x"),
            "db2:5432:replication:repl:x\n"
        );
    }

    #[test]
    fn conninfo_get_reads_what_conninfo_writes() {
        let info = conninfo(&[
            ("host", "db1"),
            ("sslcert", "/etc/a b/c'd\\e.crt"),
            ("user", ""),
        ]);
        assert_eq!(conninfo_get(&info, "host").as_deref(), Some("db1"));
        assert_eq!(
            conninfo_get(&info, "sslcert").as_deref(),
            Some("/etc/a b/c'd\\e.crt")
        );
        assert_eq!(conninfo_get(&info, "user").as_deref(), Some(""));
        assert_eq!(conninfo_get(&info, "port"), None);
        assert_eq!(
            conninfo_get("port = 5433  port=5434", "port").as_deref(),
            Some("5434")
        );
        assert_eq!(conninfo_get("host='unterminated", "host"), None);
        assert_eq!(conninfo_get("nonsense", "host"), None);
    }
}
