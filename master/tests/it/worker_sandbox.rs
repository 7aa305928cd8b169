//! Issue 18, proxy workers: each worker confines itself with Landlock, a seccomp allowlist
//! and rlimits after the privilege drop (docs/isolation.md, "Proxy workers").
//!
//! Two kinds of test. The black-box ones start the real server and look at its workers
//! through `/proc` and over HTTP(S). The sandbox ones run the hidden
//! `tako-server sandbox-selftest`, which applies the very function a worker applies and
//! then tries what a compromised worker would try, reporting each outcome as JSON; they run
//! as root, so every refusal comes from the sandbox, not from file permissions.

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::fixture::chown;
use crate::common::users::require_root;
use crate::common::{procfs, wait_for, Server, ServerOpts, BIN};
use serde_json::{json, Value};

const HOST: &str = "app.example.com";

/// One run of `tako-server sandbox-selftest`: its JSON report (the first stdout line) and
/// how the process ended.
struct Selftest {
    report: Value,
    status: std::process::ExitStatus,
    stderr: String,
}

/// Runs the self-test on `data_dir` with `range` as the instance ports, trying to connect to
/// each of `connect`, and, with `exec`, ending with an execve of /bin/true.
fn selftest(data_dir: &Path, range: (u16, u16), connect: &[u16], exec: bool) -> Selftest {
    let mut cmd = Command::new(BIN);
    cmd.arg("sandbox-selftest")
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--port-range")
        .arg(format!("{}-{}", range.0, range.1));
    let static_file = data_dir.join("apps/web/releases/v1/public/index.html");
    if static_file.exists() {
        cmd.arg("--read").arg(&static_file);
    }
    for p in connect {
        cmd.arg("--connect").arg(p.to_string());
    }
    if exec {
        cmd.arg("--exec");
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {BIN}: {e}"));
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Ok(Some(st)) = child.try_wait() {
            break st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("sandbox-selftest did not finish within 20 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut stdout);
    }
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    let first = stdout.lines().next().unwrap_or_default();
    let report: Value = serde_json::from_str(first).unwrap_or_else(|e| {
        panic!("sandbox-selftest printed no JSON report ({e}); status {status:?}\nstdout:\n{stdout}\nstderr:\n{stderr}")
    });
    Selftest {
        report,
        status,
        stderr,
    }
}

/// A data dir with `apps/web/releases/v1/public/index.html`, as the self-test's target.
fn data_dir_with_release() -> PathBuf {
    let dir = crate::common::temp_dir();
    let public = dir.join("apps/web/releases/v1/public");
    fs::create_dir_all(&public).expect("create public/");
    fs::write(public.join("index.html"), "hello").expect("write index.html");
    dir
}

fn outcome<'a>(report: &'a Value, probe: &str) -> &'a Value {
    let v = &report["probes"][probe];
    assert!(v.is_object(), "no '{probe}' in the report: {report:#}");
    v
}

fn assert_refused(report: &Value, probe: &str) {
    let v = outcome(report, probe);
    assert_eq!(
        v["ok"],
        json!(false),
        "'{probe}' must fail in the sandbox: {report:#}"
    );
}

fn assert_allowed(report: &Value, probe: &str) {
    let v = outcome(report, probe);
    assert_eq!(
        v["ok"],
        json!(true),
        "'{probe}' must work in the sandbox: {report:#}"
    );
}

fn assert_fully_sandboxed(t: &Selftest) {
    assert_eq!(
        t.report["sandbox"]["landlock"],
        json!("full"),
        "Landlock must be fully enforced here (the CI kernel offers ABI 7): {:#}\n{}",
        t.report,
        t.stderr
    );
    assert_eq!(
        t.report["sandbox"]["seccomp"],
        json!(true),
        "{:#}",
        t.report
    );
}

