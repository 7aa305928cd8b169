//! `Cache-Control` field lines as the response cache reads them (docs/http.md,
//! "Response cache"): any bytes give a `Directives` value, never a panic. Reading the lines one
//! by one through `read_line` and through a `HeaderMap` with `from_headers` must agree.
//!
//! The parser is a private module of the proxy-worker library; it is compiled here from its
//! own source file (it only needs the `http` crate), so the worker's API stays as it is.
#![no_main]

use http::header::{HeaderMap, HeaderValue, CACHE_CONTROL};
use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../proxy-worker/src/cache/directives.rs"]
mod directives;

use directives::{Delta, Directives};

fuzz_target!(|data: &[u8]| {
    // Lines separated by NUL, which a header value cannot hold.
    let mut direct = Directives::default();
    let mut headers = HeaderMap::new();
    for line in data.split(|b| *b == 0) {
        direct.read_line(line);
        if let Ok(v) = HeaderValue::from_bytes(line) {
            headers.append(CACHE_CONTROL, v);
        }
    }
    let via_map = Directives::from_headers(&headers);
    if headers.len() == data.split(|b| *b == 0).count() {
        assert_eq!(direct, via_map);
    }
    for d in [direct.max_age, direct.s_maxage] {
        if let Delta::Seconds(n) = d {
            assert!(n <= 1 << 31, "delta above the cap: {n}");
        }
    }
});
