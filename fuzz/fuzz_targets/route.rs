//! Route patterns: text lines become routes (`parse_route` must accept or refuse, never panic),
//! the accepted ones a `RouteMatcher`, and lines starting with `?` become lookups `?<host>
//! <path>`. The matcher's indexed answer must equal a brute-force search with the documented
//! order (docs/http.md, "Routing"): `matches`, then score, then the normalized route in byte
//! order, then the app name.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tako_ipc::route::{parse_route, RouteMatcher, RoutePattern};

fn brute<'a>(
    routes: &'a [(RoutePattern, String, usize)],
    host: &str,
    path: &str,
) -> Option<(&'a str, &'a str)> {
    routes
        .iter()
        .filter(|(p, _, _)| p.matches(host, path))
        .min_by(|a, b| {
            b.0.score()
                .cmp(&a.0.score())
                .then_with(|| a.0.normalized().as_bytes().cmp(b.0.normalized().as_bytes()))
                .then_with(|| a.1.cmp(&b.1))
        })
        .map(|(p, app, _)| (p.normalized(), app.as_str()))
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut routes = Vec::new();
    let mut lookups = Vec::new();
    for (i, line) in text.split('\n').enumerate() {
        if let Some(q) = line.strip_prefix('?') {
            let (host, path) = q.split_once(' ').unwrap_or((q, "/"));
            lookups.push((host.to_string(), path.to_string()));
            continue;
        }
        match parse_route(line) {
            Ok(p) => {
                // Accessors are total, and a normalized route parses to itself.
                let _ = (p.identity_key(), p.score(), p.static_prefix(), p.host(), p.path());
                let again = parse_route(p.normalized()).expect("a normalized route parses");
                assert_eq!(again.normalized(), p.normalized());
                assert_eq!(again.identity_key(), p.identity_key());
                // A few apps so equal patterns tie-break on the name.
                routes.push((p, format!("app{}", i % 3), i));
            }
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }
    let matcher = RouteMatcher::new(routes.clone());
    for (host, path) in &lookups {
        let want = brute(&routes, host, path);
        let got = matcher.find(host, path).map(|(p, app, _)| (p.normalized(), app));
        assert_eq!(got, want, "host {host:?} path {path:?}");
    }
});
