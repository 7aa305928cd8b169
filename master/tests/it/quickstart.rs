//! The README's quickstart ("Run it" and "Deploy an app"), run as written: the commands are
//! read from the README's `sh` blocks, so the test and the README cannot drift apart.
//!
//! What the test changes, and only that: `cargo run -p tako-server --` is the binary under
//! test; `/tmp/tako-dev`, 8080 and 8443 become a fresh directory and free ports (tests run
//! in parallel); the server command gets the harness's `--app-uid-range`,
//! `--instance-port-offset` and `--workers 2`, so that it shares app uids and instance ports
//! with no other test server. Every command must exit 0, and a `# prints: TEXT` line after a
//! command must appear in what it printed. The server command runs in the background; the
//! next command waits until it answers (a person waits for its `Ready` line).
//!
//! Run as root, the quickstart runs twice: as root (privilege separation on) and as the
//! deploy user `tako` (a normal user); as another user, once as that user.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{users, Mgmt, BIN, READY_TIMEOUT, STOP_TIMEOUT};

const CARGO_RUN: &str = "cargo run -p tako-server --";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("master/ has a parent")
        .to_path_buf()
}

/// One command of the README and what it must print.
#[derive(Debug)]
struct Step {
    line: String,
    prints: Vec<String>,
}

/// The commands of the `sh` blocks between "## Run it" and the next top-level section.
fn quickstart_steps() -> Vec<Step> {
    let readme = std::fs::read_to_string(workspace().join("README.md")).expect("read README.md");
    let (_, rest) = readme
        .split_once("## Run it")
        .expect("README.md has a '## Run it' section");
    let section = rest.split("\n## ").next().unwrap_or(rest);
    let mut steps: Vec<Step> = Vec::new();
    let mut in_block = false;
    let mut pending = String::new();
    for raw in section.lines() {
        let line = raw.trim_end();
        if line.starts_with("```") {
            in_block = !in_block && line == "```sh";
            continue;
        }
        if !in_block {
            continue;
        }
        if let Some(text) = line.trim_start().strip_prefix("# prints: ") {
            steps
                .last_mut()
                .expect("a '# prints:' line follows a command")
                .prints
                .push(text.to_string());
            continue;
        }
        if line.trim_start().starts_with('#') || line.trim().is_empty() {
            continue;
        }
        if let Some(head) = line.strip_suffix('\\') {
            pending.push_str(head);
            continue;
        }
        pending.push_str(line);
        steps.push(Step {
            line: std::mem::take(&mut pending),
            prints: Vec::new(),
        });
    }
    assert!(
        steps.len() >= 6,
        "the quickstart has its commands: {steps:?}"
    );
    steps
}

/// Who runs the quickstart: the invoking user, or (as root) `tako`.
#[derive(Clone)]
struct RunAs {
    ids: Option<(u32, u32)>,
    home: String,
}

impl RunAs {
    fn apply(&self, cmd: &mut Command) {
        if let Some((uid, gid)) = self.ids {
            cmd.uid(uid).gid(gid).env("HOME", &self.home);
        }
    }
}

/// The background server, stopped with SIGTERM (graceful) at the end of the test.
struct ServerProc {
    child: Child,
    stderr: PathBuf,
}

impl ServerProc {
    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let pid = self.child.id() as i32;
        crate::common::kill(pid, libc::SIGTERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        crate::common::kill(-pid, libc::SIGKILL);
        let _ = self.child.wait();
    }
}

/// Waits until the server answers `hello` and its workers and launcher run.
fn wait_ready(server: &mut ServerProc, socket: &Path) {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Ok(Some(st)) = server.child.try_wait() {
            panic!(
                "the quickstart's server exited ({st}); stderr:\n{}",
                server.stderr()
            );
        }
        let ready = Mgmt::connect(socket)
            .and_then(|mut m| m.raw(br#"{"command":"processes"}"#))
            .map(|line| {
                let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                let procs = v["data"]["processes"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                let workers = procs
                    .iter()
                    .filter(|p| p["role"] == "worker" && p["state"] == "active")
                    .count();
                workers == 2 && procs.iter().any(|p| p["role"] == "launcher")
            })
            .unwrap_or(false);
        if ready {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the quickstart's server was not ready within {READY_TIMEOUT:?}; stderr:\n{}",
            server.stderr()
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn run_quickstart(who: RunAs) {
    let dir = crate::common::temp_dir();
    if let Some(ids) = who.ids {
        crate::common::fixture::chown(&dir, ids);
    }
    let data_dir = dir.join("tako-dev");
    let socket = data_dir.join("tako.sock");
    let (http_port, tls_port) = crate::common::free_ports();
    let (first_uid, last_uid) = crate::common::app_uid_range();
    let substitute = |line: &str| {
        line.replace("/tmp/tako-dev", &data_dir.display().to_string())
            .replace("8080", &http_port.to_string())
            .replace("8443", &tls_port.to_string())
    };
    let mut server: Option<ServerProc> = None;
    for step in quickstart_steps() {
        let line = substitute(&step.line);
        let mut cmd;
        if let Some(args) = line.strip_prefix(CARGO_RUN) {
            let args: Vec<&str> = args.split_whitespace().collect();
            cmd = Command::new(BIN);
            cmd.args(&args);
            if args.first() != Some(&"ctl") {
                assert!(server.is_none(), "one server command: {line}");
                cmd.args(["--app-uid-range", &format!("{first_uid}-{last_uid}")])
                    .args([
                        "--instance-port-offset",
                        &crate::common::instance_port_offset().to_string(),
                    ])
                    .args(["--workers", "2"]);
                let stderr = dir.join("server.stderr");
                cmd.current_dir(workspace())
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(std::fs::File::create(&stderr).expect("server stderr file"))
                    .process_group(0);
                who.apply(&mut cmd);
                let child = cmd.spawn().unwrap_or_else(|e| panic!("start {line}: {e}"));
                let mut s = ServerProc { child, stderr };
                wait_ready(&mut s, &socket);
                server = Some(s);
                continue;
            }
        } else {
            cmd = Command::new("sh");
            cmd.args(["-c", &line]);
        }
        cmd.current_dir(workspace()).stdin(Stdio::null());
        who.apply(&mut cmd);
        let out = cmd.output().unwrap_or_else(|e| panic!("run {line}: {e}"));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let context = || {
            format!(
                "quickstart command `{}` (run as `{line}`)\nstdout:\n{stdout}\nstderr:\n{stderr}\nserver stderr:\n{}",
                step.line,
                server.as_ref().map(ServerProc::stderr).unwrap_or_default()
            )
        };
        assert!(out.status.success(), "failed: {}", context());
        for want in &step.prints {
            assert!(
                stdout.contains(want.as_str()),
                "does not print {want:?}: {}",
                context()
            );
        }
    }
    assert!(server.is_some(), "the quickstart starts a server");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn quickstart_as_root() {
    if !users::is_root() {
        println!("SKIPPED: the root variant of the quickstart needs root; the normal-user one ran");
        return;
    }
    users::require_default_users();
    run_quickstart(RunAs {
        ids: None,
        home: String::new(),
    });
}

#[test]
fn quickstart_as_a_normal_user() {
    if !users::is_root() {
        run_quickstart(RunAs {
            ids: None,
            home: String::new(),
        });
        return;
    }
    let u = users::user(users::DEPLOY_USER);
    run_quickstart(RunAs {
        ids: Some((u.uid, u.gid)),
        home: u.home.clone(),
    });
}
