//! A scripted HTTP/1.1 server for testing the client against answers no real server would
//! give (short bodies, broken chunks, endless trickles, TLS cut without close_notify). It
//! counts accepted connections and requests, so reuse is observable.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What the server does after writing its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    /// Wait for the next request on the same connection.
    KeepAlive,
    /// Close the connection (for TLS: without close_notify).
    Close,
    /// Close after sending TLS close_notify (plain: same as Close).
    CloseNotify,
}

/// One step of an answer: bytes, then a pause.
pub type Step = (Vec<u8>, Duration);

/// A request as the fake saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub head: String,
    pub body: Vec<u8>,
}

pub struct Fake {
    pub addr: SocketAddr,
    pub accepts: Arc<AtomicUsize>,
    pub requests: Arc<AtomicUsize>,
}

impl Fake {
    pub fn accepts(&self) -> usize {
        self.accepts.load(Ordering::SeqCst)
    }
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

type Script = dyn Fn(&Seen) -> (Vec<Step>, After) + Send + Sync;

/// Serves plain TCP; `script` answers each request.
pub fn serve(script: impl Fn(&Seen) -> (Vec<Step>, After) + Send + Sync + 'static) -> Fake {
    start(None, Arc::new(script))
}

/// Serves TLS with `config`.
pub fn serve_tls(
    config: Arc<rustls::ServerConfig>,
    script: impl Fn(&Seen) -> (Vec<Step>, After) + Send + Sync + 'static,
) -> Fake {
    start(Some(config), Arc::new(script))
}

/// A whole answer at once.
pub fn answer(bytes: impl Into<Vec<u8>>) -> Vec<Step> {
    vec![(bytes.into(), Duration::ZERO)]
}

/// `status` with a JSON body framed by Content-Length.
pub fn json(status: u16, body: &str) -> Vec<Step> {
    answer(format!(
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ))
}

fn start(tls: Option<Arc<rustls::ServerConfig>>, script: Arc<Script>) -> Fake {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let accepts = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(AtomicUsize::new(0));
    let (a, r) = (accepts.clone(), requests.clone());
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(s) = s else { continue };
            a.fetch_add(1, Ordering::SeqCst);
            let (script, r, tls) = (script.clone(), r.clone(), tls.clone());
            std::thread::spawn(move || {
                let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                match tls {
                    None => connection(s, &*script, &r, |_| {}),
                    Some(config) => {
                        let Ok(conn) = rustls::ServerConnection::new(config) else {
                            return;
                        };
                        let t = rustls::StreamOwned::new(conn, s);
                        connection(t, &*script, &r, |t| {
                            t.conn.send_close_notify();
                            let _ = t.flush();
                        });
                    }
                }
            });
        }
    });
    Fake {
        addr,
        accepts,
        requests,
    }
}

fn connection<S: Read + Write>(
    mut s: S,
    script: &Script,
    requests: &AtomicUsize,
    close_notify: impl Fn(&mut S),
) {
    let mut buf = Vec::new();
    loop {
        let Some(seen) = read_request(&mut s, &mut buf) else {
            return;
        };
        requests.fetch_add(1, Ordering::SeqCst);
        let (steps, after) = script(&seen);
        for (bytes, pause) in steps {
            if s.write_all(&bytes).and_then(|_| s.flush()).is_err() {
                return;
            }
            std::thread::sleep(pause);
        }
        match after {
            After::KeepAlive => continue,
            After::Close => return,
            After::CloseNotify => {
                close_notify(&mut s);
                return;
            }
        }
    }
}

/// Reads one request (head, then a Content-Length body) from `s`, keeping what follows.
fn read_request<S: Read>(s: &mut S, buf: &mut Vec<u8>) -> Option<Seen> {
    let end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        let mut chunk = [0u8; 4096];
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < end + 4 + length {
        let mut chunk = [0u8; 4096];
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let body = buf[end + 4..end + 4 + length].to_vec();
    buf.drain(..end + 4 + length);
    let mut first = head.lines().next().unwrap_or("").split_whitespace();
    Some(Seen {
        method: first.next().unwrap_or("").to_string(),
        path: first.next().unwrap_or("").to_string(),
        head,
        body,
    })
}

/// A listener that accepts and then never answers (for deadlines).
pub fn black_hole() -> (SocketAddr, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let t = std::thread::spawn(move || {
        let mut held: Vec<TcpStream> = Vec::new();
        for s in listener.incoming().flatten() {
            held.push(s);
            if held.len() > 100 {
                return;
            }
        }
    });
    (addr, t)
}
