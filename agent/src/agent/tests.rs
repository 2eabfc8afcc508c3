//! The loop (observe, decide, act, publish) on fakes of etcd, PostgreSQL and the fence guard:
//! each action of the decision table carried out, and what it leaves in etcd, on the server,
//! with the guard and in the API's snapshot. The fakes keep their state behind an
//! `Arc<Mutex<_>>` the test holds too, to look at it and to change the world between loops.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::ports::{Fence, Phase, Postgres, RejoinJob, Store};
use super::{Agent, Ports};
use crate::api::{Shared, Snapshot};
use crate::cluster_config::ClusterConfig;
use crate::config::{Config, RebuildMethod, SyncMode};
use crate::dcs::{HistoryEntry, MemberRecord, View};
use crate::decide::{Action, Leader};
use crate::etcd;
use crate::postgres::{LocalPgError, Observed, Rejoined, Stopped};
use crate::records::{unix_now, Outcome, Reinit, Request, RequestKind, Restart, SyncState};
use crate::state::{NodeState, Role};

// ---- etcd ----------------------------------------------------------------------------

#[derive(Default)]
struct Etcd {
    up: bool,
    revision: i64,
    leader: Option<Leader>,
    members: BTreeMap<String, MemberRecord>,
    history: Vec<HistoryEntry>,
    request: Option<(Request, i64)>,
    outcome: Option<Outcome>,
    sync: Option<SyncState>,
    down: BTreeSet<String>,
    seen: BTreeMap<String, u64>,
    reinit: BTreeMap<String, (Reinit, i64)>,
    restart: BTreeMap<String, (Restart, i64)>,
    config: Option<(Result<ClusterConfig, String>, i64)>,
    /// Every member record published, in order.
    published: Vec<MemberRecord>,
    /// The next leader write finds an earlier one of the same writer applied first (its
    /// answer lost), so its compare fails.
    late_landing: bool,
    /// Leader writes are lost (reads still answered): a lossy link to etcd.
    writes_lost: bool,
    /// Reads of the cluster fail (writes still answered): reads held up in etcd.
    reads_lost: bool,
    /// Reads of the cluster asked for.
    reads: u32,
    /// The budget of each renewal ahead of a read.
    renew_budgets: Vec<std::time::Duration>,
    /// Leader writes made, in order: (the revision compared against, the new one or None).
    leader_writes: Vec<(Option<i64>, Option<i64>)>,
}

#[derive(Clone)]
struct FakeStore(Arc<Mutex<Etcd>>);

impl FakeStore {
    fn with<T>(&self, f: impl FnOnce(&mut Etcd) -> T) -> Result<T, etcd::Error> {
        let mut e = self.0.lock().unwrap();
        if !e.up {
            return Err(etcd::Error::Unreachable("the fake etcd is down".into()));
        }
        Ok(f(&mut e))
    }
}

impl Store for FakeStore {
    fn read(&self) -> Result<View, etcd::Error> {
        {
            let mut e = self.0.lock().unwrap();
            e.reads += 1;
            if e.reads_lost {
                return Err(etcd::Error::Unreachable(
                    "the fake etcd held the read up".into(),
                ));
            }
        }
        self.with(|e| View {
            leader: e.leader.clone(),
            members: e.members.values().cloned().collect(),
            history: e.history.clone(),
            request: e.request.clone(),
            outcome: e.outcome.clone(),
            sync: e.sync.clone(),
            paused: false,
            down: e.down.clone(),
            seen: e.seen.clone(),
            reinit: e.reinit.clone(),
            restart: e.restart.clone(),
            config: e.config.clone(),
        })
    }
    fn keepalive(&self, _: i64) -> Result<bool, etcd::Error> {
        self.with(|_| true)
    }
    fn grant(&self, _: i64) -> Result<i64, etcd::Error> {
        self.with(|_| 77)
    }
    fn publish(&self, me: &MemberRecord, _: i64) -> Result<(), etcd::Error> {
        self.with(|e| {
            e.members.insert(me.name.clone(), me.clone());
            e.published.push(me.clone());
        })
    }
    fn write_leader(
        &self,
        me: &str,
        _: i64,
        expected: Option<i64>,
    ) -> Result<Option<i64>, etcd::Error> {
        if self.0.lock().unwrap().writes_lost {
            return Err(etcd::Error::Unreachable(
                "the fake etcd lost the write".into(),
            ));
        }
        self.with(|e| {
            if std::mem::take(&mut e.late_landing) {
                e.revision += 1;
                e.leader = Some(Leader {
                    name: me.into(),
                    revision: e.revision,
                });
            }
            if e.leader.as_ref().map(|l| l.revision) != expected {
                e.leader_writes.push((expected, None));
                return None;
            }
            e.revision += 1;
            e.leader = Some(Leader {
                name: me.into(),
                revision: e.revision,
            });
            e.leader_writes.push((expected, Some(e.revision)));
            Some(e.revision)
        })
    }
    fn renew_leader(
        &self,
        me: &str,
        lease: i64,
        expected: i64,
        budget: std::time::Duration,
    ) -> Result<Option<i64>, etcd::Error> {
        self.0.lock().unwrap().renew_budgets.push(budget);
        self.write_leader(me, lease, Some(expected))
    }
    fn release_leader(&self, revision: i64) -> Result<bool, etcd::Error> {
        self.with(|e| {
            let ours = e.leader.as_ref().is_some_and(|l| l.revision == revision);
            if ours {
                e.leader = None;
            }
            ours
        })
    }
    fn file_request(&self, r: &Request) -> Result<bool, etcd::Error> {
        self.with(|e| {
            e.revision += 1;
            e.request = Some((r.clone(), e.revision));
            true
        })
    }
    fn update_request(&self, r: &Request, revision: i64) -> Result<bool, etcd::Error> {
        self.with(|e| {
            if e.request.as_ref().map(|(_, rev)| *rev) != Some(revision) {
                return false;
            }
            e.revision += 1;
            e.request = Some((r.clone(), e.revision));
            true
        })
    }
    fn end_request(&self, revision: i64, outcome: &Outcome) -> Result<bool, etcd::Error> {
        self.with(|e| {
            if e.request.as_ref().map(|(_, rev)| *rev) != Some(revision) {
                return false;
            }
            e.request = None;
            e.outcome = Some(outcome.clone());
            true
        })
    }
    fn write_sync(&self, s: &SyncState) -> Result<(), etcd::Error> {
        self.with(|e| e.sync = Some(s.clone()))
    }
    fn write_seen(&self, seen: &BTreeMap<String, u64>) -> Result<(), etcd::Error> {
        self.with(|e| e.seen = seen.clone())
    }
    fn record_history(&self, _: &View, entry: HistoryEntry) -> Result<(), etcd::Error> {
        self.with(|e| e.history.push(entry))
    }
    fn end_node_request(&self, kind: &str, node: &str, revision: i64) -> Result<bool, etcd::Error> {
        /// Removes `node`'s entry if it is at `revision`, as etcd's compare-and-delete.
        fn take<T>(m: &mut BTreeMap<String, (T, i64)>, node: &str, revision: i64) -> bool {
            let ours = m.get(node).is_some_and(|(_, r)| *r == revision);
            if ours {
                m.remove(node);
            }
            ours
        }
        self.with(|e| match kind {
            Reinit::KIND => take(&mut e.reinit, node, revision),
            _ => take(&mut e.restart, node, revision),
        })
    }
}

// ---- PostgreSQL -------------------------------------------------------------------------

/// How the test ends a fake rejoin.
type JobEnd = Arc<Mutex<Receiver<Result<Rejoined, LocalPgError>>>>;

#[derive(Default)]
struct Server {
    obs: Observed,
    /// What the agent asked of it, in order.
    calls: Vec<String>,
    standby_signal: bool,
    sync_names: String,
    /// How many voters flushed everything (None: all of them).
    quorum_caught_up: Option<usize>,
    /// The rejoin job's end, sent by the test (None: it finishes at once, rewound).
    rejoin: Option<JobEnd>,
    /// When set, every start fails in recovery with this FATAL.
    recovery_failure: Option<String>,
}

#[derive(Clone)]
struct FakePg(Arc<Mutex<Server>>);

/// What following `conn` would write (the real rule is `LocalPg::settings_differ`).
fn conninfo_for(conn: &str) -> String {
    format!("host={conn} application_name=db2")
}

