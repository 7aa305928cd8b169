//! Zero-downtime operations under continuous load (docs/architecture.md,
//! "Restarts and upgrades"; issue 7): rolling worker restarts, a killed worker, a restart
//! through a stand-in service manager holding the FD store, the in-place re-exec upgrade, the
//! candidate sequence of the Tako CLI (with a root candidate and with an unprivileged
//! stand-in), and SIGTERM.
//!
//! Every test runs a client pool of std threads against one app: HTTP and HTTPS, keep-alive
//! and one connection per request, plus a slow request and (where the test is about workers)
//! a WebSocket-style upgraded connection. The figures are printed with `eprintln!` so they
//! can be quoted (`cargo nextest run -p tako-server -E 'test(/^zero_downtime::/)' --no-capture`).
//!
//! Keep-alive clients follow RFC 9112 §9.3.1: a GET on a reused connection that the server
//! closed before sending a single byte of the response is retried once on a new connection.
//! Those retries are counted apart (`retried`); every other error, and every status other than
//! 200 from the app, is a failed request.

use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::common::{
    exit_code, fixture, http, kill, procfs, users, wait_for, Mgmt, Request, Server,
};
use crate::common::{Response, ServerOpts};
use crate::python_app;
use serde_json::{json, Value};

const APP: &str = "zd";
const HOST: &str = "zd.example.com";

/// The app under load: `/slow?ms=N` answers after N ms, `/ws` with `Upgrade: websocket`
/// switches protocols and echoes lines, everything else answers `ok <pid>` at once.
const APP_PY: &str = python_app!(
    r#"import http.server, os, socketserver, sys, time, urllib.parse

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_GET(self):
        url = urllib.parse.urlparse(self.path)
        query = urllib.parse.parse_qs(url.query)
        if url.path == "/ws" and self.headers.get("Upgrade", "").lower() == "websocket":
            self.wfile.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
            self.wfile.flush()
            while True:
                line = self.rfile.readline()
                if not line:
                    break
                self.wfile.write(line)
                self.wfile.flush()
            self.close_connection = True
            return
        if url.path == "/slow":
            time.sleep(float(query.get("ms", ["0"])[0]) / 1000.0)
        body = ("ok %d %s\n" % (os.getpid(), url.path)).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

"#
);

// ---------------------------------------------------------------------------------------
// The app

/// Writes the release (fixture layout, our server.py) and deploys it with `instances`.
fn deploy_app(socket: &Path, data_dir: &Path, instances: u32) {
    let owner = if users::is_root() {
        let u = users::user(users::DEPLOY_USER);
        (u.uid, u.gid)
    } else {
        (
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        )
    };
    let dir = fixture::write_release(data_dir, APP, "v1", owner);
    fs::write(dir.join("server.py"), APP_PY).expect("write server.py");
    let mut m = Mgmt::connect(socket).expect("connect to the management socket");
    m.ok(&json!({
        "command": "deploy", "app": APP, "version": "v1",
        "path": dir.display().to_string(), "routes": [HOST], "env": {},
        "instances": instances, "idle_timeout": 300
    }));
}

fn start_with_app(opts: ServerOpts) -> Server {
    let server = Server::start(opts.test_certs());
    deploy_app(&server.socket, &server.data_dir, 2);
    server
}

fn is_ok(r: &Response) -> bool {
    r.status == 200 && r.body.starts_with(b"ok ")
}

// ---------------------------------------------------------------------------------------
// The client pool

#[derive(Default)]
struct Stats {
    ok: AtomicU64,
    failed: AtomicU64,
    /// Failures that were refused connections (a subset of `failed`).
    refused: AtomicU64,
    retried: AtomicU64,
    max_us: AtomicU64,
    errors: Mutex<Vec<String>>,
}

impl Stats {
    fn ok(&self, started: Instant) {
        self.ok.fetch_add(1, Ordering::Relaxed);
        self.max_us
            .fetch_max(started.elapsed().as_micros() as u64, Ordering::Relaxed);
    }

