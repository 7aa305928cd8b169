//! Instance lifecycle in the master: spawning, launcher events, promotion to healthy,
//! graceful stops, crash replacement and cold starts (docs/apps.md, "Ports" to "On-demand apps").

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tako_ipc::{
    ExitStatus, InstanceEvent, MasterToLauncher, MasterToWorker, SpawnSpec, WakeOutcome,
};
use tokio::sync::oneshot;

use crate::apps::env::build_env;
use crate::apps::error::StartError;
use crate::apps::registry::{Build, InstState, Instance};
use crate::master::Master;
use crate::ports::free_slot;

/// Drain wait for in-flight requests before SIGTERM.
pub const DRAIN_WAIT: Duration = Duration::from_secs(30);
/// SIGTERM to SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

pub fn signal_name(sig: i32) -> String {
    nix::sys::signal::Signal::try_from(sig)
        .map(|s| s.as_str().to_string())
        .unwrap_or_else(|_| sig.to_string())
}

/// `(exit code <n>)` or `(terminated by signal <SIG>)`.
pub fn describe_exit(status: ExitStatus) -> String {
    match status {
        ExitStatus::Code(n) => format!("(exit code {n})"),
        ExitStatus::Signal(s) => format!("(terminated by signal {})", signal_name(s)),
    }
}

/// Crash replacement delays ("Crashes and replacement" in docs/apps.md): 0 s, then 1, 2, 4,
/// … 32 s, then 60 s.
pub fn replacement_delay(consecutive_failures: u32) -> Duration {
    crate::backoff::after_failures(
        consecutive_failures,
        Duration::from_secs(1),
        Duration::from_secs(60),
    )
}

impl Master {
    /// Allocates a port and asks the launcher to start an instance of `build`. The receiver
    /// resolves once the instance is healthy (in every worker's rotation) or has failed.
    pub fn spawn_instance(
        &self,
        app: &str,
        build: Arc<Build>,
        replace_on_exit: bool,
    ) -> Result<(u32, oneshot::Receiver<Result<(), StartError>>), StartError> {
        // Every start re-opens the release through descriptors: a reload, a replacement or
        // a cold start after the deploy user swapped a directory for a symlink is refused.
        self.data
            .open_release(app, &build.path)
            .map_err(StartError::ReleaseRefused)?;
        let log_dir = self
            .data
            .prepare_app_logs(app, self.users.as_ref())
            .map_err(StartError::LogDir)?;
        let identity = self.app_identity(app).map_err(StartError::Identity)?;
        let (tx, rx) = oneshot::channel();
        let spec = {
            let mut reg = self.apps.lock();
            let a = reg
                .apps
                .get_mut(app)
                .ok_or_else(|| StartError::AppNotFound {
                    app: app.to_string(),
                })?;
            let held: HashSet<u16> = a.instances.values().map(|i| i.slot).collect();
            let (slot, port) = free_slot(
                a.config.base_port,
                self.settings.instance_port_offset,
                &held,
            )
            .ok_or_else(|| StartError::NoFreePort {
                app: app.to_string(),
            })?;
            let id = a.next_id;
            a.next_id += 1;
            let env = build_env(
                &build.env,
                &build.version,
                &identity.home,
                identity.cache.as_deref(),
                Some((port, id)),
            );
            let spec = SpawnSpec {
                app: app.to_string(),
                instance_id: id,
                version: build.version.clone(),
                argv: build.argv.clone(),
                cwd: build.path.clone(),
                env,
                port,
                log_dir: log_dir.display().to_string(),
                ids: identity.ids,
            };
            let now = Instant::now();
            a.instances.insert(
                id,
                Instance {
                    id,
                    build,
                    slot,
                    port,
                    pid: None,
                    state: InstState::Starting,
                    spawned: now,
                    ready_epoch: None,
                    healthy_since: None,
                    last_activity: now,
                    seen_requests: 0,
                    start_waiters: vec![tx],
                    exit_waiters: Vec::new(),
                    replace_on_exit,
                },
            );
            spec
        };
        let id = spec.instance_id;
        if self.launcher.send(MasterToLauncher::Spawn(spec)).is_err() {
            let mut reg = self.apps.lock();
            if let Some(a) = reg.apps.get_mut(app) {
                a.instances.remove(&id);
            }
            return Err(StartError::LauncherDown);
        }
        self.publish();
        Ok((id, rx))
    }

