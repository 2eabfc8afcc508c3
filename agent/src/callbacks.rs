//! Callbacks (`[callbacks]` in agent.toml): executables the agent runs when its PostgreSQL
//! starts, stops or changes role, to move a virtual IP or tell a pooler. Each runs as
//! `PROGRAM ACTION ROLE CLUSTER` (e.g. `on_role_change primary main`), its output in the
//! agent's log.
//!
//! They never hold up the HA loop: the loop only notices the change (from what it observes of
//! PostgreSQL, so every path to a new state is seen, whichever action took it there) and
//! starts the program; a watcher thread waits for it, kills it at `timeout`, logs the result
//! and counts it for /metrics. A callback still running when the next one is due is killed
//! first: the newer state is the one that matters, and two runs racing to move an address
//! would end in the wrong order.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub on_start: Option<PathBuf>,
    pub on_stop: Option<PathBuf>,
    pub on_role_change: Option<PathBuf>,
    /// Seconds a callback may run before it is killed.
    #[serde(default = "default_timeout")]
    pub timeout: f64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            on_start: None,
            on_stop: None,
            on_role_change: None,
            timeout: default_timeout(),
        }
    }
}

fn default_timeout() -> f64 {
    30.0
}

impl Config {
    pub fn check(&self) -> Result<(), String> {
        for (key, path) in self.programs() {
            if let Some(p) = path {
                if !p.is_absolute() {
                    return Err(format!("callbacks.{key} must be an absolute path"));
                }
            }
        }
        if !(self.timeout.is_finite() && self.timeout > 0.0 && self.timeout <= 3600.0) {
            return Err(format!(
                "callbacks.timeout = {}: give seconds between 0 and 3600",
                self.timeout
            ));
        }
        Ok(())
    }

    fn programs(&self) -> [(&'static str, &Option<PathBuf>); 3] {
        [
            ("on_start", &self.on_start),
            ("on_stop", &self.on_stop),
            ("on_role_change", &self.on_role_change),
        ]
    }
}

/// What the loop saw of PostgreSQL: stopped, or running in a role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Stopped,
    Primary,
    Replica,
}

impl State {
    /// From the loop's observation; None while a running server does not answer (starting,
    /// shutting down, out of connections: timeline 0), which is no change of role.
    pub fn of(running: bool, in_recovery: bool, timeline: u32) -> Option<State> {
        match (running, in_recovery) {
            (false, _) => Some(State::Stopped),
            _ if timeline == 0 => None,
            (true, false) => Some(State::Primary),
            (true, true) => Some(State::Replica),
        }
    }

    fn role(self) -> &'static str {
        match self {
            State::Primary => "primary",
            State::Replica | State::Stopped => "replica",
        }
    }
}

/// The callback a change calls for, with the role it passes: None when nothing changed.
/// A stop passes the role the server had.
pub fn event(before: State, after: State) -> Option<(&'static str, &'static str)> {
    match (before, after) {
        (b, a) if b == a => None,
        (State::Stopped, a) => Some(("on_start", a.role())),
        (b, State::Stopped) => Some(("on_stop", b.role())),
        (_, a) => Some(("on_role_change", a.role())),
    }
}

/// Results so far, for /metrics.
#[derive(Debug, Default)]
pub struct Counts {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
    pub timed_out: AtomicU64,
    pub superseded: AtomicU64,
}

/// The counts at one moment, for the API's snapshot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub ok: u64,
    pub failed: u64,
    pub timed_out: u64,
    pub superseded: u64,
}

impl Counts {
    pub fn snapshot(&self) -> Totals {
        Totals {
            ok: self.ok.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            timed_out: self.timed_out.load(Ordering::Relaxed),
            superseded: self.superseded.load(Ordering::Relaxed),
        }
    }
}

/// The running callback, if any: its process and a number telling runs apart.
type Slot = Arc<Mutex<Option<(u64, Child)>>>;

pub struct Callbacks {
    cfg: Config,
    cluster: String,
    last: Option<State>,
    running: Slot,
    runs: u64,
    pub counts: Arc<Counts>,
}

impl Callbacks {
    pub fn new(cfg: Config, cluster: &str) -> Callbacks {
        Callbacks {
            cfg,
            cluster: cluster.to_owned(),
            last: None,
            running: Arc::new(Mutex::new(None)),
            runs: 0,
            counts: Arc::new(Counts::default()),
        }
    }

