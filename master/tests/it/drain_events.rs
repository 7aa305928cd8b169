//! Issue 22, "Drains without a fixed wait": a drain ends on the workers' acknowledgements of
//! the table that removed an instance (with their in-flight counts for it, taken when a
//! request picks an instance) instead of after the next once-a-second counter report.
//!
//! These tests check what the change must keep: a request in flight to an instance that is
//! being drained (a stop, a rollout, an idle scale-down) completes, and the instance is not
//! stopped before it did; requests that pick an instance around a table switch all get
//! their answer; an old build leaves `list` and `status` once its instances exited; and an
//! acknowledgement that names an instance its table did not remove ends that worker instead
//! of stopping anything. How long the drains take is measured by `bench/drain-times.sh`,
//! not asserted here: the machine is shared.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::common::hijack::hijack_control_socket;
use crate::common::http::http;
use crate::common::{fixture, poll, procfs, wait_for, Request, Server};
use crate::python_app;
use serde_json::{json, Value};
use tako_ipc::frame::encode_frame;
use tako_ipc::{RemovedInstance, WorkerToMaster};

const HOST: &str = "drain-events.example.com";
/// Bound of every wait for an event (an exit, a state): generous, the machine is shared.
const EVENT_WAIT: Duration = Duration::from_secs(30);

/// `/slow?ms=N&tag=T` writes `<MARK_DIR>/T` when it starts, then answers after N ms; every
/// other path answers at once. Both answer JSON with the version, instance id and pid.
const APP_PY: &str = python_app!(
    r#"import http.server, json, os, socketserver, time
from urllib.parse import urlparse, parse_qs

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_GET(self):
        url = urlparse(self.path)
        query = parse_qs(url.query)
        if url.path == "/slow":
            tag = query.get("tag", [""])[0]
            if tag:
                with open(os.path.join(os.environ["MARK_DIR"], tag), "w") as f:
                    f.write(str(os.getpid()))
            time.sleep(float(query.get("ms", ["0"])[0]) / 1000.0)
        body = json.dumps({
            "version": os.environ.get("TAKO_VERSION"),
            "instance": os.environ.get("TAKO_INSTANCE"),
            "pid": os.getpid(),
        }).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

"#
);

fn deploy_cmd(server: &Server, app: &str, version: &str, instances: u32, idle: u32) -> Value {
    let path = fixture::write_release_with(
        &server.data_dir,
        app,
        version,
        server.deploy_owner(),
        APP_PY,
        fixture::APP_JSON,
    );
    let marks = marks_dir(server);
    json!({
        "command": "deploy", "app": app, "version": version,
        "path": path.display().to_string(), "routes": [HOST],
        "env": {"MARK_DIR": marks.display().to_string()},
        "instances": instances, "idle_timeout": idle
    })
}

/// Where the app writes its marks: writable by the app's own uid.
fn marks_dir(server: &Server) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let d = server.knob_dir().join("marks");
    std::fs::create_dir_all(&d).expect("create the marks directory");
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).expect("chmod marks");
    d
}

fn get(server: &Server, path: &str) -> std::io::Result<crate::common::http::Response> {
    http(
        server.http_port,
        &Request::get(HOST, path).header("X-Forwarded-Proto", "https"),
    )
}

/// Instances of the app from `status`, by build: (id, pid, state, version).
fn instances(server: &Server, app: &str) -> Vec<(i64, Option<i32>, String, String)> {
    let status = server.app_status(app);
    let mut out = Vec::new();
    for b in status["builds"].as_array().cloned().unwrap_or_default() {
        let version = b["version"].as_str().unwrap_or("").to_string();
        for i in b["instances"].as_array().cloned().unwrap_or_default() {
            out.push((
                i["id"].as_i64().unwrap_or(-1),
                i["pid"].as_i64().map(|p| p as i32),
                i["state"].as_str().unwrap_or("").to_string(),
                version.clone(),
            ));
        }
    }
    out
}

/// Waits until `count` instances of `version` are healthy and nothing else is listed.
fn wait_settled(server: &Server, app: &str, version: &str, count: usize) -> Vec<i32> {
    wait_for(EVENT_WAIT, "the app to settle", || {
        let all = instances(server, app);
        let settled = all.len() == count
            && all
                .iter()
                .all(|(_, pid, st, v)| st == "healthy" && v == version && pid.is_some());
        settled.then(|| all.iter().filter_map(|i| i.1).collect())
    })
}

fn wait_exited(pid: i32, what: &str) {
    wait_for(EVENT_WAIT, what, || (!procfs::alive(pid)).then_some(()));
}

/// One slow request on its own connection, started in a thread; `started` waits until
/// the app runs it (its mark file exists), so it is in flight for sure.
struct Slow {
    handle: JoinHandle<std::io::Result<crate::common::http::Response>>,
    done: Arc<AtomicBool>,
    pid: i32,
}

