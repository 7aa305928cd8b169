//! What the pipeline knows about the connection a request came on.

use std::net::SocketAddr;

use http::header::HeaderValue;
use tako_ipc::cidr::canonical_ip;

#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub tls: bool,
    /// The peer's address as `X-Forwarded-For` names it: formatted once per connection.
    pub peer_value: HeaderValue,
    /// Where the connection is counted in the per-client table (docs/limits.md,
    /// "Per-client limits"): its requests count there too, without a lookup.
    pub client: Option<tako_ipc::client_table::Pinned>,
}

impl ConnInfo {
    pub fn new(peer: SocketAddr, tls: bool) -> Self {
        // An IP address always makes a valid header value.
        let peer_value = HeaderValue::from_str(&canonical_ip(peer.ip()).to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        Self {
            peer,
            tls,
            peer_value,
            client: None,
        }
    }
}
