//! SIGHUP: the configuration read again. Timing, tags and the synchronous-mode switches take
//! effect at once (under the cluster-wide configuration, which `settings` lays over them); certificates and keys (the API's, etcd's client side) are read again; what
//! the agent built at start from the rest (listener, data directory, replication identity)
//! needs a restart, and the log says which sections changed. Sections compare by value
//! (`PartialEq`), never by their printed form.

use std::path::Path;

use super::{etcd_timeout, log, warn, Agent};
use crate::config::{Config, Replication};
use crate::dcs::Dcs;

/// The sections of `new` that differ from `old` and take effect only at the next start.
pub fn needs_restart(old: &Config, new: &Config) -> Vec<&'static str> {
    // The replication settings other than the synchronous-mode switches, which reload.
    let fixed = |r: &Replication| Replication {
        synchronous_mode: crate::config::SyncMode::Off,
        synchronous_mode_strict: false,
        synchronous_node_count: 1,
        member_slots_ttl: 0,
        ..r.clone()
    };
    let api = |c: &Config| {
        (
            c.api.listen.clone(),
            c.api.tls_client_ca.clone(),
            c.api.max_connections,
        )
    };
    [
        ("cluster", old.cluster != new.cluster),
        ("name", old.name != new.name),
        ("api (listen, client CA, limits)", api(old) != api(new)),
        ("postgresql", old.postgresql != new.postgresql),
        ("state_dir", old.state_dir != new.state_dir),
        ("log", old.log != new.log),
        ("watchdog", old.watchdog != new.watchdog),
        ("rebuild", old.rebuild != new.rebuild),
        (
            "replication (user, passfile, TLS files, rewind_user, rebuild settings)",
            fixed(&old.replication) != fixed(&new.replication),
        ),
    ]
    .into_iter()
    .filter(|(_, changed)| *changed)
    .map(|(k, _)| k)
    .collect()
}

impl Agent {
    pub(super) fn reload(&mut self) {
        let new = match Config::load(Path::new(&self.config_path)) {
            Ok(c) => c,
            Err(e) => {
                warn(format!("SIGHUP: configuration not reloaded: {e}"));
                return;
            }
        };
        let restart = needs_restart(&self.cfg, &new);
        if !restart.is_empty() {
            warn(format!(
                "SIGHUP: changes to {} take effect at the next restart",
                restart.join(", ")
            ));
        }
        // Certificates and keys are read again on every SIGHUP, so a renewal needs no
        // restart: the API's own, and etcd's client side (the loop's and the API requests').
        if let Some(h) = &self.api.handle {
            for e in h.reload(&new) {
                warn(format!("SIGHUP: {e}"));
            }
        }
        let mut etcd = self.cfg.etcd.clone();
        match new.etcd_client(etcd_timeout(&new)) {
            Ok(client) => {
                self.store = Box::new(Dcs::new(client, &self.cfg.cluster));
                etcd = new.etcd.clone();
            }
            Err(e) => warn(format!("SIGHUP: etcd client not reloaded: {e}")),
        }
        self.cfg.etcd = etcd;
        // The cluster-wide configuration stays laid over the new file.
        self.settings.local = new.clone();
        let effective = match self.settings.doc.over(&new) {
            Ok(c) => c,
            Err(e) => {
                warn(format!(
                    "SIGHUP: the cluster configuration no longer applies: {e}"
                ));
                new
            }
        };
        self.adopt(effective);
        let t = self.cfg.timing();
        log(format!(
            "SIGHUP: configuration reloaded (ttl {} ms, loop_wait {} ms, retry_timeout {} ms, synchronous_mode {})",
            t.ttl, t.loop_wait, t.retry_timeout, self.cfg.replication.synchronous_mode
        ));
    }

    /// Takes what reloads from `new` (timing, tags, callbacks, the synchronous-mode
    /// switches, member_slots_ttl) and keeps the rest as the agent started with it.
    pub(super) fn adopt(&mut self, new: Config) {
        let old = self.cfg.clone();
        let mut replication = old.replication.clone();
        replication.synchronous_mode = new.replication.synchronous_mode;
        replication.synchronous_mode_strict = new.replication.synchronous_mode_strict;
        replication.synchronous_node_count = new.replication.synchronous_node_count;
        replication.member_slots_ttl = new.replication.member_slots_ttl;
        self.callbacks.reconfigure(new.callbacks.clone());
        self.cfg = Config {
            timing: new.timing,
            tags: new.tags,
            callbacks: new.callbacks,
            replication,
            ..old
        };
        self.sync_names = None;
        self.guard.timing_changed(&self.cfg.timing());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_compare_by_value() {
        let old = crate::agent::tests::config("db1", Path::new("/var/lib/pgshift"), "");
        let changed = |f: &dyn Fn(&mut Config)| {
            let mut new = old.clone();
            f(&mut new);
            needs_restart(&old, &new)
        };
        assert!(needs_restart(&old, &old.clone()).is_empty());
        // The synchronous-mode switches and the timing reload; TLS files and the rest need
        // a restart.
        assert!(
            changed(&|c| c.replication.synchronous_mode = crate::config::SyncMode::First)
                .is_empty()
        );
        assert!(changed(&|c| c.timing.ttl = 5.0).is_empty());
        assert_eq!(
            changed(&|c| c.replication.sslrootcert = Some("/tls/ca.crt".into())),
            ["replication (user, passfile, TLS files, rewind_user, rebuild settings)"]
        );
        assert_eq!(
            changed(&|c| c.postgresql.connect_address = "db1:5433".into()),
            ["postgresql"]
        );
        assert_eq!(
            changed(&|c| c.log.format = crate::config::LogFormat::Json),
            ["log"]
        );
    }
}
