//! A Linux watchdog device (`/dev/watchdog`) kept alive by the fence guard while this node may
//! accept writes: the last defence when the guard itself cannot act (the host is so starved
//! or stuck that no process runs, or PostgreSQL survives SIGKILL). Then the keepalives stop
//! and the hardware (or `softdog`) resets the host before a follower can be promoted.
//!
//! The timing argument: the guard pings only before its deadline T (the last leader write
//! plus retry_timeout), so a reset comes at the latest at T + timeout; followers wait ttl
//! from the last leader write. Hence timeout <= ttl - retry_timeout, in whole seconds
//! (the device's unit), which `timeout_for` computes and the configuration check enforces.
//!
//! Armed on the first keepalive, disarmed with the magic close ('V', then close) as soon as
//! writes are no longer allowed and PostgreSQL is down, or the node is a standby: a standby
//! whose guard hangs must not reset its host.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use crate::config::{self, WatchdogMode};
use crate::decide::Timing;

// <linux/watchdog.h>: WDIOC_SETTIMEOUT = _IOWR('W', 6, int).
nix::ioctl_readwrite!(wdioc_settimeout, b'W', 6, nix::libc::c_int);

/// Whole seconds the device may wait for a keepalive under `timing`; None when ttl leaves
/// less than a second after retry_timeout.
pub fn timeout_for(t: &Timing) -> Option<u32> {
    let secs = t.ttl.checked_sub(t.retry_timeout)? / 1000;
    (secs >= 1).then_some(secs as u32)
}

/// The device the guard gets, by `[watchdog] mode`: checked writable (by this user) at start;
/// automatic goes on without one that is not, required refuses to start.
pub fn device(cfg: &config::Watchdog) -> Result<Option<PathBuf>, String> {
    if cfg.mode == WatchdogMode::Off {
        return Ok(None);
    }
    match nix::unistd::access(&cfg.device, nix::unistd::AccessFlags::W_OK) {
        Ok(()) => Ok(Some(cfg.device.clone())),
        Err(e) if cfg.mode == WatchdogMode::Required => Err(format!(
            "watchdog: {} cannot be written ({e}): load a driver (softdog) and let this user write the device, or set [watchdog] mode = \"automatic\"",
            cfg.device.display()
        )),
        Err(e) => {
            tracing::warn!(
                "watchdog: {} cannot be written ({e}); running without a watchdog",
                cfg.device.display()
            );
            Ok(None)
        }
    }
}

pub struct Watchdog {
    path: PathBuf,
    file: Option<File>,
    timeout: u32,
    last_ping: u64,
    /// The last open failed (logged once until one succeeds).
    open_failed: bool,
}

impl Watchdog {
    pub fn new(path: PathBuf) -> Watchdog {
        Watchdog {
            path,
            file: None,
            timeout: 0,
            last_ping: 0,
            open_failed: false,
        }
    }

    /// Writes are allowed: arm the device if it is not, set its timeout when it changed,
    /// and ping it at a quarter of the timeout.
    pub fn keepalive(&mut self, now_ms: u64, timeout: u32) {
        if self.file.is_none() {
            // Non-blocking: whatever the path turns out to be (a FIFO without a reader), the
            // guard must never hang in open, or it could not fence.
            match OpenOptions::new()
                .write(true)
                .custom_flags(nix::libc::O_CLOEXEC | nix::libc::O_NONBLOCK)
                .open(&self.path)
            {
                Ok(f) => {
                    eprintln!(
                        "pgshift fence-guard: watchdog {} armed",
                        self.path.display()
                    );
                    self.file = Some(f);
                    self.timeout = 0;
                    self.last_ping = 0;
                    self.open_failed = false;
                }
                Err(e) => {
                    // Retried at the next keepalive; the guard's own deadline still holds.
                    if !self.open_failed {
                        eprintln!(
                            "pgshift fence-guard: cannot open the watchdog {}: {e}",
                            self.path.display()
                        );
                    }
                    self.open_failed = true;
                    return;
                }
            }
        }
        let Some(f) = &mut self.file else { return };
        if timeout != self.timeout {
            let mut t = timeout as nix::libc::c_int;
            // SAFETY: the fd is open and `t` outlives the call.
            match unsafe { wdioc_settimeout(f.as_raw_fd(), &mut t) } {
                Ok(_) if t as u32 > timeout => eprintln!(
                    "pgshift fence-guard: the watchdog {} took a timeout of {t} s, not {timeout} s: it may reset the host only after a follower was promoted",
                    self.path.display()
                ),
                Ok(_) => {}
                // A device without the ioctl (or a FIFO standing in for one in tests) keeps
                // its own timeout.
                Err(e) => eprintln!(
                    "pgshift fence-guard: cannot set the watchdog timeout of {} to {timeout} s: {e}",
                    self.path.display()
                ),
            }
            self.timeout = timeout;
        }
        let every = u64::from(timeout) * 1000 / 4;
        if now_ms.saturating_sub(self.last_ping) >= every {
            if let Err(e) = f.write_all(b"1") {
                eprintln!("pgshift fence-guard: watchdog keepalive failed: {e}");
            }
            self.last_ping = now_ms;
        }
    }

    /// Magic close: the device stops counting.
    pub fn disarm(&mut self) {
        if let Some(mut f) = self.file.take() {
            if let Err(e) = f.write_all(b"V") {
                eprintln!("pgshift fence-guard: watchdog magic close failed: {e}");
            }
            eprintln!(
                "pgshift fence-guard: watchdog {} disarmed",
                self.path.display()
            );
        }
    }

    pub fn armed(&self) -> bool {
        self.file.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeout_fits_between_the_fence_and_the_followers() {
        let t = |ttl, retry_timeout| Timing {
            ttl,
            loop_wait: 500,
            retry_timeout,
        };
        assert_eq!(timeout_for(&t(3000, 1500)), Some(1));
        assert_eq!(timeout_for(&t(10_000, 2_000)), Some(8));
        assert_eq!(timeout_for(&t(2_000, 1_200)), None);
        assert_eq!(timeout_for(&t(1_000, 1_200)), None);
    }
}
