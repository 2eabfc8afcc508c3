//! The agent's HTTP client, for etcd's JSON gateway and for the CLI calling its local agent:
//! ureq 3 (blocking, like the loop that calls it) with rustls on the ring provider the rest
//! of the workspace uses. What ureq gives that the agent relies on:
//! - a connection pool: one idle connection per endpoint is kept and reused across loops
//!   (probed before reuse, so one etcd closed meanwhile costs no failed request), instead of
//!   a TCP and TLS handshake per request;
//! - framing enforced: a body shorter than its Content-Length or a broken chunked encoding
//!   is an error, never a short answer; a body with neither (delimited by the close, so
//!   a TLS stream cut without close_notify would pass for complete) is refused here;
//! - one deadline for the whole request (connect, TLS, send, head, body), which the caller
//!   sets to its budget;
//! - a cap on the answer's size.
//!
//! Proxies from the environment are ignored (etcd and the agents are on the database
//! network: an HTTP(S)_PROXY set for package downloads must not carry the agent's traffic)
//! and redirects are not followed.

use std::time::Duration;

use ureq::tls::TlsConfig;

/// Why a request got no usable answer. Never carries headers or bodies sent (a bearer
/// token is a header).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("no complete answer within {0:?}")]
    Timeout(Duration),
    #[error("the answer is over {0} bytes")]
    TooLarge(u64),
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("TLS: {0}")]
    Tls(String),
    /// The answer broke HTTP's framing (bad head, short body, bad chunk).
    #[error("malformed answer: {0}")]
    Protocol(String),
    #[error("{0}")]
    Io(String),
    #[error("bad request: {0}")]
    Request(String),
}

impl Error {
    fn from_ureq(e: ureq::Error, timeout: Duration) -> Error {
        use ureq::Error as U;
        match e {
            U::Timeout(_) => Error::Timeout(timeout),
            U::BodyExceedsLimit(n) => Error::TooLarge(n),
            U::LargeResponseHeader(n, _) => Error::TooLarge(n as u64),
            U::HostNotFound => Error::Connect("host not found".into()),
            U::ConnectionFailed => Error::Connect("connection failed".into()),
            U::Io(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::AddrNotAvailable
                ) =>
            {
                Error::Connect(e.to_string())
            }
            // rustls reports handshake failures (an unknown CA, a refused client
            // certificate) through the stream as io errors.
            U::Io(e) if e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>()) => {
                Error::Tls(e.to_string())
            }
            U::Io(e) => Error::Io(e.to_string()),
            U::Tls(why) => Error::Tls(why.into()),
            U::Rustls(e) => Error::Tls(e.to_string()),
            U::Pem(e) => Error::Tls(e.to_string()),
            U::Protocol(e) => Error::Protocol(e.to_string()),
            U::BadUri(u) => Error::Request(format!("bad URL {u}")),
            U::Http(e) => Error::Request(e.to_string()),
            other => Error::Protocol(other.to_string()),
        }
    }
}

/// An answer: any status (4xx and 5xx are answers too) and the whole body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

/// How to reach https:// URLs: the CA to trust and the certificate to present, checked
/// when built (see `tls::client`).
#[derive(Clone)]
pub struct ClientTls(pub(crate) TlsConfig);

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.write_str("ClientTls")
    }
}

/// A pooled client. Cheap to clone (clones share the pool).
#[derive(Clone)]
pub struct Client {
    agent: ureq::Agent,
    max_body: u64,
    tls: bool,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("max_body", &self.max_body)
            .field("tls", &self.tls)
            .finish()
    }
}

/// Idle connections kept per host: the agent talks to one endpoint at a time, so one each
/// is reuse without hoarding descriptors.
const IDLE_PER_HOST: usize = 1;
/// etcd closes idle client connections only after minutes; the loop calls every
/// loop_wait, so a connection idle longer than this belongs to a loop that stopped.
const MAX_IDLE_AGE: Duration = Duration::from_secs(60);