impl Postgres for FakePg {
    fn observe(&mut self) -> Observed {
        self.0.lock().unwrap().obs.clone()
    }
    fn settings_differ(&self, obs: &Observed, conn: &str) -> bool {
        obs.running && obs.in_recovery && obs.primary_conninfo != conninfo_for(conn)
    }
    fn reachable(&self, _: &str) -> Result<(), String> {
        Ok(())
    }
    fn prepare_standby(&self, conn: Option<&str>) -> Result<(), LocalPgError> {
        let mut s = self.0.lock().unwrap();
        s.calls.push(format!("prepare_standby {conn:?}"));
        s.standby_signal = true;
        if let Some(c) = conn {
            s.obs.upstream_conn = Some(c.into());
            s.obs.primary_conninfo = conninfo_for(c);
        }
        Ok(())
    }
    fn start(&mut self) -> Result<(), LocalPgError> {
        let mut s = self.0.lock().unwrap();
        s.calls.push("start".into());
        if s.recovery_failure.is_some() {
            return Err(LocalPgError::Failed {
                command: "pg_ctl start".into(),
                output: "pg_ctl: could not start server".into(),
            });
        }
        s.obs.running = true;
        s.obs.in_recovery = s.standby_signal;
        s.obs.stopped_state = None;
        s.obs.started_at += 10;
        Ok(())
    }
    fn stop(&mut self, mode: &str) -> Result<Stopped, LocalPgError> {
        let mut s = self.0.lock().unwrap();
        s.calls.push(format!("stop {mode}"));
        if !s.obs.running {
            return Ok(Stopped::Already);
        }
        let was_primary = !s.obs.in_recovery;
        s.obs.running = false;
        s.obs.streaming = false;
        s.obs.stopped_state = Some(
            match (mode, was_primary) {
                ("fast", true) => "shut down",
                (_, true) => "in production",
                _ => "shut down in recovery",
            }
            .into(),
        );
        Ok(Stopped::Now)
    }
    fn promote(&mut self, keep: &mut dyn FnMut()) -> Result<(), LocalPgError> {
        keep();
        let mut s = self.0.lock().unwrap();
        s.calls.push("promote".into());
        s.obs.in_recovery = false;
        s.obs.streaming = false;
        s.obs.timeline += 1;
        s.standby_signal = false;
        Ok(())
    }
    fn checkpoint(&mut self) -> Result<(), LocalPgError> {
        self.0.lock().unwrap().calls.push("checkpoint".into());
        Ok(())
    }
    fn follow(&mut self, conn: &str) -> Result<(), LocalPgError> {
        let mut s = self.0.lock().unwrap();
        s.calls.push(format!("follow {conn}"));
        s.obs.upstream_conn = Some(conn.into());
        s.obs.primary_conninfo = conninfo_for(conn);
        Ok(())
    }
    fn shutdown_checkpoint(&self) -> Result<u64, LocalPgError> {
        Ok(0x3000028)
    }
    fn sync_names(&mut self) -> Result<String, LocalPgError> {
        Ok(self.0.lock().unwrap().sync_names.clone())
    }
    fn set_sync_names(&mut self, value: &str) -> Result<(), LocalPgError> {
        let mut s = self.0.lock().unwrap();
        s.calls.push(format!("synchronous_standby_names {value:?}"));
        s.sync_names = value.into();
        Ok(())
    }
    fn is_sync_and_caught_up(&mut self, _: &str) -> Result<bool, LocalPgError> {
        Ok(true)
    }
    fn quorum_caught_up(&mut self, voters: &[String]) -> Result<usize, LocalPgError> {
        let s = self.0.lock().unwrap();
        Ok(s.quorum_caught_up.unwrap_or(voters.len()))
    }
    fn create_slots(&mut self, slots: &[String]) -> Result<Vec<String>, LocalPgError> {
        let mut s = self.0.lock().unwrap();
        s.calls.push(format!("create_slots {slots:?}"));
        s.obs.slots.extend(slots.iter().cloned());
        let at = s.obs.replayed_lsn;
        s.obs
            .slot_lsns
            .extend(slots.iter().map(|slot| (slot.clone(), at)));
        Ok(slots.to_vec())
    }
    fn drop_unused_slots(&mut self, slots: &[String]) -> Result<Vec<String>, LocalPgError> {
        let mut s = self.0.lock().unwrap();
        s.calls.push(format!("drop_unused_slots {slots:?}"));
        s.obs.slots.retain(|x| !slots.contains(x));
        s.obs.inactive_slots.retain(|x| !slots.contains(x));
        Ok(slots.to_vec())
    }
    fn advance_slots(&mut self, targets: &[(String, u64)]) -> Result<Vec<String>, LocalPgError> {
        let mut s = self.0.lock().unwrap();
        s.calls.push(format!("advance_slots {targets:?}"));
        let mut moved = Vec::new();
        for (name, lsn) in targets {
            if let Some(at) = s.obs.slot_lsns.get_mut(name).filter(|at| **at < *lsn) {
                *at = *lsn;
                moved.push(name.clone());
            }
        }
        Ok(moved)
    }
    fn rejoin_job(
        &self,
        leader_conn: &str,
        clone_conn: Option<&str>,
        rewind_user: &str,
        from_repository: bool,
    ) -> Box<dyn RejoinJob> {
        let mut s = self.0.lock().unwrap();
        let repo = if from_repository {
            " (pgbackrest first)"
        } else {
            ""
        };
        s.calls.push(match clone_conn {
            None => format!("rejoin from {leader_conn}{repo} as {rewind_user}"),
            Some(c) => format!("rejoin from {leader_conn}{repo} (clone {c}) as {rewind_user}"),
        });
        Box::new(FakeJob {
            server: self.0.clone(),
            end: s.rejoin.clone(),
            leader_conn: leader_conn.into(),
        })
    }
    fn data_directory(&self) -> PathBuf {
        PathBuf::from("/nonexistent/pgshift-test")
    }
    fn recovery_failure(&self) -> Option<String> {
        self.0.lock().unwrap().recovery_failure.clone()
    }
    fn mark_rebuild(&self, why: &str) -> Result<(), LocalPgError> {
        let mut s = self.0.lock().unwrap();
        s.calls.push(format!("mark_rebuild {why}"));
        s.obs.rebuild_pending = true;
        Ok(())
    }
    fn set_parameter(&mut self, name: &str, value: Option<&str>) -> Result<(), LocalPgError> {
        let mut s = self.0.lock().unwrap();
        s.calls.push(match value {
            Some(v) => format!("set {name} = {v}"),
            None => format!("reset {name}"),
        });
        Ok(())
    }
    fn reload_config(&mut self) -> Result<(), LocalPgError> {
        self.0.lock().unwrap().calls.push("reload".into());
        Ok(())
    }
}

/// Stops the server, says it rewinds, then waits for the test's word (checking `cancel`).
struct FakeJob {
    server: Arc<Mutex<Server>>,
    end: Option<JobEnd>,
    leader_conn: String,
}

impl RejoinJob for FakeJob {
    fn run(
        &mut self,
        _: Instant,
        cancel: &AtomicBool,
        phase: &mut dyn FnMut(Phase),
    ) -> Result<Rejoined, LocalPgError> {
        {
            let mut s = self.server.lock().unwrap();
            s.obs.running = false;
            s.obs.stopped_state = Some("in production".into());
        }
        phase(Phase::Rewinding);
        let result = match &self.end {
            None => Ok(Rejoined::Rewound),
            Some(rx) => loop {
                if cancel.load(Ordering::Relaxed) {
                    break Err(LocalPgError::Cancelled("called off by the test".into()));
                }
                match rx.lock().unwrap().recv_timeout(Duration::from_millis(5)) {
                    Ok(Ok(Rejoined::Rebuilt { why, .. })) if why == "phase" => {
                        phase(Phase::Rebuilding);
                    }
                    Ok(r) => break r,
                    Err(_) => {}
                }
            },
        };
        if result.is_ok() {
            let mut s = self.server.lock().unwrap();
            s.standby_signal = true;
            s.obs.stopped_state = Some("shut down in recovery".into());
            s.obs.upstream_conn = Some(self.leader_conn.clone());
            s.obs.primary_conninfo = conninfo_for(&self.leader_conn);
        }
        result
    }
}

// ---- the fence guard and the clock --------------------------------------------------------

#[derive(Clone, Default)]
struct FakeGuard(Arc<Mutex<Vec<String>>>);

impl Fence for FakeGuard {
    fn primary_until(&mut self, deadline: u64) -> std::io::Result<()> {
        self.0.lock().unwrap().push(format!("P {deadline}"));
        Ok(())
    }
    fn standby(&mut self) -> std::io::Result<()> {
        self.0.lock().unwrap().push("S".into());
        Ok(())
    }
    fn ensure_alive(&mut self) -> Result<(), String> {
        Ok(())
    }
}

// ---- the test bench ------------------------------------------------------------------------

struct Bench {
    agent: Agent,
    etcd: FakeStore,
    pg: FakePg,
    guard: FakeGuard,
    clock: Arc<AtomicU64>,
    shared: Shared,
    _state: tempfile::TempDir,
}

const START: u64 = 1_000_000;

