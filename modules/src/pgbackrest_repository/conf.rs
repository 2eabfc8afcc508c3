//! Which pgbackrest.conf keys this module owns, and their values. Everything else in the file
//! is the operator's and is left alone.

use std::path::Path;

use pgshift_core::ini;

use super::tls::CheckedTls;

pub type Keys = Vec<(String, String)>;

fn kv(k: &str, v: impl ToString) -> (String, String) {
    (k.to_string(), v.to_string())
}

/// `[global]` keys both roles own: this host's TLS server.
fn tls_server(tls: &CheckedTls, auth: &[String]) -> Keys {
    let mut keys = vec![
        kv("tls-server-address", &tls.tls.address),
        kv("tls-server-port", tls.port),
        kv("tls-server-cert-file", tls.tls.cert.display()),
        kv("tls-server-key-file", tls.tls.key.display()),
        kv("tls-server-ca-file", tls.tls.ca.display()),
    ];
    keys.extend(auth.iter().map(|a| kv("tls-server-auth", a)));
    keys
}

pub const GLOBAL_SHARED: &[&str] = &[
    "tls-server-address",
    "tls-server-port",
    "tls-server-cert-file",
    "tls-server-key-file",
    "tls-server-ca-file",
    "tls-server-auth",
];

/// Timeouts for archive-push only (its own section, so backups, `check` and the TLS
/// server keep pgBackRest's defaults). With the repository down, one archive_command
/// attempt then fails after `archive-timeout` (measured 5.0 s) instead of 2x `io-timeout`
/// (120 s refused, 240 s unreachable, with the defaults); the background push gives up
/// after 2-4x `io-timeout` and leaves an error file that fails the next attempt at once.
pub const ARCHIVE_PUSH_SECTION: &str = "global:archive-push";

pub fn is_archive_push_key(k: &str) -> bool {
    ["archive-timeout", "io-timeout", "protocol-timeout"].contains(&k)
}

pub fn archive_push(archive_timeout: i64, io_timeout: i64) -> Keys {
    vec![
        kv("archive-timeout", archive_timeout),
        kv("io-timeout", io_timeout),
        // Must exceed io-timeout for pgBackRest to accept it.
        kv("protocol-timeout", io_timeout * 3),
    ]
}

pub const GLOBAL_REPOSITORY: &[&str] = &[
    "repo1-path",
    "repo1-retention-full",
    "repo1-retention-diff",
    "start-fast",
];

pub const GLOBAL_DATABASE: &[&str] = &[
    "repo1-host",
    "repo1-host-type",
    "repo1-host-port",
    "repo1-host-cert-file",
    "repo1-host-key-file",
    "repo1-host-ca-file",
    "repo1-host-config",
    "archive-async",
    "spool-path",
    "archive-push-queue-max",
];

/// Keys of one database instance in a stanza: `pg<N>-<suffix>`.
const INSTANCE_SUFFIXES: &[&str] = &[
    "host",
    "host-type",
    "host-port",
    "host-cert-file",
    "host-key-file",
    "host-ca-file",
    "host-config",
    "path",
    "port",
];

/// Whether a stanza key is an instance key we own (any index, so a removed instance's
/// `pg2-*` keys go too).
pub fn is_instance_key(key: &str) -> bool {
    key.strip_prefix("pg")
        .and_then(|rest| rest.split_once('-'))
        .is_some_and(|(n, suffix)| {
            !n.is_empty()
                && n.bytes().all(|b| b.is_ascii_digit())
                && INSTANCE_SUFFIXES.contains(&suffix)
        })
}

pub fn owned(list: &'static [&'static str]) -> impl Fn(&str) -> bool {
    move |k| GLOBAL_SHARED.contains(&k) || list.contains(&k)
}

pub struct RepositoryGlobal<'a> {
    pub repo_path: &'a Path,
    pub retention_full: i64,
    pub retention_diff: Option<i64>,
    pub auth: Vec<String>,
}

