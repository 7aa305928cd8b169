//! Issue 17 item 5: HTTP/2 connections end. A TLS connection that never sends the HTTP/2
//! preface, one that keeps no stream open, a stalled request body, more streams than the
//! limit and a rapid-reset flood each cost a bounded amount, and the worker keeps serving.
//!
//! The HTTP/2 client here is raw frames over rustls (ALPN `h2`), so the tests choose every
//! frame, including the ones a well-behaved client library would never send. The minute-long
//! timers are shortened with the hidden `--test-h2-timeouts-ms PREFACE,IDLE,BODY` flag (BODY
//! also bounds how long a response may wait for a shut flow-control window).

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::common::{Server, ServerOpts};

const HOST: &str = "app.example.com";

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;

const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

const REFUSED_STREAM: u32 = 0x7;
const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[derive(Debug)]
pub(crate) struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    pub(crate) payload: Vec<u8>,
}

impl Frame {
    fn code(&self) -> Option<u32> {
        let at = if self.kind == GOAWAY { 4 } else { 0 };
        let b = self.payload.get(at..at + 4)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// What a read of the connection brought.
#[derive(Debug)]
enum Next {
    Frame(Frame),
    /// The server closed the connection (close_notify, FIN or reset).
    Closed,
    /// Nothing within the wait.
    Quiet,
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

pub(crate) struct H2 {
    tls: Tls,
}

/// A TLS connection to the server that negotiated `h2`; nothing of HTTP/2 sent yet.
pub(crate) fn connect(server: &Server) -> H2 {
    let mut cfg = (*crate::common::http::tls_config()).clone();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let name = rustls_pki_types::ServerName::try_from(HOST.to_string()).expect("server name");
    let mut conn =
        rustls::ClientConnection::new(std::sync::Arc::new(cfg), name).expect("TLS client");
    let mut tcp = TcpStream::connect(("127.0.0.1", server.tls_port)).expect("connect");
    tcp.set_nodelay(true).expect("nodelay");
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    tcp.set_write_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).expect("TLS handshake");
    }
    assert_eq!(conn.alpn_protocol(), Some(&b"h2"[..]), "ALPN chose h2");
    H2 {
        tls: rustls::StreamOwned::new(conn, tcp),
    }
}

fn hpack_int(out: &mut Vec<u8>, first: u8, prefix_bits: u32, mut value: usize) {
    let max = (1usize << prefix_bits) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// One header as an HPACK literal without indexing, new name, no Huffman coding.
fn hpack_literal(out: &mut Vec<u8>, name: &str, value: &str) {
    out.push(0x00);
    hpack_int(out, 0, 7, name.len());
    out.extend_from_slice(name.as_bytes());
    hpack_int(out, 0, 7, value.len());
    out.extend_from_slice(value.as_bytes());
}

fn request_block(method: &str, path: &str, authority: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut block = Vec::new();
    for (k, v) in [
        (":method", method),
        (":scheme", "https"),
        (":path", path),
        (":authority", authority),
    ]
    .into_iter()
    .chain(extra.iter().copied())
    {
        hpack_literal(&mut block, k, v);
    }
    block
}

fn frame_bytes(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

fn headers_frame(stream: u32, end_stream: bool, block: &[u8]) -> Vec<u8> {
    let flags = END_HEADERS | if end_stream { END_STREAM } else { 0 };
    frame_bytes(HEADERS, flags, stream, block)
}

impl H2 {
    fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.tls.write_all(bytes)?;
        self.tls.flush()
    }

    /// Sends a piece of a flood: false once the server closed the connection. A server that
    /// merely stops reading makes the write time out, which is not a close.
    fn flood(&mut self, bytes: &[u8]) -> bool {
        match self.send(bytes) {
            Ok(()) => true,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                panic!("the server stopped reading the flood without closing the connection")
            }
            Err(_) => false,
        }
    }

    /// The client preface and an empty SETTINGS frame.
    pub(crate) fn start(&mut self) {
        let mut out = PREFACE.to_vec();
        out.extend(frame_bytes(SETTINGS, 0, 0, &[]));
        self.send(&out).expect("send the preface");
    }

    pub(crate) fn request(
        &mut self,
        stream: u32,
        method: &str,
        path: &str,
        extra: &[(&str, &str)],
        end: bool,
    ) {
        let block = request_block(method, path, HOST, extra);
        self.send(&headers_frame(stream, end, &block))
            .expect("send HEADERS");
    }

    /// The next frame within `wait`; SETTINGS and PING are acknowledged on the way (a
    /// well-behaved client) unless `ack` is false.
    fn next(&mut self, wait: Duration, ack: bool) -> Next {
        let wait = wait.max(Duration::from_millis(1));
        let _ = self.tls.sock.set_read_timeout(Some(wait));
        let mut head = [0u8; 9];
        match self.tls.read_exact(&mut head) {
            Ok(()) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Next::Quiet
            }
            Err(_) => return Next::Closed,
        }
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; len];
        let _ = self
            .tls
            .sock
            .set_read_timeout(Some(Duration::from_secs(10)));
        if self.tls.read_exact(&mut payload).is_err() {
            return Next::Closed;
        }
        let frame = Frame {
            kind: head[3],
            flags: head[4],
            stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
            payload,
        };
        if ack && frame.flags & ACK == 0 {
            let reply = match frame.kind {
                SETTINGS => Some(frame_bytes(SETTINGS, ACK, 0, &[])),
                PING => Some(frame_bytes(PING, ACK, 0, &frame.payload)),
                _ => None,
            };
            if let Some(reply) = reply {
                let _ = self.send(&reply);
            }
        }
        Next::Frame(frame)
    }

    /// Frames until `until` says stop (returns Some) or `bound` passes; panics naming `what`
    /// if the bound passes first.
    fn wait_for<T>(
        &mut self,
        bound: Duration,
        what: &str,
        ack: bool,
        mut until: impl FnMut(&Next) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + bound;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!("{what}: nothing after {bound:?}");
            }
            let next = self.next(left, ack);
            if let Some(v) = until(&next) {
                return v;
            }
            if matches!(next, Next::Closed) {
                panic!("{what}: the connection closed first");
            }
        }
    }

    /// Waits until the server closes the connection, reading (and dropping) what it sends;
    /// returns how long that took, or None when it was still open after `bound`.
    fn closed_within(&mut self, bound: Duration, ack: bool) -> Option<Duration> {
        let started = Instant::now();
        let deadline = started + bound;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            match self.next(left, ack) {
                Next::Closed => return Some(started.elapsed()),
                Next::Quiet => return None,
                Next::Frame(_) => {}
            }
        }
    }

    /// The server's first SETTINGS frame (acknowledged), as (id, value) pairs.
    fn server_settings(&mut self) -> Vec<(u16, u32)> {
        let f = self.wait_for(
            Duration::from_secs(10),
            "server SETTINGS",
            true,
            |n| match n {
                Next::Frame(f) if f.kind == SETTINGS && f.flags & ACK == 0 => {
                    Some(f.payload.clone())
                }
                _ => None,
            },
        );
        f.chunks_exact(6)
            .map(|c| {
                (
                    u16::from_be_bytes([c[0], c[1]]),
                    u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
                )
            })
            .collect()
    }

    /// Reads until stream `id` ends; returns the frame that ended it (HEADERS or DATA with
    /// END_STREAM, or RST_STREAM).
    pub(crate) fn stream_end(&mut self, id: u32, bound: Duration, what: &str) -> Frame {
        self.wait_for(bound, what, true, |n| match n {
            Next::Frame(f)
                if f.stream == id
                    && (f.kind == RST_STREAM
                        || (matches!(f.kind, HEADERS | DATA) && f.flags & END_STREAM != 0)) =>
            {
                Some(Frame {
                    kind: f.kind,
                    flags: f.flags,
                    stream: f.stream,
                    payload: f.payload.clone(),
                })
            }
            _ => None,
        })
    }
}

