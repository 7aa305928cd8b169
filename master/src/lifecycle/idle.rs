//! Activity and the once-a-second housekeeping: which instances saw requests (from the
//! workers' counters), idle scale-down of on-demand apps (docs/apps.md,
//! "On-demand apps") and resetting the crash counter after 60 s of health ("Crashes and
//! replacement").

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::apps::registry::InstState;
use crate::master::Master;

impl Master {
    /// A worker reported its counters.
    pub fn on_counters(&self) {
        self.record_activity();
        self.changed.notify_waiters();
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
}

pub fn spawn(master: Arc<Master>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if master.is_shutting_down() {
                return;
            }
            master.record_activity();
            for (app, id) in idle_victims(&master) {
                tracing::info!(app = %app, instance = id, "idle; scaling down");
                let m = master.clone();
                tokio::spawn(async move { m.stop_instance(&app, id, true).await });
            }
        }
    });
}

fn idle_victims(master: &Master) -> Vec<(String, u32)> {
    let totals = master.workers.lock().instance_totals();
    let now = Instant::now();
    let mut out = Vec::new();
    let mut reg = master.apps.lock();
    for a in reg.apps.values_mut() {
        if a.instances.values().any(|i| {
            i.healthy_since
                .is_some_and(|t| now.duration_since(t) >= Duration::from_secs(60))
        }) {
            a.consecutive_failures = 0;
        }
        if a.rollout || !a.visible {
            continue;
        }
        let timeout = Duration::from_secs(a.config.idle_timeout_secs as u64);
        let mut healthy = a
            .instances
            .values()
            .filter(|i| i.state == InstState::Healthy)
            .count();
        let mut idle: Vec<(Instant, u32)> = a
            .instances
            .values()
            .filter(|i| i.state == InstState::Healthy)
            .filter(|i| {
                totals
                    .get(&(a.name.clone(), i.id))
                    .map(|t| t.1)
                    .unwrap_or(0)
                    == 0
            })
            .filter(|i| now.duration_since(i.last_activity) > timeout || (timeout.is_zero()))
            .map(|i| (i.last_activity, i.id))
            .collect();
        idle.sort();
        for (_, id) in idle {
            if healthy <= a.config.min_instances as usize {
                break;
            }
            healthy -= 1;
            out.push((a.name.clone(), id));
        }
    }
    out
}
