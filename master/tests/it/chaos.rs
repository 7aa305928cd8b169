//! Issue 11, chaos: kill -9 a worker, the launcher and an instance, each while a client pool
//! runs and a deploy is in flight; afterwards the SQLite state passes `integrity_check`, every
//! acknowledged deploy is there and service resumes. Power cut: kill -9 the master in the
//! middle of a deploy, restart it, and the state is the old or the new release, never a mix.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::common::http::http;
use crate::common::{procfs, wait_for, Mgmt, Request, Server};
use serde_json::Value;

const APP: &str = "chaos";
const HOST: &str = "chaos.example.com";

/// Requests on new connections from `threads` threads until stopped: (ok, failed).
struct Pool {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    threads: Vec<JoinHandle<()>>,
}

impl Pool {
    fn start(port: u16, threads: usize) -> Pool {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let threads = (0..threads)
            .map(|t| {
                let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
                std::thread::spawn(move || {
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        i += 1;
                        let req = Request::get(HOST, &format!("/pool-{t}-{i}"))
                            .header("X-Forwarded-Proto", "https");
                        match http(port, &req) {
                            Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                            _ => failed.fetch_add(1, Ordering::Relaxed),
                        };
                        std::thread::sleep(Duration::from_millis(5));
                    }
                })
            })
            .collect();
        Pool {
            stop,
            ok,
            failed,
            threads,
        }
    }

    fn counts(&self) -> (usize, usize) {
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }

    fn stop(self) -> (usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

/// The deploy command of `version`, with `REL=<version>` in its env so a mix of two releases
/// in the state would show.
/// Every instance takes half a second to start listening, so a kill 250 ms into a deploy
/// lands while the new instances are still starting and the old ones still serve: drains end
/// on events now, and a rollout of an instantly ready app can be over before the kill.
fn deploy_cmd(server: &Server, version: &str, instances: u32) -> Value {
    let delay = server.knob_dir().join("startup-delay");
    std::fs::write(&delay, "0.5").expect("write the startup delay knob");
    let delay = delay.display().to_string();
    server.deploy_cmd(
        APP,
        version,
        &[HOST],
        instances,
        &[("REL", version), ("STARTUP_DELAY_FILE", &delay)],
    )
}

/// Sends a deploy on its own connection in a thread: Ok(data) when acknowledged.
fn deploy_in_background(socket: &Path, cmd: Value) -> JoinHandle<Result<Value, String>> {
    let socket = socket.to_path_buf();
    std::thread::spawn(move || {
        let mut m = Mgmt::connect(&socket).map_err(|e| format!("connect: {e}"))?;
        let line = serde_json::to_vec(&cmd).expect("serialize");
        let resp = m.raw(&line).map_err(|e| format!("no answer: {e}"))?;
        let v: Value = serde_json::from_str(&resp).map_err(|e| format!("{e}: {resp}"))?;
        match v["status"].as_str() {
            Some("ok") => Ok(v["data"].clone()),
            _ => Err(resp),
        }
    })
}

/// The version the app answers with, once `n` requests in a row get a 200.
fn serving_version(server: &Server, within: Duration) -> String {
    wait_for(within, "service to resume (5 answers in a row)", || {
        let mut version = None;
        for i in 0..5 {
            let r = server.app_get(HOST, &format!("/probe-{i}")).ok()?;
            if r.status != 200 {
                return None;
            }
            version = r.json()["version"].as_str().map(str::to_string);
        }
        version
    })
}

/// `PRAGMA integrity_check` of the state file, and the current row of the app:
/// (version, path, REL from env_json).
fn check_state(data_dir: &Path) -> (String, Option<(String, String, String)>) {
    let file = data_dir.join("runtime-state.sqlite3");
    let db = rusqlite::Connection::open_with_flags(
        &file,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .unwrap_or_else(|e| panic!("open {}: {e}", file.display()));
    db.busy_timeout(Duration::from_secs(5))
        .expect("busy timeout");
    let integrity: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity_check");
    let row = db
        .query_row(
            "SELECT version, path, env_json FROM apps WHERE name = ?1",
            [APP],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                ))
            },
        )
        .ok()
        .map(|(v, p, env)| {
            let env: Value = serde_json::from_str(&env).unwrap_or(Value::Null);
            let rel = env["REL"].as_str().unwrap_or("").to_string();
            (v, p, rel)
        });
    (integrity, row)
}

