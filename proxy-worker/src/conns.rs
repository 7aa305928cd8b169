//! Open connections and tunnels of this worker, counted so that a drain knows when the last
//! one is gone.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

/// Counts open connections so shutdown knows when the last one is gone.
#[derive(Default)]
pub struct ConnTracker {
    active: AtomicUsize,
    idle: Notify,
}

pub struct ConnGuard(Arc<ConnTracker>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl ConnTracker {
    pub fn enter(self: &Arc<Self>) -> ConnGuard {
        self.active.fetch_add(1, Ordering::AcqRel);
        ConnGuard(Arc::clone(self))
    }

    pub fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    /// Returns once no connection is open.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.active() == 0 {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracker_counts_open_connections() {
        let t = Arc::new(ConnTracker::default());
        let a = t.enter();
        let b = t.enter();
        assert_eq!(t.active(), 2);
        drop(a);
        assert_eq!(t.active(), 1);
        drop(b);
        assert_eq!(t.active(), 0);
    }
}
