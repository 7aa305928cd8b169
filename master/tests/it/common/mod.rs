//! Harness for the black-box tests: starts the real `tako-server` binary on free ports in
//! a temporary data dir, talks to it over its management socket and over HTTP(S), and
//! makes sure nothing it started outlives the test.

pub mod certs;
pub mod fixture;
pub mod hijack;
pub mod http;
pub mod mgmt;
pub mod procfs;
pub mod users;

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub use http::{Request, Response};
pub use mgmt::Mgmt;

pub const BIN: &str = env!("CARGO_BIN_EXE_tako-server");
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Graceful shutdown drains for up to 30 s; an idle test server should need far less.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(45);

/// Polls `f` every 20 ms until it returns Some, or panics naming `what` after `timeout`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    match poll(timeout, Duration::from_millis(20), &mut f) {
        Some(v) => v,
        None => panic!("timed out after {timeout:?} waiting for {what}"),
    }
}

/// Polls `f` until it returns Some or `timeout` passes.
pub fn poll<T>(
    timeout: Duration,
    interval: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(interval);
    }
}

/// Two distinct free TCP ports on 127.0.0.1, both held until both are chosen.
pub fn free_ports() -> (u16, u16) {
    let a = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    let b = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    let pa = a.local_addr().expect("local addr").port();
    let pb = b.local_addr().expect("local addr").port();
    (pa, pb)
}

/// How many instance port offsets there are: multiples of 64 in 0-22464, so every instance
/// port stays below 32768, out of the kernel's ephemeral range where client sockets would
/// take slots at random.
const PORT_SLOTS: u32 = 352;

/// A per-process instance port offset (a multiple of 64), never the one of another test
/// process running at the same time: tests run in parallel, one process each, and two
/// servers with the same offset give their apps the same ports (the second app's bind
/// fails). A slot is taken by locking its file under the temp dir; the lock lives as long as
/// the process. Slots are tried from one picked by the pid, 7 apart, so that a test that
/// deploys several apps (a block of ports each) does not reach into its neighbour's.
pub fn instance_port_offset() -> u32 {
    static SLOT: std::sync::OnceLock<(u32, Option<fs::File>)> = std::sync::OnceLock::new();
    SLOT.get_or_init(|| {
        let dir = std::env::temp_dir().join("tako-it-port-slots");
        let _ = fs::create_dir_all(&dir);
        let start = std::process::id() * 7;
        for i in 0..PORT_SLOTS {
            let slot = (start + i * 7) % PORT_SLOTS;
            let Ok(file) = fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(dir.join(slot.to_string()))
            else {
                continue;
            };
            use std::os::fd::AsRawFd;
            // SAFETY: flock on a descriptor we own; no memory is involved.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return (slot * 64, Some(file));
            }
        }
        // Every slot taken (hundreds of test processes at once): share by pid, as before.
        ((start % PORT_SLOTS) * 64, None)
    })
    .0
}

static DIR_COUNTER: AtomicU32 = AtomicU32::new(0);
static RANGE_COUNTER: AtomicU32 = AtomicU32::new(0);

/// Uids for one server's apps (`--app-uid-range`), none shared with another server: the
/// server ends every process of an app's uid on stop, delete and shutdown, so two test
/// servers must never give apps the same uid. Test processes run at the same time have
/// different pids; the counter tells apart the servers of one test.
pub fn app_uid_range() -> (u32, u32) {
    let n = RANGE_COUNTER.fetch_add(1, Ordering::Relaxed) % 4;
    let first = 1_000_000 + std::process::id() * 64 + n * 16;
    (first, first + 15)
}