    fn fail(&self, client: &str, started: Instant, what: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        if what.contains("Connection refused") {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut e = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        if e.len() < 20 {
            e.push(format!(
                "{client} after {} ms: {what}",
                started.elapsed().as_millis()
            ));
        }
    }
}

#[derive(Debug)]
struct Report {
    ok: u64,
    failed: u64,
    refused: u64,
    retried: u64,
    max_latency: Duration,
    errors: Vec<String>,
}

struct Load {
    stop: Arc<AtomicBool>,
    stats: Arc<Stats>,
    threads: Vec<JoinHandle<()>>,
}

/// Pause between two requests of one client: enough traffic to hit every gap, little CPU.
const PACE: Duration = Duration::from_millis(8);

impl Load {
    /// Six clients: keep-alive and per-request connections, over HTTP and HTTPS.
    fn start(http_port: u16, tls_port: u16) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Stats::default());
        let mut threads = Vec::new();
        let spawn = |name: &'static str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(f)
                .expect("spawn a client thread")
        };
        for name in ["http-keepalive-1", "http-keepalive-2"] {
            let (stop, stats) = (stop.clone(), stats.clone());
            threads.push(spawn(
                name,
                Box::new(move || {
                    keep_alive_client(name, &stop, &stats, true, || http::connect(http_port))
                }),
            ));
        }
        {
            let (stop, stats) = (stop.clone(), stats.clone());
            threads.push(spawn(
                "https-keepalive",
                Box::new(move || {
                    keep_alive_client("https-keepalive", &stop, &stats, false, || {
                        http::connect_tls(tls_port, Some(HOST))
                    })
                }),
            ));
        }
        for name in ["http-new-1", "http-new-2"] {
            let (stop, stats) = (stop.clone(), stats.clone());
            threads.push(spawn(
                name,
                Box::new(move || {
                    per_request_client(name, &stop, &stats, |i| {
                        http::http(
                            http_port,
                            &Request::get(HOST, &format!("/new?i={i}"))
                                .header("X-Forwarded-Proto", "https"),
                        )
                    })
                }),
            ));
        }
        {
            let (stop, stats) = (stop.clone(), stats.clone());
            threads.push(spawn(
                "https-new",
                Box::new(move || {
                    per_request_client("https-new", &stop, &stats, |i| {
                        http::https(
                            tls_port,
                            Some(HOST),
                            &Request::get(HOST, &format!("/new?i={i}")),
                        )
                    })
                }),
            ));
        }
        Load {
            stop,
            stats,
            threads,
        }
    }

    fn ok_count(&self) -> u64 {
        self.stats.ok.load(Ordering::Relaxed)
    }

    /// Waits until `n` more requests succeeded: proves that traffic flows now.
    fn wait_more(&self, n: u64, what: &str) {
        let from = self.ok_count();
        wait_for(Duration::from_secs(30), what, || {
            (self.ok_count() >= from + n).then_some(())
        });
    }

    fn finish(self, label: &str) -> Report {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            let _ = t.join();
        }
        let s = &self.stats;
        let r = Report {
            ok: s.ok.load(Ordering::Relaxed),
            failed: s.failed.load(Ordering::Relaxed),
            refused: s.refused.load(Ordering::Relaxed),
            retried: s.retried.load(Ordering::Relaxed),
            max_latency: Duration::from_micros(s.max_us.load(Ordering::Relaxed)),
            errors: s.errors.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        };
        eprintln!(
            "FIGURES {label}: {} ok, {} failed ({} of them refused connections), {} keep-alive retries, max latency {} ms",
            r.ok,
            r.failed,
            r.refused,
            r.retried,
            r.max_latency.as_millis()
        );
        for e in &r.errors {
            eprintln!("FIGURES {label}: failure: {e}");
        }
        if r.refused > 0 {
            eprintln!("FIGURES {label}: (refused connections are counted, not listed)");
        }
        r
    }
}

fn per_request_client(
    name: &str,
    stop: &AtomicBool,
    stats: &Stats,
    send: impl Fn(u64) -> io::Result<Response>,
) {
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let started = Instant::now();
        match send(i) {
            Ok(r) if is_ok(&r) => stats.ok(started),
            Ok(r) => stats.fail(name, started, format!("status {} {:?}", r.status, r.text())),
            Err(e) => stats.fail(name, started, e.to_string()),
        }
        std::thread::sleep(PACE);
    }
}

enum Attempt {
    Done(Response),
    /// A reused connection was closed before any byte of the answer.
    Stale,
    Failed(io::Error),
}

fn keep_alive_once<S: Read + Write>(conn: &mut BufReader<S>, reused: bool, req: &[u8]) -> Attempt {
    let sent = conn
        .get_mut()
        .write_all(req)
        .and_then(|_| conn.get_mut().flush());
    let first = sent.and_then(|_| conn.fill_buf().map(|b| b.len()));
    match first {
        Ok(0) | Err(_) if reused => return Attempt::Stale,
        Ok(0) => {
            return Attempt::Failed(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "new connection closed before the answer",
            ))
        }
        Err(e) => return Attempt::Failed(e),
        Ok(_) => {}
    }
    match http::read_response(&mut *conn, false) {
        Ok(r) => Attempt::Done(r),
        Err(e) => Attempt::Failed(e),
    }
}

fn keep_alive_client<S: Read + Write>(
    name: &str,
    stop: &AtomicBool,
    stats: &Stats,
    forwarded: bool,
    connect: impl Fn() -> io::Result<S>,
) {
    let mut conn: Option<(BufReader<S>, bool)> = None;
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let req = format!(
            "GET /keepalive?i={i} HTTP/1.1\r\nHost: {HOST}\r\n{}\r\n",
            if forwarded {
                "X-Forwarded-Proto: https\r\n"
            } else {
                ""
            }
        );
        let started = Instant::now();
        let mut outcome = None;
        for _ in 0..2 {
            let (c, reused) = match conn.take() {
                Some(c) => c,
                None => match connect() {
                    Ok(s) => (BufReader::new(s), false),
                    Err(e) => {
                        outcome = Some(Err(format!("connect: {e}")));
                        break;
                    }
                },
            };
            let mut c = c;
            match keep_alive_once(&mut c, reused, req.as_bytes()) {
                Attempt::Done(r) => {
                    let close = r
                        .header("connection")
                        .is_some_and(|v| v.eq_ignore_ascii_case("close"));
                    if !close {
                        conn = Some((c, true));
                    }
                    outcome = Some(Ok(r));
                    break;
                }
                Attempt::Stale => {
                    stats.retried.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                Attempt::Failed(e) => {
                    outcome = Some(Err(e.to_string()));
                    break;
                }
            }
        }
        match outcome {
            Some(Ok(r)) if is_ok(&r) => stats.ok(started),
            Some(Ok(r)) => stats.fail(name, started, format!("status {} {:?}", r.status, r.text())),
            Some(Err(e)) => stats.fail(name, started, e),
            None => stats.fail(name, started, "stale twice".into()),
        }
        std::thread::sleep(PACE);
    }
}

