//! Issue 20, "No client ever needs a retry": a draining worker (rolling restart, in-place
//! upgrade) never closes an HTTP/1 keep-alive connection under a client that may be sending.
//! It answers the next request on each open connection with `Connection: close` and closes
//! after that answer; a connection that stays idle is closed only after a grace
//! (docs/limits.md, "Draining").
//!
//! The clients here never retry: a request sent on a reused connection that the server closed
//! without an answer is a failed request, exactly as for a POST, most HTTP libraries or a load
//! balancer in front. (master/tests/it/zero_downtime.rs retries that case once, as RFC 9112 §9.3.1
//! allows for a GET; this test is the stricter one.)
//!
//! Figures: `cargo nextest run -p tako-server -E 'test(/^drain_keepalive::/)' --no-capture`.

use std::io::{self, BufReader, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::common::{http, kill, procfs, wait_for, Server, ServerOpts};
use serde_json::json;

const APP: &str = "drain";
const HOST: &str = "drain.example.com";
/// Keep-alive clients over plain HTTP and over HTTPS (HTTP/1.1 after ALPN).
const HTTP_CLIENTS: usize = 12;
const TLS_CLIENTS: usize = 4;
/// Rolling restarts of the proxy workers (`restart_workers`), then one in-place upgrade.
const ROUNDS: usize = 4;
/// A client's pause between an answer and its next request: short, so that most of the
/// time each connection is idle between two requests of a client that is about to send.
const PACE: Duration = Duration::from_millis(3);

#[derive(Default)]
struct Stats {
    ok: AtomicU64,
    failed: AtomicU64,
    /// Failures on a reused connection before any byte of the answer: the race of issue 20.
    unanswered: AtomicU64,
    /// Answers with `Connection: close` (the drain's way to end a connection).
    closed_by_answer: AtomicU64,
    errors: Mutex<Vec<String>>,
}

impl Stats {
    fn fail(&self, what: String, unanswered: bool) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        if unanswered {
            self.unanswered.fetch_add(1, Ordering::Relaxed);
        }
        let mut e = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        if e.len() < 20 {
            e.push(what);
        }
    }
}

struct Load {
    stop: Arc<AtomicBool>,
    stats: Arc<Stats>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    fn start(http_port: u16, tls_port: u16) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Stats::default());
        let mut threads = Vec::new();
        for i in 0..HTTP_CLIENTS + TLS_CLIENTS {
            let (stop, stats) = (Arc::clone(&stop), Arc::clone(&stats));
            let tls = i >= HTTP_CLIENTS;
            let name = format!("{}-{i}", if tls { "https" } else { "http" });
            let handle = std::thread::Builder::new()
                .name(name.clone())
                .spawn(move || {
                    if tls {
                        client(&name, &stop, &stats, false, || {
                            http::connect_tls(tls_port, Some(HOST))
                        });
                    } else {
                        client(&name, &stop, &stats, true, || http::connect(http_port));
                    }
                })
                .expect("spawn a client thread");
            threads.push(handle);
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

    /// Waits until `n` more requests succeeded: traffic flows now.
    fn wait_more(&self, n: u64, what: &str) {
        let from = self.ok_count();
        wait_for(Duration::from_secs(30), what, || {
            (self.ok_count() >= from + n).then_some(())
        });
    }

    fn finish(self) -> (u64, u64, u64, u64, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            let _ = t.join();
        }
        let s = &self.stats;
        let errors = s.errors.lock().unwrap_or_else(|e| e.into_inner()).clone();
        (
            s.ok.load(Ordering::Relaxed),
            s.failed.load(Ordering::Relaxed),
            s.unanswered.load(Ordering::Relaxed),
            s.closed_by_answer.load(Ordering::Relaxed),
            errors,
        )
    }
}

