//! The primary key (scheme, host as received, request-target) and `Vary` variants
//! (docs/http.md, "Response cache").

use std::borrow::Cow;

use http::header::{HeaderMap, HeaderName, ACCEPT_ENCODING, VARY};

use crate::compress::{self, Coding};

/// The host as received, lower-cased, trailing dot of the name removed, port kept; borrowed
/// when it is already that (the usual case: no copy per request).
pub fn normalize_host(received: &str) -> Cow<'_, str> {
    let (name, port) = if received.starts_with('[') {
        match received.find(']') {
            Some(end) => received.split_at(end + 1),
            None => (received, ""),
        }
    } else {
        match received.find(':') {
            Some(i) => received.split_at(i),
            None => (received, ""),
        }
    };
    let dotless = name.strip_suffix('.');
    if dotless.is_none() && !name.bytes().any(|b| b.is_ascii_uppercase()) {
        return Cow::Borrowed(received);
    }
    let name = dotless.unwrap_or(name);
    let mut out = name.to_ascii_lowercase();
    out.push_str(port);
    Cow::Owned(out)
}

/// `scheme://host/target`: host already normalized, target the origin-form bytes received.
pub fn primary_key(https: bool, host: &str, target: &str) -> String {
    let scheme = if https { "https://" } else { "http://" };
    // Built by hand: `format!` machinery showed up in the per-request profile.
    let mut key = String::with_capacity(scheme.len() + host.len() + target.len());
    key.push_str(scheme);
    key.push_str(host);
    key.push_str(target);
    key
}

/// What a response's `Vary` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VarySpec {
    Names(Vec<HeaderName>),
    /// `Vary: *`, or a member that is not a header name: never stored.
    Uncacheable,
}

pub fn vary_spec(resp: &HeaderMap) -> VarySpec {
    let mut names: Vec<HeaderName> = Vec::new();
    for line in resp.get_all(VARY) {
        let Ok(line) = line.to_str() else {
            return VarySpec::Uncacheable;
        };
        for member in line.split(',').map(str::trim).filter(|m| !m.is_empty()) {
            if member == "*" {
                return VarySpec::Uncacheable;
            }
            match HeaderName::from_bytes(member.as_bytes()) {
                Ok(n) if !names.contains(&n) => names.push(n),
                Ok(_) => {}
                Err(_) => return VarySpec::Uncacheable,
            }
        }
    }
    VarySpec::Names(names)
}

/// The request header values a stored variant was made for. When the worker compressed the
/// response (its `Vary: Accept-Encoding` is ours, docs/http.md "Compression"), the variant is
/// keyed on the coding a request would get instead of its `Accept-Encoding` bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VaryRecord(Vec<(HeaderName, Option<Vec<u8>>)>, Option<Coding>);

impl VaryRecord {
    pub fn record(names: &[HeaderName], req: &HeaderMap, ours: Option<Coding>) -> Self {
        VaryRecord(
            names
                .iter()
                .filter(|n| ours.is_none() || **n != ACCEPT_ENCODING)
                .map(|n| (n.clone(), normalized(req, n)))
                .collect(),
            ours,
        )
    }

    pub fn matches(&self, req: &HeaderMap) -> bool {
        self.0.iter().all(|(n, v)| normalized(req, n) == *v)
            && self.1.is_none_or(|c| compress::coding_for(req) == c)
    }

    pub fn size(&self) -> usize {
        self.0
            .iter()
            .map(|(n, v)| n.as_str().len() + v.as_ref().map_or(0, Vec::len))
            .sum()
    }
}

