//! The upstream side (docs/http.md, "The upstream exchange"): HTTP/1.1 to `127.0.0.1:<port>`
//! over pooled keep-alive connections, hop-by-hop header removal, and how failures map to
//! responses.
//!
//! The client is our own rather than hyper's pooled one: the request's task writes the head
//! and reads the response on the connection itself, so a proxied request costs no extra
//! task, channel or wakeup, and the request head is written straight from the header map.

mod body;
mod exchange;
mod head;
mod pool;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, CONNECTION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE};
use http::{Method, Response};
use http_body::Body as HttpBody;

pub use body::{Upgraded, UpstreamBody};

use crate::BoxError;
use crate::LazyTimer;

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const RESPONSE_HEADER_TIMEOUT: Duration = Duration::from_secs(60);

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Removes `Connection`, every header it names, and the fixed hop-by-hop set.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let hop_by_hop = [
        &CONNECTION,
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &TE,
        &TRAILER,
        &TRANSFER_ENCODING,
        &UPGRADE,
    ];
    // Usually there is none: one pass over the names instead of a lookup for each.
    if !headers.keys().any(|name| hop_by_hop.contains(&name)) {
        return;
    }
    if headers.contains_key(CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in hop_by_hop {
        headers.remove(name);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// Nothing was sent: refused, reset or timed out while connecting. Safe to retry.
    #[error("connecting to the instance failed: {0}")]
    Connect(String),
    #[error("no response headers within {RESPONSE_HEADER_TIMEOUT:?}")]
    Timeout,
    #[error("upstream request failed: {0}")]
    Failed(String),
}

/// What goes to an instance: the request line's parts and the headers to send as they are.
pub struct Outgoing<'a, B> {
    pub method: &'a Method,
    /// Origin-form target: path and query.
    pub target: &'a str,
    pub headers: &'a HeaderMap,
    pub body: B,
}

/// A request body the client can send: its errors are the client's (a 400, not a 502).
pub trait OutgoingBody: HttpBody<Data = Bytes, Error: Into<BoxError>> + Unpin + Send {}
impl<B: HttpBody<Data = Bytes, Error: Into<BoxError>> + Unpin + Send> OutgoingBody for B {}

/// The per-worker keep-alive pool to every instance.
pub struct Upstream {
    pool: Arc<pool::Pool>,
}

impl Upstream {
    /// Keeps at most `max_idle_per_port` idle connections to one instance.
    pub fn new(max_idle_per_port: usize) -> Self {
        Self {
            pool: Arc::new(pool::Pool::new(max_idle_per_port)),
        }
    }

    /// Sends the request to `127.0.0.1:port` and waits for the response head, for
    /// [`RESPONSE_HEADER_TIMEOUT`] from `sent_at` (the caller's clock reading, reused),
    /// timed by the connection's `timer`.
    pub async fn send<B: OutgoingBody>(
        &self,
        port: u16,
        req: Outgoing<'_, B>,
        sent_at: std::time::Instant,
        timer: &mut LazyTimer,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        let deadline = tokio::time::Instant::from_std(sent_at) + RESPONSE_HEADER_TIMEOUT;
        let exchange = exchange::send(&self.pool, port, req);
        tokio::pin!(exchange);
        std::future::poll_fn(|cx| {
            if let Poll::Ready(result) = exchange.as_mut().poll(cx) {
                return Poll::Ready(result);
            }
            timer
                .poll_expired(cx, deadline)
                .map(|()| Err(UpstreamError::Timeout))
        })
        .await
    }
}

/// An instance's answer as the client reads it: response head, body framing and, when
/// chunked, the chunk decoder. For fuzzing; returns whether a head was accepted.
pub fn fuzz_response(data: &[u8]) -> bool {
    let mut buf = bytes::BytesMut::from(data);
    let Ok(Some(head)) = head::parse_response(&mut buf) else {
        return false;
    };
    if let Ok((head::Framing::Chunked, _)) = head::response_framing(false, &head) {
        let mut decoder = crate::chunked::ChunkedDecoder::new();
        while let Ok(crate::chunked::Step::Data(_)) = decoder.step(&mut buf) {}
    }
    true
}

#[cfg(test)]
mod hop_by_hop_tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn hop_by_hop_headers_go_including_named_ones() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "close, X-Secret"),
            ("connection", "x-other"),
            ("x-secret", "1"),
            ("x-other", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("trailer", "x-t"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("x-keep", "yes"),
            ("content-length", "3"),
        ] {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, vec!["x-keep", "content-length"]);
    }
}