/// Versions with a release-history row.
fn release_versions(data_dir: &Path) -> Vec<String> {
    let db = rusqlite::Connection::open_with_flags(
        data_dir.join("runtime-state.sqlite3"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open state");
    db.busy_timeout(Duration::from_secs(5))
        .expect("busy timeout");
    let mut st = db
        .prepare("SELECT version FROM releases WHERE app_name = ?1 ORDER BY id")
        .expect("prepare");
    let rows = st
        .query_map([APP], |r| r.get::<_, String>(0))
        .expect("query");
    rows.filter_map(Result::ok).collect()
}

/// The row is one release: version, path and env all name the same one.
fn assert_consistent(row: &(String, String, String)) {
    let (version, path, rel) = row;
    assert!(
        path.ends_with(&format!("/releases/{version}")),
        "state mixes releases: version {version} path {path}"
    );
    assert_eq!(
        rel, version,
        "state mixes releases: env REL {rel} for {version}"
    );
}

fn pid_of(server: &Server, role: &str) -> i32 {
    *server
        .pids_of(role)
        .first()
        .unwrap_or_else(|| panic!("no {role} running"))
}

#[test]
fn kill_each_role_under_load_and_nothing_acknowledged_is_lost() {
    let mut server = Server::start_default();
    server.wait_http_ready();
    server.ok(&deploy_cmd(&server, "v1", 2));
    let mut acked = vec!["v1".to_string()];
    let pool = Pool::start(server.http_port, 3);
    let mut report = Vec::new();

    for (round, role) in ["worker", "launcher", "instance"].iter().enumerate() {
        let version = format!("v{}", round + 2);
        let before = pool.counts();
        let victim = match *role {
            "instance" => *server
                .healthy_pids(APP)
                .first()
                .expect("a healthy instance"),
            r => pid_of(&server, r),
        };
        let deploy = deploy_in_background(&server.socket, deploy_cmd(&server, &version, 2));
        // Into the rollout: the new instances are starting.
        std::thread::sleep(Duration::from_millis(250));
        assert!(
            crate::common::kill(victim, libc::SIGKILL),
            "kill -9 {role} {victim}"
        );
        let killed_at = Instant::now();
        let result = deploy.join().expect("deploy thread");
        if result.is_ok() {
            acked.push(version.clone());
        }
        // Service resumes, every role is back, the app runs its instances.
        let serving = serving_version(&server, Duration::from_secs(30));
        let resumed = killed_at.elapsed();
        server.wait_processes();
        let healthy = wait_for(Duration::from_secs(30), "2 healthy instances", || {
            let pids = server.healthy_pids(APP);
            (pids.len() >= 2).then_some(pids)
        });
        assert!(!healthy.contains(&victim) || *role != "instance");
        let (integrity, row) = check_state(&server.data_dir);
        assert_eq!(integrity, "ok", "integrity_check after killing the {role}");
        let row = row.expect("the app is in the state");
        assert_consistent(&row);
        let last = acked.last().expect("v1 at least");
        assert_eq!(
            &row.0, last,
            "the current release is the last acknowledged one"
        );
        let after = pool.counts();
        report.push(format!(
            "kill -9 {role} (pid {victim}) during deploy {version}: deploy {}; service back in \
             {resumed:?}, serving {serving}, state {} ok, {} healthy instances; pool during the \
             round: {} ok, {} failed",
            if result.is_ok() {
                "acknowledged"
            } else {
                "refused"
            },
            row.0,
            healthy.len(),
            after.0 - before.0,
            after.1 - before.1
        ));
        if let Err(e) = &result {
            eprintln!("deploy {version} during the {role} kill was not acknowledged: {e}");
        }
    }
    let (ok, failed) = pool.stop();

    // Every acknowledged deploy is in the history, and a restart brings the last one back.
    let history = release_versions(&server.data_dir);
    for v in &acked {
        assert!(
            history.contains(v),
            "acknowledged {v} missing from {history:?}"
        );
    }
    server.restart();
    server.wait_processes();
    let last = acked.last().expect("v1").clone();
    let serving = serving_version(&server, Duration::from_secs(30));
    assert_eq!(
        serving, last,
        "after a restart the last acknowledged release serves"
    );
    let (integrity, _) = check_state(&server.data_dir);
    assert_eq!(integrity, "ok");
    eprintln!(
        "chaos:\n{}\npool total: {ok} ok, {failed} failed; acknowledged {acked:?}; after a \
         restart serving {serving}",
        report.join("\n")
    );
    assert!(ok > 100, "the pool made progress: {ok}");
    assert!(
        !server.stderr_text().contains("panicked"),
        "a role panicked"
    );
}

#[test]
fn power_cut_mid_deploy_restarts_on_the_old_or_the_new_release() {
    let mut server = Server::start_default();
    server.wait_http_ready();
    server.ok(&deploy_cmd(&server, "v1", 1));
    let mut current = "v1".to_string();
    let mut report = Vec::new();
    let pool = Pool::start(server.http_port, 2);
    // Kill points from "the command just arrived" through "the new instance is starting" to
    // "the switch is done".
    for (n, delay_ms) in [5u64, 40, 80, 110, 140, 250].iter().enumerate() {
        let version = format!("v{}", n + 2);
        let before = pool.counts();
        let deploy = deploy_in_background(&server.socket, deploy_cmd(&server, &version, 1));
        std::thread::sleep(Duration::from_millis(*delay_ms));
        let tree = server.remember_tree();
        server.signal(libc::SIGKILL);
        server
            .wait_exit(Duration::from_secs(5))
            .expect("the master dies of SIGKILL");
        let acked = deploy.join().expect("deploy thread").is_ok();
        // The old tree goes away (instances get SIGKILL 5 s after the launcher's SIGTERM).
        let gone = crate::common::poll(Duration::from_secs(8), Duration::from_millis(50), || {
            tree.iter().all(|p| !procfs::alive(*p)).then_some(())
        });
        assert!(gone.is_some(), "the killed master's tree outlived it");

        let (integrity, row) = check_state(&server.data_dir);
        assert_eq!(integrity, "ok", "integrity_check after the power cut");
        let row = row.expect("the app survives in the state");
        assert_consistent(&row);
        assert!(
            row.0 == current || row.0 == version,
            "state is {} after cutting {current} -> {version}",
            row.0
        );
        if acked {
            assert_eq!(row.0, version, "an acknowledged deploy is durable");
        }

        server.relaunch();
        server.wait_processes();
        let status = server.app_status(APP);
        let serving = serving_version(&server, Duration::from_secs(30));
        assert_eq!(
            serving, row.0,
            "the restarted server serves what the state says"
        );
        assert_eq!(
            status["version"].as_str().unwrap_or(""),
            row.0,
            "status after restart: {status}"
        );
        let after = pool.counts();
        report.push(format!(
            "kill -9 master {delay_ms} ms into deploy {current} -> {version}: deploy {}, \
             restarted on {} (integrity ok, serving it); pool during the round: {} ok, {} failed",
            if acked { "acknowledged" } else { "unanswered" },
            row.0,
            after.0 - before.0,
            after.1 - before.1
        ));
        current = row.0;
    }
    let (ok, failed) = pool.stop();
    let (integrity, _) = check_state(&server.data_dir);
    assert_eq!(integrity, "ok");
    eprintln!(
        "power cut:\n{}\npool total: {ok} ok, {failed} failed",
        report.join("\n")
    );
    assert!(ok > 50, "the pool made progress: {ok}");
}
