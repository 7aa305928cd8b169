//! Which requests use the cache, which responses may be stored and for how long (docs/http.md,
//! "Response cache": what is looked up, what is stored, freshness).

use std::time::Duration;

use http::header::{
    HeaderMap, HeaderName, AGE, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, COOKIE, DATE, EXPIRES,
    UPGRADE,
};
use http::{Method, StatusCode};

use super::directives::{Delta, Directives};
use super::key::{vary_spec, VarySpec};
use tako_http1::date;

/// Largest body one entry may hold.
pub const MAX_BODY_BYTES: u64 = 8 * 1024 * 1024;

static SET_COOKIE2: HeaderName = HeaderName::from_static("set-cookie2");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eligibility {
    /// GET or HEAD: look up; a GET miss may store.
    Eligible,
    /// `no-store` request or an upgrade: straight upstream.
    Bypass,
    /// Any other method: straight upstream; may invalidate.
    Method,
}

pub fn request_eligibility(method: &Method, headers: &HeaderMap) -> Eligibility {
    if method != Method::GET && method != Method::HEAD {
        return Eligibility::Method;
    }
    if headers.contains_key(UPGRADE) || Directives::from_headers(headers).no_store {
        return Eligibility::Bypass;
    }
    Eligibility::Eligible
}

/// Whether the request carries credentials (`Cookie` or `Authorization`, any value). Its
/// answer may be made for that user alone, so only an answer that says `public` is shared
/// with it or from it.
pub fn credentialed(headers: &HeaderMap) -> bool {
    headers.contains_key(COOKIE) || headers.contains_key(AUTHORIZATION)
}

/// Methods whose success invalidates: all but the safe ones.
pub fn invalidates(method: &Method) -> bool {
    !matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// Why a response is not stored; for the debug log and the tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("status is not storable")]
    Status,
    #[error("Cache-Control forbids storing (no-store, no-cache or private)")]
    Forbidden,
    #[error("Cache-Control could not be parsed")]
    MalformedCacheControl,
    #[error("response sets a cookie")]
    SetCookie,
    #[error("request had Cookie or Authorization and the response does not say public")]
    Credentials,
    #[error("no explicit freshness above 0 s")]
    NoFreshness,
    #[error("Age header is invalid")]
    BadAge,
    #[error("Vary: * or an unreadable Vary")]
    Vary,
    #[error("event streams are never stored")]
    EventStream,
    #[error("Content-Length above the per-entry limit")]
    TooLarge,
}

/// The freshness of a storable response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Freshness {
    pub lifetime: Duration,
    /// Upstream `Age`, before the transit time is added.
    pub upstream_age: Duration,
    /// `Cache-Control: public`: the entry may be served to requests with credentials.
    pub public: bool,
}

/// Applies the storage rules decidable from the head to a response to a GET. `now_unix` is the
/// receive time, used when `Date` is missing or invalid.
pub fn admit(
    req_headers: &HeaderMap,
    status: StatusCode,
    headers: &HeaderMap,
    now_unix: i64,
) -> Result<Freshness, Refusal> {
    if status.as_u16() < 200
        || status == StatusCode::PARTIAL_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Err(Refusal::Status);
    }
    let cc = Directives::from_headers(headers);
    if cc.no_store || cc.no_cache || cc.private {
        return Err(Refusal::Forbidden);
    }
    if cc.malformed {
        return Err(Refusal::MalformedCacheControl);
    }
    if headers.contains_key(http::header::SET_COOKIE) || headers.contains_key(&SET_COOKIE2) {
        return Err(Refusal::SetCookie);
    }
    // Stricter than RFC 9111 §3.5, which also lets `s-maxage` and `must-revalidate` through
    // for Authorization: an app that sets either for its CDN still may not mean "the same
    // for every user", and a cookie-personalized page is the common leak.
    if credentialed(req_headers) && !cc.public {
        return Err(Refusal::Credentials);
    }
    let lifetime = lifetime(&cc, headers, now_unix).ok_or(Refusal::NoFreshness)?;
    if lifetime.is_zero() {
        return Err(Refusal::NoFreshness);
    }
    if vary_spec(headers) == VarySpec::Uncacheable {
        return Err(Refusal::Vary);
    }
    if is_event_stream(headers) {
        return Err(Refusal::EventStream);
    }
    if content_length(headers).is_some_and(|n| n > MAX_BODY_BYTES) {
        return Err(Refusal::TooLarge);
    }
    let upstream_age = age(headers).ok_or(Refusal::BadAge)?;
    Ok(Freshness {
        lifetime,
        upstream_age,
        public: cc.public,
    })
}

