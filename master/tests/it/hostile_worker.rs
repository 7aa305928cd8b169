//! Issue 17, item 3: a compromised proxy worker must not be able to take the master down.
//!
//! Each test plays the compromised worker for real: it stops a worker process (SIGSTOP, so the
//! worker neither reads nor writes meanwhile), takes a copy of that worker's control socket
//! out of the process with `pidfd_getfd(2)` (what code running inside the worker could use
//! directly) and writes crafted frames on it to the real master. Needs root (or
//! CAP_SYS_PTRACE over the worker), as CI runs the tests.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use crate::common::hijack::{hijack_control_socket, resume};
use crate::common::http::http;
use crate::common::{kill, poll, procfs, wait_for, Request, Server};
use tako_ipc::frame::encode_frame;
use tako_ipc::{AppHttpStats, CacheInvalidation, InstanceEvent, LauncherToMaster, WorkerToMaster};

/// How long the master may take to end and replace a misbehaving worker.
const REPLACE_WITHIN: Duration = Duration::from_secs(30);

fn send(sock: &mut UnixStream, msg: &WorkerToMaster) {
    let frame = encode_frame(msg, 0).expect("encode");
    sock.write_all(&frame).expect("write a frame to the master");
}

fn worker_pids(server: &Server) -> Vec<i32> {
    server
        .processes()
        .iter()
        .filter(|p| p["role"] == "worker" && p["state"] == "active")
        .filter_map(|p| p["pid"].as_i64())
        .map(|p| p as i32)
        .collect()
}

/// Waits until `victim` is gone and a full set of active workers runs without it.
fn wait_replaced(server: &Server, victim: i32) -> Vec<i32> {
    let want = server.opts.workers as usize;
    let found = poll(REPLACE_WITHIN, Duration::from_millis(50), || {
        let pids = worker_pids(server);
        (pids.len() == want && !pids.contains(&victim) && !procfs::alive(victim)).then_some(pids)
    });
    match found {
        Some(pids) => {
            server.remember_tree();
            pids
        }
        None => panic!(
            "worker {victim} was not ended and replaced within {REPLACE_WITHIN:?} (workers now: {:?}, master exit: {:?}); stderr tail:\n{}",
            worker_pids(server),
            server.peek_exit(),
            tail(&server.stderr_text(), 30)
        ),
    }
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(n);
    lines[from..]
        .iter()
        .map(|l| l.chars().take(400).collect::<String>())
        .collect::<Vec<_>>()
        .join("\n")
}

fn metrics(server: &Server) -> String {
    http(server.http_port, &Request::get("tako.internal", "/metrics"))
        .map(|r| r.text())
        .unwrap_or_default()
}

fn master_rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn stats_for(app: String) -> AppHttpStats {
    let mut s = AppHttpStats {
        app,
        ..Default::default()
    };
    s.classes[1] = 7;
    s.buckets[0] = 7;
    s.duration_sum_secs = 0.01;
    s
}

#[test]
fn worker_with_unknown_app_stats_is_replaced_master_survives() {
    let server = Server::start_default();
    server.wait_http_ready();
    let victim = worker_pids(&server)[0];

    let mut sock = hijack_control_socket(victim);
    send(
        &mut sock,
        &WorkerToMaster::HttpStats(vec![stats_for("no-such-app".into())]),
    );

    wait_replaced(&server, victim);
    assert_eq!(server.peek_exit(), None, "the master must survive");
    let r = server.internal_status().expect("status after the attack");
    assert_eq!(r.status, 200);
    // The pusher renders /metrics every second: give it a few rounds.
    std::thread::sleep(Duration::from_millis(2500));
    let page = metrics(&server);
    assert!(
        page.contains("tako_worker_restarts_total"),
        "metrics page served: {page}"
    );
    assert!(
        !page.contains("no-such-app"),
        "a name no app has reached /metrics:\n{page}"
    );
    let log = server.stderr_text();
    assert!(
        log.lines().any(|l| l.contains("WARN")
            && l.contains(&victim.to_string())
            && l.contains("no-such-app")),
        "a warning names the worker and the violation; stderr tail:\n{}",
        tail(&log, 30)
    );
}

