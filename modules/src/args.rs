//! Ansible's argument-spec validation, for binary modules (Ansible validates nothing for them).
//!
//! A module declares its options as a static [`Arg`] table, like `argument_spec` in a Python
//! module. [`validate`] resolves aliases, rejects unknown options, checks required options and
//! choices, converts Ansible's loose types (`"yes"` → true, `"5432"` → 5432, `"a,b"` → a list)
//! and fills defaults, with Ansible's own error wording. The normalized map then deserializes
//! into the module's typed params struct, which cannot fail on user input any more.

use serde_json::{Map, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Str,
    /// A string with `~` expanded, like Ansible's `type='path'`.
    Path,
    Int,
    Bool,
    /// A list of strings; a string becomes a list by splitting on commas outside quotes.
    List,
    /// A list of dicts validated by the arg's suboptions.
    ListOfDicts,
    Dict,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Str | Kind::Path => "str",
            Kind::Int => "int",
            Kind::Bool => "bool",
            Kind::List | Kind::ListOfDicts => "list",
            Kind::Dict => "dict",
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub enum Default {
    Str(&'static str),
    Int(i64),
    Bool(bool),
    List(&'static [&'static str]),
}

#[derive(Debug, Clone, Copy)]
pub struct Arg {
    pub name: &'static str,
    pub kind: Kind,
    pub required: bool,
    pub default: Option<Default>,
    pub aliases: &'static [&'static str],
    pub choices: &'static [&'static str],
    pub no_log: bool,
    pub suboptions: Option<&'static [Arg]>,
}

impl Arg {
    pub const fn new(name: &'static str, kind: Kind) -> Arg {
        Arg {
            name,
            kind,
            required: false,
            default: None,
            aliases: &[],
            choices: &[],
            no_log: false,
            suboptions: None,
        }
    }
    pub const fn required(mut self) -> Arg {
        self.required = true;
        self
    }
    pub const fn default(mut self, d: Default) -> Arg {
        self.default = Some(d);
        self
    }
    pub const fn aliases(mut self, a: &'static [&'static str]) -> Arg {
        self.aliases = a;
        self
    }
    pub const fn choices(mut self, c: &'static [&'static str]) -> Arg {
        self.choices = c;
        self
    }
    pub const fn no_log(mut self) -> Arg {
        self.no_log = true;
        self
    }
    pub const fn suboptions(mut self, s: &'static [Arg]) -> Arg {
        self.suboptions = Some(s);
        self
    }
}

/// Validated, normalized params plus the secret values seen (for output scrubbing).
#[derive(Debug, Default)]
pub struct Validated {
    pub params: Map<String, Value>,
    pub secrets: Vec<String>,
}

/// Validates `raw` (user params only, `_ansible_*` already split off) against `specs`
/// (several tables may be combined, e.g. a module's own options and the login options).
pub fn validate(
    module: &str,
    specs: &[&[Arg]],
    raw: Map<String, Value>,
) -> Result<Validated, String> {
    let mut out = Validated::default();
    let params = validate_level(module, specs, raw, None, &mut out.secrets)?;
    out.params = params;
    Ok(out)
}