/// `s-maxage`, else `max-age`, else `Expires` − `Date`. `None`: no usable freshness.
fn lifetime(cc: &Directives, headers: &HeaderMap, now_unix: i64) -> Option<Duration> {
    for d in [cc.s_maxage, cc.max_age] {
        match d {
            Delta::Seconds(s) => return Some(Duration::from_secs(s)),
            Delta::Invalid => return None,
            Delta::Absent => {}
        }
    }
    let mut expires = headers.get_all(EXPIRES).iter();
    let one = expires.next()?;
    if expires.next().is_some() {
        return None;
    }
    let expires = date::parse(one.to_str().ok()?)?;
    let mut dates = headers.get_all(DATE).iter();
    let date = match (dates.next(), dates.next()) {
        (Some(d), None) => d.to_str().ok().and_then(date::parse),
        _ => None,
    }
    .unwrap_or(now_unix);
    Some(Duration::from_secs(
        u64::try_from(expires.saturating_sub(date)).unwrap_or(0),
    ))
}

/// The upstream `Age`: zero when absent, `None` when invalid or repeated.
fn age(headers: &HeaderMap) -> Option<Duration> {
    let mut all = headers.get_all(AGE).iter();
    let Some(v) = all.next() else {
        return Some(Duration::ZERO);
    };
    if all.next().is_some() {
        return None;
    }
    let s = v.to_str().ok()?.trim();
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Overflowing values count as 2^31 (RFC 9111 §1.2.2).
    Some(Duration::from_secs(
        s.parse::<u64>().unwrap_or(1 << 31).min(1 << 31),
    ))
}

fn is_event_stream(headers: &HeaderMap) -> bool {
    headers.get_all(CONTENT_TYPE).iter().any(|v| {
        let media = v
            .as_bytes()
            .split(|b| *b == b';')
            .next()
            .unwrap_or_default();
        media
            .trim_ascii()
            .eq_ignore_ascii_case(b"text/event-stream")
    })
}

