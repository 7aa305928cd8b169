//! Issue 23, "Per-client limits": open connections, requests in flight (HTTP/2 streams
//! included) and the request rate, per client address, exact over all workers and through a
//! worker's death. Documented in docs/limits.md, "Per-client limits".
//!
//! Two clients on one machine: loopback takes all of 127/8, so a socket bound to 127.0.0.2
//! before it connects is another address to the server than 127.0.0.1. Loopback is trusted as
//! a forwarder by default (its own connections are not capped), so most tests start the server
//! with `--trusted-proxy 192.0.2.0/24`: both addresses are then plain internet clients.

use std::collections::HashSet;
use std::io::{BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::os::fd::FromRawFd;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::common::http::{read_response, tls_config};
use crate::common::{fixture, wait_for, Response, Server, ServerOpts};
use serde_json::json;

const HOST: &str = "web.example.com";
/// The host the HTTP/2 client of h2_limits.rs asks for.
const H2_HOST: &str = "app.example.com";
const OTHER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const LOCAL: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const UNTRUSTED_LOOPBACK: [&str; 2] = ["--trusted-proxy", "192.0.2.0/24"];

/// The servers of this process share one instance port block: one deploy at a time.
static DEPLOYING: Mutex<()> = Mutex::new(());

/// An app whose POSTs wait for their whole body, and whose `GET /held` says how many wait.
const HOLD_APP_PY: &str = r#"import http.server, os, socketserver, threading

lock = threading.Lock()
held = [0]

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def reply(self, body):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self):
        if self.path.split("?")[0] == "/held":
            with lock:
                n = held[0]
            self.reply(str(n).encode())
        else:
            self.reply(b"ok")

    def do_POST(self):
        with lock:
            held[0] += 1
        try:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
        finally:
            with lock:
                held[0] -= 1
        self.reply(b"done")

    do_HEAD = do_GET

    def log_message(self, *args):
        pass

class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True

Server(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"#;

fn start(workers: u32, args: &[&str]) -> Server {
    let _one_at_a_time = DEPLOYING.lock().unwrap_or_else(|e| e.into_inner());
    let mut opts = ServerOpts {
        workers,
        ..ServerOpts::default()
    }
    .test_certs();
    for a in args {
        opts = opts.arg(a);
    }
    let server = Server::start(opts);
    let dir = fixture::write_release_with(
        &server.data_dir,
        "web",
        "v1",
        server.deploy_owner(),
        HOLD_APP_PY,
        fixture::APP_JSON,
    );
    server.ok(&json!({
        "command": "deploy", "app": "web", "version": "v1",
        "path": dir.display().to_string(), "routes": [HOST, H2_HOST], "env": {},
        "instances": 1, "idle_timeout": 300
    }));
    server
}

/// A TCP connection from `src` to the server's loopback listener on `port`.
fn tcp_from(src: Ipv4Addr, port: u16) -> std::io::Result<TcpStream> {
    // SAFETY: plain socket calls on a descriptor made here; results checked; the descriptor
    // is owned by the returned stream (or closed on error by it).
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let stream = TcpStream::from_raw_fd(fd);
        let addr = |ip: Ipv4Addr, port: u16| libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(ip).to_be(),
            },
            sin_zero: [0; 8],
        };
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let local = addr(src, 0);
        if libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // A connect waits for the backlog at most this long (SO_SNDTIMEO bounds it).
        stream.set_write_timeout(Some(Duration::from_secs(10)))?;
        let remote = addr(LOCAL, port);
        if libc::connect(fd, (&remote as *const libc::sockaddr_in).cast(), len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        stream.set_read_timeout(Some(Duration::from_secs(20)))?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A TLS connection from `src`, handshake done.
fn tls_from(src: Ipv4Addr, server: &Server) -> std::io::Result<Tls> {
    let mut tcp = tcp_from(src, server.tls_port)?;
    let name = rustls_pki_types::ServerName::try_from(HOST.to_string()).expect("name");
    let mut conn =
        rustls::ClientConnection::new(tls_config(), name).map_err(std::io::Error::other)?;
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp)?;
    }
    Ok(rustls::StreamOwned::new(conn, tcp))
}

