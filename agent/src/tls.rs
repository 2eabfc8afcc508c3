//! TLS for the agent's two conversations: its API (served, optionally asking clients for a
//! certificate) and etcd or another agent's API (as a client, optionally presenting one).
//! Files are read and checked here, once, so a wrong CA, certificate or key is an error at
//! start naming the file, not a failed handshake later. The provider is ring everywhere.

use std::path::Path;
use std::sync::{Arc, RwLock};

use pgshift_core::cert::{load_certs, load_key};
use rustls::crypto::ring;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use ureq::tls::{Certificate, ClientCert, PrivateKey, RootCerts, TlsConfig, TlsProvider};

use crate::http::ClientTls;

fn read(path: &Path) -> Result<Vec<u8>, String> {
    fs_err::read(path).map_err(|e| e.to_string())
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    load_certs(&read(path)?, &path.display().to_string()).map_err(|e| e.to_string())
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    load_key(&read(path)?, &path.display().to_string()).map_err(|e| e.to_string())
}

fn roots(ca: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for c in certs(ca)? {
        roots
            .add(c)
            .map_err(|e| format!("{}: not a usable CA certificate: {e}", ca.display()))?;
    }
    Ok(roots)
}

/// A client trusting `ca`, presenting `identity` (certificate, key) when given.
pub fn client(ca: &Path, identity: Option<(&Path, &Path)>) -> Result<ClientTls, String> {
    let provider = Arc::new(ring::default_provider());
    let ca_certs = certs(ca)?;
    // rustls checks what ureq would otherwise only find at the first request (and ureq
    // panics on a key that does not match its certificate): build the config once here.
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots(ca)?);
    let mut tls = TlsConfig::builder()
        .provider(TlsProvider::Rustls)
        .unversioned_rustls_crypto_provider(provider)
        .root_certs(RootCerts::Specific(Arc::new(
            ca_certs
                .iter()
                .map(|c| Certificate::from_der(c).to_owned())
                .collect(),
        )));
    if let Some((cert, k)) = identity {
        let (chain, pem) = (certs(cert)?, read(k)?);
        let private = load_key(&pem, &k.display().to_string()).map_err(|e| e.to_string())?;
        builder
            .with_client_auth_cert(chain.clone(), private)
            .map_err(|e| format!("{} with {}: {e}", cert.display(), k.display()))?;
        let chain: Vec<Certificate<'static>> = chain
            .iter()
            .map(|c| Certificate::from_der(c).to_owned())
            .collect();
        // The same PEM, checked above, as ureq's type.
        let private = PrivateKey::from_pem(&pem)
            .map_err(|_| format!("{}: no usable private key", k.display()))?;
        tls = tls.client_cert(Some(ClientCert::new_with_certs(&chain, private)));
    }
    Ok(ClientTls(tls.build()))
}

/// A server's certificate and key, replaced in place on SIGHUP (a renewed certificate needs
/// no restart): every new handshake takes the pair current at that moment.
#[derive(Debug)]
pub struct ServerIdentity {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ServerIdentity {
    fn load(cert: &Path, k: &Path) -> Result<Arc<CertifiedKey>, String> {
        let signing = ring::sign::any_supported_type(&key(k)?)
            .map_err(|e| format!("{}: {e}", k.display()))?;
        let pair = CertifiedKey::new(certs(cert)?, signing);
        // A key that does not match would fail every handshake: refuse it, keep the old.
        pair.keys_match()
            .map_err(|e| format!("{} and {}: {e}", cert.display(), k.display()))?;
        Ok(Arc::new(pair))
    }

    /// Reads `cert` and `key` again; on any error the pair in use stays.
    pub fn reload(&self, cert: &Path, k: &Path) -> Result<(), String> {
        let pair = Self::load(cert, k)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = pair;
        Ok(())
    }
}

impl ResolvesServerCert for ServerIdentity {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

/// A server with `cert`/`key`; with `client_ca`, clients may present a certificate signed
/// by it (verified during the handshake) but need not: read-only requests stay open.
pub fn server(
    cert: &Path,
    k: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<ServerConfig>, String> {
    reloadable_server(cert, k, client_ca).map(|(config, _)| config)
}

/// `server`, and the handle that replaces its certificate and key.
pub fn reloadable_server(
    cert: &Path,
    k: &Path,
    client_ca: Option<&Path>,
) -> Result<(Arc<ServerConfig>, Arc<ServerIdentity>), String> {
    let provider = Arc::new(ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match client_ca {
        Some(ca) => builder.with_client_cert_verifier(
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| format!("{}: {e}", ca.display()))?,
        ),
        None => builder.with_no_client_auth(),
    };
    let identity = Arc::new(ServerIdentity {
        current: RwLock::new(ServerIdentity::load(cert, k)?),
    });
    let config = builder.with_cert_resolver(identity.clone());
    Ok((Arc::new(config), identity))
}
