//! Effective scheme and the forwarded headers sent upstream (docs/http.md,
//! "Forwarded headers and the effective scheme").

use http::header::{Entry, HeaderMap, HeaderName, HeaderValue, FORWARDED, HOST};

use crate::conn_info::ConnInfo;

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
pub static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// The names `http` does not know that proxied requests carry all the time: the HTTP/1 loop
/// shares them instead of copying each to the heap per request.
pub static FREQUENT_NAMES: [&HeaderName; 4] = [
    &X_FORWARDED_FOR,
    &X_FORWARDED_PROTO,
    &X_FORWARDED_HOST,
    &X_REAL_IP,
];

/// Values of one header joined by `, `, as a list header reads; `None` when absent or not
/// visible ASCII.
fn joined<'a, I: Iterator<Item = &'a HeaderValue>>(values: impl Fn() -> I) -> Option<String> {
    if values().any(|v| v.to_str().is_err()) {
        return None;
    }
    let mut out: Option<String> = None;
    for v in values().filter_map(|v| v.to_str().ok()) {
        match &mut out {
            Some(o) => {
                o.push_str(", ");
                o.push_str(v);
            }
            None => out = Some(v.to_string()),
        }
    }
    out
}

/// The values of one header, as `joined` would see them, without joining them: `None` when
/// absent or when any value is not visible ASCII.
fn values<'a>(
    headers: &'a HeaderMap,
    name: &HeaderName,
) -> Option<impl Iterator<Item = &'a str> + 'a> {
    // One lookup: the values are walked twice, the map is searched once.
    let all = headers.get_all(name);
    let mut present = false;
    for v in all.iter() {
        v.to_str().ok()?;
        present = true;
    }
    present.then(move || all.into_iter().filter_map(|v| v.to_str().ok()))
}

/// Whether the joined list would be more than blanks: two values join with a comma.
fn not_blank(headers: &HeaderMap, name: &HeaderName) -> bool {
    values(headers, name).is_some_and(|mut vs| {
        let first = vs.next().unwrap_or("");
        vs.next().is_some() || !first.trim().is_empty()
    })
}

fn first_xfp_is_https(headers: &HeaderMap) -> bool {
    values(headers, &X_FORWARDED_PROTO)
        .and_then(|mut vs| vs.next())
        .and_then(|v| v.split(',').next())
        .is_some_and(|s| s.trim().eq_ignore_ascii_case("https"))
}

/// The `proto` parameter of one `Forwarded` element, quotes stripped.
fn forwarded_proto(element: &str) -> Option<&str> {
    element.split(';').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        if k.trim().eq_ignore_ascii_case("proto") {
            Some(v.trim().trim_matches('"'))
        } else {
            None
        }
    })
}

fn first_forwarded_is_https(headers: &HeaderMap) -> bool {
    values(headers, &FORWARDED)
        .and_then(|mut vs| vs.next())
        .and_then(|v| v.split(',').next().and_then(forwarded_proto))
        .is_some_and(|p| p.eq_ignore_ascii_case("https"))
}

fn has_proto_info(headers: &HeaderMap) -> bool {
    let xfp = not_blank(headers, &X_FORWARDED_PROTO);
    let fwd = values(headers, &FORWARDED)
        .is_some_and(|mut vs| vs.any(|v| v.split(',').any(|e| forwarded_proto(e).is_some())));
    xfp || fwd
}

/// A hostname that gets self-signed certificates and private-host inference.
pub fn is_private_host(hostname: &str) -> bool {
    const SUFFIXES: [&str; 5] = [".local", ".test", ".invalid", ".example", ".home.arpa"];
    hostname == "localhost"
        || hostname.ends_with(".localhost")
        || (!hostname.is_empty() && !hostname.contains('.') && !hostname.starts_with('['))
        || hostname.parse::<std::net::Ipv4Addr>().is_ok()
        || SUFFIXES.iter().any(|s| hostname.ends_with(s))
}

