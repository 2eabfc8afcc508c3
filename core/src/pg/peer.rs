//! Peer authentication from root. PostgreSQL's `peer` method compares the database user with
//! the uid the kernel recorded for the connecting socket (SO_PEERCRED, the effective uid at
//! `connect()`), so root connecting "as postgres" must hold postgres's effective ids while it
//! connects. We switch only the effective ids (the saved uid stays root) and switch back.

use nix::unistd::{setegid, seteuid, Gid, Uid, User};

/// Restores root's effective ids when dropped.
pub(crate) struct EffectiveUser {
    switched: bool,
}

impl EffectiveUser {
    /// Becomes the operating-system user named `name` when running as root and such a user
    /// exists; otherwise does nothing (a non-root caller connects as itself, and a database
    /// user with no operating-system namesake logs in by password). A switch that fails is an
    /// error: connecting as root instead would be a different login than the one asked for.
    ///
    /// The effective ids are per process on Linux (every thread changes with them): callers
    /// with threads of their own should not be root at all (the agent drops root for good at
    /// start, `process::become_for_good`).
    pub(crate) fn become_named(name: &str) -> Result<EffectiveUser, String> {
        let none = EffectiveUser { switched: false };
        if !Uid::effective().is_root() {
            return Ok(none);
        }
        let user = match User::from_name(name) {
            Ok(Some(u)) => u,
            Ok(None) => return Ok(none),
            Err(e) => {
                return Err(format!(
                    "cannot look up the operating-system user {name:?}: {e}"
                ))
            }
        };
        if user.uid.is_root() {
            return Ok(none);
        }
        setegid(user.gid)
            .map_err(|e| format!("cannot take the group of {name:?} to connect as it: {e}"))?;
        if let Err(e) = seteuid(user.uid) {
            let _ = setegid(Gid::from_raw(0));
            return Err(format!("cannot become {name:?} to connect as it: {e}"));
        }
        Ok(EffectiveUser { switched: true })
    }
}

impl Drop for EffectiveUser {
    fn drop(&mut self) {
        if self.switched {
            // Order matters: regain root's euid first, which permits changing the egid.
            let _ = seteuid(Uid::from_raw(0));
            let _ = setegid(Gid::from_raw(0));
        }
    }
}