pub fn repository_global(tls: &CheckedTls, g: &RepositoryGlobal) -> Keys {
    let mut keys = vec![
        kv("repo1-path", g.repo_path.display()),
        kv("repo1-retention-full", g.retention_full),
    ];
    if let Some(d) = g.retention_diff {
        keys.push(kv("repo1-retention-diff", d));
    }
    // Backups start with an immediate checkpoint instead of waiting for the next one.
    keys.push(kv("start-fast", "y"));
    keys.extend(tls_server(tls, &g.auth));
    keys
}

/// One database instance as the repository reaches it.
pub struct RemoteInstance<'a> {
    pub host: &'a str,
    pub path: String,
    pub port: i64,
    pub config_file: &'a Path,
}

pub fn repository_stanza(tls: &CheckedTls, instances: &[RemoteInstance]) -> Keys {
    let mut keys = Vec::new();
    for (i, inst) in instances.iter().enumerate() {
        let n = i + 1;
        keys.push(kv(&format!("pg{n}-host"), inst.host));
        keys.push(kv(&format!("pg{n}-host-type"), "tls"));
        keys.push(kv(&format!("pg{n}-host-port"), tls.port));
        keys.push(kv(&format!("pg{n}-host-cert-file"), tls.tls.cert.display()));
        keys.push(kv(&format!("pg{n}-host-key-file"), tls.tls.key.display()));
        keys.push(kv(&format!("pg{n}-host-ca-file"), tls.tls.ca.display()));
        keys.push(kv(
            &format!("pg{n}-host-config"),
            inst.config_file.display(),
        ));
        keys.push(kv(&format!("pg{n}-path"), &inst.path));
        if inst.port != 5432 {
            keys.push(kv(&format!("pg{n}-port"), inst.port));
        }
    }
    keys
}

pub struct DatabaseGlobal<'a> {
    pub repository_host: &'a str,
    pub repository_config: &'a Path,
    pub spool_path: &'a Path,
    pub queue_max: &'a str,
    pub auth: Vec<String>,
}

pub fn database_global(tls: &CheckedTls, g: &DatabaseGlobal) -> Keys {
    let mut keys = vec![
        kv("repo1-host", g.repository_host),
        kv("repo1-host-type", "tls"),
        kv("repo1-host-port", tls.port),
        kv("repo1-host-cert-file", tls.tls.cert.display()),
        kv("repo1-host-key-file", tls.tls.key.display()),
        kv("repo1-host-ca-file", tls.tls.ca.display()),
        kv("repo1-host-config", g.repository_config.display()),
        // archive_command only hands the segment to a local spool; a background process
        // ships it. A full queue drops WAL from the archive (with a warning; the archive
        // has a hole until the next full backup) rather than filling pg_wal until the disk
        // is full and PostgreSQL stops.
        kv("archive-async", "y"),
        kv("spool-path", g.spool_path.display()),
        kv("archive-push-queue-max", g.queue_max),
    ];
    keys.extend(tls_server(tls, &g.auth));
    keys
}

pub fn database_stanza(pg_path: &Path, pg_port: i64) -> Keys {
    let mut keys = vec![kv("pg1-path", pg_path.display())];
    if pg_port != 5432 {
        keys.push(kv("pg1-port", pg_port));
    }
    keys
}

/// Applies `global` and the stanza sections to `text`; stanzas in `remove` lose their keys.
pub fn render(
    text: &str,
    global_owned: impl Fn(&str) -> bool,
    global: &Keys,
    stanzas: &[(String, Keys)],
    remove: &[String],
) -> String {
    let mut out = ini::set_section(text, "global", global_owned, global);
    for (name, keys) in stanzas {
        out = ini::set_section(&out, name, is_instance_key, keys);
    }
    for name in remove {
        out = ini::set_section(&out, name, is_instance_key, &[]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_keys() {
        assert!(is_instance_key("pg1-path"));
        assert!(is_instance_key("pg12-host-config"));
        assert!(!is_instance_key("pg-path"));
        assert!(!is_instance_key("pg1-host-user"));
        assert!(!is_instance_key("pgx-path"));
        assert!(!is_instance_key("compress-type"));
    }
}
