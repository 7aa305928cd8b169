//! Route patterns: parsing and validation (docs/management-protocol.md, "Validation"), matching
//! and selection (docs/http.md, "Routing"), identity for conflict checks (the same "Validation"
//! section).
//!
//! Pure code shared by the master (validation, conflicts) and the workers (matching), so both
//! sides agree on what a route means.

use std::cmp::Ordering;
use std::collections::HashMap;

/// Longest accepted route entry, in bytes.
pub const MAX_ROUTE_LEN: usize = 1024;
/// Longest accepted host, in bytes (DNS limit).
pub const MAX_HOST_LEN: usize = 253;
/// Longest accepted host label, in bytes.
pub const MAX_LABEL_LEN: usize = 63;
/// The internal status host, never routable.
pub const INTERNAL_HOST: &str = "tako.internal";

/// Validation failure of one route entry. `Display` is the exact text of the spec.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum RouteError {
    #[error("Deploy rejected: routes must be non-empty values")]
    Empty,
    #[error("Invalid route '{0}': must be at most 1024 characters without spaces")]
    TooLongOrSpaces(String),
    #[error("Invalid route '{0}': missing host")]
    MissingHost(String),
    #[error("Invalid route '{route}': invalid host '{host}'")]
    InvalidHost { route: String, host: String },
    #[error("Invalid route '{0}': '*' is only allowed as a leading '*.' label")]
    MisplacedWildcard(String),
    #[error("Invalid route '{0}': invalid port")]
    InvalidPort(String),
    #[error("Invalid route '{0}': host 'tako.internal' is reserved")]
    ReservedHost(String),
    #[error("Invalid route '{route}': invalid path '{path}'")]
    InvalidPath { route: String, path: String },
}

/// The host half of a route.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
    /// A whole lower-case hostname.
    Exact(String),
    /// `*.<suffix>`: holds the suffix after `*.`.
    Wildcard(String),
}

/// The path half of a route.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PathPattern {
    /// `P`: equal after removing one trailing `/` from each side. Holds the path as written.
    Exact(String),
    /// `P/*`: holds `P` (empty for `/*`).
    Prefix(String),
    /// `P*` (not `/*`): holds `P`.
    Glob(String),
}

/// A parsed, validated route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutePattern {
    normalized: String,
    host: HostPattern,
    path: Option<PathPattern>,
}

/// Removes one trailing `/`, keeping a lone `/`.
fn trim_one_slash(p: &str) -> &str {
    if p.len() > 1 {
        p.strip_suffix('/').unwrap_or(p)
    } else {
        p
    }
}

fn valid_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= MAX_LABEL_LEN
        && label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !label.starts_with('-')
        && !label.ends_with('-')
}

/// Parses and validates one route entry, checking the rules in the order of the spec.
pub fn parse_route(raw: &str) -> Result<RoutePattern, RouteError> {
    if raw.trim().is_empty() {
        return Err(RouteError::Empty);
    }
    if raw.len() > MAX_ROUTE_LEN || raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(RouteError::TooLongOrSpaces(raw.to_string()));
    }
    let (authority, path) = match raw.find('/') {
        Some(i) => (&raw[..i], Some(&raw[i..])),
        None => (raw, None),
    };
    // Hosts are DNS labels only (no IPv6 literals), so the first ':' starts the port.
    let (host_written, port) = match authority.find(':') {
        Some(i) => (&authority[..i], Some(&authority[i + 1..])),
        None => (authority, None),
    };
    if host_written.is_empty() {
        return Err(RouteError::MissingHost(raw.to_string()));
    }
    let lowered = host_written.to_ascii_lowercase();
    let host = lowered.strip_suffix('.').unwrap_or(&lowered);
    let invalid_host = || RouteError::InvalidHost {
        route: raw.to_string(),
        host: host_written.to_string(),
    };
    if host.is_empty() || host.len() > MAX_HOST_LEN {
        return Err(invalid_host());
    }
    // Labels with a '*' are judged by the wildcard rule, which comes next.
    let rest = host.strip_prefix("*.").unwrap_or(host);
    if rest
        .split('.')
        .any(|label| !label.contains('*') && !valid_label(label))
    {
        return Err(invalid_host());
    }
    if rest.contains('*') {
        return Err(RouteError::MisplacedWildcard(raw.to_string()));
    }
    if let Some(port) = port {
        let ok = !port.is_empty()
            && port.len() <= 5
            && port.bytes().all(|b| b.is_ascii_digit())
            && matches!(port.parse::<u32>(), Ok(1..=65535));
        if !ok {
            return Err(RouteError::InvalidPort(raw.to_string()));
        }
    }
    if host == INTERNAL_HOST {
        return Err(RouteError::ReservedHost(raw.to_string()));
    }
    let path_pattern = match path {
        None => None,
        Some(p) => {
            let star = p.find('*');
            let bad = p.contains('?') || p.contains('#') || star.is_some_and(|i| i != p.len() - 1);
            if bad {
                return Err(RouteError::InvalidPath {
                    route: raw.to_string(),
                    path: p.to_string(),
                });
            }
            Some(if let Some(prefix) = p.strip_suffix("/*") {
                PathPattern::Prefix(prefix.to_string())
            } else if let Some(prefix) = p.strip_suffix('*') {
                PathPattern::Glob(prefix.to_string())
            } else {
                PathPattern::Exact(p.to_string())
            })
        }
    };
    let host_pattern = match host.strip_prefix("*.") {
        Some(suffix) => HostPattern::Wildcard(suffix.to_string()),
        None => HostPattern::Exact(host.to_string()),
    };
    let mut normalized = host.to_string();
    if let Some(port) = port {
        normalized.push(':');
        normalized.push_str(port);
    }
    if let Some(p) = path {
        normalized.push_str(p);
    }
    Ok(RoutePattern {
        normalized,
        host: host_pattern,
        path: path_pattern,
    })
}

