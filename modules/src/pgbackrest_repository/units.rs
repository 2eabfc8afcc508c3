//! systemd units: the `pgbackrest server` both sides run, and on the repository host one
//! timer + oneshot service per backup schedule. Units we wrote carry a marker line, so a
//! schedule that is gone from the task takes its units with it and nobody else's are touched.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use pgshift_core::atomic;
use pgshift_core::process::{output_text, Owner};
use pgshift_core::userfile::UserFile;

use crate::protocol::Failure;

const MARKER: &str =
    "# Managed by pgshift.cluster.pgbackrest_repository; local changes are overwritten.";
pub const SERVER_UNIT: &str = "pgbackrest-server.service";

/// File name → content.
pub type Units = BTreeMap<String, String>;

pub fn server(config: &Path, owner: &Owner) -> (String, String) {
    let text = format!(
        "{MARKER}
[Unit]
Description=pgBackRest TLS server
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
User={user}
Group={group}
ExecStart=/usr/bin/pgbackrest --config={config} server
ExecReload=/bin/kill -HUP $MAINPID
Restart=always
RestartSec=2

[Install]
WantedBy=multi-user.target
",
        user = owner.name,
        group = group_name(owner),
        config = config.display(),
    );
    (SERVER_UNIT.into(), text)
}

/// The service and timer of one schedule; backups run where the repository is.
pub fn backup(
    config: &Path,
    owner: &Owner,
    stanza: &str,
    kind: &str,
    on_calendar: &str,
) -> [(String, String); 2] {
    let base = format!("pgbackrest-{stanza}-{kind}-backup");
    let service = format!(
        "{MARKER}
[Unit]
Description=pgBackRest {kind} backup of stanza {stanza}
After=network-online.target pgbackrest-server.service
Wants=network-online.target

[Service]
Type=oneshot
User={user}
Group={group}
ExecStart=/usr/bin/pgbackrest --config={config} --stanza={stanza} --type={kind} backup
",
        user = owner.name,
        group = group_name(owner),
        config = config.display(),
    );
    let timer = format!(
        "{MARKER}
[Unit]
Description=Schedule of pgBackRest {kind} backups of stanza {stanza}

[Timer]
OnCalendar={on_calendar}
Persistent=true

[Install]
WantedBy=timers.target
"
    );
    [
        (format!("{base}.service"), service),
        (format!("{base}.timer"), timer),
    ]
}

fn group_name(owner: &Owner) -> String {
    nix::unistd::Group::from_gid(owner.gid.into())
        .ok()
        .flatten()
        .map(|g| g.name)
        .unwrap_or_else(|| owner.gid.to_string())
}

/// What writing `want` into `dir` would change: files to write and our files to remove.
pub struct Plan {
    pub write: Vec<(PathBuf, String, Option<String>)>,
    pub remove: Vec<(PathBuf, String)>,
}

pub fn plan(dir: &Path, want: &Units) -> Result<Plan, Failure> {
    let mut write = Vec::new();
    for (name, text) in want {
        let path = dir.join(name);
        let before = UserFile::in_new_dir("units_dir", &path)?.read_text(1024 * 1024)?;
        if before.as_deref() != Some(text.as_str()) {
            write.push((path, text.clone(), before));
        }
    }
    let mut remove = Vec::new();
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let ours = name.starts_with("pgbackrest-")
                && (name.ends_with(".service") || name.ends_with(".timer"))
                && !want.contains_key(&name);
            if !ours {
                continue;
            }
            if !e.file_type().is_ok_and(|t| t.is_file()) {
                continue;
            }
            if let Ok(Some(text)) = UserFile::resolve("units_dir", &e.path())
                .map_err(|e| e.to_string())
                .and_then(|f| f.read_text(1024 * 1024).map_err(|e| e.to_string()))
            {
                if text.starts_with(MARKER) {
                    remove.push((e.path(), text));
                }
            }
        }
    }
    remove.sort();
    Ok(Plan { write, remove })
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.write.is_empty() && self.remove.is_empty()
    }

    pub fn apply(&self, dir: &Path) -> Result<(), Failure> {
        if !self.write.is_empty() && !dir.is_dir() {
            fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        for (path, text, _) in &self.write {
            let own = atomic::Ownership {
                uid: 0,
                gid: 0,
                mode: 0o644,
            };
            atomic::write_atomic(path, text.as_bytes(), Some(own))
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        }
        for (path, _) in &self.remove {
            fs::remove_file(path).map_err(|e| format!("cannot remove {}: {e}", path.display()))?;
        }
        Ok(())
    }
}

/// `systemd-analyze verify` on the units before they are installed, when the tool exists
/// (a bad `OnCalendar` would otherwise only show at the next daemon-reload).
pub fn verify(want: &Units) -> Result<(), Failure> {
    if want.is_empty() || !Path::new("/usr/bin/systemd-analyze").exists() {
        return Ok(());
    }
    // A random name: a predictable one in a shared /tmp could be taken first by anyone, or
    // by the same pid in another pid namespace.
    let dir = tempfile::Builder::new()
        .prefix("pgshift-units-")
        .tempdir()
        .map_err(|e| format!("cannot create a temporary directory: {e}"))?
        .keep();
    let result = (|| {
        let mut files = Vec::new();
        for (name, text) in want {
            let p = dir.join(name);
            fs::write(&p, text).map_err(|e| format!("cannot write {}: {e}", p.display()))?;
            files.push(p);
        }
        let mut cmd = Command::new("/usr/bin/systemd-analyze");
        cmd.args(["verify", "--man=no"])
            .args(&files)
            .env("LC_ALL", "C");
        let out = pgshift_core::process::run_as(&mut cmd, None, std::time::Duration::from_secs(60))
            .map_err(|e| format!("cannot run systemd-analyze: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "systemd-analyze verify rejects the units: {}",
                output_text(&out).replace(&format!("{}/", dir.display()), "")
            ))
        }
    })();
    let _ = fs::remove_dir_all(&dir);
    result.map_err(Failure::from)
}