/// A configuration of member `name` for tests (`extra`: top-level keys).
pub(crate) fn config(name: &str, state_dir: &std::path::Path, extra: &str) -> Config {
    Config::parse(&format!(
        r#"
cluster = "main"
name = "{name}"
state_dir = "{}"
{extra}
[etcd]
endpoints = ["http://127.0.0.1:2379"]
[postgresql]
data_directory = "/nonexistent/pgshift-test"
connect_address = "{name}:5432"
[replication]
user = "replicator"
passfile = "/nonexistent/.pgpass"
"#,
        state_dir.display()
    ))
    .unwrap()
}

impl Bench {
    /// The agent of `name` (ttl 3 s, loop_wait 0.5 s, retry_timeout 1.5 s) on fakes: etcd up
    /// and empty, PostgreSQL as `obs` says.
    fn new(name: &str, obs: Observed, extra: &str) -> Bench {
        let state = tempfile::tempdir().unwrap();
        let etcd = FakeStore(Arc::new(Mutex::new(Etcd {
            up: true,
            ..Etcd::default()
        })));
        let pg = FakePg(Arc::new(Mutex::new(Server {
            standby_signal: obs.in_recovery,
            obs,
            ..Server::default()
        })));
        let guard = FakeGuard::default();
        let clock = Arc::new(AtomicU64::new(START));
        let c = clock.clone();
        let shared: Shared = Arc::new(Mutex::new(Snapshot::default()));
        let ports = Ports {
            store: Box::new(etcd.clone()),
            pg: Box::new(pg.clone()),
            guard: Box::new(guard.clone()),
            now: Arc::new(move || c.load(Ordering::Relaxed)),
        };
        let agent = Agent::assemble(
            PathBuf::from("/nonexistent/agent.toml"),
            config(name, state.path(), extra),
            ports,
            shared.clone(),
            None,
        )
        .unwrap();
        Bench {
            agent,
            etcd,
            pg,
            guard,
            clock,
            shared,
            _state: state,
        }
    }

    fn advance(&self, ms: u64) {
        self.clock.fetch_add(ms, Ordering::Relaxed);
    }

    /// Half a second later, another leader having renewed its key: one loop.
    fn step(&mut self) -> Action {
        self.advance(500);
        let me = self.agent.cfg.name.clone();
        self.etcd(|e| {
            if let Some(l) = e.leader.as_mut().filter(|l| l.name != me) {
                e.revision += 1;
                l.revision = e.revision;
            }
        });
        self.agent.cycle()
    }

    fn etcd<T>(&self, f: impl FnOnce(&mut Etcd) -> T) -> T {
        f(&mut self.etcd.0.lock().unwrap())
    }

    fn server<T>(&self, f: impl FnOnce(&mut Server) -> T) -> T {
        f(&mut self.pg.0.lock().unwrap())
    }

    /// What PostgreSQL was asked since the last look.
    fn calls(&self) -> Vec<String> {
        std::mem::take(&mut self.pg.0.lock().unwrap().calls)
    }

    fn guard_calls(&self) -> Vec<String> {
        std::mem::take(&mut self.guard.0.lock().unwrap())
    }

    fn me(&self) -> MemberRecord {
        let name = self.agent.cfg.name.clone();
        self.etcd(|e| e.members[&name].clone())
    }

    fn snapshot(&self) -> Snapshot {
        self.shared.lock().unwrap().clone()
    }

    /// Another member's record in etcd.
    fn member(&self, name: &str, role: Role, state: NodeState, upstream: Option<&str>) {
        let rec = MemberRecord {
            name: name.into(),
            conn: format!("{name}:5432"),
            api: format!("{name}:8008"),
            role,
            state,
            timeline: 1,
            lsn: 100,
            upstream: upstream.map(Into::into),
            priority: 1,
            ..MemberRecord::default()
        };
        self.etcd(|e| e.members.insert(name.into(), rec));
    }

    /// An operator's request, filed now.
    fn request(&self, kind: RequestKind, from: Option<&str>, to: &str) {
        let request = Request {
            kind,
            from: from.map(Into::into),
            to: Some(to.into()),
            at: None,
            requested_at: unix_now(),
            handed_over: None,
        };
        self.etcd(|e| {
            e.revision += 1;
            e.request = Some((request, e.revision));
        });
    }

    /// `name` holds the leader key now (a fresh revision).
    fn leader(&self, name: &str) -> i64 {
        self.etcd(|e| {
            e.revision += 1;
            e.leader = Some(Leader {
                name: name.into(),
                revision: e.revision,
            });
            e.history.push(HistoryEntry {
                leader: name.into(),
                timeline: 1,
                at: 0,
                reason: "bootstrap".into(),
            });
            e.revision
        })
    }
}

fn primary() -> Observed {
    Observed {
        running: true,
        in_recovery: false,
        timeline: 1,
        lsn: 100,
        ..Observed::default()
    }
}

/// A standby streaming from db1 with the settings following db1 writes.
fn standby_of_db1() -> Observed {
    Observed {
        running: true,
        in_recovery: true,
        timeline: 1,
        lsn: 100,
        streaming: true,
        walreceiver: Some("streaming".into()),
        upstream_conn: Some("db1:5432".into()),
        primary_conninfo: conninfo_for("db1:5432"),
        ..Observed::default()
    }
}

fn stopped(state: &str) -> Observed {
    Observed {
        stopped_state: Some(state.into()),
        timeline: 1,
        ..Observed::default()
    }
}

// ---- the actions ---------------------------------------------------------------------------

#[test]
fn take_leader_at_bootstrap_then_renew() {
    let mut b = Bench::new("db1", primary(), "");
    let a = b.agent.cycle();
    assert_eq!(
        a,
        Action::TakeLeader {
            expected: None,
            promote: false
        }
    );
    let rev = b.etcd(|e| e.leader.clone()).unwrap();
    assert_eq!(rev.name, "db1");
    // The guard may let it write until the write's send time plus retry_timeout.
    assert_eq!(b.guard_calls(), [format!("P {}", START + 1500)]);
    assert_eq!(b.etcd(|e| e.history[0].reason.clone()), "bootstrap");
    assert_eq!(b.me().role, Role::Primary);
    assert_eq!(b.me().state, NodeState::Running);

    b.advance(500);
    assert_eq!(b.agent.cycle(), Action::RenewLeader);
    assert_eq!(b.guard_calls(), [format!("P {}", START + 2000)]);
    // The API: the leader (as read at the loop's start) and its deadline for HAProxy.
    let snap = b.snapshot();
    assert_eq!(snap.leader.as_deref(), Some("db1"));
    assert_eq!(snap.writable_until, START + 2000);
    assert!(b.etcd(|e| e.leader.as_ref().unwrap().revision) > rev.revision);
    assert!(b.calls().is_empty(), "a renewal asks nothing of PostgreSQL");
}

#[test]
fn wait_while_streaming_keeps_slots_for_the_others() {
    let mut b = Bench::new("db2", standby_of_db1(), "");
    b.member("db1", Role::Primary, NodeState::Running, None);
    b.leader("db1");
    assert!(matches!(b.agent.cycle(), Action::Wait { .. }));
    assert_eq!(b.guard_calls(), ["S"]);
    // A slot for db1 ahead of a promotion, by the one naming rule.
    assert_eq!(b.calls(), ["create_slots [\"db1\"]"]);
    let me = b.me();
    assert_eq!((me.role, me.state), (Role::Replica, NodeState::Streaming));
    assert_eq!(me.upstream.as_deref(), Some("db1"));
}

#[test]
fn follow_a_new_leader_and_stale_settings() {
    let mut b = Bench::new("db2", standby_of_db1(), "");
    b.member("db1", Role::Primary, NodeState::Running, None);
    b.member("db3", Role::Primary, NodeState::Running, None);
    b.leader("db3");
    assert_eq!(
        b.agent.cycle(),
        Action::Follow {
            leader: "db3".into()
        }
    );
    assert!(b.calls().contains(&"follow db3:5432".to_string()));
    // Streaming from the leader, but with settings other than following it writes (a TLS
    // file added since): followed again.
    b.server(|s| s.obs.primary_conninfo = "host=db3:5432 sslmode=prefer".into());
    assert_eq!(
        b.agent.cycle(),
        Action::Follow {
            leader: "db3".into()
        }
    );
    b.calls();
    assert!(matches!(b.agent.cycle(), Action::Wait { .. }));
}

#[test]
fn start_standby_of_the_leader() {
    let mut b = Bench::new("db2", stopped("shut down in recovery"), "");
    b.member("db1", Role::Primary, NodeState::Running, None);
    b.leader("db1");
    assert_eq!(
        b.agent.cycle(),
        Action::StartStandby {
            leader: Some("db1".into())
        }
    );
    assert_eq!(b.calls(), ["prepare_standby Some(\"db1:5432\")", "start"]);
    assert_eq!(b.guard_calls(), ["S"]);
    assert_eq!(b.me().role, Role::Replica);
}

