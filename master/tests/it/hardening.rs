//! Issue 11, hardening: request smuggling and malformed HTTP against the running server (the
//! cases edge.rs does not cover), descriptor and process hygiene across requests and deploys,
//! and abuse of the management socket.
//!
//! Every smuggling case embeds `GET /smuggled` where a confused parser would see a second
//! request; the app records every request line its own parser reads, so "the app never sees
//! a smuggled request" is checked at the app, not inferred from the answers.

use std::fs;
use std::io::{self, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::http::read_response;
use crate::common::{procfs, users, wait_for, Mgmt, Response, Server};
use crate::python_app;
use serde_json::{json, Value};

/// An app that answers every path with JSON (path, method, host, body) and keeps two logs:
/// every request line its HTTP parser read (`raw`, before any validation) and every request
/// it answered (`seen`). `/__log` returns both; `/status` and `/__log` are not logged.
/// Chunked request bodies are decoded, so the app itself never desynchronises.
const COUNTING_APP: &str = python_app!(
    r#"import http.server, json, os, socketserver, threading

LOCK = threading.Lock()
RAW = []
SEEN = []

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def parse_request(self):
        line = self.raw_requestline.decode("latin-1").rstrip("\r\n")
        if not (line.startswith("GET /status ") or line.startswith("GET /__log ")):
            with LOCK:
                RAW.append(line)
        return super().parse_request()

    def read_body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            data = b""
            while True:
                size = int(self.rfile.readline(65537).split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    return data
                data += self.rfile.read(size)
                self.rfile.readline(65537)
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def answer(self):
        if self.path == "/status":
            body = b"ok"
        elif self.path == "/__log":
            with LOCK:
                body = json.dumps({"raw": RAW, "seen": SEEN}).encode()
        else:
            data = self.read_body()
            with LOCK:
                SEEN.append(self.path)
            body = json.dumps({"path": self.path, "method": self.command,
                               "host": self.headers.get("Host", ""),
                               "body": data.decode("latin-1")}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = answer
    do_POST = answer
    do_PUT = answer
    do_HEAD = answer

"#
);

const HOST: &str = "smug.example.com";

/// Deploys the counting app as `app`@`version` on `routes`.
fn deploy_counting(server: &Server, app: &str, version: &str, routes: &[&str]) -> Value {
    let cmd = server.deploy_cmd(app, version, routes, 1, &[]);
    let path = cmd["path"].as_str().expect("deploy path").to_string();
    // Same owner and mode as the fixture's server.py it replaces.
    fs::write(format!("{path}/server.py"), COUNTING_APP).expect("write the counting app");
    server.ok(&cmd)
}

/// The app's logs: (raw request lines, answered paths).
fn app_log(server: &Server, host: &str) -> (Vec<String>, Vec<String>) {
    let r = server.app_get(host, "/__log").expect("GET /__log");
    assert_eq!(r.status, 200, "/__log: {}", r.text());
    let v = r.json();
    let list = |k: &str| -> Vec<String> {
        v[k].as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter_map(|s| s.as_str().map(str::to_string))
            .collect()
    };
    (list("raw"), list("seen"))
}

/// One raw keep-alive connection.
struct Conn {
    w: TcpStream,
    r: BufReader<TcpStream>,
}

impl Conn {
    fn open(port: u16) -> Conn {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(15)))
            .expect("timeout");
        s.set_nodelay(true).expect("nodelay");
        let r = BufReader::new(s.try_clone().expect("clone"));
        Conn { w: s, r }
    }

    fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.w.write_all(bytes)
    }

    fn response(&mut self, head: bool) -> io::Result<Response> {
        read_response(&mut self.r, head)
    }
}

/// A well-formed routed request on a keep-alive connection.
fn good(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {HOST}\r\nX-Forwarded-Proto: https\r\n\r\n").into_bytes()
}

