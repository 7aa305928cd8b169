//! Promotion: a ready instance is healthy once every worker routes to it (docs/architecture.md,
//! "The path of a deploy"), which a worker's table acknowledgement tells.

use std::time::Instant;

use crate::apps::registry::InstState;
use crate::master::Master;

impl Master {
    /// A worker came, went, became ready or acknowledged a table.
    pub fn on_workers_changed(&self) {
        self.promote_ready_instances();
        self.changed.notify_waiters();
        self.status_dirty.notify_one();
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
}
