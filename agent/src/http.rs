//! Minimal HTTP/1.1 over a blocking socket, plain or TLS: one request per connection
//! (`Connection: close`). Used for etcd's JSON gateway and for the CLI calling an agent.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::ClientConfig;

pub fn resolve(host: &str, port: u16) -> Result<SocketAddr, String> {
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("{host}:{port}: {e}"))?
        .collect();
    // IPv4 first: "localhost" may resolve to ::1 first while servers listen on 0.0.0.0.
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("{host}:{port}: no address"))
}

/// Sends one request; (status, body). `headers` are extra lines ("Name: value").
#[allow(clippy::too_many_arguments)]
pub fn request(
    host: &str,
    port: u16,
    tls: Option<&Arc<ClientConfig>>,
    method: &str,
    path: &str,
    headers: &[String],
    body: &str,
    timeout: Duration,
) -> Result<(u16, Vec<u8>), String> {
    let addr = resolve(host, port)?;
    let s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.set_nodelay(true).ok();
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n");
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    if !body.is_empty() || method == "POST" {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body);
    let mut raw = Vec::new();
    match tls {
        None => {
            let mut s = s;
            s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
            s.read_to_end(&mut raw).map_err(|e| e.to_string())?;
        }
        Some(config) => {
            let name = ServerName::try_from(host.to_string())
                .map_err(|e| format!("{host}: not a TLS server name: {e}"))?;
            let conn =
                rustls::ClientConnection::new(config.clone(), name).map_err(|e| e.to_string())?;
            let mut t = rustls::StreamOwned::new(conn, s);
            t.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
            // A server closing without close_notify is common; what we read is the answer.
            match t.read_to_end(&mut raw) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    }
    parse_response(&raw)
}

pub fn parse_response(raw: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("truncated HTTP response")?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let body = &raw[split + 4..];
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("no HTTP status")?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    Ok((
        status,
        if chunked {
            dechunk(body)?
        } else {
            body.to_vec()
        },
    ))
}

fn dechunk(mut body: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("bad chunked body")?;
        let size_text = String::from_utf8_lossy(&body[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| "bad chunk size")?;
        body = &body[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if body.len() < size {
            return Err("truncated chunk".into());
        }
        out.extend_from_slice(&body[..size]);
        body = body.get(size + 2..).unwrap_or_default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses() {
        let (s, b) = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}").unwrap();
        assert_eq!((s, b.as_slice()), (200, b"{}".as_slice()));
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n4\r\n\":1}\r\n0\r\n\r\n";
        let (_, b) = parse_response(raw).unwrap();
        assert_eq!(b, b"{\"a\":1}");
    }
}