fn validate_level(
    module: &str,
    specs: &[&[Arg]],
    mut raw: Map<String, Value>,
    context: Option<&str>,
    secrets: &mut Vec<String>,
) -> Result<Map<String, Value>, String> {
    let found_in = context
        .map(|c| format!(" found in {c}"))
        .unwrap_or_default();
    let args: Vec<&Arg> = specs.iter().flat_map(|s| s.iter()).collect();
    // Null means "not set", as in a playbook where a variable expands to nothing.
    raw.retain(|_, v| !v.is_null());

    for arg in &args {
        for alias in arg.aliases {
            if let Some(v) = raw.remove(*alias) {
                if raw.contains_key(arg.name) {
                    return Err(format!(
                        "parameters are mutually exclusive: {}|{alias}{found_in}",
                        arg.name
                    ));
                }
                raw.insert(arg.name.to_string(), v);
            }
        }
    }

    let mut unknown: Vec<&String> = raw
        .keys()
        .filter(|k| !args.iter().any(|a| a.name == k.as_str()))
        .collect();
    if !unknown.is_empty() {
        unknown.sort();
        let mut supported: Vec<String> = args
            .iter()
            .map(|a| {
                if a.aliases.is_empty() {
                    a.name.to_string()
                } else {
                    format!("{} ({})", a.name, a.aliases.join(", "))
                }
            })
            .collect();
        supported.sort();
        let names: Vec<&str> = unknown.iter().map(|s| s.as_str()).collect();
        return Err(format!(
            "Unsupported parameters for ({module}) module: {}{found_in}. Supported parameters include: {}.",
            names.join(", "),
            supported.join(", ")
        ));
    }

    let missing: Vec<&str> = args
        .iter()
        .filter(|a| a.required && !raw.contains_key(a.name))
        .map(|a| a.name)
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "missing required arguments: {}{found_in}",
            missing.join(", ")
        ));
    }

    let mut out = Map::new();
    for arg in &args {
        let value = match raw.remove(arg.name) {
            Some(v) => convert(module, arg, v, &found_in, secrets)?,
            None => match arg.default {
                Some(d) => default_value(d),
                None => Value::Null,
            },
        };
        if !arg.choices.is_empty() && !value.is_null() {
            let items: Vec<&Value> = match &value {
                Value::Array(a) => a.iter().collect(),
                v => vec![v],
            };
            for item in items {
                let s = item
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| item.to_string());
                if !arg.choices.contains(&s.as_str()) {
                    return Err(format!(
                        "value of {} must be one of: {}, got: {s}{found_in}",
                        arg.name,
                        arg.choices.join(", ")
                    ));
                }
            }
        }
        if arg.no_log {
            collect_secrets(&value, secrets);
        }
        out.insert(arg.name.to_string(), value);
    }
    Ok(out)
}

fn default_value(d: Default) -> Value {
    match d {
        Default::Str(s) => Value::from(s),
        Default::Int(i) => Value::from(i),
        Default::Bool(b) => Value::from(b),
        Default::List(l) => Value::from(l.iter().map(|s| s.to_string()).collect::<Vec<_>>()),
    }
}

fn collect_secrets(v: &Value, secrets: &mut Vec<String>) {
    match v {
        Value::String(s) if !s.is_empty() => secrets.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|x| collect_secrets(x, secrets)),
        Value::Object(o) => o.values().for_each(|x| collect_secrets(x, secrets)),
        _ => {}
    }
}

/// Python's name for a JSON value's type, as Ansible prints it.
fn py_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "NoneType",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_f64() => "float",
        Value::Number(_) => "int",
        Value::String(_) => "str",
        Value::Array(_) => "list",
        Value::Object(_) => "dict",
    }
}