impl RoutePattern {
    /// Host lower-cased, trailing dot removed, port kept as written, path as written.
    pub fn normalized(&self) -> &str {
        &self.normalized
    }

    pub fn host(&self) -> &HostPattern {
        &self.host
    }

    pub fn path(&self) -> Option<&PathPattern> {
        self.path.as_ref()
    }

    /// Equal for patterns the spec calls identical: port ignored, `P` ≡ `P/`, `host` ≡
    /// `host/*`.
    pub fn identity_key(&self) -> String {
        let host = match &self.host {
            HostPattern::Exact(h) => h.clone(),
            HostPattern::Wildcard(s) => format!("*.{s}"),
        };
        match &self.path {
            None => host,
            Some(PathPattern::Prefix(p)) if p.is_empty() => host,
            Some(PathPattern::Prefix(p)) => format!("{host}{p}/*"),
            Some(PathPattern::Glob(p)) => format!("{host}{p}*"),
            Some(PathPattern::Exact(p)) => format!("{host}{}", trim_one_slash(p)),
        }
    }

    /// Whether a request matches. `hostname` is already lower-cased with port and trailing
    /// dot removed; `path` is the raw request path without the query.
    pub fn matches(&self, hostname: &str, path: &str) -> bool {
        self.host_matches(hostname) && self.path_matches(path)
    }

    fn host_matches(&self, hostname: &str) -> bool {
        match &self.host {
            HostPattern::Exact(h) => hostname == h,
            HostPattern::Wildcard(suffix) => wildcard_matches(suffix, hostname),
        }
    }

    fn path_matches(&self, p: &str) -> bool {
        match &self.path {
            None => true,
            Some(PathPattern::Prefix(prefix)) => {
                p == prefix
                    || (p.starts_with(prefix.as_str()) && p[prefix.len()..].starts_with('/'))
            }
            Some(PathPattern::Glob(prefix)) => p.starts_with(prefix.as_str()),
            Some(PathPattern::Exact(e)) => trim_one_slash(p) == trim_one_slash(e),
        }
    }

    /// `(host_score, path_len, exact_bonus)`; higher wins.
    pub fn score(&self) -> (u8, usize, u8) {
        let host_score = match self.host {
            HostPattern::Exact(_) => 2,
            HostPattern::Wildcard(_) => 1,
        };
        let (path_len, bonus) = match &self.path {
            None => (0, 0),
            Some(PathPattern::Prefix(p)) | Some(PathPattern::Glob(p)) => (p.len(), 0),
            Some(PathPattern::Exact(p)) => (trim_one_slash(p).len(), 1),
        };
        (host_score, path_len, bonus)
    }

