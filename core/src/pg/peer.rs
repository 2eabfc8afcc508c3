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
    /// exists; otherwise does nothing (a non-root caller connects as itself).
    pub(crate) fn become_named(name: &str) -> EffectiveUser {
        if !Uid::effective().is_root() {
            return EffectiveUser { switched: false };
        }
        let Ok(Some(user)) = User::from_name(name) else {
            return EffectiveUser { switched: false };
        };
        if user.uid.is_root() {
            return EffectiveUser { switched: false };
        }
        if setegid(user.gid).is_err() {
            return EffectiveUser { switched: false };
        }
        if seteuid(user.uid).is_err() {
            let _ = setegid(Gid::from_raw(0));
            return EffectiveUser { switched: false };
        }
        EffectiveUser { switched: true }
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
