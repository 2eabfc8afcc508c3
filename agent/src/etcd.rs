//! A small etcd v3 client over etcd's JSON gateway (`POST /v3/...`), blocking, with a hard
//! timeout per request and fail-over between endpoints. The agent needs a handful of calls
//! (range, put, transactions on a revision, leases); gRPC would cost megabytes of binary
//! and resident memory for them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::ClientConfig;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::{json, Value};

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
            Some((h, p)) if !h.is_empty() => Ok(Endpoint {
                host: h.trim_matches(['[', ']']).to_string(),
                port: p.parse().map_err(|_| format!("{url:?}: bad port"))?,
                tls,
            }),
            _ => Err(format!("{url:?}: expected http(s)://host:port")),
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// No endpoint answered in time: etcd is unreachable from here (or has no quorum).
    Unreachable(String),
    /// etcd answered with an error.
    Server(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Unreachable(e) => write!(f, "etcd unreachable: {e}"),
            Error::Server(e) => write!(f, "etcd error: {e}"),
        }
    }
}

/// One key as etcd returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    pub key: String,
    pub value: String,
    pub mod_revision: i64,
    pub lease: i64,
}

pub struct Client {
    endpoints: Vec<Endpoint>,
    /// The endpoint that answered last: tried first next time.
    preferred: AtomicUsize,
    timeout: Duration,
    /// For https:// endpoints.
    tls: Option<Arc<ClientConfig>>,
}

impl Client {
    pub fn new(
        urls: &[String],
        timeout: Duration,
        tls: Option<Arc<ClientConfig>>,
    ) -> Result<Client, String> {
        let endpoints = urls
            .iter()
            .map(|u| Endpoint::parse(u))
            .collect::<Result<Vec<_>, _>>()?;
        if endpoints.iter().any(|e| e.tls) && tls.is_none() {
            return Err("https:// etcd endpoints need etcd.ca_file".into());
        }
        Ok(Client {
            endpoints,
            preferred: AtomicUsize::new(0),
            timeout,
            tls,
        })
    }

    /// Every key under `prefix`, and the store's revision at the time of the read.
    pub fn range_prefix(&self, prefix: &str) -> Result<(i64, Vec<Kv>), Error> {
        let r = self.call(
            "/v3/kv/range",
            &json!({"key": b64(prefix), "range_end": b64(&prefix_end(prefix))}),
        )?;
        let rev = int(&r["header"]["revision"]);
        let kvs = r["kvs"]
            .as_array()
            .map(|a| a.iter().filter_map(kv).collect())
            .unwrap_or_default();
        Ok((rev, kvs))
    }

    pub fn get(&self, key: &str) -> Result<Option<Kv>, Error> {
        let r = self.call("/v3/kv/range", &json!({"key": b64(key)}))?;
        Ok(r["kvs"].as_array().and_then(|a| a.first()).and_then(kv))
    }