    pub fn on_instance_event(self: &Arc<Self>, app: &str, id: u32, event: InstanceEvent) {
        tracing::debug!(app, instance = id, ?event, "instance event");
        match event {
            InstanceEvent::Spawned { pid } => {
                let mut reg = self.apps.lock();
                if let Some(i) = reg.apps.get_mut(app).and_then(|a| a.instances.get_mut(&id)) {
                    i.pid = Some(pid);
                }
            }
            InstanceEvent::Ready => {
                {
                    let mut reg = self.apps.lock();
                    match reg.apps.get_mut(app).and_then(|a| a.instances.get_mut(&id)) {
                        Some(i) if i.state == InstState::Starting => i.state = InstState::Ready,
                        _ => return,
                    }
                }
                let epoch = self.publish();
                {
                    let mut reg = self.apps.lock();
                    if let Some(i) = reg.apps.get_mut(app).and_then(|a| a.instances.get_mut(&id)) {
                        i.ready_epoch = Some(epoch);
                    }
                }
                self.promote_ready_instances();
            }
            InstanceEvent::Unhealthy { reason } => {
                {
                    let mut reg = self.apps.lock();
                    let Some(a) = reg.apps.get_mut(app) else {
                        return;
                    };
                    let Some(i) = a.instances.get_mut(&id) else {
                        return;
                    };
                    if !i.state.serves() {
                        return;
                    }
                    i.state = InstState::Unhealthy;
                    i.healthy_since = None;
                    a.last_error = Some(format!("Instance {id} is unhealthy: {reason}"));
                }
                tracing::warn!(app, instance = id, reason = %reason, "instance unhealthy; out of rotation");
                self.publish();
            }
            InstanceEvent::Recovered => {
                {
                    let mut reg = self.apps.lock();
                    let Some(i) = reg.apps.get_mut(app).and_then(|a| a.instances.get_mut(&id))
                    else {
                        return;
                    };
                    if i.state != InstState::Unhealthy {
                        return;
                    }
                    i.state = InstState::Healthy;
                    i.healthy_since = Some(Instant::now());
                }
                tracing::info!(app, instance = id, "instance healthy again");
                self.publish();
            }
            InstanceEvent::Dead => {
                {
                    let mut reg = self.apps.lock();
                    let Some(a) = reg.apps.get_mut(app) else {
                        return;
                    };
                    a.last_error = Some(format!("Instance {id} marked dead"));
                }
                tracing::warn!(app, instance = id, "instance marked dead; replacing it");
                let me = self.clone();
                let app = app.to_string();
                tokio::spawn(async move { me.stop_instance(&app, id, false).await });
            }
            InstanceEvent::SpawnFailed { error } => {
                self.instance_gone(
                    app,
                    id,
                    Some(format!("Failed to spawn instance: {error}")),
                    None,
                );
            }
            InstanceEvent::StartupTimeout => {
                self.instance_gone(app, id, Some("Instance startup timeout".into()), None);
            }
            InstanceEvent::Exited {
                status,
                during_startup,
                output,
            } => {
                let startup_error = during_startup.then(|| {
                    let mut msg = format!(
                        "Health check failed: Process exited during startup {}",
                        describe_exit(status)
                    );
                    if !output.is_empty() {
                        msg.push_str(": ");
                        msg.push_str(&output);
                    }
                    msg
                });
                self.instance_gone(app, id, startup_error, Some(status));
            }
        }
    }

