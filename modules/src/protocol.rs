//! The binary-module protocol: the collection's action plugin runs `<binary> -` with the
//! arguments on stdin (Ansible's plain binary-module call, `<module> <args-file>`, works too);
//! the module prints exactly one JSON object on stdout. Ansible fails a task only on `"failed": true` in that object (the
//! exit code is ignored when the JSON is valid), so everything, panics included, must end as
//! one well-formed object with no secret in it.

use std::path::PathBuf;
use std::sync::Mutex;

use serde::de::DeserializeOwned;
use serde_json::{json, Map, Value};

use crate::args::{self, Arg};
use crate::login::{LoginParams, LOGIN_ARGS};

/// What Ansible tells every module besides the user's params (`_ansible_*` keys).
#[derive(Debug, Default)]
pub struct Context {
    pub module: String,
    pub check_mode: bool,
    pub diff: bool,
    pub verbosity: u64,
    pub tmpdir: Option<PathBuf>,
    warnings: Vec<String>,
}

impl Context {
    pub fn warn(&mut self, msg: impl Into<String>) {
        self.warnings.push(msg.into());
    }
}

/// A failed run: `msg` plus optional module-specific keys. Nothing may have changed.
#[derive(Debug)]
pub struct Failure {
    pub msg: String,
    pub extra: Map<String, Value>,
}

impl Failure {
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Failure {
        self.extra.insert(key.to_string(), value.into());
        self
    }
}

impl<T: std::fmt::Display> From<T> for Failure {
    fn from(e: T) -> Failure {
        Failure {
            msg: e.to_string(),
            extra: Map::new(),
        }
    }
}

/// A module: its option table and what it does with validated, typed params.
pub trait Module {
    const NAME: &'static str;
    /// Options besides the shared `login_*` ones.
    const SPEC: &'static [Arg];
    /// Whether the module takes the `login_*`/ssl connection options.
    const LOGIN: bool;
    type Params: DeserializeOwned;

    /// Returns the result keys (`changed`, `msg`, ...). Must honour `ctx.check_mode`.
    fn run(
        ctx: &mut Context,
        params: Self::Params,
        login: LoginParams,
    ) -> Result<Map<String, Value>, Failure>;
}

/// Secret values from `no_log` options; every string we print is scrubbed of them, also
/// after a panic, so a bug cannot leak a password into Ansible's output.
static SECRETS: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn remember_secrets(s: Vec<String>) {
    if let Ok(mut g) = SECRETS.lock() {
        g.extend(s);
    }
}

/// Splits `_ansible_*` keys off the raw args file object.
pub fn split_internal(mut raw: Map<String, Value>) -> (Context, Map<String, Value>) {
    // New-style wrapper, accepted for robustness.
    if let Some(Value::Object(inner)) = raw.remove("ANSIBLE_MODULE_ARGS") {
        raw = inner;
    }
    let mut ctx = Context::default();
    let mut user = Map::new();
    for (k, v) in raw {
        let Some(key) = k.strip_prefix("_ansible_") else {
            user.insert(k, v);
            continue;
        };
        let truthy = |v: &Value| {
            matches!(v, Value::Bool(true))
                || v.as_str().is_some_and(|s| {
                    matches!(s.to_ascii_lowercase().as_str(), "true" | "yes" | "1")
                })
        };
        match key {
            "check_mode" => ctx.check_mode = truthy(&v),
            "diff" => ctx.diff = truthy(&v),
            "verbosity" => ctx.verbosity = v.as_u64().unwrap_or(0),
            "module_name" => {
                ctx.module = v
                    .as_str()
                    .unwrap_or_default()
                    .rsplit('.')
                    .next()
                    .unwrap_or_default()
                    .to_string()
            }
            "tmpdir" => ctx.tmpdir = v.as_str().map(PathBuf::from),
            _ => {}
        }
    }
    (ctx, user)
}

