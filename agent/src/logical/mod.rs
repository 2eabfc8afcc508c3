//! `pgshift logical`: the operator's side of a two-node multi-home pair (bidirectional logical
//! replication set up by the `pg_logical_replication` module): `status`, and `down` / `up`,
//! which make one side read-only or writable again, `check`/`watch`, and `ddl FILE`.
//!
//! Read-only is enforced in the database, not by `default_transaction_read_only` (any client
//! can SET that back): every user table gets a statement trigger refusing writes, and an event
//! trigger refuses DDL (so no table owner can drop or disable those triggers, and no new table
//! escapes them). Logical replication's apply workers run with `session_replication_role =
//! replica`, where ordinary triggers do not fire, so the peer's changes still arrive. Only a
//! superuser can get around it, deliberately. The state lives in the catalog: it survives
//! restarts and reboots, and the other side never sees it (schemas, functions and triggers are
//! not replicated).

pub mod config;
mod ddl;
mod fence;
pub mod health;
mod status;

pub use config::LogicalConfig;
pub use ddl::ddl;
pub use fence::{check, down, up};
pub use status::{status, NodeState};
