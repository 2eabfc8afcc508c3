//! The fence guard: a small second process (`pgshift fence-guard DATADIR`) that the agent
//! starts and feeds, over a pipe, one deadline: "this node may accept writes until T" (on
//! the system-wide monotonic clock), or "standby". When T passes without a newer deadline
//! the guard shuts PostgreSQL down immediately, whatever the agent is doing: the agent may
//! have been killed (the pipe closes; the guard keeps the last deadline), stopped with
//! SIGSTOP, or be stuck in I/O. T is the agent's last successful leader write plus
//! retry_timeout, so a primary stops writing before any follower can count ttl.
//!
//! Why a process and not a thread: a stopped or hung agent takes its threads with it.
//!
//! With a watchdog device configured (`[watchdog]`), the guard also keeps it alive while
//! writes are allowed (see `watchdog`).

use std::io::{self, BufRead, BufReader, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, Signal};
use nix::time::{clock_gettime, ClockId};
use nix::unistd::Pid;
use pgshift_core::datadir::DataDir;

use crate::watchdog::Watchdog;

/// Milliseconds on CLOCK_MONOTONIC, the same in every process of the host.
pub fn monotonic_ms() -> u64 {
    clock_gettime(ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1000 + t.tv_nsec() as u64 / 1_000_000)
        .unwrap_or(0)
}

/// The agent's handle on its guard.
pub struct Guard {
    child: Child,
    stdin: ChildStdin,
}

impl Guard {
    pub fn spawn(data_dir: &Path, watchdog: Option<&Path>) -> io::Result<Guard> {
        let exe = std::env::current_exe()?;
        let mut cmd = Command::new(exe);
        cmd.arg("fence-guard").arg(data_dir);
        if let Some(device) = watchdog {
            cmd.arg("--watchdog").arg(device);
        }
        let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::null()).spawn()?;
        let stdin = child.stdin.take().expect("piped");
        Ok(Guard { child, stdin })
    }

    /// Writes are allowed until `deadline` (monotonic ms); a watchdog, if the guard has one,
    /// resets the host `watchdog_timeout` seconds after its last keepalive.
    pub fn primary_until(&mut self, deadline: u64, watchdog_timeout: u32) -> io::Result<()> {
        writeln!(self.stdin, "P {deadline} {watchdog_timeout}")
    }

    pub fn standby(&mut self) -> io::Result<()> {
        writeln!(self.stdin, "S")
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Standby,
    Primary { until: u64, watchdog_timeout: u32 },
    Fenced,
}

/// The guard's main loop; returns when the agent is gone and nothing is left to enforce.
pub fn run(data_dir: &Path, watchdog: Option<PathBuf>) -> i32 {
    let dd = DataDir::new(data_dir);
    let mut watchdog = watchdog.map(Watchdog::new);
    let stdin = io::stdin();
    let mut lines = BufReader::new(stdin.lock());
    let mut mode = Mode::Standby;
    let mut agent_gone = false;
    loop {
        if !agent_gone {
            // Lines already buffered do not make the pipe readable again.
            let readable = !lines.buffer().is_empty() || {
                let fd = io::stdin();
                let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
                poll(&mut fds, PollTimeout::from(50u16)).unwrap_or(0) > 0
            };
            if readable {
                let mut line = String::new();
                match lines.read_line(&mut line) {
                    Ok(0) | Err(_) => agent_gone = true,
                    Ok(_) => mode = parse(&line).unwrap_or(mode),
                }
            }
        } else {
            std::thread::sleep(Duration::from_millis(50));
        }
        let now = monotonic_ms();
        match mode {
            Mode::Primary { until, .. } if now >= until => {
                let stopped = fence(&dd);
                mode = Mode::Fenced;
                if let Some(w) = &mut watchdog {
                    if stopped {
                        w.disarm();
                    } else if w.armed() {
                        // No more keepalives: the device resets the host.
                        eprintln!("pgshift fence-guard: PostgreSQL survived the fence; the watchdog will reset this host");
                    }
                }
            }
            Mode::Primary {
                watchdog_timeout, ..
            } => {
                if let (Some(w), true) = (&mut watchdog, watchdog_timeout > 0) {
                    w.keepalive(now, watchdog_timeout);
                }
            }
            Mode::Standby => {
                if let Some(w) = &mut watchdog {
                    w.disarm();
                }
            }
            Mode::Fenced => {}
        }
        // Leaving with the device armed (after a failed fence) lets it reset the host.
        if agent_gone && !matches!(mode, Mode::Primary { .. }) {
            return 0;
        }
    }
}

fn parse(line: &str) -> Option<Mode> {
    let mut it = line.split_whitespace();
    match it.next()? {
        "S" => Some(Mode::Standby),
        "P" => Some(Mode::Primary {
            until: it.next()?.parse().ok()?,
            watchdog_timeout: it.next().map_or(Some(0), |s| s.parse().ok())?,
        }),
        _ => None,
    }
}

/// Immediate shutdown (SIGQUIT: the postmaster ends every backend at once, no checkpoint),
/// then SIGKILL if it is still there after a second. False when it survived even that.
fn fence(dd: &DataDir) -> bool {
    let Ok(Some(pm)) = dd.postmaster() else {
        return true;
    };
    eprintln!(
        "pgshift fence-guard: leadership deadline passed without renewal; immediate shutdown of PostgreSQL (pid {})",
        pm.pid
    );
    let pid = Pid::from_raw(pm.pid);
    let _ = kill(pid, Signal::SIGQUIT);
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(50));
        if gone(pid) {
            return true;
        }
    }
    let _ = kill(pid, Signal::SIGKILL);
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(50));
        if gone(pid) {
            return true;
        }
    }
    false
}

/// No such process, or only its exit status left (a zombie until its parent reaps it).
fn gone(pid: Pid) -> bool {
    kill(pid, None).is_err()
        || std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages() {
        let primary = |until, watchdog_timeout| {
            Some(Mode::Primary {
                until,
                watchdog_timeout,
            })
        };
        assert_eq!(parse("P 1234\n"), primary(1234, 0));
        assert_eq!(parse("P 1234 2\n"), primary(1234, 2));
        assert_eq!(parse("P 1234 x\n"), None);
        assert_eq!(parse("S\n"), Some(Mode::Standby));
        assert_eq!(parse("X\n"), None);
        assert_eq!(parse("P\n"), None);
    }
}