/// A fresh directory under /tmp named after the running test, mode 0755 so the app user
/// can reach the releases below it.
pub fn temp_dir() -> PathBuf {
    let name: String = std::thread::current()
        .name()
        .unwrap_or("test")
        .rsplit("::")
        .next()
        .unwrap_or("test")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(32)
        .collect();
    let n = DIR_COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = PathBuf::from(format!("/tmp/tako-it-{name}-{}-{n}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("create the test directory");
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod test dir");
    dir
}

pub fn kill(pid: i32, sig: i32) -> bool {
    // SAFETY: kill(2) has no memory effects; a stale pid at worst gets ESRCH.
    unsafe { libc::kill(pid, sig) == 0 }
}

/// How the exit looked: the code, or 128 + signal like a shell.
pub fn exit_code(st: ExitStatus) -> i32 {
    st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(0))
}

#[derive(Debug, Clone)]
pub struct ServerOpts {
    pub workers: u32,
    /// Extra flags after the harness's own.
    pub args: Vec<String>,
    /// Run the server as this user (the harness must be root), privilege separation off.
    pub run_as: Option<String>,
    /// Extra environment for the server process.
    pub env: Vec<(String, String)>,
    /// Use this socket path instead of `<data-dir>/tako.sock`.
    pub socket: Option<PathBuf>,
    /// Use these ports instead of fresh free ones.
    pub ports: Option<(u16, u16)>,
    /// Self-signed certificates written to `<data-dir>/certs/<name>/` before start.
    pub certs: Vec<String>,
    /// Leave ACME on (the harness passes `--no-acme` otherwise); the ACME tests point it
    /// at Pebble with their own flags.
    pub acme: bool,
}

impl Default for ServerOpts {
    fn default() -> Self {
        ServerOpts {
            workers: 2,
            args: Vec::new(),
            run_as: None,
            env: Vec::new(),
            socket: None,
            ports: None,
            certs: Vec::new(),
            acme: false,
        }
    }
}

impl ServerOpts {
    pub fn arg(mut self, a: &str) -> Self {
        self.args.push(a.to_string());
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.to_string(), v.to_string()));
        self
    }

    /// Installs a `default` certificate (served without SNI) and one for
    /// `*.example.com`, the domain of the test routes.
    pub fn test_certs(mut self) -> Self {
        self.certs.push("default".into());
        self.certs.push("*.example.com".into());
        self
    }

    /// As root: run as the deploy user `tako`. Otherwise: as the invoking user. Either
    /// way privilege separation is off.
    pub fn unprivileged(mut self) -> Self {
        if users::is_root() {
            self.run_as = Some(users::DEPLOY_USER.to_string());
        }
        self
    }
}

/// One running `tako-server` and everything it owns on disk.
pub struct Server {
    child: Option<Child>,
    pub pid: i32,
    pub data_dir: PathBuf,
    pub socket: PathBuf,
    pub http_port: u16,
    pub tls_port: u16,
    pub offset: u32,
    /// `--app-uid-range` of this server, inclusive.
    pub app_uid_range: (u32, u32),
    pub stderr_path: PathBuf,
    pub opts: ServerOpts,
    /// uid and gid the server process runs as.
    pub run_ids: (u32, u32),
    /// Every pid ever seen in the tree: killed at drop if still there.
    seen: std::sync::Mutex<Vec<i32>>,
    /// Exit statuses of previous runs (restarts), for the failure report.
    pub history: Vec<String>,
}

impl Server {
    /// Starts a server with default options and waits until its socket answers `hello`.
    pub fn start_default() -> Server {
        Server::start(ServerOpts::default())
    }

    /// Starts a server and waits until the socket answers `hello` and the launcher and
    /// every worker run, like the `Ready` log line.
    pub fn start(opts: ServerOpts) -> Server {
        let s = Server::spawn(opts);
        s.wait_ready();
        s.wait_processes();
        s
    }

    /// Starts a server and returns as soon as the socket answers `hello`.
    pub fn start_socket_only(opts: ServerOpts) -> Server {
        let s = Server::spawn(opts);
        s.wait_ready();
        s
    }

    /// Starts the process without waiting for anything.
    pub fn spawn(opts: ServerOpts) -> Server {
        if users::is_root() {
            users::require_default_users();
        }
        let data_dir = temp_dir();
        let socket = opts
            .socket
            .clone()
            .unwrap_or_else(|| data_dir.join("tako.sock"));
        let (http_port, tls_port) = opts.ports.unwrap_or_else(free_ports);
        let run_ids = match &opts.run_as {
            Some(name) => {
                let u = users::user(name);
                fixture::chown(&data_dir, (u.uid, u.gid));
                (u.uid, u.gid)
            }
            None => (
                nix::unistd::getuid().as_raw(),
                nix::unistd::getgid().as_raw(),
            ),
        };
        if !opts.certs.is_empty() {
            certs::install(&data_dir, &opts.certs, run_ids);
        }
        let mut s = Server {
            child: None,
            pid: 0,
            stderr_path: data_dir.join("server.stderr"),
            data_dir,
            socket,
            http_port,
            tls_port,
            offset: instance_port_offset(),
            app_uid_range: app_uid_range(),
            opts,
            run_ids,
            seen: std::sync::Mutex::new(Vec::new()),
            history: Vec::new(),
        };
        s.launch();
        s
    }

