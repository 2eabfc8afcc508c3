//! The cluster-wide configuration (`cluster_config`, etcd key `config`) on this node: a new
//! revision is laid over agent.toml and adopted like a SIGHUP's reload (timing and the
//! synchronous settings at once); its PostgreSQL parameters go through ALTER SYSTEM and a
//! reload, so a parameter that needs a restart shows as `pending restart` (`pgshift restart
//! --pending`). Parameters this agent set and the document no longer names are reset; their
//! names are kept in `<state_dir>/cluster-parameters` so that holds across agent restarts.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use super::{log, warn, Agent};
use crate::cluster_config::ClusterConfig;
use crate::config::Config;
use crate::dcs::View;
use crate::postgres::Observed;

/// What this node made of the cluster-wide configuration.
pub struct Settings {
    /// agent.toml as last read (the document is laid over it).
    pub local: Config,
    /// The document last adopted, and its revision (None: there was none yet).
    pub doc: ClusterConfig,
    revision: Option<i64>,
    /// PostgreSQL parameters still to set: the document's, until the server ran them in.
    pending: Option<BTreeMap<String, String>>,
    /// Why the last revision or parameter could not be applied, for the member's warnings.
    pub problem: Option<String>,
    /// Where the names of the parameters this agent set are kept.
    names_file: PathBuf,
}

impl Settings {
    pub fn new(local: &Config) -> Settings {
        Settings {
            local: local.clone(),
            doc: ClusterConfig::default(),
            revision: None,
            pending: None,
            problem: None,
            names_file: local.state_dir.join("cluster-parameters"),
        }
    }

    fn applied_names(&self) -> BTreeSet<String> {
        std::fs::read_to_string(&self.names_file)
            .map(|t| t.lines().map(str::to_string).collect())
            .unwrap_or_default()
    }
}

impl Agent {
    /// Adopts a new revision of the cluster-wide configuration, if etcd has one.
    pub(super) fn follow_cluster_config(&mut self, v: &View) {
        let revision = v.config.as_ref().map(|(_, r)| *r);
        if revision == self.settings.revision {
            return;
        }
        self.settings.revision = revision;
        let doc = match v.config.as_ref().map(|(d, _)| d.clone()) {
            None => ClusterConfig::default(),
            Some(Ok(d)) => d,
            Some(Err(e)) => {
                let why = format!("the cluster configuration cannot be read ({e}): kept as it was");
                warn(&why);
                self.settings.problem = Some(why);
                return;
            }
        };
        match doc.over(&self.settings.local) {
            Ok(effective) => {
                self.adopt(effective);
                self.settings.pending = Some(doc.postgresql.clone());
                self.settings.doc = doc;
                self.settings.problem = None;
                let t = self.cfg.timing();
                log(format!(
                    "cluster configuration revision {} adopted (ttl {} ms, loop_wait {} ms, retry_timeout {} ms, synchronous_mode {})",
                    revision.unwrap_or(0), t.ttl, t.loop_wait, t.retry_timeout,
                    self.cfg.replication.synchronous_mode
                ));
            }
            Err(e) => {
                let why = format!(
                    "cluster configuration revision {} not applied here: {e}",
                    revision.unwrap_or(0)
                );
                warn(&why);
                self.settings.problem = Some(why);
            }
        }
    }

    /// Sets the document's PostgreSQL parameters (and resets those it dropped) once the
    /// server runs; a value PostgreSQL refuses becomes a warning, the others still apply.
    pub(super) fn apply_parameters(&mut self, obs: &Observed) {
        if !obs.running {
            return;
        }
        let Some(params) = self.settings.pending.take() else {
            return;
        };
        let before = self.settings.applied_names();
        let mut problems = Vec::new();
        let mut names = BTreeSet::new();
        for (name, value) in &params {
            match self.pg.set_parameter(name, Some(value)) {
                Ok(()) => {
                    names.insert(name.clone());
                }
                // The server refused this value: the same value will be refused again.
                Err(e) if e.code().is_some() => problems.push(format!("{name} = {value:?}: {e}")),
                // No answer (a restart, a lost connection): all of it again next loop.
                Err(e) => {
                    warn(format!(
                        "cluster configuration: PostgreSQL parameters not set yet: {e}"
                    ));
                    self.settings.pending = Some(params);
                    return;
                }
            }
        }
        for name in before.iter().filter(|n| !params.contains_key(*n)) {
            if let Err(e) = self.pg.set_parameter(name, None) {
                problems.push(format!("RESET {name}: {e}"));
                names.insert(name.clone());
            }
        }
        if let Err(e) = self.pg.reload_config() {
            problems.push(format!("reload: {e}"));
        }
        let text: String = names.iter().map(|n| format!("{n}\n")).collect();
        if let Err(e) =
            pgshift_core::atomic::write_atomic(&self.settings.names_file, text.as_bytes(), None)
        {
            problems.push(format!(
                "cannot write {}: {e}",
                self.settings.names_file.display()
            ));
        }
        if problems.is_empty() {
            if !params.is_empty() || !before.is_empty() {
                log(format!(
                    "cluster configuration: PostgreSQL parameters set ({})",
                    params.keys().cloned().collect::<Vec<_>>().join(", ")
                ));
            }
        } else {
            let why = format!(
                "cluster configuration: PostgreSQL refused {}",
                problems.join("; ")
            );
            warn(&why);
            self.settings.problem = Some(why);
        }
    }
}
