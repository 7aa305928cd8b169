//! The fake master and helpers shared by the integration tests.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tako_app_launcher::{run_with_limits, Limits};
use tako_ipc::frame::{decode_payload, encode_frame, parse_header};
use tako_ipc::{
    InstallResult, InstallSpec, InstanceEvent, LauncherConfig, LauncherToMaster, MasterToLauncher,
    SpawnSpec, IPC_VERSION,
};

/// A launcher reaps every child of the process (`waitpid(-1)`): two launchers at once
/// would steal each other's exit statuses, so tests take this lock.
pub static SERIAL: Mutex<()> = Mutex::new(());

pub const APP_PY: &str = include_str!("app.py");

pub struct Master {
    pub sock: UnixStream,
    pub rx: mpsc::Receiver<LauncherToMaster>,
    pub buffered: Vec<LauncherToMaster>,
    pub launcher: Option<JoinHandle<i32>>,
}

impl Master {
    /// Starts a launcher on a thread and exchanges hellos, with `prepare` run on the
    /// launcher's thread before `run` (capabilities are per thread, so a root test can
    /// restrict just that thread).
    pub fn start_with(
        limits: Limits,
        config: LauncherConfig,
        prepare: impl FnOnce() + Send + 'static,
    ) -> Master {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let launcher = std::thread::spawn(move || {
            prepare();
            run_with_limits(theirs, limits)
        });
        let mut reader = ours.try_clone().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || loop {
            let mut header = [0u8; 4];
            if reader.read_exact(&mut header).is_err() {
                return;
            }
            let len = parse_header(header).unwrap();
            let mut payload = vec![0u8; len];
            reader.read_exact(&mut payload).unwrap();
            let (fds, msg) = decode_payload::<LauncherToMaster>(&payload).unwrap();
            assert_eq!(fds, 0);
            if tx.send(msg).is_err() {
                return;
            }
        });
        let mut master = Master {
            sock: ours,
            rx,
            buffered: Vec::new(),
            launcher: Some(launcher),
        };
        master.send(MasterToLauncher::Hello {
            version: IPC_VERSION,
            config,
        });
        match master.next(Duration::from_secs(5)) {
            LauncherToMaster::Hello { version, pid } => {
                assert_eq!(version, IPC_VERSION);
                assert_eq!(pid, std::process::id());
            }
            other => panic!("expected hello, got {other:?}"),
        }
        master
    }

    pub fn send(&mut self, msg: MasterToLauncher) {
        self.sock
            .write_all(&encode_frame(&msg, 0).unwrap())
            .unwrap();
    }

    pub fn next(&mut self, timeout: Duration) -> LauncherToMaster {
        if !self.buffered.is_empty() {
            return self.buffered.remove(0);
        }
        self.rx
            .recv_timeout(timeout)
            .expect("no message from the launcher in time")
    }

    /// The first message matching `pick`, keeping the others in order.
    pub fn wait<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        pick: impl Fn(&LauncherToMaster) -> Option<T>,
    ) -> T {
        if let Some(pos) = self.buffered.iter().position(|m| pick(m).is_some()) {
            let msg = self.buffered.remove(pos);
            return pick(&msg).unwrap();
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let msg = self.rx.recv_timeout(left).unwrap_or_else(|_| {
                panic!(
                    "timed out waiting for {what}; buffered: {:?}",
                    self.buffered
                )
            });
            if let Some(v) = pick(&msg) {
                return v;
            }
            self.buffered.push(msg);
        }
    }

    /// The next event of one instance.
    pub fn event(&mut self, app: &str, id: u32, timeout: Duration) -> InstanceEvent {
        self.wait(&format!("an event of {app}/{id}"), timeout, |m| match m {
            LauncherToMaster::Instance {
                app: a,
                instance_id,
                event,
            } if a == app && *instance_id == id => Some(event.clone()),
            _ => None,
        })
    }

    pub fn install_done(&mut self, request_id: u64, timeout: Duration) -> InstallResult {
        self.wait(&format!("install {request_id}"), timeout, |m| match m {
            LauncherToMaster::InstallDone {
                request_id: r,
                result,
            } if *r == request_id => Some(result.clone()),
            _ => None,
        })
    }

    pub fn join(&mut self, timeout: Duration) -> i32 {
        let handle = self.launcher.take().unwrap();
        let deadline = Instant::now() + timeout;
        while !handle.is_finished() {
            assert!(Instant::now() < deadline, "launcher did not return in time");
            std::thread::sleep(Duration::from_millis(20));
        }
        handle.join().unwrap()
    }
}

