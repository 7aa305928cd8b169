//! Issue 17, item 4: the public status page must not leak app output.
//!
//! `tako.internal/status` answers every peer, and `last_error` holds an app's startup stderr,
//! which may print a secret. Loopback and trusted peers get the whole page; any other peer
//! gets the health bit and each app's name and state, nothing more.
//!
//! How a test on one machine is a public peer: the server counts every 127.0.0.0/8 and ::1
//! address as loopback and trusts no other address by default, so the request must come from
//! an address that is neither. The test makes a network namespace joined to the host by a
//! veth pair with a /30 from 198.18.0.0/15 (the benchmarking range: neither loopback nor a
//! private range, and never routed outside this host), tells the server to listen on the
//! host's end too, and sends the request from a thread that entered the namespace
//! (`setns(CLONE_NEWNET)` changes the namespace of the calling thread only). The server then
//! sees a peer address that is neither loopback nor trusted, as it would see an internet
//! client. Needs root (namespaces, veth); the tests say so and fail when run as another user.

use std::io::{BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::Duration;

use crate::common::http::{read_response, Request, IO_TIMEOUT};
use crate::common::{fixture, users, wait_for, Response, Server, ServerOpts};
use serde_json::{json, Value};

/// A network namespace with a veth pair to the host, removed (with the pair) on drop.
struct PeerNamespace {
    name: String,
    /// The host's end: the server listens here.
    host_addr: Ipv4Addr,
    /// The namespace's end: the peer address the server sees.
    peer_addr: Ipv4Addr,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run ip {args:?}: {e}"));
    assert!(
        out.status.success(),
        "ip {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl PeerNamespace {
    fn new() -> PeerNamespace {
        users::require_root("creating a network namespace for a non-loopback peer");
        let pid = std::process::id();
        let name = format!("tako-se-{pid}");
        // One /30 per test process, so parallel test binaries do not collide.
        let block = (pid % 32768) * 4;
        let base = u32::from(Ipv4Addr::new(198, 18, 0, 0)) + block;
        let host_addr = Ipv4Addr::from(base + 1);
        let peer_addr = Ipv4Addr::from(base + 2);
        let (host_if, peer_if) = (format!("tse{pid}h"), format!("tse{pid}n"));
        // A leftover of an earlier run with the same pid would make `add` fail.
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let _ = Command::new("ip").args(["link", "del", &host_if]).output();
        let ns = PeerNamespace {
            name,
            host_addr,
            peer_addr,
        };
        ip(&["netns", "add", &ns.name]);
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &peer_if,
        ]);
        ip(&["link", "set", &peer_if, "netns", &ns.name]);
        ip(&["addr", "add", &format!("{host_addr}/30"), "dev", &host_if]);
        ip(&["link", "set", &host_if, "up"]);
        let inside = |args: &[&str]| {
            let mut all = vec!["netns", "exec", ns.name.as_str(), "ip"];
            all.extend_from_slice(args);
            ip(&all);
        };
        inside(&["addr", "add", &format!("{peer_addr}/30"), "dev", &peer_if]);
        inside(&["link", "set", &peer_if, "up"]);
        inside(&["link", "set", "lo", "up"]);
        ns
    }

    /// `GET <path>` with `Host: tako.internal` from inside the namespace to the host's end.
    fn get(&self, port: u16, path: &str) -> std::io::Result<Response> {
        let ns_path = format!("/var/run/netns/{}", self.name);
        let target = SocketAddr::from((self.host_addr, port));
        let req = Request::get("tako.internal", path);
        std::thread::scope(|s| {
            s.spawn(|| {
                let ns = std::fs::File::open(&ns_path)?;
                // SAFETY: setns on a namespace file we opened; it changes only this thread,
                // which ends with the scope.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let mut tcp = TcpStream::connect_timeout(&target, Duration::from_secs(5))?;
                tcp.set_read_timeout(Some(IO_TIMEOUT))?;
                tcp.set_write_timeout(Some(IO_TIMEOUT))?;
                let head = format!(
                    "{} {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                    req.method, req.path, req.host
                );
                tcp.write_all(head.as_bytes())?;
                read_response(BufReader::new(tcp), false)
            })
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the namespace thread panicked")))
        })
    }
}

