//! Certificate/key checks done before anything is installed: the PEMs parse, the key belongs
//! to the certificate, the certificate is valid now, names the host, carries the usages the
//! service needs, and chains to the given trust anchor. Shared by `cert_install` (PostgreSQL,
//! the agent, certbot renewals) and the pgBackRest TLS setup, which needs serverAuth AND
//! clientAuth on one certificate.

use std::fmt::Write as _;
use std::net::IpAddr;

use rustls::crypto::ring::sign::any_supported_type;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};
use thiserror::Error;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

#[derive(Debug, Error, PartialEq, Eq)]
pub enum CertError {
    #[error("{origin} holds no PEM certificate")]
    NoCertificate { origin: String },
    #[error("{origin} holds no PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC)")]
    NoKey { origin: String },
    #[error("{origin} holds an encrypted (passphrase-protected) private key, which the server cannot load unattended; decrypt it first (openssl pkey -in KEY -out KEY.plain)")]
    EncryptedKey { origin: String },
    #[error("{origin} is not valid PEM: {reason}")]
    Pem { origin: String, reason: String },
    #[error("the certificate cannot be parsed: {0}")]
    Parse(String),
    #[error("the private key cannot be used: {0}")]
    KeyUnsupported(String),
    #[error("the private key does not belong to the certificate (subject {subject})")]
    KeyMismatch { subject: String },
    #[error("the certificate is not valid before {not_before} (now {now})")]
    NotYetValid { not_before: String, now: String },
    #[error("the certificate expired at {not_after} (now {now})")]
    Expired { not_after: String, now: String },
    #[error("the certificate is not valid for {name}: it names {names}")]
    NameMismatch { name: String, names: String },
    #[error("the certificate lacks the {usage} extended key usage (it has: {has})")]
    MissingUsage { usage: &'static str, has: String },
    #[error("the certificate chain does not verify to the CA: {0}")]
    Chain(String),
}

/// Facts about a leaf certificate, safe to show (no key material).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub subject: String,
    pub issuer: String,
    /// DNS names and IP addresses from subjectAltName.
    pub names: Vec<String>,
    /// Seconds since the epoch.
    pub not_before: i64,
    pub not_after: i64,
    /// SHA-256 of the DER, colon-separated hex (as `openssl x509 -fingerprint -sha256`).
    pub sha256: String,
    /// None when the certificate has no extendedKeyUsage extension (then any usage is allowed).
    pub extended_key_usage: Option<Vec<&'static str>>,
}

/// What a certificate must satisfy besides parsing and matching its key.
#[derive(Debug, Default, Clone)]
pub struct Requirements<'a> {
    /// A host name (or IP address) the certificate must be valid for.
    pub hostname: Option<&'a str>,
    /// Trust anchors the chain must verify to.
    pub ca: Option<&'a [CertificateDer<'static>]>,
    pub server_auth: bool,
    pub client_auth: bool,
}

pub fn load_certs(pem: &[u8], origin: &str) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::Pem {
            origin: origin.into(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(CertError::NoCertificate {
            origin: origin.into(),
        });
    }
    Ok(certs)
}

/// The PEM label of a PKCS#8 key encrypted with a passphrase.
const ENCRYPTED_PKCS8: &str = "ENCRYPTED PRIVATE KEY";

pub fn load_key(pem: &[u8], origin: &str) -> Result<PrivateKeyDer<'static>, CertError> {
    // PKCS#8 encrypted blocks and legacy "Proc-Type: 4,ENCRYPTED" headers are skipped by the
    // PEM reader, which would then report no key at all. (The block's first line is built
    // from its label: no key armor stands in the source for scanners to take for a key.)
    let encrypted = |needle: &[u8]| pem.windows(needle.len()).any(|w| w == needle);
    let pkcs8 = format!("-----BEGIN {ENCRYPTED_PKCS8}-----");
    if encrypted(pkcs8.as_bytes()) || encrypted(b"Proc-Type: 4,ENCRYPTED") {
        return Err(CertError::EncryptedKey {
            origin: origin.into(),
        });
    }
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => CertError::NoKey {
            origin: origin.into(),
        },
        e => CertError::Pem {
            origin: origin.into(),
            reason: e.to_string(),
        },
    })
}

