//! The request host (docs/http.md, "Request host"): which header or authority names it, and the
//! normalized hostname used for routing.

use std::fmt;
use std::ops::Deref;

use http::header::HOST;
use http::{Request, Version};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHost {
    /// As received, port kept: the `Host` and `X-Forwarded-Host` sent upstream and the
    /// host of the cache key, so the app never sees a host the request was not routed by.
    pub received: HostText,
    /// Lower-cased, port and trailing dot removed, IPv6 brackets kept.
    pub hostname: HostText,
}

/// Bytes kept inline: nearly every host name fits, and the access log keeps a copy.
const INLINE: usize = 62;

/// A host name or authority as text, without a heap allocation when it is short: every
/// request computes two and the access log keeps them.
#[derive(Clone)]
pub struct HostText(Repr);

#[derive(Clone)]
enum Repr {
    Inline { len: u8, buf: [u8; INLINE] },
    Heap(Box<str>),
}

impl HostText {
    pub fn new(s: &str) -> Self {
        Self::inline(s, false).unwrap_or_else(|| Self(Repr::Heap(s.into())))
    }

    /// `s` lower-cased.
    fn lowercase(s: &str) -> Self {
        Self::inline(s, true).unwrap_or_else(|| Self(Repr::Heap(s.to_ascii_lowercase().into())))
    }

    /// A copy of the whole of `s`, ASCII-lower-cased when `lower`; `None` when too long.
    fn inline(s: &str, lower: bool) -> Option<Self> {
        let bytes = s.as_bytes();
        if bytes.len() > INLINE {
            return None;
        }
        let mut buf = [0u8; INLINE];
        buf[..bytes.len()].copy_from_slice(bytes);
        if lower {
            buf[..bytes.len()].make_ascii_lowercase();
        }
        Some(Self(Repr::Inline {
            len: bytes.len() as u8,
            buf,
        }))
    }

    pub fn as_str(&self) -> &str {
        match &self.0 {
            Repr::Inline { len, buf } => {
                let bytes = &buf[..usize::from(*len)];
                debug_assert!(std::str::from_utf8(bytes).is_ok());
                // SAFETY: `inline` is the only constructor: the bytes are a copy of a whole
                // `&str`, changed at most by ASCII case mapping, which keeps UTF-8 valid. Checking again on every access was
                // 2 % of the worker's instructions per request.
                unsafe { std::str::from_utf8_unchecked(bytes) }
            }
            Repr::Heap(s) => s,
        }
    }
}

impl Deref for HostText {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq for HostText {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for HostText {}

impl PartialEq<str> for HostText {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for HostText {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl fmt::Debug for HostText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for HostText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Finds the request host. `None` is a 400: missing, duplicated, empty or unreadable.
///
/// An absolute-form target's authority (HTTP/1) and `:authority` (HTTP/2) win over the
/// `Host` header, which then only has to be there once (HTTP/1) and readable.
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
    let hostname = HostText::lowercase(hostname_of(received)?);
    Some(RequestHost {
        received: HostText::new(received),
        hostname,
    })
}

/// Normalizes a host as received; `None` when it is empty or malformed.
#[cfg(test)]
fn hostname(received: &str) -> Option<String> {
    hostname_of(received).map(str::to_ascii_lowercase)
}

/// The part of a received host that names it, not yet lower-cased.
fn hostname_of(received: &str) -> Option<&str> {
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
    Some(name)
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
    fn long_hosts_keep_every_byte() {
        let long = format!("{}.Example.com:8443", "A".repeat(80));
        let h = request_host(&req(Version::HTTP_11, "/", &[&long])).unwrap();
        assert_eq!(h.received, long.as_str());
        assert_eq!(
            h.hostname,
            format!("{}.example.com", "a".repeat(80)).as_str()
        );
        let edge = "b".repeat(INLINE);
        let h = request_host(&req(Version::HTTP_11, "/", &[&edge])).unwrap();
        assert_eq!(h.hostname, edge.as_str());
        assert_eq!(HostText::new("Ab").to_string(), "Ab");
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
        let h = request_host(&req(Version::HTTP_11, "http://u@b.com/x", &["a.com"])).unwrap();
        assert_eq!(h.received, "b.com", "userinfo is not part of the host");
    }

    #[test]
    fn http2_uses_authority_then_host() {
        let h = request_host(&req(Version::HTTP_2, "https://b.com/x", &[])).unwrap();
        assert_eq!(h.hostname, "b.com");
        let h = request_host(&req(Version::HTTP_2, "https://b.com/x", &["evil.com"])).unwrap();
        assert_eq!(
            (h.hostname.as_str(), h.received.as_str()),
            ("b.com", "b.com")
        );
        let h = request_host(&req(Version::HTTP_2, "/x", &["c.com"])).unwrap();
        assert_eq!(h.hostname, "c.com");
        assert_eq!(request_host(&req(Version::HTTP_2, "/x", &[])), None);
    }
}
