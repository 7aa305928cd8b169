//! The access log (routing-and-proxy.md §15): one line per finished request, written when the
//! record drops, i.e. after the last body byte or when the client went away.

use std::net::SocketAddr;
use std::time::Instant;

pub struct AccessLog {
    start: Instant,
    peer: SocketAddr,
    method: http::Method,
    path: String,
    pub host: String,
    /// 0 until a response exists.
    pub status: u16,
    pub https: bool,
    pub app: String,
    /// The instance that answered, if one did.
    pub instance: Option<u32>,
    pub cache: &'static str,
    /// Where the request is counted for `/metrics` when it finishes.
    pub stats: Option<std::sync::Arc<crate::counters::Counters>>,
}

impl AccessLog {
    pub fn start(method: &http::Method, path: &str, peer: SocketAddr, tls: bool) -> Self {
        Self {
            start: Instant::now(),
            peer,
            method: method.clone(),
            path: path.to_string(),
            host: String::new(),
            status: 0,
            https: tls,
            app: String::new(),
            instance: None,
            cache: "-",
            stats: None,
        }
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        let elapsed = self.start.elapsed();
        if let Some(stats) = &self.stats {
            stats.record_request(&self.app, self.status, elapsed.as_secs_f64());
        }
        let duration_ms = elapsed.as_millis() as u64;
        tracing::info!(
            target: "tako::access",
            host = %self.host,
            method = %self.method,
            path = %self.path,
            status = self.status,
            https = self.https,
            app = %self.app,
            instance = %Blank(self.instance),
            cache = self.cache,
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
