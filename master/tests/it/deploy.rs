//! Issue 3: deploy end to end with real app processes (the Python fixture of
//! common/fixture.rs): routing and round-robin, crash replacement, health probes, the instance
//! environment, app logs, restore after a restart, the app user. Documented in docs/apps.md,
//! docs/http.md and docs/architecture.md, "State".

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::procfs;
use crate::common::users::{self, APP_USER, DEPLOY_USER};
use crate::common::{app_log_dir, exit_code, wait_for, Request, Server, ServerOpts};
use serde_json::{json, Value};

/// (pid, instance id) of the instance that answered.
fn who(r: &crate::common::Response) -> (i64, String) {
    let v = r.json();
    (
        v["pid"].as_i64().unwrap_or(-1),
        v["instance"].as_str().unwrap_or("").to_string(),
    )
}

#[test]
fn two_instances_two_routes_round_robin_and_404_for_unknown_host() {
    let server = Server::start(ServerOpts::default().test_certs());
    server.wait_http_ready();
    let data = server.deploy(
        "web",
        "v1",
        &["web.example.com", "example.com/api/*"],
        2,
        &[],
    );
    assert_eq!(
        data,
        json!({"app":"web","new_app":true,"on_demand":false,"status":"deployed","version":"v1"})
    );
    let st = server.app_status("web");
    let inst = st["instances"].as_array().cloned().unwrap_or_default();
    assert_eq!(inst.len(), 2, "{st}");
    let ports: BTreeSet<u64> = inst.iter().filter_map(|i| i["port"].as_u64()).collect();
    let base = 10000 + server.offset as u64;
    // The lowest free slots: 0 and 1 unless something else holds one of those ports.
    assert_eq!(ports.len(), 2, "{st}");
    assert!(
        ports.iter().all(|p| (base..base + 64).contains(p)),
        "ports in the app's block {base}: {st}"
    );
    let status_pids: BTreeSet<i64> = inst.iter().filter_map(|i| i["pid"].as_i64()).collect();
    assert!(inst.iter().all(|i| i["state"] == "healthy"), "{st}");

    // Round-robin: over a dozen requests both instances answer.
    let mut seen = BTreeSet::new();
    let mut ids = BTreeSet::new();
    for _ in 0..12 {
        let r = server
            .app_get("web.example.com", "/hello")
            .expect("request");
        assert_eq!(r.status, 200, "{}", r.text());
        let (pid, id) = who(&r);
        seen.insert(pid);
        ids.insert(id);
    }
    assert_eq!(seen, status_pids, "both instances serve");
    assert_eq!(ids.len(), 2, "distinct TAKO_INSTANCE: {ids:?}");

    // The path route: `/api/*` matches /api and below, not /apifoo or other paths.
    for path in ["/api", "/api/", "/api/x?q=1"] {
        let r = server.app_get("example.com", path).expect("request");
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        let v = r.json();
        assert_eq!(v["path"], json!(path), "the path reaches the app unchanged");
        assert_eq!(v["headers"]["host"], json!("example.com"));
        assert_eq!(v["headers"]["x-forwarded-proto"], json!("https"));
        let xff = v["headers"]["x-forwarded-for"].as_str().unwrap_or("");
        assert!(xff.ends_with("127.0.0.1"), "X-Forwarded-For {xff:?}");
    }
    for path in ["/apifoo", "/other", "/"] {
        let r = server.app_get("example.com", path).expect("request");
        assert_eq!(
            (r.status, r.text()),
            (404, "Not Found".to_string()),
            "{path}"
        );
    }
    // Host matching is case-insensitive and ignores the port.
    let r = server
        .app_get("WEB.Example.com:8080", "/x")
        .expect("request");
    assert_eq!(r.status, 200, "{}", r.text());

    // Over TLS, with SNI.
    let r = server
        .tls_get("web.example.com", "/tls")
        .expect("HTTPS request");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["headers"]["x-forwarded-proto"], json!("https"));

    // Unknown host: 404 over HTTPS and forwarded HTTP; plain HTTP is redirected first.
    let r = server
        .tls_get_no_sni("unknown.example.org", "/")
        .expect("HTTPS request");
    assert_eq!((r.status, r.text()), (404, "Not Found".to_string()));
    let r = server.app_get("unknown.example.org", "/").expect("request");
    assert_eq!(r.status, 404);
    let r = crate::common::http::http(server.http_port, &Request::get("web.example.com", "/"))
        .expect("plain request");
    assert_eq!(r.status, 307, "plain HTTP to an app is redirected");

    // The status host lists the app; requests_total adds up (counters may lag 1 s).
    wait_for(
        Duration::from_secs(5),
        "requests_total to count the requests",
        || {
            let v = server.internal_status().ok()?.json();
            let app = &v["apps"][0];
            let total: u64 = app["instances"]
                .as_array()?
                .iter()
                .filter_map(|i| i["requests_total"].as_u64())
                .sum();
            (v["healthy"] == json!(true) && app["name"] == "web" && total >= 17).then_some(())
        },
    );
}