pub struct World {
    pub dir: PathBuf,
    pub script: PathBuf,
    pub path: String,
}

/// The directory of the real python3 binary: `python3` on the test's PATH may be a wrapper
/// script (pyenv) that adds variables, and the env check must see only what was sent.
pub fn python_dir() -> String {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import os, sys; print(os.path.dirname(os.path.realpath(sys.executable)))",
        ])
        .output()
        .expect("python3 is needed for these tests");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

impl World {
    pub fn new(tag: &str) -> World {
        let dir =
            std::env::temp_dir().join(format!("tako-launcher-it-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join("app.py");
        std::fs::write(&script, APP_PY).unwrap();
        let path = format!("{}:/usr/local/bin:/usr/bin:/bin", python_dir());
        World { dir, script, path }
    }

    pub fn log_dir(&self, app: &str) -> PathBuf {
        self.dir.join("apps").join(app).join("shared/logs")
    }

    pub fn spec(&self, app: &str, id: u32, mode: &str, extra: &[(&str, &str)]) -> SpawnSpec {
        let port = free_port();
        let mut env = vec![
            ("PATH".to_string(), self.path.clone()),
            ("HOME".to_string(), self.dir.display().to_string()),
            ("LANG".to_string(), "C.UTF-8".to_string()),
            ("PORT".to_string(), port.to_string()),
            ("HOST".to_string(), "127.0.0.1".to_string()),
            ("TAKO_INSTANCE".to_string(), id.to_string()),
            ("TAKO_VERSION".to_string(), "v1".to_string()),
            ("MODE".to_string(), mode.to_string()),
        ];
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        SpawnSpec {
            app: app.to_string(),
            instance_id: id,
            version: "v1".to_string(),
            argv: vec!["python3".to_string(), self.script.display().to_string()],
            cwd: self.dir.display().to_string(),
            env,
            port,
            log_dir: self.log_dir(app).display().to_string(),
            ids: None,
        }
    }

    pub fn install(&self, request_id: u64, script: &str, timeout_ms: u64) -> InstallSpec {
        InstallSpec {
            request_id,
            app: format!("install{request_id}"),
            argv: vec!["sh".into(), "-c".into(), script.into()],
            cwd: self.dir.display().to_string(),
            env: vec![(
                "PATH".to_string(),
                "/usr/local/bin:/usr/bin:/bin".to_string(),
            )],
            log_dir: self
                .log_dir(&format!("install{request_id}"))
                .display()
                .to_string(),
            timeout_ms,
            ids: None,
        }
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn spawned_pid(ev: InstanceEvent) -> i32 {
    match ev {
        InstanceEvent::Spawned { pid } => pid as i32,
        other => panic!("expected Spawned, got {other:?}"),
    }
}

pub fn assert_ready(m: &mut Master, app: &str, id: u32) {
    let ev = m.event(app, id, Duration::from_secs(15));
    assert_eq!(ev, InstanceEvent::Ready, "{app}/{id}");
}

pub fn read_logs(dir: &Path) -> String {
    let mut all = String::new();
    for name in ["app.log.2", "app.log.1", "app.log"] {
        all.push_str(&std::fs::read_to_string(dir.join(name)).unwrap_or_default());
    }
    all
}

pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn test_limits() -> Limits {
    Limits {
        startup_timeout: Duration::from_secs(3),
        ..Limits::default()
    }
}
