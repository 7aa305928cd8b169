//! The worker's own cost per proxied request, for counting under callgrind: instructions do
//! not drift with a shared machine's load the way CPU time does (`bench/cost.sh` runs it).
//!
//! Plays the master for one in-process worker (as proxy-worker/tests/worker.rs does), puts a
//! blocking upstream behind one route and drives `REQUESTS` keep-alive requests over `CONNS`
//! connections, the request `bench/run.sh` sends with wrk. The worker runs inside
//! `worker_thread`, so `--toggle-collect=*worker_thread*` counts the worker and nothing else.
//!
//! The third argument picks the scenario (`keepalive` when absent, the series in
//! BENCHMARKS.md):
//! - `close`: a new connection per request, which asks `Connection: close`;
//! - `body16k`: the upstream answers with a 16 KiB body;
//! - `download1m`: the upstream answers with a 1 MiB body;
//! - `upload1m`: each request is a `POST` with a 1 MiB body, answered with the usual 13 bytes;
//! - `json16k`: a 16 KiB JSON answer, which compression would take, to a client that sends
//!   `Accept-Encoding: identity` (the eligible answer's unencoded path);
//! - `json16k-gzip`, `json16k-br`: the same answer to a client that takes gzip or brotli (the
//!   encoder's cost per response).
//!
//! The worker thread's id goes to stderr (`worker_tid N`), so that a syscall trace of the
//! whole process (`strace -f`) can be cut down to the worker's own calls.
//!
//!   cargo build --release --example request_cost -p tako-proxy-worker
//!   valgrind --tool=callgrind --toggle-collect='*worker_thread*' \
//!       target/release/examples/request_cost 10000 8 [MODE]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use tako_ipc::{
    AppRoutes, Backend, FrameReader, FrameWriter, ListenerKind, MasterToWorker, RouteTable,
    WorkerConfig, WorkerToMaster, IPC_VERSION,
};

/// What the shared bench upstream (hyper) answers for `/`.
const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 13\r\n\
date: Fri, 27 Nov 2026 12:00:00 GMT\r\n\r\nHello, world!";
const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Forwarded-Proto: https\r\n\r\n";
const REQUEST_CLOSE: &[u8] =
    b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Forwarded-Proto: https\r\nConnection: close\r\n\r\n";
const WAIT: Duration = Duration::from_secs(30);
const MIB: usize = 1024 * 1024;

/// One scenario: what the client sends, what the upstream answers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    KeepAlive,
    Close,
    Body16k,
    Download1m,
    Upload1m,
    /// A 16 KiB JSON answer; the client accepts this coding.
    Json16k(&'static str),
}

impl Mode {
    fn parse(s: &str) -> Self {
        match s {
            "keepalive" => Self::KeepAlive,
            "close" => Self::Close,
            "body16k" => Self::Body16k,
            "download1m" => Self::Download1m,
            "upload1m" => Self::Upload1m,
            "json16k" => Self::Json16k("identity"),
            "json16k-gzip" => Self::Json16k("gzip"),
            "json16k-br" => Self::Json16k("br"),
            other => panic!(
                "unknown mode {other}: keepalive, close, body16k, download1m, upload1m, \
                 json16k, json16k-gzip, json16k-br"
            ),
        }
    }

    /// The upstream's answer: `RESPONSE`, or a head and a body of the mode's size.
    fn response(self) -> Vec<u8> {
        if let Self::Json16k(_) = self {
            return json_response(16 * 1024);
        }
        let len = match self {
            Self::Body16k => 16 * 1024,
            Self::Download1m => MIB,
            _ => return RESPONSE.to_vec(),
        };
        let mut r = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\n\
             content-length: {len}\r\ndate: Fri, 27 Nov 2026 12:00:00 GMT\r\n\r\n"
        )
        .into_bytes();
        r.extend((0..len).map(|i| b'a' + (i % 26) as u8));
        r
    }

    /// The client's request, body included.
    fn request(self) -> Vec<u8> {
        match self {
            Self::Close => REQUEST_CLOSE.to_vec(),
            Self::Upload1m => {
                let mut r = format!(
                    "POST /upload HTTP/1.1\r\nHost: localhost\r\nX-Forwarded-Proto: https\r\n\
                     Content-Type: application/octet-stream\r\nContent-Length: {MIB}\r\n\r\n"
                )
                .into_bytes();
                r.extend((0..MIB).map(|i| b'a' + (i % 26) as u8));
                r
            }
            Self::Json16k(coding) => format!(
                "GET /16k.json HTTP/1.1\r\nHost: localhost\r\nX-Forwarded-Proto: https\r\n\
                 Accept-Encoding: {coding}\r\n\r\n"
            )
            .into_bytes(),
            _ => REQUEST.to_vec(),
        }
    }
}

