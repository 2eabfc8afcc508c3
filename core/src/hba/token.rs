//! Tokenizer that reproduces PostgreSQL's `next_token`/`next_field_expand` (src/backend/libpq/hba.c).
//!
//! A line is a sequence of fields separated by blanks; a field is a comma-separated list of
//! tokens; double quotes protect blanks, commas and `#`, and `""` inside quotes is a literal
//! quote. A token counts as "quoted" (and so loses keyword meaning) only when it starts with a
//! quote, exactly like PostgreSQL.

/// One token of a field, with quotes removed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Token {
    pub value: String,
    pub quoted: bool,
}

impl Token {
    pub fn bare(value: &str) -> Token {
        Token {
            value: value.to_string(),
            quoted: false,
        }
    }

    /// True when this token is the unquoted keyword `kw` (PostgreSQL compares case-sensitively).
    pub fn is_keyword(&self, kw: &str) -> bool {
        !self.quoted && self.value == kw
    }

    /// What the token means to PostgreSQL: quoting a plain name changes nothing, quoting a
    /// keyword (`all`, `replication`, ...) or a `+group`/`@file`/`/regex` makes it a literal name.
    pub fn key(&self) -> (bool, &str) {
        const KEYWORDS: [&str; 5] = ["all", "sameuser", "samerole", "samegroup", "replication"];
        let special = !self.quoted
            && (KEYWORDS.contains(&self.value.as_str()) || self.value.starts_with(['+', '@', '/']));
        (special, &self.value)
    }

    /// Text for the file. Quoting is added when the value would otherwise be read differently
    /// (blanks, commas, `#`, quotes, empty) or when the token was quoted to begin with.
    pub fn render(&self) -> String {
        // A value ending in a backslash would make PostgreSQL join the next line to this one.
        let needs = self.quoted
            || self.value.is_empty()
            || self.value.ends_with('\\')
            || self
                .value
                .chars()
                .any(|c| is_blank(c) || c == ',' || c == '#' || c == '"' || c.is_control());
        if !needs {
            return self.value.clone();
        }
        let quote = |v: &str| format!("\"{}\"", v.replace('"', "\"\""));
        // An unquoted `+group`, `@file` or `/regex` keeps its meaning only when the quotes
        // start after the sign: PostgreSQL reads `+"a b"` as the group "a b".
        match self.value.chars().next() {
            Some(c @ ('+' | '@' | '/')) if !self.quoted && self.value.len() > 1 => {
                format!("{c}{}", quote(&self.value[1..]))
            }
            _ => quote(&self.value),
        }
    }
}

/// A tokenized logical line: its fields and the text after an unquoted `#`, if any.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tokenized {
    pub fields: Vec<Vec<Token>>,
    pub comment: Option<String>,
}

/// PostgreSQL's `pg_isblank`.
pub(crate) fn is_blank(c: char) -> bool {
    c == ' ' || c == '\t' || c == '\r'
}

struct Cursor<'a> {
    chars: std::iter::Peekable<std::str::Chars<'a>>,
    comment: Option<String>,
}

struct RawToken {
    token: Option<Token>,
    terminating_comma: bool,
}

impl Cursor<'_> {
    fn next_token(&mut self) -> RawToken {
        let mut out = RawToken {
            token: None,
            terminating_comma: false,
        };
        if self.comment.is_some() {
            return out;
        }
        while matches!(self.chars.peek(), Some(&c) if is_blank(c) || c == ',') {
            self.chars.next();
        }
        let mut buf = String::new();
        let (mut in_quote, mut was_quote, mut saw_quote, mut initial_quote) =
            (false, false, false, false);
        while let Some(&c) = self.chars.peek() {
            if is_blank(c) && !in_quote {
                break;
            }
            self.chars.next();
            if c == '#' && !in_quote {
                self.comment = Some(self.chars.by_ref().collect());
                break;
            }
            if c == ',' && !in_quote {
                out.terminating_comma = true;
                break;
            }
            if c != '"' || was_quote {
                buf.push(c);
            }
            if in_quote && c == '"' {
                was_quote = !was_quote;
            } else {
                was_quote = false;
            }
            if c == '"' {
                in_quote = !in_quote;
                saw_quote = true;
                if buf.is_empty() {
                    initial_quote = true;
                }
            }
        }
        if saw_quote || !buf.is_empty() {
            out.token = Some(Token {
                value: buf,
                quoted: initial_quote,
            });
        }
        out
    }
}