    /// An instance process is gone: free it, wake its waiters, and replace it if needed.
    fn instance_gone(
        self: &Arc<Self>,
        app: &str,
        id: u32,
        startup_error: Option<String>,
        status: Option<ExitStatus>,
    ) {
        let replace = {
            let mut reg = self.apps.lock();
            let Some(a) = reg.apps.get_mut(app) else {
                return;
            };
            let Some(inst) = a.instances.remove(&id) else {
                return;
            };
            for w in inst.exit_waiters {
                let _ = w.send(());
            }
            let stopping = matches!(inst.state, InstState::Draining | InstState::Stopped);
            let expected = (stopping && !inst.replace_on_exit) || self.is_shutting_down();
            if let Some(err) = &startup_error {
                for w in inst.start_waiters {
                    let _ = w.send(Err(StartError::Startup(err.clone())));
                }
                a.last_error = Some(err.clone());
                a.consecutive_failures += 1;
            } else {
                for w in inst.start_waiters {
                    let _ = w.send(Err(StartError::Exited));
                }
                if !expected {
                    // A dead instance that was stopped keeps its "marked dead" error.
                    if let Some(st) = status.filter(|_| !stopping) {
                        a.last_error = Some(format!(
                            "Instance {id} exited unexpectedly {}",
                            describe_exit(st)
                        ));
                        tracing::warn!(app, instance = id, status = %describe_exit(st), "instance exited unexpectedly");
                    }
                    a.consecutive_failures += 1;
                }
            }
            !expected
                && inst.replace_on_exit
                && a.visible
                && !a.config.stopped
                && !a.on_demand()
                && inst.build.version == a.config.version
        };
        self.publish();
        if replace && !self.is_shutting_down() {
            self.schedule_replacement(app);
        }
    }

    /// Keeps an always-on app at its count (docs/apps.md, "Crashes and replacement"), after the
    /// backoff delay of its consecutive failures.
    pub fn schedule_replacement(self: &Arc<Self>, app: &str) {
        self.schedule_replacement_after(app, None);
    }