/// An `application/json` answer of `len` body bytes: records with fields from a fixed
/// pseudo-random sequence, so that an encoder works as on real data and not on a pattern.
fn json_response(len: usize) -> Vec<u8> {
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut body = String::from("[");
    while body.len() < len {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let r = seed >> 33;
        body.push_str(&format!(
            "{{\"id\":{},\"name\":\"user{}\",\"score\":{},\"active\":{}}},",
            r % 100_000,
            r % 977,
            r % 10_007,
            r.is_multiple_of(2)
        ));
    }
    body.truncate(len - 1);
    body.push(']');
    let mut r = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len}\r\n\
         date: Fri, 27 Nov 2026 12:00:00 GMT\r\n\r\n"
    )
    .into_bytes();
    r.extend_from_slice(body.as_bytes());
    r
}

#[inline(never)]
fn worker_thread(ipc: UnixStream) -> i32 {
    // SAFETY: gettid has no preconditions.
    eprintln!("worker_tid {}", unsafe { libc::gettid() });
    tako_proxy_worker::run(ipc)
}

/// Position just past the first blank line.
fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// The value of `Content-Length` in a head, 0 without one.
fn content_length(head: &[u8]) -> usize {
    String::from_utf8_lossy(head)
        .to_ascii_lowercase()
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// The length of a whole chunked body at the start of `buf`, `None` while it is incomplete.
fn chunked_len(buf: &[u8]) -> Option<usize> {
    let mut at = 0;
    loop {
        let line = buf[at..].windows(2).position(|w| w == b"\r\n")?;
        let size = std::str::from_utf8(&buf[at..at + line]).expect("chunk size");
        let size = usize::from_str_radix(size.trim(), 16).expect("chunk size");
        at += line + 2 + size + 2;
        if buf.len() < at {
            return None;
        }
        if size == 0 {
            return Some(at);
        }
    }
}

/// Answers every request on every connection with `response`, after reading its body.
fn upstream(response: &'static [u8]) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind the upstream");
    let port = l.local_addr().expect("upstream address").port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = vec![0u8; 64 * 1024];
                loop {
                    while let Some(end) = head_end(&buf) {
                        let whole = end + content_length(&buf[..end]);
                        if buf.len() < whole {
                            break;
                        }
                        buf.drain(..whole);
                        if s.write_all(response).is_err() {
                            return;
                        }
                    }
                    match s.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    port
}

/// Sends `n` requests one after another, on one connection or (`close`) one each, each
/// answer read whole.
fn client(addr: SocketAddr, n: usize, mode: Mode, request: &[u8]) -> usize {
    let connect = || {
        let s = TcpStream::connect(addr).expect("connect to the worker");
        s.set_nodelay(true).expect("nodelay");
        s.set_read_timeout(Some(WAIT)).expect("read timeout");
        s
    };
    let mut s = connect();
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    for i in 0..n {
        if mode == Mode::Close && i > 0 {
            s = connect();
            buf.clear();
        }
        s.write_all(request).expect("send a request");
        let end = loop {
            if let Some(end) = head_end(&buf) {
                break end;
            }
            let got = s.read(&mut chunk).expect("read an answer");
            assert!(got > 0, "the worker closed after {i} requests");
            buf.extend_from_slice(&chunk[..got]);
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 200"), "{head}");
        let whole = loop {
            let len = if head.contains("transfer-encoding: chunked") {
                chunked_len(&buf[end..])
            } else {
                Some(content_length(&buf[..end])).filter(|&l| buf.len() >= end + l)
            };
            if let Some(len) = len {
                break end + len;
            }
            let got = s.read(&mut chunk).expect("read a body");
            assert!(got > 0, "the worker closed in a body");
            buf.extend_from_slice(&chunk[..got]);
        };
        buf.drain(..whole);
        if mode == Mode::Close {
            // The worker closes after the answer; the next request waits for that.
            assert_eq!(s.read(&mut chunk).expect("read the close"), 0, "no close");
        }
    }
    n
}

async fn next(rx: &mut FrameReader<WorkerToMaster>) -> WorkerToMaster {
    match tokio::time::timeout(WAIT, rx.recv()).await {
        Ok(Ok(Some((msg, _)))) => msg,
        other => panic!("no message from the worker: {other:?}"),
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let requests: usize = args.next().map_or(10_000, |a| a.parse().expect("REQUESTS"));
    let conns: usize = args.next().map_or(8, |a| a.parse().expect("CONNS"));
    let mode = args.next().map_or(Mode::KeepAlive, |a| Mode::parse(&a));
    let upstream_port = upstream(mode.response().leak());
    let request: &'static [u8] = mode.request().leak();

    let (ours, theirs) = UnixStream::pair().expect("socketpair");
    let worker = std::thread::spawn(move || worker_thread(theirs));
    let http = TcpListener::bind("127.0.0.1:0").expect("bind http");
    let https = TcpListener::bind("127.0.0.1:0").expect("bind https");
    let http_addr = http.local_addr().expect("http address");

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut tx = runtime.block_on(async {
        ours.set_nonblocking(true).expect("nonblocking");
        let (r, w) = tokio::net::UnixStream::from_std(ours)
            .expect("ipc stream")
            .into_split();
        let mut tx = FrameWriter::<MasterToWorker>::new(w);
        let mut rx = FrameReader::<WorkerToMaster>::new(r);
        let config = WorkerConfig {
            index: 0,
            generation: 1,
            http_port: http_addr.port(),
            https_port: 443,
            trusted_proxies: vec!["127.0.0.0/8".into()],
            acme_enabled: false,
            server_started_unix_secs: 0,
            cache_bytes: 0,
            h2_timeouts: None,
            sandbox: tako_ipc::SandboxConfig::off(),
            proxy_protocol: Vec::new(),
            compression: true,
            client_limits: tako_ipc::ClientLimits::DEFAULT,
        };
        tx.send(&MasterToWorker::Hello {
            version: IPC_VERSION,
            config,
        })
        .await
        .expect("hello");
        // The per-client table, as the master shares it: a request pays for its limits.
        let geometry = tako_ipc::client_table::Geometry {
            slots: tako_ipc::client_table::DEFAULT_SLOTS,
            columns: 4,
            seed: 1,
        };
        let (table_fd, _table) = tako_ipc::client_table::create(geometry).expect("client table");
        tx.send_with_fds(
            &MasterToWorker::ClientTable {
                geometry,
                column: 0,
            },
            &[table_fd],
        )
        .await
        .expect("client table");
        let fds: Vec<OwnedFd> = vec![
            http.try_clone().expect("dup").into(),
            https.try_clone().expect("dup").into(),
        ];
        tx.send_with_fds(
            &MasterToWorker::Listeners {
                kinds: vec![ListenerKind::Http, ListenerKind::Https],
            },
            &fds,
        )
        .await
        .expect("listeners");
        tx.send(&MasterToWorker::Certs(Vec::new()))
            .await
            .expect("certs");
        let app = AppRoutes {
            name: "bench".into(),
            routes: vec!["localhost".into()],
            release_path: "/nonexistent".into(),
            stopped: false,
            on_demand: false,
            backends: vec![Backend {
                instance_id: 1,
                port: upstream_port,
            }],
            starting: false,
        };
        tx.send(&MasterToWorker::Routes(RouteTable {
            epoch: 1,
            apps: vec![app],
        }))
        .await
        .expect("routes");
        loop {
            if let WorkerToMaster::TableApplied { epoch: 1, .. } = next(&mut rx).await {
                break;
            }
        }
        // The worker's later reports are not needed; reading them keeps its writes flowing.
        tokio::spawn(async move { while let Ok(Some(_)) = rx.recv().await {} });
        tx
    });

    let started = Instant::now();
    let per_conn = requests.div_ceil(conns.max(1));
    let clients: Vec<_> = (0..conns.max(1))
        .map(|_| std::thread::spawn(move || client(http_addr, per_conn, mode, request)))
        .collect();
    let done: usize = clients.into_iter().map(|c| c.join().expect("client")).sum();
    let took = started.elapsed();

    runtime.block_on(async {
        tx.send(&MasterToWorker::Drain { deadline_ms: 1000 })
            .await
            .expect("drain");
    });
    let code = worker.join().expect("worker thread");
    println!(
        "requests {done} conns {conns} seconds {:.3} worker_exit {code}",
        took.as_secs_f64()
    );
}
