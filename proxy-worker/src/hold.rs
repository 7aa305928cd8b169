//! Held requests (docs/http.md, "Choosing an instance"): a request for an app with no healthy
//! instance waits for a table that has one, for a failed start, or for the 30 s limit.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use arc_swap::ArcSwap;
use tako_ipc::WakeOutcome;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::table::{AppEntry, Table};

pub const HOLD_TIMEOUT: Duration = Duration::from_secs(30);
/// Held requests per app in this worker beyond which new ones are refused.
pub const MAX_HELD_PER_APP: usize = 100;

#[derive(Default)]
struct AppHold {
    held: usize,
    /// A `Wake` was sent and no `WakeResult` came back yet.
    wake_pending: bool,
    /// Failed starts seen so far; a held request fails when this moves.
    failures: u64,
}

/// How a hold ended.
pub enum HoldOutcome {
    Ready(Arc<AppEntry>),
    Failed,
    TimedOut,
    Full,
    Stopped,
    /// The app left the table while the request waited.
    Gone,
}

pub struct Holds {
    apps: Mutex<HashMap<String, AppHold>>,
    /// Bumped on every table swap and wake result: held requests look again.
    changes: watch::Sender<u64>,
}

impl Default for Holds {
    fn default() -> Self {
        Self {
            apps: Mutex::new(HashMap::new()),
            changes: watch::Sender::new(0),
        }
    }
}

impl Holds {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, AppHold>> {
        match self.apps.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Something changed: held requests re-check.
    pub fn notify(&self) {
        self.changes.send_modify(|v| *v = v.wrapping_add(1));
    }

    pub fn wake_result(&self, app: &str, outcome: WakeOutcome) {
        {
            let mut apps = self.lock();
            let h = apps.entry(app.to_string()).or_default();
            h.wake_pending = false;
            if outcome == WakeOutcome::Failed {
                h.failures += 1;
            }
        }
        self.notify();
    }

    fn enter<'a>(&'a self, app: &str) -> Option<HoldGuard<'a>> {
        let mut apps = self.lock();
        let h = apps.entry(app.to_string()).or_default();
        if h.held >= MAX_HELD_PER_APP {
            return None;
        }
        h.held += 1;
        Some(HoldGuard {
            holds: self,
            app: app.to_string(),
        })
    }

    fn failures(&self, app: &str) -> u64 {
        self.lock().get(app).map_or(0, |h| h.failures)
    }

    /// True when the caller should send `Wake` (none is pending).
    fn claim_wake(&self, app: &str) -> bool {
        let mut apps = self.lock();
        let h = apps.entry(app.to_string()).or_default();
        !std::mem::replace(&mut h.wake_pending, true)
    }
}

struct HoldGuard<'a> {
    holds: &'a Holds,
    app: String,
}

impl Drop for HoldGuard<'_> {
    fn drop(&mut self) {
        let mut apps = self.holds.lock();
        if let Some(h) = apps.get_mut(&self.app) {
            h.held = h.held.saturating_sub(1);
            // Nobody waits any more: a lost wake answer must not block the next cold start.
            if h.held == 0 {
                h.wake_pending = false;
            }
        }
    }
}

/// Waits until the app has a backend in `table`, calling `wake` when the app sleeps on
/// demand and no wake is pending. Dropping the future (the client went away) leaves the
/// queue.
pub async fn hold(
    holds: &Holds,
    table: &ArcSwap<Table>,
    app: &str,
    wake: impl Fn(),
) -> HoldOutcome {
    let Some(_guard) = holds.enter(app) else {
        return HoldOutcome::Full;
    };
    let failures = holds.failures(app);
    let mut rx = holds.changes.subscribe();
    let deadline = Instant::now() + HOLD_TIMEOUT;
    loop {
        rx.borrow_and_update();
        let current = table.load_full();
        let Some(entry) = current.app(app).cloned() else {
            return HoldOutcome::Gone;
        };
        if entry.stopped {
            return HoldOutcome::Stopped;
        }
        if !entry.backends.is_empty() {
            return HoldOutcome::Ready(entry);
        }
        if holds.failures(app) != failures {
            return HoldOutcome::Failed;
        }
        if !entry.starting {
            if !entry.on_demand {
                // The instance this request waited for stopped starting without becoming
                // healthy.
                return HoldOutcome::Failed;
            }
            if holds.claim_wake(app) {
                tracing::info!(app, "Waking on-demand app");
                wake();
            }
        }
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => continue,
            Ok(Err(_)) | Err(_) => return HoldOutcome::TimedOut,
        }
    }
}