/// Whether the effective scheme is `https`.
pub fn effective_https(headers: &HeaderMap, tls: bool, trusted: bool, hostname: &str) -> bool {
    if tls {
        return true;
    }
    if !trusted {
        return false;
    }
    if first_xfp_is_https(headers) || first_forwarded_is_https(headers) {
        return true;
    }
    let xff_present = not_blank(headers, &X_FORWARDED_FOR);
    is_private_host(hostname) && xff_present && !has_proto_info(headers)
}

/// The client a trusted forwarder speaks for: the rightmost `X-Forwarded-For` entry that is
/// not itself a trusted proxy (entries to its left were written by the client and prove
/// nothing). `None` when the header is absent, or its last entry is not an address: the
/// request then counts against the forwarder (docs/limits.md, "Per-client limits").
pub fn client_ip(
    headers: &HeaderMap,
    trusted: &[tako_ipc::cidr::Cidr],
) -> Option<std::net::IpAddr> {
    let mut found = None;
    // From the right, without collecting: a trusted proxy's every request has this header.
    'entries: for value in headers.get_all(&X_FORWARDED_FOR).iter().rev() {
        let Ok(value) = value.to_str() else {
            break;
        };
        for entry in value.rsplit(',') {
            let Ok(ip) = entry.trim().parse::<std::net::IpAddr>() else {
                break 'entries;
            };
            found = Some(ip);
            if !tako_ipc::cidr::any_contains(trusted, ip) {
                break 'entries;
            }
        }
    }
    found
}

/// The host a request was routed by cannot be a header value. Not reachable with a host
/// that came from a parsed request, but checked rather than assumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the request host is not a valid header value")]
pub struct UnsendableHost;

