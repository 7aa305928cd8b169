//! Issue 5: the response cache, black-box. A small Python app counts the requests that reach it
//! (per request-target) and sets whatever response headers a test asks for in the query, so
//! each test can tell what was served from the cache and what went upstream. Documented in
//! docs/http.md, "Response cache". One worker per server: the cache is per worker, so with more
//! than one the counts would depend on which worker accepted.

use std::path::PathBuf;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use crate::common::http::{http, Request, Response};
use crate::common::{poll, Server, ServerOpts};
use crate::python_app;
use serde_json::{json, Value};

const HOST: &str = "cache.example.com";

/// Query knobs (all optional, repeatable `h`):
/// - `cc=<Cache-Control>`, `h=<Name>:<Value>`, `ct=<Content-Type>`, `status=<n>`;
/// - `size=<n>`: body of n bytes; `chunked=1`: no Content-Length, body in 64 KiB chunks;
/// - `expires_in=<s>`: `Expires` that many seconds after `Date`;
/// - `delay_ms=<n>`: sleep before answering; `echo=<request header>`: its value in the body.
///
/// Every answer carries `X-Count`: how many requests this target has had, this one included.
/// `GET /__counts` answers the counts as JSON and is not counted.
const APP_PY: &str = python_app!(
    r#"import email.utils, http.server, json, os, socketserver, threading, time, urllib.parse

lock = threading.Lock()
counts = {}

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        path, _, query = self.path.partition("?")
        if path == "/status" or path == "/__counts":
            body = b"ok" if path == "/status" else json.dumps(counts).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
            return
        with lock:
            counts[self.path] = counts.get(self.path, 0) + 1
            n = counts[self.path]
        q = urllib.parse.parse_qsl(query, keep_blank_values=True)
        get = lambda k, d=None: next((v for (kk, v) in q if kk == k), d)
        delay = int(get("delay_ms", "0"))
        if delay:
            time.sleep(delay / 1000.0)
        size = get("size")
        if size is not None:
            body = b"x" * int(size)
        else:
            echo = get("echo")
            body = json.dumps({"n": n, "method": self.command,
                               "echo": self.headers.get(echo) if echo else None}).encode()
        self.send_response(int(get("status", "200")))
        self.send_header("Content-Type", get("ct", "application/json"))
        self.send_header("X-Count", str(n))
        if get("cc") is not None:
            self.send_header("Cache-Control", get("cc"))
        if get("expires_in") is not None:
            self.send_header("Expires", email.utils.formatdate(time.time() + int(get("expires_in")), usegmt=True))
        finish(self, q, body)

    do_GET = answer
    do_HEAD = answer
    do_POST = answer
    do_PUT = answer
    do_DELETE = answer

"#
);

const APP_JSON: &str = r#"{"runtime":"node","main":"server.py","start":["python3","{main}"]}"#;

/// A server with one worker (and `args`), the counting app deployed on [`HOST`].
fn start(args: &[&str]) -> Server {
    let mut opts = ServerOpts {
        workers: 1,
        ..ServerOpts::default()
    };
    for a in args {
        opts = opts.arg(a);
    }
    let server = Server::start(opts);
    server.wait_http_ready();
    let path = write_release(&server);
    server.ok(&json!({
        "command": "deploy", "app": "web", "version": "v1",
        "path": path.display().to_string(), "routes": [HOST], "env": {},
        "instances": 1, "idle_timeout": 300
    }));
    server
}

fn write_release(server: &Server) -> PathBuf {
    crate::common::fixture::write_release_with(
        &server.data_dir,
        "web",
        "v1",
        server.deploy_owner(),
        APP_PY,
        APP_JSON,
    )
}

/// Percent-encodes a query value (everything but unreserved characters).
fn enc(v: &str) -> String {
    v.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// `path?k=v&…` with the values encoded.
fn target(path: &str, params: &[(&str, &str)]) -> String {
    let q: Vec<String> = params
        .iter()
        .map(|(k, v)| format!("{k}={}", enc(v)))
        .collect();
    if q.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", q.join("&"))
    }
}