/// Splits one logical line (continuations already joined) into fields.
pub fn tokenize(line: &str) -> Tokenized {
    let mut cur = Cursor {
        chars: line.chars().peekable(),
        comment: None,
    };
    let mut fields = Vec::new();
    loop {
        let mut field = Vec::new();
        loop {
            let raw = cur.next_token();
            match raw.token {
                Some(t) => field.push(t),
                None => break,
            }
            if !raw.terminating_comma {
                break;
            }
        }
        if field.is_empty() {
            break;
        }
        fields.push(field);
    }
    Tokenized {
        fields,
        comment: cur.comment.map(|c| c.trim().to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(t: &Tokenized) -> Vec<Vec<(String, bool)>> {
        t.fields
            .iter()
            .map(|f| f.iter().map(|t| (t.value.clone(), t.quoted)).collect())
            .collect()
    }

    #[test]
    fn splits_fields_and_lists() {
        let t = tokenize("host db1,db2, db3 all 10.0.0.0/8 md5 # hi there ");
        assert_eq!(
            values(&t),
            vec![
                vec![("host".into(), false)],
                vec![
                    ("db1".into(), false),
                    ("db2".into(), false),
                    ("db3".into(), false)
                ],
                vec![("all".into(), false)],
                vec![("10.0.0.0/8".into(), false)],
                vec![("md5".into(), false)],
            ]
        );
        assert_eq!(t.comment.as_deref(), Some("hi there"));
    }

    #[test]
    fn quotes_protect_blanks_commas_and_hash() {
        let t = tokenize(r##"local "my db","a""b",x "#u" peer"##);
        assert_eq!(
            values(&t)[1],
            vec![
                ("my db".into(), true),
                ("a\"b".into(), true),
                ("x".into(), false)
            ]
        );
        assert_eq!(values(&t)[2], vec![("#u".into(), true)]);
        assert_eq!(t.comment, None);
    }

    #[test]
    fn quote_inside_token_is_not_initial() {
        let t = tokenize(r#"local a"ll" all peer ldapbinddn="cn=x, dc=y""#);
        assert_eq!(values(&t)[1], vec![("all".into(), false)]);
        assert_eq!(values(&t)[4], vec![("ldapbinddn=cn=x, dc=y".into(), false)]);
    }

    #[test]
    fn comment_directly_after_token() {
        let t = tokenize("local all all peer#note");
        assert_eq!(t.fields.len(), 4);
        assert_eq!(t.comment.as_deref(), Some("note"));
    }

    #[test]
    fn empty_quoted_token_is_a_token() {
        let t = tokenize(r#"local "" all peer"#);
        assert_eq!(values(&t)[1], vec![("".into(), true)]);
    }

    #[test]
    fn render_round_trips_through_tokenizer() {
        for v in [
            "plain",
            "with space",
            "a,b",
            "q\"uote",
            "#hash",
            "",
            "all",
            "end\\",
        ] {
            let tok = Token {
                value: v.into(),
                quoted: v == "all",
            };
            for special in [false, true] {
                let t = Token {
                    value: format!("+{v}"),
                    quoted: special,
                };
                let back = tokenize(&t.render());
                assert_eq!(back.fields[0][0].key(), t.key(), "{t:?}");
            }
            let back = tokenize(&tok.render());
            assert_eq!(back.fields.len(), 1, "{v}");
            assert_eq!(back.fields[0].len(), 1, "{v}");
            assert_eq!(back.fields[0][0].key(), tok.key(), "{v}");
        }
    }
}
