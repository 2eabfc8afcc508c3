//! pgBackRest-style ini files (`[section]`, `key=value`, `#` comments, a key may repeat for a
//! list option). Edits are line-preserving: a module owns some keys of some sections and
//! rewrites only those; everything else (foreign keys, comments, order) stays as it was.

/// One line of an ini file, classified.
enum Line<'a> {
    Section(&'a str),
    Key(&'a str),
    Other,
}

fn classify(line: &str) -> Line<'_> {
    let t = line.trim();
    if t.is_empty() || t.starts_with('#') {
        Line::Other
    } else if let Some(name) = t.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
        Line::Section(name.trim())
    } else if let Some((k, _)) = t.split_once('=') {
        Line::Key(k.trim())
    } else {
        Line::Other
    }
}

/// The section each line belongs to ("" before the first header).
fn sections_of(lines: &[&str]) -> Vec<String> {
    let mut current = String::new();
    lines
        .iter()
        .map(|l| {
            if let Line::Section(name) = classify(l) {
                current = name.to_string();
            }
            current.clone()
        })
        .collect()
}

/// Every value of `key` in `[section]`, in file order (a section may appear more than once).
pub fn get_all(text: &str, section: &str, key: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let sections = sections_of(&lines);
    lines
        .iter()
        .zip(&sections)
        .filter(|(l, s)| s.as_str() == section && matches!(classify(l), Line::Key(k) if k == key))
        .filter_map(|(l, _)| l.split_once('=').map(|(_, v)| v.trim().to_string()))
        .collect()
}

/// The value of `key` in `[section]` (the last one wins, as in pgBackRest).
pub fn get(text: &str, section: &str, key: &str) -> Option<String> {
    get_all(text, section, key).pop()
}

/// The names of every section, in order of first appearance.
pub fn sections(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for l in text.lines() {
        if let Line::Section(name) = classify(l) {
            if !out.iter().any(|n| n == name) {
                out.push(name.to_string());
            }
        }
    }
    out
}

/// Replaces the keys of `[section]` for which `managed` holds with `desired` (in this order;
/// a key may repeat). The new lines take the place of the first managed line, or go at the end
/// of the section's first appearance; a missing section is appended. With `desired` empty and
/// nothing but blank lines and comments left, the section header goes too. Stable: applying
/// the same edit twice gives the same text.
pub fn set_section(
    text: &str,
    section: &str,
    managed: impl Fn(&str) -> bool,
    desired: &[(String, String)],
) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let owner = sections_of(&lines);
    let rendered: Vec<String> = desired.iter().map(|(k, v)| format!("{k}={v}")).collect();

    let mut out: Vec<String> = Vec::new();
    let mut inserted = false;
    let mut header_at: Option<usize> = None;
    for (i, line) in lines.iter().enumerate() {
        let mine = owner[i] == section;
        match classify(line) {
            Line::Section(name) if name == section && header_at.is_none() => {
                header_at = Some(out.len());
            }
            Line::Key(k) if mine && managed(k) => {
                if !inserted {
                    out.extend(rendered.iter().cloned());
                    inserted = true;
                }
                continue;
            }
            _ => {}
        }
        // Leaving the section's first appearance without a managed line: add ours at its end.
        let next_leaves = lines.get(i + 1).is_none_or(|_| {
            owner[i + 1] != section || matches!(classify(lines[i + 1]), Line::Section(_))
        });
        out.push(line.to_string());
        if let (true, Some(h), false, true) = (mine, header_at, inserted, next_leaves) {
            // Before the section's trailing blank lines, so it stays visually grouped.
            let mut at = out.len();
            while at > h + 1 && out[at - 1].trim().is_empty() {
                at -= 1;
            }
            for (n, r) in rendered.iter().enumerate() {
                out.insert(at + n, r.clone());
            }
            inserted = true;
        }
    }
    if !inserted && !rendered.is_empty() {
        if out.last().is_some_and(|l| !l.trim().is_empty()) {
            out.push(String::new());
        }
        out.push(format!("[{section}]"));
        out.extend(rendered);
    }
    if let (Some(h), true) = (header_at, desired.is_empty()) {
        drop_if_empty(&mut out, h);
    }
    let mut s = out.join("\n");
    if !s.is_empty() {
        s.push('\n');
    }
    s
}

