//! The CLI's requests: `pgshift switchover | failover | down | up | reinit | restart | pause |
//! resume`. Each
//! goes to the local agent's API with this host's credentials (the bearer token in
//! api.token_file, or its certificate when the API asks for one), then waits in etcd until
//! the cluster shows the result. Nothing here ever prompts.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::api::control::read_token;
use crate::cluster_config::ClusterConfig;
use crate::config::{Config, RebuildMethod};
use crate::dcs::{Dcs, View};
use crate::records::unix_now;
use crate::state::NodeState;

pub struct Ctl<'a> {
    cfg: &'a Config,
    dcs: Dcs,
}

/// A POST to the local agent's API; the JSON answer, or why it failed.
fn post(cfg: &Config, path: &str, body: Value) -> Result<Value, String> {
    let (host, port) = local_api(cfg)?;
    if cfg.api.tls_cert.is_some() && cfg.api.tls_ca.is_none() {
        return Err("the API serves TLS: set api.tls_ca so the CLI can verify it".into());
    }
    let tls = cfg.api_client_tls()?;
    let token = match &cfg.api.token_file {
        Some(path) => Some(read_token(path)?),
        None => None,
    };
    // The agent answers from memory, or after at most a few etcd calls for a request.
    let client = crate::http::Client::new(tls.as_ref(), 1 << 20);
    let url = format!(
        "{}{path}",
        crate::http::base_url(tls.is_some(), &host, port)
    );
    let answer = client
        .post_json(&url, token.as_deref(), body.to_string().as_bytes(), Duration::from_secs(10))
        .map_err(|e| format!("the local agent's API at {host}:{port} does not answer ({e}); is `pgshift agent` running?"))?;
    let status = answer.status;
    let answer: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
    if (200..300).contains(&status) {
        Ok(answer)
    } else {
        Err(format!(
            "{} ({status})",
            answer["error"].as_str().unwrap_or("the agent refused")
        ))
    }
}

/// A GET from the local agent's API (its last view of the cluster while etcd is away).
pub fn get_local(cfg: &Config, path: &str) -> Result<Value, String> {
    let (host, port) = local_api(cfg)?;
    let tls = cfg.api_client_tls()?;
    let client = crate::http::Client::new(tls.as_ref(), 1 << 20);
    let url = format!(
        "{}{path}",
        crate::http::base_url(tls.is_some(), &host, port)
    );
    let answer = client
        .get(&url, false, Duration::from_secs(3))
        .map_err(|e| format!("the local agent's API at {host}:{port} does not answer ({e})"))?;
    serde_json::from_slice(&answer.body).map_err(|e| format!("the local agent's answer: {e}"))
}

/// Where this host's agent listens, as a client reaches it.
fn local_api(cfg: &Config) -> Result<(String, u16), String> {
    let (h, p) = cfg
        .api
        .listen
        .rsplit_once(':')
        .ok_or("api.listen is not host:port")?;
    let port = p.parse().map_err(|_| "api.listen has a bad port")?;
    let host = match h {
        // A wildcard listener is reached on loopback; by name when TLS must verify it.
        "0.0.0.0" | "[::]" | "::" => "localhost",
        h => h.trim_matches(['[', ']']),
    };
    Ok((host.to_string(), port))
}