pub fn info(cert: &CertificateDer<'_>) -> Result<CertInfo, CertError> {
    let (_, x) =
        X509Certificate::from_der(cert.as_ref()).map_err(|e| CertError::Parse(e.to_string()))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = x.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(d) => names.push(d.to_string()),
                GeneralName::IPAddress(b) => match b.len() {
                    4 => names
                        .push(IpAddr::from(<[u8; 4]>::try_from(*b).expect("4 bytes")).to_string()),
                    16 => names.push(
                        IpAddr::from(<[u8; 16]>::try_from(*b).expect("16 bytes")).to_string(),
                    ),
                    _ => {}
                },
                _ => {}
            }
        }
    }
    let extended_key_usage = match x.extended_key_usage() {
        Ok(Some(eku)) => {
            let e = &eku.value;
            let mut v = Vec::new();
            if e.any {
                v.push("any");
            }
            if e.server_auth {
                v.push("serverAuth");
            }
            if e.client_auth {
                v.push("clientAuth");
            }
            Some(v)
        }
        _ => None,
    };
    let sha256 = fingerprint(cert.as_ref());
    Ok(CertInfo {
        subject: x.subject().to_string(),
        issuer: x.issuer().to_string(),
        names,
        not_before: x.validity().not_before.timestamp(),
        not_after: x.validity().not_after.timestamp(),
        sha256,
        extended_key_usage,
    })
}

/// SHA-256 of a DER certificate, colon-separated upper-case hex (openssl's `-fingerprint`).
pub fn fingerprint(der: &[u8]) -> String {
    let mut out = String::new();
    for (i, b) in Sha256::digest(der).iter().enumerate() {
        let _ = write!(out, "{}{b:02X}", if i == 0 { "" } else { ":" });
    }
    out
}

