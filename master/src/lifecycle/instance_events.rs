//! What the launcher reports about an instance (docs/apps.md, "Crashes and replacement"):
//! started, healthy, unhealthy, exited; and the words an exit is described with.

use std::sync::Arc;
use std::time::Instant;

use tako_ipc::{ExitStatus, InstanceEvent};

use crate::apps::error::StartError;
use crate::apps::registry::InstState;
use crate::master::Master;

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

impl Master {
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
    pub(super) fn instance_gone(
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_texts() {
        assert_eq!(describe_exit(ExitStatus::Code(3)), "(exit code 3)");
        assert_eq!(
            describe_exit(ExitStatus::Signal(9)),
            "(terminated by signal SIGKILL)"
        );
    }
}