    /// Writes `key` (bound to `lease`, 0 for none); returns the new revision.
    pub fn put(&self, key: &str, value: &str, lease: i64) -> Result<i64, Error> {
        let r = self.call("/v3/kv/put", &put_body(key, value, lease))?;
        Ok(int(&r["header"]["revision"]))
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
        let compare = match expected {
            Some(rev) => {
                json!({"key": b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": rev.to_string()})
            }
            None => {
                json!({"key": b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": "0"})
            }
        };
        let r = self.call(
            "/v3/kv/txn",
            &json!({"compare": [compare], "success": [{"request_put": put_body(key, value, lease)}]}),
        )?;
        Ok(r["succeeded"]
            .as_bool()
            .unwrap_or(false)
            .then(|| int(&r["header"]["revision"])))
    }

    /// Deletes `key` only if its mod_revision is `expected`.
    pub fn delete_if(&self, key: &str, expected: i64) -> Result<bool, Error> {
        let r = self.call(
            "/v3/kv/txn",
            &json!({
                "compare": [{"key": b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": expected.to_string()}],
                "success": [{"request_delete_range": {"key": b64(key)}}],
            }),
        )?;
        Ok(r["succeeded"].as_bool().unwrap_or(false))
    }

    pub fn delete(&self, key: &str) -> Result<(), Error> {
        self.call("/v3/kv/deleterange", &json!({"key": b64(key)}))
            .map(|_| ())
    }

    pub fn lease_grant(&self, ttl_secs: i64) -> Result<i64, Error> {
        let r = self.call("/v3/lease/grant", &json!({"TTL": ttl_secs.to_string()}))?;
        match int(&r["ID"]) {
            0 => Err(Error::Server(format!("lease grant returned no ID: {r}"))),
            id => Ok(id),
        }
    }

    /// Refreshes a lease; false when it no longer exists (it expired).
    pub fn lease_keepalive(&self, id: i64) -> Result<bool, Error> {
        let r = self.call("/v3/lease/keepalive", &json!({"ID": id.to_string()}))?;
        Ok(int(&r["result"]["TTL"]) > 0)
    }

    pub fn lease_revoke(&self, id: i64) -> Result<(), Error> {
        self.call("/v3/lease/revoke", &json!({"ID": id.to_string()}))
            .map(|_| ())
    }

    /// Tries each endpoint, the last good one first, within one overall timeout.
    fn call(&self, path: &str, body: &Value) -> Result<Value, Error> {
        let deadline = Instant::now() + self.timeout;
        let n = self.endpoints.len();
        let first = self.preferred.load(Ordering::Relaxed) % n;
        let mut errors = Vec::new();
        for i in 0..n {
            let idx = (first + i) % n;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            // Leave the other endpoints a share of the time when one hangs.
            let share = left / (n - i) as u32;
            let ep = &self.endpoints[idx];
            let tls = if ep.tls { self.tls.as_ref() } else { None };
            match post(ep, tls, path, body, share.max(Duration::from_millis(100))) {
                Ok((200, v)) => {
                    self.preferred.store(idx, Ordering::Relaxed);
                    return Ok(v);
                }
                Ok((status, v)) => {
                    let msg = v["error"]
                        .as_str()
                        .or_else(|| v["message"].as_str())
                        .unwrap_or("")
                        .to_string();
                    // No leader/quorum on that member: another may do better.
                    if status >= 500 || msg.contains("no leader") || msg.contains("timed out") {
                        errors.push(format!("{ep}: {status} {msg}"));
                        continue;
                    }
                    return Err(Error::Server(format!("{path}: {status} {msg}")));
                }
                Err(e) => errors.push(format!("{ep}: {e}")),
            }
        }
        Err(Error::Unreachable(errors.join("; ")))
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
    B64.encode(s.as_bytes())
}

fn unb64(v: &Value) -> String {
    v.as_str()
        .and_then(|s| B64.decode(s).ok())
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// The gateway renders int64 as strings.
fn int(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

fn kv(v: &Value) -> Option<Kv> {
    Some(Kv {
        key: unb64(v.get("key")?),
        value: unb64(v.get("value").unwrap_or(&Value::Null)),
        mod_revision: int(&v["mod_revision"]),
        lease: int(&v["lease"]),
    })
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

/// One request to the JSON gateway; (status, JSON body).
fn post(
    ep: &Endpoint,
    tls: Option<&Arc<ClientConfig>>,
    path: &str,
    body: &Value,
    timeout: Duration,
) -> Result<(u16, Value), String> {
    let (status, payload) = crate::http::request(
        &ep.host,
        ep.port,
        tls,
        "POST",
        path,
        &[],
        &body.to_string(),
        timeout,
    )?;
    match serde_json::from_slice(&payload) {
        Ok(v) => Ok((status, v)),
        // Not the JSON gateway (e.g. 404 when etcd runs with enable-grpc-gateway off).
        Err(_) if status != 200 => Ok((
            status,
            json!({"error": String::from_utf8_lossy(&payload).trim().to_string()}),
        )),
        Err(e) => Err(format!("bad JSON from etcd: {e}")),
    }
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
        assert!(Endpoint::parse("https://x:1").unwrap().tls);
        assert!(Endpoint::parse("ftp://x:1").is_err());
        assert!(Endpoint::parse("http://x").is_err());
    }

    #[test]
    fn prefix_ranges() {
        assert_eq!(prefix_end("/pgshift/main/"), "/pgshift/main0");
    }
}
