//! The API's mutating side and the agent's TLS, against a real etcd on loopback: requests
//! without credentials are refused (401/403) and change nothing; a bearer token from a
//! 0600 file or a client certificate signed by the configured CA is accepted; etcd over
//! TLS with a client certificate works, and refuses a client without one.

use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pgshift_agent::api::{self, Snapshot};
use pgshift_agent::config::Config;
use pgshift_agent::dcs::Dcs;
use pgshift_agent::{http, tls};
use pgshift_testkit::etcd::EtcdServer;

mod common;
use common::{ca, config, issue};

fn call(
    cfg: &Config,
    tls: Option<&http::ClientTls>,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, String) {
    let r = try_call(cfg, tls, method, path, token, body).unwrap();
    (r.status, String::from_utf8_lossy(&r.body).into_owned())
}

fn try_call(
    cfg: &Config,
    tls: Option<&http::ClientTls>,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> Result<http::Response, http::Error> {
    let port: u16 = cfg.api.listen.rsplit_once(':').unwrap().1.parse().unwrap();
    let url = format!("{}{path}", http::base_url(tls.is_some(), "localhost", port));
    let client = http::Client::new(tls, 1 << 20);
    let timeout = Duration::from_secs(5);
    match method {
        "POST" => client.post_json(&url, token, body.as_bytes(), timeout),
        "GET" | "HEAD" => client.get(&url, method == "HEAD", timeout),
        _ => panic!("{method}"),
    }
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
        let r = try_call(&cfg, Some(&stranger), "POST", "/pause", None, "{}");
        assert!(
            matches!(r, Err(http::Error::Tls(_) | http::Error::Io(_))),
            "{r:?}"
        );
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
    let (s, text) = call(
        &cfg,
        Some(&anonymous),
        "POST",
        "/reinit",
        None,
        r#"{"node": "db2"}"#,
    );
    assert_eq!(s, 401, "{text}");
    let (s, text) = call(&cfg, Some(&operator), "POST", "/reinit", None, "{}");
    assert_eq!(s, 400, "{text}");
    assert!(text.contains("names the node"), "{text}");
    let (s, text) = call(
        &cfg,
        Some(&operator),
        "POST",
        "/reinit",
        None,
        r#"{"node": "db2"}"#,
    );
    assert_eq!(s, 409, "{text}");
    assert!(text.contains("no running agent on db2"), "{text}");

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

#[test]
fn the_cli_goes_through_the_local_api_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = EtcdServer::start();
    let the_ca = ca(dir.path(), "api-ca");
    let (cert, key) = issue(&the_ca, dir.path(), "db1");
    // The CLI verifies the API with tls_ca and presents this host's certificate.
    let with_cert = config(
        &format!(
            "tls_cert = {cert:?}\ntls_key = {key:?}\ntls_client_ca = {ca:?}\ntls_ca = {ca:?}",
            ca = the_ca.path
        ),
        &format!("endpoints = [{:?}]", etcd.url),
    );
    api::serve(&with_cert, Arc::new(Mutex::new(Snapshot::default()))).unwrap();
    let ctl = pgshift_agent::ctl::Ctl::new(&with_cert).unwrap();
    ctl.pause(true).unwrap();
    assert!(paused(&with_cert));
    ctl.pause(false).unwrap();
    assert!(!paused(&with_cert));

    // A wrong token: the agent's refusal, said, without either token in it.
    let token_file = dir.path().join("api.token");
    std::fs::write(&token_file, "right").unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let server = config(
        &format!("token_file = {token_file:?}"),
        &format!("endpoints = [{:?}]", etcd.url),
    );
    api::serve(&server, Arc::new(Mutex::new(Snapshot::default()))).unwrap();
    let mut cli = server.clone();
    let other = dir.path().join("other.token");
    std::fs::write(&other, "wrong").unwrap();
    std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o600)).unwrap();
    cli.api.token_file = Some(other);
    let e = pgshift_agent::ctl::Ctl::new(&cli)
        .unwrap()
        .pause(true)
        .unwrap_err();
    assert!(e.contains("(403)"), "{e}");
    assert!(!e.contains("wrong") && !e.contains("right"), "{e}");
    assert!(!paused(&server));
}

/// SHA-256 fingerprint of a PEM certificate, as openssl prints it.
fn fingerprint(pem: &str) -> String {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl x509 -noout -fingerprint -sha256 <<'EOF'\n{pem}\nEOF"
        ))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The fingerprint of the certificate the server on `port` presents to a new connection.
fn served(port: u16) -> String {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect 127.0.0.1:{port} -servername localhost </dev/null 2>/dev/null \
             | openssl x509 -noout -fingerprint -sha256"
        ))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn sighup_takes_a_renewed_api_certificate_and_keeps_it_over_a_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = EtcdServer::start();
    let the_ca = ca(dir.path(), "api-ca");
    let (cert, key) = issue(&the_ca, dir.path(), "db1");
    let cfg = config(
        &format!("tls_cert = {cert:?}\ntls_key = {key:?}"),
        &format!("endpoints = [{:?}]", etcd.url),
    );
    let handle = api::start(&cfg, Arc::new(Mutex::new(Snapshot::default()))).unwrap();
    let port = handle.addr.port();
    let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap();
    let first = fingerprint(&read(&cert));
    assert!(first.contains("Fingerprint"), "{first}");
    assert_eq!(served(port), first);
    // The renewal lands in the same files (as cert_install or a deploy hook puts it).
    let (new_cert, new_key) = issue(&the_ca, dir.path(), "db1-renewed");
    std::fs::copy(&new_cert, &cert).unwrap();
    std::fs::copy(&new_key, &key).unwrap();
    assert_eq!(served(port), first, "nothing changes before the reload");
    assert_eq!(handle.reload(&cfg), Vec::<String>::new());
    let renewed = fingerprint(&read(&new_cert));
    assert_ne!(renewed, first);
    assert_eq!(served(port), renewed);
    // A key that does not match the certificate is refused; the renewed pair stays in use.
    let (_, stranger_key) = issue(&the_ca, dir.path(), "stranger");
    std::fs::copy(&stranger_key, &key).unwrap();
    let failed = handle.reload(&cfg);
    assert!(
        failed.len() == 1 && failed[0].contains("API certificate not reloaded"),
        "{failed:?}"
    );
    assert_eq!(served(port), renewed);
}
