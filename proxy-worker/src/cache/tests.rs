//! The cache stage end to end on in-memory bodies: lookup, ticket, tee, store, hit.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body_util::BodyExt;
use tako_ipc::{AppRoutes, RouteTable, WorkerToMaster};

use super::*;
use crate::responses::full;

fn cache(budget: u64) -> (Arc<Cache>, Arc<Mutex<Vec<WorkerToMaster>>>) {
    let sent = Arc::new(Mutex::new(Vec::new()));
    let s = Arc::clone(&sent);
    let sink: Sink = Box::new(move |m| s.lock().unwrap().push(m));
    (Arc::new(Cache::new(budget, sink)), sent)
}

fn h(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut m = HeaderMap::new();
    for (k, v) in pairs {
        m.append(HeaderName::from_static(k), HeaderValue::from_static(v));
    }
    m
}

fn upstream(
    status: u16,
    headers: &[(&'static str, &'static str)],
    body: &'static str,
) -> Response<Body> {
    let mut r = Response::new(full(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = StatusCode::from_u16(status).unwrap();
    *r.headers_mut() = h(headers);
    r
}

async fn get(c: &Arc<Cache>, method: Method, target: &str, req: &HeaderMap) -> Lookup {
    c.lookup(&method, target, req, true, "Example.com", "web")
        .await
}

/// Runs one request: a hit, or a miss answered by `resp` and read to the end.
async fn run(
    c: &Arc<Cache>,
    method: Method,
    target: &str,
    req: &HeaderMap,
    resp: Response<Body>,
) -> (bool, StatusCode, HeaderMap, Bytes) {
    let (hit, r) = match get(c, method, target, req).await {
        Lookup::Hit(r) => (true, r),
        Lookup::Forward(t) => (false, t.complete(resp, Instant::now())),
    };
    let (parts, body) = r.into_parts();
    let bytes = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    (hit, parts.status, parts.headers, bytes)
}

#[tokio::test(flavor = "current_thread")]
async fn miss_store_hit_and_cache_status() {
    let (c, _) = cache(1 << 20);
    let ok = || upstream(200, &[("cache-control", "max-age=60")], "hello");
    let (hit, _, hs, body) = run(&c, Method::GET, "/a", &HeaderMap::new(), ok()).await;
    assert!(!hit);
    assert_eq!(hs["cache-status"], "tako; fwd=uri-miss; stored");
    assert_eq!(body, "hello");
    let (hit, st, hs, body) = run(&c, Method::GET, "/a", &HeaderMap::new(), ok()).await;
    assert!(hit);
    assert_eq!(st, 200);
    assert_eq!(body, "hello");
    assert_eq!(hs["age"], "0");
    assert_eq!(hs["cache-status"], "tako; hit; ttl=59");
    // HEAD from the stored GET.
    let (hit, _, hs, body) = run(&c, Method::HEAD, "/a", &HeaderMap::new(), ok()).await;
    assert!(hit && body.is_empty());
    assert_eq!(hs["content-length"], "5");
    // Another query is another key.
    let (hit, ..) = run(&c, Method::GET, "/a?x", &HeaderMap::new(), ok()).await;
    assert!(!hit);
    let s = c.take_stats_if_dirty().unwrap();
    assert_eq!((s.hits, s.misses, s.stores, s.entries), (2, 2, 2, 2));
    assert!(c.take_stats_if_dirty().is_none());
}

#[tokio::test(flavor = "current_thread")]
async fn refused_responses_say_so_and_are_not_stored() {
    let (c, _) = cache(1 << 20);
    for resp in [
        upstream(200, &[], "no freshness"),
        upstream(
            200,
            &[("cache-control", "max-age=60"), ("set-cookie", "s=1")],
            "x",
        ),
        upstream(200, &[("cache-control", "private, max-age=60")], "x"),
    ] {
        let (hit, _, hs, _) = run(&c, Method::GET, "/r", &HeaderMap::new(), resp).await;
        assert!(!hit);
        assert_eq!(hs["cache-status"], "tako; fwd=uri-miss");
    }
    let (_, _, hs, _) = run(
        &c,
        Method::GET,
        "/r",
        &h(&[("cache-control", "no-store")]),
        upstream(200, &[("cache-control", "max-age=60")], "x"),
    )
    .await;
    assert_eq!(hs["cache-status"], "tako; fwd=bypass");
    let (hit, ..) = run(
        &c,
        Method::GET,
        "/r",
        &HeaderMap::new(),
        upstream(200, &[], ""),
    )
    .await;
    assert!(!hit, "the bypassed answer was not stored");
}

#[tokio::test(flavor = "current_thread")]
async fn unsafe_success_invalidates_and_reports() {
    let (c, sent) = cache(1 << 20);
    let ok = || upstream(200, &[("cache-control", "max-age=60")], "v");
    run(&c, Method::GET, "/items", &HeaderMap::new(), ok()).await;
    run(&c, Method::GET, "/items/7", &HeaderMap::new(), ok()).await;
    // A failed POST invalidates nothing.
    let (_, _, hs, _) = run(
        &c,
        Method::POST,
        "/items",
        &HeaderMap::new(),
        upstream(500, &[], ""),
    )
    .await;
    assert_eq!(hs["cache-status"], "tako; fwd=method");
    assert!(
        run(&c, Method::GET, "/items", &HeaderMap::new(), ok())
            .await
            .0
    );
    run(
        &c,
        Method::POST,
        "/items",
        &HeaderMap::new(),
        upstream(201, &[("location", "/items/7")], ""),
    )
    .await;
    assert!(
        !run(&c, Method::GET, "/items", &HeaderMap::new(), ok())
            .await
            .0
    );
    assert!(
        !run(&c, Method::GET, "/items/7", &HeaderMap::new(), ok())
            .await
            .0
    );
    let sent = sent.lock().unwrap();
    let [WorkerToMaster::CacheInvalidate(inv)] = sent.as_slice() else {
        panic!("one invalidation sent: {sent:?}")
    };
    assert_eq!(inv.host, "example.com");
    assert_eq!(inv.targets, vec!["/items", "/items/7"]);
}

#[tokio::test(flavor = "current_thread")]
async fn body_past_the_limit_streams_on_unstored() {
    let (c, _) = cache(64 << 20);
    let big: &'static str = Box::leak("x".repeat(MAX + 1).into_boxed_str());
    let (_, _, _, body) = run(
        &c,
        Method::GET,
        "/big",
        &HeaderMap::new(),
        upstream(200, &[("cache-control", "max-age=60")], big),
    )
    .await;
    assert_eq!(body.len(), MAX + 1);
    assert!(
        !run(
            &c,
            Method::GET,
            "/big",
            &HeaderMap::new(),
            upstream(200, &[], "")
        )
        .await
        .0
    );
}

const MAX: usize = admission::MAX_BODY_BYTES as usize;

#[tokio::test(flavor = "current_thread")]
async fn routes_change_purges_the_app() {
    let (c, _) = cache(1 << 20);
    let table = |release: &str, stopped: bool| RouteTable {
        epoch: 1,
        apps: vec![AppRoutes {
            name: "web".into(),
            routes: vec!["example.com".into()],
            release_path: release.into(),
            stopped,
            on_demand: false,
            backends: vec![],
            starting: false,
        }],
    };
    let ok = || upstream(200, &[("cache-control", "max-age=60")], "v");
    c.routes_changed(&table("/r/v1", false));
    run(&c, Method::GET, "/", &HeaderMap::new(), ok()).await;
    c.routes_changed(&table("/r/v1", false));
    assert!(run(&c, Method::GET, "/", &HeaderMap::new(), ok()).await.0);
    c.routes_changed(&table("/r/v2", false));
    assert!(!run(&c, Method::GET, "/", &HeaderMap::new(), ok()).await.0);
    c.purge_app("web");
    assert!(!run(&c, Method::GET, "/", &HeaderMap::new(), ok()).await.0);
}

#[tokio::test(flavor = "current_thread")]
async fn followers_are_served_from_the_leaders_entry() {
    let (c, _) = cache(1 << 20);
    let Lookup::Forward(leader) = get(&c, Method::GET, "/sf", &HeaderMap::new()).await else {
        panic!("first is a miss")
    };
    let c2 = Arc::clone(&c);
    let follower = tokio::spawn(async move {
        match get(&c2, Method::GET, "/sf", &HeaderMap::new()).await {
            Lookup::Hit(r) => r.headers()["cache-status"].to_str().unwrap().to_string(),
            Lookup::Forward(_) => "forwarded".to_string(),
        }
    });
    tokio::task::yield_now().await;
    let r = leader.complete(
        upstream(200, &[("cache-control", "max-age=60")], "v"),
        Instant::now(),
    );
    r.into_body().collect().await.unwrap();
    assert_eq!(follower.await.unwrap(), "tako; hit; collapsed; ttl=59");
}

#[tokio::test(flavor = "current_thread")]
async fn disabled_cache_is_invisible() {
    let (c, _) = cache(0);
    let (hit, _, hs, _) = run(
        &c,
        Method::GET,
        "/",
        &HeaderMap::new(),
        upstream(200, &[("cache-control", "max-age=60")], "v"),
    )
    .await;
    assert!(!hit && !hs.contains_key("cache-status"));
    assert!(c.take_stats_if_dirty().is_none());
}

#[tokio::test(flavor = "current_thread")]
async fn credentials_neither_read_nor_write_a_non_public_entry() {
    let (c, _) = cache(1 << 20);
    let private = || upstream(200, &[("cache-control", "max-age=60")], "anon");
    let public = || upstream(200, &[("cache-control", "public, max-age=60")], "all");
    let anon = HeaderMap::new();
    for creds in [
        h(&[("cookie", "s=alice")]),
        h(&[("authorization", "Bearer alice")]),
    ] {
        c.purge_app("web");
        // Stored for an anonymous request; a request with credentials goes upstream.
        run(&c, Method::GET, "/p", &anon, private()).await;
        let (hit, _, hs, body) = run(&c, Method::GET, "/p", &creds, private()).await;
        assert!(!hit);
        assert_eq!(body, "anon", "answered upstream");
        assert_eq!(hs["cache-status"], "tako; fwd=request");
        assert!(run(&c, Method::GET, "/p", &anon, private()).await.0);

        // A personal answer is not stored, and the URL stays cacheable for the next one.
        let (_, _, hs, _) = run(&c, Method::GET, "/q", &creds, private()).await;
        assert_eq!(hs["cache-status"], "tako; fwd=uri-miss");
        let (hit, _, hs, _) = run(&c, Method::GET, "/q", &anon, private()).await;
        assert!(!hit);
        assert_eq!(hs["cache-status"], "tako; fwd=uri-miss; stored");

        // `public` is for everyone, both ways.
        let (_, _, hs, _) = run(&c, Method::GET, "/s", &creds, public()).await;
        assert_eq!(hs["cache-status"], "tako; fwd=uri-miss; stored");
        assert!(run(&c, Method::GET, "/s", &anon, public()).await.0);
        assert!(run(&c, Method::GET, "/s", &creds, public()).await.0);
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_request_with_credentials_does_not_lead() {
    let (c, _) = cache(1 << 20);
    let Lookup::Forward(first) = get(&c, Method::GET, "/l", &h(&[("cookie", "s=1")])).await else {
        panic!("first is a miss")
    };
    // Not queued behind a fetch whose answer is most likely not shared.
    let second = tokio::time::timeout(
        std::time::Duration::from_secs(1),
        get(&c, Method::GET, "/l", &HeaderMap::new()),
    )
    .await;
    let Ok(Lookup::Forward(second)) = second else {
        panic!("the second request waited for the first, or was a hit")
    };
    drop((first, second));
}
