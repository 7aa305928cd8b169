//! Responses the worker generates itself: the error texts of docs/http.md, "Error responses",
//! and the small helpers every generated response goes through (exact length, no body for
//! HEAD).

use bytes::Bytes;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE};
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};

use crate::body::Body;

/// Every error the worker generates, with the status and body of the spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Canned {
    BadRequest,
    NotFound,
    TokenNotFound,
    PayloadTooLarge,
    UriTooLong,
    BadGateway,
    AppFailedToStart,
    NoHealthyBackend,
    TooManyWaiting,
    GatewayTimeout,
    StartupTimedOut,
    RequestTimeout,
    HeaderFieldsTooLarge,
    StaticReadFailed,
    /// A per-client limit (docs/limits.md, "Per-client limits"); sent with `Retry-After`.
    TooManyRequests,
}

impl Canned {
    pub fn status(self) -> StatusCode {
        match self {
            Canned::BadRequest => StatusCode::BAD_REQUEST,
            Canned::NotFound | Canned::TokenNotFound => StatusCode::NOT_FOUND,
            Canned::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Canned::UriTooLong => StatusCode::URI_TOO_LONG,
            Canned::BadGateway | Canned::AppFailedToStart => StatusCode::BAD_GATEWAY,
            Canned::NoHealthyBackend | Canned::TooManyWaiting => StatusCode::SERVICE_UNAVAILABLE,
            Canned::GatewayTimeout | Canned::StartupTimedOut => StatusCode::GATEWAY_TIMEOUT,
            Canned::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Canned::HeaderFieldsTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Canned::StaticReadFailed => StatusCode::INTERNAL_SERVER_ERROR,
            Canned::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    pub fn body(self) -> &'static str {
        match self {
            Canned::BadRequest => "Bad Request",
            Canned::NotFound => "Not Found",
            Canned::TokenNotFound => "Token not found",
            Canned::PayloadTooLarge => "Payload Too Large",
            Canned::UriTooLong => "URI Too Long",
            Canned::BadGateway => "Bad Gateway",
            Canned::AppFailedToStart => "App failed to start",
            Canned::NoHealthyBackend => "No healthy backend",
            Canned::TooManyWaiting => "App is starting; too many waiting requests",
            Canned::GatewayTimeout => "Gateway Timeout",
            Canned::StartupTimedOut => "App startup timed out",
            Canned::RequestTimeout => "Request Timeout",
            Canned::HeaderFieldsTooLarge => "Request Header Fields Too Large",
            Canned::StaticReadFailed => "Static asset read failed",
            Canned::TooManyRequests => "Too Many Requests",
        }
    }

    /// The response: `text/plain`, exact length, `Cache-Control: no-store`.
    pub fn response(self, head: bool) -> Response<Body> {
        let mut resp = fixed(
            self.status(),
            "text/plain",
            "no-store",
            Bytes::from_static(self.body().as_bytes()),
            head,
        );
        // After a parse error or a limit breach the connection is in an unknown state.
        if matches!(
            self,
            Canned::BadRequest
                | Canned::UriTooLong
                | Canned::PayloadTooLarge
                | Canned::HeaderFieldsTooLarge
                | Canned::RequestTimeout
        ) {
            resp.headers_mut()
                .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

impl Canned {
    /// The whole HTTP/1.1 response as bytes, with `Connection: close`: written by the
    /// connection guard, which answers before hyper ever sees the request. It carries a
    /// request id like every other answer (docs/http.md, "Request IDs").
    pub fn raw_close(self, head: bool, request_id: &HeaderValue) -> Vec<u8> {
        let status = self.status();
        let body = self.body();
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\nX-Request-ID: ",
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            body.len()
        )
        .into_bytes();
        out.extend_from_slice(request_id.as_bytes());
        out.extend_from_slice(b"\r\n\r\n");
        if !head {
            out.extend_from_slice(body.as_bytes());
        }
        out
    }
}

/// A complete response with a known body. HEAD keeps the headers (length included) and
/// drops the body.
pub fn fixed(
    status: StatusCode,
    content_type: &'static str,
    cache_control: &'static str,
    body: Bytes,
    head: bool,
) -> Response<Body> {
    let len = body.len();
    let body = if head { empty() } else { full(body) };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(CACHE_CONTROL, HeaderValue::from_static(cache_control));
    resp
}

pub fn full(bytes: Bytes) -> Body {
    Full::new(bytes)
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn collect(resp: Response<Body>) -> (StatusCode, http::HeaderMap, Bytes) {
        let (parts, body) = resp.into_parts();
        let bytes = body
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        (parts.status, parts.headers, bytes)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn every_canned_error_has_the_spec_shape() {
        let all = [
            (Canned::BadRequest, 400, "Bad Request"),
            (Canned::NotFound, 404, "Not Found"),
            (Canned::TokenNotFound, 404, "Token not found"),
            (Canned::PayloadTooLarge, 413, "Payload Too Large"),
            (Canned::UriTooLong, 414, "URI Too Long"),
            (Canned::BadGateway, 502, "Bad Gateway"),
            (Canned::AppFailedToStart, 502, "App failed to start"),
            (Canned::NoHealthyBackend, 503, "No healthy backend"),
            (
                Canned::TooManyWaiting,
                503,
                "App is starting; too many waiting requests",
            ),
            (Canned::GatewayTimeout, 504, "Gateway Timeout"),
            (Canned::StartupTimedOut, 504, "App startup timed out"),
            (Canned::RequestTimeout, 408, "Request Timeout"),
            (
                Canned::HeaderFieldsTooLarge,
                431,
                "Request Header Fields Too Large",
            ),
            (Canned::StaticReadFailed, 500, "Static asset read failed"),
            (Canned::TooManyRequests, 429, "Too Many Requests"),
        ];
        for (c, status, text) in all {
            let (s, h, b) = collect(c.response(false)).await;
            assert_eq!(s.as_u16(), status);
            assert_eq!(b, text.as_bytes());
            assert_eq!(h[CONTENT_TYPE], "text/plain");
            assert_eq!(h[CACHE_CONTROL], "no-store");
            assert_eq!(h[CONTENT_LENGTH], text.len().to_string().as_str());
            let (s, h, b) = collect(c.response(true)).await;
            assert_eq!(s.as_u16(), status);
            assert!(b.is_empty(), "HEAD has no body");
            assert_eq!(h[CONTENT_LENGTH], text.len().to_string().as_str());
        }
    }

    #[test]
    fn raw_close_carries_the_request_id() {
        let id = HeaderValue::from_static("01ARZ3NDEKTSV4RRFFQ69G5FAV");
        let raw = Canned::BadRequest.raw_close(false, &id);
        let text = std::str::from_utf8(&raw).unwrap();
        assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text}");
        assert!(
            text.contains("\r\nX-Request-ID: 01ARZ3NDEKTSV4RRFFQ69G5FAV\r\n"),
            "{text}"
        );
        assert!(text.ends_with("\r\n\r\nBad Request"), "{text}");
        let raw = Canned::RequestTimeout.raw_close(true, &id);
        assert!(raw.ends_with(b"\r\n\r\n"));
    }
}
