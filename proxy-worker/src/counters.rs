//! Per-instance request counters, reported to the master at most once a second.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tako_ipc::{AppHttpStats, InstanceCounters, DURATION_BUCKETS};

#[derive(Default)]
struct Entry {
    requests_total: u64,
    in_flight: u32,
}

/// Totals since this worker started, keyed by (app, instance id), plus request counts and
/// durations per app for `/metrics`.
#[derive(Default)]
pub struct Counters {
    map: Mutex<HashMap<(String, u32), Entry>>,
    dirty: AtomicBool,
    http: Mutex<HashMap<String, AppHttpStats>>,
    http_dirty: AtomicBool,
}

impl Counters {
    /// Records one finished request. `status` 0 (no response written) is not counted.
    pub fn record_request(&self, app: &str, status: u16, secs: f64) {
        let class = match status {
            100..=599 => usize::from(status / 100 - 1),
            _ => return,
        };
        if let Ok(mut map) = self.http.lock() {
            let e = map.entry(app.to_string()).or_insert_with(|| AppHttpStats {
                app: app.to_string(),
                ..Default::default()
            });
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

    fn update(&self, app: &str, instance_id: u32, f: impl FnOnce(&mut Entry)) {
        if let Ok(mut map) = self.map.lock() {
            let e = map.entry((app.to_string(), instance_id)).or_default();
            f(e);
            self.dirty.store(true, Ordering::Release);
        }
    }

    /// Marks one request in flight to an instance until the guard drops.
    pub fn begin(self: &Arc<Self>, app: &str, instance_id: u32) -> InFlight {
        self.update(app, instance_id, |e| {
            e.in_flight = e.in_flight.saturating_add(1)
        });
        InFlight {
            counters: Arc::clone(self),
            app: app.to_string(),
            instance_id,
            counted: false,
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
            .map(|((app, id), e)| InstanceCounters {
                app: app.clone(),
                instance_id: *id,
                requests_total: e.requests_total,
                in_flight: e.in_flight,
            })
            .collect();
        out.sort_by(|a, b| (&a.app, a.instance_id).cmp(&(&b.app, b.instance_id)));
        Some(out)
    }
}

/// One request in flight to one instance.
pub struct InFlight {
    counters: Arc<Counters>,
    app: String,
    instance_id: u32,
    counted: bool,
}

impl InFlight {
    /// Counts the request in `requests_total`: its bytes reached the instance. Idempotent.
    pub fn count(&mut self) {
        if !self.counted {
            self.counted = true;
            self.counters
                .update(&self.app, self.instance_id, |e| e.requests_total += 1);
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.counters.update(&self.app, self.instance_id, |e| {
            e.in_flight = e.in_flight.saturating_sub(1)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_and_totals() {
        let c = Arc::new(Counters::default());
        assert!(c.take_if_dirty().is_none());
        let mut a = c.begin("web", 1);
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