/// Rewrites `Host` and the forwarded headers of a request about to go upstream.
/// `routed_host` is the host the request was routed by, as received (port kept).
///
/// `Host` becomes `routed_host` whatever the client sent (RFC 9112 §3.2.2: an absolute-form
/// target's authority replaces `Host`; in HTTP/2 `:authority` wins over `host`): the app and
/// the cache key must agree on the host, or one request could have a page made for one host
/// stored under another.
///
/// Each of these names is looked up once (an entry), not once to read and again to write:
/// hashing a name `http` does not know costs a pass over its bytes.
pub fn apply(
    headers: &mut HeaderMap,
    conn: &ConnInfo,
    trusted: bool,
    https: bool,
    routed_host: &str,
) -> Result<(), UnsendableHost> {
    // Usually the Host header already says it: its value is kept and shared, not copied.
    let host = match headers.entry(HOST) {
        Entry::Occupied(mut given) => {
            if given.get().as_bytes() != routed_host.as_bytes() {
                // `insert` also drops any further values.
                given.insert(HeaderValue::from_str(routed_host).map_err(|_| UnsendableHost)?);
            }
            given.get().clone()
        }
        Entry::Vacant(slot) => slot
            .insert(HeaderValue::from_str(routed_host).map_err(|_| UnsendableHost)?)
            .clone(),
    };
    match headers.entry(&X_FORWARDED_FOR) {
        Entry::Occupied(mut list) => {
            let prev = if trusted {
                joined(|| list.iter()).filter(|prev| !prev.trim().is_empty())
            } else {
                None
            };
            match prev {
                Some(prev) => {
                    let peer = conn.peer_value.to_str().unwrap_or("");
                    // Only reachable with a value that was not valid in the first place:
                    // dropped rather than forwarded unchecked.
                    match HeaderValue::from_str(&format!("{prev}, {peer}")) {
                        Ok(v) => {
                            list.insert(v);
                        }
                        Err(_) => {
                            list.remove();
                        }
                    }
                }
                None => {
                    list.insert(conn.peer_value.clone());
                }
            }
        }
        // The common case: the value formatted once for the connection.
        Entry::Vacant(slot) => {
            slot.insert(conn.peer_value.clone());
        }
    }
    let proto = HeaderValue::from_static(if https { "https" } else { "http" });
    headers.insert(X_FORWARDED_PROTO.clone(), proto);
    match headers.entry(&X_FORWARDED_HOST) {
        Entry::Occupied(_) if trusted => {}
        Entry::Occupied(mut given) => {
            given.insert(host);
        }
        Entry::Vacant(slot) => {
            slot.insert(host);
        }
    }
    if !trusted {
        headers.remove(&FORWARDED);
        headers.remove(&X_REAL_IP);
        headers.remove(&X_FORWARDED_PORT);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(ip: &str) -> ConnInfo {
        ConnInfo::new(std::net::SocketAddr::new(ip.parse().unwrap(), 40000), false)
    }

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        m
    }

    #[test]
    fn client_ip_is_the_last_untrusted_entry() {
        let trusted: Vec<tako_ipc::cidr::Cidr> = vec!["10.0.0.0/8".parse().unwrap()];
        let ip = |v: &[(&str, &str)]| client_ip(&h(v), &trusted).map(|a| a.to_string());
        assert_eq!(ip(&[]), None);
        assert_eq!(
            ip(&[("x-forwarded-for", "192.0.2.9")]).as_deref(),
            Some("192.0.2.9")
        );
        // The client wrote the first entry; the second came from a trusted proxy.
        let chain = [("x-forwarded-for", "1.1.1.1, 192.0.2.9, 10.0.0.5")];
        assert_eq!(ip(&chain).as_deref(), Some("192.0.2.9"));
        let split = [
            ("x-forwarded-for", "192.0.2.9"),
            ("x-forwarded-for", "10.0.0.5"),
        ];
        assert_eq!(ip(&split).as_deref(), Some("192.0.2.9"));
        assert_eq!(ip(&[("x-forwarded-for", "junk")]), None);
        assert_eq!(
            ip(&[("x-forwarded-for", "junk, 10.0.0.5")]).as_deref(),
            Some("10.0.0.5")
        );
        assert_eq!(
            ip(&[("x-forwarded-for", "2001:db8::1")]).as_deref(),
            Some("2001:db8::1")
        );
    }

    #[test]
    fn tls_is_always_https() {
        assert!(effective_https(&h(&[]), true, false, "example.com"));
    }

    #[test]
    fn untrusted_peers_cannot_claim_https() {
        let m = h(&[("x-forwarded-proto", "https"), ("forwarded", "proto=https")]);
        assert!(!effective_https(&m, false, false, "example.com"));
    }

    #[test]
    fn trusted_xfp_first_value() {
        assert!(effective_https(
            &h(&[("x-forwarded-proto", " HTTPS , http")]),
            false,
            true,
            "e.com"
        ));
        assert!(!effective_https(
            &h(&[("x-forwarded-proto", "http, https")]),
            false,
            true,
            "e.com"
        ));
    }

    #[test]
    fn trusted_forwarded_first_element() {
        let yes = h(&[("forwarded", "for=1.2.3.4;Proto=\"HTTPS\", proto=http")]);
        assert!(effective_https(&yes, false, true, "e.com"));
        let no = h(&[("forwarded", "proto=http, proto=https")]);
        assert!(!effective_https(&no, false, true, "e.com"));
    }

    #[test]
    fn private_host_inference() {
        let xff = h(&[("x-forwarded-for", "10.0.0.1")]);
        assert!(effective_https(&xff, false, true, "app.localhost"));
        assert!(effective_https(&xff, false, true, "myapp"));
        assert!(effective_https(&xff, false, true, "192.168.1.2"));
        assert!(effective_https(&xff, false, true, "nas.home.arpa"));
        assert!(!effective_https(&xff, false, true, "example.com"));
        assert!(!effective_https(&xff, false, false, "app.localhost"));
        // Blank XFF, or explicit proto info, disables the inference.
        let blank = h(&[("x-forwarded-for", "  ")]);
        assert!(!effective_https(&blank, false, true, "app.test"));
        let with_proto = h(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-proto", "http"),
        ]);
        assert!(!effective_https(&with_proto, false, true, "app.test"));
        let fwd_proto = h(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("forwarded", "for=1.2.3.4, proto=http"),
        ]);
        assert!(!effective_https(&fwd_proto, false, true, "app.test"));
        let blank_proto = h(&[("x-forwarded-for", "1.2.3.4"), ("x-forwarded-proto", " ")]);
        assert!(effective_https(&blank_proto, false, true, "app.test"));
    }

    #[test]
    fn private_hosts() {
        for p in [
            "localhost",
            "a.localhost",
            "single",
            "10.1.2.3",
            "x.local",
            "x.test",
            "x.invalid",
            "x.example",
            "x.home.arpa",
        ] {
            assert!(is_private_host(p), "{p}");
        }
        for p in [
            "example.com",
            "localhost.com",
            "[::1]",
            "a.arpa",
            "x.example.com",
            "",
        ] {
            assert!(!is_private_host(p), "{p}");
        }
    }

    #[test]
    fn untrusted_headers_are_replaced_or_removed() {
        let mut m = h(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-host", "evil.com"),
            ("x-forwarded-proto", "https"),
            ("forwarded", "for=6.6.6.6"),
            ("x-real-ip", "6.6.6.6"),
            ("x-forwarded-port", "443"),
        ]);
        apply(
            &mut m,
            &conn("203.0.113.5"),
            false,
            false,
            "Example.com:8080",
        )
        .unwrap();
        assert_eq!(m["x-forwarded-for"], "203.0.113.5");
        assert_eq!(m["x-forwarded-proto"], "http");
        assert_eq!(m["x-forwarded-host"], "Example.com:8080");
        assert!(!m.contains_key("forwarded"));
        assert!(!m.contains_key("x-real-ip"));
        assert!(!m.contains_key("x-forwarded-port"));
    }

    #[test]
    fn trusted_headers_are_extended_or_kept() {
        let mut m = h(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "2.2.2.2"),
            ("x-forwarded-host", "orig.com"),
            ("forwarded", "for=1.1.1.1"),
            ("x-real-ip", "1.1.1.1"),
            ("x-forwarded-port", "443"),
        ]);
        apply(&mut m, &conn("::ffff:127.0.0.1"), true, true, "e.com").unwrap();
        assert_eq!(m["x-forwarded-for"], "1.1.1.1, 2.2.2.2, 127.0.0.1");
        assert_eq!(m.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(m["x-forwarded-proto"], "https");
        assert_eq!(m["x-forwarded-host"], "orig.com");
        assert_eq!(m["forwarded"], "for=1.1.1.1");
        assert_eq!(m["x-real-ip"], "1.1.1.1");
        assert_eq!(m["x-forwarded-port"], "443");
        let mut m = HeaderMap::new();
        apply(&mut m, &conn("::1"), true, false, "e.com").unwrap();
        assert_eq!(m["host"], "e.com");
        assert_eq!(m["x-forwarded-for"], "::1");
        assert_eq!(m["x-forwarded-host"], "e.com");
        assert_eq!(m["x-forwarded-proto"], "http");
    }

    #[test]
    fn host_is_the_routed_host_whatever_the_client_sent() {
        for (given, trusted) in [
            (&["evil.example"][..], false),
            (&["evil.example"][..], true),
            (&["evil.example", "other.example"][..], false),
            (&[][..], false),
            (&["B.com:8"][..], false),
        ] {
            let mut m = HeaderMap::new();
            for g in given {
                m.append(HOST, HeaderValue::from_str(g).unwrap());
            }
            apply(&mut m, &conn("203.0.113.5"), trusted, true, "b.com:8").unwrap();
            assert_eq!(m.get_all(HOST).iter().count(), 1, "{given:?}");
            assert_eq!(m[HOST], "b.com:8", "{given:?}");
            assert_eq!(m["x-forwarded-host"], "b.com:8", "{given:?}");
        }
        // A trusted proxy's X-Forwarded-Host is its own account of the original host.
        let mut m = h(&[("host", "evil.example"), ("x-forwarded-host", "orig.com")]);
        apply(&mut m, &conn("10.0.0.1"), true, true, "b.com").unwrap();
        assert_eq!(m[HOST], "b.com");
        assert_eq!(m["x-forwarded-host"], "orig.com");
        for bad in ["a\nb", "a\u{7f}b"] {
            assert_eq!(
                apply(&mut HeaderMap::new(), &conn("10.0.0.1"), false, true, bad),
                Err(UnsendableHost)
            );
        }
    }
}
