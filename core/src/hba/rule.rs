//! One pg_hba.conf rule: parsing from tokenized fields, validation against what PostgreSQL's
//! `parse_hba_line` accepts, identity, and rendering.

use std::fmt;

use super::address::Address;
use super::error::HbaError;
use super::token::Token;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnType {
    Local,
    Host,
    HostSsl,
    HostNoSsl,
    HostGssEnc,
    HostNoGssEnc,
}

impl ConnType {
    pub const ALL: [ConnType; 6] = [
        ConnType::Local,
        ConnType::Host,
        ConnType::HostSsl,
        ConnType::HostNoSsl,
        ConnType::HostGssEnc,
        ConnType::HostNoGssEnc,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ConnType::Local => "local",
            ConnType::Host => "host",
            ConnType::HostSsl => "hostssl",
            ConnType::HostNoSsl => "hostnossl",
            ConnType::HostGssEnc => "hostgssenc",
            ConnType::HostNoGssEnc => "hostnogssenc",
        }
    }

    pub fn parse(s: &str) -> Option<ConnType> {
        ConnType::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// True when every connection of type `other` is also of type `self`.
    pub fn covers(self, other: ConnType) -> bool {
        self == other || (self == ConnType::Host && other != ConnType::Local)
    }
}

/// Major version of the server the file is for, when known; gates 16+ syntax.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServerVersion(pub u32);

/// Methods of PostgreSQL 15 that a Linux build knows (`sspi` and `bsd` are compiled out).
const METHODS: &[&str] = &[
    "trust",
    "reject",
    "scram-sha-256",
    "md5",
    "password",
    "gss",
    "ident",
    "peer",
    "pam",
    "ldap",
    "radius",
    "cert",
];

/// Options each method accepts (hba.c `parse_hba_auth_opt`); `clientcert`/`clientname` are
/// checked separately because they depend on the connection type.
fn method_options(method: &str) -> &'static [&'static str] {
    match method {
        "ident" | "peer" => &["map"],
        "cert" => &["map"],
        "gss" => &["map", "include_realm", "krb_realm"],
        "pam" => &["pamservice", "pam_use_hostname"],
        "ldap" => &[
            "ldapserver",
            "ldapport",
            "ldapscheme",
            "ldaptls",
            "ldapprefix",
            "ldapsuffix",
            "ldapbasedn",
            "ldapbinddn",
            "ldapbindpasswd",
            "ldapsearchattribute",
            "ldapsearchfilter",
            "ldapurl",
        ],
        "radius" => &[
            "radiusservers",
            "radiussecrets",
            "radiusidentifiers",
            "radiusports",
        ],
        _ => &[],
    }
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub conn_type: ConnType,
    pub databases: Vec<Token>,
    pub users: Vec<Token>,
    /// `None` exactly for `local` rules.
    pub address: Option<Address>,
    pub method: String,
    pub options: Vec<(String, String)>,
    pub comment: Option<String>,
}

impl Rule {
    /// Builds a rule from a tokenized line. Errors use PostgreSQL's wording where it has one.
    pub(crate) fn from_fields(
        fields: &[Vec<Token>],
        comment: Option<String>,
    ) -> Result<Rule, String> {
        let mut it = fields.iter();
        let single = |f: Option<&Vec<Token>>, what: &str| -> Result<Token, String> {
            match f {
                None => Err(format!("end-of-line before {what}")),
                Some(f) if f.len() > 1 => Err(format!("multiple values specified for {what}")),
                Some(f) => Ok(f[0].clone()),
            }
        };
        let t = single(it.next(), "connection type")?;
        let conn_type = ConnType::parse(&t.value)
            .filter(|_| !t.quoted)
            .ok_or_else(|| format!("invalid connection type \"{}\"", t.value))?;
        let databases = it
            .next()
            .ok_or("end-of-line before database specification")?
            .clone();
        let users = it
            .next()
            .ok_or("end-of-line before role specification")?
            .clone();
        let mut address = None;
        if conn_type != ConnType::Local {
            let a = single(it.next(), "host address")?;
            let rest: Vec<&Vec<Token>> = it.clone().collect();
            let next = rest
                .first()
                .and_then(|f| f.first())
                .map(|t| t.value.as_str());
            let (addr, used_mask) = Address::parse_file(&a.value, a.quoted, next)?;
            if used_mask {
                single(it.next(), "netmask")?;
            }
            address = Some(addr);
        }
        let method = single(it.next(), "authentication type")?.value;
        let mut options = Vec::new();
        for field in it {
            for tok in field {
                let (k, v) = tok.value.split_once('=').ok_or_else(|| {
                    format!(
                        "authentication option not in name=value format: {}",
                        tok.value
                    )
                })?;
                options.push((k.to_string(), v.to_string()));
            }
        }
        Ok(Rule {
            conn_type,
            databases,
            users,
            address,
            method,
            options,
            comment,
        })
    }