/// One slow request in flight on its own connection.
struct Slow {
    handle: JoinHandle<(Duration, io::Result<Response>)>,
    ms: u64,
}

impl Slow {
    fn start(http_port: u16, ms: u64) -> Slow {
        let handle = std::thread::spawn(move || {
            let started = Instant::now();
            let r = http::http(
                http_port,
                &Request::get(HOST, &format!("/slow?ms={ms}")).header("X-Forwarded-Proto", "https"),
            );
            (started.elapsed(), r)
        });
        // Let it reach the app before the operation starts.
        std::thread::sleep(Duration::from_millis(300));
        Slow { handle, ms }
    }

    fn assert_completed(self, label: &str) {
        let (took, r) = self.handle.join().expect("slow request thread");
        let r = r.unwrap_or_else(|e| panic!("{label}: the slow request failed: {e}"));
        assert!(
            is_ok(&r),
            "{label}: the slow request got {} {:?}",
            r.status,
            r.text()
        );
        assert!(
            took >= Duration::from_millis(self.ms),
            "{label}: answered too early"
        );
        eprintln!(
            "FIGURES {label}: slow request ({} ms) completed in {} ms",
            self.ms,
            took.as_millis()
        );
    }
}

/// A WebSocket-style upgraded connection: after the 101 the app echoes lines.
struct Ws {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    n: u32,
}