    /// The prefix removed from the request path for the second static-file candidate: `P`
    /// for `P/*` and `P*`, the (normalized) exact path, `None` without a path.
    pub fn static_prefix(&self) -> Option<&str> {
        match &self.path {
            None => None,
            Some(PathPattern::Prefix(p)) | Some(PathPattern::Glob(p)) => Some(p),
            Some(PathPattern::Exact(p)) => Some(trim_one_slash(p)),
        }
    }
}

/// `*.suffix` matches any name ending in `.suffix` with at least one character before the dot.
fn wildcard_matches(suffix: &str, hostname: &str) -> bool {
    hostname.len() > suffix.len() + 1
        && hostname.ends_with(suffix)
        && hostname.as_bytes()[hostname.len() - suffix.len() - 1] == b'.'
}

/// A compiled route table. Built once per table change; `find` does one hash lookup for exact
/// hosts and one per label for wildcards.
pub struct RouteMatcher<T> {
    entries: Vec<(RoutePattern, String, T)>,
    /// Exact host -> entry indices, best first.
    exact: HashMap<String, Vec<usize>>,
    /// Wildcard suffix -> entry indices, best first.
    wildcard: HashMap<String, Vec<usize>>,
    /// Global rank of each entry (lower is better), to compare across suffixes.
    rank: Vec<usize>,
}