    /// Checks everything PostgreSQL 15 checks when it loads the line, plus our own input rules
    /// (no newlines, host names well-formed), so a bad rule is refused before any write.
    pub fn validate(&self, server: Option<ServerVersion>) -> Result<(), HbaError> {
        let ty = self.conn_type.as_str();
        // `/regex` names are valid on every version (PostgreSQL 15 reads them as literal
        // names): the caller warns about them, see `regex_names`.
        let _ = server;
        self.validate_identity()?;
        match (&self.address, self.conn_type) {
            (Some(a), ConnType::Local) => {
                return Err(HbaError::invalid(
                    "address",
                    a.render(),
                    "local rules take no address",
                ))
            }
            (None, t) if t != ConnType::Local => {
                return Err(HbaError::invalid(
                    "address",
                    "",
                    format!("{ty} rules need an address"),
                ))
            }
            _ => {}
        }
        let m = self.method.as_str();
        if !METHODS.contains(&m) {
            let reason = match m {
                "sspi" | "bsd" => "not supported by PostgreSQL on Linux".to_string(),
                "krb5" | "crypt" => "removed from PostgreSQL; use gss or scram-sha-256".to_string(),
                _ => format!("expected one of {}", METHODS.join(", ")),
            };
            return Err(HbaError::invalid("method", m, reason));
        }
        let local = self.conn_type == ConnType::Local;
        if local && m == "gss" {
            return Err(HbaError::invalid(
                "method",
                m,
                "gssapi authentication is not supported on local sockets",
            ));
        }
        if !local && m == "peer" {
            return Err(HbaError::invalid(
                "method",
                m,
                "peer authentication is only supported on local sockets",
            ));
        }
        if m == "cert" && self.conn_type != ConnType::HostSsl {
            return Err(HbaError::invalid(
                "method",
                m,
                "cert authentication is only supported on hostssl connections",
            ));
        }
        if self.conn_type == ConnType::HostGssEnc && !["gss", "trust", "reject"].contains(&m) {
            return Err(HbaError::invalid(
                "method",
                m,
                "GSSAPI encryption only supports gss, trust, or reject authentication",
            ));
        }
        self.validate_options()?;
        if let Some(c) = &self.comment {
            if c.contains(['\n', '\r']) {
                return Err(HbaError::invalid(
                    "comment",
                    c.clone(),
                    "must be a single line",
                ));
            }
            if c.chars().any(|ch| ch.is_control() && ch != '\t') {
                return Err(HbaError::invalid(
                    "comment",
                    c.clone(),
                    "must not hold control characters",
                ));
            }
            if c.ends_with('\\') {
                return Err(HbaError::invalid(
                    "comment",
                    c.clone(),
                    "must not end with a backslash (PostgreSQL would join the next line to it)",
                ));
            }
        }
        Ok(())
    }

    /// The names can be written to the file and read back as themselves.
    pub fn validate_identity(&self) -> Result<(), HbaError> {
        check_names("databases", &self.databases)?;
        check_names("users", &self.users)
    }

