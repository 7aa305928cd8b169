//! Which responses are worth compressing (docs/http.md, "Compression"): a pure function of the
//! status and the headers, checked cheapest first so the usual small answer costs one lookup.

use http::header::{
    HeaderMap, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE,
};
use http::StatusCode;

/// Bodies shorter than this are sent as they are: the coding's framing and a round of the
/// encoder cost more than the bytes saved.
pub const MIN_LENGTH: u64 = 1024;

/// Whether a response may be compressed: it has a body (no 1xx, 204, 304) that is the whole
/// representation (no 206 or `Content-Range`), is not encoded already, does not forbid
/// transformation, is at least [`MIN_LENGTH`] long when its length is known, and has a type
/// that compresses.
pub fn eligible(status: StatusCode, headers: &HeaderMap) -> bool {
    if status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::PARTIAL_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return false;
    }
    if let Some(len) = headers.get(CONTENT_LENGTH) {
        // An unreadable length is the framing's problem, not ours: leave the body alone.
        match len.to_str().ok().and_then(|v| v.trim().parse::<u64>().ok()) {
            Some(n) if n >= MIN_LENGTH => {}
            _ => return false,
        }
    }
    let compressible = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(compressible_type);
    compressible
        && !headers.contains_key(CONTENT_ENCODING)
        && !headers.contains_key(CONTENT_RANGE)
        && !no_transform(headers)
}

/// Text, JSON, JavaScript, XML, SVG and wasm; never an event stream, which must reach the
/// client event by event.
pub fn compressible_type(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    let Some((top, sub)) = essence.split_once('/') else {
        return false;
    };
    let sub = sub.to_ascii_lowercase();
    if top.eq_ignore_ascii_case("text") {
        return sub != "event-stream";
    }
    if top.eq_ignore_ascii_case("image") {
        return sub == "svg+xml";
    }
    if !top.eq_ignore_ascii_case("application") {
        return false;
    }
    matches!(
        sub.as_str(),
        "json" | "javascript" | "x-javascript" | "ecmascript" | "xml" | "wasm" | "xhtml+xml"
    ) || sub.ends_with("+json")
        || sub.ends_with("+xml")
}

/// `Cache-Control: no-transform` on any line (RFC 9111 §5.2.2.6).
fn no_transform(headers: &HeaderMap) -> bool {
    headers
        .get_all(CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|d| d.trim().eq_ignore_ascii_case("no-transform"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::HeaderName;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        h
    }

    const JSON: (&str, &str) = ("content-type", "application/json");

    #[test]
    fn types_that_compress() {
        for t in [
            "text/html; charset=utf-8",
            "text/plain",
            "TEXT/CSS",
            "application/json",
            "application/problem+json",
            "application/javascript; charset=utf-8",
            "application/xml",
            "application/atom+xml",
            "image/svg+xml",
            "application/wasm",
        ] {
            assert!(compressible_type(t), "{t}");
        }
        for t in [
            "text/event-stream",
            "text/event-stream; charset=utf-8",
            "image/png",
            "application/octet-stream",
            "application/zip",
            "video/mp4",
            "font/woff2",
            "json",
            "",
        ] {
            assert!(!compressible_type(t), "{t}");
        }
    }

    #[test]
    fn the_not_when_rules() {
        let ok = StatusCode::OK;
        assert!(eligible(ok, &headers(&[JSON, ("content-length", "1024")])));
        assert!(eligible(ok, &headers(&[JSON])), "length unknown: streamed");
        assert!(eligible(StatusCode::NOT_FOUND, &headers(&[JSON])));
        assert!(!eligible(ok, &headers(&[JSON, ("content-length", "1023")])));
        assert!(!eligible(ok, &headers(&[JSON, ("content-length", "x")])));
        assert!(
            !eligible(ok, &headers(&[("content-length", "5000")])),
            "no type"
        );
        assert!(!eligible(
            ok,
            &headers(&[JSON, ("content-encoding", "gzip")])
        ));
        assert!(!eligible(
            ok,
            &headers(&[JSON, ("content-range", "bytes 0-9/20")])
        ));
        for cc in [
            "no-transform",
            "public, No-Transform",
            "max-age=5,no-transform",
        ] {
            assert!(
                !eligible(ok, &headers(&[JSON, ("cache-control", cc)])),
                "{cc}"
            );
        }
        assert!(eligible(
            ok,
            &headers(&[JSON, ("cache-control", "no-store")])
        ));
        for status in [101, 204, 206, 304] {
            let s = StatusCode::from_u16(status).unwrap();
            assert!(!eligible(s, &headers(&[JSON])), "{status}");
        }
        assert!(!eligible(
            ok,
            &headers(&[("content-type", "text/event-stream")])
        ));
    }
}
