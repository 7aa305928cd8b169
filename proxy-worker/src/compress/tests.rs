use std::collections::VecDeque;
use std::io::Read;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{HeaderName, CONTENT_TYPE};
use http::StatusCode;
use http_body_util::BodyExt;
use hyper::body::{Body as HttpBody, Frame};

use super::*;
use crate::body::BoxError;
use crate::responses::full;

fn json(n: usize) -> Vec<u8> {
    let mut out = b"[".to_vec();
    let mut i = 0;
    while out.len() < n {
        out.extend_from_slice(
            format!("{{\"id\":{i},\"name\":\"item {i}\",\"ok\":true}},").as_bytes(),
        );
        i += 1;
    }
    out.truncate(n - 1);
    out.push(b']');
    out
}

fn decode(coding: &str, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match coding {
        "gzip" => flate2::read::GzDecoder::new(bytes).read_to_end(&mut out),
        "br" => brotli::Decompressor::new(bytes, 4096).read_to_end(&mut out),
        other => panic!("coding {other}"),
    }
    .expect("decodes");
    out
}

fn accept(value: &'static str) -> Accept {
    let mut h = HeaderMap::new();
    h.insert(ACCEPT_ENCODING, HeaderValue::from_static(value));
    request_accepts(true, &Method::GET, &h)
}

fn response(headers: &[(&'static str, &'static str)], body: Body) -> Response<Body> {
    let mut resp = Response::new(body);
    for (k, v) in headers {
        resp.headers_mut()
            .append(HeaderName::from_static(k), HeaderValue::from_static(v));
    }
    resp
}

#[test]
fn requests_that_get_identity() {
    let mut h = HeaderMap::new();
    h.insert(ACCEPT_ENCODING, HeaderValue::from_static("gzip, br"));
    assert_eq!(
        request_accepts(true, &Method::GET, &h).best(&ON_THE_FLY),
        Coding::Brotli
    );
    assert_eq!(request_accepts(false, &Method::GET, &h), Accept::OFF, "off");
    assert_eq!(request_accepts(true, &Method::HEAD, &h), Accept::IDENTITY);
    h.insert(RANGE, HeaderValue::from_static("bytes=0-5"));
    assert_eq!(request_accepts(true, &Method::GET, &h), Accept::IDENTITY);
    assert_eq!(coding_for(&h), Coding::Identity);
    assert_eq!(coding_for(&HeaderMap::new()), Coding::Identity);
}

#[tokio::test(flavor = "current_thread")]
async fn a_json_body_round_trips_in_each_coding() {
    let body = json(16 * 1024);
    for (value, token) in [("br", "br"), ("gzip", "gzip")] {
        let resp = response(
            &[
                ("content-type", "application/json"),
                ("content-length", "16384"),
                ("etag", "\"v1\""),
            ],
            full(Bytes::from(body.clone())),
        );
        let resp = apply(resp, &accept(value));
        let h = resp.headers().clone();
        assert_eq!(h[CONTENT_ENCODING], token);
        assert!(!h.contains_key(CONTENT_LENGTH));
        assert_eq!(h[VARY], "Accept-Encoding");
        assert_eq!(h[ETAG], "W/\"v1\"");
        assert_eq!(
            resp.extensions().get::<Negotiated>(),
            Some(&Negotiated(if token == "br" {
                Coding::Brotli
            } else {
                Coding::Gzip
            }))
        );
        let encoded = resp.into_body().collect().await.unwrap().to_bytes();
        assert!(encoded.len() < body.len() / 4, "{token}: {}", encoded.len());
        assert_eq!(decode(token, &encoded), body);
    }
}