/// One keep-alive client: a request, its answer, a short pause, the next request on the same
/// connection until an answer says `Connection: close`. No retry, ever.
fn client<S: Read + Write>(
    name: &str,
    stop: &AtomicBool,
    stats: &Stats,
    forwarded: bool,
    connect: impl Fn() -> io::Result<S>,
) {
    let mut conn: Option<BufReader<S>> = None;
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let reused = conn.is_some();
        let mut c = match conn.take() {
            Some(c) => c,
            None => match connect() {
                Ok(s) => BufReader::new(s),
                Err(e) => {
                    stats.fail(format!("{name} #{i}: connect: {e}"), false);
                    std::thread::sleep(PACE);
                    continue;
                }
            },
        };
        let req = format!(
            "GET /k?i={i} HTTP/1.1\r\nHost: {HOST}\r\n{}\r\n",
            if forwarded {
                "X-Forwarded-Proto: https\r\n"
            } else {
                ""
            }
        );
        let sent = c
            .get_mut()
            .write_all(req.as_bytes())
            .and_then(|()| c.get_mut().flush());
        let first = sent.and_then(|()| io::BufRead::fill_buf(&mut c).map(|b| b.len()));
        match first {
            Ok(0) | Err(_) => {
                let what = match first {
                    Err(e) => e.to_string(),
                    _ => "closed".into(),
                };
                stats.fail(
                    format!(
                        "{name} #{i}: no answer on a {} connection: {what}",
                        if reused { "reused" } else { "new" }
                    ),
                    reused,
                );
            }
            Ok(_) => match http::read_response(&mut c, false) {
                Ok(r) if r.status == 200 => {
                    stats.ok.fetch_add(1, Ordering::Relaxed);
                    let close = r
                        .header("connection")
                        .is_some_and(|v| v.eq_ignore_ascii_case("close"));
                    if close {
                        stats.closed_by_answer.fetch_add(1, Ordering::Relaxed);
                    } else {
                        conn = Some(c);
                    }
                }
                Ok(r) => stats.fail(
                    format!("{name} #{i}: status {} {:?}", r.status, r.text()),
                    false,
                ),
                Err(e) => stats.fail(format!("{name} #{i}: broken answer: {e}"), false),
            },
        }
        std::thread::sleep(PACE);
    }
}

/// The master that an in-place upgrade started: SIGTERM at drop, its tree SIGKILLed after.
struct Adopted(i32);

impl Drop for Adopted {
    fn drop(&mut self) {
        let tree = procfs::descendants(self.0);
        if procfs::alive(self.0) {
            kill(self.0, libc::SIGTERM);
            let gone =
                crate::common::poll(Duration::from_secs(45), Duration::from_millis(20), || {
                    (!procfs::alive(self.0)).then_some(())
                });
            if gone.is_none() {
                kill(self.0, libc::SIGKILL);
            }
        }
        for p in tree {
            if procfs::alive(p) {
                kill(p, libc::SIGKILL);
            }
        }
    }
}

#[test]
fn draining_workers_answer_every_keep_alive_request() {
    let mut server = Server::start(ServerOpts::default().test_certs());
    server.deploy(APP, "v1", &[HOST], 2, &[]);
    let load = Load::start(server.http_port, server.tls_port);
    load.wait_more(200, "traffic before the restarts");

    let started = Instant::now();
    for round in 0..ROUNDS {
        let d = server.ok(&json!({"command":"restart_workers"}));
        assert_eq!(d["generation"], json!(2 + round as u64), "{d}");
        // Past the drain grace of idle connections, so each round meets the previous one's
        // workers gone and the next one's connections all open.
        load.wait_more(300, "traffic after a rolling restart");
    }
    // The in-place upgrade: a new master takes the listeners, the old one drains its workers
    // and exits.
    let d = server.ok(&json!({"command":"upgrade"}));
    let new_pid = d["new_pid"].as_i64().expect("new_pid") as i32;
    let _new = Adopted(new_pid);
    let st = server
        .wait_exit(Duration::from_secs(45))
        .expect("the old master exits after the hand-over");
    assert_eq!(crate::common::exit_code(st), 0, "{}", server.stderr_text());
    load.wait_more(300, "traffic after the upgrade");
    let took = started.elapsed();

    let (ok, failed, unanswered, closed, errors) = load.finish();
    eprintln!(
        "FIGURES drain keep-alive: {ROUNDS} rolling restarts and 1 upgrade in {} ms, {} clients: {ok} ok, {failed} failed ({unanswered} unanswered on a reused connection), {closed} answers with Connection: close",
        took.as_millis(),
        HTTP_CLIENTS + TLS_CLIENTS
    );
    for e in &errors {
        eprintln!("FIGURES drain keep-alive: failure: {e}");
    }
    assert_eq!(failed, 0, "failed requests: {errors:#?}");
    assert!(
        closed > 0,
        "no answer carried Connection: close: the drains ended no connection by an answer"
    );
}
