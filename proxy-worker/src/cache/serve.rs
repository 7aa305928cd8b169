//! Responses made from a stored entry (docs/http.md, "Response cache"): `Age`, `Cache-Status`,
//! HEAD, conditional requests and byte ranges.

use std::time::Instant;

use bytes::Bytes;
use http::header::{
    HeaderMap, HeaderName, HeaderValue, AGE, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_LOCATION,
    CONTENT_RANGE, DATE, ETAG, EXPIRES, IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, LAST_MODIFIED,
    RANGE, VARY,
};
use http::{Response, StatusCode};

use super::store::Entry;
use crate::body::Body;
use crate::responses::{empty, full};
use tako_http1::date;

pub static CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// Appends our member after any `Cache-Status` the app sent, as one field line so that
/// readers that take the first line still see the whole list.
pub fn append_cache_status(headers: &mut HeaderMap, ours: &str) {
    if !headers.contains_key(&CACHE_STATUS) {
        if let Ok(v) = HeaderValue::from_str(ours) {
            headers.insert(&CACHE_STATUS, v);
        }
        return;
    }
    let mut parts: Vec<String> = headers
        .get_all(&CACHE_STATUS)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::to_string)
        .collect();
    parts.push(ours.to_string());
    if let Ok(v) = HeaderValue::from_str(&parts.join(", ")) {
        headers.insert(&CACHE_STATUS, v);
    }
}

/// Appends our member for a forwarded request; the common values need no allocation.
pub fn append_forward_status(headers: &mut HeaderMap, label: &'static str, stored: bool) {
    let fixed = match (label, stored) {
        ("fwd=uri-miss", false) => Some("tako; fwd=uri-miss"),
        ("fwd=uri-miss", true) => Some("tako; fwd=uri-miss; stored"),
        ("fwd=method", false) => Some("tako; fwd=method"),
        ("fwd=bypass", false) => Some("tako; fwd=bypass"),
        _ => None,
    };
    match fixed {
        Some(value) if !headers.contains_key(&CACHE_STATUS) => {
            headers.insert(&CACHE_STATUS, HeaderValue::from_static(value));
        }
        Some(value) => append_cache_status(headers, value),
        None if stored => append_cache_status(headers, &format!("tako; {label}; stored")),
        None => append_cache_status(headers, &format!("tako; {label}")),
    }
}

/// Builds the answer to a hit.
pub fn hit(
    entry: &Entry,
    req: &HeaderMap,
    head: bool,
    collapsed: bool,
    now: Instant,
) -> Response<Body> {
    let ttl = entry.ttl(now).as_secs();
    let status_member = if collapsed {
        format!("tako; hit; collapsed; ttl={ttl}")
    } else {
        format!("tako; hit; ttl={ttl}")
    };
    let mut headers = entry.headers.clone();
    headers.insert(AGE, HeaderValue::from(entry.age(now).as_secs()));
    append_cache_status(&mut headers, &status_member);

    if entry.status.is_success() && not_modified(entry, req) {
        let mut out = HeaderMap::new();
        for name in [
            &ETAG,
            &LAST_MODIFIED,
            &CACHE_CONTROL,
            &EXPIRES,
            &VARY,
            &CONTENT_LOCATION,
            &DATE,
            &AGE,
            &CACHE_STATUS,
        ] {
            for v in headers.get_all(name) {
                out.append(name.clone(), v.clone());
            }
        }
        return build(StatusCode::NOT_MODIFIED, out, empty());
    }

    let len = entry.body.len() as u64;
    if !head && entry.status == StatusCode::OK {
        match range(entry, req, len) {
            RangeAnswer::Full => {}
            RangeAnswer::Part(first, last) => {
                headers.insert(CONTENT_LENGTH, HeaderValue::from(last - first + 1));
                if let Ok(v) = HeaderValue::from_str(&format!("bytes {first}-{last}/{len}")) {
                    headers.insert(CONTENT_RANGE, v);
                }
                let part = entry.body.slice(first as usize..=last as usize);
                return build(StatusCode::PARTIAL_CONTENT, headers, full(part));
            }
            RangeAnswer::Unsatisfiable => {
                headers.insert(CONTENT_LENGTH, HeaderValue::from(0u64));
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                    headers.insert(CONTENT_RANGE, v);
                }
                return build(StatusCode::RANGE_NOT_SATISFIABLE, headers, empty());
            }
        }
    }
    headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
    let body = if head {
        empty()
    } else {
        full(Bytes::clone(&entry.body))
    };
    build(entry.status, headers, body)
}

fn build(status: StatusCode, headers: HeaderMap, body: Body) -> Response<Body> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    resp
}

