//! A throw-away CA for tests: certificates made at test time, never committed.
#![allow(dead_code)] // each test binary uses a different part

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose as Eku, IsCa, KeyPair,
};

pub struct Ca {
    pub cert: rcgen::Certificate,
    pub key: KeyPair,
}

pub fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    Ca {
        cert: p.self_signed(&key).unwrap(),
        key,
    }
}

/// Writes `<dir>/<stem>.crt` (leaf + issuer) and `<stem>.key`.
pub fn issue(
    issuer: &Ca,
    dir: &Path,
    stem: &str,
    name: &str,
    days: (i64, i64),
) -> (PathBuf, PathBuf) {
    issue_for(
        issuer,
        dir,
        stem,
        name,
        days,
        &[Eku::ServerAuth, Eku::ClientAuth],
    )
}

/// [`issue`] with the given extended key usages.
pub fn issue_for(
    issuer: &Ca,
    dir: &Path,
    stem: &str,
    name: &str,
    days: (i64, i64),
    usages: &[Eku],
) -> (PathBuf, PathBuf) {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(vec![name.to_string(), "localhost".into()]).unwrap();
    p.distinguished_name.push(DnType::CommonName, name);
    p.extended_key_usages = usages.to_vec();
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now + time::Duration::days(days.0);
    p.not_after = now + time::Duration::days(days.1);
    let cert = p.signed_by(&key, &issuer.cert, &issuer.key).unwrap();
    let (c, k) = (
        dir.join(format!("{stem}.crt")),
        dir.join(format!("{stem}.key")),
    );
    fs::write(&c, cert.pem() + &issuer.cert.pem()).unwrap();
    fs::write(&k, key.serialize_pem()).unwrap();
    fs::set_permissions(&k, fs::Permissions::from_mode(0o600)).unwrap();
    (c, k)
}

pub fn chown_postgres(p: &Path) {
    if nix::unistd::Uid::effective().is_root() {
        let pg = nix::unistd::User::from_name("postgres").unwrap().unwrap();
        nix::unistd::chown(p, Some(pg.uid), Some(pg.gid)).unwrap();
    }
}