#[test]
fn a_standby_that_fails_in_recovery_at_every_start_is_rebuilt() {
    let mut b = Bench::new("db2", stopped("shut down in recovery"), "");
    b.member("db1", Role::Primary, NodeState::Running, None);
    b.leader("db1");
    b.pg.0.lock().unwrap().recovery_failure =
        Some("WAL location 0/307E518 belongs to timeline 1".into());
    for _ in 0..3 {
        assert_eq!(
            b.step(),
            Action::StartStandby {
                leader: Some("db1".into())
            }
        );
    }
    let calls = b.calls();
    let marks: Vec<_> = calls
        .iter()
        .filter(|c| c.starts_with("mark_rebuild"))
        .collect();
    assert_eq!(marks.len(), 1, "{calls:?}");
    assert!(
        marks[0].contains("failed 3 starts in a row in recovery: WAL location"),
        "{marks:?}"
    );
    // The next loop rejoins, and the rejoin rebuilds (the marker says so).
    b.pg.0.lock().unwrap().recovery_failure = None;
    assert_eq!(
        b.step(),
        Action::Rejoin {
            leader: "db1".into()
        }
    );
}

#[test]
fn a_reinit_request_marks_the_directory_and_the_rejoin_rebuilds_it() {
    let mut b = Bench::new("db2", standby_of_db1(), "");
    b.member("db1", Role::Primary, NodeState::Running, None);
    b.leader("db1");
    assert!(matches!(b.step(), Action::Wait { .. }));
    let asked = Reinit {
        requested_at: 1_800_000_000,
        by: "db3".into(),
        from: Some(RebuildMethod::Pgbackrest),
    };
    b.etcd(|e| {
        e.reinit.insert("db2".into(), (asked.clone(), 41));
    });
    // The same loop: marked, the request gone, and a rejoin (which rebuilds, as marked).
    assert_eq!(
        b.step(),
        Action::Rejoin {
            leader: "db1".into()
        }
    );
    assert!(b.etcd(|e| e.reinit.is_empty()));
    let calls = b.calls();
    assert!(
        calls.contains(&"mark_rebuild reinit requested through db3 at 1800000000".to_string()),
        "{calls:?}"
    );
    // The rebuild restores from pgBackRest first, as asked (this once: [rebuild] says leader).
    let rejoins: Vec<_> = calls.iter().filter(|c| c.starts_with("rejoin")).collect();
    assert_eq!(rejoins.len(), 1, "{calls:?}");
    assert!(rejoins[0].contains("(pgbackrest first)"), "{rejoins:?}");
    assert_eq!(b.agent.node.rebuild_from, None);
    // On the leader the request is dropped, nothing marked.
    let mut l = Bench::new("db1", primary(), "");
    l.agent.cycle();
    l.etcd(|e| {
        e.reinit.insert("db1".into(), (asked, 7));
    });
    l.advance(500);
    assert_eq!(l.agent.cycle(), Action::RenewLeader);
    assert!(l.etcd(|e| e.reinit.is_empty()));
    assert!(!l.calls().iter().any(|c| c.starts_with("mark_rebuild")));
}

#[test]
fn a_restart_request_restarts_a_standby_in_place_and_the_leader_by_a_switchover_last() {
    let asked = Restart {
        requested_at: unix_now(),
        by: "db1".into(),
        at: None,
    };
    // A standby: stopped (fast) and started again at once, the request gone, counted.
    let mut b = Bench::new("db2", standby_of_db1(), "");
    b.member("db1", Role::Primary, NodeState::Running, None);
    b.leader("db1");
    b.step();
    b.etcd(|e| {
        e.restart.insert("db2".into(), (asked.clone(), 5));
    });
    b.step();
    let calls = b.calls();
    assert!(
        calls.ends_with(&["stop fast".into(), "start".into()]),
        "{calls:?}"
    );
    assert!(b.etcd(|e| e.restart.is_empty()));
    assert_eq!(b.agent.api.counters.restarts, 1);
    // Scheduled later: not yet.
    let later = Restart {
        at: Some(unix_now() + 3600),
        ..asked.clone()
    };
    b.etcd(|e| {
        e.restart.insert("db2".into(), (later, 6));
    });
    b.step();
    assert!(!b.calls().iter().any(|c| c == "stop fast"));

    // The leader: not while a standby's restart is pending; then by a switchover, and done
    // once its server started again (the handover's restart as a standby).
    let mut l = Bench::new("db1", primary(), "");
    l.agent.cycle();
    l.etcd(|e| {
        e.restart.insert("db1".into(), (asked.clone(), 7));
        e.restart.insert("db2".into(), (asked.clone(), 8));
    });
    l.advance(500);
    assert_eq!(l.agent.cycle(), Action::RenewLeader);
    assert!(l.etcd(|e| e.request.is_none()));
    l.etcd(|e| {
        e.restart.remove("db2");
    });
    l.advance(500);
    l.agent.cycle();
    let filed = l.etcd(|e| e.request.clone()).expect("a switchover filed");
    assert_eq!(filed.0.kind, RequestKind::Switchover);
    assert_eq!(filed.0.from.as_deref(), Some("db1"));
    assert!(!l.calls().iter().any(|c| c == "stop fast"));
    assert!(l.etcd(|e| e.restart.contains_key("db1")));
    l.server(|s| s.obs.started_at += 30);
    l.advance(500);
    l.agent.cycle();
    assert!(l.etcd(|e| e.restart.is_empty()));
}

#[test]
fn the_cluster_configuration_is_laid_over_agent_toml_and_its_parameters_set() {
    let mut b = Bench::new("db2", standby_of_db1(), "");
    b.member("db1", Role::Primary, NodeState::Running, None);
    b.leader("db1");
    b.step();
    let mut doc = ClusterConfig::default();
    for a in ["ttl=5", "retry_timeout=2", "shared_buffers=256MB"] {
        doc.set(a).unwrap();
    }
    b.etcd(|e| e.config = Some((Ok(doc.clone()), 3)));
    b.step();
    assert_eq!(b.agent.cfg.timing().ttl, 5000);
    assert_eq!(b.agent.cfg.timing().retry_timeout, 2000);
    let calls = b.calls();
    assert!(
        calls.ends_with(&["set shared_buffers = 256MB".into(), "reload".into()]),
        "{calls:?}"
    );
    // The same revision again: nothing more.
    b.step();
    assert!(!b.calls().iter().any(|c| c.starts_with("set ")));
    // The parameter dropped from the document is reset, the timing back to agent.toml's.
    doc.set("shared_buffers=").unwrap();
    doc.set("ttl=").unwrap();
    doc.set("retry_timeout=").unwrap();
    b.etcd(|e| e.config = Some((Ok(doc.clone()), 4)));
    b.step();
    assert_eq!(b.agent.cfg.timing().ttl, 3000);
    let calls = b.calls();
    assert!(
        calls.contains(&"reset shared_buffers".to_string()),
        "{calls:?}"
    );
    // A document this node's agent.toml cannot take is not applied, and says so.
    doc.set("retry_timeout=9").unwrap();
    b.etcd(|e| e.config = Some((Ok(doc), 5)));
    b.step();
    assert_eq!(b.agent.cfg.timing().retry_timeout, 1500);
    let warnings = b.etcd(|e| e.members["db2"].warnings.clone());
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("revision 5 not applied here") && w.contains("less than ttl")),
        "{warnings:?}"
    );
}

#[test]
fn start_primary_and_promote_while_holding_the_key() {
    let mut b = Bench::new("db1", primary(), "");
    b.agent.cycle();
    // PostgreSQL stopped under a fresh leadership: started as the primary.
    b.server(|s| {
        s.obs = stopped("in production");
        s.standby_signal = false;
    });
    b.advance(500);
    assert_eq!(b.agent.cycle(), Action::StartPrimary);
    assert!(b.calls().contains(&"start".to_string()));
    // Running as a standby while holding the key: promoted, then a checkpoint.
    b.server(|s| s.obs.in_recovery = true);
    b.advance(100);
    assert_eq!(b.agent.cycle(), Action::Promote);
    let calls = b.calls();
    assert!(
        calls.ends_with(&["promote".into(), "checkpoint".into()]),
        "{calls:?}"
    );
}

