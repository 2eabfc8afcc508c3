//! A small etcd v3 client over etcd's JSON gateway (`POST /v3/...`), blocking, with one
//! deadline per call shared among the endpoints and fail-over between them. The agent needs
//! a handful of calls (range, put, transactions on a revision, leases); gRPC would cost
//! megabytes of binary and resident memory for them. HTTP is `crate::http` (pooled: one
//! connection per endpoint, reused across loops); the gateway's JSON is decoded into types
//! here (`gateway`), so an answer that is not what etcd sends is an error, never a zero.

mod gateway;

/// The least time one endpoint gets within a call (see `Client::call`): a read, and a write.
const READ_MIN_SHARE: Duration = Duration::from_millis(100);
const WRITE_MIN_SHARE: Duration = Duration::from_millis(250);

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use crate::http::{self, ClientTls};
pub use gateway::{Code, GatewayError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

impl Endpoint {
    pub fn parse(url: &str) -> Result<Endpoint, String> {
        let (tls, rest) = match (url.strip_prefix("http://"), url.strip_prefix("https://")) {
            (Some(r), _) => (false, r),
            (_, Some(r)) => (true, r),
            _ => {
                return Err(format!(
                    "{url:?}: expected http://host:port or https://host:port"
                ))
            }
        };
        let rest = rest.trim_end_matches('/');
        match rest.rsplit_once(':') {
            Some((h, p)) if !h.is_empty() && !h.contains(['/', '?', '#', '@']) => Ok(Endpoint {
                host: h.trim_matches(['[', ']']).to_string(),
                port: p.parse().map_err(|_| format!("{url:?}: bad port"))?,
                tls,
            }),
            _ => Err(format!("{url:?}: expected http(s)://host:port")),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", http::base_url(self.tls, &self.host, self.port))
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// No endpoint answered in time, or each that did had no leader or quorum: etcd is
    /// unreachable from here. Each endpoint's reason, in the order tried.
    #[error("etcd unreachable: {0}")]
    Unreachable(String),
    /// etcd answered with an error (a definite answer: trying another member would get the
    /// same).
    #[error("etcd error: {0}")]
    Server(GatewayError),
    /// An answer with status 200 that is not what the gateway sends (a revision that is not
    /// a number, a missing header): nothing in it can be trusted.
    #[error("etcd answered something unreadable on {path}: {why}")]
    Malformed { path: String, why: String },
}

/// One key as etcd returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    pub key: String,
    pub value: String,
    pub mod_revision: i64,
    pub lease: i64,
}

/// The largest answer read from etcd: a range of the cluster's keys is a few KB; etcd's
/// own request limit is 1.5 MiB per value.
const MAX_ANSWER: u64 = 8 << 20;

pub struct Client {
    endpoints: Vec<Endpoint>,
    /// The endpoint that answered last: tried first next time.
    preferred: AtomicUsize,
    timeout: Duration,
    http: http::Client,
}

impl Client {
    /// `timeout` is the budget of one call, all endpoints included.
    pub fn new(
        urls: &[String],
        timeout: Duration,
        tls: Option<ClientTls>,
    ) -> Result<Client, String> {
        let endpoints = urls
            .iter()
            .map(|u| Endpoint::parse(u))
            .collect::<Result<Vec<_>, _>>()?;
        if endpoints.is_empty() {
            return Err("no etcd endpoint".into());
        }
        if endpoints.iter().any(|e| e.tls) && tls.is_none() {
            return Err("https:// etcd endpoints need etcd.ca_file".into());
        }
        Ok(Client {
            endpoints,
            preferred: AtomicUsize::new(0),
            timeout,
            http: http::Client::new(tls.as_ref(), MAX_ANSWER),
        })
    }

    /// Every key under `prefix`, and the store's revision at the time of the read.
    pub fn range_prefix(&self, prefix: &str) -> Result<(i64, Vec<Kv>), Error> {
        let path = "/v3/kv/range";
        let r: gateway::Range = self.call(
            path,
            &json!({"key": b64(prefix), "range_end": b64(&prefix_end(prefix))}),
        )?;
        let kvs = r.kvs().map_err(|why| malformed(path, why))?;
        Ok((r.header.revision, kvs))
    }

    pub fn get(&self, key: &str) -> Result<Option<Kv>, Error> {
        let path = "/v3/kv/range";
        let r: gateway::Range = self.call(path, &json!({"key": b64(key)}))?;
        Ok(r.kvs()
            .map_err(|why| malformed(path, why))?
            .into_iter()
            .next())
    }

    /// Writes `key` (bound to `lease`, 0 for none); returns the new revision.
    pub fn put(&self, key: &str, value: &str, lease: i64) -> Result<i64, Error> {
        let r: gateway::Ack = self.call("/v3/kv/put", &put_body(key, value, lease))?;
        Ok(r.header.revision)
    }

    /// Writes `key` only if its mod_revision is `expected` (`None`: only if it is absent).
    /// Returns the new revision, or `None` when the comparison failed.
    pub fn put_if(
        &self,
        key: &str,
        value: &str,
        lease: i64,
        expected: Option<i64>,
    ) -> Result<Option<i64>, Error> {
        self.put_if_within(key, value, lease, expected, self.timeout)
    }

    /// `put_if` with a budget of its own instead of the client's.
    pub fn put_if_within(
        &self,
        key: &str,
        value: &str,
        lease: i64,
        expected: Option<i64>,
        budget: Duration,
    ) -> Result<Option<i64>, Error> {
        let compare = match expected {
            Some(rev) => {
                json!({"key": b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": rev.to_string()})
            }
            None => {
                json!({"key": b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": "0"})
            }
        };
        let r: gateway::Txn = self.call_within(
            "/v3/kv/txn",
            &json!({"compare": [compare], "success": [{"request_put": put_body(key, value, lease)}]}),
            budget,
        )?;
        Ok(r.succeeded.then_some(r.header.revision))
    }

    /// Deletes `key` only if its mod_revision is `expected`.
    pub fn delete_if(&self, key: &str, expected: i64) -> Result<bool, Error> {
        let r: gateway::Txn = self.call(
            "/v3/kv/txn",
            &json!({
                "compare": [{"key": b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": expected.to_string()}],
                "success": [{"request_delete_range": {"key": b64(key)}}],
            }),
        )?;
        Ok(r.succeeded)
    }

    pub fn delete(&self, key: &str) -> Result<(), Error> {
        let _: gateway::Ack = self.call("/v3/kv/deleterange", &json!({"key": b64(key)}))?;
        Ok(())
    }

    pub fn lease_grant(&self, ttl_secs: i64) -> Result<i64, Error> {
        let path = "/v3/lease/grant";
        let r: gateway::LeaseGrant = self.call(path, &json!({"TTL": ttl_secs.to_string()}))?;
        r.id().map_err(|why| malformed(path, why))
    }

    /// Refreshes a lease; false when it no longer exists (it expired).
    pub fn lease_keepalive(&self, id: i64) -> Result<bool, Error> {
        let r: gateway::KeepAlive =
            self.call("/v3/lease/keepalive", &json!({"ID": id.to_string()}))?;
        r.alive().map_err(Error::Server)
    }

    pub fn lease_revoke(&self, id: i64) -> Result<(), Error> {
        let _: gateway::Ack = self.call("/v3/lease/revoke", &json!({"ID": id.to_string()}))?;
        Ok(())
    }

    fn call<T: DeserializeOwned>(&self, path: &str, body: &Value) -> Result<T, Error> {
        self.call_within(path, body, self.timeout)
    }

    /// Tries each endpoint, the last good one first, within one overall deadline.
    fn call_within<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &Value,
        budget: Duration,
    ) -> Result<T, Error> {
        let deadline = Instant::now() + budget;
        let body = body.to_string();
        let n = self.endpoints.len();
        let first = self.preferred.load(Ordering::Relaxed) % n;
        let mut errors = Vec::new();
        let mut asked = first;
        for i in 0..n {
            let idx = (first + i) % n;
            let left = deadline.saturating_duration_since(Instant::now());
            if left < Duration::from_millis(10) {
                errors.push("no time left".to_string());
                break;
            }
            asked = idx;
            // Leave the other endpoints a share of the time when one hangs. A write gets at
            // least a TCP retransmission (200 ms at least on Linux) and a little: under packet
            // loss its raft commit often needs one, and a write given up on may still commit
            // behind our back (see `LeaderClock`); the stress battery's 5 % loss on the
            // primary fenced it with 166 ms shares. A read moves on sooner: a follower
            // watching for a dead leader's key should not wait on a dead member.
            let least = if path == "/v3/kv/range" {
                READ_MIN_SHARE
            } else {
                WRITE_MIN_SHARE
            };
            let share = (left / (n - i) as u32).max(least.min(left));
            let ep = &self.endpoints[idx];
            let answer = match self
                .http
                .post_json(&ep.url(path), None, body.as_bytes(), share)
            {
                Ok(a) => a,
                Err(e) => {
                    errors.push(format!("{ep}: {e}"));
                    continue;
                }
            };
            if answer.status == 200 {
                self.preferred.store(idx, Ordering::Relaxed);
                return gateway::decode(&answer.body).map_err(|why| malformed(path, why));
            }
            let err = GatewayError::from_answer(answer.status, &answer.body);
            // No leader or quorum on that member: another may do better.
            if err.transient() {
                errors.push(format!("{ep}: {err}"));
                continue;
            }
            // A definite answer: this member answered for the cluster.
            self.preferred.store(idx, Ordering::Relaxed);
            return Err(Error::Server(err));
        }
        // The next call (a leader whose renewal failed retries within 50 ms) starts with the
        // first member this one did not ask: the shares let two slow members spend the whole
        // budget, and starting from the same one again would never ask the third (seen: a
        // leader fenced under etcd leader churn, its last renewal having asked two members).
        self.preferred.store((asked + 1) % n, Ordering::Relaxed);
        Err(Error::Unreachable(errors.join("; ")))
    }
}

fn malformed(path: &str, why: String) -> Error {
    Error::Malformed {
        path: path.to_string(),
        why,
    }
}

fn put_body(key: &str, value: &str, lease: i64) -> Value {
    let mut b = json!({"key": b64(key), "value": b64(value)});
    if lease != 0 {
        b["lease"] = json!(lease.to_string());
    }
    b
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s.as_bytes())
}

/// The end of the range of keys starting with `prefix` (etcd's convention: the prefix with
/// its last byte incremented).
fn prefix_end(prefix: &str) -> String {
    let mut b = prefix.as_bytes().to_vec();
    while let Some(last) = b.pop() {
        if last < 0xff {
            b.push(last + 1);
            return String::from_utf8_lossy(&b).into_owned();
        }
    }
    "\0".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(
            Endpoint::parse("http://10.77.0.11:2379").unwrap(),
            Endpoint {
                host: "10.77.0.11".into(),
                port: 2379,
                tls: false
            }
        );
        let v6 = Endpoint::parse("https://[::1]:2379/").unwrap();
        assert_eq!((v6.host.as_str(), v6.tls), ("::1", true));
        assert_eq!(v6.url("/v3/kv/range"), "https://[::1]:2379/v3/kv/range");
        assert!(Endpoint::parse("ftp://x:1").is_err());
        assert!(Endpoint::parse("http://x").is_err());
        assert!(Endpoint::parse("http://x/y:1").is_err());
        assert!(Endpoint::parse("http://x:99999").is_err());
    }

    #[test]
    fn prefix_ranges() {
        assert_eq!(prefix_end("/pgshift/main/"), "/pgshift/main0");
    }
}