    fn validate_options(&self) -> Result<(), HbaError> {
        let m = self.method.as_str();
        let mut seen = Vec::new();
        for (k, v) in &self.options {
            let opt = || format!("{k}={v}");
            if seen.contains(&k) {
                return Err(HbaError::invalid(
                    "options",
                    opt(),
                    format!("option {k} given twice"),
                ));
            }
            seen.push(k);
            if v.contains(['\n', '\r']) {
                return Err(HbaError::invalid(
                    "options",
                    opt(),
                    "values must be a single line",
                ));
            }
            if v.chars().any(|ch| ch.is_control() && ch != '\t') {
                return Err(HbaError::invalid(
                    "options",
                    opt(),
                    "values must not hold control characters",
                ));
            }
            match k.as_str() {
                "clientcert" => {
                    if self.conn_type != ConnType::HostSsl {
                        return Err(HbaError::invalid(
                            "options",
                            opt(),
                            "clientcert can only be configured for \"hostssl\" rows",
                        ));
                    }
                    match v.as_str() {
                        "verify-full" => {}
                        "verify-ca" if m == "cert" => {
                            return Err(HbaError::invalid("options", opt(), "clientcert only accepts \"verify-full\" when using \"cert\" authentication"))
                        }
                        "verify-ca" => {}
                        _ => return Err(HbaError::invalid("options", opt(), "clientcert must be verify-ca or verify-full")),
                    }
                }
                "clientname" => {
                    if self.conn_type != ConnType::HostSsl {
                        return Err(HbaError::invalid(
                            "options",
                            opt(),
                            "clientname can only be configured for \"hostssl\" rows",
                        ));
                    }
                    if v != "CN" && v != "DN" {
                        return Err(HbaError::invalid(
                            "options",
                            opt(),
                            "clientname must be CN or DN",
                        ));
                    }
                }
                name if method_options(m).contains(&name) => check_option_value(name, v)
                    .map_err(|r| HbaError::invalid("options", opt(), r))?,
                name => {
                    let allowed = method_options(m);
                    let reason = if allowed.is_empty() {
                        format!(
                            "method {m} takes no options besides clientcert/clientname on hostssl"
                        )
                    } else {
                        format!("method {m} accepts {}", allowed.join(", "))
                    };
                    return Err(HbaError::invalid("options", format!("{name}={v}"), reason));
                }
            }
        }
        let has = |k: &str| self.options.iter().any(|(n, _)| n == k);
        if m == "ldap" {
            if !has("ldapserver") && !has("ldapurl") {
                return Err(HbaError::invalid(
                    "options",
                    "",
                    "ldap needs ldapserver or ldapurl",
                ));
            }
            let simple = has("ldapprefix") || has("ldapsuffix");
            let search = [
                "ldapbasedn",
                "ldapbinddn",
                "ldapbindpasswd",
                "ldapsearchattribute",
                "ldapsearchfilter",
            ]
            .iter()
            .any(|k| has(k));
            if simple && search {
                return Err(HbaError::invalid("options", "", "cannot mix ldapprefix/ldapsuffix with ldapbasedn, ldapbinddn, ldapbindpasswd, ldapsearchattribute, ldapsearchfilter"));
            }
        }
        if m == "radius" {
            if !has("radiusservers") || !has("radiussecrets") {
                return Err(HbaError::invalid(
                    "options",
                    "",
                    "radius needs radiusservers and radiussecrets",
                ));
            }
            // hba.c verify_option_list_length: each list has 1 entry or one per server.
            let count = |k: &str| {
                self.options
                    .iter()
                    .find(|(n, _)| n == k)
                    .map(|(_, v)| v.split(',').count())
            };
            let servers = count("radiusservers").unwrap_or(1);
            for k in ["radiussecrets", "radiusidentifiers", "radiusports"] {
                if let Some(n) = count(k).filter(|&n| n != 1 && n != servers) {
                    return Err(HbaError::invalid(
                        "options",
                        k,
                        format!("{n} values, but it needs 1 or one per server ({servers})"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Two rules are "the same rule" when they select the same connections: same type,
    /// databases, users and address. Method, options and comment are what an edit may change.
    pub fn same_identity(&self, other: &Rule) -> bool {
        self.conn_type == other.conn_type
            && same_set(&self.databases, &other.databases)
            && same_set(&self.users, &other.users)
            && match (&self.address, &other.address) {
                (None, None) => true,
                (Some(a), Some(b)) => a.same_as(b),
                _ => false,
            }
    }

    /// Same identity and same effect (options compared as a set) and same comment.
    pub fn same_content(&self, other: &Rule) -> bool {
        let mut a = self.options.clone();
        let mut b = other.options.clone();
        a.sort();
        b.sort();
        self.same_identity(other)
            && self.method == other.method
            && a == b
            && self.comment.as_deref().filter(|c| !c.is_empty())
                == other.comment.as_deref().filter(|c| !c.is_empty())
    }

    /// Uses 16+ syntax (regular expressions in names) that PostgreSQL 15 would read differently.
    pub fn needs_16(&self) -> bool {
        self.databases.iter().chain(&self.users).any(is_regex)
    }

    /// Names that PostgreSQL 16+ reads as regular expressions and 15 as literal names.
    pub fn regex_names(&self) -> impl Iterator<Item = &str> {
        self.databases
            .iter()
            .chain(&self.users)
            .filter(|t| is_regex(t))
            .map(|t| t.value.as_str())
    }

    /// This rule as it should replace `existing`: without a comment of its own it keeps the
    /// existing rule's comment (a trailing comment is the operator's note, not ours); an empty
    /// comment means "no comment".
    pub fn keeping_comment_of(&self, existing: &Rule) -> Rule {
        let mut r = self.clone();
        r.comment = match &self.comment {
            None => existing.comment.clone().filter(|c| !c.is_empty()),
            Some(c) if c.is_empty() => None,
            Some(c) => Some(c.clone()),
        };
        r
    }

    /// The line in the column layout of PostgreSQL's sample file (no newline).
    pub fn render(&self) -> String {
        let list = |toks: &[Token]| toks.iter().map(Token::render).collect::<Vec<_>>().join(",");
        let mut line = String::new();
        pad(&mut line, self.conn_type.as_str(), 8);
        pad(&mut line, &list(&self.databases), 16);
        pad(&mut line, &list(&self.users), 16);
        pad(
            &mut line,
            &self
                .address
                .as_ref()
                .map(Address::render)
                .unwrap_or_default(),
            24,
        );
        line.push_str(&self.method);
        for (k, v) in &self.options {
            line.push(' ');
            let value = Token {
                value: v.clone(),
                quoted: false,
            }
            .render();
            line.push_str(&format!("{k}={value}"));
        }
        if let Some(c) = self.comment.as_deref().filter(|c| !c.is_empty()) {
            line.push_str(" # ");
            line.push_str(c);
        }
        line
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.render().trim_end())
    }
}

fn pad(line: &mut String, text: &str, width: usize) {
    line.push_str(text);
    let n = width.saturating_sub(text.chars().count()).max(1);
    line.extend(std::iter::repeat_n(' ', n));
}

fn same_set(a: &[Token], b: &[Token]) -> bool {
    let mut a: Vec<_> = a.iter().map(Token::key).collect();
    let mut b: Vec<_> = b.iter().map(Token::key).collect();
    a.sort();
    a.dedup();
    b.sort();
    b.dedup();
    a == b
}

fn is_regex(t: &Token) -> bool {
    !t.quoted && t.value.starts_with('/')
}

fn check_names(field: &'static str, names: &[Token]) -> Result<(), HbaError> {
    if names.is_empty() {
        return Err(HbaError::invalid(
            field,
            "",
            "at least one name is needed (or all)",
        ));
    }
    for t in names {
        if t.value.is_empty() {
            return Err(HbaError::invalid(
                field,
                t.render(),
                "names must not be empty",
            ));
        }
        if t.value.contains(['\n', '\r']) {
            return Err(HbaError::invalid(
                field,
                t.value.clone(),
                "names must be a single line",
            ));
        }
        if t.value.chars().any(|ch| ch.is_control() && ch != '\t') {
            return Err(HbaError::invalid(
                field,
                t.value.clone(),
                "names must not hold control characters",
            ));
        }
        if !t.quoted && (t.value == "+" || t.value == "@") {
            return Err(HbaError::invalid(
                field,
                t.value.clone(),
                "a group (+) or file (@) needs a name",
            ));
        }
    }
    Ok(())
}

fn check_option_value(name: &str, v: &str) -> Result<(), String> {
    match name {
        "pam_use_hostname" | "ldaptls" | "include_realm" if v != "0" && v != "1" => {
            Err(format!("{name} must be 1 or 0"))
        }
        "ldapport" if v.parse::<u16>().map_or(true, |p| p == 0) => {
            Err("ldapport must be a port number".into())
        }
        "ldapscheme" if v != "ldap" && v != "ldaps" => {
            Err("ldapscheme must be ldap or ldaps".into())
        }
        _ if v.is_empty() => Err(format!("{name} needs a value")),
        _ => Ok(()),
    }
}

/// Reads names given by a user, one name per item (a comma-separated string has already
/// been split by the caller). An item wrapped in double quotes (`"all"`, `"a,b"`, `""` for a
/// quote inside) is a quoted name: never a keyword. Anything else is taken as it is: a keyword
/// (`all`, `sameuser`, `samerole`, `samegroup`, `replication`), `+group`, `@file`, `/regex`, or
/// a name in which blanks, commas, quotes and `#` are part of the name (quoted when written).
pub fn parse_names(field: &'static str, items: &[String]) -> Result<Vec<Token>, HbaError> {
    let mut out = Vec::new();
    for item in items {
        let token = match item.strip_prefix('"').and_then(|i| i.strip_suffix('"')) {
            Some(inner) if item.len() >= 2 => {
                // `""` is a quote; a lone quote inside is ambiguous.
                let lone = inner.replace("\"\"", "").contains('"');
                if lone {
                    return Err(HbaError::invalid(
                        field,
                        item.clone(),
                        "a quoted name writes a double quote inside it as \"\"",
                    ));
                }
                Token {
                    value: inner.replace("\"\"", "\""),
                    quoted: true,
                }
            }
            _ => Token {
                value: item.clone(),
                quoted: false,
            },
        };
        if token.value.trim().is_empty() {
            return Err(HbaError::invalid(
                field,
                item.clone(),
                "names must not be empty",
            ));
        }
        out.push(token);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hba::token::tokenize;

    fn rule(line: &str) -> Result<Rule, String> {
        let t = tokenize(line);
        Rule::from_fields(&t.fields, t.comment)
    }

    #[test]
    fn parses_debian_lines() {
        let r =
            rule("local   all             postgres                                peer").unwrap();
        assert_eq!(r.conn_type, ConnType::Local);
        assert!(r.address.is_none());
        let r = rule("host replication all ::1/128 scram-sha-256 # repl").unwrap();
        assert_eq!(r.comment.as_deref(), Some("repl"));
        assert_eq!(r.address.unwrap().render(), "::1/128");
    }

    #[test]
    fn parse_errors_use_postgres_wording() {
        assert_eq!(
            rule("hosts all all 1.2.3.4/32 md5").unwrap_err(),
            "invalid connection type \"hosts\""
        );
        assert_eq!(
            rule("host all all").unwrap_err(),
            "end-of-line before host address"
        );
        assert_eq!(
            rule("host all all 1.2.3.4/32").unwrap_err(),
            "end-of-line before authentication type"
        );
        assert!(rule("host all all 1.2.3.4/32 md5 foo")
            .unwrap_err()
            .contains("name=value"));
        assert!(rule("host all all 1.2.3.4,1.2.3.5 md5")
            .unwrap_err()
            .contains("multiple values"));
    }

    #[test]
    fn validation_matches_postgres() {
        let bad = [
            "local all all 127.0.0.1/32 md5",
            "host all all 10.0.0.0/8 peer",
            "host all all 10.0.0.0/8 cert",
            "host all all 10.0.0.0/8 md6",
            "host all all 10.0.0.0/8 md5 clientcert=verify-full",
            "hostssl all all 10.0.0.0/8 cert clientcert=verify-ca",
            "hostssl all all 10.0.0.0/8 md5 clientcert=yes",
            "host all all 10.0.0.0/8 md5 map=x",
            "host all all 10.0.0.0/8 ldap ldapport=389",
            "host all all 10.0.0.0/8 ldap ldapserver=x ldapprefix=a ldapbasedn=b",
            "host all all 10.0.0.0/8 radius radiusservers=x",
            "host all all 10.0.0.0/8 radius radiusservers=x radiussecrets=\"a,b\"",
            "hostgssenc all all 10.0.0.0/8 md5",
            "local all all gss",
            "host all all 10.0.0.0/8 sspi",
        ];
        for line in bad {
            let r = rule(line);
            assert!(r.is_err() || r.unwrap().validate(None).is_err(), "{line}");
        }
        let good = [
            "local all postgres peer map=pg",
            "hostssl all all 10.0.0.0/8 cert clientcert=verify-full clientname=DN",
            "hostssl all all 10.0.0.0/8 scram-sha-256 clientcert=verify-ca",
            "host all all 10.0.0.0/8 ldap ldapserver=ldap.example.com ldapprefix=\"cn=\" ldapsuffix=\", dc=example\"",
            "host all +admins .example.com radius radiusservers=\"a,b\" radiussecrets=\"s1,s2\"",
            "host replication repl 10.0.0.1 255.255.255.255 scram-sha-256",
        ];
        for line in good {
            rule(line)
                .unwrap()
                .validate(None)
                .unwrap_or_else(|e| panic!("{line}: {e}"));
        }
    }

    #[test]
    fn regex_names_are_valid_and_reported() {
        let r = rule("host all /^app host.example.com md5").unwrap();
        assert!(r.needs_16());
        assert_eq!(r.regex_names().collect::<Vec<_>>(), ["/^app"]);
        assert!(r.validate(Some(ServerVersion(15))).is_ok());
    }

    #[test]
    fn user_names_are_taken_literally_unless_wrapped_in_quotes() {
        let items: Vec<String> = [
            "all",
            "\"all\"",
            "a,b",
            "a\"b",
            "\"x\"\"y\"",
            "my db",
            "+g",
            "#h",
        ]
        .map(String::from)
        .to_vec();
        let t = parse_names("users", &items).unwrap();
        let got: Vec<(&str, bool)> = t.iter().map(|t| (t.value.as_str(), t.quoted)).collect();
        assert_eq!(
            got,
            [
                ("all", false),
                ("all", true),
                ("a,b", false),
                ("a\"b", false),
                ("x\"y", true),
                ("my db", false),
                ("+g", false),
                ("#h", false)
            ]
        );
        // Each renders as one token that reads back as the same name.
        for tok in &t {
            let back = tokenize(&tok.render());
            assert_eq!(back.fields.len(), 1, "{tok:?}");
            assert_eq!(back.fields[0].len(), 1, "{tok:?}");
            assert_eq!(back.fields[0][0].key(), tok.key(), "{tok:?}");
        }
        for bad in ["", " ", "\"\"", "\"a\"b\""] {
            assert!(parse_names("users", &[bad.to_string()]).is_err(), "{bad}");
        }
        let t = parse_names("users", &["new\nline".to_string()]).unwrap();
        assert!(check_names("users", &t).is_err());
    }

    #[test]
    fn comments_are_kept_unless_replaced_or_emptied() {
        let old = rule("host all all 10.0.0.0/8 md5 # the app's").unwrap();
        let mut new = rule("host all all 10.0.0.0/8 md5").unwrap();
        assert!(old.same_content(&new.keeping_comment_of(&old)));
        new.comment = Some(String::new());
        assert_eq!(new.keeping_comment_of(&old).comment, None);
        new.comment = Some("mine".into());
        assert_eq!(
            new.keeping_comment_of(&old).comment.as_deref(),
            Some("mine")
        );
        for bad in ["ends with \\", "bell\u{7}"] {
            new.comment = Some(bad.into());
            assert!(new.validate(None).is_err(), "{bad}");
        }
    }

    #[test]
    fn identity_ignores_order_and_method() {
        let a = rule("host db1,db2 all 10.0.0.1/8 md5").unwrap();
        let b = rule("host db2,db1 all 10.0.0.0 255.0.0.0 scram-sha-256 # x").unwrap();
        assert!(a.same_identity(&b));
        assert!(!a.same_content(&b));
        let c = rule("host \"db1\",db2 all 10.0.0.0/8 md5").unwrap();
        assert!(a.same_identity(&c), "quoting a plain name changes nothing");
        let d = rule("host \"all\" all 10.0.0.0/8 md5").unwrap();
        let e = rule("host all all 10.0.0.0/8 md5").unwrap();
        assert!(!d.same_identity(&e), "a quoted keyword is a name");
    }

    #[test]
    fn render_layout_matches_sample_file() {
        let r = rule("local all postgres peer").unwrap();
        assert_eq!(
            r.render(),
            "local   all             postgres                                peer"
        );
        let r = rule("host all all 127.0.0.1/32 scram-sha-256").unwrap();
        assert_eq!(
            r.render(),
            "host    all             all             127.0.0.1/32            scram-sha-256"
        );
    }
}
