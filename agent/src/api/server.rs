//! The API's transport: hyper's HTTP/1.1 server on a current-thread tokio runtime that runs
//! on one dedicated thread ("api"), so a flood costs tasks, not threads. POSTs, which wait
//! on etcd with the blocking client, run on one extra blocking thread ("api-control").
//!
//! What bounds a connection:
//! - the cap (`slots`): at most `api.max_connections` served; the longest-idle connection
//!   makes room for a newcomer, so idle clients cannot lock health checks out;
//! - one absolute deadline from accept (`api.request_timeout`) for the TLS handshake and
//!   the whole request head; a POST's body shares it (408 when late, in `respond`);
//!   once the head is in, answering gets `ANSWER_WITHIN` (a POST makes etcd calls);
//! - one request per connection (no keep-alive: HAProxy checks and the CLI open one
//!   connection per request anyway), a head of at most `MAX_HEAD` bytes (431 past it);
//! - `accept` failures (out of descriptors) are logged and paused on, never spun on.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::time::Instant;

use super::control::Control;
use super::slots::{Phase, Slot, Slots, Stats};
use super::Shared;

/// The largest request head (request line and headers) read: a health check's is ~100 bytes.
pub const MAX_HEAD: usize = 8192;
/// Once a request's head is in: time to answer it (a POST reads and writes etcd, each call
/// within its own 2 s budget) and write the answer.
const ANSWER_WITHIN: Duration = Duration::from_secs(15);
/// Pauses after a failed accept: from the first to the longest, doubling.
const ACCEPT_PAUSE: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(1));
/// A failed accept is logged at most this often (with the count since the last line).
const ACCEPT_LOG_EVERY: Duration = Duration::from_secs(10);

/// What every connection needs.
pub(super) struct Ctx {
    pub shared: Shared,
    pub control: Arc<Control>,
    pub stats: Arc<Stats>,
    pub request_timeout: Duration,
}

/// A running server: where it listens, what it counted, and what SIGHUP reloads.
#[derive(Clone)]
pub struct Handle {
    pub addr: SocketAddr,
    pub stats: Arc<Stats>,
    pub(super) identity: Option<Arc<crate::tls::ServerIdentity>>,
    pub(super) control: Arc<Control>,
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle")
            .field("addr", &self.addr)
            .field("tls", &self.identity.is_some())
            .finish()
    }
}

pub(super) struct Settings {
    pub max_connections: usize,
    pub request_timeout: Duration,
    pub tls: Option<(Arc<ServerConfig>, Arc<crate::tls::ServerIdentity>)>,
}

/// Pending connections the kernel queues for us. A flood that reconnects as soon as it is
/// evicted keeps thousands of connections in flight; with a short queue the overflow drops
/// SYNs, HAProxy's among them, and a dropped SYN is retried only after a second (a failed
/// check). Measured on loopback with 3,000 flood connections reopened at once when closed
/// (~15,000 a second): /primary p99 over 1 s with 1024, 43-127 ms with 4096. The kernel caps
/// it at net.core.somaxconn (4096 by default).
const BACKLOG: u32 = 4096;

/// Listens on `addr` and serves it on a thread of its own until the process ends.
pub(super) fn start(
    addr: SocketAddr,
    settings: Settings,
    shared: Shared,
    control: Control,
) -> Result<Handle, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        // Control::handle holds one etcd client behind a mutex: one thread is all it uses.
        .max_blocking_threads(1)
        .thread_name("api-control")
        .build()
        .map_err(|e| format!("cannot start the API runtime: {e}"))?;
    let listener = {
        // The listener registers with this runtime's reactor.
        let _enter = runtime.enter();
        listen(addr, BACKLOG).map_err(|e| format!("cannot listen on {addr}: {e}"))?
    };
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let stats = Arc::new(Stats::default());
    let control = Arc::new(control);
    let ctx = Arc::new(Ctx {
        shared,
        control: control.clone(),
        stats: stats.clone(),
        request_timeout: settings.request_timeout,
    });
    let slots = Slots::new(settings.max_connections, stats.clone());
    let (acceptor, identity) = match settings.tls {
        Some((config, identity)) => (
            Some(tokio_rustls::TlsAcceptor::from(config)),
            Some(identity),
        ),
        None => (None, None),
    };
    std::thread::Builder::new()
        .name("api".into())
        .spawn(move || runtime.block_on(accept_loop(listener, slots, acceptor, ctx)))
        .map_err(|e| format!("cannot start the API thread: {e}"))?;
    Ok(Handle {
        addr,
        stats,
        identity,
        control,
    })
}

