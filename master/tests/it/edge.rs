//! Issue 4, the edge: static files and traversal attempts, WebSocket and SSE passthrough,
//! smuggling and header limits, certificates dropped into certs/ and self-signed ones for
//! private hosts, the redirect, forwarded headers from trusted and untrusted peers. Documented
//! in docs/http.md and docs/tls.md.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common::fixture::chown;
use crate::common::http::{http, https};
use crate::common::{wait_for, Request, Response, Server, ServerOpts};
use crate::python_app;
use serde_json::{json, Value};

/// An app for the edge: `/status` for probes, `/sse` streams two events with a pause the test
/// controls, `/ws` answers a WebSocket handshake and echoes raw bytes, anything else echoes
/// the request as JSON (path and headers).
const EDGE_APP: &str = python_app!(
    r#"import base64, hashlib, http.server, json, os, socketserver, time

GO = os.environ.get("SSE_GO_FILE", "")

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def send_json(self, status, obj):
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self):
        path = self.path.split("?")[0]
        if path == "/status":
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")
            return
        if path == "/sse":
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            def chunk(data):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()
            chunk(b"data: one\n\n")
            deadline = time.time() + 30
            while GO and not os.path.exists(GO) and time.time() < deadline:
                time.sleep(0.05)
            chunk(b"data: two\n\n")
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
            return
        if path == "/ws" and self.headers.get("Upgrade", "").lower() == "websocket":
            key = self.headers.get("Sec-WebSocket-Key", "")
            accept = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
            self.wfile.write(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n" % accept).encode())
            self.wfile.flush()
            conn = self.connection
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                conn.sendall(data)
            self.close_connection = True
            return
        self.send_json(200, {"path": self.path, "method": self.command, "headers": {k.lower(): v for k, v in self.headers.items()}})

    do_HEAD = do_GET

    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        self.send_json(200, {"path": self.path, "method": "POST", "body": body.decode("latin-1")})

"#
);

const APP_JSON: &str = r#"{"runtime":"node","main":"server.py","start":["python3","{main}"]}"#;

/// Writes a release of the edge app with `public/` files, owned like an upload.
fn edge_release(server: &Server, app: &str, version: &str, public: &[(&str, &[u8])]) -> PathBuf {
    let owner = server.deploy_owner();
    let app_dir = server.data_dir.join("apps").join(app);
    let dir = app_dir.join("releases").join(version);
    fs::create_dir_all(&dir).expect("create the release");
    fs::write(dir.join("server.py"), EDGE_APP).expect("write server.py");
    fs::write(dir.join("app.json"), APP_JSON).expect("write app.json");
    fs::write(dir.join("secret.txt"), "top secret").expect("write secret.txt");
    for (rel, content) in public {
        let p = dir.join("public").join(rel);
        fs::create_dir_all(p.parent().expect("parent")).expect("create public dirs");
        fs::write(&p, content).expect("write a public file");
    }
    let mut paths = vec![app_dir.clone(), app_dir.join("releases")];
    collect(&dir, &mut paths);
    for p in paths {
        let mode = if p.is_dir() { 0o755 } else { 0o644 };
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).expect("chmod");
        chown(&p, owner);
    }
    dir
}

fn collect(p: &Path, out: &mut Vec<PathBuf>) {
    out.push(p.to_path_buf());
    if p.is_dir() && !p.is_symlink() {
        for e in fs::read_dir(p).expect("read dir").flatten() {
            collect(&e.path(), out);
        }
    }
}

fn deploy(server: &Server, app: &str, path: &Path, routes: &[&str], env: Value) -> Value {
    server.ok(&json!({
        "command": "deploy", "app": app, "version": "v1",
        "path": path.display().to_string(), "routes": routes, "env": env,
        "instances": 1, "idle_timeout": 300
    }))
}

/// A routed request over plain HTTP from a trusted peer claiming HTTPS, with extra headers.
fn get(server: &Server, host: &str, path: &str, headers: &[(&str, &str)]) -> Response {
    let mut req = Request::get(host, path).header("X-Forwarded-Proto", "https");
    for (k, v) in headers {
        req = req.header(k, v);
    }
    http(server.http_port, &req).expect("request")
}

fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    s.set_nodelay(true).expect("nodelay");
    s
}

/// Sends raw bytes and reads until the server closes.
fn raw(port: u16, bytes: &[u8]) -> String {
    eprintln!(
        "raw request: {:?}",
        String::from_utf8_lossy(&bytes[..bytes.len().min(120)])
    );
    let mut s = connect(port);
    s.write_all(bytes).expect("write");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn assert_error(answer: &str, status_line: &str, body: &str) {
    assert!(answer.starts_with(status_line), "{answer:?}");
    let lower = answer.to_ascii_lowercase();
    assert!(lower.contains("content-type: text/plain\r\n"), "{answer:?}");
    assert!(lower.contains("cache-control: no-store\r\n"), "{answer:?}");
    assert!(lower.contains("connection: close\r\n"), "{answer:?}");
    assert!(
        lower.contains(&format!("content-length: {}\r\n", body.len())),
        "{answer:?}"
    );
    assert!(answer.ends_with(&format!("\r\n\r\n{body}")), "{answer:?}");
}

fn status_ok(server: &Server) {
    let r = server.internal_status().expect("status request");
    assert!(
        r.status == 200 || r.status == 503,
        "status page answers: {}",
        r.status
    );
}

#[test]
fn a_public_dir_created_in_a_live_release_is_served_soon() {
    // docs/http.md, "Static files": a release seen without public/ is looked at again
    // within a second, so an answer from the app does not hide a file added later. One
    // worker: every request sees the same memo.
    let server = Server::start(ServerOpts {
        workers: 1,
        ..ServerOpts::default()
    });
    let release = edge_release(&server, "late", "v1", &[]);
    deploy(&server, "late", &release, &["late.example.com"], json!({}));
    let r = get(&server, "late.example.com", "/late.txt", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.text().contains("\"path\""),
        "the app answers: {}",
        r.text()
    );

    let public = release.join("public");
    fs::create_dir(&public).expect("create public/");
    fs::write(public.join("late.txt"), "from public").expect("write a public file");
    fs::set_permissions(&public, fs::Permissions::from_mode(0o755)).expect("chmod public/");
    fs::set_permissions(public.join("late.txt"), fs::Permissions::from_mode(0o644))
        .expect("chmod the file");
    let owner = server.deploy_owner();
    chown(&public, owner);
    chown(&public.join("late.txt"), owner);
    wait_for(Duration::from_secs(10), "the file from public/", || {
        let r = get(&server, "late.example.com", "/late.txt", &[]);
        (r.status == 200 && r.text() == "from public").then_some(())
    });
}

#[test]
fn static_files_follow_the_rules_and_never_leave_public() {
    let server = Server::start_default();
    let data: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
    let release = edge_release(
        &server,
        "site",
        "v1",
        &[
            ("index.html", b"<h1>home</h1>"),
            ("assets/main.js", b"console.log(1)"),
            ("img/LOGO.PNG", b"\x89PNG"),
            ("data.bin", &data),
            ("v1.0/index.html", b"versioned index"),
            ("a b.txt", b"spaced"),
            ("locked.txt", b"nobody may read this"),
        ],
    );
    std::os::unix::fs::symlink("../secret.txt", release.join("public/leak.txt")).expect("symlink");
    fs::set_permissions(
        release.join("public/locked.txt"),
        fs::Permissions::from_mode(0o000),
    )
    .expect("chmod locked");
    deploy(
        &server,
        "site",
        &release,
        &["static.example.com", "example.com/app/*"],
        json!({}),
    );

    let r = get(&server, "static.example.com", "/assets/main.js", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "console.log(1)");
    assert_eq!(
        r.header("content-type"),
        Some("application/javascript; charset=utf-8")
    );
    assert_eq!(r.header("content-length"), Some("14"));
    assert_eq!(r.header("accept-ranges"), Some("bytes"));
    assert_eq!(r.header("cache-control"), Some("public, max-age=3600"));
    let mtime = fs::metadata(release.join("public/assets/main.js"))
        .expect("stat")
        .modified()
        .expect("mtime")
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after epoch")
        .as_secs();
    let etag = format!("\"14-{mtime}\"");
    assert_eq!(r.header("etag"), Some(etag.as_str()));
    let last_modified = r
        .header("last-modified")
        .expect("Last-Modified")
        .to_string();
    assert!(last_modified.ends_with(" GMT"), "{last_modified}");

    // Prefix stripping: example.com/app/* tries /app/assets/main.js, then /assets/main.js.
    let r = get(&server, "example.com", "/app/assets/main.js", &[]);
    assert_eq!((r.status, r.text()), (200, "console.log(1)".to_string()));

    // HEAD: headers, no body.
    let mut head =
        Request::get("static.example.com", "/assets/main.js").header("X-Forwarded-Proto", "https");
    head.method = "HEAD".into();
    let r = http(server.http_port, &head).expect("HEAD");
    assert_eq!((r.status, r.header("content-length")), (200, Some("14")));
    assert!(r.body.is_empty());

    // Conditional requests.
    for inm in [
        etag.clone(),
        format!("W/{etag}"),
        format!("\"x\", {etag}"),
        "*".to_string(),
    ] {
        let r = get(
            &server,
            "static.example.com",
            "/assets/main.js",
            &[("If-None-Match", &inm)],
        );
        assert_eq!(r.status, 304, "If-None-Match {inm}");
        assert_eq!(r.header("etag"), Some(etag.as_str()));
        assert_eq!(r.header("cache-control"), Some("public, max-age=3600"));
        assert!(r.header("last-modified").is_some());
    }
    let r = get(
        &server,
        "static.example.com",
        "/assets/main.js",
        &[("If-None-Match", "\"other\"")],
    );
    assert_eq!(r.status, 200);
    let r = get(
        &server,
        "static.example.com",
        "/assets/main.js",
        &[("If-Modified-Since", &last_modified)],
    );
    assert_eq!(r.status, 304);
    let r = get(
        &server,
        "static.example.com",
        "/assets/main.js",
        &[("If-Modified-Since", "Thu, 01 Jan 1970 00:00:00 GMT")],
    );
    assert_eq!(r.status, 200);
    // If-None-Match wins over If-Modified-Since.
    let r = get(
        &server,
        "static.example.com",
        "/assets/main.js",
        &[
            ("If-None-Match", "\"other\""),
            ("If-Modified-Since", &last_modified),
        ],
    );
    assert_eq!(r.status, 200);

    // Ranges.
    let r = get(
        &server,
        "static.example.com",
        "/data.bin",
        &[("Range", "bytes=0-4")],
    );
    assert_eq!(r.status, 206);
    assert_eq!(r.header("content-range"), Some("bytes 0-4/1000"));
    assert_eq!(r.body, &data[..5]);
    let r = get(
        &server,
        "static.example.com",
        "/data.bin",
        &[("Range", "bytes=-10")],
    );
    assert_eq!(
        (r.status, r.header("content-range")),
        (206, Some("bytes 990-999/1000"))
    );
    assert_eq!(r.body, &data[990..]);
    let r = get(
        &server,
        "static.example.com",
        "/data.bin",
        &[("Range", "bytes=995-")],
    );
    assert_eq!((r.status, r.body.len()), (206, 5));
    let r = get(
        &server,
        "static.example.com",
        "/data.bin",
        &[("Range", "bytes=1000-")],
    );
    assert_eq!(
        (r.status, r.header("content-range")),
        (416, Some("bytes */1000"))
    );
    assert!(r.body.is_empty());
    let r = get(
        &server,
        "static.example.com",
        "/data.bin",
        &[("Range", "bytes=0-1,5-6")],
    );
    assert_eq!(
        (r.status, r.body.len()),
        (200, 1000),
        "several ranges: the whole file"
    );
    let data_etag = get(&server, "static.example.com", "/data.bin", &[])
        .header("etag")
        .map(str::to_string)
        .expect("etag");
    let r = get(
        &server,
        "static.example.com",
        "/data.bin",
        &[("Range", "bytes=0-1"), ("If-Range", "\"stale\"")],
    );
    assert_eq!(
        (r.status, r.body.len()),
        (200, 1000),
        "If-Range mismatch: full answer"
    );
    let r = get(
        &server,
        "static.example.com",
        "/data.bin",
        &[("Range", "bytes=0-1"), ("If-Range", &data_etag)],
    );
    assert_eq!(r.status, 206);

    // MIME by lower-cased extension; directory index; percent-decoding.
    let r = get(&server, "static.example.com", "/img/LOGO.PNG", &[]);
    assert_eq!(
        (r.status, r.header("content-type")),
        (200, Some("image/png"))
    );
    let r = get(&server, "static.example.com", "/v1.0", &[]);
    assert_eq!((r.status, r.text()), (200, "versioned index".to_string()));
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    let r = get(&server, "static.example.com", "/a%20b.txt", &[]);
    assert_eq!((r.status, r.text()), (200, "spaced".to_string()));

    // Traversal attempts: 400, never the file.
    for path in [
        "/../secret.txt",
        "/%2e%2e/secret.txt",
        "/assets/..%2F..%2Fsecret.txt",
        "/assets/%2E%2E/%2e%2e/secret.txt",
        "/a%00.txt",
        "/..%5csecret.txt",
        "/assets%5cmain.js",
    ] {
        let r = get(&server, "static.example.com", path, &[]);
        assert_eq!(
            (r.status, r.text()),
            (400, "Bad Request".to_string()),
            "{path}"
        );
    }
    // An encoded slash is not a file: the app answers. So does a symlink out of public/.
    for path in [
        "/assets%2Fmain.js",
        "/leak.txt",
        "/missing.js",
        "/secret.txt",
    ] {
        let r = get(&server, "static.example.com", path, &[]);
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.json()["path"], json!(path), "{path} reaches the app");
        assert!(!r.text().contains("top secret"));
    }
    // Not GET/HEAD, or no dot in the last segment: the app.
    let mut post =
        Request::get("static.example.com", "/assets/main.js").header("X-Forwarded-Proto", "https");
    post.method = "POST".into();
    post.body = b"x".to_vec();
    assert_eq!(
        http(server.http_port, &post).expect("POST").json()["method"],
        json!("POST")
    );
    let r = get(&server, "static.example.com", "/assets", &[]);
    assert_eq!(r.json()["path"], json!("/assets"));

    // A file the worker cannot read.
    if crate::common::users::is_root() {
        let r = get(&server, "static.example.com", "/locked.txt", &[]);
        assert_eq!(
            (r.status, r.text()),
            (500, "Static asset read failed".to_string())
        );
        assert_eq!(r.header("content-type"), Some("text/plain"));
    }

    // A stopped app serves nothing, static files included.
    server.ok(&json!({"command":"stop","app":"site"}));
    let r = wait_for(
        Duration::from_secs(10),
        "the stop to reach the workers",
        || {
            let r = get(&server, "static.example.com", "/assets/main.js", &[]);
            (r.status == 503).then_some(r)
        },
    );
    assert_eq!(r.text(), "No healthy backend");
}

