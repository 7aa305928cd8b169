//! The link to the app launcher: the queue to it, the installs waiting for an answer, and
//! the instances it may report on. Behind its own lock; `crate::supervisor::launcher` runs
//! the process and feeds this link.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tako_ipc::validate::{check_launcher_frame, ends_instance, KnownInstances, Shown, Violation};
use tako_ipc::{
    InstallResult, InstallSpec, InstanceEvent, LauncherToMaster, MasterToLauncher, Sender,
};
use tokio::sync::oneshot;

use crate::spawned_pid::{self, Verdict};
use crate::sync::lock;

#[derive(Debug, thiserror::Error)]
#[error("the app launcher is not running")]
pub struct LauncherGone;

/// What to do with a launcher frame that broke no rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    Act,
    /// Nothing in it to keep.
    Skip,
}

#[derive(Default)]
struct LinkState {
    tx: Option<Sender<MasterToLauncher>>,
    pid: u32,
    generation: u32,
    started: Option<Instant>,
    ready: bool,
    pending: HashMap<u64, oneshot::Sender<InstallResult>>,
    /// Instances this launcher was told to start and has not reported ended: the only ones
    /// it may report on; with the uid each runs as.
    live: HashMap<(String, u32), u32>,
}

impl KnownInstances for LinkState {
    fn instance_live(&self, app: &str, instance_id: u32) -> bool {
        self.live.contains_key(&(app.to_string(), instance_id))
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
        lock(&self.state)
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
                // Without ids of its own the app runs as the launcher, which runs as we do.
                let uid = spec
                    .ids
                    .as_ref()
                    .map_or_else(|| nix::unistd::geteuid().as_raw(), |ids| ids.uid);
                st.live.insert((spec.app.clone(), spec.instance_id), uid);
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

    /// A new launcher process said hello: commands go to it from now on.
    pub fn connected(&self, tx: Sender<MasterToLauncher>, pid: u32, generation: u32) {
        {
            let mut st = self.lock();
            st.tx = Some(tx);
            st.pid = pid;
            st.generation = generation;
            st.started = Some(Instant::now());
            st.ready = true;
            st.live.clear();
        }
        self.ready_notify.notify_waiters();
    }

    /// The launcher is gone: pending installs fail (their waiters see [`LauncherGone`]).
    pub fn disconnected(&self) {
        let mut st = self.lock();
        st.tx = None;
        st.ready = false;
        st.pending.clear();
        st.live.clear();
    }

    /// Checks a frame of the launcher against what it was told, before anything of it is
    /// kept or acted on, and forgets an instance it reports ended. A `Spawned` pid must be
    /// the launcher's child running as the app ([`spawned_pid`]); one already gone is
    /// [`Frame::Skip`]ped, since the instance's exit follows.
    pub fn check_frame(&self, msg: &LauncherToMaster) -> Result<Frame, Violation> {
        let mut st = self.lock();
        check_launcher_frame(msg, &*st)?;
        let LauncherToMaster::Instance {
            app,
            instance_id,
            event,
        } = msg
        else {
            return Ok(Frame::Act);
        };
        if let InstanceEvent::Spawned { pid } = event {
            let uid = st.live.get(&(app.clone(), *instance_id)).copied();
            return match uid.map(|uid| spawned_pid::check(*pid, st.pid, uid)) {
                Some(Verdict::Ours) => Ok(Frame::Act),
                Some(Verdict::Gone) => Ok(Frame::Skip),
                Some(Verdict::Foreign(why)) => Err(Violation::ForeignPid {
                    app: Shown::new(app),
                    instance_id: *instance_id,
                    pid: *pid,
                    why,
                }),
                // `check_launcher_frame` refused instances that are not live.
                None => Ok(Frame::Skip),
            };
        }
        if ends_instance(event) {
            st.live.remove(&(app.clone(), *instance_id));
        }
        Ok(Frame::Act)
    }

    /// Hands an install's outcome to the command waiting for it.
    pub fn install_done(&self, request_id: u64, result: InstallResult) {
        if let Some(tx) = self.lock().pending.remove(&request_id) {
            let _ = tx.send(result);
        }
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
