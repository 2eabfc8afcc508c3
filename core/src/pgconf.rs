//! Small PostgreSQL text formats that standby setup writes: `postgresql.auto.conf` settings,
//! libpq connection strings, and `.pgpass` entries.

/// Quotes a value for postgresql.conf / postgresql.auto.conf (`'...'`, quotes doubled).
pub fn conf_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// Reads a quoted or bare value of a `key = value` line (the part after `=`).
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
            '\\' => out.extend(chars.next()),
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

/// A libpq connection string from key/value pairs, quoting values that need it.
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
}