fn convert(
    module: &str,
    arg: &Arg,
    v: Value,
    found_in: &str,
    secrets: &mut Vec<String>,
) -> Result<Value, String> {
    let name = arg.name;
    // Never echo a no_log value in an error.
    let shown = |v: &Value| {
        if arg.no_log {
            "********".to_string()
        } else {
            v.to_string()
        }
    };
    let fail = |v: &Value, why: String| {
        format!(
            "argument '{name}' is of type {} and we were unable to convert to {}: {why}{found_in}",
            py_type(v),
            arg.kind.name()
        )
    };
    match arg.kind {
        Kind::Str | Kind::Path => {
            let s = to_str(&v).ok_or_else(|| fail(&v, format!("{} cannot be used as a string", shown(&v))))?;
            Ok(Value::from(if arg.kind == Kind::Path { expand_home(&s) } else { s }))
        }
        Kind::Int => to_int(&v).map(Value::from).ok_or_else(|| fail(&v, format!("{} is not an integer", shown(&v)))),
        Kind::Bool => to_bool(&v).map(Value::from).ok_or_else(|| {
            fail(
                &v,
                format!(
                    "The value {} is not a valid boolean. Valid booleans include: 'yes', 'no', 'true', 'false', 'on', 'off', '1', '0', 'y', 'n', 't', 'f'",
                    shown(&v)
                ),
            )
        }),
        Kind::List => {
            let items = match v {
                Value::Array(a) => a,
                Value::String(s) => split_list(&s).into_iter().map(Value::from).collect(),
                other @ (Value::Number(_) | Value::Bool(_)) => vec![other],
                other => return Err(fail(&other, "expected a list".into())),
            };
            items
                .into_iter()
                .map(|item| {
                    to_str(&item).map(Value::from).ok_or_else(|| {
                        format!("Elements value for option '{name}' is of type {} and we were unable to convert to str{found_in}", py_type(&item))
                    })
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Value::from)
        }
        Kind::Dict => {
            let map = to_dict(&v).ok_or_else(|| fail(&v, "expected a dict, JSON object or key=value pairs".into()))?;
            match arg.suboptions {
                Some(sub) => validate_level(module, &[sub], map, Some(name), secrets).map(Value::Object),
                None => Ok(Value::Object(map)),
            }
        }
        Kind::ListOfDicts => {
            let items = match v {
                Value::Array(a) => a,
                other => return Err(fail(&other, "expected a list of dicts".into())),
            };
            let sub = arg.suboptions.unwrap_or(&[]);
            items
                .into_iter()
                .map(|item| {
                    let map = to_dict(&item).ok_or_else(|| {
                        format!("Elements value for option '{name}' is of type {} and we were unable to convert to dict{found_in}", py_type(&item))
                    })?;
                    validate_level(module, &[sub], map, Some(name), secrets).map(Value::Object)
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Value::from)
        }
    }
}

fn to_str(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        // Python's str(True), which is what Ansible would pass on.
        Value::Bool(b) => Some(if *b { "True" } else { "False" }.into()),
        _ => None,
    }
}

fn to_int(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 9e15)
                .map(|f| f as i64)
        }),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn to_bool(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::Number(n) => match n.as_f64() {
            Some(1.0) => Some(true),
            Some(0.0) => Some(false),
            _ => None,
        },
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "y" | "yes" | "on" | "1" | "true" | "t" | "1.0" => Some(true),
            "n" | "no" | "off" | "0" | "false" | "f" | "0.0" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

/// A dict, a JSON object in a string, or `k=v` pairs separated by commas or blanks.
fn to_dict(v: &Value) -> Option<Map<String, Value>> {
    match v {
        Value::Object(m) => Some(m.clone()),
        Value::String(s) if s.trim_start().starts_with('{') => serde_json::from_str(s).ok(),
        Value::String(s) => {
            let mut m = Map::new();
            for pair in split_outside_quotes(s, |c| c == ',' || c.is_whitespace()) {
                let (k, val) = pair.split_once('=')?;
                m.insert(k.trim().to_string(), Value::from(unquote(val.trim())));
            }
            Some(m)
        }
        _ => None,
    }
}

/// `"a, b,\"c,d\""` → `a`, `b`, `"c,d"`: Ansible splits on every comma; we keep commas
/// inside double quotes, which pg_hba names may need.
pub fn split_list(s: &str) -> Vec<String> {
    split_outside_quotes(s, |c| c == ',')
        .into_iter()
        .map(|x| x.trim().to_string())
        .filter(|x| !x.is_empty())
        .collect()
}

fn split_outside_quotes(s: &str, sep: impl Fn(char) -> bool) -> Vec<String> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    for c in s.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            None if c == '"' || c == '\'' => quote = Some(c),
            None if sep(c) => {
                if !cur.is_empty() {
                    parts.push(std::mem::take(&mut cur));
                }
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    if !cur.is_empty() {
        parts.push(cur);
    }
    parts
}

fn unquote(s: &str) -> String {
    for q in ['"', '\''] {
        if s.len() >= 2 && s.starts_with(q) && s.ends_with(q) {
            return s[1..s.len() - 1].to_string();
        }
    }
    s.to_string()
}

fn expand_home(s: &str) -> String {
    match (s.strip_prefix('~'), std::env::var("HOME")) {
        (Some(rest), Ok(home)) if rest.is_empty() || rest.starts_with('/') => {
            format!("{home}{rest}")
        }
        _ => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SUB: &[Arg] = &[
        Arg::new("name", Kind::Str).required(),
        Arg::new("n", Kind::Int),
    ];
    const SPEC: &[Arg] = &[
        Arg::new("path", Kind::Path).required().aliases(&["dest"]),
        Arg::new("port", Kind::Int).default(Default::Int(5432)),
        Arg::new("force", Kind::Bool).default(Default::Bool(false)),
        Arg::new("state", Kind::Str)
            .choices(&["present", "absent"])
            .default(Default::Str("present")),
        Arg::new("names", Kind::List).default(Default::List(&["all"])),
        Arg::new("opts", Kind::Dict),
        Arg::new("password", Kind::Str).no_log(),
        Arg::new("items", Kind::ListOfDicts).suboptions(SUB),
    ];

    fn run(v: Value) -> Result<Map<String, Value>, String> {
        let Value::Object(m) = v else { panic!() };
        validate("demo", &[SPEC], m).map(|v| v.params)
    }

    #[test]
    fn fills_defaults_and_resolves_aliases() {
        let p = run(json!({"dest": "/x"})).unwrap();
        assert_eq!(p["path"], "/x");
        assert_eq!(p["port"], 5432);
        assert_eq!(p["force"], false);
        assert_eq!(p["state"], "present");
        assert_eq!(p["names"], json!(["all"]));
        assert_eq!(p["opts"], Value::Null);
    }

    #[test]
    fn coerces_ad_hoc_strings_like_ansible() {
        let p = run(json!({"path": "/x", "port": "5433", "force": "yes", "names": "a, b,\"c,d\"", "opts": "clientcert=verify-full map=x"})).unwrap();
        assert_eq!(p["port"], 5433);
        assert_eq!(p["force"], true);
        assert_eq!(p["names"], json!(["a", "b", "\"c,d\""]));
        assert_eq!(p["opts"], json!({"clientcert": "verify-full", "map": "x"}));
        let p = run(json!({"path": "/x", "force": 0, "opts": "{\"a\": 1}", "names": 7})).unwrap();
        assert_eq!(p["force"], false);
        assert_eq!(p["opts"], json!({"a": 1}));
        assert_eq!(p["names"], json!(["7"]));
    }

    #[test]
    fn error_messages_read_like_ansible() {
        let cases = [
            (json!({"path": "/x", "foo": 1, "bar": 2}), "Unsupported parameters for (demo) module: bar, foo. Supported parameters include: force, items, names, opts, password, path (dest), port, state."),
            (json!({}), "missing required arguments: path"),
            (json!({"path": "/x", "port": "abc"}), "argument 'port' is of type str and we were unable to convert to int: \"abc\" is not an integer"),
            (json!({"path": "/x", "force": "maybe"}), "argument 'force' is of type str and we were unable to convert to bool"),
            (json!({"path": "/x", "state": "gone"}), "value of state must be one of: present, absent, got: gone"),
            (json!({"path": "/x", "dest": "/y"}), "parameters are mutually exclusive: path|dest"),
            (json!({"path": ["/x"]}), "argument 'path' is of type list and we were unable to convert to str"),
            (json!({"path": "/x", "items": [{"n": 1}]}), "missing required arguments: name found in items"),
            (json!({"path": "/x", "items": [{"name": "a", "zz": 1}]}), "Unsupported parameters for (demo) module: zz found in items. Supported parameters include: n, name."),
            (json!({"path": "/x", "items": [{"name": "a", "n": "x"}]}), "argument 'n' is of type str and we were unable to convert to int: \"x\" is not an integer found in items"),
            (json!({"path": "/x", "names": [{"a": 1}]}), "Elements value for option 'names' is of type dict and we were unable to convert to str"),
            (json!({"path": "/x", "opts": "novalue"}), "argument 'opts' is of type str and we were unable to convert to dict"),
        ];
        for (input, want) in cases {
            let err = run(input.clone()).unwrap_err();
            assert!(err.starts_with(want), "{input}: got {err:?}, want {want:?}");
        }
    }

    #[test]
    fn null_means_unset_and_secrets_are_collected() {
        let Value::Object(m) = json!({"path": "/x", "port": null, "password": "s3cret"}) else {
            panic!()
        };
        let v = validate("demo", &[SPEC], m).unwrap();
        assert_eq!(v.params["port"], 5432);
        assert_eq!(v.secrets, vec!["s3cret".to_string()]);
    }

    #[test]
    fn secrets_are_not_echoed_in_errors() {
        const S: &[Arg] = &[Arg::new("password", Kind::Str).no_log()];
        let Value::Object(m) = json!({"password": {"x": "s3cret"}}) else {
            panic!()
        };
        let err = validate("demo", &[S], m).unwrap_err();
        assert!(!err.contains("s3cret"), "{err}");
    }
}
