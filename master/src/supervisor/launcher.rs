//! The app launcher: one process, supervised, spoken to by request and event.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tako_ipc::validate::{check_launcher_frame, ends_instance, KnownInstances};
use tako_ipc::{
    Channel, InstallResult, InstallSpec, LauncherConfig, LauncherToMaster, Limits,
    MasterToLauncher, Sender, IPC_VERSION,
};
use tokio::sync::oneshot;

use crate::core::Master;
use crate::role::ChildRole;
use crate::supervisor::spawn::{restart_delay, spawn_role};

#[derive(Debug, thiserror::Error)]
#[error("the app launcher is not running")]
pub struct LauncherGone;

#[derive(Default)]
struct LinkState {
    tx: Option<Sender<MasterToLauncher>>,
    pid: u32,
    generation: u32,
    started: Option<Instant>,
    ready: bool,
    pending: HashMap<u64, oneshot::Sender<InstallResult>>,
    /// Instances this launcher was told to start and has not reported ended: the only ones
    /// it may report on.
    live: HashSet<(String, u32)>,
}

impl KnownInstances for LinkState {
    fn instance_live(&self, app: &str, instance_id: u32) -> bool {
        self.live.contains(&(app.to_string(), instance_id))
    }

    fn install_pending(&self, request_id: u64) -> bool {
        self.pending.contains_key(&request_id)
    }
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
        let mut st = self.lock();
        let sent = match (&st.tx, st.ready) {
            // A failed queue ends the launcher's channel too; it is restarted.
            (Some(tx), true) => tx.send(&msg).map_err(|_| LauncherGone),
            _ => Err(LauncherGone),
        };
        if sent.is_ok() {
            if let MasterToLauncher::Spawn(spec) = &msg {
                st.live.insert((spec.app.clone(), spec.instance_id));
            }
        }
        sent
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
    let role = ChildRole::Launcher {
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
    let hello = MasterToLauncher::Hello {
        version: IPC_VERSION,
        config: LauncherConfig {
            app_user: master.users.as_ref().map(|u| u.app.clone()),
            log_owner: master.users.as_ref().map(|u| u.deploy.clone()),
        },
    };
    let opened =
        Channel::<LauncherToMaster, MasterToLauncher>::open(spawned.ipc, &hello, Limits::MASTER)
            .await;
    let mut channel = match opened {
        Ok((channel, LauncherToMaster::Hello { pid: said, .. })) if said == pid => channel,
        Ok(_) => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            return "its hello claims another pid".into();
        }
        Err(e) => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            return format!("no valid hello: {e}");
        }
    };
    // Before anything can be spawned: the uids the launcher may run apps as.
    if master.users.is_some() {
        let (first, last) = master.settings.app_uid_range;
        let _ = channel
            .sender()
            .send(&MasterToLauncher::AppIdRange { first, last });
    }
    {
        let link = &master.launcher;
        let mut st = link.lock();
        st.tx = Some(channel.sender());
        st.pid = pid;
        st.generation = generation;
        st.started = Some(Instant::now());
        st.ready = true;
        st.live.clear();
    }
    master.launcher.ready_notify.notify_waiters();
    tracing::info!("app launcher ready");

    let reason = read_loop(master, &mut channel).await;
    if let Some(r) = &reason {
        tracing::warn!(pid, reason = %r, "ending the app launcher");
    }
    {
        let mut st = master.launcher.lock();
        st.tx = None;
        st.ready = false;
        // Pending installs fail: their waiters see LauncherGone.
        st.pending.clear();
        st.live.clear();
    }
    drop(channel);
    let _ = child.start_kill();
    let status = child.wait().await;
    match (reason, status) {
        (Some(r), _) => r,
        (None, Ok(st)) => format!("exited: {st}"),
        (None, Err(e)) => e.to_string(),
    }
}

/// Why the launcher must end, or `None` at a clean EOF.
async fn read_loop(
    master: &Arc<Master>,
    channel: &mut Channel<LauncherToMaster, MasterToLauncher>,
) -> Option<String> {
    loop {
        let msg = match channel.recv().await {
            Ok(Some((msg, _))) => msg,
            Ok(None) => return None,
            Err(e) => return Some(e.to_string()),
        };
        {
            let mut st = master.launcher.lock();
            if let Err(v) = check_launcher_frame(&msg, &*st) {
                return Some(format!("invalid frame: {v}"));
            }
            if let LauncherToMaster::Instance {
                app,
                instance_id,
                event,
            } = &msg
            {
                if ends_instance(event) {
                    st.live.remove(&(app.clone(), *instance_id));
                }
            }
        }
        match msg {
            LauncherToMaster::Hello { .. } => {}
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
