//! pgshift-agent: the per-host HA agent and its CLI. The decision is a pure function
//! ([`decide`]); everything else adapts it to etcd, PostgreSQL, HTTP and processes.

pub mod agent;
pub mod api;
pub mod args;
pub mod callbacks;
pub mod cli;
pub mod cluster_config;
pub mod config;
pub mod ctl;
pub mod dcs;
pub mod decide;
pub mod etcd;
pub mod failsafe;
pub mod guard;
pub mod hba_checks;
pub mod http;
pub mod logging;
pub mod logical;
pub mod maintenance;
pub mod peers;
pub mod postgres;
pub mod quorum;
pub mod records;
pub mod state;
pub mod streaming;
pub mod tls;
pub mod watchdog;