pub fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    const NOW: i64 = 784_111_777; // Sun, 06 Nov 1994 08:49:37 GMT

    fn h(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        m
    }

    fn ok(resp: &[(&'static str, &'static str)]) -> Result<Freshness, Refusal> {
        admit(&HeaderMap::new(), StatusCode::OK, &h(resp), NOW)
    }

    #[test]
    fn request_eligibility_rules() {
        let e = |m: Method, hs: &[(&'static str, &'static str)]| request_eligibility(&m, &h(hs));
        assert_eq!(e(Method::GET, &[]), Eligibility::Eligible);
        assert_eq!(e(Method::HEAD, &[]), Eligibility::Eligible);
        assert_eq!(e(Method::POST, &[]), Eligibility::Method);
        assert_eq!(e(Method::OPTIONS, &[]), Eligibility::Method);
        assert_eq!(
            e(Method::GET, &[("upgrade", "websocket")]),
            Eligibility::Bypass
        );
        assert_eq!(
            e(Method::GET, &[("cache-control", "No-Store")]),
            Eligibility::Bypass
        );
        // Other request directives cannot force an origin fetch.
        for cc in ["no-cache", "max-age=0"] {
            assert_eq!(
                e(Method::GET, &[("cache-control", cc)]),
                Eligibility::Eligible
            );
        }
        assert_eq!(
            e(Method::GET, &[("pragma", "no-cache")]),
            Eligibility::Eligible
        );
        assert_eq!(
            e(
                Method::GET,
                &[("range", "bytes=0-1"), ("if-none-match", "\"a\"")]
            ),
            Eligibility::Eligible
        );
        assert!(invalidates(&Method::POST) && invalidates(&Method::DELETE));
        assert!(invalidates(&Method::from_bytes(b"PURGE").unwrap()));
        assert!(!invalidates(&Method::OPTIONS) && !invalidates(&Method::TRACE));
    }

    #[test]
    fn rule1_status() {
        for s in [200u16, 203, 301, 404, 410, 500] {
            let st = StatusCode::from_u16(s).unwrap();
            let r = admit(
                &HeaderMap::new(),
                st,
                &h(&[("cache-control", "max-age=5")]),
                NOW,
            );
            assert!(r.is_ok(), "{s}");
        }
        for s in [206u16, 304] {
            let st = StatusCode::from_u16(s).unwrap();
            let r = admit(
                &HeaderMap::new(),
                st,
                &h(&[("cache-control", "max-age=5")]),
                NOW,
            );
            assert_eq!(r, Err(Refusal::Status), "{s}");
        }
    }

    #[test]
    fn rule2_forbidding_directives() {
        for cc in [
            "no-store, max-age=5",
            "max-age=5, no-cache",
            "max-age=5, no-cache=\"set-cookie\"",
            "private, max-age=5",
            "private=x-user, s-maxage=5",
        ] {
            assert_eq!(
                ok(&[("cache-control", cc)]),
                Err(Refusal::Forbidden),
                "{cc}"
            );
        }
        assert_eq!(
            ok(&[("cache-control", "max-age=5, x=\"open")]),
            Err(Refusal::MalformedCacheControl)
        );
    }

    #[test]
    fn rule3_set_cookie() {
        for name in ["set-cookie", "set-cookie2"] {
            let mut m = h(&[("cache-control", "public, max-age=60")]);
            m.insert(
                HeaderName::from_static(name),
                HeaderValue::from_static("a=b"),
            );
            assert_eq!(
                admit(&HeaderMap::new(), StatusCode::OK, &m, NOW),
                Err(Refusal::SetCookie)
            );
        }
    }

    #[test]
    fn rule4_credentials_need_public() {
        for (name, value) in [
            ("authorization", "Bearer x"),
            ("cookie", "s=1"),
            ("cookie", ""),
        ] {
            let req = h(&[(name, value)]);
            assert!(credentialed(&req), "{name}");
            let r =
                |cc: &'static str| admit(&req, StatusCode::OK, &h(&[("cache-control", cc)]), NOW);
            for cc in [
                "max-age=60",
                "s-maxage=60",
                "max-age=60, must-revalidate",
                "max-age=60, x-public",
            ] {
                assert_eq!(r(cc), Err(Refusal::Credentials), "{name}: {cc}");
            }
            let f = r("PUBLIC, max-age=60").expect("public is stored");
            assert!(f.public);
            assert_eq!(
                r("public"),
                Err(Refusal::NoFreshness),
                "public is not freshness"
            );
        }
        assert!(!credentialed(&h(&[("x-cookie", "s=1")])));
        assert!(!ok(&[("cache-control", "max-age=60")]).unwrap().public);
        assert!(
            ok(&[("cache-control", "public, max-age=60")])
                .unwrap()
                .public
        );
    }

    #[test]
    fn rule5_explicit_freshness_only() {
        let secs = |r: Result<Freshness, Refusal>| r.map(|f| f.lifetime.as_secs());
        assert_eq!(ok(&[]), Err(Refusal::NoFreshness), "no heuristics");
        assert_eq!(
            ok(&[("last-modified", "Sat, 05 Nov 1994 08:49:37 GMT")]),
            Err(Refusal::NoFreshness)
        );
        assert_eq!(
            ok(&[("cache-control", "max-age=0")]),
            Err(Refusal::NoFreshness)
        );
        assert_eq!(
            ok(&[("cache-control", "max-age=bad")]),
            Err(Refusal::NoFreshness)
        );
        assert_eq!(
            ok(&[("cache-control", "s-maxage=-1, max-age=60")]),
            Err(Refusal::NoFreshness)
        );
        assert_eq!(
            secs(ok(&[("cache-control", "s-maxage=9, max-age=60")])),
            Ok(9)
        );
        assert_eq!(secs(ok(&[("cache-control", "max-age=60")])), Ok(60));
        // Expires − Date, or − now without a usable Date.
        assert_eq!(
            secs(ok(&[
                ("expires", "Sun, 06 Nov 1994 08:50:37 GMT"),
                ("date", "Sun, 06 Nov 1994 08:49:07 GMT")
            ])),
            Ok(90)
        );
        assert_eq!(
            secs(ok(&[
                ("expires", "Sun, 06 Nov 1994 08:50:37 GMT"),
                ("date", "garbage")
            ])),
            Ok(60)
        );
        assert_eq!(
            secs(ok(&[("expires", "Sun, 06 Nov 1994 08:50:37 GMT")])),
            Ok(60)
        );
        assert_eq!(ok(&[("expires", "0")]), Err(Refusal::NoFreshness));
        assert_eq!(
            ok(&[("expires", "Sun, 06 Nov 1994 08:40:37 GMT")]),
            Err(Refusal::NoFreshness),
            "already expired"
        );
        assert_eq!(
            ok(&[
                ("expires", "Sun, 06 Nov 1994 08:50:37 GMT"),
                ("expires", "Sun, 06 Nov 1994 08:50:37 GMT")
            ]),
            Err(Refusal::NoFreshness),
            "two Expires"
        );
        // max-age wins over a broken Expires.
        assert_eq!(
            secs(ok(&[("cache-control", "max-age=5"), ("expires", "0")])),
            Ok(5)
        );
    }

    #[test]
    fn age_header() {
        let f = ok(&[("cache-control", "max-age=60"), ("age", "7")]).unwrap();
        assert_eq!(f.upstream_age, Duration::from_secs(7));
        for bad in ["-1", "x", "", "1.5"] {
            let mut m = h(&[("cache-control", "max-age=60")]);
            m.insert(AGE, HeaderValue::from_str(bad).unwrap());
            assert_eq!(
                admit(&HeaderMap::new(), StatusCode::OK, &m, NOW),
                Err(Refusal::BadAge),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn rule6_vary_star_and_event_stream() {
        assert_eq!(
            ok(&[("cache-control", "max-age=60"), ("vary", "accept, *")]),
            Err(Refusal::Vary)
        );
        assert!(ok(&[("cache-control", "max-age=60"), ("vary", "accept")]).is_ok());
        assert_eq!(
            ok(&[
                ("cache-control", "max-age=60"),
                ("content-type", "Text/Event-Stream; charset=utf-8")
            ]),
            Err(Refusal::EventStream)
        );
    }

    #[test]
    fn rule7_declared_length() {
        let mut m = h(&[("cache-control", "max-age=60")]);
        m.insert(CONTENT_LENGTH, HeaderValue::from(MAX_BODY_BYTES));
        assert!(admit(&HeaderMap::new(), StatusCode::OK, &m, NOW).is_ok());
        m.insert(CONTENT_LENGTH, HeaderValue::from(MAX_BODY_BYTES + 1));
        assert_eq!(
            admit(&HeaderMap::new(), StatusCode::OK, &m, NOW),
            Err(Refusal::TooLarge)
        );
    }
}