/// `If-None-Match` (weak comparison, `*`), else `If-Modified-Since` against `Last-Modified`.
fn not_modified(entry: &Entry, req: &HeaderMap) -> bool {
    if req.contains_key(IF_NONE_MATCH) {
        let Some(etag) = entry.headers.get(ETAG).and_then(|v| v.to_str().ok()) else {
            // `*` matches any current representation, tagged or not.
            return req
                .get_all(IF_NONE_MATCH)
                .iter()
                .any(|v| v.as_bytes().trim_ascii() == b"*");
        };
        let Some(stored) = opaque_tag(etag.trim()) else {
            return false;
        };
        return req
            .get_all(IF_NONE_MATCH)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|line| line.trim() == "*" || entity_tags(line).contains(&stored));
    }
    let Some(since) = req
        .get(IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(date::parse)
    else {
        return false;
    };
    entry
        .headers
        .get(LAST_MODIFIED)
        .and_then(|v| v.to_str().ok())
        .and_then(date::parse)
        .is_some_and(|modified| since >= modified)
}

/// The opaque part of one entity-tag, `W/` dropped (weak comparison).
fn opaque_tag(tag: &str) -> Option<&str> {
    let t = tag.strip_prefix("W/").unwrap_or(tag);
    let inner = t.strip_prefix('"')?.strip_suffix('"')?;
    (!inner.contains('"')).then_some(inner)
}

/// The opaque tags of an `If-None-Match` line; stops at the first malformed member.
fn entity_tags(line: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = line;
    loop {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        if rest.is_empty() {
            return out;
        }
        let r = rest.strip_prefix("W/").unwrap_or(rest);
        let Some(r) = r.strip_prefix('"') else {
            return out;
        };
        let Some(end) = r.find('"') else {
            return out;
        };
        out.push(&r[..end]);
        rest = &r[end + 1..];
    }
}

enum RangeAnswer {
    Full,
    Part(u64, u64),
    Unsatisfiable,
}