fn send_head(tls: &mut Tls, method: &str, path: &str, extra: &str) -> std::io::Result<()> {
    let head = format!("{method} {path} HTTP/1.1\r\nHost: {HOST}\r\n{extra}\r\n");
    tls.write_all(head.as_bytes())?;
    tls.flush()
}

fn read(tls: &mut Tls) -> std::io::Result<Response> {
    read_response(BufReader::new(tls), false)
}

/// One GET over HTTPS from `src`, on a connection of its own.
fn get_from(src: Ipv4Addr, server: &Server, path: &str, extra: &str) -> std::io::Result<Response> {
    let mut tls = tls_from(src, server)?;
    send_head(
        &mut tls,
        "GET",
        path,
        &format!("Connection: close\r\n{extra}"),
    )?;
    read(&mut tls)
}

/// How many POSTs wait in the app (asked from 127.0.0.2 or 127.0.0.1, as `src` says).
fn held(server: &Server, src: Ipv4Addr) -> usize {
    let r = get_from(src, server, "/held", "").expect("GET /held");
    assert_eq!(r.status, 200, "{}", r.text());
    r.text().trim().parse().expect("a count")
}

fn wait_held(server: &Server, src: Ipv4Addr, n: usize) {
    wait_for(
        Duration::from_secs(20),
        &format!("{n} POSTs waiting in the app"),
        || (held(server, src) == n).then_some(()),
    );
}

/// The `/metrics` value of `tako_client_limited_total{limit="<limit>"}` (loopback may read it).
fn limited(server: &Server, limit: &str) -> u64 {
    // Where loopback is a trusted forwarder, each look speaks for a client of its own, so
    // the looks are not limited by the rate they watch.
    static LOOKS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = LOOKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let client = format!("10.{}.{}.{}", (n >> 16) & 255, (n >> 8) & 255, n & 255);
    let r = crate::common::http::http(
        server.http_port,
        &crate::common::Request::get("tako.internal", "/metrics")
            .header("X-Forwarded-For", &client),
    )
    .expect("GET /metrics");
    let needle = format!("tako_client_limited_total{{limit=\"{limit}\"}} ");
    // A worker that just started has no page until the master's next push: 0 until then.
    r.text()
        .lines()
        .find_map(|l| l.strip_prefix(&needle))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Whether the server closed `s` (EOF or a reset), without waiting on a live one.
fn is_closed(mut s: &TcpStream) -> bool {
    let _ = s.set_nonblocking(true);
    let mut buf = [0u8; 1];
    let closed = match s.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    };
    let _ = s.set_nonblocking(false);
    closed
}

/// One plain request on a new connection from 127.0.0.2 that is then kept open (keep-alive,
/// idle): `None` when the server closed it unanswered.
fn keep_connection(server: &Server) -> Option<TcpStream> {
    let mut s = tcp_from(OTHER, server.http_port).ok()?;
    let req = format!("GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n");
    s.write_all(req.as_bytes()).ok()?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
    }
    let text = String::from_utf8_lossy(&head).to_string();
    assert!(text.starts_with("HTTP/1.1 307"), "the redirect: {text}");
    let len: usize = text
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap_or(0))
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).ok()?;
    Some(s)
}

/// Socket inodes of the established connections from 127.0.0.2 to `port`.
fn inodes_from_other(port: u16) -> HashSet<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let local = format!("0100007F:{port:04X}");
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(1) == Some(&local.as_str())
                && f.get(2).is_some_and(|r| r.starts_with("0200007F:"))
                && f.get(3) == Some(&"01"))
            .then(|| f.get(9)?.parse().ok())
            .flatten()
        })
        .collect()
}

/// How many of `inodes` process `pid` holds.
fn holds(pid: i32, inodes: &HashSet<u64>) -> usize {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    dir.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().to_string();
            l.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .filter(|i| inodes.contains(i))
        .count()
}