#[test]
fn take_leader_and_promote_once_the_leader_is_ttl_old() {
    let mut b = Bench::new("db2", standby_of_db1(), "");
    b.member("db1", Role::Primary, NodeState::Running, None);
    let old = b.leader("db1");
    assert!(matches!(b.agent.cycle(), Action::Wait { .. }));
    // db1 stops writing; its revision turns ttl (3 s) old on our clock.
    b.etcd(|e| e.members.get_mut("db1").unwrap().role = Role::Stopped);
    b.server(|s| s.obs.streaming = false);
    b.advance(2_999);
    assert!(matches!(b.agent.cycle(), Action::Wait { .. }));
    b.advance(1);
    b.calls();
    b.guard_calls();
    assert_eq!(
        b.agent.cycle(),
        Action::TakeLeader {
            expected: Some(old),
            promote: true
        }
    );
    assert_eq!(b.etcd(|e| e.leader.clone()).unwrap().name, "db2");
    let calls = b.calls();
    assert!(
        calls.contains(&"promote".to_string()) && calls.last().unwrap() == "checkpoint",
        "{calls:?}"
    );
    // The guard: writable from the takeover's send time.
    assert_eq!(b.guard_calls()[0], format!("P {}", START + 3_000 + 1_500));
    let snap = b.snapshot();
    assert_eq!(snap.counters.promotions, 1);
    assert_eq!(snap.counters.last_failover_ms, Some(3_000));
    assert_eq!(
        b.etcd(|e| e.history.last().unwrap().reason.clone()),
        "failover"
    );
    assert_eq!(b.me().role, Role::Primary);
    // Announced during the action (before the end of the loop), as the leader.
    let published = b.etcd(|e| e.published.clone());
    assert!(published.len() >= 3, "{published:?}");
}

#[test]
fn fence_when_leadership_runs_out_without_etcd() {
    let mut b = Bench::new("db1", primary(), "failsafe_mode = false");
    b.agent.cycle();
    b.guard_calls();
    b.etcd(|e| e.up = false);
    b.advance(1_000);
    assert!(matches!(b.agent.cycle(), Action::Wait { .. }));
    b.advance(500);
    assert!(matches!(b.agent.cycle(), Action::Fence { .. }));
    assert_eq!(b.calls(), ["stop immediate"]);
    assert_eq!(b.guard_calls(), ["S"]);
    let snap = b.snapshot();
    assert_eq!(snap.me.unwrap().state, NodeState::Fenced);
    assert_eq!(snap.writable_until, 0);
}

#[test]
fn a_leader_that_cannot_renew_retries_every_50_ms_until_its_deadline() {
    let mut b = Bench::new("db1", primary(), "failsafe_mode = false");
    assert!(matches!(b.agent.cycle(), Action::TakeLeader { .. }));
    assert_eq!(b.agent.period(), 500);
    // The first renewal after a takeover is decided on a read. Reads answered, the renewal
    // lost (a lossy link): tried again in 50 ms, not a loop_wait later.
    b.etcd(|e| e.writes_lost = true);
    b.advance(500);
    assert_eq!(b.agent.cycle(), Action::RenewLeader);
    assert_eq!(b.agent.period(), 50, "renewal lost, deadline ahead");
    b.etcd(|e| e.writes_lost = false);
    b.advance(50);
    assert_eq!(b.agent.cycle(), Action::RenewLeader);
    assert_eq!(b.agent.period(), 500, "renewed");
    // etcd away: the renewal ahead of the read fails, the same hurry.
    b.etcd(|e| e.up = false);
    b.advance(500);
    b.agent.cycle();
    assert_eq!(b.agent.period(), 50, "renewal failed, deadline ahead");
    b.etcd(|e| e.up = true);
    b.advance(50);
    b.agent.cycle();
    assert_eq!(b.agent.period(), 500, "renewed");
    // Renewals lost again: no keepalive and no read behind a renewal that timed out (they
    // would likely wait as long); the next try comes 50 ms later, until the deadline.
    b.etcd(|e| e.writes_lost = true);
    let reads = b.etcd(|e| e.reads);
    b.advance(500);
    assert!(matches!(b.agent.cycle(), Action::Wait { .. }));
    assert_eq!(
        b.etcd(|e| e.reads),
        reads,
        "no read behind the failed renewal"
    );
    assert_eq!(b.agent.period(), 50, "renewal lost, deadline ahead");
    b.advance(950);
    b.etcd(|e| e.renew_budgets.clear());
    b.agent.cycle();
    assert_eq!(b.agent.period(), 50, "50 ms before the deadline");
    assert_eq!(
        b.etcd(|e| std::mem::take(&mut e.renew_budgets)),
        [std::time::Duration::from_millis(40)],
        "no more than what is left before the deadline"
    );
    b.etcd(|e| e.writes_lost = false);
    b.advance(100);
    assert!(
        matches!(b.agent.cycle(), Action::Fence { .. }),
        "the deadline holds"
    );
    assert_eq!(b.agent.period(), 500);
    // A standby does not hurry when etcd is away: it has no deadline to keep.
    let mut s = Bench::new("db2", standby_of_db1(), "failsafe_mode = false");
    s.leader("db1");
    s.agent.cycle();
    s.etcd(|e| e.up = false);
    s.advance(500);
    s.agent.cycle();
    assert_eq!(s.agent.period(), 500);
}

#[test]
fn a_leader_renews_ahead_of_its_read_once_it_has_decided_to() {
    let mut b = Bench::new("db1", primary(), "failsafe_mode = false");
    b.agent.cycle();
    b.advance(500);
    assert_eq!(b.agent.cycle(), Action::RenewLeader);
    b.guard_calls();
    let before = b.etcd(|e| std::mem::take(&mut e.leader_writes));
    let rev = before.last().unwrap().1.unwrap();
    // The next loop renews before it reads, on its own revision, and once: the read shows
    // the renewal and the decision to renew again writes nothing more.
    b.advance(500);
    assert_eq!(b.agent.cycle(), Action::RenewLeader);
    assert_eq!(
        b.etcd(|e| std::mem::take(&mut e.leader_writes)),
        [(Some(rev), Some(rev + 1))]
    );
    assert_eq!(b.guard_calls(), [format!("P {}", START + 1000 + 1500)]);
    // One etcd call's budget (retry_timeout / 3), leaving a failsafe round time after it.
    assert_eq!(
        b.etcd(|e| std::mem::take(&mut e.renew_budgets)),
        [std::time::Duration::from_millis(500)]
    );
    // Reads held up in etcd (a raft election under way) do not hold the renewals up: each
    // loop renews on time and the deadline moves with them.
    b.etcd(|e| e.reads_lost = true);
    for i in 1..=4 {
        b.advance(500);
        b.agent.cycle();
        assert_eq!(
            b.guard_calls(),
            [format!("P {}", START + 1000 + 500 * i + 1500)]
        );
    }
    // A primary that crashed is not renewed for: followers must see the key age.
    b.etcd(|e| e.reads_lost = false);
    b.server(|s| s.obs.running = false);
    b.etcd(|e| e.leader_writes.clear());
    b.advance(500);
    b.agent.cycle();
    assert!(
        b.etcd(|e| e.leader_writes.is_empty()),
        "no renewal ahead of the read for a stopped primary"
    );
}

#[test]
fn a_failsafe_round_waiting_on_a_gone_member_does_not_hold_up_the_renewal() {
    // db2's host is gone the way a crashed one is: its connections are never answered.
    let gone = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut b = Bench::new("db1", primary(), "failsafe_mode = true");
    b.member("db2", Role::Replica, NodeState::Running, Some("db1"));
    b.etcd(|e| e.members.get_mut("db2").unwrap().api = gone.local_addr().unwrap().to_string());
    b.agent.cycle();
    b.guard_calls();
    // etcd elects a new raft leader: no answer for a moment, then answers again, long before
    // the round's call to db2 (500 ms) gives up.
    b.etcd(|e| e.up = false);
    b.advance(500);
    let etcd = b.etcd.clone();
    let elected = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(100));
        etcd.0.lock().unwrap().up = true;
    });
    let action = b.agent.cycle();
    elected.join().unwrap();
    assert_eq!(action, Action::RenewLeader);
    assert_eq!(b.guard_calls(), [format!("P {}", START + 2000)]);
}

#[test]
fn failsafe_mode_ends_with_the_first_renewal_through_etcd() {
    let mut b = Bench::new("db1", primary(), "failsafe_mode = true");
    b.agent.cycle();
    // An outage the members bridged: the confirmation still runs when etcd answers again.
    b.agent.failsafe.until = Some(START + 60_000);
    b.advance(500);
    assert_eq!(b.agent.cycle(), Action::RenewLeader);
    assert_eq!(b.agent.failsafe.until, None);
    assert!(!b.snapshot().failsafe);
}

#[test]
fn a_renewal_whose_earlier_answer_was_lost_renews_on_the_revision_it_wrote() {
    let mut b = Bench::new("db1", primary(), "");
    b.agent.cycle();
    b.guard_calls();
    b.etcd(|e| e.late_landing = true);
    b.advance(500);
    let before = b.etcd(|e| e.revision);
    assert_eq!(b.agent.cycle(), Action::RenewLeader);
    // Still leading, the guard's deadline moved (no standby call), the key ours two
    // revisions on: the landed write and the renewal on it.
    assert!(b.agent.clock.leading());
    assert_eq!(b.etcd(|e| e.revision), before + 2);
    assert_eq!(b.etcd(|e| e.leader.clone().unwrap().name), "db1");
    assert!(!b.guard_calls().contains(&"S".to_string()));
}

