//! `tako.internal` (docs/http.md, "tako.internal"): the status page and metrics the master
//! renders, served from the latest snapshot it pushed.

use bytes::Bytes;
use http::{Response, StatusCode};

use crate::body::Body;
use crate::responses::{self, Canned};

pub const INTERNAL_HOST: &str = tako_ipc::route::INTERNAL_HOST;

/// The latest `StatusPage` from the master.
#[derive(Debug, Clone)]
pub struct StatusSnapshot {
    /// The whole page, for loopback and trusted peers.
    pub body: Bytes,
    /// Health and each app's name and state only: app output (`last_error`), pids, ports and
    /// versions must not reach the internet.
    pub public_body: Bytes,
    pub healthy: bool,
}

/// Answers a request for `tako.internal`. `privileged` is true for loopback and trusted peers:
/// they get the whole status page and the metrics; every other peer gets the public page.
pub fn respond(
    path: &str,
    head: bool,
    privileged: bool,
    status: Option<&StatusSnapshot>,
    metrics: Option<&Bytes>,
    uptime_secs: u64,
) -> Response<Body> {
    match path {
        "/status" => {
            let (body, healthy) = match status {
                Some(s) if privileged => (s.body.clone(), s.healthy),
                Some(s) => (s.public_body.clone(), s.healthy),
                // Before the first snapshot the server is still starting: not healthy.
                None if privileged => (
                    Bytes::from(format!(
                        "{{\n  \"healthy\": false,\n  \"apps\": [],\n  \"uptime_secs\": {uptime_secs}\n}}"
                    )),
                    false,
                ),
                None => (
                    Bytes::from_static(b"{\n  \"healthy\": false,\n  \"apps\": []\n}"),
                    false,
                ),
            };
            let code = if healthy {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            responses::fixed(code, "application/json", "no-cache, no-store", body, head)
        }
        "/metrics" if privileged => {
            // An empty 200 would read as a scrape in which every series vanished; before the
            // master's first page the scraper should see a failed scrape and retry.
            let Some(body) = metrics.cloned() else {
                let mut resp = responses::fixed(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain; charset=utf-8",
                    "no-store",
                    Bytes::from_static(b"metrics not ready yet\n"),
                    head,
                );
                resp.headers_mut().insert(
                    http::header::RETRY_AFTER,
                    http::HeaderValue::from_static("1"),
                );
                return resp;
            };
            let mut resp = responses::fixed(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                "no-store",
                body,
                head,
            );
            // The spec names no cache policy for metrics; scrapers never cache anyway.
            resp.headers_mut().remove(http::header::CACHE_CONTROL);
            resp
        }
        _ => Canned::NotFound.response(head),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::{CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE};

    #[test]
    fn status_codes_follow_the_health_bit() {
        let s = StatusSnapshot {
            body: Bytes::from_static(b"{}"),
            public_body: Bytes::from_static(b"{}"),
            healthy: true,
        };
        let r = respond("/status", false, false, Some(&s), None, 0);
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()[CONTENT_TYPE], "application/json");
        assert_eq!(r.headers()[CACHE_CONTROL], "no-cache, no-store");
        assert_eq!(r.headers()[CONTENT_LENGTH], "2");
        let s = StatusSnapshot {
            healthy: false,
            ..s
        };
        assert_eq!(
            respond("/status", true, false, Some(&s), None, 0).status(),
            503
        );
        assert_eq!(
            respond("/status", false, false, None, None, 0).status(),
            503
        );
    }

    fn body_of(r: Response<Body>) -> Vec<u8> {
        use http_body_util::BodyExt;
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime");
        rt.block_on(async {
            r.into_body()
                .collect()
                .await
                .map(|c| c.to_bytes().to_vec())
                .unwrap_or_default()
        })
    }

    #[test]
    fn public_peers_get_the_public_page_only() {
        let s = StatusSnapshot {
            body: Bytes::from_static(b"{\"last_error\": \"DATABASE_URL=secret\"}"),
            public_body: Bytes::from_static(b"{\"healthy\": false}"),
            healthy: false,
        };
        let public = respond("/status", false, false, Some(&s), None, 7);
        assert_eq!(public.status(), 503);
        assert_eq!(public.headers()[CONTENT_TYPE], "application/json");
        assert_eq!(public.headers()[CACHE_CONTROL], "no-cache, no-store");
        assert_eq!(body_of(public), b"{\"healthy\": false}");
        let full = respond("/status", false, true, Some(&s), None, 7);
        assert_eq!(body_of(full), &s.body[..]);
        // Before the first snapshot: no uptime for the public either.
        let early = body_of(respond("/status", false, false, None, None, 7));
        assert_eq!(early, b"{\n  \"healthy\": false,\n  \"apps\": []\n}");
        let early = body_of(respond("/status", false, true, None, None, 7));
        assert!(String::from_utf8_lossy(&early).contains("\"uptime_secs\": 7"));
    }

    #[test]
    fn metrics_only_for_privileged_peers() {
        let m = Bytes::from_static(b"x 1\n");
        let r = respond("/metrics", false, true, None, Some(&m), 0);
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.headers()[CONTENT_TYPE],
            "text/plain; version=0.0.4; charset=utf-8"
        );
        assert_eq!(
            respond("/metrics", false, false, None, Some(&m), 0).status(),
            404
        );
        let early = respond("/metrics", false, true, None, None, 0);
        assert_eq!(
            early.status(),
            503,
            "no page yet: a failed scrape, not an empty one"
        );
        assert_eq!(early.headers()[http::header::RETRY_AFTER], "1");
        assert_eq!(respond("/other", false, true, None, None, 0).status(), 404);
        assert_eq!(
            respond("/status/", false, true, None, None, 0).status(),
            404
        );
    }
}
