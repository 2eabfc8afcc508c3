//! Helpers shared by the agent's integration tests: throw-away certificates made at test
//! time (never committed), an agent configuration around an API on a free port, and a raw
//! HTTP/1.1 exchange for talking to servers the way a broken or hostile client would.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub mod fake;

use pgshift_agent::config::Config;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose as Eku, IsCa, KeyPair,
};

pub struct Ca {
    pub cert: rcgen::Certificate,
    pub key: KeyPair,
    pub path: PathBuf,
}

pub fn ca(dir: &Path, name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let cert = p.self_signed(&key).unwrap();
    let path = dir.join(format!("{name}.crt"));
    std::fs::write(&path, cert.pem()).unwrap();
    Ca { cert, key, path }
}

/// (certificate, key) for localhost and 127.0.0.1, usable by servers and clients.
pub fn issue(ca: &Ca, dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
    let key = KeyPair::generate().unwrap();
    let mut p =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    p.distinguished_name.push(DnType::CommonName, stem);
    p.extended_key_usages = vec![Eku::ServerAuth, Eku::ClientAuth];
    let cert = p.signed_by(&key, &ca.cert, &ca.key).unwrap();
    let (c, k) = (
        dir.join(format!("{stem}.crt")),
        dir.join(format!("{stem}.key")),
    );
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o600)).unwrap();
    (c, k)
}

/// An agent configuration with the API on a free loopback port; `extra_api` lines go into
/// `[api]`, `etcd` into `[etcd]`.
pub fn config(extra_api: &str, etcd: &str) -> Config {
    let text = format!(
        r#"
cluster = "t"
name = "db1"
[api]
listen = "127.0.0.1:{port}"
{extra_api}
[etcd]
{etcd}
[postgresql]
data_directory = "/nonexistent/data"
connect_address = "db1:5432"
[replication]
user = "replicator"
passfile = "/nonexistent/.pgpass"
"#,
        port = pgshift_testkit::free_port()
    );
    Config::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// An etcd section pointing nowhere: for servers whose tests never reach etcd.
pub const NO_ETCD: &str = r#"endpoints = ["http://127.0.0.1:9"]"#;

/// What a raw exchange got back: the status when an HTTP answer came, everything read,
/// and how long until the server closed (or the read gave up).
#[derive(Debug)]
pub struct Raw {
    pub status: Option<u16>,
    pub text: String,
    pub elapsed: Duration,
    /// The server closed (EOF or reset) rather than the read timing out.
    pub closed: bool,
}

/// Reads until the server closes or `limit` passes.
pub fn read_all(s: &mut TcpStream, limit: Duration) -> Raw {
    let start = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let mut closed = false;
    while start.elapsed() < limit {
        s.set_read_timeout(Some(
            limit
                .saturating_sub(start.elapsed())
                .max(Duration::from_millis(1)),
        ))
        .unwrap();
        match s.read(&mut buf) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => {
                closed = true;
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|t| t.get(..3))
        .and_then(|s| s.parse().ok());
    Raw {
        status,
        text,
        elapsed: start.elapsed(),
        closed,
    }
}

/// Sends `request` as is on a new connection and reads the answer.
pub fn exchange(addr: SocketAddr, request: &[u8], limit: Duration) -> Raw {
    let mut s = TcpStream::connect(addr).unwrap();
    // The server may close before reading everything (that is the point of some tests).
    let _ = s.write_all(request);
    read_all(&mut s, limit)
}

/// Whether the server closed `s` (EOF or reset) within `within`; false when it stays open.
pub fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    read_all(s, within).closed
}

/// The p-th percentile (0-100) of durations.
pub fn percentile(mut v: Vec<Duration>, p: usize) -> Duration {
    v.sort();
    v[((v.len() * p).div_ceil(100)).clamp(1, v.len()) - 1]
}