#[test]
fn sandboxed_worker_cannot_read_etc_passwd() {
    require_root("reading /etc/passwd as root, which only the sandbox can refuse");
    let dir = data_dir_with_release();
    let t = selftest(&dir, (40000, 40010), &[], false);
    assert_fully_sandboxed(&t);
    assert_refused(&t.report, "read_etc_passwd");
    assert_refused(&t.report, "read_proc_self_environ");
    // Static files still open: the same read works beneath <data-dir>/apps.
    assert_allowed(&t.report, "read_static_file");
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn sandboxed_worker_cannot_write_data_dir() {
    require_root("writing the data dir as root, which only the sandbox can refuse");
    let dir = data_dir_with_release();
    let t = selftest(&dir, (40000, 40010), &[], false);
    assert_fully_sandboxed(&t);
    assert_refused(&t.report, "write_data_dir");
    assert_refused(&t.report, "write_apps_dir");
    assert_refused(&t.report, "write_tmp");
    assert!(
        !dir.join("apps/sandbox-probe").exists() && !dir.join("sandbox-probe").exists(),
        "a probe file was created"
    );
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn sandboxed_worker_cannot_connect_outside_instance_ports() {
    require_root("the worker sandbox as root");
    let dir = data_dir_with_release();
    let inside = TcpListener::bind("127.0.0.1:0").expect("bind");
    let outside = TcpListener::bind("127.0.0.1:0").expect("bind");
    let (pi, po) = (
        inside.local_addr().expect("addr").port(),
        outside.local_addr().expect("addr").port(),
    );
    let t = selftest(&dir, (pi, pi), &[pi, po], false);
    assert_fully_sandboxed(&t);
    assert_allowed(&t.report, &format!("connect_{pi}"));
    assert_refused(&t.report, &format!("connect_{po}"));
    // Nor a socket of its own to listen on, nor UDP to send anything anywhere.
    assert_refused(&t.report, "bind_tcp");
    assert_refused(&t.report, "udp_socket");
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn sandboxed_worker_cannot_execve() {
    require_root("the worker sandbox as root");
    let dir = data_dir_with_release();
    let t = selftest(&dir, (40000, 40010), &[], true);
    assert_fully_sandboxed(&t);
    // execve kills the process with SIGSYS; it never gets to run /bin/true or to report
    // that it returned.
    assert_eq!(
        t.status.signal(),
        Some(libc::SIGSYS),
        "execve must kill the sandboxed process with SIGSYS; it ended {:?}: {:#}\n{}",
        t.status,
        t.report,
        t.stderr
    );
    // A thread (clone with CLONE_THREAD) is still fine; the self-test started one.
    assert_allowed(&t.report, "spawn_thread");
    let _ = fs::remove_dir_all(&dir);
}

/// The pids of the server's workers.
fn worker_pids(server: &Server) -> Vec<i32> {
    wait_for(Duration::from_secs(10), "the workers' pids", || {
        let pids = server.pids_of("worker");
        (pids.len() == server.opts.workers as usize).then_some(pids)
    })
}

/// `Seccomp:` and `NoNewPrivs:` of /proc/<pid>/status.
fn seccomp_mode(pid: i32) -> Option<(String, String)> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
    };
    Some((field("Seccomp:")?, field("NoNewPrivs:")?))
}

fn assert_workers_filtered(server: &Server) {
    let pids = worker_pids(server);
    for pid in pids {
        let (mode, nnp) = seccomp_mode(pid).unwrap_or_else(|| panic!("worker {pid} is gone"));
        assert_eq!(
            mode, "2",
            "worker {pid} must run under a seccomp filter (Seccomp: 2)"
        );
        assert_eq!(nnp, "1", "worker {pid} must have no_new_privs");
    }
}

#[test]
fn workers_run_with_seccomp_filter() {
    require_root("workers dropping to tako-proxy");
    let mut server = Server::start(ServerOpts::default());
    assert_workers_filtered(&server);
    // A new generation confines itself too, and the master never does.
    let d = server.ok(&json!({"command":"restart_workers"}));
    assert_eq!(d["generation"], json!(2), "{d}");
    wait_for(Duration::from_secs(20), "generation-2 workers only", || {
        let procs = server.processes();
        let w: Vec<&Value> = procs.iter().filter(|p| p["role"] == "worker").collect();
        (w.len() == 2
            && w.iter()
                .all(|p| p["generation"] == 2 && p["state"] == "active"))
        .then_some(())
    });
    assert_workers_filtered(&server);
    let (master_mode, _) = seccomp_mode(server.pid).expect("master status");
    assert_eq!(master_mode, "0", "the master is not sandboxed");
    for pid in server.pids_of("launcher") {
        let (mode, _) = seccomp_mode(pid).expect("launcher status");
        assert_eq!(
            mode, "0",
            "the launcher must fork and exec apps: no seccomp filter"
        );
    }
    assert!(server.stop().success());
}

/// Writes the fixture release with a `public/` directory owned like an upload.
fn release_with_public(server: &Server) -> PathBuf {
    let dir = server.release("web", "v1");
    let owner = server.deploy_owner();
    let public = dir.join("public");
    fs::create_dir_all(public.join("assets")).expect("create public/");
    fs::write(public.join("assets/site.css"), "body{color:teal}").expect("write a static file");
    for p in [
        public.clone(),
        public.join("assets"),
        public.join("assets/site.css"),
    ] {
        let mode = if p.is_dir() { 0o755 } else { 0o644 };
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).expect("chmod");
        chown(&p, owner);
    }
    dir
}

