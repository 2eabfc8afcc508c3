//! What etcd's JSON gateway sends back, as types. The gateway renders protobuf as JSON:
//! int64 fields are strings, fields at their zero value are left out (an empty `kvs`, a
//! `succeeded` that is false, a lease of 0), bytes are base64. So a missing `succeeded` is
//! `false`, but a revision that is missing or not a positive integer is an error: leadership
//! is decided by comparing revisions, and a revision read as 0 would compare as "absent".
//!
//! Errors come as `{"error": "...", "code": <gRPC code>, "message": "..."}` (etcd 3.4/3.5,
//! grpc-gateway v1), `{"code", "message", "details"}` (v2) or, inside a streamed answer
//! such as a lease keep-alive, `{"error": {"grpc_code" | "code", "message", ...}}`.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer};

use super::Kv;

/// Decodes a 200 answer.
pub(super) fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| e.to_string())
}

/// gRPC status codes, as the gateway reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Cancelled,
    Unknown,
    InvalidArgument,
    DeadlineExceeded,
    NotFound,
    AlreadyExists,
    PermissionDenied,
    ResourceExhausted,
    FailedPrecondition,
    Aborted,
    OutOfRange,
    Unimplemented,
    Internal,
    Unavailable,
    DataLoss,
    Unauthenticated,
    Other(i64),
}

impl Code {
    pub fn from_number(n: i64) -> Code {
        use Code::*;
        match n {
            1 => Cancelled,
            2 => Unknown,
            3 => InvalidArgument,
            4 => DeadlineExceeded,
            5 => NotFound,
            6 => AlreadyExists,
            7 => PermissionDenied,
            8 => ResourceExhausted,
            9 => FailedPrecondition,
            10 => Aborted,
            11 => OutOfRange,
            12 => Unimplemented,
            13 => Internal,
            14 => Unavailable,
            15 => DataLoss,
            16 => Unauthenticated,
            n => Other(n),
        }
    }
}

/// etcd's refusal: the HTTP status, the gRPC code when the gateway gave one, its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayError {
    pub status: u16,
    pub code: Option<Code>,
    pub message: String,
}

impl std::fmt::Display for GatewayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.code {
            Some(c) => write!(f, "{} ({c:?}, HTTP {})", self.message, self.status),
            None => write!(f, "{} (HTTP {})", self.message, self.status),
        }
    }
}

/// The error object, in any of the gateway's shapes.
#[derive(Deserialize)]
struct RawError {
    #[serde(default)]
    code: Option<i64>,
    #[serde(default)]
    grpc_code: Option<i64>,
    #[serde(default)]
    message: Option<String>,
    /// v1 repeats the message here; in a stream it is the whole error object.
    #[serde(default)]
    error: Option<serde_json::Value>,
}

impl RawError {
    fn into_error(self, status: u16) -> GatewayError {
        if let Some(inner @ serde_json::Value::Object(_)) = &self.error {
            if let Ok(raw) = RawError::deserialize(inner) {
                return raw.into_error(status);
            }
        }
        let message = self
            .message
            .filter(|m| !m.is_empty())
            .or_else(|| {
                self.error
                    .as_ref()
                    .and_then(|e| e.as_str())
                    .map(String::from)
            })
            .unwrap_or_else(|| "no message".into());
        GatewayError {
            status,
            code: self.code.or(self.grpc_code).map(Code::from_number),
            message: clip(message),
        }
    }
}

/// Messages are shown to people and logged: keep them to one readable line.
fn clip(mut s: String) -> String {
    s = s.trim().replace(['\n', '\r'], " ");
    if s.len() > 300 {
        let mut cut = 300;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

impl GatewayError {
    /// The refusal in a non-200 answer (JSON from the gateway, or the text of whatever else
    /// answered, e.g. a 404 page with the gateway disabled).
    pub fn from_answer(status: u16, body: &[u8]) -> GatewayError {
        match serde_json::from_slice::<RawError>(body) {
            Ok(raw) => raw.into_error(status),
            Err(_) => GatewayError {
                status,
                code: None,
                message: clip(String::from_utf8_lossy(body).into_owned()),
            },
        }
    }

    /// Whether another member may answer better: this one has no leader, timed out waiting
    /// for its raft, or failed (any 5xx that is not a definite refusal).
    pub fn transient(&self) -> bool {
        match self.code {
            Some(Code::Unavailable | Code::DeadlineExceeded) => true,
            Some(Code::Unknown | Code::Internal) | None => self.status >= 500,
            Some(_) => false,
        }
    }
}

/// An int64 as the gateway renders it: a decimal string (or, leniently, a JSON integer).
fn parse_int64<'de, D: Deserializer<'de>>(d: D) -> Result<Result<i64, String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Text(String),
        Number(i64),
    }
    let Ok(raw) = Raw::deserialize(d) else {
        return Ok(Err("expected an integer".into()));
    };
    Ok(match raw {
        Raw::Number(n) => Ok(n),
        Raw::Text(s) => {
            let digits = s.strip_prefix('-').unwrap_or(&s);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                Err(format!("{s:?} is not an integer"))
            } else {
                s.parse().map_err(|_| format!("{s:?} is out of range"))
            }
        }
    })
}