/// A request to the app as forwarded from HTTPS by a trusted peer (so it is not redirected).
fn req(method: &str, target: &str) -> Request {
    let mut r = Request::get(HOST, target).header("X-Forwarded-Proto", "https");
    r.method = method.to_string();
    r
}

fn send(server: &Server, r: &Request) -> Response {
    http(server.http_port, r).unwrap_or_else(|e| panic!("{} {}: {e}", r.method, r.path))
}

fn get(server: &Server, target: &str) -> Response {
    send(server, &req("GET", target))
}

/// How many requests for `target` reached the app.
fn upstream_count(server: &Server, target: &str) -> u64 {
    let r = send(server, &req("GET", "/__counts"));
    assert_eq!(r.status, 200, "{}", r.text());
    let v: Value = r.json();
    v[target].as_u64().unwrap_or(0)
}

fn cache_status(r: &Response) -> &str {
    r.header("cache-status").unwrap_or("")
}

/// (name, query knobs, request headers, stored?)
type Case<'a> = (
    &'a str,
    &'a [(&'a str, &'a str)],
    &'a [(&'a str, &'a str)],
    bool,
);

#[test]
fn admission_rules_decide_what_is_stored() {
    let server = start(&[]);
    // (name, query, request headers, stored?)
    let cases: &[Case] = &[
        ("max-age", &[("cc", "max-age=60")], &[], true),
        ("s-maxage", &[("cc", "s-maxage=60")], &[], true),
        ("expires", &[("expires_in", "60")], &[], true),
        (
            "404 with freshness",
            &[("cc", "max-age=60"), ("status", "404")],
            &[],
            true,
        ),
        ("no freshness", &[], &[], false),
        ("500 without freshness", &[("status", "500")], &[], false),
        ("max-age=0", &[("cc", "max-age=0")], &[], false),
        ("bad max-age", &[("cc", "max-age=soon")], &[], false),
        ("expired Expires", &[("expires_in", "-10")], &[], false),
        ("no-store", &[("cc", "no-store, max-age=60")], &[], false),
        ("no-cache", &[("cc", "max-age=60, no-cache")], &[], false),
        (
            "no-cache=field",
            &[("cc", "max-age=60, no-cache=\"x-a\"")],
            &[],
            false,
        ),
        ("private", &[("cc", "private, max-age=60")], &[], false),
        (
            "private=field",
            &[("cc", "s-maxage=60, private=\"x-a\"")],
            &[],
            false,
        ),
        ("malformed", &[("cc", "max-age=60, x=\"open")], &[], false),
        (
            "Vary: *",
            &[("cc", "max-age=60"), ("h", "Vary:*")],
            &[],
            false,
        ),
        (
            "event stream",
            &[("cc", "max-age=60"), ("ct", "text/event-stream")],
            &[],
            false,
        ),
        (
            "invalid Age",
            &[("cc", "max-age=60"), ("h", "Age:soon")],
            &[],
            false,
        ),
        (
            "206",
            &[("cc", "max-age=60"), ("status", "206")],
            &[],
            false,
        ),
        (
            "no-store request",
            &[("cc", "max-age=60")],
            &[("Cache-Control", "no-store")],
            false,
        ),
    ];
    for (i, (name, query, headers, stored)) in cases.iter().enumerate() {
        let t = target(&format!("/rule/{i}"), query);
        let mut first = req("GET", &t);
        for (k, v) in headers.iter() {
            first = first.header(k, v);
        }
        let r1 = send(&server, &first);
        let r2 = get(&server, &t);
        let want = if *stored { 1 } else { 2 };
        assert_eq!(
            upstream_count(&server, &t),
            want,
            "{name}: upstream requests (stored: {stored}); first Cache-Status {:?}, second {:?}",
            cache_status(&r1),
            cache_status(&r2)
        );
        if *stored {
            assert_eq!(cache_status(&r1), "tako; fwd=uri-miss; stored", "{name}");
            assert!(
                cache_status(&r2).starts_with("tako; hit; ttl="),
                "{name}: {:?}",
                cache_status(&r2)
            );
            assert_eq!(r2.header("age"), Some("0"), "{name}");
            assert_eq!(r2.body, r1.body, "{name}");
        } else if headers.is_empty() {
            assert_eq!(cache_status(&r1), "tako; fwd=uri-miss", "{name}");
            assert_eq!(cache_status(&r2), "tako; fwd=uri-miss", "{name}");
        } else {
            assert_eq!(cache_status(&r1), "tako; fwd=bypass", "{name}");
        }
    }
}

