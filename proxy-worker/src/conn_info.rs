//! What the pipeline knows about the connection a request came on.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

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
        let peer_value = match canonical_ip(peer.ip()) {
            IpAddr::V4(ip) => ipv4_value(ip),
            // An IP address always makes a valid header value.
            ip => HeaderValue::from_str(&ip.to_string())
                .unwrap_or_else(|_| HeaderValue::from_static("unknown")),
        };
        Self {
            peer,
            tls,
            peer_value,
            client: None,
        }
    }
}

/// `a.b.c.d` written out by hand: `to_string` through the formatting machinery was 3 % of a
/// new connection's instructions (bench/cost.sh, MODE=close).
fn ipv4_value(ip: Ipv4Addr) -> HeaderValue {
    let mut text = [0u8; 15];
    let mut len = 0;
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            text[len] = b'.';
            len += 1;
        }
        if octet >= 100 {
            text[len] = b'0' + octet / 100;
            len += 1;
        }
        if octet >= 10 {
            text[len] = b'0' + octet / 10 % 10;
            len += 1;
        }
        text[len] = b'0' + octet % 10;
        len += 1;
    }
    HeaderValue::from_bytes(&text[..len]).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peer_value_is_the_address_as_text() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.0.100.9",
            "192.168.1.20",
            "255.255.255.255",
        ] {
            let peer = SocketAddr::new(ip.parse().unwrap(), 80);
            assert_eq!(ConnInfo::new(peer, false).peer_value, ip);
        }
        let mapped = SocketAddr::new("::ffff:10.1.2.3".parse().unwrap(), 80);
        assert_eq!(ConnInfo::new(mapped, false).peer_value, "10.1.2.3");
        let v6 = SocketAddr::new("2001:db8::1".parse().unwrap(), 80);
        assert_eq!(ConnInfo::new(v6, false).peer_value, "2001:db8::1");
    }
}