fn server_with(timeouts: &str) -> Server {
    let mut opts = ServerOpts::default().test_certs();
    opts.workers = 1;
    Server::start(opts.arg("--test-h2-timeouts-ms").arg(timeouts))
}

fn with_app(timeouts: &str) -> Server {
    let server = server_with(timeouts);
    server.deploy("web", "v1", &[HOST], 1, &[]);
    let r = server.app_get(HOST, "/hello").expect("first request");
    assert_eq!(r.status, 200, "{}", r.text());
    server
}

/// A full GET over a fresh h2 connection answers 200: the worker still serves.
fn h2_get_works(server: &Server) {
    let mut c = connect(server);
    c.start();
    c.request(1, "GET", "/after", &[], true);
    let end = c.stream_end(1, Duration::from_secs(10), "the answer to a normal request");
    assert_ne!(end.kind, RST_STREAM, "a normal request was reset: {end:?}");
}

#[test]
fn h2_connection_without_preface_is_closed() {
    let server = server_with("1000,60000,60000");
    let started = Instant::now();
    // Silent after the TLS handshake, half a preface, and a full preface without SETTINGS.
    let mut silent = connect(&server);
    let mut half = connect(&server);
    half.send(&PREFACE[..10]).expect("send");
    let mut no_settings = connect(&server);
    no_settings.send(PREFACE).expect("send");
    // A client that sent its preface and SETTINGS is not ended by this timer.
    let mut good = connect(&server);
    good.start();

    for (name, c) in [
        ("silent", &mut silent),
        ("half a preface", &mut half),
        ("preface without SETTINGS", &mut no_settings),
    ] {
        let closed = c.closed_within(Duration::from_secs(8), false);
        let at = started.elapsed();
        assert!(
            closed.is_some(),
            "{name}: the connection was still open {at:?} after the handshake (preface limit 1 s)"
        );
        assert!(
            at >= Duration::from_millis(900),
            "{name}: closed too early, {at:?}"
        );
    }
    assert!(
        good.closed_within(Duration::from_millis(1500), true)
            .is_none(),
        "a connection that sent its preface was closed by the preface timer"
    );
    h2_get_works(&server);
}