/// Removes the section whose header is at `h` when no key is left in it (its comments and
/// blank lines go with it: they described keys that are gone).
fn drop_if_empty(out: &mut Vec<String>, h: usize) {
    let end = (h + 1..out.len())
        .find(|&i| matches!(classify(&out[i]), Line::Section(_)))
        .unwrap_or(out.len());
    if (h + 1..end).any(|i| matches!(classify(&out[i]), Line::Key(_))) {
        return;
    }
    out.drain(h..end);
    // No blank line left dangling at the end of the file.
    while out.last().is_some_and(|l| l.trim().is_empty()) {
        out.pop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn reads_sections() {
        let text = "[global]\ntls-server-port=8433\n# x=y\n[main]\npg1-path = /var/lib/pg\n[global]\ntls-server-address=db1\ntls-server-auth=a=main\ntls-server-auth=b=main\n";
        assert_eq!(
            get(text, "global", "tls-server-port").as_deref(),
            Some("8433")
        );
        assert_eq!(
            get(text, "global", "tls-server-address").as_deref(),
            Some("db1")
        );
        assert_eq!(
            get(text, "main", "pg1-path").as_deref(),
            Some("/var/lib/pg")
        );
        assert_eq!(get(text, "main", "tls-server-port"), None);
        assert_eq!(
            get_all(text, "global", "tls-server-auth"),
            ["a=main", "b=main"]
        );
        assert_eq!(sections(text), ["global", "main"]);
    }

    #[test]
    fn replaces_managed_keys_in_place_and_keeps_the_rest() {
        let text = "# site settings\n[global]\nlog-level-file=detail\nrepo1-path=/old\n# why\nrepo1-retention-full=9\n\n[other]\nx=1\n";
        let managed = |k: &str| k.starts_with("repo1-");
        let want = kv(&[
            ("repo1-path", "/var/lib/pgbackrest"),
            ("repo1-retention-full", "2"),
        ]);
        let once = set_section(text, "global", managed, &want);
        assert_eq!(
            once,
            "# site settings\n[global]\nlog-level-file=detail\nrepo1-path=/var/lib/pgbackrest\nrepo1-retention-full=2\n# why\n\n[other]\nx=1\n"
        );
        assert_eq!(set_section(&once, "global", managed, &want), once);
    }

    #[test]
    fn adds_to_the_end_of_a_section_or_appends_one() {
        let text = "[global]\nlog-level-file=detail\n\n[main]\npg1-path=/x\n";
        let got = set_section(
            text,
            "global",
            |k| k == "start-fast",
            &kv(&[("start-fast", "y")]),
        );
        assert_eq!(
            got,
            "[global]\nlog-level-file=detail\nstart-fast=y\n\n[main]\npg1-path=/x\n"
        );
        let got = set_section(text, "new", |_| true, &kv(&[("pg1-host", "db1")]));
        assert_eq!(
            got,
            "[global]\nlog-level-file=detail\n\n[main]\npg1-path=/x\n\n[new]\npg1-host=db1\n"
        );
        assert_eq!(
            set_section(&got, "new", |_| true, &kv(&[("pg1-host", "db1")])),
            got
        );
        assert_eq!(
            set_section("", "global", |_| true, &kv(&[("a", "1")])),
            "[global]\na=1\n"
        );
    }

    #[test]
    fn repeated_keys_and_removal() {
        let text = "[global]\ntls-server-auth=old=main\n";
        let want = kv(&[
            ("tls-server-auth", "db1=main"),
            ("tls-server-auth", "db2=main"),
        ]);
        let got = set_section(text, "global", |k| k == "tls-server-auth", &want);
        assert_eq!(
            got,
            "[global]\ntls-server-auth=db1=main\ntls-server-auth=db2=main\n"
        );
        let text =
            "[global]\na=1\n\n[main]\n# the main stanza\npg1-path=/x\n\n[keep]\npg1-path=/y\n";
        let gone = set_section(text, "main", |k| k.starts_with("pg"), &[]);
        assert_eq!(gone, "[global]\na=1\n\n[keep]\npg1-path=/y\n");
        // A foreign key keeps the section alive.
        let text = "[main]\npg1-path=/x\ncompress-type=zst\n";
        assert_eq!(
            set_section(text, "main", |k| k.starts_with("pg"), &[]),
            "[main]\ncompress-type=zst\n"
        );
    }
}
