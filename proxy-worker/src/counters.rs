//! Per-instance request counters, reported to the master at most once a second, and the
//! in-flight counts a table acknowledgement carries for the instances it removed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::fast_hash::FastMap;
use tako_ipc::{
    AppHttpStats, AppUpstreamErrors, EdgeStats, InstanceCounters, RemovedInstance, DURATION_BUCKETS,
};
use tokio::sync::Notify;

/// One instance's counts: atomics, so a request updates them without the map's lock. A
/// route table holds the slot of each instance it routes to, so a request finds it without
/// any lookup.
#[derive(Default)]
pub struct Slot {
    requests_total: AtomicU64,
    in_flight: AtomicU32,
    /// The newest table no longer routes here. With `in_flight` this is the pair the drain
    /// handshake orders (see [`Counters::claim`] and [`Counters::retire`]).
    removed: AtomicBool,
}

/// Totals since this worker started, keyed by (app, instance id), plus request counts and
/// durations per app for `/metrics`.
#[derive(Default)]
pub struct Counters {
    /// app → instance id → counters: keyed by app first so a table build looks an app up
    /// by `&str` and allocates only the first time it sees one.
    map: Mutex<FastMap<String, FastMap<u32, Arc<Slot>>>>,
    dirty: AtomicBool,
    /// Wakes the report loop when the last request to a removed instance ends: the master
    /// is waiting for that zero to stop the instance.
    pub drained: Notify,
    /// Held while a report or an acknowledgement reads counts and queues its frame, so the
    /// master receives them in the order they were read: a report read before an
    /// acknowledgement never arrives after it with an older count.
    report_order: Mutex<()>,
    http: Mutex<FastMap<String, AppHttpStats>>,
    http_dirty: AtomicBool,
    tls_ok: AtomicU64,
    tls_failed: AtomicU64,
    upstream_errors: Mutex<HashMap<String, AppUpstreamErrors>>,
    /// Per-client limit refusals, in [`ClientRefusal`] order.
    client: [AtomicU64; 4],
    edge_dirty: AtomicBool,
}

/// What a per-client limit did, as `/metrics` counts it (docs/limits.md, "Per-client limits").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientRefusal {
    Connection = 0,
    Requests = 1,
    Rate = 2,
    TableFull = 3,
}

/// Why a request to an instance failed, as `/metrics` labels it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    Connect,
    Timeout,
    Failed,
}

impl Counters {
    /// Records one finished request. `status` 0 (no response written) is not counted.
    pub fn record_request(&self, app: &str, status: u16, secs: f64) {
        let class = match status {
            100..=599 => usize::from(status / 100 - 1),
            _ => return,
        };
        if let Ok(mut map) = self.http.lock() {
            if !map.contains_key(app) {
                let fresh = AppHttpStats {
                    app: app.to_string(),
                    ..Default::default()
                };
                map.insert(app.to_string(), fresh);
            }
            let Some(e) = map.get_mut(app) else { return };
            e.classes[class] += 1;
            let bucket = DURATION_BUCKETS
                .iter()
                .position(|b| secs <= *b)
                .unwrap_or(DURATION_BUCKETS.len());
            e.buckets[bucket] += 1;
            e.duration_sum_secs += secs;
            self.http_dirty.store(true, Ordering::Release);
        }
    }

    /// Every app's request stats when anything changed since the last call.
    pub fn take_http_if_dirty(&self) -> Option<Vec<AppHttpStats>> {
        if !self.http_dirty.swap(false, Ordering::AcqRel) {
            return None;
        }
        let map = self.http.lock().ok()?;
        Some(map.values().cloned().collect())
    }

    /// Records the outcome of one TLS handshake (a timeout is a failure).
    pub fn record_handshake(&self, ok: bool) {
        let c = if ok { &self.tls_ok } else { &self.tls_failed };
        c.fetch_add(1, Ordering::Relaxed);
        self.edge_dirty.store(true, Ordering::Release);
    }

    /// Records one refusal (or table miss) of the per-client limits.
    pub fn record_client(&self, what: ClientRefusal) {
        self.client[what as usize].fetch_add(1, Ordering::Relaxed);
        self.edge_dirty.store(true, Ordering::Release);
    }