fn wait_until<T>(
    timeout: Duration,
    mut check: impl FnMut() -> Result<Option<T>, String>,
) -> Result<Option<T>, String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(t) = check()? {
            return Ok(Some(t));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl<'a> Ctl<'a> {
    pub fn new(cfg: &'a Config) -> Result<Ctl<'a>, String> {
        Ok(Ctl {
            cfg,
            dcs: Dcs::new(cfg.etcd_client(Duration::from_secs(3))?, &cfg.cluster),
        })
    }

    fn read(&self) -> Result<Option<View>, String> {
        // A failed read while the cluster moves is not fatal: try again.
        Ok(self.dcs.read().ok())
    }

    /// Waits until `node` leads as a running primary; or the request ended otherwise.
    fn wait_leader(
        &self,
        node: Option<&str>,
        from: Option<&str>,
        requested_at: u64,
        timeout: Duration,
    ) -> Result<String, String> {
        let got =
            wait_until(timeout, || {
                let Some(v) = self.read()? else {
                    return Ok(None);
                };
                let leader = v.leader.as_ref().map(|l| l.name.clone());
                let primary = leader
                    .as_deref()
                    .and_then(|l| v.member(l))
                    .is_some_and(|m| m.role == "primary");
                let arrived = match (node, &leader) {
                    (Some(n), Some(l)) => l == n,
                    (None, Some(l)) => Some(l.as_str()) != from,
                    _ => false,
                };
                if arrived && primary && v.request.is_none() {
                    return Ok(Some(Ok(leader.unwrap_or_default())));
                }
                if let Some(o) = v.outcome.as_ref().filter(|o| {
                    !o.ok && o.request.requested_at == requested_at && v.request.is_none()
                }) {
                    return Ok(Some(Err(o.message.clone())));
                }
                Ok(None)
            })?;
        match got {
            Some(r) => r,
            None => Err(format!(
                "not done after {} s; `pgshift status` shows where it stands",
                timeout.as_secs()
            )),
        }
    }

    pub fn switchover(
        &self,
        to: Option<&str>,
        at: Option<u64>,
        timeout: Duration,
    ) -> Result<String, String> {
        let started = Instant::now();
        let answer = post(self.cfg, "/switchover", json!({"to": to, "at": at}))?;
        let r = &answer["request"];
        let from = r["from"].as_str().unwrap_or("").to_string();
        if let Some(at) = at.filter(|t| *t > unix_now()) {
            return Ok(format!(
                "switchover from {from} to {} scheduled at {} (in {} s); `pgshift switchover --cancel` cancels it",
                to.unwrap_or("the best standby"),
                at,
                at - unix_now()
            ));
        }
        let leader = self.wait_leader(
            to,
            Some(&from),
            r["requested_at"].as_u64().unwrap_or(0),
            timeout,
        )?;
        Ok(format!(
            "switched over from {from} to {leader} in {:.2} s",
            started.elapsed().as_secs_f64()
        ))
    }

    pub fn cancel(&self) -> Result<String, String> {
        post(self.cfg, "/switchover/cancel", json!({}))?;
        Ok("switchover cancelled".into())
    }

    pub fn failover(&self, to: &str, timeout: Duration) -> Result<String, String> {
        let started = Instant::now();
        let answer = post(self.cfg, "/failover", json!({"to": to}))?;
        let requested = answer["request"]["requested_at"].as_u64().unwrap_or(0);
        let leader = self.wait_leader(Some(to), None, requested, timeout)?;
        Ok(format!(
            "{leader} promoted in {:.2} s",
            started.elapsed().as_secs_f64()
        ))
    }

    /// Maintenance on or off; returns once the node's agent applies it (its health checks
    /// answer accordingly) and, for a leader put down, once another node leads.
    pub fn maintenance(
        &self,
        node: Option<&str>,
        down: bool,
        timeout: Duration,
    ) -> Result<String, String> {
        let path = if down { "/down" } else { "/up" };
        let answer = post(self.cfg, path, json!({"node": node}))?;
        let node = answer["node"].as_str().unwrap_or_default().to_string();
        let was_leader = answer["leader"].as_bool().unwrap_or(false);
        let alive = self.read()?.is_some_and(|v| v.member(&node).is_some());
        if !alive {
            return Ok(format!(
                "{node} is {} (recorded in etcd; its agent is not running and applies it when it starts)",
                if down { "down" } else { "up" }
            ));
        }
        let applied = wait_until(timeout, || {
            Ok(self.read()?.and_then(|v| {
                let m = v.member(&node)?;
                let moved =
                    !(down && was_leader) || v.leader.as_ref().is_some_and(|l| l.name != node);
                (m.down == down && moved).then_some(())
            }))
        })?;
        match applied {
            Some(()) if down && was_leader => Ok(format!(
                "{node} is down: it handed the leadership over and is out of rotation"
            )),
            Some(()) => Ok(format!(
                "{node} is {}",
                if down {
                    "down: out of rotation, never promoted"
                } else {
                    "up: back in rotation"
                }
            )),
            None if down && was_leader => Err(format!(
                "{node} is marked down but still leads after {} s: no standby could take over (see pgshift status)",
                timeout.as_secs()
            )),
            None => Err(format!(
                "{node}'s agent did not confirm within {} s",
                timeout.as_secs()
            )),
        }
    }

    /// Files the reinit and waits until `node` rebuilt (its rebuild counter moved) and
    /// streams again.
    pub fn reinit(
        &self,
        node: &str,
        from: Option<RebuildMethod>,
        force: bool,
        timeout: Duration,
    ) -> Result<String, String> {
        let started = Instant::now();
        let body = json!({"node": node, "from": from, "force": force});
        let answer = post(self.cfg, "/reinit", body)?;
        let before = answer["rebuilds"].as_u64().unwrap_or(0);
        let done = wait_until(timeout, || {
            Ok(self.read()?.and_then(|v| {
                let m = v.member(node)?;
                (m.rebuilds > before && m.state == NodeState::Streaming)
                    .then(|| m.upstream.clone().unwrap_or_default())
            }))
        })?;
        match done {
            Some(upstream) => Ok(format!(
                "{node} rebuilt and streaming from {upstream} in {:.1} s (its old data directory is kept aside, see its agent's log)",
                started.elapsed().as_secs_f64()
            )),
            None => Err(format!(
                "{node} is not streaming from a rebuilt directory after {} s; `pgshift status` and its agent's log show where it stands",
                timeout.as_secs()
            )),
        }
    }

    /// Files restarts of `node` or of every member (with `pending`, only those with a
    /// setting waiting for one), standbys first, the leader last (its agent hands over
    /// first); waits until every one is done, unless scheduled `at` a later time.
    pub fn restart(
        &self,
        node: Option<&str>,
        pending: bool,
        at: Option<u64>,
        timeout: Duration,
    ) -> Result<String, String> {
        let started = Instant::now();
        let v = self
            .read()?
            .ok_or("etcd does not answer: nothing was restarted")?;
        let leader = v.leader.as_ref().map(|l| l.name.clone());
        let mut targets: Vec<&str> = match node {
            Some(n) => vec![v
                .member(n)
                .map(|m| m.name.as_str())
                .ok_or_else(|| format!("no running member named {n}"))?],
            None => v.members.iter().map(|m| m.name.as_str()).collect(),
        };
        if pending {
            targets.retain(|n| v.member(n).is_some_and(|m| m.pending_restart));
        }
        if targets.is_empty() {
            return Ok(if pending {
                "no member has a setting waiting for a restart: nothing to do".into()
            } else {
                "no member to restart".into()
            });
        }
        // Standbys first: the leader's agent also waits for them before it hands over.
        targets.sort_by_key(|n| leader.as_deref() == Some(*n));
        for n in &targets {
            post(self.cfg, "/restart", json!({"node": n, "at": at}))?;
        }
        let list = targets.join(", ");
        if let Some(at) = at.filter(|t| *t > unix_now()) {
            return Ok(format!(
                "restart of {list} scheduled at {at} (in {} s): standbys first, the leader last by a switchover",
                at - unix_now()
            ));
        }
        let done = wait_until(timeout, || {
            Ok(self.read()?.and_then(|v| {
                let settled = targets.iter().all(|n| {
                    !v.restart.contains_key(*n)
                        && v.member(n).is_some_and(|m| {
                            m.state == NodeState::Streaming
                                || (m.role == "primary"
                                    && v.leader.as_ref().is_some_and(|l| l.name == *n))
                        })
                });
                settled.then(|| v.leader.as_ref().map(|l| l.name.clone()))
            }))
        })?;
        match done {
            Some(now) => {
                let moved = match (&leader, &now) {
                    (Some(a), Some(b)) if a != b => format!("; {a} handed over to {b} first"),
                    _ => String::new(),
                };
                Ok(format!(
                    "restarted {list} in {:.1} s{moved}",
                    started.elapsed().as_secs_f64()
                ))
            }
            None => Err(format!(
                "the restarts of {list} are not all done after {} s; `pgshift status` shows where they stand",
                timeout.as_secs()
            )),
        }
    }

    /// The stored document and its revision (None: none yet).
    fn config_now(&self) -> Result<(ClusterConfig, Option<i64>), String> {
        let v = self
            .read()?
            .ok_or("etcd does not answer: the configuration cannot be read")?;
        match v.config {
            None => Ok((ClusterConfig::default(), None)),
            Some((Ok(doc), rev)) => Ok((doc, Some(rev))),
            Some((Err(e), rev)) => Err(format!(
                "the stored configuration (revision {rev}) cannot be read: {e}"
            )),
        }
    }

    pub fn config_show(&self, json: bool) -> Result<String, String> {
        let (doc, rev) = self.config_now()?;
        if json {
            return Ok(json!({"revision": rev, "config": doc}).to_string());
        }
        let head = match rev {
            Some(r) => format!("# revision {r}"),
            None => "# none yet: every node runs with its agent.toml".into(),
        };
        Ok(format!("{head}\n{}", doc.to_toml()).trim_end().to_string())
    }

    /// Writes `doc` through the local agent's API, which checks it over its agent.toml and
    /// refuses it if the stored one is no longer at `base`. Checked here first too, so a
    /// mistake is told before anything is sent.
    fn config_write(&self, doc: &ClusterConfig, base: Option<i64>) -> Result<String, String> {
        doc.over(self.cfg)
            .map_err(|e| format!("{e}: nothing was written"))?;
        let answer = post(
            self.cfg,
            "/config",
            json!({"config": doc, "revision": base}),
        )?;
        Ok(format!(
            "written as revision {}; every agent applies it within a loop (parameters needing a restart show as pending restart: pgshift restart --pending)",
            answer["revision"]
        ))
    }

    pub fn config_set(
        &self,
        assignments: &[String],
        revision: Option<i64>,
    ) -> Result<String, String> {
        let (mut doc, rev) = self.config_now()?;
        if let Some(seen) = revision.filter(|r| Some(*r) != rev) {
            return Err(format!(
                "the configuration is at {} now, not revision {seen}: nothing was written; look at it again (pgshift config show)",
                rev.map_or("none".into(), |r| format!("revision {r}"))
            ));
        }
        for a in assignments {
            doc.set(a)?;
        }
        self.config_write(&doc, rev)
    }

    /// $VISUAL or $EDITOR (vi) on the document as TOML; written if it changed and is valid,
    /// against the revision it was read at.
    pub fn config_edit(&self) -> Result<String, String> {
        let (doc, rev) = self.config_now()?;
        // A directory only this user can enter: the document is nobody else's to read.
        use std::os::unix::fs::DirBuilderExt;
        let dir = std::env::temp_dir().join(format!(
            "pgshift-config-{}-{}",
            std::process::id(),
            unix_now()
        ));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let result = self.edit_in(&dir, &doc, rev);
        let _ = std::fs::remove_dir_all(&dir);
        result
    }

    fn edit_in(
        &self,
        dir: &std::path::Path,
        doc: &ClusterConfig,
        rev: Option<i64>,
    ) -> Result<String, String> {
        let path = dir.join("pgshift-config.toml");
        fs_err::write(&path, doc.to_toml()).map_err(|e| e.to_string())?;
        let editor = std::env::var("VISUAL")
            .or_else(|_| std::env::var("EDITOR"))
            .unwrap_or_else(|_| "vi".into());
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("{editor} \"$1\""))
            .arg("sh")
            .arg(&path)
            .status()
            .map_err(|e| format!("cannot run {editor}: {e}"))?;
        if !status.success() {
            return Err(format!(
                "{editor} exited with {status}: nothing was written"
            ));
        }
        let text = fs_err::read_to_string(&path).map_err(|e| e.to_string())?;
        let edited: ClusterConfig =
            toml::from_str(&text).map_err(|e| format!("{e}nothing was written"))?;
        if edited == *doc {
            return Ok("no change".into());
        }
        self.config_write(&edited, rev)
    }

    pub fn pause(&self, paused: bool) -> Result<String, String> {
        post(
            self.cfg,
            if paused { "/pause" } else { "/resume" },
            json!({}),
        )?;
        Ok(if paused {
            "automatic failover paused cluster-wide (pgshift resume restarts it)".into()
        } else {
            "automatic failover resumed".into()
        })
    }
}

/// `--at`: Unix seconds, `+N[s|m|h]` from now, or RFC 3339 (`2026-12-01T10:00:00Z`,
/// `...+01:00`).
pub fn parse_at(text: &str, now: u64) -> Result<u64, String> {
    let bad = || {
        format!(
            "--at {text:?}: give RFC 3339 (2026-12-01T10:00:00Z), +30s/+5m/+1h, or Unix seconds"
        )
    };
    if let Some(rel) = text.strip_prefix('+') {
        let (n, unit) = rel.split_at(rel.find(|c: char| !c.is_ascii_digit()).unwrap_or(rel.len()));
        let n: u64 = n.parse().map_err(|_| bad())?;
        let mult = match unit {
            "" | "s" => 1,
            "m" => 60,
            "h" => 3600,
            _ => return Err(bad()),
        };
        return Ok(now + n * mult);
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().map_err(|_| bad());
    }
    let b = text.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| -> Result<i64, String> {
        text.get(r).and_then(|s| s.parse().ok()).ok_or_else(bad)
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, s) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return Err(bad());
    }
    // Skip fractional seconds, then the zone.
    let mut rest = &text[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        rest = frac.trim_start_matches(|c: char| c.is_ascii_digit());
    }
    let offset = match rest {
        "Z" | "z" => 0,
        z if z.len() == 6 && (z.starts_with('+') || z.starts_with('-')) => {
            let oh: i64 = z[1..3].parse().map_err(|_| bad())?;
            let om: i64 = z[4..6].parse().map_err(|_| bad())?;
            let sign = if z.starts_with('-') { -1 } else { 1 };
            sign * (oh * 3600 + om * 60)
        }
        _ => return Err(bad()),
    };
    // Days from the civil date (proleptic Gregorian), after Howard Hinnant.
    let (y, mo) = if mo <= 2 {
        (y - 1, mo + 9)
    } else {
        (y, mo - 3)
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * mo + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + s - offset;
    u64::try_from(secs).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(parse_at("2026-12-01T00:00:00Z", 0).unwrap(), 1_796_083_200);
        assert_eq!(parse_at("1970-01-01T01:00:00+01:00", 0).unwrap(), 0);
        assert_eq!(parse_at("2000-02-29T12:30:15.25Z", 0).unwrap(), 951_827_415);
        assert_eq!(parse_at("+90", 1000).unwrap(), 1090);
        assert_eq!(parse_at("+5m", 1000).unwrap(), 1300);
        assert_eq!(parse_at("1800000000", 0).unwrap(), 1_800_000_000);
        for bad in [
            "tomorrow",
            "2026-13-01T00:00:00Z",
            "2026-12-01T00:00:00",
            "+5d",
            "",
        ] {
            assert!(parse_at(bad, 0).is_err(), "{bad}");
        }
    }
}
