//! The HTTP → HTTPS redirect (docs/http.md, "HTTP to HTTPS redirect").

use bytes::Bytes;
use http::header::{HeaderValue, LOCATION};
use http::{Response, StatusCode};

use crate::body::Body;
use crate::responses;

pub const ACME_PREFIX: &str = "/.well-known/acme-challenge/";
const BODY: &str = "Redirecting to HTTPS";

/// `https://<hostname>[:<tls-port>]<path>[?<query>]`, the port only when it is not 443.
pub fn location(hostname: &str, tls_port: u16, path_and_query: &str) -> String {
    let pq = if path_and_query.is_empty() {
        "/"
    } else {
        path_and_query
    };
    if tls_port == 443 {
        format!("https://{hostname}{pq}")
    } else {
        format!("https://{hostname}:{tls_port}{pq}")
    }
}

/// The 307 response; `None` when the location is not a valid header value (a 400).
pub fn response(location: &str, head: bool) -> Option<Response<Body>> {
    let value = HeaderValue::from_str(location).ok()?;
    let mut resp = responses::fixed(
        StatusCode::TEMPORARY_REDIRECT,
        "text/plain",
        "no-store",
        Bytes::from_static(BODY.as_bytes()),
        head,
    );
    resp.headers_mut().insert(LOCATION, value);
    Some(resp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::{CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE};

    #[test]
    fn spec_example() {
        assert_eq!(
            location("example.com", 8443, "/a?b=1"),
            "https://example.com:8443/a?b=1"
        );
    }

    #[test]
    fn default_port_is_omitted_and_raw_bytes_kept() {
        assert_eq!(
            location("example.com", 443, "/%7Ex/../y?q=%20&r"),
            "https://example.com/%7Ex/../y?q=%20&r"
        );
        assert_eq!(location("[::1]", 8443, "/"), "https://[::1]:8443/");
        assert_eq!(location("a.b", 443, ""), "https://a.b/");
    }

    #[test]
    fn response_shape() {
        let r = response("https://e.com/", false).unwrap();
        assert_eq!(r.status(), StatusCode::TEMPORARY_REDIRECT);
        let h = r.headers();
        assert_eq!(h[LOCATION], "https://e.com/");
        assert_eq!(h[CONTENT_TYPE], "text/plain");
        assert_eq!(h[CONTENT_LENGTH], "20");
        assert_eq!(h[CACHE_CONTROL], "no-store");
        assert_eq!(BODY.len(), 20);
        assert!(response("https://e.com/\n", false).is_none());
    }
}