    /// Records one failed attempt to get a response from an instance of `app`.
    pub fn record_upstream_error(&self, app: &str, kind: UpstreamErrorKind) {
        if let Ok(mut map) = self.upstream_errors.lock() {
            let e = map
                .entry(app.to_string())
                .or_insert_with(|| AppUpstreamErrors {
                    app: app.to_string(),
                    ..Default::default()
                });
            match kind {
                UpstreamErrorKind::Connect => e.connect += 1,
                UpstreamErrorKind::Timeout => e.timeout += 1,
                UpstreamErrorKind::Failed => e.failed += 1,
            }
            self.edge_dirty.store(true, Ordering::Release);
        }
    }

    /// The edge counters when anything changed since the last call.
    pub fn take_edge_if_dirty(&self) -> Option<EdgeStats> {
        if !self.edge_dirty.swap(false, Ordering::AcqRel) {
            return None;
        }
        let map = self.upstream_errors.lock().ok()?;
        let mut upstream_errors: Vec<AppUpstreamErrors> = map.values().cloned().collect();
        upstream_errors.sort_by(|a, b| a.app.cmp(&b.app));
        Some(EdgeStats {
            tls_handshakes_ok: self.tls_ok.load(Ordering::Relaxed),
            tls_handshakes_failed: self.tls_failed.load(Ordering::Relaxed),
            upstream_errors,
            client_limits: tako_ipc::ClientLimitStats {
                connections_refused: self.client[0].load(Ordering::Relaxed),
                requests_refused: self.client[1].load(Ordering::Relaxed),
                requests_rate_limited: self.client[2].load(Ordering::Relaxed),
                table_full: self.client[3].load(Ordering::Relaxed),
            },
        })
    }

    /// The slot of one instance, made on first use (when a table first routes to it).
    pub fn slot(&self, app: &str, instance_id: u32) -> Arc<Slot> {
        let mut map = match self.map.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        if !map.contains_key(app) {
            map.insert(app.to_string(), FastMap::default());
        }
        match map.get_mut(app) {
            Some(per_app) => Arc::clone(per_app.entry(instance_id).or_default()),
            // Inserted just above; a detached entry keeps the request going regardless.
            None => Arc::default(),
        }
    }

    /// Counts one request in flight to the instance of `slot`, at the moment it picks the
    /// instance, until the guard drops; `None` (nothing counted) when a newer table removed
    /// the instance: the request must pick from the current table instead.
    ///
    /// Why this is race-free with [`Counters::retire`], which the table swap runs: both
    /// sides write their own atomic, then read the other's, all sequentially consistent. In
    /// the single order of those four operations, either this increment comes before the
    /// swap's read (the acknowledgement counts the request, and the master waits for it), or
    /// the swap's `removed` store comes before this read (the request backs off). A request
    /// can never be both uncounted and sent to the removed instance.
    pub fn claim(self: &Arc<Self>, slot: &Arc<Slot>) -> Option<InFlight> {
        slot.in_flight.fetch_add(1, Ordering::SeqCst);
        self.dirty.store(true, Ordering::Release);
        let guard = InFlight {
            counters: Arc::clone(self),
            entry: Arc::clone(slot),
            counted: false,
        };
        if slot.removed.load(Ordering::SeqCst) {
            // Dropping the guard gives the count back (and reports the zero if the
            // acknowledgement saw this request).
            return None;
        }
        Some(guard)
    }

    /// Called after a new table is in place, with the slots it no longer routes to: marks
    /// them removed, then reads their in-flight counts for the acknowledgement. Any request
    /// that picked one of them and is not counted here backs off ([`Counters::claim`]).
    pub fn retire(&self, removed: &[(Arc<str>, u32, Arc<Slot>)]) -> Vec<RemovedInstance> {
        for (_, _, slot) in removed {
            slot.removed.store(true, Ordering::SeqCst);
        }
        removed
            .iter()
            .map(|(app, id, slot)| RemovedInstance {
                app: app.to_string(),
                instance_id: *id,
                in_flight: slot.in_flight.load(Ordering::SeqCst),
            })
            .collect()
    }

    /// Holds the report order: see the field.
    pub fn report_order(&self) -> std::sync::MutexGuard<'_, ()> {
        match self.report_order.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// The full set when anything changed since the last call.
    pub fn take_if_dirty(&self) -> Option<Vec<InstanceCounters>> {
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return None;
        }
        let map = self.map.lock().ok()?;
        let mut out: Vec<InstanceCounters> = map
            .iter()
            .flat_map(|(app, per_app)| {
                per_app.iter().map(move |(id, e)| InstanceCounters {
                    app: app.clone(),
                    instance_id: *id,
                    requests_total: e.requests_total.load(Ordering::Relaxed),
                    in_flight: e.in_flight.load(Ordering::Relaxed),
                })
            })
            .collect();
        out.sort_by(|a, b| (&a.app, a.instance_id).cmp(&(&b.app, b.instance_id)));
        Some(out)
    }
}