#[test]
fn vary_set_cookie_authorization_head_and_conditional() {
    let server = start(&[]);

    // Vary: two variants, each served to its own kind of request.
    let t = target(
        "/vary",
        &[
            ("cc", "max-age=60"),
            ("h", "Vary:Accept-Language"),
            ("echo", "accept-language"),
        ],
    );
    let lang = |l: &str| send(&server, &req("GET", &t).header("Accept-Language", l));
    let en1 = lang("en");
    let fr1 = lang("fr");
    assert_eq!(cache_status(&fr1), "tako; fwd=vary-miss; stored");
    let en2 = lang("en");
    let fr2 = lang("fr");
    assert_eq!(en2.json()["echo"], "en");
    assert_eq!(fr2.json()["echo"], "fr");
    assert_eq!(en2.body, en1.body);
    assert_eq!(fr2.body, fr1.body);
    assert!(
        cache_status(&fr2).starts_with("tako; hit"),
        "{:?}",
        cache_status(&fr2)
    );
    assert_eq!(upstream_count(&server, &t), 2);

    // Set-Cookie is never replayed to another client.
    let t = target(
        "/cookie",
        &[("cc", "public, max-age=60"), ("h", "Set-Cookie:sid=alice")],
    );
    let alice = get(&server, &t);
    assert_eq!(alice.header("set-cookie"), Some("sid=alice"));
    let bob = get(&server, &t);
    assert_eq!(
        bob.header("x-count"),
        Some("2"),
        "bob's answer came from the app"
    );
    assert_eq!(upstream_count(&server, &t), 2);

    // Authorization: stored only with public (docs/http.md, issue 17).
    for (cc, stored) in [
        ("max-age=60", false),
        ("public, max-age=60", true),
        ("s-maxage=60", false),
        ("max-age=60, must-revalidate", false),
    ] {
        let t = target("/auth", &[("cc", cc)]);
        for _ in 0..2 {
            send(
                &server,
                &req("GET", &t).header("Authorization", "Bearer secret"),
            );
        }
        assert_eq!(
            upstream_count(&server, &t),
            if stored { 1 } else { 2 },
            "{cc}"
        );
    }

    // HEAD after GET: answered from the stored GET.
    let t = target("/head", &[("cc", "max-age=60")]);
    let g = get(&server, &t);
    let h = send(&server, &req("HEAD", &t));
    assert_eq!(h.status, 200);
    assert!(h.body.is_empty());
    assert_eq!(
        h.header("content-length"),
        Some(g.body.len().to_string().as_str())
    );
    assert!(cache_status(&h).starts_with("tako; hit"));
    assert_eq!(upstream_count(&server, &t), 1);
    // A HEAD miss is forwarded as HEAD and not stored.
    let t = target("/head-first", &[("cc", "max-age=60")]);
    let h = send(&server, &req("HEAD", &t));
    assert_eq!(cache_status(&h), "tako; fwd=uri-miss");
    get(&server, &t);
    assert_eq!(upstream_count(&server, &t), 2);

    // 304 on If-None-Match from the cache; the body-less answer keeps the validators.
    let t = target("/etag", &[("cc", "max-age=60"), ("h", "ETag:\"v1\"")]);
    get(&server, &t);
    let r = send(&server, &req("GET", &t).header("If-None-Match", "W/\"v1\""));
    assert_eq!(r.status, 304);
    assert_eq!(r.header("etag"), Some("\"v1\""));
    assert_eq!(r.header("cache-control"), Some("max-age=60"));
    assert!(r.header("age").is_some());
    assert!(cache_status(&r).starts_with("tako; hit"));
    let r = send(&server, &req("GET", &t).header("If-None-Match", "\"v2\""));
    assert_eq!(r.status, 200);
    assert_eq!(upstream_count(&server, &t), 1);
}