fn int64<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    parse_int64(d)?.map_err(D::Error::custom)
}

/// A revision: a positive int64 (etcd's revisions start at 1).
fn revision<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    match parse_int64(d)? {
        Ok(r) if r > 0 => Ok(r),
        Ok(r) => Err(D::Error::custom(format!("revision {r} is not positive"))),
        Err(why) => Err(D::Error::custom(format!("revision: {why}"))),
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct Header {
    #[serde(deserialize_with = "revision")]
    pub revision: i64,
}

/// put, deleterange, lease revoke: only the header matters.
#[derive(Debug, Deserialize)]
pub(super) struct Ack {
    pub header: Header,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawKv {
    key: String,
    #[serde(default)]
    value: String,
    #[serde(deserialize_with = "revision")]
    mod_revision: i64,
    #[serde(default, deserialize_with = "int64")]
    lease: i64,
}

#[derive(Debug, Deserialize)]
pub(super) struct Range {
    pub header: Header,
    #[serde(default)]
    kvs: Vec<RawKv>,
}

impl Range {
    pub fn kvs(&self) -> Result<Vec<Kv>, String> {
        self.kvs
            .iter()
            .map(|k| {
                Ok(Kv {
                    key: unb64(&k.key).map_err(|e| format!("key: {e}"))?,
                    value: unb64(&k.value).map_err(|e| format!("value: {e}"))?,
                    mod_revision: k.mod_revision,
                    lease: k.lease,
                })
            })
            .collect()
    }
}

fn unb64(s: &str) -> Result<String, String> {
    let bytes = B64.decode(s).map_err(|e| format!("not base64: {e}"))?;
    String::from_utf8(bytes).map_err(|_| "not UTF-8".to_string())
}

#[derive(Debug, Deserialize)]
pub(super) struct Txn {
    pub header: Header,
    #[serde(default)]
    pub succeeded: bool,
}

#[derive(Debug, Deserialize)]
pub(super) struct LeaseGrant {
    #[serde(rename = "ID", default, deserialize_with = "int64")]
    id: i64,
    #[serde(default)]
    error: String,
}

impl LeaseGrant {
    pub fn id(&self) -> Result<i64, String> {
        match (self.id, self.error.as_str()) {
            (_, e) if !e.is_empty() => Err(format!("lease grant refused: {}", clip(e.into()))),
            (0, _) => Err("lease grant returned no ID".into()),
            (id, _) => Ok(id),
        }
    }
}

/// One message of the keep-alive stream: a result, or an error object.
#[derive(Debug, Deserialize)]
pub(super) struct KeepAlive {
    #[serde(default)]
    result: Option<KeepAliveResult>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct KeepAliveResult {
    #[serde(rename = "TTL", default, deserialize_with = "int64")]
    ttl: i64,
}

impl KeepAlive {
    /// Whether the lease is still alive (etcd answers TTL 0, left out, for an expired one).
    pub fn alive(&self) -> Result<bool, GatewayError> {
        if let Some(e) = &self.error {
            let raw = RawError::deserialize(e).unwrap_or(RawError {
                code: None,
                grpc_code: None,
                message: Some(e.to_string()),
                error: None,
            });
            return Err(raw.into_error(200));
        }
        match &self.result {
            Some(r) => Ok(r.ttl > 0),
            None => Err(GatewayError {
                status: 200,
                code: None,
                message: "keep-alive answer without a result".into(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revisions_must_be_positive_integers() {
        let ok: Ack = decode(br#"{"header":{"revision":"42"}}"#).unwrap();
        assert_eq!(ok.header.revision, 42);
        let ok: Ack = decode(br#"{"header":{"revision":7}}"#).unwrap();
        assert_eq!(ok.header.revision, 7);
        for bad in [
            r#"{"header":{"revision":"4x2"}}"#,
            r#"{"header":{"revision":""}}"#,
            r#"{"header":{"revision":"0"}}"#,
            r#"{"header":{"revision":"-3"}}"#,
            r#"{"header":{"revision":1.5}}"#,
            r#"{"header":{"revision":"99999999999999999999"}}"#,
            r#"{"header":{}}"#,
            r#"{}"#,
            r#"not json"#,
        ] {
            assert!(decode::<Ack>(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn zero_values_are_left_out_by_the_gateway() {
        let t: Txn = decode(br#"{"header":{"revision":"3"}}"#).unwrap();
        assert!(!t.succeeded);
        let r: Range = decode(br#"{"header":{"revision":"3"}}"#).unwrap();
        assert!(r.kvs().unwrap().is_empty());
        // "a" with an empty value (left out) and no lease.
        let r: Range =
            decode(br#"{"header":{"revision":"3"},"kvs":[{"key":"YQ==","mod_revision":"2"}]}"#)
                .unwrap();
        let kv = &r.kvs().unwrap()[0];
        assert_eq!(
            (
                kv.key.as_str(),
                kv.value.as_str(),
                kv.mod_revision,
                kv.lease
            ),
            ("a", "", 2, 0)
        );
        let bad: Range =
            decode(br#"{"header":{"revision":"3"},"kvs":[{"key":"!!","mod_revision":"2"}]}"#)
                .unwrap();
        assert!(bad.kvs().is_err());
        assert!(decode::<Range>(
            br#"{"header":{"revision":"3"},"kvs":[{"key":"YQ==","mod_revision":"x"}]}"#
        )
        .is_err());
    }

    #[test]
    fn errors_in_every_shape() {
        let v1 = GatewayError::from_answer(
            404,
            br#"{"error":"etcdserver: requested lease not found","code":5,"message":"etcdserver: requested lease not found"}"#,
        );
        assert_eq!(v1.code, Some(Code::NotFound));
        assert_eq!(v1.message, "etcdserver: requested lease not found");
        assert!(!v1.transient());
        let v2 = GatewayError::from_answer(
            503,
            br#"{"code":14,"message":"etcdserver: no leader","details":[]}"#,
        );
        assert_eq!(v2.code, Some(Code::Unavailable));
        assert!(v2.transient());
        let text = GatewayError::from_answer(404, b"404 page not found\n");
        assert_eq!(
            (text.code, text.message.as_str()),
            (None, "404 page not found")
        );
        assert!(!text.transient());
        assert!(GatewayError::from_answer(502, b"<html>bad gateway</html>").transient());
        assert!(!GatewayError::from_answer(
            400,
            br#"{"code":9,"message":"etcdserver: mvcc: required revision has been compacted"}"#
        )
        .transient());

        let k: KeepAlive = decode(
            br#"{"error":{"grpc_code":5,"http_code":404,"message":"etcdserver: requested lease not found","http_status":"Not Found"}}"#,
        )
        .unwrap();
        let e = k.alive().unwrap_err();
        assert_eq!(e.code, Some(Code::NotFound));
        let k: KeepAlive =
            decode(br#"{"result":{"header":{"revision":"5"},"ID":"7","TTL":"3"}}"#).unwrap();
        assert!(k.alive().unwrap());
        let k: KeepAlive = decode(br#"{"result":{"header":{"revision":"5"},"ID":"7"}}"#).unwrap();
        assert!(!k.alive().unwrap());
        let k: KeepAlive = decode(br#"{}"#).unwrap();
        assert!(k.alive().is_err());
    }

    #[test]
    fn lease_grant() {
        let g: LeaseGrant = decode(br#"{"header":{"revision":"1"},"ID":"694","TTL":"3"}"#).unwrap();
        assert_eq!(g.id().unwrap(), 694);
        let g: LeaseGrant = decode(br#"{"header":{"revision":"1"},"TTL":"3"}"#).unwrap();
        assert!(g.id().is_err());
        let g: LeaseGrant = decode(br#"{"ID":"5","error":"too many"}"#).unwrap();
        assert!(g.id().is_err());
        assert!(decode::<LeaseGrant>(br#"{"ID":"five"}"#).is_err());
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn header(revision: &str) -> Vec<u8> {
            format!(r#"{{"header":{{"revision":{revision}}}}}"#).into_bytes()
        }

        proptest! {
            #[test]
            fn any_answer_decodes_or_fails_without_panicking(body in proptest::collection::vec(any::<u8>(), 0..512)) {
                let _ = decode::<Range>(&body).map(|r| r.kvs());
                let _ = decode::<Txn>(&body);
                let _ = decode::<LeaseGrant>(&body).map(|g| g.id());
                let _ = decode::<KeepAlive>(&body).map(|k| k.alive());
                let _ = GatewayError::from_answer(500, &body);
            }

            #[test]
            fn revisions_round_trip(rev in 1i64..) {
                let as_text: Ack = decode(&header(&format!("\"{rev}\""))).unwrap();
                let as_number: Ack = decode(&header(&rev.to_string())).unwrap();
                prop_assert_eq!(as_text.header.revision, rev);
                prop_assert_eq!(as_number.header.revision, rev);
            }

            #[test]
            fn a_revision_is_accepted_only_as_a_positive_integer(text in "\\PC{0,24}") {
                let quoted = serde_json::to_string(&text).unwrap();
                let decoded = decode::<Ack>(&header(&quoted));
                let positive = !text.is_empty()
                    && text.bytes().all(|b| b.is_ascii_digit())
                    && text.parse::<i64>().is_ok_and(|r| r > 0);
                prop_assert_eq!(decoded.is_ok(), positive, "{:?}", text);
            }

            #[test]
            fn error_messages_stay_one_short_line(
                status in 100u16..600,
                code in proptest::option::of(0i64..40),
                message in "\\PC{0,600}",
            ) {
                let mut body = serde_json::json!({"message": message});
                if let Some(c) = code {
                    body["code"] = c.into();
                }
                let e = GatewayError::from_answer(status, body.to_string().as_bytes());
                prop_assert_eq!(e.status, status);
                prop_assert_eq!(e.code, code.map(Code::from_number));
                prop_assert!(!e.message.contains('\n') && e.message.chars().count() <= 301);
            }
        }
    }
}
