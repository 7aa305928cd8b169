//! The upstream side (routing-and-proxy.md §10): a pooled HTTP/1.1 client to
//! `127.0.0.1:<port>`, hop-by-hop header removal, and how failures map to responses.

use std::time::Duration;

use http::header::{HeaderMap, HeaderName, CONNECTION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE};
use http::Request;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::ReplayBody;

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const RESPONSE_HEADER_TIMEOUT: Duration = Duration::from_secs(60);
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(4);
pub const POOL_MAX_IDLE: usize = 32;

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Removes `Connection`, every header it names, and the fixed hop-by-hop set.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
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
    for name in [
        &CONNECTION,
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &TE,
        &TRAILER,
        &TRANSFER_ENCODING,
        &UPGRADE,
    ] {
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

/// The per-worker keep-alive pool to every instance.
pub struct Upstream {
    client: Client<HttpConnector, ReplayBody>,
}

impl Default for Upstream {
    fn default() -> Self {
        Self::new()
    }
}

impl Upstream {
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        connector.enforce_http(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_max_idle_per_host(POOL_MAX_IDLE)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            // The request's own Host goes through; never one made from 127.0.0.1.
            .set_host(false)
            .build(connector);
        Self { client }
    }

    /// Sends the request and waits for the response head.
    pub async fn send(
        &self,
        req: Request<ReplayBody>,
    ) -> Result<http::Response<Incoming>, UpstreamError> {
        match tokio::time::timeout(RESPONSE_HEADER_TIMEOUT, self.client.request(req)).await {
            Err(_) => Err(UpstreamError::Timeout),
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) if e.is_connect() => Err(UpstreamError::Connect(error_chain(&e))),
            Ok(Err(e)) => Err(UpstreamError::Failed(error_chain(&e))),
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
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