/// Marks a slot as routed to again: the table being built lists it.
pub fn reinstate(slot: &Slot) {
    slot.removed.store(false, Ordering::SeqCst);
}

/// One request in flight to one instance.
pub struct InFlight {
    counters: Arc<Counters>,
    entry: Arc<Slot>,
    counted: bool,
}

impl InFlight {
    /// Counts the request in `requests_total`: its bytes reached the instance. Idempotent.
    pub fn count(&mut self) {
        if !self.counted {
            self.counted = true;
            self.entry.requests_total.fetch_add(1, Ordering::Relaxed);
            self.counters.dirty.store(true, Ordering::Release);
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        // Never below zero, as before: a count of requests, not a balance.
        let was = self
            .entry
            .in_flight
            .fetch_update(Ordering::SeqCst, Ordering::Relaxed, |n| n.checked_sub(1));
        self.counters.dirty.store(true, Ordering::Release);
        // The last request to a removed instance: the master may stop it once it hears.
        if was == Ok(1) && self.entry.removed.load(Ordering::Relaxed) {
            self.counters.drained.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_and_totals() {
        let c = Arc::new(Counters::default());
        assert!(c.take_if_dirty().is_none());
        let mut a = c.claim(&c.slot("web", 1)).unwrap();
        let snap = c.take_if_dirty().unwrap();
        assert_eq!(snap[0].in_flight, 1);
        assert_eq!(snap[0].requests_total, 0);
        a.count();
        a.count();
        drop(a);
        let snap = c.take_if_dirty().unwrap();
        assert_eq!(snap[0].in_flight, 0);
        assert_eq!(snap[0].requests_total, 1);
        assert!(c.take_if_dirty().is_none());
    }
}

#[cfg(test)]
mod http_stats_tests {
    use super::*;

    #[test]
    fn requests_land_in_their_class_and_bucket() {
        let c = Counters::default();
        assert!(c.take_http_if_dirty().is_none());
        c.record_request("web", 200, 0.004);
        c.record_request("web", 503, 0.3);
        c.record_request("web", 0, 0.1);
        c.record_request("", 404, 99.0);
        let mut all = c.take_http_if_dirty().unwrap();
        all.sort_by(|a, b| a.app.cmp(&b.app));
        assert_eq!(all[0].classes, [0, 0, 0, 1, 0]);
        assert_eq!(all[0].buckets[11], 1, "beyond 10 s is +Inf");
        let web = &all[1];
        assert_eq!(web.classes, [0, 1, 0, 0, 1]);
        assert_eq!(web.buckets[0], 1);
        assert_eq!(web.buckets[6], 1, "0.3 s falls in le=0.5");
        assert!(c.take_http_if_dirty().is_none());
    }
}

#[cfg(test)]
mod edge_stats_tests {
    use super::*;

    #[test]
    fn handshakes_and_upstream_errors_are_totals() {
        let c = Counters::default();
        assert!(c.take_edge_if_dirty().is_none());
        c.record_handshake(true);
        c.record_handshake(false);
        c.record_handshake(true);
        c.record_upstream_error("web", UpstreamErrorKind::Connect);
        c.record_upstream_error("web", UpstreamErrorKind::Connect);
        c.record_upstream_error("api", UpstreamErrorKind::Timeout);
        let e = c.take_edge_if_dirty().unwrap();
        assert_eq!((e.tls_handshakes_ok, e.tls_handshakes_failed), (2, 1));
        assert_eq!(e.upstream_errors.len(), 2);
        assert_eq!(e.upstream_errors[0].app, "api");
        assert_eq!(e.upstream_errors[0].timeout, 1);
        assert_eq!(e.upstream_errors[1].connect, 2);
        assert!(c.take_edge_if_dirty().is_none());
        c.record_upstream_error("web", UpstreamErrorKind::Failed);
        let e = c.take_edge_if_dirty().unwrap();
        assert_eq!(e.tls_handshakes_ok, 2, "totals, not deltas");
        assert_eq!(e.upstream_errors[1].failed, 1);
    }
}