#[tokio::test(flavor = "current_thread")]
async fn identity_answers_still_vary() {
    let body = Bytes::from(json(4096));
    let resp = response(
        &[("content-type", "text/plain"), ("vary", "Cookie")],
        full(body.clone()),
    );
    let resp = apply(resp, &Accept::IDENTITY);
    assert!(!resp.headers().contains_key(CONTENT_ENCODING));
    let vary: Vec<_> = resp.headers().get_all(VARY).iter().collect();
    assert_eq!(vary, ["Cookie", "Accept-Encoding"]);
    assert_eq!(
        resp.extensions().get::<Negotiated>(),
        Some(&Negotiated(Coding::Identity))
    );
    assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), body);

    // The app's own Vary on Accept-Encoding: its variants, no marker for the cache.
    let resp = response(
        &[("content-type", "text/plain"), ("vary", "accept-encoding")],
        full(body.clone()),
    );
    let resp = apply(resp, &accept("gzip"));
    assert_eq!(resp.headers()[CONTENT_ENCODING], "gzip");
    assert_eq!(resp.headers().get_all(VARY).iter().count(), 1);
    assert!(resp.extensions().get::<Negotiated>().is_none());

    // Off: untouched, no Vary.
    let resp = response(&[("content-type", "text/plain")], full(body.clone()));
    let resp = apply(resp, &Accept::OFF);
    assert!(!resp.headers().contains_key(VARY) && resp.extensions().get::<Negotiated>().is_none());

    // Not eligible: untouched, no Vary.
    let resp = response(&[("content-type", "image/png")], full(body));
    let resp = apply(resp, &accept("gzip"));
    assert!(!resp.headers().contains_key(VARY) && !resp.headers().contains_key(CONTENT_ENCODING));
    let resp = response(
        &[
            (CONTENT_TYPE.as_str(), "text/plain"),
            ("content-length", "10"),
        ],
        full(Bytes::from_static(b"0123456789")),
    );
    let resp = apply(resp, &accept("gzip"));
    assert!(!resp.headers().contains_key(VARY));
}

/// Frames handed out one per poll, with a `Pending` before each (a slow upstream).
struct Trickle {
    frames: VecDeque<Bytes>,
    ready: bool,
}

impl HttpBody for Trickle {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if !self.ready {
            self.ready = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.ready = false;
        Poll::Ready(self.frames.pop_front().map(|b| Ok(Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty() && self.ready
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_stream_goes_out_as_it_comes() {
    let events: Vec<Bytes> = (0..5)
        .map(|i| Bytes::from(format!("line {i}: {}\n", "x".repeat(300))))
        .collect();
    for coding in ON_THE_FLY {
        let inner = Trickle {
            frames: events.iter().cloned().collect(),
            ready: false,
        };
        let mut body = Encoder::wrap(
            http_body_util::BodyExt::boxed_unsync(inner),
            coding,
            Permit::take().unwrap(),
        );
        // Each input frame is followed by a Pending of the inner body: the encoder flushes,
        // so every line can be decoded before the next one is sent.
        let mut seen = Vec::new();
        let mut frames = 0;
        while let Some(frame) = body.frame().await {
            seen.extend_from_slice(&frame.unwrap().into_data().unwrap());
            frames += 1;
        }
        assert!(frames > events.len(), "{coding:?}: {frames} frames");
        assert!(body.is_end_stream());
        let all: Vec<u8> = events.iter().flat_map(|b| b.to_vec()).collect();
        assert_eq!(decode(coding.token(), &seen), all);
    }
}

/// One data frame, then a failure (an instance that dies mid-body).
struct Broken(u8);

impl HttpBody for Broken {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.0 += 1;
        match self.0 {
            1 => Poll::Ready(Some(Ok(Frame::data(Bytes::from(json(2048)))))),
            _ => Poll::Ready(Some(Err("cut".into()))),
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn an_upstream_error_ends_the_stream_with_it() {
    for coding in ON_THE_FLY {
        let mut body = Encoder::wrap(
            http_body_util::BodyExt::boxed_unsync(Broken(0)),
            coding,
            Permit::take().unwrap(),
        );
        let mut error = false;
        while let Some(frame) = body.frame().await {
            error |= frame.is_err();
        }
        assert!(error, "{coding:?}");
        assert!(body.is_end_stream());
    }
}

#[test]
fn status_is_looked_at() {
    let mut resp = response(
        &[("content-type", "text/plain")],
        full(Bytes::from(json(2048))),
    );
    *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
    let resp = apply(resp, &accept("gzip"));
    assert!(!resp.headers().contains_key(CONTENT_ENCODING));
}