/// Validates, runs and shapes the result of module `M`.
pub fn execute<M: Module>(mut ctx: Context, user: Map<String, Value>) -> Map<String, Value> {
    let specs: Vec<&[Arg]> = if M::LOGIN {
        vec![M::SPEC, LOGIN_ARGS]
    } else {
        vec![M::SPEC]
    };
    let validated = match args::validate(M::NAME, &specs, user) {
        Ok(v) => v,
        Err(msg) => return failed(msg, Map::new()),
    };
    remember_secrets(validated.secrets);
    let mut own = validated.params;
    // Modules without the login options may reuse their names (e.g. ssl_mode for a primary).
    let login_map: Map<String, Value> = if M::LOGIN {
        LOGIN_ARGS
            .iter()
            .filter_map(|a| own.remove_entry(a.name))
            .collect()
    } else {
        Map::new()
    };
    let login: LoginParams = match serde_json::from_value(Value::Object(login_map)) {
        Ok(l) => l,
        Err(e) => {
            return failed(
                format!("internal error: login options do not fit their spec: {e}"),
                Map::new(),
            )
        }
    };
    let params: M::Params = match serde_json::from_value(Value::Object(own)) {
        Ok(p) => p,
        Err(e) => {
            return failed(
                format!("internal error: options do not fit their spec: {e}"),
                Map::new(),
            )
        }
    };
    let mut out = match M::run(&mut ctx, params, login) {
        Ok(out) => out,
        Err(f) => failed(f.msg, f.extra),
    };
    out.entry("changed").or_insert(Value::Bool(false));
    if !ctx.diff {
        out.remove("diff");
    }
    if !ctx.warnings.is_empty() {
        out.insert("warnings".into(), json!(ctx.warnings));
    }
    out
}

/// The module's options as an Ansible `argument_spec` (with `supports_check_mode`), for the
/// collection's Python stubs: `ansible-test sanity` checks the documentation against it, and a
/// stub run without its action plugin validates with it before saying what it needs.
pub fn argument_spec<M: Module>() -> Value {
    let mut spec = arg_specs(M::SPEC);
    if M::LOGIN {
        spec.extend(arg_specs(LOGIN_ARGS));
    }
    json!({"argument_spec": spec, "supports_check_mode": true})
}

fn arg_specs(args: &[Arg]) -> Map<String, Value> {
    args.iter()
        .map(|a| {
            let (kind, elements) = match a.kind {
                args::Kind::Str => ("str", None),
                args::Kind::Path => ("path", None),
                args::Kind::Int => ("int", None),
                args::Kind::Bool => ("bool", None),
                args::Kind::List => ("list", Some("str")),
                args::Kind::ListOfDicts => ("list", Some("dict")),
                args::Kind::Dict => ("dict", None),
            };
            let mut o = Map::new();
            o.insert("type".into(), kind.into());
            if let Some(e) = elements {
                o.insert("elements".into(), e.into());
            }
            if a.required {
                o.insert("required".into(), true.into());
            }
            if let Some(d) = a.default {
                let v = match d {
                    args::Default::Str(s) => Value::from(s),
                    args::Default::Int(i) => Value::from(i),
                    args::Default::Bool(b) => Value::from(b),
                    args::Default::List(l) => Value::from(l.to_vec()),
                };
                o.insert("default".into(), v);
            }
            if !a.aliases.is_empty() {
                o.insert("aliases".into(), Value::from(a.aliases.to_vec()));
            }
            if !a.choices.is_empty() {
                o.insert("choices".into(), Value::from(a.choices.to_vec()));
            }
            // Explicit either way: Ansible's sanity test asks for it on names like `ssl_key`.
            o.insert("no_log".into(), a.no_log.into());
            if let Some(sub) = a.suboptions {
                o.insert("options".into(), Value::Object(arg_specs(sub)));
            }
            (a.name.to_string(), Value::Object(o))
        })
        .collect()
}