#[test]
fn renewal_that_finds_the_key_changed_stops_leading() {
    let mut b = Bench::new("db1", primary(), "");
    b.agent.cycle();
    b.guard_calls();
    // Someone else wrote the key between our read and our write: the write fails.
    struct Racing(FakeStore);
    impl Store for Racing {
        fn read(&self) -> Result<View, etcd::Error> {
            self.0.read()
        }
        fn keepalive(&self, l: i64) -> Result<bool, etcd::Error> {
            self.0.keepalive(l)
        }
        fn grant(&self, t: i64) -> Result<i64, etcd::Error> {
            self.0.grant(t)
        }
        fn publish(&self, m: &MemberRecord, l: i64) -> Result<(), etcd::Error> {
            self.0.publish(m, l)
        }
        fn write_leader(
            &self,
            _: &str,
            _: i64,
            _: Option<i64>,
        ) -> Result<Option<i64>, etcd::Error> {
            Ok(None)
        }
        fn release_leader(&self, r: i64) -> Result<bool, etcd::Error> {
            self.0.release_leader(r)
        }
        fn file_request(&self, r: &Request) -> Result<bool, etcd::Error> {
            self.0.file_request(r)
        }
        fn update_request(&self, r: &Request, v: i64) -> Result<bool, etcd::Error> {
            self.0.update_request(r, v)
        }
        fn end_request(&self, v: i64, o: &Outcome) -> Result<bool, etcd::Error> {
            self.0.end_request(v, o)
        }
        fn write_sync(&self, s: &SyncState) -> Result<(), etcd::Error> {
            self.0.write_sync(s)
        }
        fn write_seen(&self, seen: &BTreeMap<String, u64>) -> Result<(), etcd::Error> {
            self.0.write_seen(seen)
        }
        fn record_history(&self, v: &View, e: HistoryEntry) -> Result<(), etcd::Error> {
            self.0.record_history(v, e)
        }
        fn end_node_request(&self, k: &str, n: &str, r: i64) -> Result<bool, etcd::Error> {
            self.0.end_node_request(k, n, r)
        }
    }
    b.agent.store = Box::new(Racing(b.etcd.clone()));
    b.advance(500);
    assert_eq!(b.agent.cycle(), Action::RenewLeader);
    assert_eq!(b.guard_calls(), ["S"]);
    assert!(!b.agent.clock.leading());
    assert_eq!(b.snapshot().writable_until, 0);
}

#[test]
fn hand_over_to_the_streaming_standby_on_request() {
    let mut b = Bench::new("db1", primary(), "");
    b.agent.cycle();
    b.member("db2", Role::Replica, NodeState::Streaming, Some("db1"));
    b.request(RequestKind::Switchover, Some("db1"), "db2");
    b.calls();
    b.advance(500);
    assert_eq!(b.agent.cycle(), Action::HandOver { to: "db2".into() });
    assert_eq!(
        b.calls(),
        ["stop fast", "prepare_standby Some(\"db2:5432\")", "start"]
    );
    let (r, _) = b.etcd(|e| e.request.clone()).unwrap();
    let h = r.handed_over.unwrap();
    assert_eq!((h.to.as_str(), h.lsn), ("db2", 0x3000028));
    assert_eq!(b.etcd(|e| e.leader.clone()), None, "the key was released");
    assert!(b.agent.node.handed_over);
    assert_eq!(b.me().role, Role::Replica);
}

#[test]
fn end_a_request_that_is_done() {
    let mut b = Bench::new("db1", primary(), "");
    b.agent.cycle();
    b.request(RequestKind::Failover, None, "db1");
    b.advance(500);
    assert!(matches!(
        b.agent.cycle(),
        Action::EndRequest { ok: true, .. }
    ));
    let outcome = b.etcd(|e| e.outcome.clone()).unwrap();
    assert!(outcome.ok && outcome.message.contains("db1 leads now"));
    assert!(b.etcd(|e| e.request.is_none()));
}

#[test]
fn synchronous_mode_names_the_streaming_standby() {
    let mut b = Bench::new("db1", primary(), "");
    b.agent.cfg.replication.synchronous_mode = SyncMode::First;
    assert!(matches!(b.agent.cycle(), Action::TakeLeader { .. }));
    b.member("db2", Role::Replica, NodeState::Streaming, Some("db1"));
    b.advance(500);
    assert_eq!(b.agent.cycle(), Action::RenewLeader);
    assert_eq!(
        b.etcd(|e| e.sync.clone()),
        Some(SyncState::new("db1", vec!["db2".into()]))
    );
    assert_eq!(b.server(|s| s.sync_names.clone()), "\"db2\"");
    // The API shows the record it read at the start of a loop: the next one.
    b.advance(500);
    assert_eq!(b.agent.cycle(), Action::RenewLeader);
    assert_eq!(b.snapshot().sync_standbys, ["db2"]);
}

#[test]
fn a_standby_tagged_nosync_is_never_synchronous() {
    let mut b = Bench::new("db1", primary(), "");
    b.agent.cfg.replication.synchronous_mode = SyncMode::First;
    assert!(matches!(b.agent.cycle(), Action::TakeLeader { .. }));
    // db2 is further ahead (the usual choice) but tagged nosync.
    b.member("db2", Role::Replica, NodeState::Streaming, Some("db1"));
    b.member("db3", Role::Replica, NodeState::Streaming, Some("db1"));
    b.etcd(|e| {
        e.members.get_mut("db2").unwrap().nosync = true;
        e.members.get_mut("db2").unwrap().lsn = 200;
    });
    b.advance(500);
    b.agent.cycle();
    assert_eq!(b.server(|s| s.sync_names.clone()), "\"db3\"");
    assert_eq!(
        b.etcd(|e| e.sync.clone())
            .and_then(|s| s.standby)
            .as_deref(),
        Some("db3")
    );
    // With db3 gone, nobody: db2 still is not.
    b.etcd(|e| e.members.remove("db3"));
    b.advance(500);
    b.agent.cycle();
    assert_eq!(b.etcd(|e| e.sync.clone()).and_then(|s| s.standby), None);
    assert_eq!(b.server(|s| s.sync_names.clone()), "");
}

#[test]
fn synchronous_node_count_keeps_k_standbys_synchronous() {
    let mut b = Bench::new("db1", primary(), "");
    b.agent.cfg.replication.synchronous_mode = SyncMode::First;
    b.agent.cfg.replication.synchronous_node_count = 2;
    assert!(matches!(b.agent.cycle(), Action::TakeLeader { .. }));
    for m in ["db2", "db3", "db4"] {
        b.member(m, Role::Replica, NodeState::Streaming, Some("db1"));
    }
    b.etcd(|e| e.members.get_mut("db4").unwrap().lsn = 50);
    b.advance(500);
    b.agent.cycle();
    // The two most advanced, both in the record once synchronous and caught up.
    assert_eq!(
        b.server(|s| s.sync_names.clone()),
        "FIRST 2 (\"db2\", \"db3\")"
    );
    let names = |b: &Bench| {
        b.etcd(|e| e.sync.clone())
            .map(|s| s.standbys)
            .unwrap_or_default()
    };
    assert_eq!(names(&b), ["db2", "db3"]);
    b.advance(500);
    b.agent.cycle();
    assert_eq!(b.snapshot().sync_standbys, ["db2", "db3"]);

    // db3 goes: the record drops it before PostgreSQL stops waiting for it, and db4 takes
    // its place (db2 stays: a change costs a catch-up).
    b.etcd(|e| e.members.remove("db3"));
    b.advance(500);
    b.agent.cycle();
    assert_eq!(
        b.server(|s| s.sync_names.clone()),
        "FIRST 2 (\"db2\", \"db4\")"
    );
    assert_eq!(names(&b), ["db2", "db4"]);

    // Strict, and only db2 left: PostgreSQL waits for two, so commits block.
    b.agent.cfg.replication.synchronous_mode_strict = true;
    b.etcd(|e| e.members.remove("db4"));
    b.advance(500);
    b.agent.cycle();
    assert_eq!(b.server(|s| s.sync_names.clone()), "FIRST 2 (\"db2\")");
    assert_eq!(names(&b), ["db2"]);
    // Its warning, from the record as the next loop reads it.
    b.advance(500);
    b.agent.cycle();
    let w = b.me().warnings;
    assert!(
        w.iter()
            .any(|w| w.contains("1 of 2 standbys synchronous, so commits wait")),
        "{w:?}"
    );
}

