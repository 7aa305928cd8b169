//! Issue 23, "Request IDs": every request carries an id, to the app, back to the client, into
//! the access log and into the server's own errors. Documented in docs/http.md, "Request IDs".
//!
//! Trust is the forwarded headers' (`--trusted-proxy`, default loopback): the harness talks
//! over loopback, so a server with the default flags sees a trusted peer, and a server started
//! with `--trusted-proxy 10.0.0.0/8` sees the same loopback client as an untrusted one. That
//! is what an internet client is to the id rules, without a network namespace.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use crate::common::http::{http, https};
use crate::common::{fixture, wait_for, Request, Response, Server, ServerOpts};
use serde_json::{json, Value};

const HOST: &str = "web.example.com";

/// Held while a test starts its server and deploys: the servers of this process share one
/// instance port block (crate::common::instance_port_offset), and a server takes the first port that
/// binds at that moment, so two deploys at once could both pick the same one.
static DEPLOYING: Mutex<()> = Mutex::new(());

/// One worker, test certificates, the app on [`HOST`] with `public/hello.txt`.
fn start(extra: &[&str]) -> Server {
    let _one_at_a_time = DEPLOYING.lock().unwrap_or_else(|e| e.into_inner());
    let mut opts = ServerOpts {
        workers: 1,
        ..ServerOpts::default()
    }
    .test_certs();
    for a in extra {
        opts = opts.arg(a);
    }
    let server = Server::start(opts);
    let owner = server.deploy_owner();
    let dir = crate::common::fixture::write_release_with(
        &server.data_dir,
        "web",
        "v1",
        owner,
        fixture::ECHO_APP_PY,
        fixture::APP_JSON,
    );
    let public = dir.join("public");
    std::fs::create_dir_all(&public).expect("public/");
    std::fs::write(public.join("hello.txt"), "hello").expect("public/hello.txt");
    crate::common::fixture::chown(&public, owner);
    crate::common::fixture::chown(&public.join("hello.txt"), owner);
    server.ok(&json!({
        "command": "deploy", "app": "web", "version": "v1",
        "path": dir.display().to_string(), "routes": [HOST], "env": {},
        "instances": 1, "idle_timeout": 300
    }));
    server
}

fn get(server: &Server, path: &str, headers: &[(&str, &str)]) -> Response {
    let mut req = Request::get(HOST, path);
    for (k, v) in headers {
        req = req.header(k, v);
    }
    https(server.tls_port, Some(HOST), &req).unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// The id the response carries, checked to be one header.
fn id_of(r: &Response) -> String {
    let ids: Vec<_> = r
        .headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("x-request-id"))
        .collect();
    assert_eq!(ids.len(), 1, "one X-Request-ID: {:?}", r.headers);
    ids[0].1.clone()
}

/// A made id: 26 characters of Crockford base32.
fn assert_made(id: &str) {
    assert_eq!(id.len(), 26, "{id:?}");
    assert!(
        id.bytes()
            .all(|c| c.is_ascii_digit() || (c.is_ascii_uppercase() && !b"ILOU".contains(&c))),
        "{id:?}"
    );
}

