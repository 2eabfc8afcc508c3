//! Long operations off the loop. A rejoin (stop, pg_rewind, a rebuild that copies the whole
//! cluster) can take minutes to hours; run inside the loop it would stop this node from
//! publishing its member key (which then expires), keep the API's snapshot frozen and leave
//! `pgshift down` unheard. So it runs on a thread of its own with a deadline, the loop asks
//! it each time where it is (`rejoining`, `rewinding`, `rebuilding`) and publishes that, and
//! maintenance calls it off (see `RejoinJob`: only where that leaves the data whole).

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use super::ports::{Phase, RejoinJob};
use crate::postgres::{LocalPgError, Rejoined};
use crate::state::NodeState;

type Outcome = Result<Rejoined, LocalPgError>;

struct Running {
    leader: String,
    cancel: Arc<AtomicBool>,
    /// 0 rejoining, 1 rewinding, 2 rebuilding.
    phase: Arc<AtomicU8>,
    thread: JoinHandle<Outcome>,
}

/// At most one long operation at a time.
#[derive(Default)]
pub struct Worker {
    running: Option<Running>,
}

/// What the loop learns from the worker.
#[derive(Debug)]
pub enum Poll {
    /// Nothing runs.
    Idle,
    /// A rejoin from `leader` is under way, now in `state`.
    Running { state: NodeState, leader: String },
    /// The rejoin from `leader` ended (it is collected: the next poll says Idle).
    Finished { leader: String, result: Outcome },
}

impl Worker {
    /// Starts `job` (a rejoin from `leader`) unless one runs already.
    pub fn start(&mut self, mut job: Box<dyn RejoinJob>, leader: &str, deadline: Instant) {
        if self.running.is_some() {
            return;
        }
        let cancel = Arc::new(AtomicBool::new(false));
        let phase = Arc::new(AtomicU8::new(0));
        let (c, p) = (cancel.clone(), phase.clone());
        let thread = std::thread::Builder::new()
            .name("rejoin".into())
            .spawn(move || {
                job.run(deadline, &c, &mut |now| {
                    p.store(
                        match now {
                            Phase::Rewinding => 1,
                            Phase::Rebuilding => 2,
                        },
                        Ordering::Relaxed,
                    )
                })
            });
        match thread {
            Ok(thread) => {
                self.running = Some(Running {
                    leader: leader.to_string(),
                    cancel,
                    phase,
                    thread,
                })
            }
            Err(e) => tracing::warn!("cannot start the rejoin's thread: {e}"),
        }
    }

    pub fn poll(&mut self) -> Poll {
        let Some(r) = &self.running else {
            return Poll::Idle;
        };
        if !r.thread.is_finished() {
            let state = match r.phase.load(Ordering::Relaxed) {
                0 => NodeState::Rejoining,
                1 => NodeState::Rewinding,
                _ => NodeState::Rebuilding,
            };
            return Poll::Running {
                state,
                leader: r.leader.clone(),
            };
        }
        let r = self.running.take().expect("checked above");
        let result = r.thread.join().unwrap_or_else(|_| {
            Err(LocalPgError::State(
                "the rejoin's thread panicked (a bug)".into(),
            ))
        });
        Poll::Finished {
            leader: r.leader,
            result,
        }
    }

    /// Calls the running operation off; true the first time it is asked.
    pub fn cancel(&self) -> bool {
        self.running
            .as_ref()
            .is_some_and(|r| !r.cancel.swap(true, Ordering::Relaxed))
    }
}
