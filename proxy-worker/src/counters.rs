//! Per-instance request counters, reported to the master at most once a second.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tako_ipc::InstanceCounters;

#[derive(Default)]
struct Entry {
    requests_total: u64,
    in_flight: u32,
}

/// Totals since this worker started, keyed by (app, instance id).
#[derive(Default)]
pub struct Counters {
    map: Mutex<HashMap<(String, u32), Entry>>,
    dirty: AtomicBool,
}

impl Counters {
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