#[test]
fn deploy_right_after_the_socket_answers() {
    // The socket is up before the launcher and the workers (docs/cli.md, "Startup", steps 8-9);
    // a deploy sent at once, as the Tako CLI may after a restart, must still succeed.
    let server = Server::start_socket_only(ServerOpts::default());
    let data = server.deploy("web", "v1", &["web.example.com"], 1, &[]);
    assert_eq!(data["status"], json!("deployed"), "{data}");
    let r = server.app_get("web.example.com", "/").expect("request");
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn killed_instance_is_replaced() {
    let server = Server::start_default();
    server.deploy("web", "v1", &["web.example.com"], 2, &[]);
    let before = server.instances("web");
    let (victim_id, victim, _) = before[0].clone();
    let victim = victim.expect("instance pid");
    let max_id = before.iter().map(|(id, _, _)| *id).max().unwrap_or(0);

    let stop = Arc::new(AtomicBool::new(false));
    let failures: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
    let port = server.http_port;
    let client = {
        let (stop, failures) = (stop.clone(), failures.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let req = Request::get("web.example.com", "/").header("X-Forwarded-Proto", "https");
                let fail = match crate::common::http::http(port, &req) {
                    Ok(r) if r.status == 200 => None,
                    Ok(r) => Some(format!("{} {}", r.status, r.text())),
                    Err(e) => Some(e.to_string()),
                };
                if let Some(f) = fail {
                    failures.lock().expect("lock").push((Instant::now(), f));
                }
                n += 1;
            }
            n
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let killed_at = Instant::now();
    assert!(
        crate::common::kill(victim, libc::SIGKILL),
        "kill -9 instance {victim}"
    );
    let after = wait_for(
        Duration::from_secs(10),
        "a healthy replacement instance",
        || {
            let now = server.instances("web");
            let healthy = now.iter().filter(|(_, _, s)| s == "healthy").count();
            let gone = now.iter().all(|(_, pid, _)| *pid != Some(victim));
            (healthy == 2 && gone).then_some(now)
        },
    );
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let n = client.join().expect("client thread");
    let failures: Vec<(Duration, String)> = failures
        .lock()
        .expect("lock")
        .iter()
        .map(|(t, f)| (t.saturating_duration_since(killed_at), f.clone()))
        .collect();
    eprintln!(
        "instance {victim_id} (pid {victim}) killed: {n} requests, {} failed: {failures:?}",
        failures.len()
    );
    assert!(
        after.iter().any(|(id, _, _)| *id > max_id),
        "the replacement has a new id: before {before:?}, after {after:?}"
    );
    // The request the instance was serving is lost (502 or a cut response, docs/http.md,
    // "Error responses"); the crash takes the instance out of rotation at once, so nothing
    // fails later.
    assert!(
        failures
            .iter()
            .all(|(t, _)| *t < Duration::from_millis(500)),
        "failures only at the moment of the crash: {failures:?}"
    );
    assert!(
        failures.len() <= 2,
        "only requests in flight fail: {failures:?}"
    );
    let st = server.app_status("web");
    assert_eq!(st["state"], json!("running"), "{st}");
}

#[test]
fn failing_probe_takes_an_instance_out_of_rotation_within_3s() {
    let server = Server::start_default();
    let knobs = server.knob_dir();
    let pattern = knobs.join("fail-{instance}").display().to_string();
    server.deploy(
        "web",
        "v1",
        &["web.example.com"],
        2,
        &[("FAIL_STATUS_FILE", &pattern)],
    );
    let inst = server.instances("web");
    let (bad_id, bad_pid, _) = inst[0].clone();
    let bad_pid = bad_pid.expect("pid") as i64;
    let fail_file = knobs.join(format!("fail-{bad_id}"));
    fs::write(&fail_file, "").expect("create the failure knob");
    let t0 = Instant::now();

    let st = wait_for(
        Duration::from_secs(3),
        "the instance to be reported unhealthy",
        || {
            let st = server.app_status("web");
            let gone_or_bad = st["instances"]
                .as_array()?
                .iter()
                .all(|i| i["id"] != json!(bad_id) || i["state"] == "unhealthy");
            gone_or_bad.then_some(st)
        },
    );
    eprintln!("unhealthy after {:?}", t0.elapsed());
    let last_error = st["last_error"].as_str().unwrap_or("");
    assert!(
        last_error.starts_with(&format!("Instance {bad_id} is unhealthy: ")),
        "last_error: {st}"
    );
    // From 3 s after the failure began, no request reaches it.
    while t0.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(20));
    }
    for _ in 0..10 {
        let r = server.app_get("web.example.com", "/").expect("request");
        assert_eq!(r.status, 200, "{}", r.text());
        assert_ne!(
            who(&r).0,
            bad_pid,
            "a request reached the unhealthy instance"
        );
    }
    let health = server.internal_status().expect("status host").json();
    assert_eq!(
        health["healthy"],
        json!(true),
        "one healthy instance is enough: {health}"
    );

    // Once the probe succeeds again the app is back to two healthy instances (the same
    // one, or its replacement if it was declared dead).
    fs::remove_file(&fail_file).expect("remove the knob");
    wait_for(
        Duration::from_secs(20),
        "two healthy instances again",
        || {
            let healthy = server.healthy_pids("web");
            (healthy.len() == 2).then_some(())
        },
    );
}