impl Slow {
    fn start(server: &Server, ms: u64, tag: &str) -> Slow {
        let mark = marks_dir(server).join(tag);
        let _ = std::fs::remove_file(&mark);
        let port = server.http_port;
        let path = format!("/slow?ms={ms}&tag={tag}");
        let done = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&done);
        let handle = std::thread::spawn(move || {
            let r = http(
                port,
                &Request::get(HOST, &path).header("X-Forwarded-Proto", "https"),
            );
            flag.store(true, Ordering::SeqCst);
            r
        });
        let pid = wait_mark(&mark);
        Slow { handle, done, pid }
    }

    fn finished(&self) -> bool {
        self.done.load(Ordering::SeqCst)
    }

    /// The answer: 200 from the instance that started it.
    fn assert_answered(self, label: &str) -> Value {
        let r = self
            .handle
            .join()
            .expect("slow request thread")
            .unwrap_or_else(|e| panic!("{label}: the slow request failed: {e}"));
        assert_eq!(r.status, 200, "{label}: {}", r.text());
        let v = r.json();
        assert_eq!(v["pid"].as_i64(), Some(self.pid as i64), "{label}: {v}");
        v
    }
}

fn wait_mark(mark: &Path) -> i32 {
    wait_for(EVENT_WAIT, "the slow request to reach the app", || {
        std::fs::read_to_string(mark)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
    })
}

/// A stop answers only after the request in flight to the instance completed, and that
/// request gets its 200 from the instance.
#[test]
fn stop_lets_the_request_in_flight_finish_first() {
    let server = Server::start_default();
    server.ok(&deploy_cmd(&server, "stopper", "v1", 1, 300));
    let pids = wait_settled(&server, "stopper", "v1", 1);
    let slow = Slow::start(&server, 2500, "stop");
    assert_eq!(slow.pid, pids[0]);
    server.ok(&json!({"command":"stop","app":"stopper"}));
    // The stop answered: the drain saw the request end first.
    assert!(
        slow.finished(),
        "stop answered while a request to its instance was still in flight"
    );
    slow.assert_answered("stop");
    wait_exited(pids[0], "the stopped instance to exit");
    assert!(instances(&server, "stopper").is_empty());
}

/// A rolling deploy: the idle old instance is stopped while the other one still serves a
/// slow request, which completes with 200 from the old build; that instance exits after.
#[test]
fn rollout_drains_each_old_instance_on_its_own() {
    let server = Server::start_default();
    server.ok(&deploy_cmd(&server, "roller", "v1", 2, 300));
    let old = wait_settled(&server, "roller", "v1", 2);
    let slow = Slow::start(&server, 6000, "rollout");
    let idle = *old.iter().find(|p| **p != slow.pid).expect("two instances");
    server.ok(&deploy_cmd(&server, "roller", "v2", 2, 300));
    assert!(
        !slow.finished(),
        "the deploy took longer than the slow request: nothing checked"
    );
    wait_exited(idle, "the idle old instance to exit");
    assert!(
        procfs::alive(slow.pid),
        "the old instance with a request in flight was stopped under it"
    );
    let busy = slow.pid;
    let v = slow.assert_answered("rollout");
    assert_eq!(v["version"], json!("v1"));
    wait_exited(busy, "the busy old instance to exit after its request");
    wait_settled(&server, "roller", "v2", 2);
}

/// Clients that keep sending through rollouts and a rollback: whichever instance a request
/// picked around a switch, it gets its answer. No retries.
#[test]
fn requests_around_a_switch_all_get_answers() {
    let server = Server::start_default();
    server.ok(&deploy_cmd(&server, "switcher", "v1", 2, 300));
    wait_settled(&server, "switcher", "v1", 2);
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let port = server.http_port;
    let clients: Vec<JoinHandle<()>> = (0..6)
        .map(|_| {
            let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let r = http(
                        port,
                        &Request::get(HOST, "/").header("X-Forwarded-Proto", "https"),
                    );
                    match r {
                        Ok(r) if r.status == 200 => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(r) => {
                            failures
                                .lock()
                                .unwrap()
                                .push(format!("{} {}", r.status, r.text()))
                        }
                        Err(e) => failures.lock().unwrap().push(e.to_string()),
                    }
                }
            })
        })
        .collect();
    let mut gone = Vec::new();
    for (i, version) in ["v2", "v3"].iter().enumerate() {
        let before = wait_settled(&server, "switcher", if i == 0 { "v1" } else { "v2" }, 2);
        server.ok(&deploy_cmd(&server, "switcher", version, 2, 300));
        gone.extend(before);
    }
    let before = wait_settled(&server, "switcher", "v3", 2);
    server.ok(&json!({"command":"rollback","app":"switcher","version":"v2"}));
    gone.extend(before);
    for pid in gone {
        wait_exited(pid, "an old instance to exit");
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().expect("client thread");
    }
    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed: {:?}",
        failures.len(),
        failures.len() as u64 + ok.load(Ordering::Relaxed),
        &failures[..failures.len().min(10)]
    );
    assert!(ok.load(Ordering::Relaxed) > 0);
}