#[test]
fn expiry_after_max_age_and_invalidation_by_post() {
    let server = start(&[]);
    let t = target("/short", &[("cc", "max-age=1")]);
    get(&server, &t);
    let hit = get(&server, &t);
    assert!(
        cache_status(&hit).starts_with("tako; hit"),
        "{:?}",
        cache_status(&hit)
    );
    assert_eq!(upstream_count(&server, &t), 1);
    // Stale entries are never served: within a bounded wait a request goes upstream again.
    let fresh = poll(Duration::from_secs(5), Duration::from_millis(100), || {
        let r = get(&server, &t);
        (r.header("x-count") == Some("2")).then_some(r)
    })
    .expect("a request after max-age=1 reaches the app within 5 s");
    let cs = cache_status(&fresh);
    assert!(
        cs == "tako; fwd=stale; stored" || cs == "tako; fwd=uri-miss; stored",
        "{cs:?}"
    );

    // A successful POST drops the target; a failing one does not.
    let t = target("/items", &[("cc", "max-age=60")]);
    get(&server, &t);
    get(&server, &t);
    assert_eq!(upstream_count(&server, &t), 1);
    let post = send(&server, &req("POST", &t));
    assert_eq!(post.status, 200);
    assert_eq!(cache_status(&post), "tako; fwd=method");
    let after = get(&server, &t);
    assert_eq!(cache_status(&after), "tako; fwd=uri-miss; stored");
    assert_eq!(upstream_count(&server, &t), 3);
    let failing = target("/items", &[("cc", "max-age=60"), ("status", "500")]);
    get(&server, &failing);
    send(&server, &req("DELETE", &failing));
    get(&server, &failing);
    assert_eq!(
        upstream_count(&server, &failing),
        2,
        "a 500 with max-age is stored; the DELETE that failed left it"
    );
}

#[test]
fn body_limit_of_eight_mib() {
    let server = start(&[]);
    const LIMIT: usize = 8 * 1024 * 1024;
    for (name, size, chunked, stored) in [
        ("exactly 8 MiB", LIMIT, false, true),
        ("one byte over, with length", LIMIT + 1, false, false),
        ("one byte over, chunked", LIMIT + 1, true, false),
        ("small, chunked", 1000, true, true),
    ] {
        let size_s = size.to_string();
        let mut q = vec![("cc", "max-age=60"), ("size", size_s.as_str())];
        if chunked {
            q.push(("chunked", "1"));
        }
        let t = target("/big", &q);
        for _ in 0..2 {
            let r = get(&server, &t);
            assert_eq!(r.status, 200, "{name}");
            assert_eq!(r.body.len(), size, "{name}: the body streams through whole");
            assert!(r.body.iter().all(|b| *b == b'x'), "{name}");
        }
        assert_eq!(
            upstream_count(&server, &t),
            if stored { 1 } else { 2 },
            "{name}"
        );
    }
}

