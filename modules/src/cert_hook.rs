//! cert_install as certbot's deploy hook. `deploy_hook: present` copies this very binary to
//! `<certbot_dir>/renewal-hooks/deploy/pgshift-cert-install` and saves the installation under
//! `<certbot_dir>/pgshift/` (one 0600 file per destination). On renewal certbot runs the hook
//! with `RENEWED_LINEAGE` and no arguments; it replays every saved installation of that lineage
//! with the same checks, reload and verification. certbot ignores a failing hook (it only logs
//! it), so failures also go to syslog and stderr, loudly.

use std::fs;
use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};

use pgshift_core::atomic::{self, Ownership};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::cert_install::{install, Install};
use crate::login::LoginParams;
use crate::protocol::{Context, Failure};

pub const HOOK_NAME: &str = "pgshift-cert-install";

/// What the hook replays: the installation and how to reach the server (never a password).
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct Saved {
    install: Install,
    login: LoginParams,
}

fn hook_path(certbot_dir: &Path) -> PathBuf {
    certbot_dir.join("renewal-hooks/deploy").join(HOOK_NAME)
}

fn saved_dir(certbot_dir: &Path) -> PathBuf {
    certbot_dir.join("pgshift")
}

/// One file per destination: the destination certificate's path, flattened.
fn saved_path(p: &Install) -> PathBuf {
    let dest = p.dest_dir.join(&p.cert_name).display().to_string();
    let slug: String = dest
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    saved_dir(&p.certbot_dir).join(format!("{}.json", slug.trim_start_matches('_')))
}

const ROOT_0755: Ownership = Ownership {
    uid: 0,
    gid: 0,
    mode: 0o755,
};
const ROOT_0600: Ownership = Ownership {
    uid: 0,
    gid: 0,
    mode: 0o600,
};

/// Applies `deploy_hook`; returns whether anything changed (or would, in check mode).
pub fn register(
    ctx: &mut Context,
    p: &Install,
    login: &LoginParams,
    out: &mut Map<String, Value>,
) -> Result<bool, Failure> {
    let hook = hook_path(&p.certbot_dir);
    let saved = saved_path(p);
    match p.deploy_hook.as_str() {
        "present" => {
            let exe = fs::read(std::env::current_exe().map_err(|e| e.to_string())?)
                .map_err(|e| format!("cannot read this module's binary: {e}"))?;
            let mut login = login.clone();
            login.login_password = None;
            let record = Saved {
                install: p.clone(),
                login,
            };
            let mut json = serde_json::to_vec_pretty(&record).map_err(|e| e.to_string())?;
            json.push(b'\n');
            let hook_changed = fs::read(&hook).ok().as_deref() != Some(&exe[..]);
            let saved_changed = fs::read(&saved).ok().as_deref() != Some(&json[..]);
            out.insert("hook".into(), hook.display().to_string().into());
            out.insert("saved".into(), saved.display().to_string().into());
            if ctx.check_mode {
                return Ok(hook_changed || saved_changed);
            }
            for (path, bytes, own, changed) in [
                (&hook, &exe, ROOT_0755, hook_changed),
                (&saved, &json, ROOT_0600, saved_changed),
            ] {
                if changed {
                    let dir = path.parent().expect("has a parent");
                    fs::create_dir_all(dir)
                        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
                    atomic::write_atomic(path, bytes, Some(own))
                        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
                }
            }
            Ok(hook_changed || saved_changed)
        }
        "absent" => {
            let mut changed = saved.exists();
            if changed && !ctx.check_mode {
                fs::remove_file(&saved)
                    .map_err(|e| format!("cannot remove {}: {e}", saved.display()))?;
            }
            let others = fs::read_dir(saved_dir(&p.certbot_dir))
                .map(|d| d.flatten().any(|e| e.path() != saved))
                .unwrap_or(false);
            if !others && hook.exists() {
                changed = true;
                if !ctx.check_mode {
                    fs::remove_file(&hook)
                        .map_err(|e| format!("cannot remove {}: {e}", hook.display()))?;
                }
            }
            Ok(changed)
        }
        _ => Ok(false),
    }
}

/// Hook mode: replays the saved installations of `lineage`; returns the exit code.
pub fn run_hook(lineage: &Path) -> i32 {
    let Some(certbot_dir) = lineage.parent().and_then(Path::parent) else {
        loud(&format!(
            "RENEWED_LINEAGE {} is not <certbot_dir>/live/<name>",
            lineage.display()
        ));
        return 1;
    };
    let mut files: Vec<PathBuf> = match fs::read_dir(saved_dir(certbot_dir)) {
        Ok(d) => d
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            loud(&format!(
                "cannot read {}: {e}",
                saved_dir(certbot_dir).display()
            ));
            return 1;
        }
    };
    files.sort();
    let same = |a: &Path, b: &Path| fs::canonicalize(a).ok() == fs::canonicalize(b).ok() || a == b;
    let (mut done, mut failed) = (0, 0);
    for file in files {
        let saved: Saved = match fs::read(&file)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        {
            Ok(s) => s,
            Err(e) => {
                loud(&format!(
                    "{}: unreadable saved installation: {e}",
                    file.display()
                ));
                failed += 1;
                continue;
            }
        };
        if !saved
            .install
            .lineage
            .as_deref()
            .is_some_and(|l| same(l, lineage))
        {
            continue;
        }
        done += 1;
        let dest = saved.install.dest_dir.join(&saved.install.cert_name);
        let mut ctx = Context::default();
        match install(&mut ctx, &saved.install, &saved.login) {
            Ok(out) => {
                let what = if out.get("changed") == Some(&Value::Bool(true)) {
                    "installed"
                } else {
                    "unchanged"
                };
                let sha = out
                    .get("cert_sha256")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                println!(
                    "{HOOK_NAME}: {} -> {} ({}): {what} {sha}",
                    lineage.display(),
                    dest.display(),
                    saved.install.service
                );
            }
            Err(f) => {
                failed += 1;
                let line = format!(
                    "{}: {} -> {} ({}): FAILED, still on the previous certificate: {}",
                    HOOK_NAME,
                    lineage.display(),
                    dest.display(),
                    saved.install.service,
                    f.msg
                );
                println!("{line}");
                loud(&line);
            }
        }
    }
    if done == 0 && failed == 0 {
        println!(
            "{HOOK_NAME}: no saved installation for {}",
            lineage.display()
        );
    }
    i32::from(failed > 0)
}

/// stderr and syslog (user.err), best effort.
fn loud(msg: &str) {
    eprintln!("{msg}");
    if let Ok(sock) = UnixDatagram::unbound() {
        let line = format!("<11>{HOOK_NAME}[{}]: {msg}", std::process::id());
        let _ = sock.send_to(line.as_bytes(), "/dev/log");
    }
}