    /// A reloaded configuration: the programs and timeout apply from the next change.
    pub fn reconfigure(&mut self, cfg: Config) {
        self.cfg = cfg;
    }

    /// Called every loop with what the loop observed. The first observation only sets the
    /// baseline: the agent starting next to a running server is no change of the server's.
    pub fn observe(&mut self, now: Option<State>) {
        let Some(now) = now else { return };
        let before = self.last.replace(now);
        if let Some((action, role)) = before.and_then(|b| event(b, now)) {
            self.run(action, role);
        }
    }

    fn run(&mut self, action: &'static str, role: &'static str) {
        let program = match action {
            "on_start" => &self.cfg.on_start,
            "on_stop" => &self.cfg.on_stop,
            _ => &self.cfg.on_role_change,
        };
        let Some(program) = program.clone() else {
            return;
        };
        let mut slot = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, mut old)) = slot.take() {
            if matches!(old.try_wait(), Ok(None)) {
                let _ = old.kill();
                let _ = old.wait();
                self.counts.superseded.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("callback killed: {action} {role} is due before it finished");
            }
        }
        let child = Command::new(&program)
            .args([action, role, &self.cluster])
            .stdin(Stdio::null())
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) => {
                self.counts.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    "callback {} {action} {role}: cannot start: {e}",
                    program.display()
                );
                return;
            }
        };
        self.runs += 1;
        let run = self.runs;
        *slot = Some((run, child));
        drop(slot);
        tracing::info!("callback {} {action} {role} started", program.display());
        let slot = self.running.clone();
        let counts = self.counts.clone();
        let timeout = Duration::from_secs_f64(self.cfg.timeout);
        let what = format!("callback {} {action} {role}", program.display());
        thread::spawn(move || watch(slot, run, counts, timeout, what));
    }
}

/// Waits for run `run` in `slot` to end, killing it at `timeout`; stops watching when a newer
/// run took the slot (the one starting it killed this one and counted it).
fn watch(slot: Slot, run: u64, counts: Arc<Counts>, timeout: Duration, what: String) {
    let started = Instant::now();
    loop {
        thread::sleep(Duration::from_millis(50));
        let mut s = slot.lock().unwrap_or_else(|e| e.into_inner());
        let Some((r, child)) = s.as_mut() else { return };
        if *r != run {
            return;
        }
        match child.try_wait() {
            Ok(Some(status)) if status.success() => {
                counts.ok.fetch_add(1, Ordering::Relaxed);
                tracing::info!("{what}: done in {:.1} s", started.elapsed().as_secs_f64());
            }
            Ok(Some(status)) => {
                counts.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("{what}: {status}");
            }
            Ok(None) if started.elapsed() >= timeout => {
                let _ = child.kill();
                let _ = child.wait();
                counts.timed_out.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("{what}: killed after {:.0} s", timeout.as_secs_f64());
            }
            Ok(None) => continue,
            Err(e) => {
                counts.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("{what}: cannot wait for it: {e}");
            }
        }
        *s = None;
        return;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use State::*;

    #[test]
    fn changes_and_the_callback_they_call() {
        assert_eq!(event(Stopped, Stopped), None);
        assert_eq!(event(Replica, Replica), None);
        assert_eq!(event(Stopped, Replica), Some(("on_start", "replica")));
        assert_eq!(event(Stopped, Primary), Some(("on_start", "primary")));
        assert_eq!(event(Primary, Stopped), Some(("on_stop", "primary")));
        assert_eq!(event(Replica, Primary), Some(("on_role_change", "primary")));
        assert_eq!(event(Primary, Replica), Some(("on_role_change", "replica")));
    }

    #[test]
    fn a_server_that_does_not_answer_changes_nothing() {
        assert_eq!(State::of(false, false, 0), Some(Stopped));
        assert_eq!(State::of(true, true, 0), None);
        assert_eq!(State::of(true, false, 3), Some(Primary));
        assert_eq!(State::of(true, true, 3), Some(Replica));
    }

    #[test]
    fn checked() {
        let ok = Config {
            on_role_change: Some("/usr/local/bin/vip".into()),
            ..Config::default()
        };
        assert!(ok.check().is_ok());
        let relative = Config {
            on_stop: Some("vip".into()),
            ..Config::default()
        };
        assert!(relative.check().unwrap_err().contains("callbacks.on_stop"));
        let zero = Config {
            timeout: 0.0,
            ..Config::default()
        };
        assert!(zero.check().is_err());
    }
}