pub fn failed(msg: impl Into<String>, extra: Map<String, Value>) -> Map<String, Value> {
    let mut m = extra;
    m.insert("failed".into(), Value::Bool(true));
    m.insert("msg".into(), Value::String(msg.into()));
    m
}

/// The one JSON object to print, with every secret value replaced.
pub fn render(out: Map<String, Value>) -> String {
    // A poisoned lock still holds the secrets; scrubbing matters most after a panic.
    let secrets = SECRETS
        .lock()
        .map(|g| g.clone())
        .unwrap_or_else(|e| e.into_inner().clone());
    let mut v = Value::Object(out);
    scrub(&mut v, &secrets);
    v.to_string()
}

fn scrub(v: &mut Value, secrets: &[String]) {
    match v {
        Value::String(s) => {
            for secret in secrets {
                if s.contains(secret.as_str()) {
                    *s = s.replace(secret.as_str(), "********");
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| scrub(x, secrets)),
        Value::Object(o) => o.values_mut().for_each(|x| scrub(x, secrets)),
        _ => {}
    }
}

/// `before`/`after` as Ansible renders a unified diff from.
pub fn diff(header: &str, before: &[u8], after: &[u8]) -> Value {
    json!({
        "before": String::from_utf8_lossy(before),
        "after": String::from_utf8_lossy(after),
        "before_header": header,
        "after_header": header,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct EchoParams {
        word: String,
        token: Option<String>,
    }

    struct Echo;
    impl Module for Echo {
        const NAME: &'static str = "echo";
        const SPEC: &'static [Arg] = &[
            Arg::new("word", args::Kind::Str).required(),
            Arg::new("token", args::Kind::Str).no_log(),
        ];
        const LOGIN: bool = false;
        type Params = EchoParams;
        fn run(
            ctx: &mut Context,
            p: EchoParams,
            _: LoginParams,
        ) -> Result<Map<String, Value>, Failure> {
            if p.word == "fail" {
                return Err(Failure::from(format!(
                    "failing with token {}",
                    p.token.unwrap_or_default()
                )));
            }
            ctx.warn("careful");
            let mut m = Map::new();
            m.insert("changed".into(), Value::Bool(!ctx.check_mode));
            m.insert("diff".into(), diff("x", b"a", b"b"));
            m.insert("echo".into(), Value::String(p.word));
            Ok(m)
        }
    }

    fn run(raw: Value) -> Map<String, Value> {
        let Value::Object(m) = raw else { panic!() };
        let (ctx, user) = split_internal(m);
        execute::<Echo>(ctx, user)
    }

    #[test]
    fn splits_internal_keys() {
        let out = run(
            json!({"word": "hi", "_ansible_check_mode": true, "_ansible_diff": false, "_ansible_module_name": "pgshift.cluster.echo", "_ansible_new_key": 1}),
        );
        assert_eq!(out["changed"], false);
        assert!(!out.contains_key("diff"), "diff only in diff mode");
        assert_eq!(out["warnings"], json!(["careful"]));
        let out = run(json!({"word": "hi", "_ansible_diff": true}));
        assert_eq!(out["changed"], true);
        assert_eq!(out["diff"]["after"], "b");
    }

    #[test]
    fn argument_spec_says_what_validation_enforces() {
        let spec = argument_spec::<Echo>();
        assert_eq!(spec["supports_check_mode"], true);
        assert_eq!(
            spec["argument_spec"],
            json!({
                "word": {"type": "str", "required": true, "no_log": false},
                "token": {"type": "str", "no_log": true},
            })
        );
    }

    #[test]
    fn failures_are_reported_and_scrubbed() {
        let out = run(json!({"word": "fail", "token": "hunter2"}));
        assert_eq!(out["failed"], true);
        let printed = render(out);
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(printed.contains("failing with token ********"));
        let out = run(json!({"wrod": "x"}));
        assert!(out["msg"]
            .as_str()
            .unwrap()
            .starts_with("Unsupported parameters for (echo) module: wrod."));
    }
}