#[test]
fn idle_h2_connection_gets_goaway_and_close() {
    let server = server_with("3000,1000,60000");
    // One request, then nothing: GOAWAY once the connection had no stream for 1 s.
    let mut c = connect(&server);
    c.start();
    c.request(1, "GET", "/status", &[], true);
    // The host is unknown: the answer does not matter, only that the stream ends.
    c.stream_end(1, Duration::from_secs(10), "the answer");
    let answered = Instant::now();
    // A client that ignores the GOAWAY (never reads, never answers its PING).
    let mut deaf = connect(&server);
    deaf.start();
    let deaf_started = Instant::now();

    let goaway = c.wait_for(
        Duration::from_secs(8),
        "GOAWAY on the idle connection",
        true,
        |n| match n {
            Next::Frame(f) if f.kind == GOAWAY => Some(answered.elapsed()),
            _ => None,
        },
    );
    assert!(
        goaway >= Duration::from_millis(900),
        "GOAWAY before the idle limit: {goaway:?}"
    );
    assert!(
        c.closed_within(Duration::from_secs(8), true).is_some(),
        "the connection stayed open after GOAWAY"
    );
    // 1 s idle, then at most the 3 s grace for the GOAWAY handshake.
    assert!(
        deaf.closed_within(Duration::from_secs(10), false).is_some(),
        "a client that ignores GOAWAY kept its connection for {:?}",
        deaf_started.elapsed()
    );
    h2_get_works(&server);
}

#[test]
fn h2_streams_beyond_limit_are_refused() {
    let server = with_app("10000,60000,60000");
    let mut c = connect(&server);
    c.start();
    let settings = c.server_settings();
    let max = settings
        .iter()
        .find(|(id, _)| *id == SETTINGS_MAX_CONCURRENT_STREAMS)
        .map(|(_, v)| *v);
    assert_eq!(max, Some(128), "advertised SETTINGS: {settings:?}");
    // 130 requests whose bodies never come: each stream stays open at the app.
    let mut out = Vec::new();
    for i in 0..130u32 {
        let block = request_block("POST", "/upload", HOST, &[("content-length", "10")]);
        out.extend(headers_frame(1 + 2 * i, false, &block));
    }
    c.send(&out).expect("send 130 HEADERS");
    let mut refused = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(3);
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match c.next(left, true) {
            Next::Frame(f) if f.kind == RST_STREAM => {
                assert_eq!(f.code(), Some(REFUSED_STREAM), "{f:?}");
                refused.push(f.stream);
            }
            Next::Frame(f) if f.kind == GOAWAY => panic!("GOAWAY instead of refusals: {f:?}"),
            Next::Frame(_) => {}
            Next::Quiet => break,
            Next::Closed => panic!("the connection closed"),
        }
    }
    refused.sort_unstable();
    assert_eq!(
        refused,
        vec![257, 259],
        "streams 129 and 130 (ids 257, 259) are refused, the first 128 are not"
    );
    h2_get_works(&server);
}

