//! The app launcher: one process, supervised, spoken to by request and event.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tako_ipc::{Channel, LauncherConfig, LauncherToMaster, Limits, MasterToLauncher, IPC_VERSION};

use crate::launcher_link::Frame;
use crate::master::Master;
use crate::role::ChildRole;
use crate::supervisor::spawn::{restart_delay, spawn_role};

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
    master.launcher.connected(channel.sender(), pid, generation);
    tracing::info!("app launcher ready");

    let reason = read_loop(master, &mut channel).await;
    if let Some(r) = &reason {
        tracing::warn!(pid, reason = %r, "ending the app launcher");
    }
    master.launcher.disconnected();
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
        match master.launcher.check_frame(&msg) {
            Ok(Frame::Act) => {}
            Ok(Frame::Skip) => continue,
            Err(v) => return Some(format!("invalid frame: {v}")),
        }
        match msg {
            LauncherToMaster::Hello { .. } => {}
            LauncherToMaster::Instance {
                app,
                instance_id,
                event,
            } => master.on_instance_event(&app, instance_id, event),
            LauncherToMaster::InstallDone { request_id, result } => {
                master.launcher.install_done(request_id, result)
            }
        }
    }
}