#[test]
fn instance_environment_is_built_from_scratch() {
    let canary = format!("canary-{}", std::process::id());
    let server = Server::start(ServerOpts::default().env("TAKO_TEST_CANARY", &canary));
    server.deploy(
        "web",
        "v7",
        &["web.example.com"],
        1,
        &[
            ("APP_MODE", "test"),
            ("NODE_ENV", "staging"),
            ("PORT", "1"),
            ("HOST", "0.0.0.0"),
            ("TAKO_VERSION", "fake"),
            ("TAKO_INSTANCE", "99"),
        ],
    );
    let st = server.app_status("web");
    let port = st["instances"][0]["port"].as_u64().expect("port");
    let id = st["instances"][0]["id"].as_u64().expect("id");
    let r = server.app_get("web.example.com", "/env").expect("request");
    assert_eq!(r.status, 200, "{}", r.text());
    let env = r.json()["env"].clone();
    assert_eq!(
        env["PORT"],
        json!(port.to_string()),
        "PORT is the instance port: {env}"
    );
    assert_eq!(env["HOST"], json!("127.0.0.1"), "{env}");
    assert_eq!(env["TAKO_VERSION"], json!("v7"), "{env}");
    assert_eq!(env["TAKO_BUILD"], json!("v7"), "{env}");
    assert_eq!(env["TAKO_INSTANCE"], json!(id.to_string()), "{env}");
    assert_eq!(
        env["NODE_ENV"],
        json!("staging"),
        "the deploy env may override NODE_ENV"
    );
    assert_eq!(env["APP_MODE"], json!("test"), "{env}");
    assert!(env["PATH"].is_string() && env["LANG"].is_string(), "{env}");
    let expected_home = if users::is_root() {
        // Each app has a private HOME of its own (docs/isolation.md).
        server.data_dir.join("app-homes/web").display().to_string()
    } else {
        nix::unistd::User::from_uid(nix::unistd::getuid())
            .ok()
            .flatten()
            .map(|u| u.dir.display().to_string())
            .unwrap_or_default()
    };
    assert_eq!(env["HOME"], json!(expected_home), "{env}");
    for absent in [
        "TAKO_TEST_CANARY",
        "RUST_LOG",
        "TAKO_APP_SOCKET",
        "TAKO_SOCKET",
    ] {
        assert!(
            env.get(absent).is_none(),
            "{absent} must not reach the app: {env}"
        );
    }
}

