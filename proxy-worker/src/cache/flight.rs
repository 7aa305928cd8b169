//! Single-flight (docs/http.md, "Concurrent misses"): concurrent misses for one primary key in
//! this worker wait for the first one's fetch instead of all going upstream.
//!
//! A key whose last answer could not be stored is remembered for a short while (Varnish's
//! "hit-for-miss"): its misses go upstream side by side instead of queueing behind each other
//! for an answer that will not be shared. Without that, every uncacheable URL under load costs
//! each request a wait for another request's whole round trip (the same section).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// How long a follower waits for the leader's fetch.
pub const FOLLOWER_WAIT: Duration = Duration::from_secs(5);

/// How long a key stays known as uncacheable.
pub const UNCACHEABLE_MEMORY: Duration = Duration::from_secs(10);
/// Most keys remembered as uncacheable; past it, new ones are not remembered.
const MAX_UNCACHEABLE: usize = 4096;

#[derive(Default)]
pub struct Flights {
    map: Mutex<HashMap<String, (u64, watch::Receiver<bool>)>>,
    next_id: AtomicU64,
    /// Key → until when its misses do not collapse.
    uncacheable: Mutex<HashMap<String, Instant>>,
}

pub enum Join {
    /// Nobody fetches this key: go upstream holding the guard; followers wait for it.
    Leader(FlightGuard),
    /// Someone fetches it: wait with [`wait`].
    Follower(watch::Receiver<bool>),
    /// Nobody fetches it and this request may not lead.
    Alone,
}

impl Flights {
    pub fn join(self: &Arc<Self>, key: &str, may_lead: bool) -> Join {
        let mut map = match self.map.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some((_, rx)) = map.get(key) {
            if !*rx.borrow() {
                return Join::Follower(rx.clone());
            }
        }
        if !may_lead {
            return Join::Alone;
        }
        let (tx, rx) = watch::channel(false);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        map.insert(key.to_string(), (id, rx));
        Join::Leader(FlightGuard {
            flights: Arc::clone(self),
            key: key.to_string(),
            id,
            tx,
        })
    }

    /// Whether `key`'s last answer could not be stored, as of `now`.
    pub fn known_uncacheable(&self, key: &str, now: Instant) -> bool {
        let Ok(mut known) = self.uncacheable.lock() else {
            return false;
        };
        match known.get(key) {
            Some(until) if *until > now => true,
            Some(_) => {
                known.remove(key);
                false
            }
            None => false,
        }
    }

    /// The answer for `key` could not be stored.
    pub fn mark_uncacheable(&self, key: &str) {
        let Ok(mut known) = self.uncacheable.lock() else {
            return;
        };
        let now = Instant::now();
        if known.len() >= MAX_UNCACHEABLE && !known.contains_key(key) {
            known.retain(|_, until| *until > now);
            if known.len() >= MAX_UNCACHEABLE {
                return;
            }
        }
        known.insert(key.to_string(), now + UNCACHEABLE_MEMORY);
    }

    /// The answer for `key` is being stored: its misses collapse again.
    pub fn clear_uncacheable(&self, key: &str) {
        if let Ok(mut known) = self.uncacheable.lock() {
            if !known.is_empty() {
                known.remove(key);
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.lock().map_or(0, |m| m.len())
    }
}

/// Waits until the leader is done (stored, gave up, or failed), at most [`FOLLOWER_WAIT`].
/// `false` when the wait timed out.
pub async fn wait(rx: watch::Receiver<bool>) -> bool {
    wait_at_most(rx, FOLLOWER_WAIT).await
}

async fn wait_at_most(mut rx: watch::Receiver<bool>, limit: Duration) -> bool {
    // A dropped sender is a finished leader too: `wait_for` then errors, which is fine.
    tokio::time::timeout(limit, rx.wait_for(|done| *done))
        .await
        .is_ok()
}

/// Held by the leader until its fetch is over; releases the followers when dropped.
pub struct FlightGuard {
    flights: Arc<Flights>,
    key: String,
    id: u64,
    tx: watch::Sender<bool>,
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        if let Ok(mut map) = self.flights.map.lock() {
            if map.get(&self.key).is_some_and(|(id, _)| *id == self.id) {
                map.remove(&self.key);
            }
        }
        let _ = self.tx.send(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn followers_wake_when_the_leader_drops() {
        let f = Arc::new(Flights::default());
        let Join::Leader(guard) = f.join("k", true) else {
            panic!("first joins as leader")
        };
        let Join::Follower(rx) = f.join("k", true) else {
            panic!("second follows")
        };
        assert!(matches!(f.join("other", false), Join::Alone));
        let waiter = tokio::spawn(wait(rx));
        tokio::task::yield_now().await;
        drop(guard);
        assert!(waiter.await.unwrap());
        assert_eq!(f.len(), 0);
        assert!(matches!(f.join("k", true), Join::Leader(_)));
    }

    #[test]
    fn misses_of_a_key_known_uncacheable_do_not_collapse_until_it_is_stored() {
        let f = Arc::new(Flights::default());
        f.mark_uncacheable("k");
        assert!(f.known_uncacheable("k", Instant::now()));
        assert!(!f.known_uncacheable("other", Instant::now()));
        f.clear_uncacheable("k");
        assert!(!f.known_uncacheable("k", Instant::now()));
    }

    #[test]
    fn the_uncacheable_memory_is_bounded() {
        let f = Flights::default();
        for i in 0..MAX_UNCACHEABLE + 100 {
            f.mark_uncacheable(&format!("k{i}"));
        }
        assert_eq!(f.uncacheable.lock().unwrap().len(), MAX_UNCACHEABLE);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn followers_give_up_at_the_limit() {
        let f = Arc::new(Flights::default());
        let Join::Leader(_guard) = f.join("k", true) else {
            panic!("leader")
        };
        let Join::Follower(rx) = f.join("k", true) else {
            panic!("follower")
        };
        assert!(!wait_at_most(rx, Duration::from_millis(30)).await);
    }
}
