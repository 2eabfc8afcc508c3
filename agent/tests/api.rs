//! The API's mutating side and the agent's TLS, against a real etcd on loopback: requests
//! without credentials are refused (401/403) and change nothing; a bearer token from a
//! 0600 file or a client certificate signed by the configured CA is accepted; etcd over
//! TLS with a client certificate works, and refuses a client without one.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pgshift_agent::api::{self, Snapshot};
use pgshift_agent::config::Config;
use pgshift_agent::dcs::Dcs;
use pgshift_agent::{http, tls};
use pgshift_testkit::etcd::EtcdServer;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose as Eku, IsCa, KeyPair,
};

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
    path: PathBuf,
}

fn ca(dir: &Path, name: &str) -> Ca {
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
fn issue(ca: &Ca, dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
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

fn config(extra_api: &str, etcd: &str) -> Config {
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

fn call(
    cfg: &Config,
    tls: Option<&Arc<rustls::ClientConfig>>,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, String) {
    let port: u16 = cfg.api.listen.rsplit_once(':').unwrap().1.parse().unwrap();
    let headers: Vec<String> = token
        .map(|t| format!("Authorization: Bearer {t}"))
        .into_iter()
        .collect();
    let (status, raw) = http::request(
        "localhost",
        port,
        tls,
        method,
        path,
        &headers,
        body,
        Duration::from_secs(5),
    )
    .unwrap();
    (status, String::from_utf8_lossy(&raw).into_owned())
}

fn paused(cfg: &Config) -> bool {
    Dcs::new(cfg.etcd_client(Duration::from_secs(2)).unwrap(), "t")
        .read()
        .unwrap()
        .paused
}

#[test]
fn mutating_requests_need_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = EtcdServer::start();
    let the_ca = ca(dir.path(), "api-ca");
    let (cert, key) = issue(&the_ca, dir.path(), "db1");
    let (client_cert, client_key) = issue(&the_ca, dir.path(), "operator");
    let stranger_ca = ca(dir.path(), "stranger-ca");
    let (stranger_cert, stranger_key) = issue(&stranger_ca, dir.path(), "stranger");
    let token_file = dir.path().join("api.token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let cfg = config(
        &format!(
            "token_file = {:?}\ntls_cert = {cert:?}\ntls_key = {key:?}\ntls_client_ca = {:?}",
            token_file, the_ca.path
        ),
        &format!("endpoints = [{:?}]", etcd.url),
    );
    let shared = Arc::new(Mutex::new(Snapshot::default()));
    api::serve(&cfg, shared).unwrap();

    let anonymous = tls::client(&the_ca.path, None).unwrap();
    let operator = tls::client(&the_ca.path, Some((&client_cert, &client_key))).unwrap();
    let stranger = tls::client(&the_ca.path, Some((&stranger_cert, &stranger_key)));

    // Reads stay open (a starting agent answers 503, over TLS).
    let (s, _) = call(&cfg, Some(&anonymous), "GET", "/health", None, "");
    assert_eq!(s, 503);
    let (s, text) = call(&cfg, Some(&anonymous), "GET", "/metrics", None, "");
    assert_eq!(s, 200);
    assert!(text.contains("pgshift_leader_changes_total 0"), "{text}");

    // No credentials, a wrong token: refused, nothing written.
    let (s, text) = call(&cfg, Some(&anonymous), "POST", "/pause", None, "{}");
    assert_eq!(s, 401, "{text}");
    let (s, text) = call(
        &cfg,
        Some(&anonymous),
        "POST",
        "/pause",
        Some("guess"),
        "{}",
    );
    assert_eq!(s, 403, "{text}");
    assert!(!text.contains("s3cret"), "{text}");
    assert!(!paused(&cfg));
    // A certificate from another CA does not even finish the handshake.
    if let Ok(stranger) = stranger {
        let port: u16 = cfg.api.listen.rsplit_once(':').unwrap().1.parse().unwrap();
        let r = http::request(
            "localhost",
            port,
            Some(&stranger),
            "POST",
            "/pause",
            &[],
            "{}",
            Duration::from_secs(5),
        );
        assert!(r.is_err(), "{r:?}");
        assert!(!paused(&cfg));
    }

    // The token, then a client certificate.
    let (s, text) = call(
        &cfg,
        Some(&anonymous),
        "POST",
        "/pause",
        Some("s3cret-token"),
        "{}",
    );
    assert_eq!(s, 200, "{text}");
    assert!(paused(&cfg));
    let (s, text) = call(&cfg, Some(&operator), "POST", "/resume", None, "{}");
    assert_eq!(s, 200, "{text}");
    assert!(!paused(&cfg));

    // Bad requests are refused clearly and change nothing.
    let (s, text) = call(
        &cfg,
        Some(&operator),
        "POST",
        "/down",
        None,
        r#"{"node": "nosuch"}"#,
    );
    assert_eq!(s, 400, "{text}");
    assert!(text.contains("no member named nosuch"), "{text}");
    let (s, text) = call(&cfg, Some(&operator), "POST", "/switchover", None, "{}");
    assert_eq!(s, 409, "{text}");
    assert!(text.contains("no leader"), "{text}");
    let (s, _) = call(&cfg, Some(&operator), "POST", "/switchover", None, "[1]");
    assert_eq!(s, 400);

    // A token file others can read is refused as a credential source.
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (s, text) = call(
        &cfg,
        Some(&anonymous),
        "POST",
        "/pause",
        Some("s3cret-token"),
        "{}",
    );
    assert_eq!(s, 500, "{text}");
    assert!(text.contains("chmod 600"), "{text}");
    assert!(!paused(&cfg));
}

#[test]
fn without_credentials_configured_mutations_are_disabled() {
    let etcd = EtcdServer::start();
    let cfg = config("", &format!("endpoints = [{:?}]", etcd.url));
    api::serve(&cfg, Arc::new(Mutex::new(Snapshot::default()))).unwrap();
    let (s, text) = call(&cfg, None, "POST", "/pause", Some("anything"), "{}");
    assert_eq!(s, 403, "{text}");
    assert!(text.contains("api.token_file"), "{text}");
    assert!(!paused(&cfg));
}

#[test]
fn etcd_over_tls_with_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let the_ca = ca(dir.path(), "etcd-ca");
    let (cert, key) = issue(&the_ca, dir.path(), "etcd");
    let (client_cert, client_key) = issue(&the_ca, dir.path(), "agent");
    let etcd = EtcdServer::start_with(Some((cert, key, the_ca.path.clone())));
    let cfg = config(
        "",
        &format!(
            "endpoints = [{:?}]\nca_file = {:?}\ncert_file = {client_cert:?}\nkey_file = {client_key:?}",
            etcd.url, the_ca.path
        ),
    );
    let dcs = Dcs::new(cfg.etcd_client(Duration::from_secs(2)).unwrap(), "t");
    dcs.set_paused(true, "db1").unwrap();
    assert!(dcs.read().unwrap().paused);
    // Without a client certificate etcd refuses the connection.
    let anonymous = config(
        "",
        &format!("endpoints = [{:?}]\nca_file = {:?}", etcd.url, the_ca.path),
    );
    let r = Dcs::new(anonymous.etcd_client(Duration::from_secs(2)).unwrap(), "t").read();
    assert!(r.is_err(), "{r:?}");
}
