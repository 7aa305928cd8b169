//! Issue 6: the instance lifecycle under load. A background client pool (keep-alive and fresh
//! connections) keeps sending requests while apps are redeployed, reloaded, rolled back, scaled
//! to zero and woken, stopped and deleted; crashes are replaced with backoff. Documented in
//! docs/apps.md, docs/http.md, "Choosing an instance", and docs/management-protocol.md,
//! "Commands".

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::common::{app_log_dir, fixture, procfs, wait_for, Mgmt, Request, Response, Server};
use serde_json::{json, Value};

const HOST: &str = "web.example.com";

/// The fixture app with more knobs:
/// - `EXIT_AFTER=secs`: once listening, exit with code 7 after that many seconds;
/// - `IGNORE_TERM=1`: ignore SIGTERM, and start a `sleep` child (same process group) that
///   ignores it too; its pid is in the `/` answer as `child`;
/// - `GET /slow?s=secs`: print `slow request started` to stdout, sleep, then answer as `/`.
fn app_py() -> String {
    let slow_at = "    def answer(self):\n";
    let exit_at = "port = int(os.environ[\"PORT\"])\n";
    let pid_at = "\"pid\": os.getpid(),";
    assert!([slow_at, exit_at, pid_at]
        .iter()
        .all(|at| fixture::APP_PY.contains(at)));
    fixture::APP_PY
        .replace(
            slow_at,
            "    def answer(self):\n        if self.path.startswith(\"/slow\"):\n            print(\"slow request started\", flush=True)\n            time.sleep(float(self.path.split(\"=\")[-1]))\n",
        )
        .replace(
            exit_at,
            "exit_after = os.environ.get(\"EXIT_AFTER\")\nif exit_after:\n    import threading\n    threading.Timer(float(exit_after), lambda: os._exit(7)).start()\nchild = None\nif os.environ.get(\"IGNORE_TERM\"):\n    import signal, subprocess\n    signal.signal(signal.SIGTERM, signal.SIG_IGN)\n    child = subprocess.Popen([\"sleep\", \"300\"]).pid\nport = int(os.environ[\"PORT\"])\n",
        )
        .replace("\"pid\": os.getpid(),", "\"pid\": os.getpid(), \"child\": child,")
}

/// Writes a release of the extended fixture (owned like an upload) and returns its path.
fn release(server: &Server, app: &str, version: &str) -> PathBuf {
    let dir = server.release(app, version);
    fs::write(dir.join("server.py"), app_py()).expect("write the extended server.py");
    dir
}

fn deploy_cmd(
    server: &Server,
    app: &str,
    version: &str,
    instances: u32,
    idle_timeout: u32,
    env: &[(&str, &str)],
) -> Value {
    let path = release(server, app, version);
    let route = if app == "web" {
        HOST.to_string()
    } else {
        format!("{app}.example.com")
    };
    let env: serde_json::Map<String, Value> = env
        .iter()
        .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
        .collect();
    json!({"command":"deploy","app":app,"version":version,"path":path.display().to_string(),
           "routes":[route],"env":env,"instances":instances,"idle_timeout":idle_timeout})
}

fn get(server: &Server, host: &str, path: &str) -> Response {
    server
        .app_get(host, path)
        .unwrap_or_else(|e| panic!("GET {host}{path}: {e}"))
}

