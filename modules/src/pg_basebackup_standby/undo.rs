//! What a run changed, in order, so that a failure it could not foresee (a base backup cut
//! off, a server that does not start) puts the host and the primary back as they were — a
//! slot left behind on the primary keeps WAL forever, and a half-filled data directory makes
//! the next run refuse — and says what it put back.

use std::fs;
use std::path::PathBuf;

use pgshift_core::atomic::{self, Ownership};

use super::Setup;
use crate::protocol::Failure;

pub enum Step {
    /// The server that ran on the data directory was stopped: start it again.
    Stopped,
    /// The old data directory was moved aside: move it back.
    MovedAside { dir: PathBuf, aside: PathBuf },
    /// A replication slot created on the primary: drop it.
    Slot,
    /// A directory this run created: remove it with everything in it.
    CreatedDir(PathBuf),
    /// A directory that was empty and was filled: empty it again.
    FilledDir(PathBuf),
    /// A file written: put its previous content back, or remove it if it was new.
    File {
        path: PathBuf,
        before: Option<Vec<u8>>,
        own: Ownership,
    },
    /// The server was reloaded with new settings: reload again once files are restored.
    Reloaded,
    /// This run started the server: stop it.
    Started,
}

#[derive(Default)]
pub struct Undo {
    steps: Vec<Step>,
}

impl Undo {
    pub fn push(&mut self, step: Step) {
        self.steps.push(step);
    }

    /// Undoes every step, newest first, and returns the failure saying what was undone
    /// (also as the `undone` list) and what could not be.
    pub fn fail(self, s: &Setup, why: impl std::fmt::Display) -> Failure {
        let mut done: Vec<String> = Vec::new();
        let mut problems: Vec<String> = Vec::new();
        let mut note = |r: Result<String, String>| match r {
            Ok(d) => done.push(d),
            Err(p) => problems.push(p),
        };
        for step in self.steps.into_iter().rev() {
            note(match step {
                Step::Started => s
                    .ctl("stop")
                    .map(|_| "stopped the server this run started".into())
                    .map_err(|e| format!("stopping the server failed: {}", e.msg)),
                Step::Reloaded => {
                    s.dd.reload()
                        .map(|_| "reloaded the server with the previous settings".into())
                        .map_err(|e| format!("reloading the server failed: {e}"))
                }
                Step::File { path, before, own } => {
                    let r = match &before {
                        Some(bytes) => atomic::write_atomic(&path, bytes, Some(own)),
                        None => fs::remove_file(&path),
                    };
                    let what = if before.is_some() {
                        "restored"
                    } else {
                        "removed"
                    };
                    r.map(|_| format!("{what} {}", path.display()))
                        .map_err(|e| format!("could not put back {}: {e}", path.display()))
                }
                Step::FilledDir(dir) => empty_dir(&dir)
                    .map(|_| format!("emptied {} again", dir.display()))
                    .map_err(|e| format!("could not empty {}: {e}", dir.display())),
                Step::CreatedDir(dir) => fs::remove_dir_all(&dir)
                    .map(|_| format!("removed {}", dir.display()))
                    .map_err(|e| format!("could not remove {}: {e}", dir.display())),
                Step::Slot => s
                    .repl
                    .drop_slot(&s.slot, false)
                    .map(|_| format!("dropped slot {} on {}", s.slot, s.host))
                    .map_err(|e| format!("could not drop slot {} on {}: {e}", s.slot, s.host)),
                Step::MovedAside { dir, aside } => {
                    let _ = fs::remove_dir(&dir);
                    fs::rename(&aside, &dir)
                        .map(|_| format!("moved {} back to {}", aside.display(), dir.display()))
                        .map_err(|e| {
                            format!(
                                "could not move {} back to {}: {e}",
                                aside.display(),
                                dir.display()
                            )
                        })
                }
                Step::Stopped => s
                    .ctl("start")
                    .map(|_| "started the server again".into())
                    .map_err(|e| format!("starting the server again failed: {}", e.msg)),
            });
        }
        let mut msg = why.to_string();
        if !done.is_empty() {
            msg.push_str(&format!("; undone: {}", done.join(", ")));
        }
        if !problems.is_empty() {
            msg.push_str(&format!("; NOT undone: {}", problems.join("; ")));
        }
        Failure::from(msg).with("undone", done)
    }
}

fn empty_dir(dir: &std::path::Path) -> std::io::Result<()> {
    for e in fs::read_dir(dir)? {
        let p = e?.path();
        if fs::symlink_metadata(&p)?.is_dir() {
            fs::remove_dir_all(&p)?;
        } else {
            fs::remove_file(&p)?;
        }
    }
    Ok(())
}