/// One `bytes` range: a part; several, a bad header, or a failed `If-Range`: the full body.
fn range(entry: &Entry, req: &HeaderMap, len: u64) -> RangeAnswer {
    let Some(spec) = req.get(RANGE).and_then(|v| v.to_str().ok()) else {
        return RangeAnswer::Full;
    };
    if let Some(cond) = req.get(IF_RANGE) {
        let validator = cond.as_bytes().trim_ascii();
        let strong_etag = entry
            .headers
            .get(ETAG)
            .map(|e| e.as_bytes().trim_ascii())
            .filter(|e| !e.starts_with(b"W/"));
        let last_modified = entry.headers.get(LAST_MODIFIED).map(|v| v.as_bytes());
        if Some(validator) != strong_etag && Some(validator) != last_modified {
            return RangeAnswer::Full;
        }
    }
    let Some(set) = spec.trim().strip_prefix("bytes=") else {
        return RangeAnswer::Full;
    };
    let members: Vec<&str> = set
        .split(',')
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .collect();
    let [one] = members.as_slice() else {
        return RangeAnswer::Full;
    };
    let Some((a, b)) = one.split_once('-') else {
        return RangeAnswer::Full;
    };
    let digits = |s: &str| -> Option<u64> {
        (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    match (a.trim(), b.trim()) {
        ("", suffix) => match digits(suffix) {
            Some(0) => RangeAnswer::Unsatisfiable,
            Some(n) if len > 0 => RangeAnswer::Part(len.saturating_sub(n), len - 1),
            Some(_) => RangeAnswer::Unsatisfiable,
            None => RangeAnswer::Full,
        },
        (first, "") => match digits(first) {
            Some(f) if f < len => RangeAnswer::Part(f, len - 1),
            Some(_) => RangeAnswer::Unsatisfiable,
            None => RangeAnswer::Full,
        },
        (first, last) => match (digits(first), digits(last)) {
            (Some(f), Some(l)) if f <= l => {
                if f < len {
                    RangeAnswer::Part(f, l.min(len - 1))
                } else {
                    RangeAnswer::Unsatisfiable
                }
            }
            _ => RangeAnswer::Full,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::key::VaryRecord;
    use http_body_util::BodyExt;
    use std::time::Duration;

    fn entry(headers: &[(&'static str, &'static str)]) -> Entry {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        Entry {
            app: "w".into(),
            status: StatusCode::OK,
            headers: h,
            body: Bytes::from_static(b"0123456789"),
            vary: VaryRecord::default(),
            stored_at: Instant::now(),
            initial_age: Duration::from_secs(3),
            lifetime: Duration::from_secs(60),
            public: false,
        }
    }

    fn req(headers: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        h
    }

    async fn body(r: Response<Body>) -> Bytes {
        r.into_body()
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn full_hit_with_age_and_status_after_the_apps() {
        let e = entry(&[
            ("cache-status", "upstream; hit"),
            ("content-type", "text/plain"),
        ]);
        let r = hit(&e, &req(&[]), false, false, Instant::now());
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()[AGE], "3");
        assert_eq!(
            r.headers()[&CACHE_STATUS],
            "upstream; hit, tako; hit; ttl=56"
        );
        assert_eq!(r.headers()[CONTENT_LENGTH], "10");
        assert_eq!(body(r).await, "0123456789");
        let r = hit(&e, &req(&[]), true, true, Instant::now());
        assert_eq!(
            r.headers()[&CACHE_STATUS],
            "upstream; hit, tako; hit; collapsed; ttl=56"
        );
        assert_eq!(r.headers()[CONTENT_LENGTH], "10");
        assert!(body(r).await.is_empty());
    }

    #[test]
    fn conditional_hits() {
        let e = entry(&[
            ("etag", "W/\"v1\""),
            ("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT"),
            ("content-type", "text/plain"),
            ("cache-control", "max-age=60"),
        ]);
        let now = Instant::now();
        for inm in ["\"v1\"", "W/\"v1\"", "\"x\", W/\"v1\"", "*"] {
            let r = hit(&e, &req(&[("if-none-match", inm)]), false, false, now);
            assert_eq!(r.status(), 304, "{inm}");
            assert!(!r.headers().contains_key("content-type"));
            assert_eq!(r.headers()[ETAG], "W/\"v1\"");
            assert_eq!(r.headers()[CACHE_CONTROL], "max-age=60");
            assert!(r.headers().contains_key(AGE) && r.headers().contains_key(&CACHE_STATUS));
        }
        let r = hit(&e, &req(&[("if-none-match", "\"v2\"")]), false, false, now);
        assert_eq!(r.status(), 200);
        // If-None-Match wins over If-Modified-Since.
        let r = hit(
            &e,
            &req(&[
                ("if-none-match", "\"v2\""),
                ("if-modified-since", "Sun, 06 Nov 1994 08:49:37 GMT"),
            ]),
            false,
            false,
            now,
        );
        assert_eq!(r.status(), 200);
        let ims = |d: &'static str| {
            hit(&e, &req(&[("if-modified-since", d)]), false, false, now).status()
        };
        assert_eq!(ims("Sun, 06 Nov 1994 08:49:37 GMT"), 304);
        assert_eq!(ims("Mon, 07 Nov 1994 08:49:37 GMT"), 304);
        assert_eq!(ims("Sat, 05 Nov 1994 08:49:37 GMT"), 200);
        assert_eq!(ims("garbage"), 200);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn ranges() {
        let e = entry(&[("etag", "\"s\"")]);
        let now = Instant::now();
        let r = hit(&e, &req(&[("range", "bytes=2-4")]), false, false, now);
        assert_eq!(r.status(), 206);
        assert_eq!(r.headers()[CONTENT_RANGE], "bytes 2-4/10");
        assert_eq!(body(r).await, "234");
        let r = hit(&e, &req(&[("range", "bytes=-3")]), false, false, now);
        assert_eq!(body(r).await, "789");
        let r = hit(&e, &req(&[("range", "bytes=8-")]), false, false, now);
        assert_eq!(body(r).await, "89");
        let r = hit(&e, &req(&[("range", "bytes=5-100")]), false, false, now);
        assert_eq!(r.headers()[CONTENT_RANGE], "bytes 5-9/10");
        let r = hit(&e, &req(&[("range", "bytes=10-")]), false, false, now);
        assert_eq!(r.status(), 416);
        assert_eq!(r.headers()[CONTENT_RANGE], "bytes */10");
        for full_range in ["bytes=0-1,3-4", "items=0-1", "bytes=x-y", "bytes=4-2"] {
            let r = hit(&e, &req(&[("range", full_range)]), false, false, now);
            assert_eq!(r.status(), 200, "{full_range}");
        }
        let r = hit(
            &e,
            &req(&[("range", "bytes=0-1"), ("if-range", "\"other\"")]),
            false,
            false,
            now,
        );
        assert_eq!(r.status(), 200);
        let r = hit(
            &e,
            &req(&[("range", "bytes=0-1"), ("if-range", "\"s\"")]),
            false,
            false,
            now,
        );
        assert_eq!(r.status(), 206);
    }
}