/// Versions of `status.builds`, in order.
fn build_versions(st: &Value) -> Vec<String> {
    st["builds"]
        .as_array()
        .map(|b| {
            b.iter()
                .filter_map(|b| b["version"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until the app runs exactly `n` healthy instances, all of build `version`, and
/// nothing else (old instances drained). Returns the status.
fn wait_settled(server: &Server, version: &str, n: usize) -> Value {
    wait_for(
        Duration::from_secs(20),
        &format!("{n} healthy instances of {version} and nothing else"),
        || {
            let st = server.app_status("web");
            let inst = st["instances"].as_array()?;
            let ok = build_versions(&st) == [version]
                && inst.len() == n
                && inst.iter().all(|i| i["state"] == "healthy");
            ok.then_some(st)
        },
    )
}

/// (id, pid, port, state) of every instance, without the counters that move.
fn instance_keys(st: &Value) -> Vec<(u64, u64, u64, String)> {
    st["instances"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|i| {
            (
                i["id"].as_u64().unwrap_or(0),
                i["pid"].as_u64().unwrap_or(0),
                i["port"].as_u64().unwrap_or(0),
                i["state"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

// ---- the background client pool ----

#[derive(Debug, Default, Clone)]
struct Stats {
    ok: u64,
    /// Connection errors and cut responses.
    failures: Vec<String>,
    /// Answers outside 2xx.
    non_2xx: Vec<String>,
    /// Answers per app version.
    versions: BTreeMap<String, u64>,
}

impl Stats {
    fn record(&mut self, what: &str, r: std::io::Result<Response>) {
        match r {
            Ok(r) if (200..300).contains(&r.status) => {
                self.ok += 1;
                let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
                let version = v["version"].as_str().unwrap_or("?").to_string();
                *self.versions.entry(version).or_default() += 1;
            }
            Ok(r) => self
                .non_2xx
                .push(format!("{what}: {} {}", r.status, r.text())),
            Err(e) => self.failures.push(format!("{what}: {e}")),
        }
    }

    /// Zero failures, zero non-2xx, and enough traffic to mean something.
    fn assert_clean(&self, phase: &str) {
        eprintln!(
            "{phase}: {} ok, {} failed, {} non-2xx, versions {:?}",
            self.ok,
            self.failures.len(),
            self.non_2xx.len(),
            self.versions
        );
        assert!(
            self.failures.is_empty() && self.non_2xx.is_empty(),
            "{phase}: failures {:?}, non-2xx {:?}",
            self.failures,
            self.non_2xx
        );
        assert!(
            self.ok >= 20,
            "{phase}: only {} requests got through",
            self.ok
        );
    }
}

/// Threads sending requests until stopped: some reuse one keep-alive connection, some
/// open a new connection per request. Plain HTTP from loopback with
/// `X-Forwarded-Proto: https`, so requests are routed, not redirected.
struct Pool {
    stop: Arc<AtomicBool>,
    stats: Arc<Mutex<Stats>>,
    threads: Vec<JoinHandle<()>>,
}

/// Pause between a thread's requests: steady traffic without starving the 2-core machine.
const PACE: Duration = Duration::from_millis(5);

impl Pool {
    fn start(port: u16, host: &str) -> Pool {
        let stop = Arc::new(AtomicBool::new(false));
        let stats: Arc<Mutex<Stats>> = Arc::default();
        let mut threads = Vec::new();
        for keep_alive in [true, true, false, false] {
            let (stop, stats, host) = (stop.clone(), stats.clone(), host.to_string());
            threads.push(std::thread::spawn(move || {
                if keep_alive {
                    keep_alive_loop(port, &host, &stop, &stats)
                } else {
                    while !stop.load(Ordering::Relaxed) {
                        let req = Request::get(&host, "/").header("X-Forwarded-Proto", "https");
                        let r = crate::common::http::http(port, &req);
                        stats.lock().expect("stats").record("new connection", r);
                        std::thread::sleep(PACE);
                    }
                }
            }));
        }
        let pool = Pool {
            stop,
            stats,
            threads,
        };
        wait_for(
            Duration::from_secs(10),
            "the client pool to get going",
            || (pool.stats.lock().expect("stats").ok >= 20).then_some(()),
        );
        pool
    }

    /// The stats so far; the counters start again from zero.
    fn take(&self) -> Stats {
        std::mem::take(&mut *self.stats.lock().expect("stats"))
    }

    fn finish(mut self) -> Stats {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            t.join().expect("client thread");
        }
        self.take()
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn keep_alive_loop(port: u16, host: &str, stop: &AtomicBool, stats: &Mutex<Stats>) {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut conn: Option<(BufReader<TcpStream>, u32)> = None;
    while !stop.load(Ordering::Relaxed) {
        if conn.is_none() {
            match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
                Ok(s) => {
                    let _ = s.set_read_timeout(Some(Duration::from_secs(40)));
                    let _ = s.set_nodelay(true);
                    conn = Some((BufReader::new(s), 0));
                }
                Err(e) => {
                    stats
                        .lock()
                        .expect("stats")
                        .failures
                        .push(format!("connect: {e}"));
                    std::thread::sleep(PACE);
                    continue;
                }
            }
        }
        let Some((reader, used)) = conn.as_mut() else {
            continue;
        };
        let req = format!("GET / HTTP/1.1\r\nHost: {host}\r\nX-Forwarded-Proto: https\r\n\r\n");
        let r = reader
            .get_mut()
            .write_all(req.as_bytes())
            .and_then(|_| crate::common::http::read_response(&mut *reader, false));
        let what = format!("keep-alive request {} on its connection", *used + 1);
        *used += 1;
        let close = match &r {
            Ok(resp) => resp
                .header("connection")
                .is_some_and(|v| v.eq_ignore_ascii_case("close")),
            Err(_) => true,
        };
        stats.lock().expect("stats").record(&what, r);
        if close {
            conn = None;
        }
        std::thread::sleep(PACE);
    }
}

// ---- tests ----

#[test]
fn rolling_deploy_reload_and_rollback_drop_no_requests() {
    let server = Server::start_default();
    let delay_file = server.knob_dir().join("startup-delay");
    let delay = delay_file.display().to_string();
    let env = [("STARTUP_DELAY_FILE", delay.as_str())];
    server.ok(&deploy_cmd(&server, "web", "v1", 2, 300, &env));
    wait_settled(&server, "v1", 2);
    let pool = Pool::start(server.http_port, HOST);
    pool.take().assert_clean("v1 before the rollout");

    // v2 starts slowly, so the rollout is long enough to watch.
    fs::write(&delay_file, "0.7").expect("write the startup delay knob");
    let cmd = deploy_cmd(&server, "web", "v2", 2, 300, &env);
    let socket = server.socket.clone();
    let deploy = std::thread::spawn(move || {
        Mgmt::connect(&socket)
            .expect("connect to the management socket")
            .request(&cmd)
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut both: Option<Value> = None;
    while !deploy.is_finished() && Instant::now() < deadline {
        let st = server.app_status("web");
        if build_versions(&st) == ["v1", "v2"] && st["state"] == "deploying" {
            both.get_or_insert(st);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let resp = deploy.join().expect("deploy thread");
    assert_eq!(
        resp["data"],
        json!({"app":"web","new_instances":2,"old_instances":2,"rolled_back":false,"status":"deployed","version":"v2"}),
        "{resp}"
    );
    let both = both.expect("status never showed builds v1 and v2 during the rollout");
    assert_eq!(
        both["version"],
        json!("v1"),
        "the version changes at the switch: {both}"
    );
    let v1_build = &both["builds"][0];
    assert_eq!(
        v1_build["instances"].as_array().map(Vec::len),
        Some(2),
        "{both}"
    );
    assert_eq!(v1_build["state"], json!("running"), "{both}");
    assert_eq!(get(&server, HOST, "/").json()["version"], json!("v2"));
    let after_deploy = wait_settled(&server, "v2", 2);
    let stats = pool.take();
    stats.assert_clean("rolling deploy v1 → v2");
    assert!(stats.versions.contains_key("v2"), "{stats:?}");

    // reload: a rolling restart of v2, new instances.
    let data = server.ok(&json!({"command":"reload","app":"web"}));
    assert_eq!(
        data,
        json!({"app":"web","new_instances":2,"old_instances":2,"rolled_back":false,"status":"reloaded"})
    );
    let after_reload = wait_settled(&server, "v2", 2);
    let old_ids: BTreeSet<u64> = instance_keys(&after_deploy).iter().map(|k| k.0).collect();
    assert!(
        instance_keys(&after_reload)
            .iter()
            .all(|k| !old_ids.contains(&k.0)),
        "reload replaced every instance: {after_deploy} → {after_reload}"
    );
    pool.take().assert_clean("reload");

    // rollback to v1: the same algorithm with the stored config.
    let data = server.ok(&json!({"command":"rollback","app":"web","version":"v1"}));
    assert_eq!(
        data,
        json!({"app":"web","new_instances":2,"old_instances":2,"rolled_back":false,"status":"deployed","version":"v1"})
    );
    let st = wait_settled(&server, "v1", 2);
    assert_eq!(st["version"], json!("v1"), "{st}");
    assert_eq!(get(&server, HOST, "/").json()["version"], json!("v1"));
    let stats = pool.finish();
    stats.assert_clean("rollback v2 → v1");
    assert!(stats.versions.contains_key("v1"), "{stats:?}");
}

#[test]
fn v2_that_exits_at_start_leaves_v1_serving_unchanged() {
    let server = Server::start_default();
    server.ok(&deploy_cmd(&server, "web", "v1", 2, 300, &[]));
    let before = wait_settled(&server, "v1", 2);
    let routes = server.ok(&json!({"command":"routes"}));
    let list = server.ok(&json!({"command":"list"}));
    let pool = Pool::start(server.http_port, HOST);

    let msg = server.err(&deploy_cmd(
        &server,
        "web",
        "v2",
        2,
        300,
        &[("EXIT_CODE", "3")],
    ));
    let v: Value = serde_json::from_str(&msg)
        .unwrap_or_else(|e| panic!("the rollout error is a JSON document ({e}): {msg}"));
    assert_eq!(
        v,
        json!({"app":"web","error":"Health check failed: Process exited during startup (exit code 3): boom","rolled_back":true,"status":"rollback"})
    );

    let after = server.app_status("web");
    assert_eq!(after["version"], json!("v1"), "{after}");
    assert_eq!(after["state"], json!("running"), "{after}");
    assert_eq!(build_versions(&after), ["v1"], "{after}");
    assert_eq!(
        instance_keys(&after),
        instance_keys(&before),
        "the old build keeps its full count, untouched"
    );
    assert_eq!(server.ok(&json!({"command":"routes"})), routes);
    assert_eq!(server.ok(&json!({"command":"list"})), list);
    let r = get(&server, HOST, "/").json();
    assert_eq!(r["version"], json!("v1"));
    assert!(r["env"].get("EXIT_CODE").is_none(), "env unchanged: {r}");
    let stats = pool.finish();
    stats.assert_clean("failed rollout");
    assert_eq!(
        stats.versions.keys().collect::<Vec<_>>(),
        ["v1"],
        "{stats:?}"
    );
}

#[test]
fn slow_request_on_an_old_instance_completes_during_the_rollout() {
    let server = Server::start_default();
    server.ok(&deploy_cmd(&server, "web", "v1", 1, 300, &[]));
    let old_pid = wait_settled(&server, "v1", 1)["instances"][0]["pid"]
        .as_i64()
        .expect("pid") as i32;
    let log = app_log_dir(&server.data_dir, "web").join("app.log");
    let port = server.http_port;
    let slow = std::thread::spawn(move || {
        let t0 = Instant::now();
        let req = Request::get(HOST, "/slow?s=3").header("X-Forwarded-Proto", "https");
        (crate::common::http::http(port, &req), t0.elapsed())
    });
    wait_for(
        Duration::from_secs(10),
        "the slow request to reach v1",
        || {
            fs::read_to_string(&log)
                .ok()?
                .contains("slow request started")
                .then_some(())
        },
    );

    let data = server.ok(&deploy_cmd(&server, "web", "v2", 1, 300, &[]));
    assert_eq!(data["old_instances"], json!(1), "{data}");
    // The answer comes once the old instance is out of rotation; it drains meanwhile.
    let st = server.app_status("web");
    let old = st["instances"]
        .as_array()
        .and_then(|a| a.iter().find(|i| i["pid"] == json!(old_pid)).cloned());
    assert_eq!(
        old.as_ref().map(|i| i["state"].clone()),
        Some(json!("draining")),
        "the old instance drains while its request runs: {st}"
    );
    assert!(!slow.is_finished(), "the slow request is still running");
    for _ in 0..5 {
        assert_eq!(get(&server, HOST, "/").json()["version"], json!("v2"));
    }
    let (r, took) = slow.join().expect("slow request thread");
    let r = r.expect("the slow request completes");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["version"], json!("v1"));
    assert!(took >= Duration::from_secs(3), "{took:?}");
    wait_for(
        Duration::from_secs(10),
        "the drained instance to exit",
        || {
            let gone = !procfs::alive(old_pid)
                && server.app_status("web")["instances"]
                    .as_array()
                    .is_some_and(|a| a.len() == 1);
            gone.then_some(())
        },
    );
}

/// Waits until an on-demand app has scaled to zero.
fn wait_idle(server: &Server, app: &str) {
    wait_for(Duration::from_secs(15), "the app to scale to zero", || {
        let st = server.app_status(app);
        (st["state"] == "idle" && st["instances"] == json!([])).then_some(())
    });
}

#[test]
fn on_demand_app_idles_to_zero_and_20_held_requests_all_get_200() {
    let server = Server::start_default();
    let data = server.ok(&deploy_cmd(&server, "web", "v1", 0, 1, &[]));
    assert_eq!(
        data,
        json!({"app":"web","new_app":true,"on_demand":true,"startup_validated":true,"status":"deployed","version":"v1","warm_instance":true})
    );
    let st = server.app_status("web");
    assert_eq!(
        st["instances"].as_array().map(Vec::len),
        Some(1),
        "the warm instance: {st}"
    );
    wait_idle(&server, "web");

    let n = 20;
    let barrier = Arc::new(Barrier::new(n));
    let port = server.http_port;
    // Distinct paths, so that every request is held (identical GETs would queue behind one
    // leader in the cache's single-flight instead).
    let threads: Vec<_> = (0..n)
        .map(|i| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                let req =
                    Request::get(HOST, &format!("/?n={i}")).header("X-Forwarded-Proto", "https");
                crate::common::http::http(port, &req)
            })
        })
        .collect();
    let mut pids = BTreeSet::new();
    for t in threads {
        let r = t.join().expect("request thread").expect("held request");
        assert_eq!(r.status, 200, "{}", r.text());
        pids.insert(r.json()["pid"].as_i64().unwrap_or(-1));
    }
    assert_eq!(
        pids.len(),
        1,
        "one instance per app starts and serves them all: {pids:?}"
    );
    let st = server.app_status("web");
    assert_eq!(st["state"], json!("running"), "{st}");
    assert_eq!(st["instances"].as_array().map(Vec::len), Some(1), "{st}");
    // And it idles away again.
    wait_idle(&server, "web");
}

#[test]
fn failed_cold_start_answers_502_and_the_next_request_tries_again() {
    let server = Server::start_default();
    server.ok(&deploy_cmd(&server, "web", "v1", 0, 1, &[]));
    wait_idle(&server, "web");
    // Secrets apply to cold starts at once.
    server.ok(&json!({"command":"update_secrets","app":"web","secrets":{"EXIT_CODE":"5"}}));
    let r = get(&server, HOST, "/");
    assert_eq!(
        (r.status, r.text()),
        (502, "App failed to start".to_string())
    );
    let st = server.app_status("web");
    assert_eq!(st["state"], json!("error"), "{st}");
    assert_eq!(
        st["last_error"],
        json!("Cold start failed: Health check failed: Process exited during startup (exit code 5): boom"),
        "{st}"
    );
    assert_eq!(st["instances"], json!([]), "{st}");

    server.ok(&json!({"command":"update_secrets","app":"web","secrets":{"EXIT_CODE":""}}));
    let r = get(&server, HOST, "/");
    assert_eq!(r.status, 200, "{}", r.text());
    let st = server.app_status("web");
    assert_eq!(st["state"], json!("running"), "{st}");
    assert_eq!(st["last_error"], Value::Null, "{st}");
}

#[test]
fn cold_start_latency_median_of_10() {
    let server = Server::start_default();
    server.ok(&deploy_cmd(&server, "web", "v1", 0, 1, &[]));
    let mut ms = Vec::new();
    for _ in 0..10 {
        wait_idle(&server, "web");
        let t0 = Instant::now();
        let r = get(&server, HOST, "/");
        let took = t0.elapsed();
        assert_eq!(r.status, 200, "{}", r.text());
        ms.push(took.as_secs_f64() * 1000.0);
    }
    let mut sorted = ms.clone();
    sorted.sort_by(f64::total_cmp);
    let median = (sorted[4] + sorted[5]) / 2.0;
    eprintln!(
        "cold-start latency: median {median:.0} ms over 10 cold starts (min {:.0}, max {:.0}; all {:?})",
        sorted[0],
        sorted[9],
        ms.iter().map(|m| m.round() as u64).collect::<Vec<_>>()
    );
}

#[test]
fn crashing_app_is_replaced_with_growing_delays() {
    let server = Server::start_default();
    // Each instance exits 1 s after it starts listening.
    server.ok(&deploy_cmd(
        &server,
        "web",
        "v1",
        1,
        300,
        &[("EXIT_AFTER", "1")],
    ));
    // First and last time each instance id was seen in status.
    let mut seen: BTreeMap<u64, (Instant, Instant)> = BTreeMap::new();
    let mut errors = BTreeSet::new();
    let mut states = BTreeSet::new();
    wait_for(Duration::from_secs(25), "four replacements", || {
        let st = server.app_status("web");
        let now = Instant::now();
        for k in instance_keys(&st) {
            seen.entry(k.0).or_insert((now, now)).1 = now;
        }
        if let Some(e) = st["last_error"].as_str() {
            errors.insert(e.to_string());
        }
        states.insert(st["state"].as_str().unwrap_or("").to_string());
        (seen.len() >= 5).then_some(())
    });
    let spans: Vec<(u64, Instant, Instant)> =
        seen.iter().map(|(id, (a, b))| (*id, *a, *b)).collect();
    let gaps: Vec<Duration> = spans
        .windows(2)
        .map(|w| w[1].1.saturating_duration_since(w[0].2))
        .collect();
    eprintln!("replacement gaps: {gaps:?}");
    // Delays 0, 1, 2, 4 s (plus polling and start-up noise).
    let want = [0.0, 1.0, 2.0, 4.0];
    for (gap, want) in gaps.iter().zip(want) {
        let g = gap.as_secs_f64();
        assert!(
            g >= want - 0.25 && g <= want + 1.5,
            "gap {g:.2} s, expected about {want} s: {gaps:?}"
        );
    }
    let ids: Vec<u64> = spans.iter().map(|s| s.0).collect();
    assert!(
        errors.iter().any(|e| ids
            .iter()
            .any(|id| e == &format!("Instance {id} exited unexpectedly (exit code 7)"))),
        "last_error names the crash: {errors:?}"
    );
    assert!(
        states.contains("error"),
        "while waiting for a replacement the app is in error: {states:?}"
    );
}

#[test]
fn stop_is_durable_delete_forgets_secrets_apply_at_reload_releases_are_listed() {
    let mut server = Server::start_default();
    server.ok(&deploy_cmd(&server, "web", "v1", 1, 300, &[]));
    server.ok(&deploy_cmd(&server, "web", "v2", 1, 300, &[]));
    let rel = server.ok(&json!({"command":"list_releases","app":"web"}));
    let rows: Vec<(String, bool)> = rel["releases"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|r| {
            (
                r["version"].as_str().unwrap_or("").to_string(),
                r["current"] == json!(true),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [("v2".to_string(), true), ("v1".to_string(), false)],
        "{rel}"
    );

    // update_secrets: merged and persisted; running instances keep their env until reload.
    let data =
        server.ok(&json!({"command":"update_secrets","app":"web","secrets":{"SECRET_K":"s1"}}));
    assert_eq!(
        data,
        json!({"app":"web","note":"Call reload to apply secrets to running instances","status":"updated"})
    );
    let r = get(&server, HOST, "/").json();
    assert!(r["env"].get("SECRET_K").is_none(), "not applied yet: {r}");
    server.ok(&json!({"command":"reload","app":"web"}));
    let r = get(&server, HOST, "/").json();
    assert_eq!(r["env"]["SECRET_K"], json!("s1"), "applied by reload");

    // stop: answered once the instances are gone; routes stay; 503; durable.
    let pids = server.healthy_pids("web");
    let data = server.ok(&json!({"command":"stop","app":"web"}));
    assert_eq!(data, json!({"app":"web","status":"stopped"}));
    assert!(
        pids.iter().all(|p| !procfs::alive(*p)),
        "instances exited: {pids:?}"
    );
    let check_stopped = |server: &Server| {
        let st = server.app_status("web");
        assert_eq!(st["state"], json!("stopped"), "{st}");
        assert_eq!(st["instances"], json!([]), "{st}");
        let r = get(server, HOST, "/");
        assert_eq!(
            (r.status, r.text()),
            (503, "No healthy backend".to_string())
        );
        assert_eq!(
            server.ok(&json!({"command":"routes"})),
            json!({"routes":[{"app":"web","routes":[HOST]}]})
        );
    };
    check_stopped(&server);
    server.restart();
    server.wait_processes();
    check_stopped(&server);

    // reload starts it again, with the persisted secrets.
    let data = server.ok(&json!({"command":"reload","app":"web"}));
    assert_eq!(
        data,
        json!({"app":"web","note":"App was not running, started fresh","status":"started"})
    );
    let r = get(&server, HOST, "/");
    assert_eq!(r.status, 200, "{}", r.text());
    let r = r.json();
    assert_eq!(
        (r["version"].clone(), r["env"]["SECRET_K"].clone()),
        (json!("v2"), json!("s1"))
    );

    // delete: instances stopped, app, routes and history gone, also after a restart.
    let pids = server.healthy_pids("web");
    let data = server.ok(&json!({"command":"delete","app":"web"}));
    assert_eq!(data, json!({"app":"web","existed":true,"status":"deleted"}));
    assert!(
        pids.iter().all(|p| !procfs::alive(*p)),
        "instances exited: {pids:?}"
    );
    let check_gone = |server: &Server| {
        assert_eq!(
            server.err(&json!({"command":"status","app":"web"})),
            "App not found: web"
        );
        assert_eq!(
            server.err(&json!({"command":"list_releases","app":"web"})),
            "App not found: web"
        );
        assert_eq!(
            server.ok(&json!({"command":"routes"})),
            json!({"routes":[]})
        );
        assert_eq!(server.ok(&json!({"command":"list"})), json!({"apps":[]}));
        assert_eq!(get(server, HOST, "/").status, 404);
    };
    check_gone(&server);
    server.restart();
    server.wait_processes();
    check_gone(&server);
}

#[test]
fn ports_stay_in_the_app_block_across_many_redeploys() {
    let server = Server::start_default();
    let base = 10000 + server.offset as u64;
    let mut ports = BTreeSet::new();
    let mut last_ids: Vec<u64> = Vec::new();
    for n in 1..=8 {
        let version = format!("v{n}");
        server.ok(&deploy_cmd(&server, "web", &version, 2, 300, &[]));
        // Both builds, while the old one drains.
        let st = server.app_status("web");
        let keys = instance_keys(&st);
        ports.extend(keys.iter().map(|k| k.2));
        wait_settled(&server, &version, 2);
        let ids: Vec<u64> = keys
            .iter()
            .filter(|k| k.3 == "healthy")
            .map(|k| k.0)
            .collect();
        assert!(
            ids.iter().all(|id| last_ids.iter().all(|old| id > old)),
            "instance ids grow: {last_ids:?} then {ids:?}"
        );
        last_ids = ids;
    }
    eprintln!("ports used over 8 deploys: {ports:?} (block base {base})");
    // Two running and two draining at most: freed slots are taken again, lowest first.
    assert!(
        ports.iter().all(|p| (base..base + 4).contains(p)),
        "ports stay at the bottom of the block {base}: {ports:?}"
    );
    // A second app takes the next block.
    server.ok(&deploy_cmd(&server, "api", "v1", 1, 300, &[]));
    let st = server.app_status("api");
    let port = st["instances"][0]["port"].as_u64().unwrap_or(0);
    assert!((base + 64..base + 128).contains(&port), "{st}");
}

#[test]
fn instance_ignoring_sigterm_is_killed_with_its_group_after_the_grace_period() {
    let server = Server::start_default();
    server.ok(&deploy_cmd(
        &server,
        "web",
        "v1",
        1,
        300,
        &[("IGNORE_TERM", "1")],
    ));
    let r = get(&server, HOST, "/").json();
    let pid = r["pid"].as_i64().expect("pid") as i32;
    let child = r["child"].as_i64().expect("child pid") as i32;
    assert!(procfs::alive(child), "the child runs");
    let t0 = Instant::now();
    let data = server.ok(&json!({"command":"stop","app":"web"}));
    let took = t0.elapsed();
    assert_eq!(data, json!({"app":"web","status":"stopped"}));
    eprintln!("stop of a SIGTERM-ignoring instance took {took:?}");
    // SIGTERM, then SIGKILL 10 s later (plus the short drain of an idle instance).
    assert!(
        took >= Duration::from_secs(10) && took < Duration::from_secs(16),
        "{took:?}"
    );
    wait_for(
        Duration::from_secs(2),
        "the instance and its child to be gone",
        || (!procfs::alive(pid) && !procfs::alive(child)).then_some(()),
    );
}

#[test]
fn first_deploy_is_invisible_and_a_stopped_on_demand_app_never_cold_starts() {
    let mut server = Server::start_default();
    let delay_file = server.knob_dir().join("startup-delay");
    fs::write(&delay_file, "0.8").expect("write the startup delay knob");
    let delay = delay_file.display().to_string();
    let cmd = deploy_cmd(
        &server,
        "web",
        "v1",
        0,
        1,
        &[("STARTUP_DELAY_FILE", &delay)],
    );
    let socket = server.socket.clone();
    let deploy = std::thread::spawn(move || {
        Mgmt::connect(&socket)
            .expect("connect to the management socket")
            .request(&cmd)
    });
    // While the first deploy runs, the app does not exist for commands or routing.
    let mut checks = 0;
    while !deploy.is_finished() {
        let r = server.request(&json!({"command":"status","app":"web"}));
        if r["status"] == "ok" {
            // Only after the switch, which may come before the answer reaches the thread.
            assert_eq!(r["data"]["state"], json!("running"), "{r}");
            break;
        }
        assert_eq!(r["message"], json!("App not found: web"), "{r}");
        checks += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        checks >= 3,
        "the deploy was too quick to watch ({checks} checks)"
    );
    let resp = deploy.join().expect("deploy thread");
    assert_eq!(resp["data"]["warm_instance"], json!(true), "{resp}");
    fs::remove_file(&delay_file).expect("remove the delay knob");
    wait_idle(&server, "web");

    // Stopped: 503 and no cold start, also after a restart.
    server.ok(&json!({"command":"stop","app":"web"}));
    let check_stopped = |server: &Server| {
        for _ in 0..3 {
            let r = get(server, HOST, "/");
            assert_eq!(
                (r.status, r.text()),
                (503, "No healthy backend".to_string())
            );
        }
        let st = server.app_status("web");
        assert_eq!(st["state"], json!("stopped"), "{st}");
        assert_eq!(st["instances"], json!([]), "no cold start: {st}");
    };
    check_stopped(&server);
    server.restart();
    server.wait_processes();
    check_stopped(&server);

    // reload clears the flag and starts nothing (on-demand); a request wakes it.
    let data = server.ok(&json!({"command":"reload","app":"web"}));
    assert_eq!(data["status"], json!("started"), "{data}");
    let st = server.app_status("web");
    assert_eq!(
        (st["state"].clone(), st["instances"].clone()),
        (json!("idle"), json!([])),
        "{st}"
    );
    let r = get(&server, HOST, "/");
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn held_requests_over_the_queue_cap_get_503_and_the_rest_are_served() {
    let server = Server::start_default();
    let delay_file = server.knob_dir().join("startup-delay");
    let delay = delay_file.display().to_string();
    server.ok(&deploy_cmd(
        &server,
        "web",
        "v1",
        0,
        1,
        &[("STARTUP_DELAY_FILE", &delay)],
    ));
    wait_idle(&server, "web");
    fs::write(&delay_file, "1.5").expect("write the startup delay knob");
    // Two workers hold at most 100 requests each; 260 arrive during the cold start.
    let n = 260;
    let barrier = Arc::new(Barrier::new(n));
    let port = server.http_port;
    // Distinct paths: the cache's single-flight would otherwise queue identical requests
    // behind one leader before they reach the hold.
    let threads: Vec<_> = (0..n)
        .map(|i| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                let req =
                    Request::get(HOST, &format!("/?n={i}")).header("X-Forwarded-Proto", "https");
                crate::common::http::http(port, &req)
            })
        })
        .collect();
    let mut answers: BTreeMap<(u16, String), usize> = BTreeMap::new();
    for t in threads {
        let r = t.join().expect("request thread").expect("an answer");
        let body = if r.status == 200 {
            String::new()
        } else {
            r.text()
        };
        *answers.entry((r.status, body)).or_default() += 1;
    }
    eprintln!("answers during the cold start: {answers:?}");
    let ok = answers.get(&(200, String::new())).copied().unwrap_or(0);
    let full = answers
        .get(&(
            503,
            "App is starting; too many waiting requests".to_string(),
        ))
        .copied()
        .unwrap_or(0);
    assert_eq!(ok + full, n, "only 200 or the queue-cap 503: {answers:?}");
    assert!(ok >= 100 && full >= n - 200, "{answers:?}");
}

#[test]
fn old_instance_that_crashes_during_a_failed_rollout_is_replaced_afterwards() {
    let server = Server::start_default();
    let delay_file = server.knob_dir().join("startup-delay");
    let delay = delay_file.display().to_string();
    let env = [("STARTUP_DELAY_FILE", delay.as_str())];
    server.ok(&deploy_cmd(&server, "web", "v1", 2, 300, &env));
    let before = wait_settled(&server, "v1", 2);
    let victim = before["instances"][0]["pid"].as_i64().expect("pid") as i32;
    fs::write(&delay_file, "3").expect("write the startup delay knob");
    let cmd = deploy_cmd(&server, "web", "v2", 2, 300, &env);
    let socket = server.socket.clone();
    let deploy = std::thread::spawn(move || {
        Mgmt::connect(&socket)
            .expect("connect to the management socket")
            .request(&cmd)
    });
    let starting = wait_for(Duration::from_secs(10), "a starting v2 instance", || {
        let st = server.app_status("web");
        let b = st["builds"]
            .as_array()?
            .iter()
            .find(|b| b["version"] == "v2")?
            .clone();
        b["instances"][0]["pid"].as_i64().map(|p| p as i32)
    });
    // An old instance crashes during the rollout: not replaced while it runs (docs/apps.md,
    // "Crashes and replacement").
    assert!(
        crate::common::kill(victim, libc::SIGKILL),
        "kill -9 v1 instance {victim}"
    );
    wait_for(Duration::from_secs(5), "the crash to be noticed", || {
        let st = server.app_status("web");
        let n = st["builds"][0]["instances"].as_array()?.len();
        (build_versions(&st)[0] == "v1" && n == 1).then_some(())
    });
    // Then the new instance fails to start: the rollout fails.
    assert!(
        crate::common::kill(starting, libc::SIGKILL),
        "kill -9 v2 instance {starting}"
    );
    let resp = deploy.join().expect("deploy thread");
    assert_eq!(resp["status"], json!("error"), "{resp}");
    let err: Value = serde_json::from_str(resp["message"].as_str().unwrap_or(""))
        .unwrap_or_else(|e| panic!("rollout error as JSON ({e}): {resp}"));
    assert_eq!(err["rolled_back"], json!(true), "{err}");
    // Always-on apps are kept at their count: v1 gets back to 2.
    fs::remove_file(&delay_file).expect("remove the delay knob");
    let st = wait_settled(&server, "v1", 2);
    assert_eq!(st["version"], json!("v1"), "{st}");
}