impl Drop for PeerNamespace {
    fn drop(&mut self) {
        // Deleting the namespace destroys the veth end inside it, and with it the pair.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A secret the app prints to stderr while failing its start, as an app might print the
/// connection string it read from its own configuration. It is not in the app's environment,
/// so the launcher's redaction of environment values cannot know it.
const SECRET: &str = "postgres://app:hunter2-s3cret@db.internal/prod";

/// The fixture app, but failing with [`SECRET`] on stderr instead of `boom`.
fn leaky_app() -> String {
    let original = "sys.stderr.write(\"boom\\n\")";
    assert!(
        fixture::APP_PY.contains(original),
        "the fixture's failure line moved"
    );
    fixture::APP_PY.replace(
        original,
        &format!("sys.stderr.write(\"cannot connect to {SECRET}\\n\")"),
    )
}

fn server_for(ns: &PeerNamespace, extra: &[&str]) -> Server {
    let mut opts = ServerOpts::default()
        .arg("--listen")
        .arg(&ns.host_addr.to_string());
    for a in extra {
        opts = opts.arg(a);
    }
    Server::start(opts)
}

/// The same page, as the public and the privileged peers get it: status, headers, body.
fn page(r: &Response) -> (u16, Option<&str>, Option<&str>, Value) {
    (
        r.status,
        r.header("content-type"),
        r.header("cache-control"),
        r.json(),
    )
}

#[test]
fn public_peer_never_sees_an_apps_startup_output() {
    let ns = PeerNamespace::new();
    let server = server_for(&ns, &[]);
    // v1 serves; v2 fails its start printing the secret, so `last_error` holds the secret
    // while v1 keeps serving.
    server.deploy("web", "v1", &["web.example.com"], 1, &[]);
    let path = fixture::write_release_with(
        &server.data_dir,
        "web",
        "v2",
        server.deploy_owner(),
        &leaky_app(),
        fixture::APP_JSON,
    );
    let err = server.err(&json!({
        "command": "deploy", "app": "web", "version": "v2",
        "path": path.display().to_string(), "routes": ["web.example.com"],
        "env": {"EXIT_CODE": "3"},
        "instances": 1, "idle_timeout": 300
    }));
    assert!(
        err.contains("rollback"),
        "v2 must fail and roll back: {err}"
    );

    // Loopback gets the whole page, and it does carry the secret: the leak is real.
    let full = wait_for(
        Duration::from_secs(10),
        "the pushed status page to carry last_error",
        || {
            let r = server.internal_status().ok()?;
            r.text().contains(SECRET).then_some(r)
        },
    );
    let full_json = full.json();
    let web = &full_json["apps"][0];
    assert_eq!(web["name"], "web", "{full_json}");
    assert!(web["last_error"].as_str().unwrap_or("").contains(SECRET));
    assert!(web["instances"][0]["pid"].is_u64(), "{full_json}");
    assert!(full_json["uptime_secs"].is_u64(), "{full_json}");

    // The public peer: same status code and headers, health and states only.
    let public = ns
        .get(server.http_port, "/status")
        .expect("the status page answers a non-loopback peer");
    let text = public.text();
    assert!(
        !text.contains("hunter2") && !text.contains("cannot connect"),
        "a public peer read the app's stderr: {text}"
    );
    let (status, ctype, cache, body) = page(&public);
    let (f_status, f_ctype, f_cache, _) = page(&full);
    assert_eq!((status, ctype, cache), (f_status, f_ctype, f_cache));
    assert_eq!(
        body,
        json!({"healthy": full_json["healthy"], "apps": [{"name": "web", "state": web["state"]}]}),
        "the public page is health and app states only"
    );
    // Pretty-printed with two-space indents, like the full page.
    assert!(text.starts_with("{\n  \"healthy\": "), "{text:?}");
    // And nothing else tako.internal offers opens up for it.
    let metrics = ns.get(server.http_port, "/metrics").expect("metrics");
    assert_eq!(metrics.status, 404, "{}", metrics.text());
}

#[test]
fn trusted_peer_gets_the_whole_status_page() {
    let ns = PeerNamespace::new();
    let trusted = format!("{}/32", ns.peer_addr);
    let server = server_for(&ns, &["--trusted-proxy", &trusted]);
    let r = wait_for(Duration::from_secs(10), "the status page", || {
        ns.get(server.http_port, "/status").ok()
    });
    let body = r.json();
    assert!(
        body["uptime_secs"].is_u64(),
        "a trusted peer gets the full page: {body}"
    );
    // Loopback stays privileged whatever --trusted-proxy says.
    let local = server.internal_status().expect("status over loopback");
    assert!(local.json()["uptime_secs"].is_u64(), "{}", local.text());
}