#[test]
fn connections_over_the_cap_are_closed_while_others_are_served_and_a_dead_workers_are_released() {
    let server = start(
        2,
        &[
            UNTRUSTED_LOOPBACK[0],
            UNTRUSTED_LOOPBACK[1],
            "--client-max-connections",
            "5",
        ],
    );
    let mut kept: Vec<TcpStream> = (0..5)
        .map(|i| keep_connection(&server).unwrap_or_else(|| panic!("connection {i} was refused")))
        .collect();
    // The cap holds over both workers: each further connection is closed unanswered, however
    // the kernel spreads them.
    for i in 0..10 {
        assert!(
            keep_connection(&server).is_none(),
            "connection {} from 127.0.0.2 beyond the cap of 5 was served",
            6 + i
        );
    }
    // Another address is served meanwhile.
    let r = get_from(LOCAL, &server, "/", "").expect("GET from 127.0.0.1");
    assert_eq!(r.status, 200, "{}", r.text());
    wait_for(Duration::from_secs(10), "the refusals in /metrics", || {
        (limited(&server, "connections") >= 10).then_some(())
    });

    // Kill a worker that holds some of the five: its connections end, and their places are
    // free again once it is reaped.
    let inodes = inodes_from_other(server.http_port);
    assert_eq!(inodes.len(), 5, "five connections from 127.0.0.2");
    let workers = server.pids_of("worker");
    let victim = *workers
        .iter()
        .max_by_key(|&&p| holds(p, &inodes))
        .expect("a worker");
    let lost = holds(victim, &inodes);
    assert!(lost > 0, "a worker holds some of them");
    assert!(crate::common::kill(victim, libc::SIGKILL));
    wait_for(
        Duration::from_secs(10),
        "the killed worker's connections closed",
        || (kept.iter().filter(|s| is_closed(s)).count() == lost).then_some(()),
    );
    kept.retain(|s| !is_closed(s));
    assert_eq!(kept.len(), 5 - lost);
    let mut regained = Vec::new();
    wait_for(
        Duration::from_secs(20),
        "a connection from 127.0.0.2 after the kill",
        || keep_connection(&server).map(|s| regained.push(s)),
    );
    while regained.len() < lost {
        let s = keep_connection(&server).expect("the dead worker's places are free");
        regained.push(s);
    }
    assert!(
        keep_connection(&server).is_none(),
        "the cap of 5 still holds after the worker's death"
    );
}

#[test]
fn requests_in_flight_over_the_cap_get_429_and_http2_streams_count() {
    let server = start(
        2,
        &[
            UNTRUSTED_LOOPBACK[0],
            UNTRUSTED_LOOPBACK[1],
            "--client-max-requests",
            "3",
        ],
    );
    // Three POSTs from 127.0.0.2 whose bodies do not come yet: three requests in flight,
    // each on a connection of its own (so on either worker).
    let mut waiting: Vec<Tls> = (0..3)
        .map(|_| {
            let mut t = tls_from(OTHER, &server).expect("connect");
            send_head(&mut t, "POST", "/upload", "Content-Length: 4\r\n").expect("POST head");
            t
        })
        .collect();
    wait_held(&server, LOCAL, 3);
    let r = get_from(OTHER, &server, "/", "").expect("a fourth request");
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.text(), "Too Many Requests");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(r.header("x-request-id").is_some_and(|id| !id.is_empty()));
    // Another address is served meanwhile.
    assert_eq!(get_from(LOCAL, &server, "/", "").expect("GET").status, 200);
    // The bodies come: each answered, and the address has room again.
    for t in &mut waiting {
        t.write_all(b"data").expect("body");
        t.flush().expect("flush");
        let r = read(t).expect("answer");
        assert_eq!((r.status, r.text()), (200, "done".to_string()));
    }
    assert_eq!(get_from(OTHER, &server, "/", "").expect("GET").status, 200);
    wait_for(Duration::from_secs(10), "the refusal in /metrics", || {
        (limited(&server, "requests") >= 1).then_some(())
    });

    // HTTP/2: streams of one connection are requests like any other.
    let mut h2 = crate::h2_limits::connect(&server);
    h2.start();
    for stream in [1, 3, 5] {
        h2.request(stream, "POST", "/upload", &[("content-length", "4")], false);
    }
    wait_held(&server, OTHER, 3);
    h2.request(7, "GET", "/", &[], true);
    let end = h2.stream_end(7, Duration::from_secs(10), "the fourth stream");
    assert_eq!(end.payload, b"Too Many Requests", "{end:?}");
}