/// After a rollback answered, the old build leaves `status` and `list` as soon as its
/// instances exited: nothing waits on a counter report.
#[test]
fn rollback_old_build_leaves_list_once_exited() {
    let server = Server::start_default();
    server.ok(&deploy_cmd(&server, "rollbacker", "v1", 2, 300));
    wait_settled(&server, "rollbacker", "v1", 2);
    server.ok(&deploy_cmd(&server, "rollbacker", "v2", 2, 300));
    let v2 = wait_settled(&server, "rollbacker", "v2", 2);
    let data = server.ok(&json!({"command":"rollback","app":"rollbacker","version":"v1"}));
    assert_eq!(data["version"], json!("v1"), "{data}");
    // The exits are events the master hears from the launcher: wait for them (bounded).
    let listed = poll(EVENT_WAIT, Duration::from_millis(10), || {
        let all = instances(&server, "rollbacker");
        all.iter().all(|i| i.3 == "v1").then_some(all)
    })
    .expect("the v2 instances to leave status");
    assert_eq!(listed.len(), 2, "{listed:?}");
    for pid in v2 {
        assert!(!procfs::alive(pid), "v2 pid {pid} unlisted but running");
    }
    let list = server.ok(&json!({"command":"list"}));
    let web = list["apps"]
        .as_array()
        .and_then(|a| a.iter().find(|a| a["name"] == "rollbacker"))
        .cloned()
        .unwrap_or_else(|| panic!("web in list: {list}"));
    assert_eq!(web["instances"], json!(2), "{list}");
    assert_eq!(web["version"], json!("v1"), "{list}");
}

/// Idle scale-down of an on-demand app waits for a request in flight (it counts as
/// activity, and the drain waits for it), then the instance exits and the next request
/// wakes a new one.
#[test]
fn idle_scale_down_waits_for_the_request_in_flight() {
    let server = Server::start_default();
    server.ok(&deploy_cmd(&server, "sleepy", "v1", 0, 1));
    // The deploy's warm instance goes to sleep first.
    wait_for(EVENT_WAIT, "the warm instance to sleep", || {
        instances(&server, "sleepy").is_empty().then_some(())
    });
    let slow = Slow::start(&server, 3000, "idle");
    let v = slow.assert_answered("idle scale-down");
    assert_eq!(v["version"], json!("v1"));
    let pid = v["pid"].as_i64().expect("pid") as i32;
    wait_exited(pid, "the idle instance to be scaled down");
    wait_for(EVENT_WAIT, "the instance to leave status", || {
        instances(&server, "sleepy").is_empty().then_some(())
    });
    let r = get(&server, "/").expect("a request that wakes the app");
    assert_eq!(r.status, 200, "{}", r.text());
}

fn active_workers(server: &Server) -> Vec<i32> {
    server
        .processes()
        .iter()
        .filter(|p| p["role"] == "worker" && p["state"] == "active")
        .filter_map(|p| p["pid"].as_i64())
        .map(|p| p as i32)
        .collect()
}

/// A worker that acknowledges a table with a count for an instance the table did not
/// remove is ended and replaced; the instance it named keeps running and serving.
#[test]
fn a_bogus_acknowledgement_ends_the_worker_not_the_instance() {
    let server = Server::start_default();
    server.ok(&deploy_cmd(&server, "bogus", "v1", 1, 300));
    let pids = wait_settled(&server, "bogus", "v1", 1);
    let id = instances(&server, "bogus")[0].0 as u32;
    let victim = active_workers(&server)[0];
    let mut sock = hijack_control_socket(victim);
    // No table removed this instance: whatever epoch the worker acknowledged last, this
    // frame breaks a rule (it names an instance its table did not remove, or goes back).
    let frame = encode_frame(
        &WorkerToMaster::TableApplied {
            epoch: 1,
            removed: vec![RemovedInstance {
                app: "bogus".into(),
                instance_id: id,
                in_flight: 0,
            }],
        },
        0,
    )
    .expect("encode");
    // The master may already have ended the worker's channel: a failed write is fine.
    let _ = sock.write_all(&frame);
    drop(sock);
    let want = server.opts.workers as usize;
    poll(EVENT_WAIT, Duration::from_millis(50), || {
        let now = active_workers(&server);
        (now.len() == want && !now.contains(&victim) && !procfs::alive(victim)).then_some(())
    })
    .unwrap_or_else(|| panic!("worker {victim} was not ended and replaced"));
    server.remember_tree();
    assert!(
        server.stderr_text().contains("invalid frame"),
        "the reason is logged"
    );
    assert_eq!(wait_settled(&server, "bogus", "v1", 1), pids);
    let r = get(&server, "/").expect("the app still answers");
    assert_eq!(r.status, 200);
}