#[test]
fn oversized_stats_frame_cannot_break_status_broadcast() {
    let server = Server::start_default();
    server.wait_http_ready();
    let pids = worker_pids(&server);
    let (victim, honest) = (pids[0], pids[1]);

    // One entry whose name is 1 MiB: rendered into each of the 19 lines /metrics has per
    // app, the page would pass the 16 MiB frame cap.
    let mut sock = hijack_control_socket(victim);
    let huge = "x".repeat(1 << 20);
    send(&mut sock, &WorkerToMaster::HttpStats(vec![stats_for(huge)]));

    // Several status pushes (one a second) later, the honest worker is still the same
    // process and still serves the pages.
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        assert!(
            procfs::alive(honest),
            "the honest worker {honest} died after another worker's frame; stderr tail:\n{}",
            tail(&server.stderr_text(), 30)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let now = wait_replaced(&server, victim);
    assert!(
        now.contains(&honest),
        "the honest worker {honest} was replaced too: {now:?}"
    );
    assert_eq!(server.peek_exit(), None, "the master must survive");
    let status = server.internal_status().expect("status after the attack");
    assert_eq!(status.status, 200);
    assert!(status.body.len() < 64 * 1024, "status page stays small");
    let page = metrics(&server);
    assert!(
        page.contains("tako_worker_restarts_total{reason=\"crash\"} 1"),
        "exactly one worker (the hostile one) was replaced:\n{}",
        tail(&page, 80)
    );
    assert!(
        !page.contains("xxxxxxxxxxxxxxxx"),
        "the huge name is not rendered"
    );
}

#[test]
fn child_that_stops_reading_is_replaced_not_buffered() {
    let server = Server::start_default();
    server.wait_http_ready();
    let pids = worker_pids(&server);
    let (stalled, flooder) = (pids[0], pids[1]);

    // The stalled worker stops reading. The other one (compromised too) sends valid cache
    // invalidations, which the master fans out to every other worker: without a bound the
    // master queues them all for the worker that never reads.
    assert!(kill(stalled, libc::SIGSTOP), "cannot stop worker {stalled}");
    let mut sock = hijack_control_socket(flooder);
    let rss_before = master_rss_kib(server.pid);
    let target = format!("/{}", "a".repeat(4000));
    let inv = WorkerToMaster::CacheInvalidate(CacheInvalidation {
        host: "flood.example.com".into(),
        targets: (0..30).map(|i| format!("{target}{i}")).collect(),
    });
    let frame = encode_frame(&inv, 0).expect("encode");
    sock.set_write_timeout(Some(Duration::from_secs(2)))
        .expect("write timeout");
    let started = Instant::now();
    let mut sent_bytes = 0usize;
    // About 60 MB, unless the master stops reading us first.
    for _ in 0..500 {
        if started.elapsed() > Duration::from_secs(20) || sock.write_all(&frame).is_err() {
            break;
        }
        sent_bytes += frame.len();
    }
    eprintln!(
        "sent {} KiB of invalidations in {:?}",
        sent_bytes / 1024,
        started.elapsed()
    );

    let replaced = poll(REPLACE_WITHIN, Duration::from_millis(50), || {
        (!procfs::alive(stalled)).then_some(())
    });
    let rss_after = master_rss_kib(server.pid);
    eprintln!("master VmRSS {rss_before} KiB before, {rss_after} KiB after");
    assert!(
        replaced.is_some(),
        "the worker that stopped reading ({stalled}) is still there after {REPLACE_WITHIN:?}; master VmRSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    assert!(
        rss_after < rss_before + 48 * 1024,
        "the master buffered for a worker that does not read: VmRSS {rss_before} KiB -> {rss_after} KiB"
    );
    resume(flooder, sock);
    assert_eq!(server.peek_exit(), None, "the master must survive");
    wait_for(REPLACE_WITHIN, "status to answer after the attack", || {
        server
            .internal_status()
            .ok()
            .filter(|r| r.status == 200)
            .map(|_| ())
    });
    let log = server.stderr_text();
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains(&stalled.to_string())),
        "a warning names the stalled worker; stderr tail:\n{}",
        tail(&log, 30)
    );
}

/// A compromised app launcher reports the pid of another process (a worker, the master)
/// as its new instance: the master would later signal that pid. It ends the launcher
/// instead, as for any other broken rule, and never records the pid.
#[test]
fn launcher_naming_a_foreign_pid_is_ended() {
    let server = Server::start_default();
    server.wait_http_ready();
    server.deploy("web", "v1", &["web.example.com"], 1, &[]);
    let instance = server.instances("web")[0].0 as u32;
    let launcher = server.pids_of("launcher")[0];
    let worker = worker_pids(&server)[0];

    let mut sock = hijack_control_socket(launcher);
    for pid in [worker, server.pid] {
        let frame = encode_frame(
            &LauncherToMaster::Instance {
                app: "web".into(),
                instance_id: instance,
                event: InstanceEvent::Spawned { pid: pid as u32 },
            },
            0,
        )
        .expect("encode");
        // The master may have closed the channel after the first.
        let _ = sock.write_all(&frame);
    }
    drop(sock);
    // The master kills the stopped launcher and starts another.
    wait_for(REPLACE_WITHIN, "a new launcher", || {
        let now = server.pids_of("launcher");
        (!now.is_empty() && !now.contains(&launcher)).then_some(())
    });
    assert_eq!(server.peek_exit(), None, "the master must survive");
    assert!(
        kill(worker, 0),
        "the worker named in the frame is still alive"
    );
    for (_, pid, _) in server.instances("web") {
        assert!(
            pid != Some(worker) && pid != Some(server.pid),
            "a foreign pid was recorded for an instance: {pid:?}"
        );
    }
    let log = server.stderr_text();
    assert!(
        log.lines()
            .any(|l| l.contains("ending the app launcher") && l.contains("launcher's child")),
        "a warning names the violation; stderr tail:\n{}",
        tail(&log, 30)
    );
    // The app is served again by an instance the new launcher started.
    let served = poll(Duration::from_secs(60), Duration::from_millis(200), || {
        let r = server.app_get("web.example.com", "/hello").ok()?;
        (r.status == 200).then_some(())
    });
    assert!(
        served.is_some(),
        "the app is not served again; stderr tail:\n{}",
        tail(&server.stderr_text(), 40)
    );
}
