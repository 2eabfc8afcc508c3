//! The multi-call module binary. Ansible copies it under each module's name and runs
//! `<name> <args-file>`; the module name comes from `_ansible_module_name` or argv[0].

use std::panic;
use std::path::Path;

use pgshift_modules::{dispatch, protocol};
use serde_json::{Map, Value};

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
    // A panic is a bug, but Ansible must still get one failed JSON object (scrubbed of
    // secrets like every result) rather than text: the hook prints it and exits. Release
    // builds abort on panic (no unwinding tables: ~9% smaller), so nothing runs after this.
    let hook_name = name.clone();
    panic::set_hook(Box::new(move |info| {
        let why = info.payload_as_str().unwrap_or_default();
        let out = protocol::failed(
            format!("internal error in {hook_name} (a bug, please report it): {why}"),
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
    let out = run(&name, argv.get(1));
    let failed = out.get("failed").and_then(Value::as_bool).unwrap_or(false);
    println!("{}", protocol::render(out));
    std::process::exit(i32::from(failed));
}

fn run(name: &str, args_file: Option<&String>) -> Map<String, Value> {
    let Some(path) = args_file else {
        return protocol::failed(
            format!("usage: {name} <args-file> (this is an Ansible module)"),
            Map::new(),
        );
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            return protocol::failed(
                format!("cannot read the arguments file {path}: {e}"),
                Map::new(),
            )
        }
    };
    match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(raw)) => dispatch(name, raw),
        Ok(_) => protocol::failed("the arguments file must hold a JSON object", Map::new()),
        Err(e) => protocol::failed(format!("the arguments file is not JSON: {e}"), Map::new()),
    }
}