#[test]
fn lru_eviction_under_a_small_budget() {
    // One worker, ~4 KB: three ~1.2 KB entries fit, a fourth evicts the least recently used.
    let server = start(&["--cache-size", "4000"]);
    let t = |i: u32| {
        target(
            &format!("/lru/{i}"),
            &[("cc", "max-age=60"), ("size", "1000")],
        )
    };
    for i in 1..=3 {
        get(&server, &t(i));
    }
    assert!(cache_status(&get(&server, &t(1))).starts_with("tako; hit"));
    get(&server, &t(4));
    for i in [1, 3, 4] {
        let r = get(&server, &t(i));
        assert!(
            cache_status(&r).starts_with("tako; hit"),
            "/lru/{i}: {:?}",
            cache_status(&r)
        );
    }
    let r = get(&server, &t(2));
    assert_eq!(
        cache_status(&r),
        "tako; fwd=uri-miss; stored",
        "/lru/2 was evicted"
    );
    let counts: Vec<u64> = (1..=4).map(|i| upstream_count(&server, &t(i))).collect();
    assert_eq!(counts, vec![1, 2, 1, 1]);
    // An entry larger than the whole budget is passed through and not stored.
    let big = target("/lru/big", &[("cc", "max-age=60"), ("size", "5000")]);
    get(&server, &big);
    get(&server, &big);
    assert_eq!(upstream_count(&server, &big), 2);
}

#[test]
fn cache_size_zero_turns_the_cache_off() {
    let server = start(&["--cache-size", "0"]);
    let t = target("/off", &[("cc", "max-age=60")]);
    let r = get(&server, &t);
    get(&server, &t);
    assert_eq!(r.header("cache-status"), None);
    assert_eq!(upstream_count(&server, &t), 2);
}

/// A URL whose answer was not storable stops collapsing (hit-for-miss, docs/http.md,
/// "Concurrent misses"): concurrent misses then all reach the app while the first of them is
/// still being answered, instead of waiting for it.
#[test]
fn misses_of_an_uncacheable_url_go_upstream_side_by_side() {
    let server = Arc::new(start(&[]));
    let t = target("/uncacheable", &[("delay_ms", "1500")]);
    let first = get(&server, &t);
    assert_eq!(cache_status(&first), "tako; fwd=uri-miss");
    let answered = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let barrier = Arc::new(Barrier::new(6));
    let handles: Vec<_> = (0..6)
        .map(|_| {
            let (server, barrier, t) = (Arc::clone(&server), Arc::clone(&barrier), t.clone());
            let answered = Arc::clone(&answered);
            std::thread::spawn(move || {
                barrier.wait();
                let r = get(&server, &t);
                answered.store(true, std::sync::atomic::Ordering::SeqCst);
                r
            })
        })
        .collect();
    // All six arrive at the app before any of them is answered; collapsed, five would only
    // be sent after the first answer.
    let arrived = poll(Duration::from_secs(10), Duration::from_millis(20), || {
        (upstream_count(&server, &t) == 7).then_some(())
    });
    assert!(
        arrived.is_some(),
        "the six misses never all reached the app"
    );
    assert!(
        !answered.load(std::sync::atomic::Ordering::SeqCst),
        "a miss was answered before all six reached the app: they queued"
    );
    for h in handles {
        let r = h.join().expect("request thread");
        assert_eq!(r.status, 200);
        assert_eq!(cache_status(&r), "tako; fwd=uri-miss");
    }
}

#[test]
fn single_flight_twenty_concurrent_misses_one_upstream_request() {
    let server = Arc::new(start(&[]));
    let t = target("/flight", &[("cc", "max-age=60"), ("delay_ms", "700")]);
    let barrier = Arc::new(Barrier::new(20));
    let handles: Vec<_> = (0..20)
        .map(|_| {
            let (server, barrier, t) = (Arc::clone(&server), Arc::clone(&barrier), t.clone());
            std::thread::spawn(move || {
                barrier.wait();
                get(&server, &t)
            })
        })
        .collect();
    let answers: Vec<Response> = handles
        .into_iter()
        .map(|h| h.join().expect("request thread"))
        .collect();
    assert!(answers
        .iter()
        .all(|r| r.status == 200 && r.header("x-count") == Some("1")));
    let collapsed = answers
        .iter()
        .filter(|r| cache_status(r).starts_with("tako; hit; collapsed; ttl="))
        .count();
    assert_eq!(
        collapsed,
        19,
        "{:?}",
        answers.iter().map(cache_status).collect::<Vec<_>>()
    );
    assert_eq!(upstream_count(&server, &t), 1);
}