impl Ws {
    fn open(http_port: u16) -> Ws {
        let mut s = http::connect(http_port).expect("connect for the WebSocket");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("set a read timeout");
        s.write_all(
            format!(
                "GET /ws HTTP/1.1\r\nHost: {HOST}\r\nX-Forwarded-Proto: https\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
            )
            .as_bytes(),
        )
        .expect("send the upgrade request");
        let mut reader = BufReader::new(s.try_clone().expect("clone the stream"));
        let mut head = String::new();
        loop {
            let mut line = String::new();
            let n = reader
                .read_line(&mut line)
                .expect("read the upgrade answer");
            assert!(n > 0, "connection closed during the upgrade: {head}");
            if line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        assert!(head.starts_with("HTTP/1.1 101"), "no 101: {head}");
        let mut ws = Ws {
            reader,
            writer: s,
            n: 0,
        };
        ws.ping().expect("first echo over the upgraded connection");
        ws
    }

    fn ping(&mut self) -> io::Result<()> {
        self.n += 1;
        let msg = format!("ping {}\n", self.n);
        self.writer.write_all(msg.as_bytes())?;
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        if line != msg {
            return Err(io::Error::other(format!(
                "echo {line:?} instead of {msg:?}"
            )));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Processes

fn fd_count(pid: i32) -> usize {
    fd_links(pid).len()
}

/// The master's descriptors once two samples 200 ms apart agree (a management connection
/// that just ended may still be open for a moment).
fn stable_fds(pid: i32) -> (usize, Vec<String>) {
    let mut last = fd_links(pid);
    for _ in 0..25 {
        std::thread::sleep(Duration::from_millis(200));
        let now = fd_links(pid);
        if now.len() == last.len() {
            return (now.len(), now);
        }
        last = now;
    }
    (last.len(), last)
}

/// What each open descriptor of `pid` points at, for the failure message.
fn fd_links(pid: i32) -> Vec<String> {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let mut out: Vec<String> = dir
        .filter_map(|e| {
            let e = e.ok()?;
            let target = fs::read_link(e.path()).ok()?;
            Some(format!(
                "{} -> {}",
                e.file_name().to_string_lossy(),
                target.display()
            ))
        })
        .collect();
    out.sort();
    out
}

/// (index, generation, pid, state) of every worker.
fn workers(procs: &[Value]) -> Vec<(i64, i64, i32, String)> {
    let mut w: Vec<_> = procs
        .iter()
        .filter(|p| p["role"] == "worker")
        .map(|p| {
            (
                p["index"].as_i64().unwrap_or(-1),
                p["generation"].as_i64().unwrap_or(-1),
                p["pid"].as_i64().unwrap_or(-1) as i32,
                p["state"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    w.sort();
    w
}

fn processes_at(socket: &Path) -> Vec<Value> {
    let Ok(mut m) = Mgmt::connect(socket) else {
        return Vec::new();
    };
    let Ok(line) = m.raw(br#"{"command":"processes"}"#) else {
        return Vec::new();
    };
    let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
    v["data"]["processes"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn hello_ok(socket: &Path) -> bool {
    Mgmt::connect(socket)
        .and_then(|mut m| m.raw(br#"{"command":"hello","protocol_version":3}"#))
        .is_ok_and(|l| l.contains(r#""status":"ok""#))
}

fn master_pid_at(socket: &Path) -> Option<i32> {
    processes_at(socket)
        .iter()
        .find(|p| p["role"] == "master")
        .and_then(|p| p["pid"].as_i64())
        .map(|p| p as i32)
}

/// Waits until `pid` is gone (zombies count as gone), at most `timeout`.
fn wait_gone(pid: i32, timeout: Duration) -> bool {
    crate::common::poll(timeout, Duration::from_millis(20), || {
        (!procfs::alive(pid)).then_some(())
    })
    .is_some()
}

/// A tako-server process the test starts itself (a custom binary path, inherited FDs, another
/// user): its tree is ended at drop.
struct Proc {
    child: Option<Child>,
    pid: i32,
    stderr_path: PathBuf,
    tree: Vec<i32>,
}

impl Proc {
    fn spawn(mut cmd: Command, stderr_path: &Path) -> Proc {
        let stderr = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(stderr_path)
            .expect("open the stderr file");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .env("RUST_LOG", "info")
            .process_group(0);
        let child = cmd.spawn().expect("start a tako-server process");
        Proc {
            pid: child.id() as i32,
            child: Some(child),
            stderr_path: stderr_path.to_path_buf(),
            tree: Vec::new(),
        }
    }

    fn remember_tree(&mut self) {
        for p in procfs::descendants(self.pid) {
            if !self.tree.contains(&p) {
                self.tree.push(p);
            }
        }
    }

    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn stderr_text(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.remember_tree();
        if let Some(child) = self.child.as_mut() {
            if matches!(child.try_wait(), Ok(None)) {
                kill(self.pid, libc::SIGTERM);
                if self.wait_exit(Duration::from_secs(20)).is_none() {
                    kill(-self.pid, libc::SIGKILL);
                    kill(self.pid, libc::SIGKILL);
                    let _ = self.wait_exit(Duration::from_secs(5));
                }
            }
        }
        for p in &self.tree {
            if procfs::alive(*p)
                && procfs::cmdline(*p)
                    .iter()
                    .any(|a| a.contains("tako-server"))
            {
                kill(*p, libc::SIGKILL);
            }
        }
        if std::thread::panicking() {
            eprintln!(
                "---- stderr of pid {} ----\n{}",
                self.pid,
                self.stderr_text()
            );
        }
    }
}

/// A master the test did not start (a re-exec successor): SIGTERM at drop, SIGKILL if it
/// lingers.
struct Adopted(i32);

impl Drop for Adopted {
    fn drop(&mut self) {
        if procfs::alive(self.0) {
            let tree = procfs::descendants(self.0);
            kill(self.0, libc::SIGTERM);
            if !wait_gone(self.0, Duration::from_secs(20)) {
                kill(self.0, libc::SIGKILL);
            }
            for p in tree {
                if procfs::alive(p) {
                    kill(p, libc::SIGKILL);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Tests

#[test]
fn five_rolling_worker_restarts_drop_nothing() {
    let server = start_with_app(ServerOpts::default());
    let load = Load::start(server.http_port, server.tls_port);
    load.wait_more(50, "traffic before the restarts");
    let mut ws = Ws::open(server.http_port);
    let before = workers(&server.processes());
    // The `processes` call above leaves a socket that the master closes a moment later.
    let (fds_before, links_before) = stable_fds(server.pid);
    let slow = Slow::start(server.http_port, 3000);

    let started = Instant::now();
    for round in 0..5 {
        let d = server.ok(&json!({"command":"restart_workers"}));
        assert_eq!(d["generation"], json!(2 + round), "{d}");
        assert_eq!(d["workers"], json!(2), "{d}");
        ws.ping()
            .unwrap_or_else(|e| panic!("the upgraded connection broke in round {round}: {e}"));
    }
    eprintln!(
        "FIGURES restart_workers: 5 rounds in {} ms",
        started.elapsed().as_millis()
    );
    load.wait_more(50, "traffic after the restarts");
    slow.assert_completed("restart_workers");
    ws.ping()
        .expect("the upgraded connection outlives five restarts");
    drop(ws);

    // The generation-1 workers drain and exit; the FD count of the master is back.
    let after = wait_for(Duration::from_secs(35), "only generation-6 workers", || {
        let w = workers(&server.processes());
        (w.len() == 2 && w.iter().all(|(_, g, _, s)| *g == 6 && s == "active")).then_some(w)
    });
    for (_, _, pid, _) in &before {
        assert!(
            after.iter().all(|(_, _, p, _)| p != pid),
            "worker {pid} survived: {after:?}"
        );
    }
    let fds_after = crate::common::poll(Duration::from_secs(5), Duration::from_millis(50), || {
        let n = fd_count(server.pid);
        (n == fds_before).then_some(n)
    })
    .unwrap_or_else(|| {
        panic!(
            "the master's descriptors changed:\nbefore {links_before:#?}\nafter {:#?}",
            fd_links(server.pid)
        )
    });
    eprintln!("FIGURES restart_workers: master FDs {fds_before} before, {fds_after} after");
    let report = load.finish("restart_workers");
    assert_eq!(report.failed, 0, "failed requests: {:?}", report.errors);
}

#[test]
fn killed_worker_is_replaced_and_the_replacement_serves() {
    let server = start_with_app(ServerOpts::default());
    let load = Load::start(server.http_port, server.tls_port);
    load.wait_more(50, "traffic before the kill");
    let before = workers(&server.processes());
    let (index, _, victim, _) = before[0].clone();
    let survivor = before[1].2;
    assert!(kill(victim, libc::SIGKILL));
    let killed_at = Instant::now();
    let replacement = wait_for(Duration::from_secs(5), "a replacement worker", || {
        workers(&server.processes())
            .into_iter()
            .find(|(i, _, p, s)| *i == index && *p != victim && s == "active")
            .map(|w| w.2)
    });
    eprintln!(
        "FIGURES kill -9: replacement {replacement} active {} ms after the kill",
        killed_at.elapsed().as_millis()
    );
    load.wait_more(100, "traffic after the replacement");
    let report = load.finish("kill -9 worker");

    // With the other worker stopped, only the replacement can accept: fresh connections
    // must still be answered.
    assert!(kill(survivor, libc::SIGSTOP));
    let served: Vec<_> = (0..10)
        .map(|i| {
            http::http(
                server.http_port,
                &Request::get(HOST, &format!("/replacement?i={i}"))
                    .header("X-Forwarded-Proto", "https"),
            )
        })
        .collect();
    assert!(kill(survivor, libc::SIGCONT));
    for r in served {
        let r = r.expect("the replacement answers");
        assert!(is_ok(&r), "{} {:?}", r.status, r.text());
    }
    // Only the killed worker's own connections may fail: at most one request per client.
    assert!(
        report.failed <= 6,
        "more failures than the killed worker's connections: {:?}",
        report.errors
    );
}

/// A datagram socket that receives `sd_notify` messages and keeps the stored FDs.
struct FdStore {
    sock: UnixDatagram,
    path: PathBuf,
    fds: Vec<(String, OwnedFd)>,
}

impl FdStore {
    fn bind() -> FdStore {
        let path = PathBuf::from(format!("/tmp/tako-zd-notify-{}.sock", std::process::id()));
        let _ = fs::remove_file(&path);
        let sock = UnixDatagram::bind(&path).expect("bind the notify socket");
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("set a timeout");
        FdStore {
            sock,
            path,
            fds: Vec::new(),
        }
    }

    /// Receives messages until `READY=1`, storing `FDSTORE=1` FDs by name.
    fn until_ready(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let mut buf = [0u8; 4096];
            let mut cmsg = nix::cmsg_space!([RawFd; 16]);
            let mut iov = [io::IoSliceMut::new(&mut buf)];
            let msg = match nix::sys::socket::recvmsg::<()>(
                self.sock.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                nix::sys::socket::MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Ok(m) => m,
                Err(_) => continue,
            };
            let mut fds = Vec::new();
            for c in msg.cmsgs().into_iter().flatten() {
                if let nix::sys::socket::ControlMessageOwned::ScmRights(list) = c {
                    // SAFETY: the kernel just installed these descriptors for us.
                    fds.extend(
                        list.into_iter()
                            .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                    );
                }
            }
            let n = msg.bytes;
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            if text.lines().any(|l| l == "FDSTORE=1") {
                let name = text
                    .lines()
                    .find_map(|l| l.strip_prefix("FDNAME="))
                    .unwrap_or("stored")
                    .to_string();
                if let Some(fd) = fds.into_iter().next() {
                    self.fds.retain(|(n, _)| *n != name);
                    self.fds.push((name, fd));
                }
            }
            if text.lines().any(|l| l == "READY=1") {
                return true;
            }
        }
        false
    }
}

impl Drop for FdStore {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// `sh -c 'export LISTEN_PID=$$; exec …'` with the stored FDs at 3, 4, … as systemd does.
fn start_with_fds(server: &Server, store: &FdStore) -> Proc {
    let names: Vec<&str> = store.fds.iter().map(|(n, _)| n.as_str()).collect();
    let srcs: Vec<RawFd> = store.fds.iter().map(|(_, fd)| fd.as_raw_fd()).collect();
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"export LISTEN_PID=$$; exec "$0" "$@""#)
        .arg(crate::common::BIN)
        .args(server.base_args())
        .env("NOTIFY_SOCKET", &store.path)
        .env("LISTEN_FDS", srcs.len().to_string())
        .env("LISTEN_FDNAMES", names.join(":"));
    // SAFETY: only fcntl, dup2 and close between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let mut tmp = Vec::with_capacity(srcs.len());
            for fd in &srcs {
                let t = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 256);
                if t < 0 {
                    return Err(io::Error::last_os_error());
                }
                tmp.push(t);
            }
            for (i, t) in tmp.iter().enumerate() {
                if libc::dup2(*t, 3 + i as RawFd) < 0 {
                    return Err(io::Error::last_os_error());
                }
                libc::close(*t);
            }
            Ok(())
        });
    }
    Proc::spawn(cmd, &server.data_dir.join("second.stderr"))
}

#[test]
fn restart_through_the_fd_store_drops_nothing() {
    let mut store = FdStore::bind();
    let notify = store.path.display().to_string();
    let mut server = start_with_app(ServerOpts::default().env("NOTIFY_SOCKET", &notify));
    assert!(store.until_ready(Duration::from_secs(10)), "no READY=1");
    let mut names: Vec<_> = store.fds.iter().map(|(n, _)| n.clone()).collect();
    names.sort();
    assert_eq!(
        names,
        vec![
            format!("http-127.0.0.1-{}", server.http_port),
            format!("https-127.0.0.1-{}", server.tls_port)
        ]
    );
    let load = Load::start(server.http_port, server.tls_port);
    load.wait_more(50, "traffic before the restart");

    // `systemctl restart`: stop, wait for the exit, start with the stored FDs.
    let t0 = Instant::now();
    let st = server.stop();
    assert_eq!(exit_code(st), 0, "{}", server.stderr_text());
    let stopped = t0.elapsed();
    let mut second = start_with_fds(&server, &store);
    assert!(
        store.until_ready(Duration::from_secs(20)),
        "the new master did not report READY=1: {}",
        second.stderr_text()
    );
    let ready = t0.elapsed();
    wait_for(Duration::from_secs(20), "the new master's socket", || {
        hello_ok(&server.socket).then_some(())
    });
    load.wait_more(100, "traffic after the restart");
    let report = load.finish("fd-store restart");
    eprintln!(
        "FIGURES fd-store restart: old master exited after {} ms, new master ready after {} ms, max request latency {} ms",
        stopped.as_millis(),
        ready.as_millis(),
        report.max_latency.as_millis()
    );
    let log = second.stderr_text();
    assert!(
        log.contains("adopted an inherited listening socket"),
        "the listeners were bound anew: {log}"
    );
    second.remember_tree();
    kill(second.pid, libc::SIGTERM);
    let st = second
        .wait_exit(Duration::from_secs(45))
        .expect("the second master exits");
    assert_eq!(exit_code(st), 0);
    assert_eq!(report.failed, 0, "failed requests: {:?}", report.errors);
}

#[test]
fn in_place_upgrade_to_the_same_binary_drops_nothing() {
    let mut server = start_with_app(ServerOpts::default());
    let load = Load::start(server.http_port, server.tls_port);
    load.wait_more(50, "traffic before the upgrade");
    let slow = Slow::start(server.http_port, 2000);
    let old = server.pid;
    let t0 = Instant::now();
    let d = server.ok(&json!({"command":"upgrade"}));
    let took = t0.elapsed();
    let new_pid = d["new_pid"].as_i64().expect("new_pid") as i32;
    let _new = Adopted(new_pid);
    assert_ne!(new_pid, old);
    let st = server
        .wait_exit(Duration::from_secs(45))
        .expect("the old master exits after the hand-over");
    assert_eq!(exit_code(st), 0, "{}", server.stderr_text());
    assert_eq!(master_pid_at(&server.socket), Some(new_pid));
    load.wait_more(100, "traffic after the upgrade");
    slow.assert_completed("ctl upgrade");
    let report = load.finish("ctl upgrade");
    eprintln!(
        "FIGURES ctl upgrade: answered after {} ms, new master {new_pid}",
        took.as_millis()
    );
    assert_eq!(report.failed, 0, "failed requests: {:?}", report.errors);
    let tree = procfs::descendants(new_pid);
    kill(new_pid, libc::SIGTERM);
    assert!(
        wait_gone(new_pid, Duration::from_secs(45)),
        "the new master exits on SIGTERM"
    );
    for p in tree {
        assert!(
            wait_gone(p, Duration::from_secs(5)),
            "{p} outlived the master"
        );
    }
}

#[test]
fn upgrade_to_a_binary_that_exits_keeps_the_old_master_serving() {
    if users::is_root() {
        users::require_default_users();
    }
    let dir = crate::common::temp_dir();
    let data_dir = dir.join("data");
    fs::create_dir_all(&data_dir).expect("create the data dir");
    fs::set_permissions(&data_dir, fs::Permissions::from_mode(0o755)).expect("chmod");
    let bin_dir = dir.join("bin");
    fs::create_dir_all(&bin_dir).expect("create bin/");
    fs::set_permissions(&bin_dir, fs::Permissions::from_mode(0o755)).expect("chmod");
    let bin = bin_dir.join("tako-server");
    fs::copy(crate::common::BIN, &bin).expect("copy the binary");
    let socket = data_dir.join("tako.sock");
    let (http_port, tls_port) = crate::common::free_ports();
    crate::common::certs::install(
        &data_dir,
        &["default".to_string(), "*.example.com".to_string()],
        (0, 0),
    );
    let mut cmd = Command::new(&bin);
    cmd.args([
        "--socket",
        &socket.display().to_string(),
        "--port",
        &http_port.to_string(),
        "--tls-port",
        &tls_port.to_string(),
        "--listen",
        "127.0.0.1",
        "--data-dir",
        &data_dir.display().to_string(),
        "--workers",
        "2",
        "--no-acme",
        "--instance-port-offset",
        &crate::common::instance_port_offset().to_string(),
    ]);
    let mut master = Proc::spawn(cmd, &dir.join("server.stderr"));
    wait_for(Duration::from_secs(20), "the socket", || {
        hello_ok(&socket).then_some(())
    });
    wait_for(Duration::from_secs(20), "the workers", || {
        (workers(&processes_at(&socket)).len() == 2).then_some(())
    });
    master.remember_tree();
    deploy_app(&socket, &data_dir, 2);
    let load = Load::start(http_port, tls_port);
    load.wait_more(50, "traffic before the upgrade");

    // The file at our path is now a script that exits at once.
    fs::remove_file(&bin).expect("remove the binary");
    fs::write(&bin, "#!/bin/sh\nexit 1\n").expect("write the script");
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).expect("chmod the script");

    let out = Command::new(crate::common::BIN)
        .args(["ctl", "--socket", &socket.display().to_string(), "upgrade"])
        .output()
        .expect("run ctl upgrade");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("FIGURES broken upgrade: ctl answered {:?}", text.trim());
    assert_ne!(out.status.code(), Some(0), "ctl upgrade succeeded: {text}");
    assert!(
        text.contains("Upgrade failed: the new server exited before it was ready"),
        "{text}"
    );
    assert!(text.contains("this server keeps serving"), "{text}");
    assert_eq!(master_pid_at(&socket), Some(master.pid));
    load.wait_more(100, "traffic after the failed upgrade");
    let report = load.finish("broken upgrade");
    assert_eq!(report.failed, 0, "failed requests: {:?}", report.errors);
    kill(master.pid, libc::SIGTERM);
    let st = master
        .wait_exit(Duration::from_secs(45))
        .expect("the master exits");
    assert_eq!(exit_code(st), 0);
    let _ = fs::remove_dir_all(&dir);
}

/// The upgrade owner the CLI would use, and a socket directory the primary creates (so the
/// deploy user may bind its candidate socket there, as in /run/tako).
fn upgrade_setup() -> (String, PathBuf) {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let owner = format!("upgrade-ci-{secs}-{}", std::process::id());
    let run = PathBuf::from(format!("/tmp/tako-zd-run-{}", std::process::id()));
    let _ = fs::remove_dir_all(&run);
    (owner, run)
}

/// The `tako servers upgrade` sequence (docs/operations.md, "Upgrade") with the candidate
/// started by `start_candidate`. Returns the load report.
///
/// With `fd_store`, the primary runs under the stand-in service manager and its restart keeps
/// the listeners (docs/architecture.md, "Restarts and upgrades"); otherwise it is a plain
/// SIGTERM and a new start, and only a candidate on the same ports covers the window.
fn cli_upgrade_sequence(
    label: &str,
    as_user: Option<&str>,
    fd_store: bool,
    check: impl FnOnce(&Path),
) -> Report {
    let (owner, run) = upgrade_setup();
    let mut store = fd_store.then(FdStore::bind);
    let mut opts = ServerOpts {
        socket: Some(run.join("tako.sock")),
        ..ServerOpts::default()
    };
    if let Some(st) = &store {
        opts = opts.env("NOTIFY_SOCKET", &st.path.display().to_string());
    }
    let mut server = start_with_app(opts);
    if let Some(st) = store.as_mut() {
        assert!(st.until_ready(Duration::from_secs(10)), "no READY=1");
    }
    let load = Load::start(server.http_port, server.tls_port);
    load.wait_more(50, "traffic before the upgrade");

    // 1-2: enter upgrading, server_info.
    server.ok(&json!({"command":"enter_upgrading","owner":owner}));
    let info = server.ok(&json!({"command":"server_info"}));
    assert_eq!(info["mode"], "upgrading");

    // 3: the candidate, as the CLI starts it.
    let cand_socket = run.join(format!("tako-{owner}.sock"));
    let log = server.data_dir.join(format!("candidate-{owner}.log"));
    let mut cmd = crate::common::candidate_command(&server, &cand_socket);
    cmd.args(["--renewal-interval-hours", "12"]);
    if let Some(name) = as_user {
        let u = users::user(name);
        cmd.uid(u.uid)
            .gid(u.gid)
            .env("HOME", &u.home)
            .env("USER", &u.name);
    }
    let mut launcher = Proc::spawn(cmd, &log);
    // The daemonizing parent returns once the child is up.
    let st = launcher
        .wait_exit(Duration::from_secs(60))
        .expect("the candidate's parent exits after daemonizing");
    assert_eq!(exit_code(st), 0, "{}", launcher.stderr_text());
    // 4: hello on the candidate socket.
    wait_for(Duration::from_secs(30), "the candidate's hello", || {
        hello_ok(&cand_socket).then_some(())
    });
    let candidate: Vec<i32> = procfs::all_pids()
        .into_iter()
        .filter(|p| {
            procfs::cmdline(*p)
                .iter()
                .any(|a| a.contains(&cand_socket.display().to_string()))
        })
        .collect();
    assert!(!candidate.is_empty(), "no candidate process found");
    check(&cand_socket);
    load.wait_more(50, "traffic with the candidate up");

    // 5-6: restart the primary while a slow request keeps it draining; it answers again.
    let slow = Slow::start(server.http_port, 3000);
    let t0 = Instant::now();
    let mut second = None;
    match store.as_mut() {
        None => server.restart(),
        Some(st) => {
            let st_exit = server.stop();
            assert_eq!(exit_code(st_exit), 0, "{}", server.stderr_text());
            let p = start_with_fds(&server, st);
            assert!(
                st.until_ready(Duration::from_secs(20)),
                "the new primary did not report READY=1: {}",
                p.stderr_text()
            );
            second = Some(p);
            wait_for(Duration::from_secs(20), "the new primary's socket", || {
                hello_ok(&server.socket).then_some(())
            });
        }
    }
    let restarted = t0.elapsed();
    slow.assert_completed(label);
    server.ok(&json!({"command":"server_info"}));
    // 8: leave upgrade mode; the candidate (or stand-in) exits by itself.
    server.ok(&json!({"command":"exit_upgrading","owner":owner}));
    let t1 = Instant::now();
    for p in &candidate {
        assert!(
            wait_gone(*p, Duration::from_secs(60)),
            "{label}: the candidate {p} did not exit; log:\n{}",
            fs::read_to_string(&log).unwrap_or_default()
        );
    }
    eprintln!(
        "FIGURES {label}: primary restarted in {} ms, candidate gone {} ms after exit_upgrading",
        restarted.as_millis(),
        t1.elapsed().as_millis()
    );
    load.wait_more(50, "traffic after the upgrade");
    let report = load.finish(label);
    drop(second);
    drop(server);
    let _ = fs::remove_dir_all(&run);
    report
}

/// Sets `net.ipv4.tcp_migrate_req` as the package does (docs/operations.md, "Upgrade") and puts
/// the old value back.
struct MigrateReq(Option<String>);

const MIGRATE_REQ: &str = "/proc/sys/net/ipv4/tcp_migrate_req";

impl MigrateReq {
    fn enable() -> MigrateReq {
        let old = fs::read_to_string(MIGRATE_REQ).ok();
        if old.as_deref().map(str::trim) == Some("1") {
            return MigrateReq(None);
        }
        match fs::write(MIGRATE_REQ, "1") {
            Ok(()) => {
                eprintln!(
                    "FIGURES: net.ipv4.tcp_migrate_req set to 1 for this test, as packaging does"
                );
                MigrateReq(old)
            }
            Err(e) => {
                eprintln!("FIGURES: cannot set net.ipv4.tcp_migrate_req ({e}); queued connections may be reset");
                MigrateReq(None)
            }
        }
    }
}

impl Drop for MigrateReq {
    fn drop(&mut self) {
        if let Some(old) = &self.0 {
            let _ = fs::write(MIGRATE_REQ, old.trim());
        }
    }
}

#[test]
fn cli_upgrade_sequence_with_a_root_candidate_drops_nothing() {
    users::require_root("a root candidate");
    let _migrate = MigrateReq::enable();
    let report = cli_upgrade_sequence("candidate upgrade", None, false, |sock| {
        let mut m = Mgmt::connect(sock).expect("connect to the candidate");
        let info = m.ok(&json!({"command":"server_info"}));
        assert_eq!(info["role"], "candidate", "{info}");
    });
    assert_eq!(report.failed, 0, "failed requests: {:?}", report.errors);
}

#[test]
fn cli_upgrade_sequence_with_an_unprivileged_stand_in_completes() {
    users::require_root("a candidate as the deploy user");
    let report = cli_upgrade_sequence(
        "stand-in upgrade (fd store)",
        Some(users::DEPLOY_USER),
        true,
        |sock| {
            let mut m = Mgmt::connect(sock).expect("connect to the stand-in");
            let info = m.ok(&json!({"command":"server_info"}));
            assert_eq!(info["role"], "stand-in", "{info}");
            assert_eq!(info["mode"], "upgrading", "{info}");
        },
    );
    assert_eq!(report.failed, 0, "failed requests: {:?}", report.errors);
}

#[test]
fn sigterm_under_load_finishes_in_flight_and_leaves_nothing() {
    let mut server = start_with_app(ServerOpts::default());
    let load = Load::start(server.http_port, server.tls_port);
    load.wait_more(50, "traffic before SIGTERM");
    let tree = server.remember_tree();
    let slow = Slow::start(server.http_port, 2000);
    let t0 = Instant::now();
    server.signal(libc::SIGTERM);
    slow.assert_completed("sigterm");
    let st = server
        .wait_exit(Duration::from_secs(45))
        .expect("the master exits");
    let took = t0.elapsed();
    assert_eq!(exit_code(st), 0, "{}", server.stderr_text());
    let report = load.finish("sigterm");
    let accept_errors = server
        .stderr_text()
        .lines()
        .filter(|l| l.contains("Accept failed"))
        .count();
    eprintln!("FIGURES sigterm: {accept_errors} accept errors logged");
    eprintln!("FIGURES sigterm: exit 0 after {} ms", took.as_millis());
    for p in tree {
        assert!(
            wait_gone(p, Duration::from_secs(5)),
            "{p} outlived the master: {:?}",
            procfs::cmdline(p)
        );
    }
    let left = procfs::processes_touching(&server.data_dir.display().to_string());
    assert!(left.is_empty(), "processes left: {left:?}");
    // After the signal the listeners are shut: new connections are refused at once. Only a
    // connection caught in the accept queue at that instant may be reset.
    assert!(
        report.failed - report.refused <= 12,
        "failures other than refused connections: {:?}",
        report.errors
    );
}
