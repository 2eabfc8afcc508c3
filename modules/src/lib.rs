//! pgshift.cluster's Ansible binary modules: the protocol runtime and the modules.
//! One multi-call binary serves every module name (see `main.rs`).

pub mod args;
pub mod cert_hook;
pub mod cert_install;
pub mod login;
pub mod pg_basebackup_standby;
pub mod pg_hba_rule;
pub mod pg_logical_replication;
pub mod pg_replication_user;
pub mod pgbackrest_repository;
pub mod protocol;

use serde_json::{Map, Value};

/// Every module this binary provides (the build stages one copy under each name).
pub const MODULES: &[&str] = &[
    "cert_install",
    "pg_basebackup_standby",
    "pg_hba_rule",
    "pg_logical_replication",
    "pg_replication_user",
    "pgbackrest_repository",
];

/// Runs the module `name` on the raw args-file object.
pub fn dispatch(name: &str, raw: Map<String, Value>) -> Map<String, Value> {
    let (mut ctx, user) = protocol::split_internal(raw);
    if ctx.module.is_empty() {
        ctx.module = name.to_string();
    }
    match ctx.module.as_str() {
        "pg_hba_rule" => protocol::execute::<pg_hba_rule::PgHbaRule>(ctx, user),
        "cert_install" => protocol::execute::<cert_install::CertInstall>(ctx, user),
        "pg_basebackup_standby" => {
            protocol::execute::<pg_basebackup_standby::PgBasebackupStandby>(ctx, user)
        }
        "pg_logical_replication" => {
            protocol::execute::<pg_logical_replication::PgLogicalReplication>(ctx, user)
        }
        "pg_replication_user" => {
            protocol::execute::<pg_replication_user::PgReplicationUser>(ctx, user)
        }
        "pgbackrest_repository" => {
            protocol::execute::<pgbackrest_repository::PgbackrestRepository>(ctx, user)
        }
        other => protocol::failed(
            format!(
                "pgshift: unknown module {other:?}; this binary provides: {}",
                MODULES.join(", ")
            ),
            Map::new(),
        ),
    }
}