#[derive(Debug, Clone, PartialEq)]
enum Want {
    /// The spec's 400 (with `Connection: close`).
    BadRequest,
    /// A 400, or the connection closed without an answer: never an answer from the app.
    RejectOrClose,
    /// A valid if unusual request: answered by the app as one request whose body is this
    /// (a body that looks like a request stays a body); the connection stays usable.
    Valid(String),
    /// The absolute-form authority names a host without a route: 404, whatever `Host` says.
    NotRouted,
}

struct Case {
    name: &'static str,
    bytes: Vec<u8>,
    want: Want,
}

/// An attack request: the request line, the extra header lines, then the raw body bytes.
fn attack(version: &str, path: &str, headers: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} {version}\r\nHost: {HOST}\r\nX-Forwarded-Proto: https\r\n{headers}\r\n{body}"
    )
    .into_bytes()
}

const SMUGGLED: &str =
    "GET /smuggled HTTP/1.1\r\nHost: smug.example.com\r\nX-Forwarded-Proto: https\r\n\r\n";

/// A chunked body whose one chunk is a whole request: a body, not a request.
fn chunked_smuggled() -> String {
    format!("{:x}\r\n{SMUGGLED}\r\n0\r\n\r\n", SMUGGLED.len())
}

fn cases() -> Vec<Case> {
    // Refused requests carry a pipelined request after them: closing the connection must
    // drop it, so the app never sees it.
    let chunked_then_smuggled = format!("0\r\n\r\n{SMUGGLED}");
    let valid = || Want::Valid(SMUGGLED.to_string());
    let mut v = vec![
        // Transfer-Encoding obfuscations: the last coding must be exactly `chunked`.
        Case {
            name: "te-chunked-identity",
            bytes: attack("HTTP/1.1", "/c1", "Transfer-Encoding: chunked, identity\r\n", &chunked_then_smuggled),
            want: Want::BadRequest,
        },
        Case {
            name: "te-two-lines-chunked-then-identity",
            bytes: attack("HTTP/1.1", "/c2", "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n", &chunked_then_smuggled),
            want: Want::BadRequest,
        },
        Case {
            name: "te-xchunked",
            bytes: attack("HTTP/1.1", "/c3", "Transfer-Encoding: xchunked\r\n", &chunked_then_smuggled),
            want: Want::BadRequest,
        },
        Case {
            name: "te-quoted-chunked",
            bytes: attack("HTTP/1.1", "/c4", "Transfer-Encoding: \"chunked\"\r\n", &chunked_then_smuggled),
            want: Want::BadRequest,
        },
        Case {
            name: "te-chunked-with-parameter",
            bytes: attack("HTTP/1.1", "/c5", "Transfer-Encoding: chunked;q=1\r\n", &chunked_then_smuggled),
            want: Want::BadRequest,
        },
        Case {
            name: "te-empty-with-cl",
            bytes: attack("HTTP/1.1", "/c6", "Transfer-Encoding:\r\nContent-Length: 0\r\n", SMUGGLED),
            want: Want::BadRequest,
        },
        Case {
            name: "te-leading-space-with-cl",
            bytes: attack("HTTP/1.1", "/c7", "Transfer-Encoding:  chunked\r\nContent-Length: 3\r\n", &chunked_then_smuggled),
            want: Want::BadRequest,
        },
        Case {
            name: "te-vertical-tab",
            bytes: attack("HTTP/1.1", "/c8", "Transfer-Encoding:\x0bchunked\r\n", &chunked_then_smuggled),
            want: Want::BadRequest,
        },
        Case {
            name: "te-space-before-colon",
            bytes: attack("HTTP/1.1", "/c9", "Transfer-Encoding : chunked\r\n", &chunked_then_smuggled),
            want: Want::BadRequest,
        },
        // HTTP/1.0 has no chunked coding: TE there, with or without a length, is refused.
        Case {
            name: "te-and-cl-on-http10",
            bytes: attack("HTTP/1.0", "/c10", "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", &chunked_then_smuggled),
            want: Want::BadRequest,
        },
        Case {
            name: "te-on-http10",
            bytes: attack("HTTP/1.0", "/c11", "Transfer-Encoding: chunked\r\n", &chunked_then_smuggled),
            want: Want::BadRequest,
        },
        // Content-Length spellings.
        Case {
            name: "cl-plus-sign",
            bytes: attack("HTTP/1.1", "/c12", "Content-Length: +5\r\n", "hello"),
            want: Want::BadRequest,
        },
        Case {
            name: "cl-negative",
            bytes: attack("HTTP/1.1", "/c13", "Content-Length: -1\r\n", SMUGGLED),
            want: Want::BadRequest,
        },
        Case {
            name: "cl-hex",
            bytes: attack("HTTP/1.1", "/c14", "Content-Length: 0x5\r\n", "hello"),
            want: Want::BadRequest,
        },
        Case {
            name: "cl-list-differing",
            bytes: attack("HTTP/1.1", "/c15", "Content-Length: 5, 6\r\n", "hello!"),
            want: Want::BadRequest,
        },
        Case {
            name: "cl-overflow",
            bytes: attack("HTTP/1.1", "/c16", "Content-Length: 99999999999999999999999\r\n", SMUGGLED),
            want: Want::BadRequest,
        },
        // Multiple Host, NUL bytes, obs-fold, bare CR: 400.
        Case {
            name: "two-hosts",
            bytes: format!("GET /c17 HTTP/1.1\r\nHost: {HOST}\r\nHost: other.example.com\r\nX-Forwarded-Proto: https\r\n\r\n").into_bytes(),
            want: Want::BadRequest,
        },
        Case {
            name: "two-hosts-same-value",
            bytes: format!("GET /c18 HTTP/1.1\r\nHost: {HOST}\r\nHost: {HOST}\r\nX-Forwarded-Proto: https\r\n\r\n").into_bytes(),
            want: Want::BadRequest,
        },
        Case {
            name: "http10-without-host",
            bytes: b"GET /c19 HTTP/1.0\r\nX-Forwarded-Proto: https\r\n\r\n".to_vec(),
            want: Want::BadRequest,
        },
        Case {
            name: "nul-in-header-value",
            bytes: attack("HTTP/1.1", "/c20", "X-A: a\0b\r\nContent-Length: 0\r\n", SMUGGLED),
            want: Want::BadRequest,
        },
        Case {
            name: "nul-in-header-name",
            bytes: attack("HTTP/1.1", "/c21", "X-\0A: b\r\nContent-Length: 0\r\n", SMUGGLED),
            want: Want::BadRequest,
        },
        Case {
            name: "nul-in-target",
            bytes: format!("GET /c22\0/x HTTP/1.1\r\nHost: {HOST}\r\nX-Forwarded-Proto: https\r\n\r\n").into_bytes(),
            want: Want::BadRequest,
        },
        Case {
            name: "obs-fold",
            bytes: attack("HTTP/1.1", "/c23", "X-A: a\r\n folded\r\nContent-Length: 0\r\n", SMUGGLED),
            want: Want::BadRequest,
        },
        Case {
            name: "obs-fold-of-transfer-encoding",
            bytes: attack("HTTP/1.1", "/c24", "Transfer-Encoding: identity\r\n chunked\r\n", &chunked_then_smuggled),
            want: Want::BadRequest,
        },
        Case {
            name: "bare-cr-in-header",
            bytes: attack("HTTP/1.1", "/c25", "X-A: a\rTransfer-Encoding: chunked\r\nContent-Length: 0\r\n", SMUGGLED),
            want: Want::BadRequest,
        },
        Case {
            name: "tab-separated-request-line",
            bytes: format!("GET\t/c26\tHTTP/1.1\r\nHost: {HOST}\r\n\r\n").into_bytes(),
            want: Want::BadRequest,
        },
        // Absolute-form: its authority is the host (docs/http.md, "Request host"), not the Host
        // header.
        Case {
            name: "absolute-form-vs-host-mismatch",
            bytes: format!("GET http://other.example.com/c27 HTTP/1.1\r\nHost: {HOST}\r\nX-Forwarded-Proto: https\r\n\r\n").into_bytes(),
            want: Want::NotRouted,
        },
        // Bare LF: accepted as line ends in the head (RFC 9112 §2.2) or refused; in chunked
        // framing it is malformed.
        Case {
            name: "bare-lf-line-endings",
            bytes: format!("POST /c28 HTTP/1.1\nHost: {HOST}\nX-Forwarded-Proto: https\nContent-Length: {}\n\n{SMUGGLED}", SMUGGLED.len()).into_bytes(),
            want: valid(),
        },
        Case {
            name: "bare-lf-in-chunked-framing",
            bytes: attack("HTTP/1.1", "/c29", "Transfer-Encoding: chunked\r\n", &format!("5\nhello\n0\n\n{SMUGGLED}")),
            want: Want::RejectOrClose,
        },
        // Valid framings whose body looks like a request: the body stays a body.
        Case {
            name: "cl-body-looks-like-a-request",
            bytes: attack("HTTP/1.1", "/c30", &format!("Content-Length: {}\r\n", SMUGGLED.len()), SMUGGLED),
            want: valid(),
        },
        Case {
            name: "te-uppercase-chunked",
            bytes: attack("HTTP/1.1", "/c31", "Transfer-Encoding: CHUNKED\r\n", &chunked_smuggled()),
            want: valid(),
        },
        Case {
            name: "te-leading-space",
            bytes: attack("HTTP/1.1", "/c32", "Transfer-Encoding:   chunked\r\n", &chunked_smuggled()),
            want: valid(),
        },
        Case {
            name: "chunk-extension-quoted",
            bytes: attack("HTTP/1.1", "/c33", "Transfer-Encoding: chunked\r\n", &format!("{:x};ext=\"a b\"\r\n{SMUGGLED}\r\n0\r\n\r\n", SMUGGLED.len())),
            want: valid(),
        },
        Case {
            name: "trailer-with-te-and-cl",
            bytes: attack("HTTP/1.1", "/c34", "Transfer-Encoding: chunked\r\n", &format!("{:x}\r\n{SMUGGLED}\r\n0\r\nTransfer-Encoding: chunked\r\nContent-Length: 99\r\n\r\n", SMUGGLED.len())),
            want: valid(),
        },
        Case {
            name: "chunk-size-leading-zeros",
            bytes: attack("HTTP/1.1", "/c35", "Transfer-Encoding: chunked\r\n", &format!("0000{:x}\r\n{SMUGGLED}\r\n000\r\n\r\n", SMUGGLED.len())),
            want: valid(),
        },
    ];
    // Invalid chunk sizes, each followed by what a confused parser would take as a request.
    for (i, size) in [
        "ffffffffffffffffffff", // overflows u64
        "10000000000000000",    // 2^64
        "-5",
        "+5",
        "0x5",
        "5 5",
        "zz",
        "",
        " 5",
        "5\x00",
    ]
    .iter()
    .enumerate()
    {
        v.push(Case {
            name: "invalid-chunk-size",
            bytes: attack(
                "HTTP/1.1",
                &format!("/k{i}"),
                "Transfer-Encoding: chunked\r\n",
                &format!("{size}\r\nhello\r\n0\r\n\r\n{SMUGGLED}"),
            ),
            want: Want::RejectOrClose,
        });
    }
    v
}

