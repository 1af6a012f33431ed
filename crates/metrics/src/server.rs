//! A minimal HTTP/1.1 responder for `/metrics`, `/health` and `/ready`.
//!
//! Scrapers and probes send one small GET and read the answer; a full HTTP stack would add a
//! dependency tree for nothing. Every connection gets one response and is closed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::{Health, Registry};

/// Largest request head read; a GET from Prometheus or a probe is a few hundred bytes.
const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// Connections served at once. Scrapers and probes are a handful; the rest wait in the
/// kernel's accept backlog, so a misbehaving client cannot make the process hold more.
const MAX_CONNECTIONS: usize = 16;
/// A client that does not finish its request (or read the answer) within this is dropped.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The listen address is not `host:port`.
    #[error("metrics listen address {address:?} is not host:port (e.g. 127.0.0.1:9464 or 0.0.0.0:9464): {reason}")]
    Address {
        /// As given.
        address: String,
        /// The parser's complaint.
        reason: String,
    },
    /// Binding failed (in use, no permission, not a local address).
    #[error("cannot listen for metrics on {address}: {source}")]
    Bind {
        /// As given.
        address: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// The bound endpoint; [`MetricsServer::serve`] answers requests until the task is dropped.
#[derive(Debug)]
pub struct MetricsServer {
    listener: TcpListener,
}

fn parse_address(address: &str) -> Result<SocketAddr, MetricsError> {
    address
        .parse::<SocketAddr>()
        .map_err(|e| MetricsError::Address {
            address: address.to_owned(),
            reason: e.to_string(),
        })
}

impl MetricsServer {
    /// Checks a listen address (`ip:port`) without binding it.
    ///
    /// # Errors
    /// Not `ip:port`.
    pub fn parse_address(address: &str) -> Result<SocketAddr, MetricsError> {
        parse_address(address)
    }

    /// Binds `address` (`ip:port`; port 0 picks a free one).
    ///
    /// # Errors
    /// A malformed address, or the port cannot be bound.
    pub async fn bind(address: &str) -> Result<Self, MetricsError> {
        let addr = parse_address(address)?;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| MetricsError::Bind {
                address: address.to_owned(),
                source,
            })?;
        Ok(MetricsServer { listener })
    }

    /// The bound address (with the real port when 0 was asked).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Answers requests forever: `GET /metrics` (the registry), `GET /health` (200 while the
    /// process runs), `GET /ready` (200 when every check passes, else 503 with the reasons).
    pub async fn serve(self, registry: Registry, health: Health) {
        let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            let Ok(permit) = Arc::clone(&limit).acquire_owned().await else {
                return;
            };
            let (stream, _) = match self.listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    tracing::warn!(%error, "metrics endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let registry = registry.clone();
            let health = health.clone();
            tokio::spawn(async move {
                let _ = tokio::time::timeout(IO_TIMEOUT, answer(stream, registry, health)).await;
                drop(permit);
            });
        }
    }
}

async fn answer(mut stream: TcpStream, registry: Registry, health: Health) {
    let mut buffer = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let head_end = loop {
        if let Some(end) = find_head_end(&buffer) {
            break end;
        }
        if buffer.len() >= MAX_REQUEST_BYTES {
            let _ = respond(&mut stream, 431, "text/plain", b"request too large\n").await;
            return;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]);
    let mut parts = head.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    if method != "GET" && method != "HEAD" {
        let _ = respond(&mut stream, 405, "text/plain", b"only GET\n").await;
        return;
    }
    let (status, content_type, body) = match path {
        "/metrics" => (
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            registry.render().into_bytes(),
        ),
        "/health" | "/healthz" => (200, "text/plain", b"ok\n".to_vec()),
        "/ready" | "/readyz" => {
            // Checks may probe a broker: keep them off the async worker threads.
            let readiness = tokio::task::spawn_blocking(move || health.check()).await;
            match readiness {
                Ok(r) if r.ready() => (200, "text/plain", r.report().into_bytes()),
                Ok(r) => (503, "text/plain", r.report().into_bytes()),
                Err(_) => (503, "text/plain", b"readiness check failed\n".to_vec()),
            }
        }
        _ => (
            404,
            "text/plain",
            b"not found: try /metrics, /health or /ready\n".to_vec(),
        ),
    };
    let body = if method == "HEAD" { &[][..] } else { &body[..] };
    let _ = respond(&mut stream, status, content_type, body).await;
}

fn find_head_end(buffer: &[u8]) -> Option<usize> {
    buffer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .or_else(|| {
            // Tolerate bare-LF clients (netcat by hand).
            buffer.windows(2).position(|w| w == b"\n\n")
        })
}

async fn respond(
    stream: &mut TcpStream,
    status: u16,
    content_type: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(addr: SocketAddr, request: &str) -> String {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut out = String::new();
        stream.read_to_string(&mut out).await.expect("read");
        out
    }

    #[tokio::test]
    async fn serves_metrics_health_and_readiness() {
        let registry = Registry::new();
        registry.counter("jobstream_test_total", "Test.").add(7);
        let health = Health::new();
        let server = MetricsServer::bind("127.0.0.1:0").await.expect("bind");
        let addr = server.local_addr().expect("addr");
        let task = tokio::spawn(server.serve(registry, health.clone()));

        let metrics = get(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(metrics.starts_with("HTTP/1.1 200 OK\r\n"), "{metrics}");
        assert!(metrics.contains("version=0.0.4"), "{metrics}");
        assert!(metrics.ends_with("jobstream_test_total 7\n"), "{metrics}");
        assert!(get(addr, "GET /health HTTP/1.0\r\n\r\n")
            .await
            .contains("200 OK"));

        let not_ready = get(addr, "GET /ready HTTP/1.1\r\n\r\n").await;
        assert!(not_ready.starts_with("HTTP/1.1 503"), "{not_ready}");
        health.register("mqtt", || Err("0 of 1 connections up".into()));
        let not_ready = get(addr, "GET /ready HTTP/1.1\r\n\r\n").await;
        assert!(
            not_ready.contains("mqtt not ready: 0 of 1 connections up"),
            "{not_ready}"
        );
        health.register("mqtt", || Ok(()));
        assert!(get(addr, "GET /ready HTTP/1.1\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 200"));

        assert!(get(addr, "GET /nope HTTP/1.1\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 404"));
        assert!(get(addr, "POST /metrics HTTP/1.1\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 405"));
        // Exactly the limit and no end of head: everything sent is read, so the close is clean.
        let start = "GET /metrics HTTP/1.1\r\nX: ";
        let huge = format!("{start}{}", "a".repeat(MAX_REQUEST_BYTES - start.len()));
        assert!(get(addr, &huge).await.starts_with("HTTP/1.1 431"));
        task.abort();
    }

    #[tokio::test]
    async fn a_bad_or_taken_address_is_a_clear_error() {
        let error = MetricsServer::bind("localhost").await.expect_err("no port");
        assert!(error.to_string().contains("\"localhost\""), "{error}");
        let first = MetricsServer::bind("127.0.0.1:0").await.expect("bind");
        let taken = first.local_addr().expect("addr").to_string();
        let error = MetricsServer::bind(&taken).await.expect_err("in use");
        assert!(error.to_string().contains(&taken), "{error}");
    }
}
