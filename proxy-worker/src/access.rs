//! The access log (docs/cli.md, "Log"): one line per finished request, written when the record
//! drops, i.e. after the last body byte or when the client went away.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::header::HeaderValue;
use http::{Request, Uri};

use crate::host::RequestHost;

/// Everything here is shared with the request or copied without a heap allocation: one is
/// made per request.
pub struct AccessLog {
    start: Instant,
    peer: SocketAddr,
    method: http::Method,
    /// The request's target, shared with it.
    uri: Uri,
    /// `None` until the request host is known.
    pub host: Option<RequestHost>,
    /// 0 until a response exists.
    pub status: u16,
    pub https: bool,
    /// `None` until a route matched.
    pub app: Option<Arc<str>>,
    /// The instance that answered, if one did.
    pub instance: Option<u32>,
    pub cache: &'static str,
    /// The request's id (docs/http.md, "Request IDs"); empty until the pipeline gives it one.
    pub request_id: HeaderValue,
    /// Where the request is counted for `/metrics` when it finishes.
    pub stats: Option<Arc<crate::counters::Counters>>,
    /// The request's unit in the per-client table, given back with this record.
    pub client: Option<crate::client_limits::RequestSlot>,
}

impl AccessLog {
    pub fn start<B>(req: &Request<B>, peer: SocketAddr, tls: bool) -> Self {
        Self {
            start: Instant::now(),
            peer,
            method: req.method().clone(),
            uri: req.uri().clone(),
            host: None,
            status: 0,
            https: tls,
            app: None,
            instance: None,
            cache: "-",
            request_id: HeaderValue::from_static(""),
            stats: None,
            client: None,
        }
    }

    /// When the request began: a made request id takes its time from here, so an id costs
    /// no clock read of its own.
    pub fn started(&self) -> Instant {
        self.start
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        let elapsed = self.start.elapsed();
        let app = self.app.as_deref().unwrap_or("");
        if let Some(stats) = &self.stats {
            stats.record_request(app, self.status, elapsed.as_secs_f64());
        }
        let duration_ms = elapsed.as_millis() as u64;
        tracing::info!(
            target: "tako::access",
            host = %self.host.as_ref().map_or("", |h| h.hostname.as_str()),
            method = %self.method,
            path = %self.uri.path(),
            status = self.status,
            https = self.https,
            app = %app,
            instance = %Blank(self.instance),
            cache = self.cache,
            // Only visible ASCII ever gets here (request_id.rs): the text is never empty
            // for a request the pipeline saw.
            request_id = %self.request_id.to_str().unwrap_or(""),
            duration_ms,
            peer = %tako_ipc::cidr::canonical_ip(self.peer.ip()),
            "Request completed"
        );
    }
}

/// Shows nothing for `None`: the access log's `instance` is empty when no instance answered.
struct Blank(Option<u32>);

impl std::fmt::Display for Blank {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(id) => write!(f, "{id}"),
            None => Ok(()),
        }
    }
}