#[test]
fn loud_app_keeps_serving_and_its_output_is_logged() {
    let server = Server::start_default();
    server.deploy(
        "loud",
        "v1",
        &["loud.example.com"],
        1,
        &[("PRINT_MB", "10")],
    );
    let id = server.instances("loud")[0].0;
    for _ in 0..5 {
        let r = server.app_get("loud.example.com", "/").expect("request");
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let dir = app_log_dir(&server.data_dir, "loud");
    let done_line = wait_for(Duration::from_secs(30), "PRINT_DONE in app.log", || {
        let text = fs::read_to_string(dir.join("app.log")).ok()?;
        text.lines()
            .find(|l| l.ends_with("PRINT_DONE"))
            .map(str::to_string)
    });
    // `<RFC 3339 UTC with ms> <version>/<instance id> <out|err> <line>`
    let parts: Vec<&str> = done_line.splitn(4, ' ').collect();
    assert_eq!(parts.len(), 4, "{done_line:?}");
    assert!(
        parts[0].contains('T') && parts[0].ends_with('Z') && parts[0].contains('.'),
        "timestamp {done_line:?}"
    );
    assert_eq!(parts[1], format!("v1/{id}"), "{done_line:?}");
    assert_eq!(parts[2], "out", "{done_line:?}");

    let mut total = 0u64;
    let mut files = Vec::new();
    for entry in fs::read_dir(&dir).expect("log dir") {
        let entry = entry.expect("entry");
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("app.log") {
            total += entry.metadata().expect("metadata").len();
            files.push(name);
        }
    }
    files.sort();
    assert!(
        total >= 10 * 1024 * 1024,
        "10 MiB logged, got {total} in {files:?}"
    );
    assert!(
        files.contains(&"app.log.1".to_string()),
        "app.log rotated after passing 10 MiB: {files:?}"
    );
    let log_meta = fs::metadata(dir.join("app.log")).expect("app.log");
    assert!(
        log_meta.len() <= 10 * 1024 * 1024 + 64 * 1024,
        "app.log was rotated: {}",
        log_meta.len()
    );
    assert_eq!(log_meta.permissions().mode() & 0o777, 0o640, "app.log mode");
    let dir_meta = fs::metadata(&dir).expect("log dir");
    assert_eq!(
        dir_meta.permissions().mode() & 0o777,
        0o750,
        "logs dir mode"
    );
    if users::is_root() {
        let tako = users::user(DEPLOY_USER);
        assert_eq!(
            (dir_meta.uid(), dir_meta.gid()),
            (tako.uid, tako.gid),
            "logs dir owner"
        );
        assert_eq!(log_meta.gid(), tako.gid, "app.log group");
    }
    let stderr = server.stderr_text();
    assert!(
        !stderr.contains("PRINT_DONE") && !stderr.contains(&"x".repeat(100)),
        "app output never goes to the server log"
    );
    let r = server.app_get("loud.example.com", "/").expect("request");
    assert_eq!(r.status, 200);
}

#[test]
fn restart_restores_apps_without_a_deploy_and_answers_first() {
    let mut server = Server::start_default();
    server.wait_http_ready();
    let knob = server.knob_dir().join("delay");
    let knob_s = knob.display().to_string();
    let routes = ["web.example.com", "example.com/api/*"];
    server.deploy("web", "v1", &routes, 1, &[("STARTUP_DELAY_FILE", &knob_s)]);
    let old_pid = who(&server.app_get("web.example.com", "/").expect("request")).0;

    // From now on the app takes 3 s to listen: long enough to see the server answer first.
    fs::write(&knob, "3").expect("write the delay knob");
    server.restart();
    let sock_at = Instant::now();
    let st = server.app_status("web");
    assert_ne!(
        st["state"],
        json!("running"),
        "the socket answers before the app is back: {st}"
    );
    assert_eq!(
        server.ok(&json!({"command":"routes"})),
        json!({"routes":[{"app":"web","routes":routes}]}),
        "routes are registered before instances start"
    );
    let health = server.wait_http_ready();
    assert_eq!(
        health.status,
        503,
        "the listeners answer before the app is back (unhealthy while it starts): {}",
        health.text()
    );
    assert_eq!(health.json()["healthy"], json!(false));
    assert!(
        !server.healthy_pids("web").iter().any(|_| true),
        "still no healthy instance after the listener answered"
    );

    // Once the restored instance is starting, a request is held until it is healthy
    // (docs/http.md, "Choosing an instance").
    wait_for(
        Duration::from_secs(10),
        "the restored instance to be starting",
        || {
            server
                .instances("web")
                .iter()
                .any(|(_, _, st)| st == "starting")
                .then_some(())
        },
    );
    let r = server
        .app_get("web.example.com", "/after")
        .expect("held request");
    assert_eq!(r.status, 200, "{}", r.text());
    let (pid, _) = who(&r);
    assert_ne!(pid, old_pid, "a new process serves");
    eprintln!("app back {:?} after the socket answered", sock_at.elapsed());
    let st = server.app_status("web");
    assert_eq!(st["state"], json!("running"), "{st}");
    assert_eq!(st["version"], json!("v1"), "{st}");
    let r = server
        .app_get("example.com", "/api/x")
        .expect("second route");
    assert_eq!(r.status, 200, "second route after restore: {}", r.text());
    // The status page is the master's snapshot as the workers last got it.
    let t = Instant::now();
    wait_for(
        Duration::from_secs(2),
        "the status host to report healthy",
        || (server.internal_status().ok()?.status == 200).then_some(()),
    );
    eprintln!(
        "status host healthy {:?} after the app answered",
        t.elapsed()
    );
}

#[test]
fn root_instances_run_as_the_apps_own_uid() {
    users::require_root("the uid of instances");
    let app = users::user(APP_USER);
    let tako = users::user(DEPLOY_USER);
    let server = Server::start_default();
    server.deploy("web", "v1", &["web.example.com"], 2, &[]);
    let launcher = server.pids_of("launcher");
    assert_eq!(launcher.len(), 1);
    for (id, pid, _) in server.instances("web") {
        let pid = pid.expect("pid");
        let s = procfs::status(pid).expect("instance status");
        // A uid and gid of the app's own from the server's range, never the app user's;
        // the app user's group comes along as a supplementary group.
        let own = s.uids[0];
        let (first, last) = server.app_uid_range;
        assert!((first..=last).contains(&own), "instance {id} uid: {s:?}");
        assert_eq!(s.uids, [own; 4], "instance {id} uid: {s:?}");
        assert_eq!(s.gids, [own; 4], "instance {id} gid: {s:?}");
        assert!(s.groups.contains(&app.gid), "instance {id} groups: {s:?}");
        assert_eq!(s.cap_eff, 0, "instance {id} CapEff: {s:?}");
        assert_eq!(s.no_new_privs, 1, "instance {id} NoNewPrivs: {s:?}");
        let (ppid, _, pgid) = procfs::stat(pid).expect("instance stat");
        assert_eq!(pgid, pid, "instance {id} leads its own process group");
        assert_eq!(
            ppid, launcher[0],
            "instance {id} is a child of the launcher"
        );
    }
    let r = server.app_get("web.example.com", "/").expect("request");
    let uid = r.json()["uid"].as_u64().expect("uid") as u32;
    let (first, last) = server.app_uid_range;
    assert!(
        (first..=last).contains(&uid),
        "the app answers as its own uid, not {}",
        app.uid
    );
    // The release is handed back to the deploy user after the install step.
    let meta = fs::metadata(server.data_dir.join("apps/web/releases/v1")).expect("release");
    assert_eq!(meta.uid(), tako.uid, "release owner after deploy");
}

#[test]
fn unprivileged_server_deploys_and_serves() {
    // The same path as a non-root user: everything, apps included, runs as that user.
    let server = Server::start(ServerOpts::default().unprivileged());
    let uid = server.run_ids.0;
    server.deploy("web", "v1", &["web.example.com"], 2, &[]);
    for (id, pid, _) in server.instances("web") {
        let s = procfs::status(pid.expect("pid")).expect("instance status");
        assert_eq!(s.uids, [uid; 4], "instance {id}: {s:?}");
    }
    let r = server.app_get("web.example.com", "/").expect("request");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["uid"], json!(uid));
    let log = app_log_dir(&server.data_dir, "web").join("app.log");
    wait_for(
        Duration::from_secs(5),
        "the app's first line in app.log",
        || {
            fs::read_to_string(&log)
                .ok()?
                .contains("listening on")
                .then_some(())
        },
    );
}

