//! One request, once hyper has parsed its head: reads go to `route` (or `/metrics`),
//! POSTs are authorised on their head alone, then their body is read (bounded in size and
//! by the connection's deadline) and `Control::handle` runs on the blocking thread.

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body, Bytes, Incoming};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use tokio::time::Instant;

use super::server::Ctx;
use super::slots::{SlotState, Stats};
use super::{metrics, route};
use crate::guard::monotonic_ms;

/// The largest POST body: requests are small JSON objects (`{"to": "db2"}`).
pub const MAX_BODY: usize = 4096;

type Answer = Response<Full<Bytes>>;

pub(super) async fn answer(
    req: Request<Incoming>,
    ctx: &Ctx,
    state: &SlotState,
    client_cert: bool,
    deadline: Instant,
) -> Answer {
    // The head is in: this connection is no longer idle (see `slots`).
    state.head_received();
    Stats::bump(&ctx.stats.requests);
    let target = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().to_string(), |p| p.as_str().to_string());
    let snap = ctx.shared.lock().map(|g| g.clone()).unwrap_or_default();
    if req.method() == Method::POST {
        return post(req, &target, snap, ctx, client_cert, deadline).await;
    }
    let method = req.method().as_str();
    let reading = req.method() == Method::GET || req.method() == Method::HEAD;
    if reading && target.split('?').next() == Some("/metrics") {
        let text = metrics::render(&snap) + &metrics::render_api(&ctx.stats);
        return respond(200, "text/plain; version=0.0.4", text);
    }
    let (status, body) = route(method, &target, &snap, monotonic_ms());
    json_answer(status, &body)
}

async fn post(
    req: Request<Incoming>,
    target: &str,
    snap: super::Snapshot,
    ctx: &Ctx,
    client_cert: bool,
    deadline: Instant,
) -> Answer {
    // Credentials first: an unauthenticated client never gets its body read.
    let authorization = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if let Err((status, why)) = ctx.control.authorize(client_cert, authorization) {
        let mut r = json_answer(status, &json!({"error": why}));
        if status == 401 {
            r.headers_mut().insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"pgshift\""),
            );
        }
        return r;
    }
    let body = req.into_body();
    if body.size_hint().lower() > MAX_BODY as u64 {
        return error(413, format!("the body is over {MAX_BODY} bytes"));
    }
    let body = match tokio::time::timeout_at(deadline, Limited::new(body, MAX_BODY).collect()).await
    {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return error(413, format!("the body is over {MAX_BODY} bytes"))
        }
        Ok(Err(e)) => return error(400, format!("cannot read the body: {e}")),
        Err(_) => {
            return error(
                408,
                format!(
                    "the body did not arrive within {:?} of connecting",
                    ctx.request_timeout
                ),
            )
        }
    };
    let control = ctx.control.clone();
    let target = target.to_string();
    // Control reads and writes etcd with the blocking client: off the event loop, so
    // health checks keep being answered meanwhile.
    let (status, answer) =
        tokio::task::spawn_blocking(move || control.handle(&target, &body, &snap))
            .await
            .unwrap_or_else(|_| (500, json!({"error": "the request handler failed"})));
    json_answer(status, &answer)
}

fn error(status: u16, why: String) -> Answer {
    json_answer(status, &json!({"error": why}))
}

fn json_answer(status: u16, body: &Value) -> Answer {
    respond(status, "application/json", format!("{body}\n"))
}

fn respond(status: u16, content_type: &'static str, text: String) -> Answer {
    let mut r = Response::new(Full::new(Bytes::from(text)));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}
