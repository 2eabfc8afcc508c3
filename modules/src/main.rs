//! The multi-call module binary. The collection's action plugin keeps one copy per version on
//! each host and runs `<binary> -` with the arguments on stdin (never in a file, which would
//! hold passwords); Ansible's plain binary-module call, `<module> <args-file>`, works too. The
//! module name comes from `_ansible_module_name` or argv[0].

use std::io::Read;
use std::panic;
use std::path::Path;
use std::sync::Mutex;

use pgshift_modules::{
    cert_install, dispatch, pg_basebackup_standby, pg_hba_rule, pg_logical_replication,
    pg_replication_user, pgbackrest_repository, protocol,
};
use serde_json::{json, Map, Value};

/// Arguments larger than this are refused rather than read (options are paths and names, a
/// few KiB; this bounds what a runaway controller can make the host allocate).
const MAX_ARGS_BYTES: u64 = 16 * 1024 * 1024;

/// The module being run, for the panic message (argv[0] until the arguments name it).
static RUNNING: Mutex<String> = Mutex::new(String::new());

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    let name = argv
        .first()
        .map(|a| {
            Path::new(a)
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .to_string()
        })
        .unwrap_or_default();
    set_running(&name);
    // A panic is a bug, but Ansible must still get one failed JSON object (scrubbed of
    // secrets like every result) rather than text: the hook prints it and exits. Release
    // builds abort on panic (no unwinding tables: ~9% smaller), so nothing runs after this.
    panic::set_hook(Box::new(move |info| {
        // (PanicHookInfo::payload_as_str is newer than our rust-version.)
        let payload = info.payload();
        let why = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or_default();
        let running = RUNNING
            .lock()
            .map(|g| g.clone())
            .unwrap_or_else(|e| e.into_inner().clone());
        let out = protocol::failed(
            format!("internal error in {running} (a bug, please report it): {why}"),
            Map::new(),
        );
        println!("{}", protocol::render(out));
        std::process::exit(1);
    }));
    // certbot runs deploy hooks with no argument and the renewed lineage in the environment.
    if argv.len() == 1 {
        if let Some(lineage) = std::env::var_os("RENEWED_LINEAGE") {
            std::process::exit(pgshift_modules::cert_hook::run_hook(Path::new(&lineage)));
        }
    }
    if argv.get(1).map(String::as_str) == Some("--argument-specs") {
        println!("{}", argument_specs());
        return;
    }
    let out = run(&name, argv.get(1).map(String::as_str));
    let failed = out.get("failed").and_then(Value::as_bool).unwrap_or(false);
    println!("{}", protocol::render(out));
    std::process::exit(i32::from(failed));
}

fn set_running(name: &str) {
    if let Ok(mut g) = RUNNING.lock() {
        *g = name.to_string();
    }
}

fn run(name: &str, source: Option<&str>) -> Map<String, Value> {
    let Some(source) = source else {
        return protocol::failed(
            format!("usage: {name} <args-file> | {name} - (arguments on stdin); this is an Ansible module"),
            Map::new(),
        );
    };
    let text = match read_args(source) {
        Ok(t) => t,
        Err(msg) => return protocol::failed(msg, Map::new()),
    };
    match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(raw)) => {
            if let Some(m) = raw.get("_ansible_module_name").and_then(Value::as_str) {
                set_running(m);
            }
            dispatch(name, raw)
        }
        Ok(_) => protocol::failed("the arguments must be a JSON object", Map::new()),
        Err(e) => protocol::failed(format!("the arguments are not JSON: {e}"), Map::new()),
    }
}

/// The arguments from stdin (`-`) or from Ansible's arguments file, bounded.
fn read_args(source: &str) -> Result<String, String> {
    let mut bytes = Vec::new();
    let (what, read) = if source == "-" {
        let r = std::io::stdin()
            .lock()
            .take(MAX_ARGS_BYTES + 1)
            .read_to_end(&mut bytes);
        ("the arguments on stdin".to_string(), r)
    } else {
        let r = std::fs::File::open(source)
            .and_then(|f| f.take(MAX_ARGS_BYTES + 1).read_to_end(&mut bytes));
        (format!("the arguments file {source}"), r)
    };
    if let Err(e) = read {
        return Err(format!("cannot read {what}: {e}"));
    }
    if bytes.len() as u64 > MAX_ARGS_BYTES {
        return Err(format!("{what}: more than {MAX_ARGS_BYTES} bytes"));
    }
    String::from_utf8(bytes).map_err(|_| format!("{what}: not UTF-8"))
}

/// Every module's `argument_spec`, for the collection's Python stubs (scripts/build.sh writes
/// them into plugins/module_utils).
fn argument_specs() -> Value {
    json!({
        "cert_install": protocol::argument_spec::<cert_install::CertInstall>(),
        "pg_basebackup_standby":
            protocol::argument_spec::<pg_basebackup_standby::PgBasebackupStandby>(),
        "pg_hba_rule": protocol::argument_spec::<pg_hba_rule::PgHbaRule>(),
        "pg_logical_replication":
            protocol::argument_spec::<pg_logical_replication::PgLogicalReplication>(),
        "pg_replication_user": protocol::argument_spec::<pg_replication_user::PgReplicationUser>(),
        "pgbackrest_repository":
            protocol::argument_spec::<pgbackrest_repository::PgbackrestRepository>(),
    })
}