#[test]
fn failed_first_deploy_leaves_no_trace() {
    let server = Server::start_default();
    server.wait_http_ready();
    let cmd = server.deploy_cmd("web", "v1", &["web.example.com"], 1, &[("EXIT_CODE", "3")]);
    let msg = server.err(&cmd);
    assert_eq!(
        msg,
        "Deploy failed: Health check failed: Process exited during startup (exit code 3): boom"
    );
    assert_eq!(server.ok(&json!({"command":"list"})), json!({"apps": []}));
    assert_eq!(
        server.ok(&json!({"command":"routes"})),
        json!({"routes": []})
    );
    assert_eq!(
        server.err(&json!({"command":"status","app":"web"})),
        "App not found: web"
    );
    let r = server.app_get("web.example.com", "/").expect("request");
    assert_eq!(r.status, 404);
    let release = server
        .data_dir
        .join("apps/web/releases/v1")
        .display()
        .to_string();
    wait_for(
        Duration::from_secs(5),
        "no process left in the release",
        || {
            procfs::processes_touching(&release)
                .is_empty()
                .then_some(())
        },
    );
}

#[test]
fn failed_rolling_update_keeps_the_old_build() {
    let server = Server::start_default();
    server.deploy("web", "v1", &["web.example.com"], 1, &[]);
    let before = server.healthy_pids("web");
    let cmd = server.deploy_cmd("web", "v2", &["web.example.com"], 1, &[("EXIT_CODE", "3")]);
    let msg = server.err(&cmd);
    let v: Value = serde_json::from_str(&msg)
        .unwrap_or_else(|e| panic!("the rollout error is a JSON document ({e}): {msg}"));
    assert_eq!(
        v,
        json!({"app":"web","error":"Health check failed: Process exited during startup (exit code 3): boom","rolled_back":true,"status":"rollback"})
    );
    let st = server.app_status("web");
    assert_eq!(st["version"], json!("v1"), "{st}");
    assert_eq!(
        server.healthy_pids("web"),
        before,
        "the old instance keeps serving"
    );
    let r = server.app_get("web.example.com", "/").expect("request");
    assert_eq!(r.json()["version"], json!("v1"));
    let rel = server.ok(&json!({"command":"list_releases","app":"web"}));
    let current: Vec<Value> = rel["releases"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r["current"] == json!(true))
        .map(|r| r["version"].clone())
        .collect();
    assert_eq!(current, vec![json!("v1")], "{rel}");
}

