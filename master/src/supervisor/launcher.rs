//! The app launcher: one process, supervised, spoken to by request and event.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tako_ipc::{
    FrameReader, FrameWriter, InstallResult, InstallSpec, LauncherConfig, LauncherToMaster,
    MasterToLauncher, IPC_VERSION,
};
use tokio::sync::{mpsc, oneshot};

use crate::core::Master;
use crate::role::Role;
use crate::supervisor::next_frame;
use crate::supervisor::spawn::{restart_delay, spawn_role};

#[derive(Debug, thiserror::Error)]
#[error("the app launcher is not running")]
pub struct LauncherGone;

#[derive(Default)]
struct LinkState {
    tx: Option<mpsc::UnboundedSender<MasterToLauncher>>,
    pid: u32,
    generation: u32,
    started: Option<Instant>,
    ready: bool,
    pending: HashMap<u64, oneshot::Sender<InstallResult>>,
}

#[derive(Default)]
pub struct LauncherLink {
    state: Mutex<LinkState>,
    next_request: AtomicU64,
    ready_notify: tokio::sync::Notify,
}

pub struct LauncherInfo {
    pub pid: u32,
    pub generation: u32,
    pub uptime: Duration,
    pub ready: bool,
}

impl LauncherLink {
    fn lock(&self) -> std::sync::MutexGuard<'_, LinkState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn send(&self, msg: MasterToLauncher) -> Result<(), LauncherGone> {
        let st = self.lock();
        match (&st.tx, st.ready) {
            (Some(tx), true) => tx.send(msg).map_err(|_| LauncherGone),
            _ => Err(LauncherGone),
        }
    }

    pub fn info(&self) -> Option<LauncherInfo> {
        let st = self.lock();
        st.started.map(|s| LauncherInfo {
            pid: st.pid,
            generation: st.generation,
            uptime: s.elapsed(),
            ready: st.ready,
        })
    }

    /// Runs an install step in the launcher and waits for its outcome.
    pub async fn install(&self, mut spec: InstallSpec) -> Result<InstallResult, LauncherGone> {
        let id = self.next_request.fetch_add(1, Ordering::Relaxed) + 1;
        spec.request_id = id;
        let (tx, rx) = oneshot::channel();
        self.lock().pending.insert(id, tx);
        if self.send(MasterToLauncher::Install(spec)).is_err() {
            self.lock().pending.remove(&id);
            return Err(LauncherGone);
        }
        rx.await.map_err(|_| LauncherGone)
    }

    /// Waits until a launcher is connected, up to `limit`.
    pub async fn wait_ready(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.ready_notify.notified();
            if self.lock().ready {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.lock().ready;
            }
        }
    }
}

/// Keeps one launcher running until shutdown.
pub fn supervise(master: Arc<Master>) {
    tokio::spawn(async move {
        let mut failures = 0u32;
        let mut generation = 0u32;
        loop {
            generation += 1;
            let started = Instant::now();
            let reason = run_one(&master, generation).await;
            master.on_launcher_lost();
            if master.is_shutting_down() {
                break;
            }
            failures = if started.elapsed() > Duration::from_secs(30) {
                1
            } else {
                failures + 1
            };
            let delay = restart_delay(failures);
            tracing::warn!(reason = %reason, delay_ms = delay.as_millis() as u64, "app launcher died; restarting it");
            tokio::time::sleep(delay).await;
            if master.is_shutting_down() {
                break;
            }
        }
    });
}

async fn run_one(master: &Arc<Master>, generation: u32) -> String {
    let role = Role::Launcher {
        generation,
        master_pid: std::process::id() as i32,
        restrict: master.users.is_some(),
    };
    let spawned = match spawn_role(&role) {
        Ok(s) => s,
        Err(e) => return format!("cannot start: {e}"),
    };
    let pid = spawned.pid;
    let mut child = spawned.child;
    let (rd, wr) = spawned.ipc.into_split();
    let mut reader = FrameReader::<LauncherToMaster>::new(rd);
    let mut writer = FrameWriter::<MasterToLauncher>::new(wr);
    let (tx, mut rx) = mpsc::unbounded_channel::<MasterToLauncher>();
    let writer_task = tokio::spawn(async move {
        while let Some(msg) = rx.recv().await {
            if writer.send(&msg).await.is_err() {
                break;
            }
        }
    });
    let config = LauncherConfig {
        app_user: master.users.as_ref().map(|u| u.app.clone()),
        log_owner: master.users.as_ref().map(|u| u.deploy.clone()),
    };
    let _ = tx.send(MasterToLauncher::Hello {
        version: IPC_VERSION,
        config,
    });
    {
        let link = &master.launcher;
        let mut st = link.lock();
        st.tx = Some(tx);
        st.pid = pid;
        st.generation = generation;
        st.started = Some(Instant::now());
        st.ready = false;
    }

    let reason = read_loop(master, &mut reader).await;
    {
        let mut st = master.launcher.lock();
        st.tx = None;
        st.ready = false;
        // Pending installs fail: their waiters see LauncherGone.
        st.pending.clear();
    }
    writer_task.abort();
    let _ = child.start_kill();
    let status = child.wait().await;
    match (reason, status) {
        (Some(r), _) => r,
        (None, Ok(st)) => format!("exited: {st}"),
        (None, Err(e)) => e.to_string(),
    }
}

async fn read_loop(
    master: &Arc<Master>,
    reader: &mut FrameReader<LauncherToMaster>,
) -> Option<String> {
    let mut greeted = false;
    loop {
        let msg = match next_frame(
            reader.recv().await,
            greeted,
            LauncherToMaster::is_hello,
            "launcher",
        ) {
            Ok(Some(msg)) => msg,
            Ok(None) => return None,
            Err(e) => return Some(e),
        };
        match msg {
            LauncherToMaster::Hello { version, .. } => {
                if version != IPC_VERSION {
                    return Some(format!(
                        "IPC version mismatch: launcher={version} master={IPC_VERSION}"
                    ));
                }
                greeted = true;
                master.launcher.lock().ready = true;
                master.launcher.ready_notify.notify_waiters();
                tracing::info!("app launcher ready");
            }
            LauncherToMaster::Instance {
                app,
                instance_id,
                event,
            } => master.on_instance_event(&app, instance_id, event),
            LauncherToMaster::InstallDone { request_id, result } => {
                if let Some(tx) = master.launcher.lock().pending.remove(&request_id) {
                    let _ = tx.send(result);
                }
            }
        }
    }
}