#[test]
fn h2_rapid_reset_flood_is_bounded() {
    let server = with_app("10000,60000,60000");
    let workers = server.pids_of("worker");
    let mut c = connect(&server);
    c.start();
    c.server_settings();
    // CVE-2023-44487: open a stream and reset it at once, over and over, so the server
    // starts work for streams that never count against the stream limit.
    const FLOOD: u32 = 5000;
    let block = request_block("GET", "/reset", HOST, &[]);
    let started = Instant::now();
    let mut sent = 0u32;
    let mut write_failed = false;
    'flood: for batch in 0..FLOOD / 100 {
        let mut out = Vec::new();
        for i in 0..100 {
            let id = 1 + 2 * (batch * 100 + i);
            out.extend(headers_frame(id, true, &block));
            out.extend(frame_bytes(RST_STREAM, 0, id, &8u32.to_be_bytes()));
        }
        if !c.flood(&out) {
            write_failed = true;
            break 'flood;
        }
        sent += 100;
    }
    // The server must cut the connection off (GOAWAY, then close), not serve the flood.
    let mut goaway = None;
    let closed = write_failed || {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break false;
            }
            match c.next(left, true) {
                Next::Frame(f) if f.kind == GOAWAY => goaway = f.code(),
                Next::Frame(_) => {}
                Next::Closed => break true,
                Next::Quiet => break false,
            }
        }
    };
    eprintln!(
        "rapid reset: {sent} streams sent in {:?}, write failed: {write_failed}, GOAWAY code {goaway:?}, closed: {closed}",
        started.elapsed()
    );
    assert!(
        closed || goaway.is_some(),
        "after {sent} reset streams in {:?} the connection is still open, no GOAWAY",
        started.elapsed()
    );
    assert_eq!(server.pids_of("worker"), workers, "the worker stayed up");
    h2_get_works(&server);
    let r = server.app_get(HOST, "/hello").expect("HTTP/1 request");
    assert_eq!(r.status, 200);
}

#[test]
fn h2_stalled_request_body_is_aborted() {
    let server = with_app("10000,60000,1000");
    let mut c = connect(&server);
    c.start();
    c.request(1, "POST", "/upload", &[("content-length", "100")], false);
    c.send(&frame_bytes(DATA, 0, 1, b"0123456789"))
        .expect("send DATA");
    let last_byte = Instant::now();
    // 90 bytes never come: after 1 s without a byte the stream is reset.
    let end = c.stream_end(1, Duration::from_secs(8), "the end of the stalled stream");
    let at = last_byte.elapsed();
    assert_eq!(end.kind, RST_STREAM, "the stalled stream is reset: {end:?}");
    assert!(at >= Duration::from_millis(900), "reset too early: {at:?}");
    // The connection itself goes on.
    c.request(3, "GET", "/next", &[], true);
    let next = c.stream_end(
        3,
        Duration::from_secs(10),
        "the next request on the connection",
    );
    assert_ne!(next.kind, RST_STREAM, "{next:?}");
}

#[test]
fn h2_continuation_flood_is_cut_off() {
    let server = server_with("10000,60000,60000");
    let mut c = connect(&server);
    c.start();
    c.server_settings();
    // A header block that never ends: HEADERS without END_HEADERS, then CONTINUATION
    // frames of headers forever. The server must stop reading it long before 16 MiB.
    let mut first = request_block("GET", "/", HOST, &[]);
    hpack_literal(&mut first, "x-a", "b");
    c.send(&frame_bytes(HEADERS, END_STREAM, 1, &first))
        .expect("send HEADERS");
    let mut piece = Vec::new();
    while piece.len() < 16 * 1024 - 100 {
        hpack_literal(&mut piece, "x-flood", "0123456789abcdef0123456789abcdef");
    }
    let mut sent = 0usize;
    let mut write_failed = false;
    while sent < 16 * 1024 * 1024 {
        if !c.flood(&frame_bytes(CONTINUATION, 0, 1, &piece)) {
            write_failed = true;
            break;
        }
        sent += piece.len();
    }
    let closed = write_failed || c.closed_within(Duration::from_secs(10), true).is_some();
    eprintln!(
        "CONTINUATION flood: {sent} bytes sent, write failed: {write_failed}, closed: {closed}"
    );
    assert!(
        closed,
        "after {sent} bytes of CONTINUATION the connection is still open"
    );
    h2_get_works(&server);
}