/// Reads an HTTP/1.1 response head from a stream, byte by byte (the rest stays unread).
fn read_head<R: Read>(r: &mut R) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match r.read(&mut b) {
            Ok(1) => head.push(b[0]),
            other => panic!(
                "head ended early ({other:?}): {:?}",
                String::from_utf8_lossy(&head)
            ),
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

fn read_exact_text<R: Read>(r: &mut R, n: usize) -> String {
    let mut buf = vec![0u8; n];
    r.read_exact(&mut buf).expect("read echo");
    String::from_utf8_lossy(&buf).into_owned()
}

#[test]
fn websocket_echo_and_sse_stream_pass_through_unbuffered() {
    let server = Server::start_default();
    let knobs = server.knob_dir();
    let go = knobs.join("sse-go");
    let release = edge_release(&server, "live", "v1", &[]);
    deploy(
        &server,
        "live",
        &release,
        &["live.example.com"],
        json!({"SSE_GO_FILE": go.display().to_string()}),
    );

    // WebSocket handshake through the proxy; the key/accept pair is RFC 6455's example.
    let mut ws = connect(server.http_port);
    ws.write_all(
        b"GET /ws HTTP/1.1\r\nHost: live.example.com\r\nX-Forwarded-Proto: https\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .expect("handshake");
    let head = read_head(&mut ws);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("upgrade: websocket\r\n"), "{head}");
    assert!(lower.contains("connection: upgrade\r\n"), "{head}");
    assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
    ws.write_all(b"hello").expect("write");
    assert_eq!(read_exact_text(&mut ws, 5), "hello");

    // Other requests keep flowing, and a route change (another app's deploy) leaves the
    // tunnel alone.
    status_ok(&server);
    let other = edge_release(&server, "other", "v1", &[]);
    deploy(&server, "other", &other, &["other.example.com"], json!({}));
    assert_eq!(get(&server, "other.example.com", "/x", &[]).status, 200);
    ws.write_all(b"still here")
        .expect("write after the route change");
    assert_eq!(read_exact_text(&mut ws, 10), "still here");
    drop(ws);

    // SSE: the first event arrives while the app is still waiting to send the second.
    let mut sse = connect(server.http_port);
    sse.write_all(b"GET /sse HTTP/1.1\r\nHost: live.example.com\r\nX-Forwarded-Proto: https\r\nConnection: close\r\n\r\n")
        .expect("request");
    let mut reader = BufReader::new(sse);
    let head = read_head(&mut reader);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/event-stream"),
        "{head}"
    );
    let started = Instant::now();
    let mut seen = String::new();
    while !seen.contains("data: one") {
        let mut line = String::new();
        assert!(
            reader.read_line(&mut line).expect("read") > 0,
            "stream ended: {seen:?}"
        );
        seen.push_str(&line);
    }
    assert!(!seen.contains("data: two"), "{seen:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    fs::write(&go, "go").expect("release the second event");
    let mut rest = String::new();
    let _ = reader.read_to_string(&mut rest);
    assert!(rest.contains("data: two"), "{rest:?}");
}

#[test]
fn smuggling_patterns_and_header_limits_get_spec_answers() {
    let server = Server::start_default();
    server.wait_http_ready();
    let p = server.http_port;

    let a = raw(p, b"POST / HTTP/1.1\r\nHost: tako.internal\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n");
    assert_error(&a, "HTTP/1.1 400 Bad Request", "Bad Request");
    // The next request, on another connection, is served.
    status_ok(&server);
    let a = raw(p, b"POST / HTTP/1.1\r\nHost: tako.internal\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n");
    assert_error(&a, "HTTP/1.1 400 Bad Request", "Bad Request");
    let a = raw(p, b"POST / HTTP/1.1\r\nHost: tako.internal\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab");
    assert_error(&a, "HTTP/1.1 400 Bad Request", "Bad Request");
    let a = raw(p, b"GET /status\r\n");
    assert_error(&a, "HTTP/1.1 400 Bad Request", "Bad Request");
    let a = raw(p, b"GET /status HTTP/1.1\r\nHost : tako.internal\r\n\r\n");
    assert_error(&a, "HTTP/1.1 400 Bad Request", "Bad Request");

    let big = format!(
        "GET /status HTTP/1.1\r\nHost: tako.internal\r\nX-Big: {}\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    let a = raw(p, big.as_bytes());
    assert_error(
        &a,
        "HTTP/1.1 431 Request Header Fields Too Large",
        "Request Header Fields Too Large",
    );
    let many: String = (0..129).map(|i| format!("X-{i}: v\r\n")).collect();
    let a = raw(
        p,
        format!("GET /status HTTP/1.1\r\nHost: tako.internal\r\n{many}\r\n").as_bytes(),
    );
    assert_error(
        &a,
        "HTTP/1.1 431 Request Header Fields Too Large",
        "Request Header Fields Too Large",
    );
    let long = format!(
        "GET /{} HTTP/1.1\r\nHost: tako.internal\r\n\r\n",
        "a".repeat(9 * 1024)
    );
    let a = raw(p, long.as_bytes());
    assert_error(&a, "HTTP/1.1 414 URI Too Long", "URI Too Long");

    // `Expect: 100-continue` gets the interim answer before the final one.
    let a = raw(p, b"POST /status HTTP/1.1\r\nHost: tako.internal\r\nContent-Length: 2\r\nExpect: 100-continue\r\nConnection: close\r\n\r\nok");
    assert!(
        a.starts_with("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n"),
        "{a}"
    );

    // Pipelined requests with a chunked body are followed correctly: a body that looks like
    // a request is a body.
    let a = raw(p, b"POST /status HTTP/1.1\r\nHost: tako.internal\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nGET \r\n0\r\n\r\nGET /status HTTP/1.1\r\nHost: tako.internal\r\nConnection: close\r\n\r\n");
    assert_eq!(a.matches("HTTP/1.1 200").count(), 2, "{a}");

    // `Connection: close` ends the connection with the answer, which arrives whole and then
    // the server's FIN, never a reset: with nothing behind the request (closed at once) as
    // with bytes behind it (drained, not answered, while the client reads).
    for behind in [0, 256 * 1024] {
        let mut req =
            b"GET /status HTTP/1.1\r\nHost: tako.internal\r\nConnection: close\r\n\r\n".to_vec();
        req.resize(req.len() + behind, b'x');
        let mut s = connect(p);
        s.write_all(&req)
            .expect("write the request and what follows it");
        let mut out = Vec::new();
        s.read_to_end(&mut out)
            .unwrap_or_else(|e| panic!("{behind} bytes behind: not a clean close: {e}"));
        let a = String::from_utf8_lossy(&out);
        assert!(a.starts_with("HTTP/1.1 200 OK\r\n"), "{a}");
        assert_eq!(a.matches("HTTP/1.1 ").count(), 1, "{a}");
        let (head, body) = a.split_once("\r\n\r\n").expect("a whole head");
        let head = head.to_ascii_lowercase();
        assert!(head.contains("\r\nconnection: close"), "{a}");
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no length: {a}"));
        assert_eq!(body.len(), len, "{a}");
    }

    // A refused head pipelined behind good ones is answered after their answers, in order:
    // the bodies that look like request lines are bodies, and the third head is refused.
    let first = "POST /status HTTP/1.1\r\nHost: tako.internal\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    let second = "POST /status HTTP/1.1\r\nHost: tako.internal\r\nContent-Length: 4\r\n\r\nGET ";
    let third = "GET /status HTTP/1.1\r\nHost: tako.internal\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
    let a = raw(p, format!("{first}{second}{third}").as_bytes());
    assert_eq!(a.matches("HTTP/1.1 200 OK\r\n").count(), 2, "{a}");
    let refused = &a[a
        .find("HTTP/1.1 400")
        .unwrap_or_else(|| panic!("no 400: {a}"))..];
    assert!(a.starts_with("HTTP/1.1 200"), "{a}");
    assert_error(refused, "HTTP/1.1 400 Bad Request", "Bad Request");

    // A partial head gets 408 after 10 s; a connection that sends nothing is just closed.
    let mut partial = connect(p);
    partial
        .write_all(b"GET /status HTTP/1.1\r\nHost: tako.int")
        .expect("write");
    let silent = connect(p);
    let started = Instant::now();
    let mut out = Vec::new();
    let _ = partial.read_to_end(&mut out);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(9) && waited < Duration::from_secs(20),
        "{waited:?}"
    );
    assert_error(
        &String::from_utf8_lossy(&out),
        "HTTP/1.1 408 Request Timeout",
        "Request Timeout",
    );
    let mut silent = silent;
    let mut out = Vec::new();
    let _ = silent.read_to_end(&mut out);
    assert!(out.is_empty(), "{:?}", String::from_utf8_lossy(&out));
    status_ok(&server);
}

/// TLS to the server with SNI `sni`: the leaf certificate it presented, or the error.
fn served_cert(port: u16, sni: &str) -> Result<Vec<u8>, String> {
    let name =
        rustls_pki_types::ServerName::try_from(sni.to_string()).map_err(|e| e.to_string())?;
    let mut conn = rustls::ClientConnection::new(crate::common::http::tls_config(), name)
        .map_err(|e| e.to_string())?;
    let mut tcp = connect(port);
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).map_err(|e| e.to_string())?;
    }
    conn.peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.as_ref().to_vec())
        .ok_or_else(|| "no certificate".to_string())
}