/// Every line of the header joined by `, `, trimmed, runs of whitespace collapsed to one
/// space. `None` when absent, which differs from present and empty.
fn normalized(req: &HeaderMap, name: &HeaderName) -> Option<Vec<u8>> {
    let mut lines = req.get_all(name).iter().peekable();
    lines.peek()?;
    let mut joined = Vec::new();
    for (i, l) in lines.enumerate() {
        if i > 0 {
            joined.extend_from_slice(b", ");
        }
        joined.extend_from_slice(l.as_bytes());
    }
    let mut out = Vec::with_capacity(joined.len());
    let mut pending_space = false;
    for b in joined {
        if b == b' ' || b == b'\t' {
            pending_space = !out.is_empty();
        } else {
            if pending_space {
                out.push(b' ');
                pending_space = false;
            }
            out.push(b);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn hosts_normalize_keeping_the_port() {
        assert_eq!(normalize_host("Example.COM.:8080"), "example.com:8080");
        assert_eq!(normalize_host("example.com."), "example.com");
        assert_eq!(normalize_host("[::1]:443"), "[::1]:443");
        assert_eq!(primary_key(true, "a.com", "/x?y=1"), "https://a.com/x?y=1");
    }

    #[test]
    fn vary_star_and_names() {
        assert_eq!(vary_spec(&headers(&[("vary", "*")])), VarySpec::Uncacheable);
        assert_eq!(
            vary_spec(&headers(&[("vary", "Accept, x-a"), ("vary", "accept , *")])),
            VarySpec::Uncacheable
        );
        assert_eq!(
            vary_spec(&headers(&[("vary", "Accept, ,x-a"), ("vary", "accept")])),
            VarySpec::Names(vec![
                HeaderName::from_static("accept"),
                HeaderName::from_static("x-a")
            ])
        );
        assert_eq!(vary_spec(&HeaderMap::new()), VarySpec::Names(vec![]));
    }

    #[test]
    fn variants_compare_normalized_values() {
        let names = [HeaderName::from_static("accept-language")];
        let rec = VaryRecord::record(&names, &headers(&[("accept-language", " en,   fr ")]), None);
        assert!(rec.matches(&headers(&[("accept-language", "en, fr")])));
        assert!(rec.matches(&headers(&[
            ("accept-language", "en"),
            ("accept-language", "fr")
        ])));
        assert!(!rec.matches(&headers(&[("accept-language", "en,fr")])));
        assert!(!rec.matches(&HeaderMap::new()));
        let empty = VaryRecord::record(&names, &headers(&[("accept-language", "")]), None);
        assert!(
            !empty.matches(&HeaderMap::new()),
            "missing differs from empty"
        );
        let missing = VaryRecord::record(&names, &HeaderMap::new(), None);
        assert!(missing.matches(&HeaderMap::new()));
    }

    #[test]
    fn our_accept_encoding_variants_compare_codings() {
        let names = [
            HeaderName::from_static("accept-language"),
            HeaderName::from_static("accept-encoding"),
        ];
        let req = headers(&[("accept-language", "en"), ("accept-encoding", "gzip, br")]);
        let br = VaryRecord::record(&names, &req, Some(Coding::Brotli));
        // Another spelling that gets br shares the variant; one that does not never gets it.
        assert!(br.matches(&headers(&[
            ("accept-language", "en"),
            ("accept-encoding", "br")
        ])));
        assert!(!br.matches(&headers(&[
            ("accept-language", "en"),
            ("accept-encoding", "gzip")
        ])));
        assert!(!br.matches(&headers(&[("accept-language", "en")])));
        assert!(!br.matches(&headers(&[
            ("accept-language", "fr"),
            ("accept-encoding", "br")
        ])));
        let plain = VaryRecord::record(
            &names,
            &headers(&[("accept-language", "en")]),
            Some(Coding::Identity),
        );
        assert!(plain.matches(&headers(&[
            ("accept-language", "en"),
            ("accept-encoding", "deflate")
        ])));
        assert!(plain.matches(&headers(&[
            ("accept-language", "en"),
            ("accept-encoding", "br"),
            ("range", "bytes=0-1")
        ])));
        // The app's own Vary: the header's bytes.
        let theirs = VaryRecord::record(&names, &req, None);
        assert!(!theirs.matches(&headers(&[
            ("accept-language", "en"),
            ("accept-encoding", "br")
        ])));
        assert!(theirs.matches(&req));
    }
}