    /// The flags the harness passes, before `opts.args`.
    pub fn base_args(&self) -> Vec<String> {
        let mut a: Vec<String> = vec![
            "--socket".into(),
            self.socket.display().to_string(),
            "--port".into(),
            self.http_port.to_string(),
            "--tls-port".into(),
            self.tls_port.to_string(),
            "--listen".into(),
            "127.0.0.1".into(),
            "--data-dir".into(),
            self.data_dir.display().to_string(),
            "--workers".into(),
            self.opts.workers.to_string(),
        ];
        if !self.opts.acme {
            a.push("--no-acme".into());
        }
        a.extend(["--instance-port-offset".into(), self.offset.to_string()]);
        let (first, last) = self.app_uid_range;
        a.extend(["--app-uid-range".into(), format!("{first}-{last}")]);
        a.extend(self.opts.args.iter().cloned());
        a
    }

    fn launch(&mut self) {
        let stderr = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.stderr_path)
            .expect("open the stderr capture file");
        let mut cmd = Command::new(BIN);
        cmd.args(self.base_args())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .env("RUST_LOG", "info")
            .process_group(0);
        for (k, v) in &self.opts.env {
            cmd.env(k, v);
        }
        if let Some(name) = &self.opts.run_as {
            users::require_root("running the server as another user");
            let u = users::user(name);
            cmd.uid(u.uid)
                .gid(u.gid)
                .env("HOME", &u.home)
                .env("USER", &u.name);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {BIN}: {e}"));
        self.pid = child.id() as i32;
        self.child = Some(child);
    }

