//! The request host (routing-and-proxy.md §3): which header or authority names it, and the
//! normalized hostname used for routing.

use http::header::HOST;
use http::{Request, Version};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHost {
    /// As received, port kept: for `X-Forwarded-Host`.
    pub received: String,
    /// Lower-cased, port and trailing dot removed, IPv6 brackets kept.
    pub hostname: String,
}

/// Finds the request host. `None` is a 400: missing, duplicated, empty or unreadable.
pub fn request_host<B>(req: &Request<B>) -> Option<RequestHost> {
    let mut hosts = req.headers().get_all(HOST).iter();
    let first = hosts.next();
    if hosts.next().is_some() {
        return None;
    }
    let header = match first {
        Some(v) => Some(v.to_str().ok()?),
        None => None,
    };
    let authority = req.uri().authority().map(|a| a.as_str());
    let received = if req.version() == Version::HTTP_2 {
        authority.or(header)?
    } else {
        // HTTP/1.x needs a Host even with an absolute-form target, whose authority wins.
        header?;
        authority.or(header)?
    };
    // Userinfo is not part of a host.
    let received = received.rsplit_once('@').map_or(received, |(_, h)| h);
    let hostname = hostname(received)?;
    Some(RequestHost {
        received: received.to_string(),
        hostname,
    })
}

/// Normalizes a host as received; `None` when it is empty or malformed.
pub fn hostname(received: &str) -> Option<String> {
    let name = if received.starts_with('[') {
        let end = received.find(']')?;
        let rest = &received[end + 1..];
        if !(rest.is_empty() || rest.starts_with(':')) {
            return None;
        }
        &received[..=end]
    } else {
        received.split(':').next().unwrap_or("")
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || name.bytes().any(|b| b <= b' ' || b == b'/' || b >= 0x7f) {
        return None;
    }
    Some(name.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(version: Version, uri: &str, hosts: &[&str]) -> Request<()> {
        let mut b = Request::builder().version(version).uri(uri);
        for h in hosts {
            b = b.header(HOST, *h);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn hostnames() {
        assert_eq!(hostname("Example.COM:8080").as_deref(), Some("example.com"));
        assert_eq!(hostname("example.com.").as_deref(), Some("example.com"));
        assert_eq!(hostname("[::1]:8443").as_deref(), Some("[::1]"));
        assert_eq!(hostname("[::1]").as_deref(), Some("[::1]"));
        assert_eq!(hostname("[::1]x"), None);
        assert_eq!(hostname(""), None);
        assert_eq!(hostname(":80"), None);
        assert_eq!(hostname("a b"), None);
    }

    #[test]
    fn http1_needs_exactly_one_host() {
        assert_eq!(request_host(&req(Version::HTTP_11, "/", &[])), None);
        assert_eq!(request_host(&req(Version::HTTP_10, "/", &[])), None);
        assert_eq!(
            request_host(&req(Version::HTTP_11, "/", &["a.com", "b.com"])),
            None
        );
        let h = request_host(&req(Version::HTTP_11, "/", &["A.com:81"])).unwrap();
        assert_eq!(h.received, "A.com:81");
        assert_eq!(h.hostname, "a.com");
    }

    #[test]
    fn absolute_form_authority_wins() {
        let h = request_host(&req(Version::HTTP_11, "http://b.com:8/x", &["a.com"])).unwrap();
        assert_eq!(h.hostname, "b.com");
        assert_eq!(h.received, "b.com:8");
    }

    #[test]
    fn http2_uses_authority_then_host() {
        let h = request_host(&req(Version::HTTP_2, "https://b.com/x", &[])).unwrap();
        assert_eq!(h.hostname, "b.com");
        let h = request_host(&req(Version::HTTP_2, "/x", &["c.com"])).unwrap();
        assert_eq!(h.hostname, "c.com");
        assert_eq!(request_host(&req(Version::HTTP_2, "/x", &[])), None);
    }
}
