//! Replacing instances that died (docs/apps.md, "Crashes and replacement"): after a backoff
//! that grows with consecutive failures, until the app has its instances again.

use std::sync::Arc;
use std::time::Duration;

use crate::apps::registry::InstState;
use crate::master::Master;

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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays() {
        let secs: Vec<u64> = (1..=10).map(|n| replacement_delay(n).as_secs()).collect();
        assert_eq!(secs, vec![0, 1, 2, 4, 8, 16, 32, 60, 60, 60]);
    }
}
