//! Response compression (docs/http.md, "Compression"): brotli or gzip for the responses that
//! gain from it, when the client takes it, streamed.
//!
//! The pipeline reads what the request accepts once ([`request_accepts`]) and hands every
//! proxied answer to [`apply`] before the cache sees it, so the cache stores the encoded
//! variant it served and a hit is never compressed again. [`Negotiated`] tells the cache that
//! the `Vary: Accept-Encoding` is ours: it then keys that variant on the coding a request would
//! get rather than on the header's exact bytes, so the many spellings of "gzip, deflate, br"
//! share one entry and a client that does not take br never matches a br body.

mod accept;
mod eligible;
mod encoder;

use http::header::{
    HeaderMap, HeaderValue, ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_LENGTH, ETAG, RANGE, VARY,
};
use http::{Method, Response};
use hyper::body::Body as _;

pub use accept::Accept;
pub use eligible::eligible;
use encoder::{Encoder, Permit};

use crate::body::Body;

/// A content coding we send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Identity,
    Gzip,
    Brotli,
}

impl Coding {
    /// The `Content-Encoding` token.
    pub fn token(self) -> &'static str {
        match self {
            Coding::Identity => "identity",
            Coding::Gzip => "gzip",
            Coding::Brotli => "br",
        }
    }

    /// The file name suffix of a precompressed static file (docs/http.md, "Static files").
    pub fn suffix(self) -> &'static str {
        match self {
            Coding::Identity => "",
            Coding::Gzip => ".gz",
            Coding::Brotli => ".br",
        }
    }
}

/// What the worker encodes on the fly, in its order of preference at equal weight: brotli
/// is smaller at the levels used here.
pub const ON_THE_FLY: [Coding; 2] = [Coding::Brotli, Coding::Gzip];

/// Put in a response's extensions by [`apply`] when it added `Vary: Accept-Encoding`: the
/// coding this answer got, for the cache to key the variant on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated(pub Coding);

/// What a request lets us send: nothing when compression is off; identity for a HEAD
/// (nothing to compress) and for a range request (ranges count bytes of the identity body).
pub fn request_accepts(enabled: bool, method: &Method, headers: &HeaderMap) -> Accept {
    if !enabled {
        return Accept::OFF;
    }
    // The header first: most requests that lack it need no other look.
    if !headers.contains_key(ACCEPT_ENCODING)
        || method == Method::HEAD
        || headers.contains_key(RANGE)
    {
        return Accept::IDENTITY;
    }
    Accept::of(headers)
}

/// The coding a GET with these headers gets from [`apply`]: what a cached variant marked
/// [`Negotiated`] is compared with.
pub fn coding_for(headers: &HeaderMap) -> Coding {
    request_accepts(true, &Method::GET, headers).best(&ON_THE_FLY)
}

/// Compresses an eligible response with the best coding the request accepts. An eligible
/// response gets `Vary: Accept-Encoding` even when it goes out unencoded, since another
/// request would get it encoded.
pub fn apply(resp: Response<Body>, accept: &Accept) -> Response<Body> {
    // A short body of known length (the usual small answer) is settled without a header
    // lookup; `eligible` applies the same bound to `Content-Length`. Not an empty one: a
    // HEAD's answer still says what its GET would get.
    let short = resp
        .body()
        .size_hint()
        .exact()
        .is_some_and(|n| n > 0 && n < eligible::MIN_LENGTH);
    if accept.is_off() || short || !eligible(resp.status(), resp.headers()) {
        return resp;
    }
    let mut coding = accept.best(&ON_THE_FLY);
    // Past the worker's bound on encoders at once: this one goes out unencoded.
    let permit = match coding {
        Coding::Identity => None,
        _ => Permit::take(),
    };
    if permit.is_none() {
        coding = Coding::Identity;
    }
    let (mut parts, body) = resp.into_parts();
    if add_vary(&mut parts.headers) {
        parts.extensions.insert(Negotiated(coding));
    }
    let Some(permit) = permit else {
        return Response::from_parts(parts, body);
    };
    mark_encoded(&mut parts.headers, coding);
    Response::from_parts(parts, Encoder::wrap(body, coding, permit))
}

/// The headers of a body sent with `coding`: its `Content-Encoding`, no length (the encoded
/// one is not known before the end), and a weak `ETag`: the bytes differ from the identity
/// body's, the meaning does not.
fn mark_encoded(headers: &mut HeaderMap, coding: Coding) {
    headers.remove(CONTENT_LENGTH);
    headers.insert(CONTENT_ENCODING, HeaderValue::from_static(coding.token()));
    if let Some(tag) = headers.get(ETAG) {
        if tag.as_bytes().starts_with(b"\"") {
            let mut weak = b"W/".to_vec();
            weak.extend_from_slice(tag.as_bytes());
            if let Ok(v) = HeaderValue::from_bytes(&weak) {
                headers.insert(ETAG, v);
            }
        }
    }
}

/// Adds `Accept-Encoding` to `Vary`; false when the response already varies on it (the app
/// said so: its own variants) or on everything.
pub fn add_vary(headers: &mut HeaderMap) -> bool {
    let listed = headers
        .get_all(VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|m| m == "*" || m.eq_ignore_ascii_case("accept-encoding"));
    if listed {
        return false;
    }
    headers.append(VARY, HeaderValue::from_static("Accept-Encoding"));
    true
}

#[cfg(test)]
mod tests;