#[test]
fn h2_oversized_header_list_is_refused() {
    let server = server_with("10000,60000,60000");
    let mut c = connect(&server);
    c.start();
    c.server_settings();
    // 70 KiB of one header, past the 64 KiB header-list limit, in HEADERS + CONTINUATION.
    let big = "a".repeat(70 * 1024);
    let block = request_block("GET", "/", HOST, &[("x-big", &big)]);
    let pieces: Vec<&[u8]> = block.chunks(16 * 1024).collect();
    let mut out = Vec::new();
    for (i, piece) in pieces.iter().enumerate() {
        let last = i + 1 == pieces.len();
        let (kind, mut flags) = if i == 0 {
            (HEADERS, END_STREAM)
        } else {
            (CONTINUATION, 0)
        };
        if last {
            flags |= END_HEADERS;
        }
        out.extend(frame_bytes(kind, flags, 1, piece));
    }
    c.send(&out).expect("send the header block");
    let answer = c.wait_for(Duration::from_secs(8), "the refusal", true, |n| match n {
        Next::Frame(f) if f.stream == 1 && f.kind == HEADERS => Some(f.payload.clone()),
        _ => None,
    });
    // `:status: 431`, its value plain or Huffman-coded (0x69 0x90 0xff is "431").
    let is_431 = |w: &[u8]| w == b"431" || w == [0x69, 0x90, 0xff];
    assert!(answer.windows(3).any(is_431), "a 431 answer: {answer:?}");
    // The connection goes on.
    c.request(3, "GET", "/next", &[], true);
    let next = c.stream_end(
        3,
        Duration::from_secs(10),
        "the next request on the connection",
    );
    assert_ne!(next.kind, RST_STREAM, "{next:?}");
}

/// An app whose `/big` answers 8 MiB in 64 KiB writes and every other path `ok`.
const BIG_APP_PY: &str = crate::python_app!(
    r#"import http.server

CHUNK = b"x" * 65536

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_GET(self):
        big = self.path == "/big"
        self.send_response(200)
        self.send_header("Content-Length", str(128 * len(CHUNK) if big else 2))
        self.end_headers()
        try:
            if big:
                for _ in range(128):
                    self.wfile.write(CHUNK)
            else:
                self.wfile.write(b"ok")
        except OSError:
            pass
"#
);

#[test]
fn h2_response_held_by_a_shut_window_is_reset() {
    let server = server_with("10000,60000,1000");
    let dir = crate::common::fixture::write_release_with(
        &server.data_dir,
        "big",
        "v1",
        server.deploy_owner(),
        BIG_APP_PY,
        crate::common::fixture::APP_JSON,
    );
    server.ok(&serde_json::json!({
        "command": "deploy", "app": "big", "version": "v1",
        "path": dir.display().to_string(), "routes": [HOST], "env": {},
        "instances": 1, "idle_timeout": 300
    }));
    let r = server.app_get(HOST, "/hello").expect("first request");
    assert_eq!(r.status, 200, "{}", r.text());

    let mut c = connect(&server);
    // SETTINGS_INITIAL_WINDOW_SIZE = 0 and never a WINDOW_UPDATE: the server may send the
    // response's HEADERS but not one byte of its body.
    let mut out = PREFACE.to_vec();
    out.extend(frame_bytes(SETTINGS, 0, 0, &[0, 4, 0, 0, 0, 0]));
    c.send(&out).expect("send the preface");
    c.request(1, "GET", "/big", &[], true);
    let asked = Instant::now();
    let end = c.stream_end(1, Duration::from_secs(20), "the end of the blocked stream");
    let at = asked.elapsed();
    assert_eq!(end.kind, RST_STREAM, "the blocked stream is reset: {end:?}");
    assert!(at >= Duration::from_millis(900), "reset too early: {at:?}");
    crate::common::wait_for(Duration::from_secs(10), "the reset in the log", || {
        server
            .stderr_text()
            .contains("flow-control window shut; stream reset")
            .then_some(())
    });
    // The worker serves other connections, over HTTP/2 and HTTP/1.
    h2_get_works(&server);
    let r = server.app_get(HOST, "/hello").expect("HTTP/1 request");
    assert_eq!(r.status, 200);
}