impl Client {
    /// A client for plain http:// URLs and, with `tls`, https:// ones; answers over
    /// `max_body` bytes are refused.
    pub fn new(tls: Option<&ClientTls>, max_body: u64) -> Client {
        let mut config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .proxy(None)
            .max_redirects(0)
            .user_agent(concat!("pgshift/", env!("CARGO_PKG_VERSION")))
            .accept_encoding("identity")
            .no_delay(true)
            .max_idle_connections(8)
            .max_idle_connections_per_host(IDLE_PER_HOST)
            .max_idle_age(MAX_IDLE_AGE)
            .max_response_header_size(16 * 1024);
        if let Some(t) = tls {
            config = config.tls_config(t.0.clone());
        }
        Client {
            agent: config.build().into(),
            max_body,
            tls: tls.is_some(),
        }
    }

    /// POSTs `body` as JSON to `url`, with `Authorization: Bearer <bearer>` when given; the
    /// whole exchange within `timeout`.
    pub fn post_json(
        &self,
        url: &str,
        bearer: Option<&str>,
        body: &[u8],
        timeout: Duration,
    ) -> Result<Response, Error> {
        self.check_scheme(url)?;
        let mut req = self
            .agent
            .post(url)
            .config()
            .timeout_global(Some(timeout))
            .build()
            .content_type("application/json");
        if let Some(token) = bearer {
            req = req.header("Authorization", format!("Bearer {token}"));
        }
        let res = req.send(body).map_err(|e| Error::from_ureq(e, timeout))?;
        self.read(res, false, timeout)
    }

    /// GETs `url` (or HEADs it), the whole exchange within `timeout`.
    pub fn get(&self, url: &str, head: bool, timeout: Duration) -> Result<Response, Error> {
        self.check_scheme(url)?;
        let req = if head {
            self.agent.head(url)
        } else {
            self.agent.get(url)
        };
        let res = req
            .config()
            .timeout_global(Some(timeout))
            .build()
            .call()
            .map_err(|e| Error::from_ureq(e, timeout))?;
        self.read(res, head, timeout)
    }

    fn read(
        &self,
        mut res: ureq::http::Response<ureq::Body>,
        head: bool,
        timeout: Duration,
    ) -> Result<Response, Error> {
        let status = res.status().as_u16();
        // A body that ends where the connection ends cannot be told from a cut one (ureq,
        // like most clients, takes a TLS stream cut without close_notify for such an end).
        // Every server we talk to (etcd's Go gateway, our own API) frames its bodies.
        let h = res.headers();
        let framed = h.contains_key(ureq::http::header::CONTENT_LENGTH)
            || h.get(ureq::http::header::TRANSFER_ENCODING)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        let bodiless = head || status == 204 || status == 304 || (100..200).contains(&status);
        if !framed && !bodiless {
            return Err(Error::Protocol(
                "an answer without Content-Length or chunked encoding (its end cannot be told from a cut connection)".into(),
            ));
        }
        let body = res
            .body_mut()
            .with_config()
            .limit(self.max_body)
            .read_to_vec()
            .map_err(|e| Error::from_ureq(e, timeout))?;
        Ok(Response { status, body })
    }

    fn check_scheme(&self, url: &str) -> Result<(), Error> {
        if url.starts_with("https://") && !self.tls {
            // ureq would fall back on no roots at all; say what is missing instead.
            return Err(Error::Request(
                "an https:// URL needs a CA to verify it (no TLS configured)".into(),
            ));
        }
        Ok(())
    }
}

/// `scheme://host:port` for a host that may be an IPv6 literal.
pub fn base_url(tls: bool, host: &str, port: u16) -> String {
    let scheme = if tls { "https" } else { "http" };
    if host.contains(':') {
        format!("{scheme}://[{host}]:{port}")
    } else {
        format!("{scheme}://{host}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(base_url(false, "10.0.0.1", 2379), "http://10.0.0.1:2379");
        assert_eq!(base_url(true, "::1", 8008), "https://[::1]:8008");
        assert_eq!(base_url(true, "db1", 8008), "https://db1:8008");
    }

    #[test]
    fn https_without_tls_is_refused_before_connecting() {
        let c = Client::new(None, 1024);
        let e = c
            .get("https://127.0.0.1:1/", false, Duration::from_secs(1))
            .unwrap_err();
        assert!(matches!(e, Error::Request(_)), "{e:?}");
    }
}