impl<T> RouteMatcher<T> {
    pub fn new(entries: Vec<(RoutePattern, String, T)>) -> Self {
        let mut order: Vec<usize> = (0..entries.len()).collect();
        order.sort_by(|&a, &b| better(&entries[a], &entries[b]));
        let mut rank = vec![0; entries.len()];
        for (r, &i) in order.iter().enumerate() {
            rank[i] = r;
        }
        let mut exact: HashMap<String, Vec<usize>> = HashMap::new();
        let mut wildcard: HashMap<String, Vec<usize>> = HashMap::new();
        for &i in &order {
            match &entries[i].0.host {
                HostPattern::Exact(h) => exact.entry(h.clone()).or_default().push(i),
                HostPattern::Wildcard(s) => wildcard.entry(s.clone()).or_default().push(i),
            }
        }
        Self {
            entries,
            exact,
            wildcard,
            rank,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The best route for a request: score, then normalized route string, then app name.
    pub fn find(&self, hostname: &str, path: &str) -> Option<(&RoutePattern, &str, &T)> {
        let first_match = |list: &Vec<usize>| {
            list.iter()
                .copied()
                .find(|&i| self.entries[i].0.path_matches(path))
        };
        // An exact host always beats a wildcard, so a hit here ends the search.
        let mut best = self.exact.get(hostname).and_then(first_match);
        if best.is_none() {
            let mut rest = hostname;
            while let Some(dot) = rest.find('.') {
                rest = &rest[dot + 1..];
                // `*.suffix` needs a character before `.suffix`: `.example.com` is no
                // match for `*.example.com` (found by fuzz/fuzz_targets/route.rs).
                if hostname.len() <= rest.len() + 1 {
                    continue;
                }
                if let Some(i) = self.wildcard.get(rest).and_then(first_match) {
                    if best.is_none_or(|b| self.rank[i] < self.rank[b]) {
                        best = Some(i);
                    }
                }
            }
        }
        best.map(|i| {
            let (p, app, v) = &self.entries[i];
            (p, app.as_str(), v)
        })
    }
}

/// Ordering where the better entry sorts first.
fn better<T>(a: &(RoutePattern, String, T), b: &(RoutePattern, String, T)) -> Ordering {
    b.0.score()
        .cmp(&a.0.score())
        .then_with(|| a.0.normalized.as_bytes().cmp(b.0.normalized.as_bytes()))
        .then_with(|| a.1.cmp(&b.1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(raw: &str) -> RoutePattern {
        parse_route(raw).unwrap_or_else(|e| panic!("{raw}: {e}"))
    }

    fn err(raw: &str) -> String {
        match parse_route(raw) {
            Ok(r) => panic!("{raw} parsed as {r:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn splits_host_and_path() {
        let r = p("api.example.com");
        assert_eq!(r.host(), &HostPattern::Exact("api.example.com".into()));
        assert_eq!(r.path(), None);
        let r = p("example.com/api/*");
        assert_eq!(r.host(), &HostPattern::Exact("example.com".into()));
        assert_eq!(r.path(), Some(&PathPattern::Prefix("/api".into())));
        assert_eq!(
            p("example.com/api*").path(),
            Some(&PathPattern::Glob("/api".into()))
        );
        assert_eq!(
            p("example.com/*").path(),
            Some(&PathPattern::Prefix("".into()))
        );
        assert_eq!(
            p("example.com/api").path(),
            Some(&PathPattern::Exact("/api".into()))
        );
        assert_eq!(
            p("localhost").host(),
            &HostPattern::Exact("localhost".into())
        );
        assert_eq!(
            p("*.example.com").host(),
            &HostPattern::Wildcard("example.com".into())
        );
    }

    #[test]
    fn normalizes_host_keeps_port_and_path() {
        assert_eq!(p("Example.COM.").normalized(), "example.com");
        assert_eq!(
            p("Example.COM.:08080/Api/*").normalized(),
            "example.com:08080/Api/*"
        );
        assert_eq!(p("*.Example.com/x").normalized(), "*.example.com/x");
    }

    #[test]
    fn empty_and_whitespace_entries() {
        assert_eq!(err(""), "Deploy rejected: routes must be non-empty values");
        assert_eq!(
            err("   "),
            "Deploy rejected: routes must be non-empty values"
        );
        assert_eq!(
            err("example.com /x"),
            "Invalid route 'example.com /x': must be at most 1024 characters without spaces"
        );
        assert_eq!(
            err("a\u{7}b.com"),
            "Invalid route 'a\u{7}b.com': must be at most 1024 characters without spaces"
        );
        assert_eq!(
            err("a\u{a0}b.com"),
            "Invalid route 'a\u{a0}b.com': must be at most 1024 characters without spaces"
        );
        let long = format!("example.com/{}", "a".repeat(1024));
        assert_eq!(
            err(&long),
            format!("Invalid route '{long}': must be at most 1024 characters without spaces")
        );
        let exact = format!("example.com/{}", "a".repeat(1024 - 12));
        assert_eq!(exact.len(), 1024);
        p(&exact);
    }

    #[test]
    fn missing_host() {
        assert_eq!(err("/api"), "Invalid route '/api': missing host");
        assert_eq!(err("/"), "Invalid route '/': missing host");
        assert_eq!(err(":80/x"), "Invalid route ':80/x': missing host");
    }

    #[test]
    fn invalid_hosts() {
        for (raw, host) in [
            ("a..b", "a..b"),
            ("-a.com", "-a.com"),
            ("a-.com", "a-.com"),
            ("ex_ample.com", "ex_ample.com"),
            ("caf\u{e9}.com", "caf\u{e9}.com"),
            (".", "."),
            ("..", ".."),
            ("example.com..", "example.com.."),
            ("[::1]", "["),
        ] {
            assert_eq!(
                err(raw),
                format!("Invalid route '{raw}': invalid host '{host}'"),
                "{raw}"
            );
        }
        let label = "a".repeat(64);
        assert!(err(&format!("{label}.com")).contains("invalid host"));
        p(&format!("{}.com", "a".repeat(63)));
        let long_host = vec!["abcdefghi"; 26].join("."); // 259 bytes
        assert!(err(&long_host).contains("invalid host"));
        let ok_host = vec!["abcdefghi"; 25].join("."); // 249 bytes
        p(&ok_host);
        assert_eq!(
            err("Ex_Ample.com:80/x"),
            "Invalid route 'Ex_Ample.com:80/x': invalid host 'Ex_Ample.com'"
        );
    }

    #[test]
    fn wildcard_placement() {
        for raw in [
            "*", "*.", "a.*.com", "*a.com", "**.com", "*.*.com", "a*", "foo.*",
        ] {
            assert_eq!(
                err(raw),
                format!("Invalid route '{raw}': '*' is only allowed as a leading '*.' label"),
                "{raw}"
            );
        }
        p("*.com");
        p("*.a.b.example.com");
    }

    #[test]
    fn ports() {
        for raw in [
            "example.com:",
            "example.com:0",
            "example.com:65536",
            "example.com:abc",
            "example.com:+80",
            "example.com:99999999999999999999",
            "example.com:80:81",
        ] {
            assert_eq!(
                err(raw),
                format!("Invalid route '{raw}': invalid port"),
                "{raw}"
            );
        }
        assert_eq!(p("example.com:65535").normalized(), "example.com:65535");
        assert_eq!(p("example.com:1/x").normalized(), "example.com:1/x");
    }

    #[test]
    fn reserved_host() {
        for raw in ["tako.internal", "TAKO.internal.", "tako.internal:80/x"] {
            assert_eq!(
                err(raw),
                format!("Invalid route '{raw}': host 'tako.internal' is reserved")
            );
        }
        p("x.tako.internal");
    }

    #[test]
    fn invalid_paths() {
        for (raw, path) in [
            ("example.com/a?b", "/a?b"),
            ("example.com/a#b", "/a#b"),
            ("example.com/*/x", "/*/x"),
            ("example.com/a**", "/a**"),
            ("example.com/?", "/?"),
        ] {
            assert_eq!(
                err(raw),
                format!("Invalid route '{raw}': invalid path '{path}'"),
                "{raw}"
            );
        }
        p("example.com//");
        p("example.com/caf\u{e9}");
    }

    #[test]
    fn rule_order_is_the_spec_order() {
        // Host before port, port before reserved, reserved before path.
        assert!(err("a_b:0/?").contains("invalid host"));
        assert!(err("tako.internal:0").contains("invalid port"));
        assert!(err("tako.internal/?").contains("reserved"));
    }

    #[test]
    fn path_matching_table() {
        let r = p("e.com/api/*");
        for ok in ["/api", "/api/", "/api/x"] {
            assert!(r.matches("e.com", ok), "{ok}");
        }
        assert!(!r.matches("e.com", "/apifoo"));
        let all = p("e.com/*");
        for ok in ["/", "/x", "/a/b"] {
            assert!(all.matches("e.com", ok));
        }
        let glob = p("e.com/api*");
        for ok in ["/api", "/apiv2", "/api/x"] {
            assert!(glob.matches("e.com", ok));
        }
        assert!(!glob.matches("e.com", "/ap"));
        let exact = p("e.com/api");
        assert!(exact.matches("e.com", "/api"));
        assert!(exact.matches("e.com", "/api/"));
        assert!(!exact.matches("e.com", "/api/x"));
        assert!(!exact.matches("e.com", "/api//"));
        let exact_slash = p("e.com/api/");
        assert!(exact_slash.matches("e.com", "/api"));
        let root = p("e.com/");
        assert!(root.matches("e.com", "/"));
        assert!(!root.matches("e.com", "/x"));
        let none = p("e.com");
        assert!(none.matches("e.com", "/anything"));
        // Raw, not normalized.
        assert!(!r.matches("e.com", "/%61pi"));
        assert!(!r.matches("e.com", "//api"));
    }

    #[test]
    fn host_matching() {
        let w = p("*.example.com");
        assert!(w.matches("a.example.com", "/"));
        assert!(w.matches("a.b.example.com", "/"));
        assert!(!w.matches("example.com", "/"));
        assert!(!w.matches("aexample.com", "/"));
        assert!(!w.matches(".example.com", "/"));
        let e = p("Example.com.:8080");
        assert!(e.matches("example.com", "/"));
        assert!(!e.matches("www.example.com", "/"));
    }

    #[test]
    fn scores_from_the_spec() {
        assert_eq!(p("example.com").score(), (2, 0, 0));
        assert_eq!(p("example.com/*").score(), (2, 0, 0));
        assert_eq!(p("*.example.com").score(), (1, 0, 0));
        assert_eq!(p("example.com/api").score(), (2, 4, 1));
        assert_eq!(p("example.com/api/").score(), (2, 4, 1));
        assert_eq!(p("example.com/api/*").score(), (2, 4, 0));
        assert_eq!(p("example.com/api*").score(), (2, 4, 0));
        assert_eq!(p("example.com/").score(), (2, 1, 1));
    }

    #[test]
    fn identity_keys() {
        let same = |a: &str, b: &str| assert_eq!(p(a).identity_key(), p(b).identity_key());
        let differ = |a: &str, b: &str| assert_ne!(p(a).identity_key(), p(b).identity_key());
        same("example.com", "example.com/*");
        same("example.com/api", "example.com/api/");
        same("example.com:8080/x", "Example.com./x");
        same("*.e.com", "*.E.com:1/*");
        differ("example.com/api/*", "example.com/api");
        differ("example.com/api*", "example.com/api/*");
        differ("example.com/api", "example.com/api*");
        differ("*.e.com", "e.com");
        differ("example.com/", "example.com");
    }

    #[test]
    fn static_prefixes() {
        assert_eq!(p("e.com/app/*").static_prefix(), Some("/app"));
        assert_eq!(p("e.com/app*").static_prefix(), Some("/app"));
        assert_eq!(p("e.com/app/").static_prefix(), Some("/app"));
        assert_eq!(p("e.com/*").static_prefix(), Some(""));
        assert_eq!(p("e.com").static_prefix(), None);
    }

    fn matcher(routes: &[(&str, &str)]) -> RouteMatcher<()> {
        RouteMatcher::new(
            routes
                .iter()
                .map(|(r, app)| (p(r), app.to_string(), ()))
                .collect(),
        )
    }

    fn found<'a>(m: &'a RouteMatcher<()>, host: &str, path: &str) -> Option<(&'a str, &'a str)> {
        m.find(host, path).map(|(r, app, _)| (r.normalized(), app))
    }

    #[test]
    fn selection_prefers_exact_host_then_longest_path() {
        let m = matcher(&[
            ("*.example.com", "wild"),
            ("example.com", "root"),
            ("example.com/api/*", "api"),
            ("example.com/api", "apiexact"),
            ("www.example.com/*", "www"),
            ("*.b.example.com/x/*", "deepwild"),
        ]);
        assert_eq!(found(&m, "example.com", "/"), Some(("example.com", "root")));
        assert_eq!(
            found(&m, "example.com", "/api"),
            Some(("example.com/api", "apiexact"))
        );
        assert_eq!(
            found(&m, "example.com", "/api/v1"),
            Some(("example.com/api/*", "api"))
        );
        assert_eq!(
            found(&m, "www.example.com", "/api"),
            Some(("www.example.com/*", "www"))
        );
        assert_eq!(
            found(&m, "a.example.com", "/x"),
            Some(("*.example.com", "wild"))
        );
        assert_eq!(
            found(&m, "a.b.example.com", "/x/y"),
            Some(("*.b.example.com/x/*", "deepwild"))
        );
        assert_eq!(
            found(&m, "a.b.example.com", "/y"),
            Some(("*.example.com", "wild"))
        );
        assert_eq!(found(&m, "other.com", "/"), None);
    }

    #[test]
    fn exact_host_beats_wildcard_even_with_a_shorter_path() {
        let m = matcher(&[("*.e.com/very/long/*", "w"), ("a.e.com", "x")]);
        assert_eq!(found(&m, "a.e.com", "/very/long/x"), Some(("a.e.com", "x")));
    }

    #[test]
    fn exact_host_without_path_match_falls_back_to_wildcard() {
        let m = matcher(&[("*.e.com", "w"), ("a.e.com/api/*", "x")]);
        assert_eq!(found(&m, "a.e.com", "/other"), Some(("*.e.com", "w")));
    }

    #[test]
    fn ties_break_by_route_string_then_app() {
        let m = matcher(&[("example.com/*", "b"), ("example.com", "z")]);
        // Both score (2,0,0): "example.com" < "example.com/*".
        assert_eq!(found(&m, "example.com", "/"), Some(("example.com", "z")));
        let m = matcher(&[("example.com:81", "b"), ("example.com:80", "c")]);
        assert_eq!(found(&m, "example.com", "/"), Some(("example.com:80", "c")));
        let m = matcher(&[("example.com", "b"), ("example.com", "a")]);
        assert_eq!(found(&m, "example.com", "/"), Some(("example.com", "a")));
        let m = matcher(&[("example.com/api*", "b"), ("example.com/api/*", "a")]);
        // Equal score; "/api*" < "/api/*" because '*' (0x2a) < '/' (0x2f).
        assert_eq!(
            found(&m, "example.com", "/api/x"),
            Some(("example.com/api*", "b"))
        );
        let m = matcher(&[("*.b.e.com", "x"), ("*.e.com", "y")]);
        // Equal wildcard scores: "*.b.e.com" < "*.e.com".
        assert_eq!(found(&m, "a.b.e.com", "/"), Some(("*.b.e.com", "x")));
    }

    #[test]
    fn wildcard_needs_a_label_before_the_suffix() {
        let m = matcher(&[("*.example.com", "w")]);
        assert_eq!(found(&m, ".example.com", "/"), None);
        assert_eq!(
            found(&m, "a..example.com", "/"),
            Some(("*.example.com", "w"))
        );
    }

    #[test]
    fn empty_matcher_finds_nothing() {
        let m = matcher(&[]);
        assert!(m.is_empty());
        assert_eq!(found(&m, "", ""), None);
        assert_eq!(found(&m, "a.b", "/"), None);
    }
}