/// A certificate and key as PEM, with the leaf's DER.
fn make_cert(name: &str) -> (String, String, Vec<u8>) {
    let ck = rcgen::generate_simple_self_signed(vec![name.to_string()]).expect("generate");
    (
        ck.cert.pem(),
        ck.key_pair.serialize_pem(),
        ck.cert.der().to_vec(),
    )
}

fn drop_in(server: &Server, name: &str, chain: &str, key: &str) {
    let dir = server.data_dir.join("certs").join(name);
    fs::create_dir_all(&dir).expect("create the cert dir");
    fs::write(dir.join("privkey.pem"), key).expect("write key");
    fs::set_permissions(dir.join("privkey.pem"), fs::Permissions::from_mode(0o600)).expect("chmod");
    fs::write(dir.join("fullchain.pem"), chain).expect("write chain");
    let owner = server.run_ids;
    for p in [
        dir.clone(),
        dir.join("privkey.pem"),
        dir.join("fullchain.pem"),
    ] {
        chown(&p, owner);
    }
}

#[test]
fn dropped_in_certificate_is_served_after_reload_certs_without_restart() {
    let server = Server::start_default();
    server.wait_processes();
    assert!(
        served_cert(server.tls_port, "drop.example.com").is_err(),
        "unknown SNI: no handshake"
    );

    let (chain, key, der) = make_cert("drop.example.com");
    drop_in(&server, "drop.example.com", &chain, &key);
    let (_, other_key, _) = make_cert("x.example.com");
    drop_in(&server, "bad.example.com", &chain, &other_key);
    let data = server.ok(&json!({"command":"reload_certs"}));
    assert_eq!(data["status"], json!("reloaded"), "{data}");
    assert_eq!(
        data["errors"],
        json!([{"error":"private key does not match certificate","name":"bad.example.com"}]),
        "{data}"
    );
    let served = wait_for(
        Duration::from_secs(5),
        "the new certificate in the workers",
        || served_cert(server.tls_port, "drop.example.com").ok(),
    );
    assert_eq!(
        served, der,
        "the dropped-in certificate is served for its SNI"
    );
    // Every worker has it: several handshakes land on different workers.
    for _ in 0..6 {
        assert_eq!(
            served_cert(server.tls_port, "DROP.example.com.").expect("handshake"),
            der
        );
    }

    // A broken replacement keeps the previous certificate in use.
    drop_in(&server, "drop.example.com", "not a certificate", &key);
    let data = server.ok(&json!({"command":"reload_certs"}));
    let errors = data["errors"].as_array().cloned().unwrap_or_default();
    assert!(
        errors.iter().any(|e| e["name"] == "drop.example.com"),
        "{data}"
    );
    assert_eq!(
        served_cert(server.tls_port, "drop.example.com").expect("handshake"),
        der
    );

    // Removing the directory removes the certificate.
    fs::remove_dir_all(server.data_dir.join("certs/drop.example.com")).expect("remove");
    fs::remove_dir_all(server.data_dir.join("certs/bad.example.com")).expect("remove");
    let data = server.ok(&json!({"command":"reload_certs"}));
    assert_eq!(data["removed"], json!(1), "{data}");
    wait_for(Duration::from_secs(5), "the certificate to be gone", || {
        served_cert(server.tls_port, "drop.example.com")
            .is_err()
            .then_some(())
    });
}

