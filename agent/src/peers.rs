//! The other agents' APIs as this agent calls them, with the API's own TLS identity and
//! token: the leader's failsafe rounds (`failsafe`), a voter's quorum rounds (`quorum`).

use std::time::Duration;

use serde_json::Value;

use crate::config::Config;

pub struct Peers {
    client: crate::http::Client,
    tls: bool,
    token_file: Option<std::path::PathBuf>,
}

impl Peers {
    pub fn new(cfg: &Config) -> Result<Peers, String> {
        let tls = cfg.api_client_tls()?;
        Ok(Peers {
            client: crate::http::Client::new(tls.as_ref(), 64 << 10),
            tls: tls.is_some(),
            token_file: cfg.api.token_file.clone(),
        })
    }

    /// `path` on the API `name` published (`host:port`).
    fn url(&self, name: &str, api: &str, path: &str) -> Result<String, String> {
        let (host, port) = api
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
            .ok_or_else(|| format!("{name} published no usable API address ({api:?})"))?;
        Ok(format!(
            "{}{path}",
            crate::http::base_url(self.tls, host, port)
        ))
    }

    /// The bearer token POSTs carry (read again at each call: it may have been rotated).
    pub fn token(&self) -> Result<Option<String>, String> {
        self.token_file
            .as_deref()
            .map(crate::api::control::read_token)
            .transpose()
    }

    /// POSTs `body` with `token`; (status, the answer's JSON or null).
    pub fn post(
        &self,
        (name, api): (&str, &str),
        path: &str,
        body: &Value,
        token: Option<&str>,
        timeout: Duration,
    ) -> Result<(u16, Value), String> {
        let r = self
            .client
            .post_json(
                &self.url(name, api, path)?,
                token,
                body.to_string().as_bytes(),
                timeout,
            )
            .map_err(|e| format!("{name} does not answer: {e}"))?;
        Ok((
            r.status,
            serde_json::from_slice(&r.body).unwrap_or(Value::Null),
        ))
    }

    /// GETs `path`; (status, the answer's JSON or null).
    pub fn get(
        &self,
        (name, api): (&str, &str),
        path: &str,
        timeout: Duration,
    ) -> Result<(u16, Value), String> {
        let r = self
            .client
            .get(&self.url(name, api, path)?, false, timeout)
            .map_err(|e| format!("{name} does not answer: {e}"))?;
        Ok((
            r.status,
            serde_json::from_slice(&r.body).unwrap_or(Value::Null),
        ))
    }
}
