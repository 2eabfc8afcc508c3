//! Which certificate does a TLS server serve right now? Used after a reload to prove the new
//! certificate is live: PostgreSQL (SSLRequest first, as libpq does) and plain TLS servers such
//! as pgBackRest's. The chain is captured during the handshake, so a server that afterwards
//! rejects us (e.g. for lacking a client certificate) still shows what it served.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{
    ring, verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms,
};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, Error, SignatureScheme};

/// PostgreSQL's SSLRequest: length 8, code 1234.5679.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// SSLRequest, then TLS (PostgreSQL).
    Postgres,
    /// TLS from the first byte (pgBackRest, HTTPS).
    Tls,
}

/// The chain the server at `host:port` serves (leaf first).
pub fn served_chain(
    host: &str,
    port: u16,
    protocol: Protocol,
    timeout: Duration,
) -> Result<Vec<CertificateDer<'static>>, String> {
    let addr = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host} has no address"))?;
    let mut sock = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    sock.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    sock.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    if protocol == Protocol::Postgres {
        sock.write_all(&SSL_REQUEST)
            .map_err(|e| format!("{addr}: {e}"))?;
        let mut answer = [0u8; 1];
        sock.read_exact(&mut answer)
            .map_err(|e| format!("{addr}: {e}"))?;
        if answer[0] != b'S' {
            return Err(format!(
                "{addr} does not accept TLS connections (is ssl on?)"
            ));
        }
    }
    let provider = Arc::new(ring::default_provider());
    let capture = Arc::new(Capture {
        algs: provider.signature_verification_algorithms,
        chain: Mutex::new(Vec::new()),
    });
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(capture.clone())
        .with_no_client_auth();
    let name = ServerName::try_from(host.to_string())
        .unwrap_or_else(|_| ServerName::try_from("localhost").expect("valid"));
    let mut conn = ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
    let result = (|| {
        while conn.is_handshaking() {
            conn.complete_io(&mut sock)?;
        }
        Ok::<(), std::io::Error>(())
    })();
    let chain = capture.chain.lock().map(|c| c.clone()).unwrap_or_default();
    if chain.is_empty() {
        return Err(match result {
            Err(e) => format!("TLS handshake with {addr} failed: {e}"),
            Ok(()) => format!("{addr} served no certificate"),
        });
    }
    Ok(chain)
}

/// Accepts any chain (this is an inspection, not a trust decision) but records it, and still
/// checks the handshake signatures so the chain is the one the server holds the key for.
#[derive(Debug)]
struct Capture {
    algs: WebPkiSupportedAlgorithms,
    chain: Mutex<Vec<CertificateDer<'static>>>,
}

impl ServerCertVerifier for Capture {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        if let Ok(mut c) = self.chain.lock() {
            *c = std::iter::once(end_entity)
                .chain(intermediates)
                .map(|d| d.clone().into_owned())
                .collect();
        }
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(m, c, d, &self.algs)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(m, c, d, &self.algs)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}