#[test]
fn quorum_commit_records_only_what_is_proven() {
    let mut b = Bench::new("db1", primary(), "");
    b.agent.cfg.replication.synchronous_mode = SyncMode::Quorum;
    b.agent.cfg.replication.synchronous_node_count = 2;
    assert!(matches!(b.agent.cycle(), Action::TakeLeader { .. }));
    for m in ["db2", "db3", "db4"] {
        b.member(m, Role::Replica, NodeState::Streaming, Some("db1"));
    }
    let record = |b: &Bench| {
        b.etcd(|e| e.sync.clone())
            .and_then(|s| s.voting().map(|(v, q)| (v.to_vec(), q)))
            .expect("a quorum record")
    };
    let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    // Every healthy standby votes; nothing proven yet, so the quorum is 0 (a failover
    // would wait for this leader) until PostgreSQL waited for any 2 for a loop.
    b.advance(500);
    b.agent.cycle();
    assert_eq!(
        b.server(|s| s.sync_names.clone()),
        "ANY 2 (\"db2\", \"db3\", \"db4\")"
    );
    assert_eq!(record(&b), (names(&["db2", "db3", "db4"]), 0));
    // Two voters flushed everything: proven for 2.
    b.server(|s| s.quorum_caught_up = Some(2));
    b.advance(500);
    b.agent.cycle();
    assert_eq!(record(&b), (names(&["db2", "db3", "db4"]), 2));
    b.advance(500);
    b.agent.cycle();
    assert_eq!(
        b.snapshot().quorum,
        Some((names(&["db2", "db3", "db4"]), 2))
    );

    // db3 goes: the record drops it and lowers the quorum by one (a commit it held is on
    // one voter fewer) before PostgreSQL stops waiting for it.
    b.etcd(|e| e.members.remove("db3"));
    b.server(|s| s.quorum_caught_up = Some(0));
    b.advance(500);
    b.agent.cycle();
    assert_eq!(record(&b), (names(&["db2", "db4"]), 1));
    assert_eq!(
        b.server(|s| s.sync_names.clone()),
        "ANY 2 (\"db2\", \"db4\")"
    );
    // Nobody caught up: the quorum stays where it is proven.
    b.advance(500);
    b.agent.cycle();
    assert_eq!(record(&b), (names(&["db2", "db4"]), 1));
    b.server(|s| s.quorum_caught_up = None);
    b.advance(500);
    b.agent.cycle();
    assert_eq!(record(&b), (names(&["db2", "db4"]), 2));

    // Not strict, db4 goes too: one voter, any 1 of it.
    b.etcd(|e| e.members.remove("db4"));
    b.advance(500);
    b.agent.cycle();
    assert_eq!(record(&b), (names(&["db2"]), 1));
    assert_eq!(b.server(|s| s.sync_names.clone()), "ANY 1 (\"db2\")");
    // Strict: PostgreSQL waits for 2 of the one there is, so commits block.
    b.agent.cfg.replication.synchronous_mode_strict = true;
    b.advance(500);
    b.agent.cycle();
    assert_eq!(b.server(|s| s.sync_names.clone()), "ANY 2 (\"db2\")");
    assert_eq!(record(&b), (names(&["db2"]), 1));
    // And nobody at all: any 2 of any standby.
    b.etcd(|e| e.members.remove("db2"));
    b.advance(500);
    b.agent.cycle();
    assert_eq!(record(&b), (vec![], 0));
    assert_eq!(b.server(|s| s.sync_names.clone()), "ANY 2 (*)");
}

// ---- long operations on the worker ----------------------------------------------------------