    /// Waits until the socket answers `hello`, bounded by [`READY_TIMEOUT`].
    pub fn wait_ready(&self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let last;
            if let Some(st) = self.peek_exit() {
                panic!(
                    "tako-server exited before it was ready ({st}); stderr:\n{}",
                    self.stderr_text()
                );
            }
            match Mgmt::connect(&self.socket) {
                Ok(mut m) => match m.raw(br#"{"command":"hello","protocol_version":3}"#) {
                    Ok(line) if line.contains(r#""status":"ok""#) => return,
                    Ok(line) => last = format!("hello answered {line}"),
                    Err(e) => last = format!("hello failed: {e}"),
                },
                Err(e) => last = format!("connect {}: {e}", self.socket.display()),
            }
            if Instant::now() >= deadline {
                panic!(
                    "tako-server did not answer hello within {READY_TIMEOUT:?} (last: {last}); stderr:\n{}",
                    self.stderr_text()
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Waits until the internal status page answers over plain HTTP (any status).
    pub fn wait_http_ready(&self) -> Response {
        wait_for(READY_TIMEOUT, "the HTTP listener to answer /status", || {
            self.internal_status().ok()
        })
    }

    /// Waits until every worker and the launcher are up, as the `processes` command
    /// reports them, and returns the list.
    pub fn wait_processes(&self) -> Vec<Value> {
        let want = self.opts.workers as usize;
        let procs = wait_for(READY_TIMEOUT, "all workers and the launcher to run", || {
            let list = self.processes();
            let workers = list
                .iter()
                .filter(|p| p["role"] == "worker" && p["state"] == "active")
                .count();
            let launcher = list.iter().any(|p| p["role"] == "launcher");
            (workers == want && launcher).then_some(list)
        });
        self.remember_tree();
        procs
    }

    /// The `processes` command's list (empty when the command fails).
    pub fn processes(&self) -> Vec<Value> {
        let Ok(mut m) = Mgmt::connect(&self.socket) else {
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

    /// Pids of the processes of that role, from the `processes` command.
    pub fn pids_of(&self, role: &str) -> Vec<i32> {
        self.processes()
            .iter()
            .filter(|p| p["role"] == role)
            .filter_map(|p| p["pid"].as_i64())
            .map(|p| p as i32)
            .collect()
    }

    pub fn mgmt(&self) -> Mgmt {
        Mgmt::connect(&self.socket)
            .unwrap_or_else(|e| panic!("connect to {}: {e}", self.socket.display()))
    }

    pub fn request(&self, cmd: &Value) -> Value {
        self.mgmt().request(cmd)
    }

    pub fn ok(&self, cmd: &Value) -> Value {
        self.mgmt().ok(cmd)
    }

    pub fn err(&self, cmd: &Value) -> String {
        self.mgmt().err(cmd)
    }

    /// `GET /status` with `Host: tako.internal` over plain HTTP.
    pub fn internal_status(&self) -> io::Result<Response> {
        http::http(self.http_port, &Request::get("tako.internal", "/status"))
    }

    /// A request to an app over plain HTTP, marked as forwarded from HTTPS by a trusted
    /// (loopback) peer so that it is routed instead of redirected.
    pub fn app_get(&self, host: &str, path: &str) -> io::Result<Response> {
        http::http(
            self.http_port,
            &Request::get(host, path).header("X-Forwarded-Proto", "https"),
        )
    }

    /// A request over HTTPS with SNI = `host`.
    pub fn tls_get(&self, host: &str, path: &str) -> io::Result<Response> {
        http::https(self.tls_port, Some(host), &Request::get(host, path))
    }

    /// A request over HTTPS without SNI (the `default` certificate answers).
    pub fn tls_get_no_sni(&self, host: &str, path: &str) -> io::Result<Response> {
        http::https(self.tls_port, None, &Request::get(host, path))
    }

    /// Owner of uploaded releases: the deploy user when the server is root, else the user
    /// the server runs as.
    pub fn deploy_owner(&self) -> (u32, u32) {
        if self.run_ids.0 == 0 {
            let u = users::user(users::DEPLOY_USER);
            (u.uid, u.gid)
        } else {
            self.run_ids
        }
    }

    /// Writes a release of the fixture app and returns its path.
    pub fn release(&self, app: &str, version: &str) -> PathBuf {
        fixture::write_release(&self.data_dir, app, version, self.deploy_owner())
    }

    /// A directory for knob files (FAIL_STATUS_FILE, STARTUP_DELAY_FILE) that the app
    /// user can reach.
    pub fn knob_dir(&self) -> PathBuf {
        let d = self.data_dir.join("knobs");
        fs::create_dir_all(&d).expect("create the knob directory");
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).expect("chmod knobs");
        d
    }

    /// The deploy command for the fixture app (the release is written first).
    pub fn deploy_cmd(
        &self,
        app: &str,
        version: &str,
        routes: &[&str],
        instances: u32,
        env: &[(&str, &str)],
    ) -> Value {
        let path = self.release(app, version);
        let env: serde_json::Map<String, Value> = env
            .iter()
            .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
            .collect();
        json!({
            "command": "deploy", "app": app, "version": version,
            "path": path.display().to_string(), "routes": routes, "env": env,
            "instances": instances, "idle_timeout": 300
        })
    }

    /// Deploys the fixture app and returns the success data.
    pub fn deploy(
        &self,
        app: &str,
        version: &str,
        routes: &[&str],
        instances: u32,
        env: &[(&str, &str)],
    ) -> Value {
        let cmd = self.deploy_cmd(app, version, routes, instances, env);
        self.ok(&cmd)
    }

    /// The `status` data of an app.
    pub fn app_status(&self, app: &str) -> Value {
        self.ok(&json!({"command":"status","app":app}))
    }

    /// Pids and states of the app's instances from `status`.
    pub fn instances(&self, app: &str) -> Vec<(i64, Option<i32>, String)> {
        self.app_status(app)["instances"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|i| {
                (
                    i["id"].as_i64().unwrap_or(-1),
                    i["pid"].as_i64().map(|p| p as i32),
                    i["state"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }

    /// Pids of healthy instances.
    pub fn healthy_pids(&self, app: &str) -> Vec<i32> {
        self.instances(app)
            .into_iter()
            .filter(|(_, _, st)| st == "healthy")
            .filter_map(|(_, pid, _)| pid)
            .collect()
    }

    pub fn stderr_text(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Records every current descendant, so it can be killed at drop.
    pub fn remember_tree(&self) -> Vec<i32> {
        let tree = procfs::descendants(self.pid);
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        for p in &tree {
            if !seen.contains(p) {
                seen.push(*p);
            }
        }
        tree
    }

    pub fn signal(&self, sig: i32) {
        assert!(kill(self.pid, sig), "cannot signal the master {}", self.pid);
    }

    /// The exit status if the master has exited (it is reaped then).
    pub fn peek_exit(&self) -> Option<String> {
        // try_wait needs &mut; use waitid with WNOWAIT to look without reaping.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid writes into `info`, which outlives the call.
        let rc = unsafe {
            libc::waitid(
                libc::P_PID,
                self.pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            )
        };
        // SAFETY: si_pid is valid for SIGCHLD-style siginfo filled by waitid.
        if rc == 0 && unsafe { info.si_pid() } == self.pid {
            // SAFETY: as above.
            let status = unsafe { info.si_status() };
            Some(format!("code {} status {status}", info.si_code))
        } else if rc != 0 {
            Some("already reaped".into())
        } else {
            None
        }
    }

    /// Waits for the master to exit, at most `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + timeout;
        loop {
            match child.try_wait() {
                Ok(Some(st)) => {
                    self.history.push(format!("pid {} exited: {st}", self.pid));
                    return Some(st);
                }
                Ok(None) => {}
                Err(e) => panic!("waiting for tako-server: {e}"),
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM and wait: the graceful shutdown. Panics if it does not end in time.
    pub fn stop(&mut self) -> ExitStatus {
        self.remember_tree();
        self.signal(libc::SIGTERM);
        match self.wait_exit(STOP_TIMEOUT) {
            Some(st) => st,
            None => panic!(
                "tako-server did not exit within {STOP_TIMEOUT:?} of SIGTERM; stderr:\n{}",
                self.stderr_text()
            ),
        }
    }

    /// Graceful stop (exit code 0 required), then a new master on the same data dir,
    /// socket and ports. Waits for the socket.
    pub fn restart(&mut self) {
        let st = self.stop();
        assert_eq!(
            exit_code(st),
            0,
            "SIGTERM should end with exit code 0; stderr:\n{}",
            self.stderr_text()
        );
        self.child = None;
        self.launch();
        self.wait_ready();
    }

    /// After the master died (say of SIGKILL, reaped by [`Server::wait_exit`]): a new master
    /// on the same data dir, socket and ports. Waits for the socket.
    pub fn relaunch(&mut self) {
        self.child = None;
        self.launch();
        self.wait_ready();
    }

    /// Kills whatever is left of the tree: the master (SIGTERM first, then SIGKILL of its
    /// process group), every pid seen in the tree, and any process working in the data dir.
    /// Stops the server (SIGTERM, then SIGKILL) and kills anything of its tree that is left.
    /// Returns the leftovers of a graceful stop: processes still alive after the server
    /// exited on SIGTERM (empty when the test had already stopped or killed it).
    fn kill_everything(&mut self) -> Vec<i32> {
        let running = self
            .child
            .as_mut()
            .map(|c| matches!(c.try_wait(), Ok(None)))
            .unwrap_or(false);
        let mut graceful = false;
        if running {
            self.remember_tree();
            kill(self.pid, libc::SIGTERM);
            graceful = self.wait_exit(Duration::from_secs(20)).is_some();
            if !graceful {
                kill(-self.pid, libc::SIGKILL);
                kill(self.pid, libc::SIGKILL);
                let _ = self.wait_exit(Duration::from_secs(5));
            }
        }
        let dir = self.data_dir.display().to_string();
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut left: Vec<i32> = seen
            .iter()
            .copied()
            .filter(|p| procfs::alive(*p))
            // Only what is still ours: a recycled pid must not be hit.
            .filter(|p| {
                procfs::cmdline(*p)
                    .iter()
                    .any(|a| a.contains("tako-server"))
                    || procfs::processes_touching(&dir).contains(p)
            })
            .collect();
        left.extend(procfs::processes_touching(&dir));
        left.sort_unstable();
        left.dedup();
        let my_pgid = nix::unistd::getpgrp().as_raw();
        for p in &left {
            if let Some((_, _, pgid)) = procfs::stat(*p) {
                if pgid == *p && pgid != my_pgid {
                    kill(-pgid, libc::SIGKILL);
                }
            }
            kill(*p, libc::SIGKILL);
        }
        if !left.is_empty() {
            eprintln!("harness: killed leftover processes {left:?}");
        }
        if graceful {
            left
        } else {
            Vec::new()
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let failed = std::thread::panicking();
        let leftovers = self.kill_everything();
        // Hygiene after every test that did not fail already: a graceful stop leaves no
        // process behind, and no role ever panicked.
        let hygiene = if failed {
            None
        } else {
            let text = self.stderr_text();
            let panics: Vec<&str> = text.lines().filter(|l| l.contains("panicked at")).collect();
            if !panics.is_empty() {
                Some(format!(
                    "tako-server logged a panic:\n{}",
                    panics.join("\n")
                ))
            } else if !leftovers.is_empty() {
                Some(format!("processes outlived a graceful stop: {leftovers:?}"))
            } else {
                None
            }
        };
        if failed || hygiene.is_some() {
            let text = self.stderr_text();
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(300);
            eprintln!(
                "---- tako-server stderr ({} lines, last {} shown; data dir kept at {}) ----",
                lines.len(),
                lines.len() - from,
                self.data_dir.display()
            );
            for l in &lines[from..] {
                eprintln!("{l}");
            }
            for h in &self.history {
                eprintln!("{h}");
            }
            eprintln!("---- end of tako-server stderr ----");
            if let Some(problem) = hygiene {
                panic!("hygiene check failed: {problem}");
            }
        } else {
            let _ = fs::remove_dir_all(&self.data_dir);
        }
    }
}

/// Runs `tako-server ctl --socket <server's socket> <args>` with `stdin` as its input and
/// `env` added to its environment, and waits for it.
/// An upgrade candidate of `server` as the Tako CLI starts it (docs/operations.md,
/// "Upgrade"): the primary's data dir and ports, its own socket, instance ports shifted, and
/// none of the primary's other flags (it takes them over from the state).
pub fn candidate_command(server: &Server, socket: &Path) -> std::process::Command {
    let mut cmd = std::process::Command::new(BIN);
    cmd.args([
        "--socket",
        &socket.display().to_string(),
        "--data-dir",
        &server.data_dir.display().to_string(),
        "--port",
        &server.http_port.to_string(),
        "--tls-port",
        &server.tls_port.to_string(),
        "--instance-port-offset",
        "10000",
        "--no-acme",
    ]);
    cmd
}

pub fn ctl(server: &Server, args: &[&str], stdin: &str, env: &[(&str, &str)]) -> Outcome {
    let mut child = Command::new(BIN)
        .arg("ctl")
        .arg("--socket")
        .arg(&server.socket)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tako-server ctl");
    if let Some(mut input) = child.stdin.take() {
        input
            .write_all(stdin.as_bytes())
            .expect("write ctl's stdin");
    }
    let out = child.wait_with_output().expect("wait for ctl");
    Outcome {
        code: crate::common::exit_code(out.status),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// What a run of the binary that is expected to exit produced.
#[derive(Debug)]
pub struct Outcome {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `tako-server <args>` and waits for it to exit on its own (at most `timeout`; then
/// its process group is killed and the test fails). Runs in a scratch dir.
pub fn run_to_exit(args: &[&str], timeout: Duration) -> Outcome {
    let dir = temp_dir();
    let out_path = dir.join("stdout");
    let err_path = dir.join("stderr");
    let mut child = Command::new(BIN)
        .args(args)
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out_path).expect("create stdout file"))
        .stderr(fs::File::create(&err_path).expect("create stderr file"))
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {BIN}: {e}"));
    let pid = child.id() as i32;
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Ok(Some(st)) = child.try_wait() {
            break Some(st);
        }
        if Instant::now() >= deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let tree = procfs::descendants(pid);
    kill(-pid, libc::SIGKILL);
    for p in tree {
        kill(p, libc::SIGKILL);
    }
    let _ = child.wait();
    let stdout = fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = fs::read_to_string(&err_path).unwrap_or_default();
    let _ = fs::remove_dir_all(&dir);
    let Some(status) = status else {
        panic!(
            "tako-server {args:?} did not exit within {timeout:?}; stdout:\n{stdout}\nstderr:\n{stderr}"
        );
    };
    Outcome {
        code: exit_code(status),
        stdout,
        stderr,
    }
}

/// Path helper: the app log directory (docs/apps.md, "App logs").
pub fn app_log_dir(data_dir: &Path, app: &str) -> PathBuf {
    data_dir.join("apps").join(app).join("shared").join("logs")
}
