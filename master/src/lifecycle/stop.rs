//! Stopping an instance gracefully (docs/apps.md, "Stopping an instance"): out of rotation,
//! drained of in-flight requests, then SIGTERM and SIGKILL after a grace period.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tako_ipc::MasterToLauncher;
use tokio::sync::oneshot;

use crate::apps::registry::InstState;
use crate::master::Master;

/// Drain wait for in-flight requests before SIGTERM.
pub const DRAIN_WAIT: Duration = Duration::from_secs(30);
/// SIGTERM to SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

impl Master {
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
}
