//! The certificate service's record of ACME work (docs/tls.md, "ACME", "Status"): the
//! queue of names to order, the one running, failures with their retries, and the challenge
//! answers. The order runner (`crate::acme`) drives it; status and workers read it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};

use tokio::sync::futures::Notified;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::sync::lock;

/// The master's ACME state. Failure texts live in memory only (docs/tls.md, "Status").
#[derive(Default)]
pub struct AcmeProgress {
    state: Mutex<AcmeState>,
    /// Wakes the order runner: something was queued.
    wake: Notify,
}

#[derive(Default)]
pub struct AcmeState {
    pub account_ready: bool,
    pub account_error: Option<String>,
    /// Names waiting for an order, in request order.
    pub queue: VecDeque<String>,
    pub running: Option<String>,
    pub failures: HashMap<String, Failure>,
    /// token -> key authorization, of every running order.
    pub tokens: BTreeMap<String, String>,
}

pub struct Failure {
    pub error: String,
    /// Failed orders in a row.
    pub attempts: usize,
    /// The next scheduled retry; `None` once they are used up (the check retries then).
    pub retry_at: Option<Instant>,
}

impl AcmeProgress {
    /// The complete set of challenge answers, for a worker that starts.
    pub fn tokens(&self) -> Vec<(String, String)> {
        lock(&self.state)
            .tokens
            .iter()
            .map(|(t, k)| (t.clone(), k.clone()))
            .collect()
    }

    /// The status of a name ACME is working on: `("pending", error)` while an order is
    /// queued or running, `("failed", error)` after a failure; `None` when ACME has nothing
    /// to say about it.
    pub fn view(&self, host: &str) -> Option<(&'static str, Option<String>)> {
        let st = lock(&self.state);
        let failure = st.failures.get(host).map(|f| f.error.clone());
        if st.queue.iter().any(|h| h == host) || st.running.as_deref() == Some(host) {
            return Some(("pending", failure.or_else(|| st.account_error.clone())));
        }
        failure.map(|e| ("failed", Some(e)))
    }

    /// The progress itself, under its lock: the order runner's queue, failures and answers.
    pub fn state(&self) -> MutexGuard<'_, AcmeState> {
        lock(&self.state)
    }

    /// Wakes the order runner: something was queued.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Resolves at the next [`Self::wake`].
    pub fn woken(&self) -> Notified<'_> {
        self.wake.notified()
    }

    /// Why the account is not ready, while it is not.
    pub fn account_error(&self) -> Option<String> {
        let st = lock(&self.state);
        if st.account_ready {
            None
        } else {
            st.account_error.clone()
        }
    }
}