/// What one case did, for the report.
#[derive(Debug)]
enum Outcome {
    Refused400,
    /// Status, and the body the app echoed (empty when the app did not answer).
    Answered(u16, String),
    Closed,
}

#[test]
fn smuggling_and_malformed_requests_never_desync() {
    let server = Server::start_default();
    server.wait_http_ready();
    deploy_counting(&server, "smug", "v1", &[HOST]);
    let port = server.http_port;
    let cases = cases();
    let mut refused = 0;
    let mut good_answers = 0usize;
    let mut report = Vec::new();
    for (n, case) in cases.iter().enumerate() {
        let mut c = Conn::open(port);
        // A good request first: the attack comes on a connection that already served one.
        c.send(&good(&format!("/before-{n}"))).expect("write");
        let r = c.response(false).expect("the first request is answered");
        assert_eq!(r.status, 200, "{}: the warm-up request", case.name);
        good_answers += 1;
        c.send(&case.bytes).expect("write the case");
        let outcome = match c.response(false) {
            Ok(r) if r.status == 400 => {
                assert_eq!(r.text(), "Bad Request", "{}", case.name);
                assert_eq!(r.header("connection"), Some("close"), "{}", case.name);
                Outcome::Refused400
            }
            Ok(r) => {
                let body = if r.status == 200 {
                    r.json()["body"].as_str().unwrap_or("").to_string()
                } else {
                    String::new()
                };
                Outcome::Answered(r.status, body)
            }
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut =>
            {
                panic!(
                    "{}: no answer and no close within 15 s (a desync waits)",
                    case.name
                )
            }
            Err(_) => Outcome::Closed,
        };
        match (&case.want, &outcome) {
            (Want::BadRequest | Want::RejectOrClose, Outcome::Refused400) => refused += 1,
            (Want::BadRequest, other) => panic!("{}: expected 400, got {other:?}", case.name),
            (Want::RejectOrClose, Outcome::Closed) => {}
            (Want::RejectOrClose, other) => {
                panic!("{}: expected 400 or a close, got {other:?}", case.name)
            }
            (Want::Valid(_), Outcome::Refused400) => refused += 1,
            (Want::Valid(body), Outcome::Answered(200, b)) => {
                assert_eq!(b, body, "{}: the app got the body as a body", case.name);
            }
            (Want::NotRouted, Outcome::Answered(404, _)) => {}
            (_, other) => panic!("{}: {:?} answered {other:?}", case.name, case.want),
        }
        // The same connection, if the server kept it: the next request gets its own answer.
        if let Outcome::Answered(..) = outcome {
            let after = format!("/after-{n}");
            if c.send(&good(&after)).is_ok() {
                match c.response(false) {
                    Ok(r) => {
                        assert_eq!(
                            r.status, 200,
                            "{}: next request on the connection",
                            case.name
                        );
                        assert_eq!(
                            r.json()["path"],
                            after,
                            "{}: answer of the next request",
                            case.name
                        );
                        good_answers += 1;
                    }
                    Err(e) => assert!(
                        !matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ),
                        "{}: the next request on the connection hangs",
                        case.name
                    ),
                }
            }
        }
        // A new connection is served.
        let fresh = format!("/fresh-{n}");
        let r = server.app_get(HOST, &fresh).expect("fresh connection");
        assert_eq!(r.status, 200, "{}: a new connection", case.name);
        assert_eq!(r.json()["path"], fresh);
        good_answers += 1;
        let shown = match &outcome {
            Outcome::Answered(st, _) => format!("answered {st}"),
            other => format!("{other:?}"),
        };
        report.push(format!("{:<36} {shown}", case.name));
    }
    let (raw, seen) = app_log(&server, HOST);
    eprintln!("smuggling cases:\n{}", report.join("\n"));
    assert!(
        !raw.iter().any(|l| l.contains("smuggled")),
        "the app parsed a smuggled request: {raw:?}"
    );
    // Every request line the app read is one the test meant as a request.
    for line in &raw {
        let path = line.split(' ').nth(1).unwrap_or("");
        let expected = ["/before-", "/after-", "/fresh-", "/c", "/k"]
            .iter()
            .any(|p| path.starts_with(p));
        assert!(expected, "unexpected request line at the app: {line:?}");
    }
    let good_seen = seen
        .iter()
        .filter(|p| {
            p.starts_with("/before-") || p.starts_with("/after-") || p.starts_with("/fresh-")
        })
        .count();
    assert_eq!(
        good_seen, good_answers,
        "each good request reached the app once: {seen:?}"
    );
    // An attack request reaches the app at most once.
    for p in seen
        .iter()
        .filter(|p| p.starts_with("/c") || p.starts_with("/k"))
    {
        assert_eq!(
            seen.iter().filter(|q| *q == p).count(),
            1,
            "{p} twice: {seen:?}"
        );
    }
    eprintln!(
        "smuggling summary: {} cases, {refused} refused with 400, {} attack requests reached the \
         app as one request, {good_answers} good requests answered, 0 smuggled",
        cases.len(),
        seen.iter()
            .filter(|p| p.starts_with("/c") || p.starts_with("/k"))
            .count()
    );
    assert_no_panics(&server);
}