/// [`check`] at the current time.
pub fn check_now(
    chain: &[CertificateDer<'static>],
    key: &PrivateKeyDer<'static>,
    req: &Requirements<'_>,
) -> Result<CertInfo, CertError> {
    check(chain, key, req, UnixTime::now())
}

/// Runs every check on the leaf `chain[0]` (with the rest as intermediates) and its key.
/// The first failure is returned; nothing here touches the file system.
pub fn check(
    chain: &[CertificateDer<'static>],
    key: &PrivateKeyDer<'static>,
    req: &Requirements<'_>,
    now: UnixTime,
) -> Result<CertInfo, CertError> {
    let leaf = chain.first().ok_or(CertError::NoCertificate {
        origin: "the chain".into(),
    })?;
    let info = info(leaf)?;
    let signer = any_supported_type(key).map_err(|e| CertError::KeyUnsupported(e.to_string()))?;
    CertifiedKey::new(chain.to_vec(), signer)
        .keys_match()
        .map_err(|_| CertError::KeyMismatch {
            subject: info.subject.clone(),
        })?;
    let t = now.as_secs() as i64;
    if t < info.not_before {
        return Err(CertError::NotYetValid {
            not_before: format_time(info.not_before),
            now: format_time(t),
        });
    }
    if t > info.not_after {
        return Err(CertError::Expired {
            not_after: format_time(info.not_after),
            now: format_time(t),
        });
    }
    let ee =
        webpki::EndEntityCert::try_from(leaf).map_err(|e| CertError::Parse(format!("{e:?}")))?;
    if let Some(host) = req.hostname {
        let name = ServerName::try_from(host).map_err(|_| CertError::NameMismatch {
            name: host.into(),
            names: "(not a valid host name)".into(),
        })?;
        ee.verify_is_valid_for_subject_name(&name)
            .map_err(|_| CertError::NameMismatch {
                name: host.into(),
                names: if info.names.is_empty() {
                    info.subject.clone()
                } else {
                    info.names.join(", ")
                },
            })?;
    }
    for (wanted, label) in [
        (req.server_auth, "serverAuth"),
        (req.client_auth, "clientAuth"),
    ] {
        if let (true, Some(has)) = (wanted, &info.extended_key_usage) {
            if !has.contains(&label) && !has.contains(&"any") {
                return Err(CertError::MissingUsage {
                    usage: label,
                    has: has.join(", "),
                });
            }
        }
    }
    if let Some(ca) = req.ca {
        let anchors = ca
            .iter()
            .map(|c| webpki::anchor_from_trusted_cert(c).map(|a| a.to_owned()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                CertError::Chain(format!("the CA file has an unusable certificate: {e:?}"))
            })?;
        let usage = if req.client_auth && !req.server_auth {
            webpki::KeyUsage::client_auth()
        } else {
            webpki::KeyUsage::server_auth()
        };
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            &chain[1..],
            now,
            usage,
            None,
            None,
        )
        .map_err(|e| CertError::Chain(format!("{e:?}")))?;
    }
    Ok(info)
}

/// Seconds since the epoch as a UTC time, for messages.
pub fn format_time(secs: i64) -> String {
    x509_parser::time::ASN1Time::from_timestamp(secs)
        .map(|t| t.to_datetime().to_string())
        .unwrap_or_else(|_| secs.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose as Eku, IsCa, KeyPair,
    };
    use std::time::Duration;

    struct Ca {
        cert: rcgen::Certificate,
        key: KeyPair,
    }

    fn ca(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        Ca {
            cert: p.self_signed(&key).unwrap(),
            key,
        }
    }

    fn leaf(
        issuer: &Ca,
        names: &[&str],
        eku: Vec<Eku>,
        valid: (i64, i64),
    ) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
        p.distinguished_name.push(DnType::CommonName, names[0]);
        p.extended_key_usages = eku;
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now + time::Duration::days(valid.0);
        p.not_after = now + time::Duration::days(valid.1);
        let cert = p.signed_by(&key, &issuer.cert, &issuer.key).unwrap();
        let der = load_certs(cert.pem().as_bytes(), "leaf").unwrap().remove(0);
        (
            der,
            load_key(key.serialize_pem().as_bytes(), "key").unwrap(),
        )
    }

    fn now() -> UnixTime {
        UnixTime::since_unix_epoch(Duration::from_secs(
            time::OffsetDateTime::now_utc().unix_timestamp() as u64,
        ))
    }

    fn anchors(c: &Ca) -> Vec<CertificateDer<'static>> {
        load_certs(c.cert.pem().as_bytes(), "ca").unwrap()
    }

    #[test]
    fn accepts_a_good_pair_and_reports_facts() {
        let root = ca("Test Root");
        let (cert, key) = leaf(
            &root,
            &["db1.example.com", "10.0.0.11"],
            vec![Eku::ServerAuth, Eku::ClientAuth],
            (-1, 30),
        );
        let a = anchors(&root);
        let req = Requirements {
            hostname: Some("db1.example.com"),
            ca: Some(&a),
            server_auth: true,
            client_auth: true,
        };
        let i = check(&[cert], &key, &req, now()).unwrap();
        assert_eq!(i.names, ["db1.example.com", "10.0.0.11"]);
        assert_eq!(i.extended_key_usage, Some(vec!["serverAuth", "clientAuth"]));
        assert_eq!(i.sha256.len(), 95);
        assert!(i.subject.contains("db1.example.com"));
    }

    #[test]
    fn refuses_each_kind_of_bad_certificate() {
        let root = ca("Test Root");
        let other = ca("Other Root");
        let a = anchors(&root);
        let good = || leaf(&root, &["db1.example.com"], vec![Eku::ServerAuth], (-1, 30));
        let req = |host| Requirements {
            hostname: Some(host),
            ca: Some(&a),
            server_auth: true,
            client_auth: false,
        };

        let (cert, _) = good();
        let (_, other_key) = good();
        assert!(matches!(
            check(
                std::slice::from_ref(&cert),
                &other_key,
                &req("db1.example.com"),
                now()
            ),
            Err(CertError::KeyMismatch { .. })
        ));

        let (old, old_key) = leaf(&root, &["db1.example.com"], vec![], (-60, -1));
        assert!(matches!(
            check(&[old], &old_key, &req("db1.example.com"), now()),
            Err(CertError::Expired { .. })
        ));

        let (future, future_key) = leaf(&root, &["db1.example.com"], vec![], (2, 30));
        assert!(matches!(
            check(&[future], &future_key, &req("db1.example.com"), now()),
            Err(CertError::NotYetValid { .. })
        ));

        let (cert, key) = good();
        let err = check(
            std::slice::from_ref(&cert),
            &key,
            &req("db2.example.com"),
            now(),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("db2.example.com")
                && err.to_string().contains("db1.example.com"),
            "{err}"
        );

        let (foreign, foreign_key) = leaf(&other, &["db1.example.com"], vec![], (-1, 30));
        assert!(matches!(
            check(&[foreign], &foreign_key, &req("db1.example.com"), now()),
            Err(CertError::Chain(_))
        ));

        let both = Requirements {
            hostname: None,
            ca: None,
            server_auth: true,
            client_auth: true,
        };
        let err = check(&[cert], &key, &both, now()).unwrap_err();
        assert_eq!(
            err,
            CertError::MissingUsage {
                usage: "clientAuth",
                has: "serverAuth".into()
            }
        );
    }

    #[test]
    fn verifies_through_an_intermediate_from_a_full_chain() {
        let root = ca("Test Root");
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name
            .push(DnType::CommonName, "Test Intermediate");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let inter = Ca {
            cert: p.signed_by(&key, &root.cert, &root.key).unwrap(),
            key,
        };
        let (cert, leaf_key) = leaf(
            &inter,
            &["db1.example.com"],
            vec![Eku::ServerAuth],
            (-1, 30),
        );
        let inter_der = anchors(&inter);
        let a = anchors(&root);
        let req = Requirements {
            hostname: Some("db1.example.com"),
            ca: Some(&a),
            server_auth: true,
            client_auth: false,
        };
        check(
            &[cert.clone(), inter_der[0].clone()],
            &leaf_key,
            &req,
            now(),
        )
        .unwrap();
        assert!(
            matches!(
                check(&[cert], &leaf_key, &req, now()),
                Err(CertError::Chain(_))
            ),
            "without the intermediate"
        );
    }

    #[test]
    fn pem_errors_name_their_origin() {
        assert_eq!(
            load_certs(b"nothing here", "/x/cert.pem").unwrap_err(),
            CertError::NoCertificate {
                origin: "/x/cert.pem".into()
            }
        );
        assert_eq!(
            load_key(b"", "/x/key.pem").unwrap_err(),
            CertError::NoKey {
                origin: "/x/key.pem".into()
            }
        );
        let encrypted = key_block(ENCRYPTED_PKCS8, "");
        assert!(matches!(
            load_key(&encrypted, "k"),
            Err(CertError::EncryptedKey { .. })
        ));
        let legacy = key_block(
            "RSA PRIVATE KEY",
            "Proc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00\n\n",
        );
        assert!(matches!(
            load_key(&legacy, "k"),
            Err(CertError::EncryptedKey { .. })
        ));
    }

    /// A PEM block labelled `label`, with `headers`, around a key generated now: the shape an
    /// encrypting tool writes, and no key lives in the source.
    fn key_block(label: &str, headers: &str) -> Vec<u8> {
        let pem = KeyPair::generate().unwrap().serialize_pem();
        let body: Vec<&str> = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        format!(
            "-----BEGIN {label}-----\n{headers}{}\n-----END {label}-----\n",
            body.join("\n")
        )
        .into_bytes()
    }
}