fn echoed(r: &Response) -> Value {
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

/// Sends raw bytes over plain HTTP and reads until the server closes.
fn raw(port: u16, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(bytes).expect("write");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn ids_reach_the_app_the_client_and_the_access_log() {
    let server = start(&[]);

    // A made id: the app sees it and the client gets the same back.
    let a = get(&server, "/a", &[]);
    let a_id = id_of(&a);
    assert_made(&a_id);
    assert_eq!(echoed(&a)["headers"]["x-request-id"], a_id.as_str());
    let b = get(&server, "/a", &[]);
    let b_id = id_of(&b);
    assert_made(&b_id);
    assert_ne!(a_id, b_id, "two requests, two ids");
    assert_eq!(echoed(&b)["headers"]["x-request-id"], b_id.as_str());
    // One worker: its ids sort in the order they were made.
    assert!(a_id < b_id, "{a_id} then {b_id}");

    // A trusted peer's valid id is kept end to end.
    let given = "f47ac10b-58cc-4372-a567-0e02b2c3d479";
    let kept = get(&server, "/a", &[("X-Request-ID", given)]);
    assert_eq!(id_of(&kept), given);
    assert_eq!(echoed(&kept)["headers"]["x-request-id"], given);

    // Too long, a space, a tab: replaced, and the app sees only the replacement.
    let long = "x".repeat(129);
    for bad in [long.as_str(), "has space", "tab\there"] {
        let r = get(&server, "/a", &[("X-Request-ID", bad)]);
        let id = id_of(&r);
        assert_made(&id);
        assert_eq!(
            echoed(&r)["headers"]["x-request-id"],
            id.as_str(),
            "{bad:?}"
        );
    }
    // Two ids are one too many: replaced.
    let r = get(
        &server,
        "/a",
        &[("X-Request-ID", "one"), ("X-Request-ID", "two")],
    );
    assert_made(&id_of(&r));

    // A cache hit carries this request's id, not the stored one.
    let first = get(&server, "/cached?cc=max-age=60", &[]);
    let hit = get(&server, "/cached?cc=max-age=60", &[]);
    assert!(
        hit.header("cache-status").unwrap_or("").contains("hit"),
        "{:?}",
        hit.headers
    );
    assert_eq!(echoed(&hit)["n"], 1, "served from the cache");
    assert_made(&id_of(&hit));
    assert_ne!(id_of(&hit), id_of(&first));
    let kept_hit = get(
        &server,
        "/cached?cc=max-age=60",
        &[("X-Request-ID", "mine")],
    );
    assert_eq!(id_of(&kept_hit), "mine");

    // The server's own answers: static file, unknown host, bad gateway, redirect,
    // tako.internal, a request refused before parsing.
    let file = get(&server, "/hello.txt", &[]);
    assert_eq!((file.status, file.text().as_str()), (200, "hello"));
    assert_made(&id_of(&file));
    let unknown = https(
        server.tls_port,
        Some(HOST),
        &Request::get("nobody.example.com", "/"),
    )
    .expect("unknown host");
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.text(), "Not Found", "the body keeps its text");
    assert_made(&id_of(&unknown));
    let bad_gateway = get(&server, "/garbage", &[("X-Request-ID", "trace-502")]);
    assert_eq!(bad_gateway.status, 502, "{}", bad_gateway.text());
    assert_eq!(id_of(&bad_gateway), "trace-502");
    let redirect = http(server.http_port, &Request::get(HOST, "/r")).expect("redirect");
    assert_eq!(redirect.status, 307);
    assert_made(&id_of(&redirect));
    let status = server.internal_status().expect("status page");
    assert_made(&id_of(&status));
    let refused = raw(server.http_port, b"NOT A REQUEST\r\n\r\n");
    assert!(refused.starts_with("HTTP/1.1 400 "), "{refused}");
    let refused_id = refused
        .lines()
        .find_map(|l| l.strip_prefix("X-Request-ID: "))
        .unwrap_or_else(|| panic!("no id in {refused:?}"));
    assert_made(refused_id);

    // Each of those requests wrote its id into its access-log line.
    for id in [
        &a_id,
        &b_id,
        given,
        &id_of(&hit),
        &id_of(&unknown),
        "trace-502",
    ] {
        let needle = format!("request_id={id}");
        wait_for(Duration::from_secs(10), &needle, || {
            server
                .stderr_text()
                .lines()
                .any(|l| l.contains("tako::access") && l.contains(&needle))
                .then_some(())
        });
    }
}

#[test]
fn an_untrusted_peers_id_is_replaced() {
    // Loopback is outside the trusted ranges here.
    let server = start(&["--trusted-proxy", "10.0.0.0/8"]);
    let r = get(&server, "/a", &[("X-Request-ID", "spoofed")]);
    let id = id_of(&r);
    assert_made(&id);
    let app = echoed(&r);
    assert_eq!(app["headers"]["x-request-id"], id.as_str(), "{app}");
    let unknown = https(
        server.tls_port,
        Some(HOST),
        &Request::get("nobody.example.com", "/").header("X-Request-ID", "spoofed"),
    )
    .expect("unknown host");
    assert_eq!(unknown.status, 404);
    assert_made(&id_of(&unknown));
}

#[test]
fn http2_requests_carry_ids_both_ways() {
    let has_h2_curl = Command::new("curl")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("HTTP2"))
        .unwrap_or(false);
    if !has_h2_curl {
        eprintln!("SKIPPED: this test needs curl with HTTP/2 support (nghttp2) on PATH");
        return;
    }
    let server = start(&[]);
    let curl = |path: &str, headers: &[&str]| {
        let mut cmd = Command::new("curl");
        cmd.args(["--http2", "-k", "-sS", "-i", "--max-time", "10"])
            .arg("--resolve")
            .arg(format!("{HOST}:{}:127.0.0.1", server.tls_port));
        for h in headers {
            cmd.arg("-H").arg(h);
        }
        let out = cmd
            .arg(format!("https://{HOST}:{}{path}", server.tls_port))
            .output()
            .expect("run curl");
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").expect("a head");
        assert!(head.starts_with("HTTP/2 "), "{head}");
        let id = head
            .lines()
            .find_map(|l| l.strip_prefix("x-request-id: "))
            .unwrap_or_else(|| panic!("no id in {head}"))
            .to_string();
        (id, body.to_string())
    };
    let (id, body) = curl("/h2", &[]);
    assert_made(&id);
    let app: Value = serde_json::from_str(&body).expect("the app's JSON");
    assert_eq!(app["headers"]["x-request-id"], id.as_str());
    let (id, _) = curl("/h2", &["X-Request-ID: h2-kept"]);
    assert_eq!(id, "h2-kept");
}
