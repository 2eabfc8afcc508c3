//! libpq `sslmode` semantics of the connection helper, against real PostgreSQL 15 servers
//! with certificates made at test time (never committed).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use pgshift_core::pg::{Client, ConnectOptions, SslMode};
use pgshift_testkit::PgServer;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    /// A CA and a server certificate for the name `localhost` only (not 127.0.0.1).
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let (ca, ca_key) = make_ca("pgshift test CA");
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
        fs::write(dir.path().join("ca.crt"), ca.pem()).unwrap();
        fs::write(dir.path().join("server.crt"), cert.pem()).unwrap();
        fs::write(dir.path().join("server.key"), key.serialize_pem()).unwrap();
        let (other, _) = make_ca("some other CA");
        fs::write(dir.path().join("other-ca.crt"), other.pem()).unwrap();
        give_to_postgres(&dir.path().join("server.crt"), 0o644);
        give_to_postgres(&dir.path().join("server.key"), 0o600);
        Pki { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn server_conf(&self) -> Vec<String> {
        vec![
            "ssl = on".into(),
            format!("ssl_cert_file = '{}'", self.path("server.crt").display()),
            format!("ssl_key_file = '{}'", self.path("server.key").display()),
        ]
    }
}

fn make_ca(name: &str) -> (rcgen::Certificate, KeyPair) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    (params.self_signed(&key).unwrap(), key)
}

fn give_to_postgres(path: &Path, mode: u32) {
    if nix::unistd::Uid::effective().is_root() {
        let pg = nix::unistd::User::from_name("postgres").unwrap().unwrap();
        nix::unistd::chown(path, Some(pg.uid), Some(pg.gid)).unwrap();
    }
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn start(conf: &[String]) -> PgServer {
    let conf: Vec<&str> = conf.iter().map(String::as_str).collect();
    let s = PgServer::start(&conf);
    s.psql("ALTER ROLE postgres PASSWORD 'test-only-pw'");
    s
}

fn opts(s: &PgServer, host: &str, mode: SslMode, ca: Option<PathBuf>) -> ConnectOptions {
    ConnectOptions {
        host: Some(host.into()),
        port: s.port,
        password: Some("test-only-pw".into()),
        ssl_mode: mode,
        ca_cert: ca,
        ..ConnectOptions::default()
    }
}

/// Connects and reports whether the session is encrypted, or the error text.
fn encrypted(o: &ConnectOptions) -> Result<bool, String> {
    let mut c = Client::connect(o).map_err(|e| e.to_string())?;
    let row = c
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .map_err(|e| e.to_string())?;
    Ok(row.get(0))
}

#[test]
fn sslmode_semantics_match_libpq() {
    let pki = Pki::new();
    let tls = start(&pki.server_conf());
    let ca = Some(pki.path("ca.crt"));
    let other_ca = Some(pki.path("other-ca.crt"));
    let ip = "127.0.0.1";

    assert_eq!(
        encrypted(&opts(&tls, ip, SslMode::Disable, None)),
        Ok(false)
    );
    assert_eq!(encrypted(&opts(&tls, ip, SslMode::Prefer, None)), Ok(true));
    // require: encrypt, do not verify (the name does not match and no CA is given).
    assert_eq!(encrypted(&opts(&tls, ip, SslMode::Require, None)), Ok(true));
    // require with a CA file behaves as verify-ca (libpq compatibility).
    assert!(encrypted(&opts(&tls, ip, SslMode::Require, other_ca.clone())).is_err());
    // verify-ca: chain checked, name not.
    assert_eq!(
        encrypted(&opts(&tls, ip, SslMode::VerifyCa, ca.clone())),
        Ok(true)
    );
    assert!(encrypted(&opts(&tls, ip, SslMode::VerifyCa, other_ca.clone())).is_err());
    // verify-full: chain and name.
    let err = encrypted(&opts(&tls, ip, SslMode::VerifyFull, ca.clone())).unwrap_err();
    assert!(
        err.contains("127.0.0.1") || err.to_lowercase().contains("name"),
        "{err}"
    );
    assert_eq!(
        encrypted(&opts(&tls, "localhost", SslMode::VerifyFull, ca.clone())),
        Ok(true)
    );
    assert!(encrypted(&opts(&tls, "localhost", SslMode::VerifyFull, other_ca)).is_err());
    let err = encrypted(&opts(&tls, "localhost", SslMode::VerifyFull, None)).unwrap_err();
    assert!(err.contains("needs a CA"), "{err}");
}

#[test]
fn prefer_falls_back_and_require_refuses_without_server_tls() {
    let plain = start(&[]);
    assert_eq!(
        encrypted(&opts(&plain, "127.0.0.1", SslMode::Prefer, None)),
        Ok(false)
    );
    let err = encrypted(&opts(&plain, "127.0.0.1", SslMode::Require, None)).unwrap_err();
    assert!(
        err.to_lowercase().contains("tls") || err.to_lowercase().contains("ssl"),
        "{err}"
    );
}

#[test]
fn wrong_password_is_not_echoed() {
    let plain = start(&[]);
    let mut o = opts(&plain, "127.0.0.1", SslMode::Disable, None);
    o.password = Some("definitely-wrong-pw".into());
    let err = encrypted(&o).unwrap_err();
    assert!(err.contains("password authentication failed"), "{err}");
    assert!(!err.contains("definitely-wrong-pw"), "{err}");
}