/// No role logged a panic.
fn assert_no_panics(server: &Server) {
    let text = server.stderr_text();
    let bad: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("panicked") || l.contains("RUST_BACKTRACE"))
        .collect();
    assert!(bad.is_empty(), "panic lines in the server log: {bad:?}");
}

/// Open descriptors of a process.
fn fd_count(pid: i32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// (role, pid, fds) of the master, the launcher and every worker.
fn fd_snapshot(server: &Server) -> Vec<(String, i32, usize)> {
    let mut out = vec![("master".to_string(), server.pid, fd_count(server.pid))];
    for p in server.processes() {
        let role = p["role"].as_str().unwrap_or("").to_string();
        if role == "master" {
            continue;
        }
        let pid = p["pid"].as_i64().unwrap_or(0) as i32;
        out.push((role, pid, fd_count(pid)));
    }
    out
}

/// A batch of traffic: keep-alive and new connections, some refused, some to no route.
fn traffic_batch(server: &Server, rounds: usize) {
    let port = server.http_port;
    for i in 0..rounds {
        let mut c = Conn::open(port);
        for j in 0..5 {
            c.send(&good(&format!("/t{i}-{j}"))).expect("write");
            let r = c.response(false).expect("keep-alive answer");
            assert_eq!(r.status, 200);
        }
        drop(c);
        let r = server.app_get(HOST, &format!("/n{i}")).expect("request");
        assert_eq!(r.status, 200);
        let r = server.app_get("nothing.example.com", "/").expect("request");
        assert_eq!(r.status, 404);
        let mut c = Conn::open(port);
        c.send(b"GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
            .expect("write");
        assert_eq!(c.response(false).expect("400").status, 400);
        // A client that goes away mid-head, and one that goes away mid-body.
        let mut c = Conn::open(port);
        c.send(b"GET /x HTTP/1.1\r\nHost: smug.exa").expect("write");
        drop(c);
        let mut c = Conn::open(port);
        c.send(&attack(
            "HTTP/1.1",
            "/gone",
            "Content-Length: 100\r\n",
            "abc",
        ))
        .expect("write");
        drop(c);
    }
}

#[test]
fn descriptors_stay_flat_and_nothing_is_left_after_shutdown() {
    let mut server = Server::start_default();
    server.wait_http_ready();
    deploy_counting(&server, "smug", "v1", &[HOST]);
    // Warm up: upstream pools, the cache, lazily opened files.
    traffic_batch(&server, 10);
    deploy_counting(&server, "smug", "v2", &[HOST]);
    traffic_batch(&server, 5);
    std::thread::sleep(Duration::from_millis(500));
    let before = fd_snapshot(&server);

    for (k, v) in ["v3", "v4", "v5"].iter().enumerate() {
        traffic_batch(&server, 40);
        deploy_counting(&server, "smug", v, &[HOST]);
        if k == 1 {
            server.ok(&json!({"command": "reload", "app": "smug"}));
        }
    }
    traffic_batch(&server, 40);

    // Drained connections and old instances go away within a few seconds; wait for the
    // counts to come back rather than sleeping a fixed time.
    let mut after = fd_snapshot(&server);
    let flat = crate::common::poll(Duration::from_secs(20), Duration::from_millis(250), || {
        after = fd_snapshot(&server);
        let ok = before.iter().all(|(role, pid, n)| {
            after
                .iter()
                .find(|(_, p, _)| p == pid)
                .is_some_and(|(_, _, m)| m <= n)
                || role.is_empty()
        });
        ok.then_some(())
    });
    eprintln!("fd counts before (after warm-up): {before:?}");
    eprintln!("fd counts after 650 connections, 3 deploys and a reload: {after:?}");
    assert!(
        flat.is_some(),
        "descriptor counts grew: before {before:?} after {after:?}"
    );
    assert_eq!(
        before.iter().map(|(r, p, _)| (r, p)).collect::<Vec<_>>(),
        after.iter().map(|(r, p, _)| (r, p)).collect::<Vec<_>>(),
        "no role was restarted meanwhile"
    );

    // Shutdown: every process of the tree (instances too) is gone, exit code 0, no panics.
    let tree = server.remember_tree();
    assert!(tree.len() >= 4, "master's tree: {tree:?}");
    let st = server.stop();
    assert_eq!(crate::common::exit_code(st), 0, "SIGTERM exit");
    let left = wait_for(Duration::from_secs(10), "the tree to be gone", || {
        let alive: Vec<i32> = tree.iter().copied().filter(|p| procfs::alive(*p)).collect();
        alive.is_empty().then_some(alive)
    });
    assert!(left.is_empty());
    let touching = procfs::processes_touching(&server.data_dir.display().to_string());
    assert!(
        touching.is_empty(),
        "processes still using the data dir: {touching:?}"
    );
    assert_no_panics(&server);
}

/// The legitimate client: a fresh connection, `hello`, then `list` on it.
fn legit_round_trip(socket: &std::path::Path) -> Result<Duration, String> {
    let started = Instant::now();
    let mut m = Mgmt::connect(socket).map_err(|e| format!("connect: {e}"))?;
    let hello = m
        .raw(br#"{"command":"hello","protocol_version":3}"#)
        .map_err(|e| format!("hello: {e}"))?;
    if !hello.contains(r#""status":"ok""#) {
        return Err(format!("hello answered {hello}"));
    }
    let list = m
        .raw(br#"{"command":"list"}"#)
        .map_err(|e| format!("list: {e}"))?;
    if !list.contains(r#""status":"ok""#) {
        return Err(format!("list answered {list}"));
    }
    Ok(started.elapsed())
}

#[test]
fn management_socket_survives_abuse_and_keeps_answering() {
    let server = Server::start_default();
    let socket = server.socket.clone();
    let stop = Arc::new(AtomicBool::new(false));

    // The legitimate client asks every 50 ms throughout.
    let legit = {
        let socket = socket.clone();
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut answered = 0usize;
            let mut slowest = Duration::ZERO;
            let mut errors = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match legit_round_trip(&socket) {
                    Ok(d) => {
                        answered += 1;
                        slowest = slowest.max(d);
                    }
                    Err(e) => errors.push(e),
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            (answered, slowest, errors)
        })
    };

    // 10 000 connections opened and dropped, 16 at a time; every fourth leaves half a line,
    // every fourth a whole line it never reads the answer of.
    let opened = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..16)
        .map(|t| {
            let socket = socket.clone();
            let opened = Arc::clone(&opened);
            std::thread::spawn(move || {
                for i in 0..625 {
                    let Ok(mut s) = UnixStream::connect(&socket) else {
                        continue;
                    };
                    opened.fetch_add(1, Ordering::Relaxed);
                    match (t + i) % 4 {
                        0 => {
                            let _ = s.write_all(br#"{"command":"li"#);
                        }
                        1 => {
                            let _ = s.write_all(b"{\"command\":\"list\"}\n");
                        }
                        2 => {
                            let _ = s.write_all(b"\xff\xfe garbage \x00\n{\"comm");
                        }
                        _ => {}
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("connection thread");
    }
    let opened = opened.load(Ordering::Relaxed);

    // 100 MB of garbage on one connection (a newline every 64 KiB, so it is many bad lines
    // whose answers are read) and 100 MB with no newline at all on another.
    let garbage_answers;
    {
        let mut s = UnixStream::connect(&socket).expect("connect");
        s.set_write_timeout(Some(Duration::from_secs(60)))
            .expect("timeout");
        s.set_read_timeout(Some(Duration::from_secs(60)))
            .expect("timeout");
        let reader = s.try_clone().expect("clone");
        let counter = std::thread::spawn(move || {
            let mut n = 0usize;
            let mut buf = vec![0u8; 64 * 1024];
            let mut r = reader;
            loop {
                match r.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(k) => n += buf[..k].iter().filter(|b| **b == b'\n').count(),
                }
            }
            n
        });
        let mut block: Vec<u8> = (0..64 * 1024)
            .map(|i| (i * 131 % 251) as u8 | 0x80)
            .collect();
        let last = block.len() - 1;
        block[last] = b'\n';
        for _ in 0..(100 * 1024 * 1024 / block.len()) {
            s.write_all(&block)
                .expect("the server keeps reading garbage");
        }
        s.shutdown(std::net::Shutdown::Write).expect("shutdown");
        garbage_answers = counter.join().expect("reader");
    }
    assert_eq!(garbage_answers, 1600, "one error answer per garbage line");
    {
        let mut s = UnixStream::connect(&socket).expect("connect");
        s.set_write_timeout(Some(Duration::from_secs(60)))
            .expect("timeout");
        s.set_read_timeout(Some(Duration::from_secs(60)))
            .expect("timeout");
        let block = vec![b'x'; 1024 * 1024];
        for _ in 0..100 {
            if s.write_all(&block).is_err() {
                break;
            }
        }
        let _ = s.write_all(b"\n{\"command\":\"hello\",\"protocol_version\":3}\n");
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines.first().copied(),
            Some(
                r#"{"status":"error","message":"Invalid command: json line exceeds max length (1048576 bytes)"}"#
            ),
            "one over-long line: {}",
            &out[..out.len().min(400)]
        );
        assert!(
            lines.get(1).is_some_and(|l| l.contains(r#""status":"ok""#)),
            "the line after 100 MB is answered: {out:?}"
        );
    }

    // Peers without rights (root only: another uid), 200 of them, each refused.
    let mut refused = 0;
    if users::is_root() {
        fs::set_permissions(
            &socket,
            <fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o666),
        )
        .expect("chmod");
        let script = r#"
import socket, sys
refused = 0
for _ in range(200):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(sys.argv[1])
    try:
        s.sendall(b'{"command":"list"}\n')
    except OSError:
        pass
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = s.recv(4096)
        if not chunk:
            break
        buf += chunk
    if b"Permission denied" in buf:
        refused += 1
    s.close()
print(refused)
"#;
        let out = Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(&socket)
            .uid(65534)
            .gid(65534)
            .output()
            .expect("python3");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        refused = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0);
        assert_eq!(refused, 200, "every peer without rights is refused");
    }

    // The legitimate client got answers throughout, and still does.
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    let (answered, slowest, errors) = legit.join().expect("legit client");
    assert!(
        errors.is_empty(),
        "the legitimate client failed: {errors:?}"
    );
    assert!(answered >= 5, "legitimate round trips: {answered}");
    legit_round_trip(&socket).expect("a round trip after the abuse");
    let master_fds = fd_count(server.pid);
    eprintln!(
        "mgmt abuse: {opened} connections opened and dropped, {garbage_answers} answers to 100 MB \
         of garbage lines, 100 MB line refused then answered, {refused} peers without rights \
         refused; legitimate client: {answered} round trips, slowest {slowest:?}, 0 errors; \
         master fds now {master_fds}"
    );
    assert!(master_fds < 64, "the master holds {master_fds} descriptors");
    assert_no_panics(&server);
}