fn listen(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // As std's bind does: a restarted agent rebinds while old connections sit in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// Errors of one pending connection (it went away before we took it): nothing to wait for.
fn connection_gone(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(e.kind(), ConnectionAborted | ConnectionReset | Interrupted)
        || e.raw_os_error() == Some(nix::libc::EPROTO)
}

async fn accept_loop(
    listener: TcpListener,
    slots: Arc<Slots>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    ctx: Arc<Ctx>,
) {
    let stats = ctx.stats.clone();
    let mut pause = ACCEPT_PAUSE.0;
    let mut last_log: Option<Instant> = None;
    let mut unlogged = 0u64;
    let mut full = CapReport::default();
    loop {
        match listener.accept().await {
            Ok((stream, _peer)) => {
                pause = ACCEPT_PAUSE.0;
                Stats::bump(&stats.accepted);
                match slots.admit() {
                    Some(slot) => {
                        tokio::spawn(connection(stream, slot, tls.clone(), ctx.clone()));
                    }
                    None => {
                        Stats::bump(&stats.refused);
                        // A reset frees the socket at once (no FIN handshake to wait on).
                        let _ = stream.set_zero_linger();
                    }
                }
                full.maybe_log(&stats);
                // Let the newcomer read the head it probably sent already before taking
                // more: a burst queued behind a health check must not evict it unread.
                tokio::task::yield_now().await;
            }
            Err(e) if connection_gone(&e) => {}
            Err(e) => {
                // EMFILE and the like: the pending connection stays queued, so retrying at
                // once would spin. Wait (connections finishing free descriptors), log.
                Stats::bump(&stats.accept_errors);
                unlogged += 1;
                if last_log.is_none_or(|t| t.elapsed() >= ACCEPT_LOG_EVERY) {
                    tracing::warn!(
                        "api: cannot accept connections: {e} ({unlogged} time(s) since the last report); pausing {pause:?} between tries"
                    );
                    last_log = Some(Instant::now());
                    unlogged = 0;
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(ACCEPT_PAUSE.1);
            }
        }
    }
}

/// A line now and then while the cap is full (a flood, or too small a cap), never one per
/// connection: the counters in /metrics have the detail.
#[derive(Default)]
struct CapReport {
    at: Option<Instant>,
    evicted: u64,
    refused: u64,
}

impl CapReport {
    fn maybe_log(&mut self, stats: &Stats) {
        let (evicted, refused) = (Stats::get(&stats.evicted), Stats::get(&stats.refused));
        if (evicted, refused) == (self.evicted, self.refused)
            || self.at.is_some_and(|t| t.elapsed() < ACCEPT_LOG_EVERY)
        {
            return;
        }
        tracing::warn!(
            "api: connection cap full: {} idle connection(s) closed to make room, {} refused while all were busy, since the last report",
            evicted - self.evicted,
            refused - self.refused
        );
        (self.at, self.evicted, self.refused) = (Some(Instant::now()), evicted, refused);
    }
}

/// One connection, from accept to close, within the deadlines.
async fn connection(
    stream: TcpStream,
    slot: Slot,
    tls: Option<tokio_rustls::TlsAcceptor>,
    ctx: Arc<Ctx>,
) {
    let deadline = Instant::now() + ctx.request_timeout;
    let _ = stream.set_nodelay(true);
    let state = slot.state.clone();
    let work = serve(stream, tls, ctx.clone(), slot.state.clone(), deadline);
    tokio::pin!(work);
    tokio::select! {
        biased;
        _ = state.evicted() => return,
        _ = &mut work => return,
        _ = tokio::time::sleep_until(deadline) => {}
    }
    if state.phase() == Phase::Head {
        // A handshake or head not finished in time: a slow or idle client.
        Stats::bump(&ctx.stats.timed_out);
        return;
    }
    if tokio::time::timeout(ANSWER_WITHIN, work).await.is_err() {
        Stats::bump(&ctx.stats.timed_out);
        tracing::warn!("api: a request was not answered within {ANSWER_WITHIN:?}; closed");
    }
    drop(slot);
}

async fn serve(
    stream: TcpStream,
    tls: Option<tokio_rustls::TlsAcceptor>,
    ctx: Arc<Ctx>,
    state: Arc<super::slots::SlotState>,
    deadline: Instant,
) {
    match tls {
        None => http(TokioIo::new(stream), false, ctx, state, deadline).await,
        Some(acceptor) => match acceptor.accept(stream).await {
            Ok(t) => {
                // Verified during the handshake against api.tls_client_ca (a certificate
                // from another CA fails the handshake itself).
                let cert = t
                    .get_ref()
                    .1
                    .peer_certificates()
                    .is_some_and(|c| !c.is_empty());
                http(TokioIo::new(t), cert, ctx, state, deadline).await
            }
            Err(e) => tracing::debug!("api: TLS handshake failed: {e}"),
        },
    }
}

async fn http<I>(
    io: I,
    client_cert: bool,
    ctx: Arc<Ctx>,
    state: Arc<super::slots::SlotState>,
    deadline: Instant,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = service_fn(move |req| {
        let (ctx, state) = (ctx.clone(), state.clone());
        async move {
            Ok::<_, Infallible>(
                super::respond::answer(req, &ctx, &state, client_cert, deadline).await,
            )
        }
    });
    let conn = http1::Builder::new()
        .keep_alive(false)
        // The connection's own deadline covers the head (and the TLS handshake before it).
        .header_read_timeout(None)
        .max_buf_size(MAX_HEAD)
        .max_header_size(MAX_HEAD)
        .max_headers(64)
        .serve_connection(io, service);
    if let Err(e) = conn.await {
        // hyper already answered 400/431 where it could; the rest is a client going away.
        tracing::debug!("api: connection ended: {e}");
    }
}