#[test]
fn private_host_gets_a_self_signed_certificate_at_deploy() {
    let server = Server::start_default();
    let release = edge_release(&server, "dev", "v1", &[]);
    deploy(
        &server,
        "dev",
        &release,
        &["app.test", "public.example.com"],
        json!({}),
    );
    let dir = server.data_dir.join("certs/app.test");
    let key_mode = fs::metadata(dir.join("privkey.pem"))
        .expect("privkey.pem")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(key_mode, 0o600);
    assert!(dir.join("fullchain.pem").exists());
    assert!(!dir.join("acme.json").exists());
    assert!(
        !server.data_dir.join("certs/public.example.com").exists(),
        "public hosts get no self-signed"
    );

    let r = https(
        server.tls_port,
        Some("app.test"),
        &Request::get("app.test", "/hello"),
    )
    .expect("HTTPS to the private host");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["headers"]["x-forwarded-proto"], json!("https"));

    let st = server.app_status("dev");
    let certs = st["certificates"].as_array().cloned().unwrap_or_default();
    let private = certs
        .iter()
        .find(|c| c["host"] == "app.test")
        .expect("app.test entry");
    assert_eq!(private["source"], json!("self_signed"), "{st}");
    assert_eq!(private["state"], json!("valid"), "{st}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let not_after = private["not_after_unix_secs"].as_u64().expect("not_after");
    assert!(not_after.abs_diff(now + 3650 * 86_400) < 3600, "{st}");
    let public = certs
        .iter()
        .find(|c| c["host"] == "public.example.com")
        .expect("public entry");
    assert_eq!(
        (public["source"].clone(), public["state"].clone()),
        (json!("none"), json!("missing")),
        "--no-acme: {st}"
    );
}

