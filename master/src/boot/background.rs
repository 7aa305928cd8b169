//! The master's periodic tasks: the certificate check and the status-page pusher.

use std::sync::Arc;
use std::time::Duration;

use crate::master::Master;

/// The certificate check (docs/tls.md, "The certificate check"): 60 s after start, then every
/// renewal interval, (re)generate missing or expired self-signed certificates of private route
/// hosts and queue the ACME orders that are due. A candidate leaves certificates to the primary.
pub(super) fn spawn_certificate_check(master: Arc<Master>) {
    if !master.is_primary() {
        return;
    }
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(60)).await;
        let period = Duration::from_secs(u64::from(master.settings.renewal_interval_hours) * 3600);
        loop {
            if master.is_shutting_down() {
                return;
            }
            let routes: Vec<String> = {
                let reg = master.apps.lock();
                reg.apps
                    .values()
                    .filter(|a| a.visible)
                    .flat_map(|a| a.config.routes.clone())
                    .collect()
            };
            let _ = master.ensure_certificates(&routes);
            crate::acme::queue_routes(&master, &routes);
            tokio::time::sleep(period).await;
        }
    });
}

pub(super) fn spawn_status_pusher(master: Arc<Master>) {
    tokio::spawn(async move {
        loop {
            master.push_status();
            tokio::select! {
                _ = master.status_dirty.notified() => {
                    // Coalesce bursts of changes into one push.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            if master.is_shutting_down() {
                return;
            }
        }
    });
}