/// Loops (half a second each on the fake clock, the other leader renewing meanwhile) until
/// `done`.
fn wait_for(b: &mut Bench, what: &str, done: impl Fn(&mut Bench, &Action) -> bool) -> Action {
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let a = b.step();
        if done(b, &a) {
            return a;
        }
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A member tagged clonefrom that streams from the leader is where a rebuild copies from;
/// one that does not stream from the leader is not.
#[test]
fn a_rejoin_copies_from_a_member_tagged_clonefrom() {
    let mut b = Bench::new("db2", primary(), "");
    b.member("db1", Role::Primary, NodeState::Running, None);
    b.member("db3", Role::Replica, NodeState::NotStreaming, Some("db1"));
    b.member("db4", Role::Replica, NodeState::Streaming, Some("db1"));
    b.etcd(|e| {
        e.members.get_mut("db3").unwrap().clonefrom = true;
        e.members.get_mut("db4").unwrap().clonefrom = true;
    });
    b.leader("db1");
    assert!(matches!(b.agent.cycle(), Action::Rejoin { .. }));
    let calls = b.calls();
    assert!(
        calls.contains(&"rejoin from db1:5432 (clone db4:5432) as pgshift_rewind".to_string()),
        "{calls:?}"
    );
}

/// An old primary that lost the key: the rejoin runs on the worker while the loop goes on
/// publishing `rejoining`, `rewinding`, `rebuilding`; then it starts as the leader's standby.
#[test]
fn rejoin_runs_on_the_worker_and_the_loop_keeps_publishing() {
    let (tx, rx): (Sender<Result<Rejoined, LocalPgError>>, _) = channel();
    let mut b = Bench::new("db2", primary(), "");
    b.server(|s| s.rejoin = Some(Arc::new(Mutex::new(rx))));
    b.member("db1", Role::Primary, NodeState::Running, None);
    b.leader("db1");
    assert_eq!(
        b.agent.cycle(),
        Action::Rejoin {
            leader: "db1".into()
        }
    );
    assert!(b
        .calls()
        .contains(&"rejoin from db1:5432 as pgshift_rewind".to_string()));
    // Said at once, before the end of the loop.
    let first = b.etcd(|e| e.published.first().cloned()).unwrap();
    assert_eq!(first.state, NodeState::Rejoining);
    wait_for(&mut b, "rewinding", |b, a| {
        matches!(a, Action::Wait { .. }) && b.me().state == NodeState::Rewinding
    });
    let published = b.etcd(|e| e.published.len());
    tx.send(Ok(Rejoined::Rebuilt {
        why: "phase".into(),
        aside: String::new(),
        source: String::new(),
    }))
    .unwrap();
    wait_for(&mut b, "rebuilding", |b, _| {
        b.me().state == NodeState::Rebuilding
    });
    b.step();
    b.step();
    // The loop keeps publishing (the member key stays alive) and the API's snapshot fresh.
    assert!(b.etcd(|e| e.published.len()) >= published + 3);
    assert_eq!(b.snapshot().me.unwrap().state, NodeState::Rebuilding);
    // Nothing else is asked of PostgreSQL meanwhile.
    assert!(b.calls().is_empty());
    tx.send(Ok(Rejoined::Rebuilt {
        why: "pg_rewind failed".into(),
        aside: "/x.pgshift-old-1".into(),
        source: "db1:5432".into(),
    }))
    .unwrap();
    wait_for(&mut b, "the rejoin's end", |b, _| {
        b.me().role == Role::Replica
    });
    assert_eq!(b.calls(), ["start"]);
    assert_eq!(b.snapshot().counters.rebuilds, 1);
    assert_eq!(b.me().rebuilds, 1);
    // And then it streams from the leader like any standby.
    b.server(|s| s.obs.streaming = true);
    let a = wait_for(&mut b, "streaming", |b, _| {
        b.me().state == NodeState::Streaming
    });
    assert!(matches!(a, Action::Wait { .. }), "{a:?}");
}

#[test]
fn maintenance_calls_a_rejoin_off_and_starts_no_other() {
    let (_tx, rx) = channel();
    let mut b = Bench::new("db2", primary(), "");
    b.server(|s| s.rejoin = Some(Arc::new(Mutex::new(rx))));
    b.member("db1", Role::Primary, NodeState::Running, None);
    b.leader("db1");
    assert!(matches!(b.agent.cycle(), Action::Rejoin { .. }));
    wait_for(&mut b, "rewinding", |b, _| {
        b.me().state == NodeState::Rewinding
    });
    // pgshift down: the record says so while the rejoin is called off.
    b.etcd(|e| e.down.insert("db2".into()));
    wait_for(&mut b, "down published", |b, _| b.me().down);
    wait_for(&mut b, "the rejoin called off", |b, _| {
        b.me().state == NodeState::Stopped
    });
    assert_eq!(b.snapshot().counters.rewinds, 0);
    b.calls();
    // A diverged node in maintenance starts no new rejoin (it may start as a standby, as
    // any stopped node does).
    for _ in 0..10 {
        let a = b.step();
        assert!(!matches!(a, Action::Rejoin { .. }), "{a:?}");
    }
    assert!(!b.calls().iter().any(|c| c.starts_with("rejoin")));
}

#[test]
fn a_rejoin_that_finishes_at_once_is_counted_and_started() {
    let mut b = Bench::new("db2", primary(), "");
    b.member("db1", Role::Primary, NodeState::Running, None);
    b.leader("db1");
    assert!(matches!(b.agent.cycle(), Action::Rejoin { .. }));
    wait_for(&mut b, "started", |b, _| b.me().role == Role::Replica);
    assert_eq!(b.snapshot().counters.rewinds, 1);
    let calls = b.calls();
    assert_eq!(calls.last().map(String::as_str), Some("start"), "{calls:?}");
}

// ---- slots -------------------------------------------------------------------------------------

#[test]
fn the_leader_drops_unused_slots_of_an_older_naming_rule() {
    let mut b = Bench::new("db1", primary(), "");
    b.member("DB2.lab", Role::Replica, NodeState::Streaming, Some("db1"));
    // `__2_lab` was the playbook's name for DB2.lab, `db2` the module's: both unused now;
    // `__2_lab` in use keeps it.
    b.server(|s| {
        s.obs.slots = vec!["__2_lab".into(), "db2".into(), "other".into()];
        s.obs.inactive_slots = vec!["db2".into(), "other".into()];
    });
    b.agent.cycle();
    let calls = b.calls();
    assert!(
        calls.contains(&"create_slots [\"db2_lab\"]".to_string()),
        "{calls:?}"
    );
    assert!(
        calls.contains(&"drop_unused_slots [\"db2\"]".to_string()),
        "{calls:?}"
    );
    assert!(!calls
        .iter()
        .any(|c| c.contains("other") && c.starts_with("drop")));
    // Once the old slot is free, it goes too.
    b.server(|s| s.obs.inactive_slots.push("__2_lab".into()));
    b.advance(500);
    b.agent.cycle();
    assert!(b
        .calls()
        .contains(&"drop_unused_slots [\"__2_lab\"]".to_string()));
}

#[test]
fn a_standby_keeps_its_slots_where_the_leader_keeps_its_own() {
    let mut b = Bench::new("db2", standby_of_db1(), "");
    b.member("db1", Role::Primary, NodeState::Running, None);
    b.member("db3", Role::Replica, NodeState::Streaming, Some("db1"));
    b.etcd(|e| {
        let l = e.members.get_mut("db1").unwrap();
        l.lsn = 900;
        l.slot_lsns = [("db2".into(), 700), ("db3".into(), 600)].into();
    });
    b.leader("db1");
    let slots: Vec<String> = vec!["db1".into(), "db3".into(), "mine".into()];
    b.server(|s| {
        s.obs.replayed_lsn = 800;
        s.obs.slots = slots.clone();
        s.obs.inactive_slots = slots.clone();
        s.obs.slot_lsns = [
            ("db1".into(), 100),
            ("db3".into(), 650),
            ("mine".into(), 10),
        ]
        .into();
    });
    b.agent.cycle();
    // db1's slot (the leader's own) to the leader's position, but no further than this
    // standby replayed; db3's not back to 600; an operator's own slot left alone.
    let calls = b.calls();
    assert!(
        calls.contains(&r#"advance_slots [("db1", 800)]"#.to_string()),
        "{calls:?}"
    );
    assert!(!calls.iter().any(|c| c.starts_with("drop")), "{calls:?}");
    // Only the leader publishes its slots' positions.
    assert!(b.me().slot_lsns.is_empty());

    // A member slot that reserves no WAL (made before slots reserved on creation) is made
    // again.
    b.server(|s| {
        s.obs.slot_lsns.remove("db3");
    });
    b.advance(500);
    b.agent.cycle();
    let calls = b.calls();
    assert!(
        calls.contains(&r#"drop_unused_slots ["db3"]"#.to_string()),
        "{calls:?}"
    );
}

#[test]
fn the_leader_moves_the_slot_of_a_cascading_member_with_it() {
    let mut b = Bench::new("db1", primary(), "");
    b.member("db2", Role::Replica, NodeState::Streaming, Some("db1"));
    b.member("db3", Role::Replica, NodeState::Streaming, Some("db2"));
    b.etcd(|e| e.members.get_mut("db3").unwrap().lsn = 800);
    b.server(|s| {
        s.obs.slots = vec!["db2".into(), "db3".into()];
        s.obs.inactive_slots = vec!["db3".into()];
        s.obs.slot_lsns = [("db2".into(), 900), ("db3".into(), 100)].into();
    });
    b.agent.cycle();
    let calls = b.calls();
    assert!(
        calls.contains(&r#"advance_slots [("db3", 800)]"#.to_string()),
        "{calls:?}"
    );
}

#[test]
fn slots_of_members_gone_longer_than_member_slots_ttl_are_dropped() {
    let mut b = Bench::new("db1", primary(), "");
    b.agent.cfg.replication.member_slots_ttl = 600;
    b.member("db2", Role::Replica, NodeState::Streaming, Some("db1"));
    let now = unix_now();
    b.etcd(|e| {
        // db3 gone 601 s, db4 gone 601 s but in maintenance, db5 gone 100 s; "mine" is an
        // operator's slot, never a member's.
        e.seen = [
            ("db3".to_string(), now - 601),
            ("db4".to_string(), now - 601),
            ("db5".to_string(), now - 100),
        ]
        .into();
        e.down.insert("db4".into());
    });
    b.server(|s| {
        s.obs.slots = vec![
            "db2".into(),
            "db3".into(),
            "db4".into(),
            "db5".into(),
            "mine".into(),
        ];
        s.obs.inactive_slots = vec!["db3".into(), "db4".into(), "db5".into(), "mine".into()];
    });
    b.agent.cycle();
    let calls = b.calls();
    assert!(
        calls.contains(&r#"drop_unused_slots ["db3"]"#.to_string()),
        "{calls:?}"
    );
    assert_eq!(
        calls.iter().filter(|c| c.starts_with("drop")).count(),
        1,
        "{calls:?}"
    );
    // The leader (from the next loop on, which reads its key) records whom it sees now
    // (itself and db2); the others keep their times.
    b.advance(500);
    b.agent.cycle();
    let seen = b.etcd(|e| e.seen.clone());
    assert!(seen["db1"] >= now && seen["db2"] >= now, "{seen:?}");
    assert_eq!(seen["db3"], now - 601);

    // member_slots_ttl = 0: never.
    b.agent.cfg.replication.member_slots_ttl = 0;
    b.etcd(|e| {
        e.seen.insert("db5".into(), now - 100_000);
    });
    b.advance(500);
    b.agent.cycle();
    assert!(!b.calls().iter().any(|c| c.starts_with("drop")));
}

#[test]
fn the_leader_publishes_where_its_slots_are() {
    let mut b = Bench::new("db1", primary(), "");
    b.member("db2", Role::Replica, NodeState::Streaming, Some("db1"));
    b.server(|s| {
        s.obs.slots = vec!["db2".into()];
        s.obs.slot_lsns = [("db2".into(), 500)].into();
    });
    b.agent.cycle();
    assert_eq!(b.me().slot_lsns, [("db2".to_string(), 500)].into());
}

#[test]
fn members_whose_names_share_a_slot_get_none_and_a_warning() {
    let mut b = Bench::new("db1", primary(), "");
    b.member("db-2", Role::Replica, NodeState::Streaming, Some("db1"));
    b.member("db_2", Role::Replica, NodeState::Streaming, Some("db1"));
    b.agent.cycle();
    assert!(!b.calls().iter().any(|c| c.starts_with("create_slots")));
    let w = b.me().warnings;
    assert!(
        w.iter()
            .any(|w| w.contains("would share the replication slot \"db_2\"")),
        "{w:?}"
    );
}

/// A data directory that a half-done pg_rewind left (the marker file in it) is never started,
/// only rebuilt from the leader.
#[test]
fn a_directory_a_half_done_rewind_left_is_rebuilt_not_started() {
    let mut b = Bench::new(
        "db2",
        Observed {
            rebuild_pending: true,
            ..stopped("shut down in recovery")
        },
        "",
    );
    b.member("db1", Role::Primary, NodeState::Running, None);
    b.leader("db1");
    assert_eq!(
        b.agent.cycle(),
        Action::Rejoin {
            leader: "db1".into()
        }
    );
    let calls = b.calls();
    assert!(!calls.contains(&"start".to_string()), "{calls:?}");
    // In maintenance, nothing at all.
    let mut b = Bench::new(
        "db2",
        Observed {
            rebuild_pending: true,
            ..stopped("shut down in recovery")
        },
        "",
    );
    b.member("db1", Role::Primary, NodeState::Running, None);
    b.leader("db1");
    b.etcd(|e| e.down.insert("db2".into()));
    for _ in 0..3 {
        assert!(matches!(b.step(), Action::Wait { .. }));
    }
    assert!(b.calls().is_empty());
}