/// A GET over HTTP/2 (TLS, ALPN h2) with hand-made frames; returns the first response
/// HEADERS payload of stream 1.
fn h2_get(port: u16, path: &str) -> Vec<u8> {
    let mut cfg = (*crate::common::http::tls_config()).clone();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let name = rustls_pki_types::ServerName::try_from(HOST.to_string()).expect("server name");
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(cfg), name).expect("TLS client");
    let tcp = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let frame = |kind: u8, flags: u8, stream: u32, payload: &[u8]| {
        let mut f = Vec::new();
        f.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
        f.push(kind);
        f.push(flags);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    };
    // HPACK: :method GET (index 2), :scheme https (index 7), then :path and :authority as
    // literals without indexing (name index 4 and 1), lengths below 127.
    let mut block = vec![0x82, 0x87];
    for (index, value) in [(4u8, path), (1u8, HOST)] {
        block.push(index);
        block.push(value.len() as u8);
        block.extend_from_slice(value.as_bytes());
    }
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(0x4, 0, 0, &[]));
    out.extend(frame(0x1, 0x4 | 0x1, 1, &block));
    tls.write_all(&out).expect("send the h2 request");
    tls.flush().expect("flush");
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let mut head = [0u8; 9];
        tls.read_exact(&mut head).expect("read an h2 frame");
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; len];
        tls.read_exact(&mut payload)
            .expect("read an h2 frame payload");
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        match (head[3], stream) {
            (0x1, 1) => return payload,
            (0x3, 1) => panic!("the h2 request was reset: {payload:?}"),
            (0x7, _) => panic!("the server sent GOAWAY: {payload:?}"),
            (0x4, 0) if head[4] & 0x1 == 0 => {
                tls.write_all(&frame(0x4, 0x1, 0, &[]))
                    .expect("ack SETTINGS");
            }
            _ => {}
        }
    }
    panic!("no h2 response within 10 s");
}

fn assert_serves(server: &Server) {
    let r = server.app_get(HOST, "/hello").expect("HTTP request");
    assert_eq!(r.status, 200, "HTTP through the app: {}", r.text());
    let r = server.tls_get(HOST, "/hello").expect("HTTPS request");
    assert_eq!(r.status, 200, "HTTPS through the app: {}", r.text());
    let r = server
        .app_get(HOST, "/assets/site.css")
        .expect("static file request");
    assert_eq!(r.status, 200, "a static file: {}", r.text());
    assert_eq!(r.text(), "body{color:teal}");
    let r = server
        .tls_get(HOST, "/assets/site.css")
        .expect("static file over HTTPS");
    assert_eq!(r.text(), "body{color:teal}");
    // :status 200 is entry 8 of the HPACK static table: the indexed field 0x88.
    let head = h2_get(server.tls_port, "/hello");
    assert_eq!(head.first(), Some(&0x88), "h2 answer is 200: {head:?}");
    let head = h2_get(server.tls_port, "/assets/site.css");
    assert_eq!(
        head.first(),
        Some(&0x88),
        "h2 static answer is 200: {head:?}"
    );
}

#[test]
fn sandboxed_worker_still_serves_http_https_h2_and_static_files() {
    require_root("workers dropping to tako-proxy");
    let mut server = Server::start(ServerOpts::default().test_certs());
    let path = release_with_public(&server);
    server.ok(&json!({
        "command": "deploy", "app": "web", "version": "v1",
        "path": path.display().to_string(), "routes": [HOST], "env": {},
        "instances": 1, "idle_timeout": 300
    }));
    assert_workers_filtered(&server);
    assert_serves(&server);
    // Many requests on one worker: nothing on the hot path hits the filter.
    for i in 0..50 {
        let r = server.app_get(HOST, &format!("/n{i}")).expect("request");
        assert_eq!(r.status, 200);
    }
    // A restarted generation serves the same way.
    server.ok(&json!({"command":"restart_workers"}));
    wait_for(Duration::from_secs(20), "generation-2 workers only", || {
        let procs = server.processes();
        let w: Vec<&Value> = procs.iter().filter(|p| p["role"] == "worker").collect();
        (w.len() == 2
            && w.iter()
                .all(|p| p["generation"] == 2 && p["state"] == "active"))
        .then_some(())
    });
    assert_workers_filtered(&server);
    assert_serves(&server);
    let text = server.stderr_text();
    assert!(
        !text.contains("sandbox incomplete"),
        "a worker ran without part of its sandbox:\n{text}"
    );
    for pid in server.pids_of("worker") {
        let st = procfs::status(pid).expect("worker status");
        assert_ne!(st.uid(), 0, "worker {pid} runs as root");
    }
    assert!(server.stop().success());
}

#[test]
fn strict_sandbox_flag_is_accepted_and_off_leaves_workers_unfiltered() {
    require_root("workers dropping to tako-proxy");
    let mut server = Server::start(ServerOpts::default().arg("--sandbox").arg("strict"));
    assert_workers_filtered(&server);
    assert!(server.stop().success());
    let mut server = Server::start(ServerOpts::default().arg("--sandbox").arg("off"));
    for pid in worker_pids(&server) {
        let (mode, _) = seccomp_mode(pid).expect("worker status");
        assert_eq!(mode, "0", "--sandbox off: worker {pid} has no filter");
    }
    assert!(server.stop().success());
}