#[test]
fn the_rate_gives_429_with_retry_after_per_forwarded_client_and_survives_a_worker_kill() {
    // Loopback is a trusted forwarder here (the default): requests count against the client
    // its X-Forwarded-For names.
    const BURST: u64 = 20;
    let server = start(2, &["--client-rate", "1", "--client-rate-burst", "20"]);
    let started = Instant::now();
    let as_client = |ip: &str| get_from(LOCAL, &server, "/", &format!("X-Forwarded-For: {ip}\r\n"));
    let mut admitted = 0u64;
    let mut refusal = None;
    for _ in 0..(BURST * 3) {
        let r = as_client("198.51.100.7").expect("GET");
        if r.status == 429 {
            refusal = Some(r);
            break;
        }
        assert_eq!(r.status, 200, "{}", r.text());
        admitted += 1;
    }
    let r = refusal.expect("a 429 once the burst is spent");
    assert_eq!(r.text(), "Too Many Requests");
    let retry: u64 = r
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    // The state is at most one interval past the burst: the next request is due within 1 s.
    assert_eq!(retry, 1, "Retry-After");
    assert!(r.header("x-request-id").is_some());
    // Another client of the same forwarder, and the forwarder itself, are not limited.
    assert_eq!(as_client("198.51.100.8").expect("GET").status, 200);
    assert_eq!(get_from(LOCAL, &server, "/", "").expect("GET").status, 200);

    // Both workers die; the rate state lives in the master's table, not in them.
    for pid in server.pids_of("worker") {
        assert!(crate::common::kill(pid, libc::SIGKILL));
    }
    wait_for(
        Duration::from_secs(20),
        "replacement workers serving",
        || as_client("198.51.100.9").ok().filter(|r| r.status == 200),
    );
    let mut refused_again = false;
    for _ in 0..(BURST * 3) {
        let r = as_client("198.51.100.7").expect("GET");
        if r.status == 429 {
            refused_again = true;
            break;
        }
        admitted += 1;
    }
    assert!(refused_again, "the client is limited again");
    // With a fresh state after the restart the client would have had a second burst.
    let secs = started.elapsed().as_secs();
    assert!(
        admitted <= BURST + secs + 1,
        "{admitted} requests admitted in {secs} s at 1/s with a burst of {BURST}"
    );
    wait_for(Duration::from_secs(10), "the refusals in /metrics", || {
        (limited(&server, "rate") >= 1).then_some(())
    });
}

#[test]
fn a_slowloris_of_5000_connections_from_one_address_leaves_another_served() {
    raise_nofile(12_000);
    let server = start(2, &UNTRUSTED_LOOPBACK);
    let port = server.http_port;
    let flood = std::thread::spawn(move || {
        // Idle connections: never a byte. Kept open until the end of the flood.
        let mut open = Vec::new();
        for _ in 0..5000 {
            if let Ok(s) = tcp_from(OTHER, port) {
                open.push(s);
            }
        }
        open.len()
    });
    let deadline = Duration::from_secs(60);
    let t = Instant::now();
    let mut served = 0;
    while !flood.is_finished() || served < 20 {
        let r =
            get_from(LOCAL, &server, "/", "").expect("a request from 127.0.0.1 during the flood");
        assert_eq!(r.status, 200, "{}", r.text());
        served += 1;
        assert!(t.elapsed() < deadline * 3, "the flood did not end");
    }
    let connected = flood.join().expect("flood thread") as u64;
    assert!(
        connected >= 1000,
        "only {connected} flood connections were made"
    );
    // Most were refused at once rather than held (the default cap is 256 open at a time; an
    // idle one is closed after 10 s, which frees its place for a later one).
    wait_for(Duration::from_secs(20), "the refusals in /metrics", || {
        (limited(&server, "connections") >= connected / 2).then_some(())
    });
}

/// Raises this process's open-file limit to at least `n` (up to the hard limit).
fn raise_nofile(n: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: get/setrlimit on a struct we own.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        if lim.rlim_cur < n {
            lim.rlim_cur = n.min(lim.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}
