//! Cold starts of on-demand apps (docs/apps.md, "On-demand apps"): a worker holds a request
//! and asks for an instance; one start at a time per app.

use std::sync::Arc;

use tako_ipc::{MasterToWorker, WakeOutcome};

use crate::apps::registry::InstState;
use crate::master::Master;

impl Master {
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
}