#[test]
fn instances_die_with_a_killed_master() {
    let server = Server::start_default();
    server.deploy("web", "v1", &["web.example.com"], 2, &[]);
    let pids: Vec<i32> = server.healthy_pids("web");
    assert_eq!(pids.len(), 2);
    let tree = server.remember_tree();
    let mut server = server;
    server.signal(libc::SIGKILL);
    server
        .wait_exit(Duration::from_secs(5))
        .expect("master dies");
    // The launcher sends SIGTERM at once and SIGKILL 5 s later.
    let left = crate::common::poll(Duration::from_secs(7), Duration::from_millis(20), || {
        tree.iter()
            .chain(pids.iter())
            .all(|p| !procfs::alive(*p))
            .then_some(())
    });
    let alive: Vec<(i32, Vec<String>)> = tree
        .iter()
        .chain(pids.iter())
        .copied()
        .filter(|p| procfs::alive(*p))
        .map(|p| (p, procfs::cmdline(p)))
        .collect();
    assert!(left.is_some(), "processes outlived the master: {alive:?}");
}

#[test]
fn sigterm_stops_instances_before_exiting() {
    let mut server = Server::start_default();
    server.deploy("web", "v1", &["web.example.com"], 2, &[]);
    let pids = server.healthy_pids("web");
    assert_eq!(pids.len(), 2);
    let st = server.stop();
    assert_eq!(exit_code(st), 0, "exit status {st}");
    let alive: Vec<i32> = pids.iter().copied().filter(|p| procfs::alive(*p)).collect();
    assert!(
        alive.is_empty(),
        "instances left after the master exited: {alive:?}"
    );
}