#[test]
fn redirect_and_forwarded_headers_from_trusted_and_untrusted_peers() {
    // Loopback is trusted by default.
    let server = Server::start_default();
    let release = edge_release(&server, "fw", "v1", &[]);
    deploy(
        &server,
        "fw",
        &release,
        &["fw.example.com", "fw.test"],
        json!({}),
    );

    // The example of docs/http.md, "HTTP to HTTPS redirect", with this server's TLS port.
    let r = http(
        server.http_port,
        &Request::get("Example.com:8080", "/a?b=1"),
    )
    .expect("plain request");
    assert_eq!(r.status, 307);
    let want = format!("https://example.com:{}/a?b=1", server.tls_port);
    assert_eq!(r.header("location"), Some(want.as_str()));
    assert_eq!(r.header("content-type"), Some("text/plain"));
    assert_eq!(r.header("content-length"), Some("20"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(r.text(), "Redirecting to HTTPS");

    let r = get(
        &server,
        "fw.example.com",
        "/h",
        &[
            ("X-Forwarded-For", "1.2.3.4"),
            ("X-Forwarded-Host", "orig.example.com"),
            ("X-Real-IP", "1.2.3.4"),
        ],
    );
    let h = &r.json()["headers"];
    assert_eq!(h["x-forwarded-for"], json!("1.2.3.4, 127.0.0.1"), "{h}");
    assert_eq!(h["x-forwarded-host"], json!("orig.example.com"), "{h}");
    assert_eq!(h["x-forwarded-proto"], json!("https"), "{h}");
    assert_eq!(h["x-real-ip"], json!("1.2.3.4"), "{h}");
    drop(server);

    // With --trusted-proxy elsewhere, loopback is an untrusted peer.
    let server = Server::start(
        ServerOpts::default()
            .arg("--trusted-proxy")
            .arg("10.0.0.0/8"),
    );
    let release = edge_release(&server, "fw", "v1", &[]);
    deploy(
        &server,
        "fw",
        &release,
        &["fw.example.com", "fw.test"],
        json!({}),
    );
    let r = get(&server, "fw.example.com", "/h", &[]);
    assert_eq!(
        r.status, 307,
        "a claimed X-Forwarded-Proto from an untrusted peer is ignored"
    );
    let req = Request::get("fw.test", "/h")
        .header("X-Forwarded-For", "6.6.6.6")
        .header("X-Forwarded-Proto", "http")
        .header("X-Forwarded-Host", "evil.example.com")
        .header("X-Real-IP", "6.6.6.6")
        .header("Forwarded", "for=6.6.6.6");
    let r = https(server.tls_port, Some("fw.test"), &req).expect("HTTPS");
    assert_eq!(r.status, 200, "{}", r.text());
    let h = &r.json()["headers"];
    assert_eq!(h["x-forwarded-for"], json!("127.0.0.1"), "{h}");
    assert_eq!(h["x-forwarded-proto"], json!("https"), "{h}");
    assert_eq!(h["x-forwarded-host"], json!("fw.test"), "{h}");
    assert!(
        h.get("x-real-ip").is_none() && h.get("forwarded").is_none(),
        "{h}"
    );
}
