//! Which targets a successful unsafe request invalidates (docs/http.md, "Response cache"): its
//! own, and those of `Location` and `Content-Location` when relative or on the same host.

use http::header::{HeaderMap, CONTENT_LOCATION, LOCATION};

use super::key::normalize_host;

/// `host` is normalized; `target` the request's origin-form target.
pub fn targets(host: &str, target: &str, resp: &HeaderMap) -> Vec<String> {
    let mut out = vec![target.to_string()];
    for name in [LOCATION, CONTENT_LOCATION] {
        for v in resp.get_all(name) {
            if let Some(t) = v
                .to_str()
                .ok()
                .and_then(|v| same_host_target(v.trim(), host, target))
            {
                if !out.contains(&t) {
                    out.push(t);
                }
            }
        }
    }
    out
}

fn same_host_target(value: &str, host: &str, base: &str) -> Option<String> {
    let value = value.split('#').next().unwrap_or("");
    if value.is_empty() {
        return None;
    }
    let lower = value.get(..8).unwrap_or(value).to_ascii_lowercase();
    let after_scheme = if lower.starts_with("https://") {
        Some(&value[8..])
    } else if lower.starts_with("http://") {
        Some(&value[7..])
    } else {
        value.strip_prefix("//")
    };
    if let Some(rest) = after_scheme {
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(end);
        let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        if normalize_host(authority) != host {
            return None;
        }
        return Some(if path.starts_with('/') {
            path.to_string()
        } else {
            format!("/{path}")
        });
    }
    if value.starts_with('/') {
        return Some(value.to_string());
    }
    let first_segment = value.split(['/', '?']).next().unwrap_or("");
    if first_segment.contains(':') {
        // Another scheme (mailto:, urn:): not ours.
        return None;
    }
    // A relative path resolves against the request path's directory.
    let base_path = base.split('?').next().unwrap_or("/");
    let dir = base_path.rfind('/').map_or("/", |i| &base_path[..=i]);
    Some(format!("{dir}{value}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn own_target_and_same_host_locations() {
        let mut h = HeaderMap::new();
        h.append(LOCATION, HeaderValue::from_static("/items/7"));
        h.append(
            CONTENT_LOCATION,
            HeaderValue::from_static("HTTPS://Shop.example:8443/items?all#top"),
        );
        assert_eq!(
            targets("shop.example:8443", "/items?x=1", &h),
            vec!["/items?x=1", "/items/7", "/items?all"]
        );
        let t = |v: &str| same_host_target(v, "a.com", "/dir/page?q");
        assert_eq!(t("other"), Some("/dir/other".into()));
        assert_eq!(t("//a.com"), Some("/".into()));
        assert_eq!(t("http://a.com./x"), Some("/x".into()));
        assert_eq!(t("https://b.com/x"), None);
        assert_eq!(t("http://a.com:81/x"), None);
        assert_eq!(t("mailto:x@a.com"), None);
        assert_eq!(t(""), None);
    }
}
