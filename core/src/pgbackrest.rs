//! pgBackRest facts shared by the modules: its TLS server's reload, and the default
//! configuration path.

use std::time::{Duration, Instant};

use crate::process;

/// Where pgBackRest looks for its configuration (Debian falls back to /etc/pgbackrest.conf).
pub const DEFAULT_CONFIG: &str = "/etc/pgbackrest/pgbackrest.conf";

/// SIGHUPs every `pgbackrest … server` process here and returns once each has re-bound its
/// listener on `port` (at most 5 s); returns how many there were.
///
/// pgBackRest 2.45 reloads by closing its listening socket and binding a new one; a
/// connection that arrives in between is handed the old socket, the re-bind fails
/// (EADDRINUSE) and the server exits. So nobody may connect until the new listener is there
/// (measured: ~1 in 60 HUPs died when probed at once, none when probed after the re-bind).
pub fn reload_servers(port: u16) -> Result<usize, String> {
    let servers = process::find("pgbackrest", "server")?;
    let before: Vec<_> = servers
        .iter()
        .map(|&pid| (pid, process::listening_socket_inode(pid, port)))
        .collect();
    process::hup(&servers)?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let rebound = before.iter().all(|&(pid, old)| {
            old.is_none()
                || matches!(process::listening_socket_inode(pid, port), Some(i) if Some(i) != old)
        });
        if rebound {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(servers.len())
}