    /// With `delay` None the backoff delay applies. A replacement that came up healthy
    /// checks for the next missing instance at once: the failure it answered has waited its
    /// delay already. Sleeping the backoff there would also swallow a crash of the new
    /// instance during that sleep, which then got replaced without any delay.
    fn schedule_replacement_after(self: &Arc<Self>, app: &str, delay: Option<Duration>) {
        let delay = {
            let mut reg = self.apps.lock();
            let Some(a) = reg.apps.get_mut(app) else {
                return;
            };
            if a.replacement_pending {
                return;
            }
            a.replacement_pending = true;
            delay.unwrap_or_else(|| replacement_delay(a.consecutive_failures))
        };
        let me = self.clone();
        let app = app.to_string();
        tokio::spawn(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let build = {
                let mut reg = me.apps.lock();
                let Some(a) = reg.apps.get_mut(&app) else {
                    return;
                };
                a.replacement_pending = false;
                let current = a
                    .instances
                    .values()
                    .filter(|i| {
                        i.build.version == a.config.version && i.state <= InstState::Unhealthy
                    })
                    .count();
                if me.is_shutting_down()
                    || !a.visible
                    || a.config.stopped
                    || a.on_demand()
                    || a.rollout
                    || current >= a.config.min_instances as usize
                {
                    return;
                }
                a.config.build()
            };
            match me.spawn_instance(&app, build, true) {
                Ok((_, rx)) => {
                    // Failures come back as events and schedule the next attempt; after a
                    // success, go on until the app is back at its count.
                    if let Ok(Ok(())) = rx.await {
                        me.schedule_replacement_after(&app, Some(Duration::ZERO));
                    }
                }
                Err(e) => {
                    {
                        let mut reg = me.apps.lock();
                        if let Some(a) = reg.apps.get_mut(&app) {
                            a.last_error = Some(e.to_string());
                            a.consecutive_failures += 1;
                        }
                    }
                    me.schedule_replacement(&app);
                }
            }
        });
    }

    /// Ready instances whose table epoch every worker applied become healthy.
    pub fn promote_ready_instances(&self) {
        let applied = self.workers.applied_epoch();
        let mut promoted = false;
        {
            let mut reg = self.apps.lock();
            for a in reg.apps.values_mut() {
                let mut any = false;
                for i in a.instances.values_mut() {
                    if i.state == InstState::Ready && i.ready_epoch.is_some_and(|e| e <= applied) {
                        i.state = InstState::Healthy;
                        let now = Instant::now();
                        i.healthy_since = Some(now);
                        i.last_activity = now;
                        for w in i.start_waiters.drain(..) {
                            let _ = w.send(Ok(()));
                        }
                        any = true;
                    }
                }
                if any {
                    a.last_error = None;
                    a.cold_start_failed = false;
                    promoted = true;
                }
            }
        }
        if promoted {
            self.status_dirty.notify_one();
            self.changed.notify_waiters();
        }
    }

    /// Marks instances with new or in-flight requests as active (idle scale-down input).
    pub fn record_activity(&self) {
        let totals = self.workers.lock().instance_totals();
        let now = Instant::now();
        let mut reg = self.apps.lock();
        for a in reg.apps.values_mut() {
            for i in a.instances.values_mut() {
                if let Some((total, in_flight)) = totals.get(&(a.name.clone(), i.id)) {
                    if *total != i.seen_requests || *in_flight > 0 {
                        i.seen_requests = *total;
                        i.last_activity = now;
                    }
                }
            }
        }
    }

    /// A worker came, went, became ready or acknowledged a table.
    pub fn on_workers_changed(&self) {
        self.promote_ready_instances();
        self.changed.notify_waiters();
        self.status_dirty.notify_one();
    }

    /// A worker reported its counters.
    pub fn on_counters(&self) {
        self.record_activity();
        self.changed.notify_waiters();
    }

    /// Graceful stop (docs/apps.md, "Stopping an instance"). With `drain`, waits for in-flight
    /// requests first.
    pub async fn stop_instance(self: &Arc<Self>, app: &str, id: u32, drain: bool) {
        let (exit_rx, was) = {
            let mut reg = self.apps.lock();
            let Some(i) = reg.apps.get_mut(app).and_then(|a| a.instances.get_mut(&id)) else {
                return;
            };
            let (tx, rx) = oneshot::channel();
            i.exit_waiters.push(tx);
            let was = i.state;
            if drain {
                i.replace_on_exit = false;
            }
            i.state = InstState::Draining;
            (rx, was)
        };
        let epoch = self.publish();
        if drain && was != InstState::Starting {
            // Each worker acknowledges the table without the instance with its requests in
            // flight there, counted from the moment they picked it, and reports at once when
            // the last one ends: an idle instance is released by the acknowledgements alone.
            let deadline = tokio::time::Instant::now() + DRAIN_WAIT;
            let started = Instant::now();
            let released = self
                .wait_until(deadline, |m| m.workers.released(app, id, epoch))
                .await;
            if released {
                tracing::debug!(
                    app,
                    instance = id,
                    epoch,
                    waited_ms = started.elapsed().as_millis() as u64,
                    "instance drained"
                );
            } else {
                tracing::warn!(
                    app,
                    instance = id,
                    epoch,
                    "requests still in flight after the drain wait; stopping the instance anyway"
                );
            }
        }
        {
            let mut reg = self.apps.lock();
            if let Some(i) = reg.apps.get_mut(app).and_then(|a| a.instances.get_mut(&id)) {
                i.state = InstState::Stopped;
            }
        }
        self.status_dirty.notify_one();
        let grace = STOP_GRACE;
        if self
            .launcher
            .send(MasterToLauncher::Stop {
                app: app.to_string(),
                instance_id: id,
                grace_ms: grace.as_millis() as u64,
            })
            .is_err()
        {
            self.instance_gone(app, id, None, None);
            return;
        }
        if tokio::time::timeout(grace + Duration::from_secs(5), exit_rx)
            .await
            .is_err()
        {
            tracing::warn!(
                app,
                instance = id,
                "instance did not exit after SIGKILL; forgetting it"
            );
            let _ = self.launcher.send(MasterToLauncher::Kill {
                app: app.to_string(),
                instance_id: id,
            });
            self.instance_gone(app, id, None, None);
        }
    }

    /// A worker asked for an on-demand app to be started.
    pub fn on_wake(self: &Arc<Self>, app: String) {
        let build = {
            // Check and claim under one lock: every worker may ask at once, and workers'
            // messages are handled concurrently; only one cold start may win.
            let mut reg = self.apps.lock();
            let Some(a) = reg.apps.get_mut(&app).filter(|a| a.visible) else {
                return;
            };
            if !a.on_demand()
                || a.config.stopped
                || a.waking
                || a.instances.values().any(|i| i.state <= InstState::Healthy)
            {
                return;
            }
            a.waking = true;
            a.config.build()
        };
        tracing::info!(app = %app, "cold start");
        let me = self.clone();
        tokio::spawn(async move {
            let failure = match me.spawn_instance(&app, build, false) {
                Ok((_, rx)) => match rx.await {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(e.to_string()),
                    Err(_) => Some("instance lost".to_string()),
                },
                Err(e) => Some(e.to_string()),
            };
            if let Some(a) = me.apps.lock().apps.get_mut(&app) {
                a.waking = false;
            }
            if let Some(e) = failure {
                {
                    let mut reg = me.apps.lock();
                    if let Some(a) = reg.apps.get_mut(&app) {
                        a.last_error = Some(format!("Cold start failed: {e}"));
                        a.cold_start_failed = true;
                    }
                }
                let table = me.workers.lock();
                table.broadcast(&MasterToWorker::WakeResult {
                    app: app.clone(),
                    outcome: WakeOutcome::Failed,
                });
            }
        });
    }

    /// The launcher died: its instances are orphans. Kill their process groups, forget
    /// them, and bring always-on apps back once a launcher is running again.
    pub fn on_launcher_lost(self: &Arc<Self>) {
        let lost: Vec<(String, u32, Option<u32>)> = {
            let reg = self.apps.lock();
            reg.apps
                .values()
                .flat_map(|a| {
                    a.instances
                        .values()
                        .map(move |i| (a.name.clone(), i.id, i.pid))
                })
                .collect()
        };
        if lost.is_empty() {
            return;
        }
        for (_, _, pid) in &lost {
            if let Some(pid) = pid {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(*pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        {
            let mut reg = self.apps.lock();
            for (app, id, _) in &lost {
                if let Some(a) = reg.apps.get_mut(app) {
                    a.last_error =
                        Some("Instance processes were restarted after a launcher failure".into());
                    if let Some(inst) = a.instances.remove(id) {
                        for w in inst.start_waiters {
                            let _ = w.send(Err(StartError::LauncherLost));
                        }
                        for w in inst.exit_waiters {
                            let _ = w.send(());
                        }
                    }
                }
            }
        }
        self.publish();
        reap_orphans(lost.iter().filter_map(|l| l.2).collect());
        if self.is_shutting_down() {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            if me.launcher.wait_ready(Duration::from_secs(120)).await {
                let names: Vec<String> = me.apps.lock().apps.keys().cloned().collect();
                for app in names {
                    me.schedule_replacement(&app);
                }
            }
        });
    }
}

/// Orphans re-parented to the master (it is a subreaper) must not stay zombies. Only the
/// given pids and re-parented processes outside our process group are killed and waited
/// for, so the runtime's own child handles keep their exit statuses.
fn reap_orphans(pids: Vec<u32>) {
    std::thread::spawn(move || {
        let me = std::process::id().to_string();
        let my_group = nix::unistd::getpgrp().as_raw().to_string();
        for _ in 0..50 {
            let mut candidates: Vec<i32> = pids.iter().map(|p| *p as i32).collect();
            if let Ok(dir) = std::fs::read_dir("/proc") {
                for e in dir.flatten() {
                    let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                        continue;
                    };
                    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                        continue;
                    };
                    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
                        continue;
                    };
                    let fields: Vec<&str> = rest.split_whitespace().collect();
                    // Our own roles (and a child between fork and exec) share our process
                    // group; instances run in sessions of their own.
                    let own_group = fields.get(2) == Some(&my_group.as_str());
                    if fields.get(1) == Some(&me.as_str()) && !own_group {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                        candidates.push(pid);
                    }
                }
            }
            for pid in candidates {
                let _ = nix::sys::wait::waitpid(
                    nix::unistd::Pid::from_raw(pid),
                    Some(nix::sys::wait::WaitPidFlag::WNOHANG),
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays() {
        let secs: Vec<u64> = (1..=10).map(|n| replacement_delay(n).as_secs()).collect();
        assert_eq!(secs, vec![0, 1, 2, 4, 8, 16, 32, 60, 60, 60]);
    }

    #[test]
    fn exit_texts() {
        assert_eq!(describe_exit(ExitStatus::Code(3)), "(exit code 3)");
        assert_eq!(
            describe_exit(ExitStatus::Signal(9)),
            "(terminated by signal SIGKILL)"
        );
    }
}
