//! The compiled routing snapshot a request uses from start to end.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tako_ipc::route::{parse_route, RouteMatcher, RoutePattern};
use tako_ipc::{Backend, RouteTable};

use crate::counters::{reinstate, Counters, InFlight, Slot};

/// One app as this table sees it.
pub struct AppEntry {
    /// Shared with the access log and the counters of every request the app serves.
    pub name: Arc<str>,
    pub stopped: bool,
    pub on_demand: bool,
    pub starting: bool,
    pub backends: Vec<Backend>,
    /// The counter slot of each backend, in the same order.
    slots: Vec<Arc<Slot>>,
    /// The live release: static files come from its `public/`.
    pub release_path: String,
    /// Round-robin position; shared by every table so rotation survives a swap.
    rr: Arc<AtomicUsize>,
}

/// What picking a backend found.
pub enum Pick {
    /// The backend, with the request counted in flight to it until the guard drops.
    Backend(Backend, InFlight),
    /// No backend (other than the excluded one).
    None,
    /// A newer table removed the backend this (older) table offered: pick from the current
    /// table instead.
    Superseded,
}

impl AppEntry {
    /// The next backend in rotation, skipping `exclude` (the instance that just failed),
    /// counted in flight from this moment: the count a table acknowledgement reads.
    pub fn pick(&self, exclude: Option<u32>, counters: &Arc<Counters>) -> Pick {
        let n = self.backends.len();
        if n == 0 {
            return Pick::None;
        }
        let start = self.rr.fetch_add(1, Ordering::Relaxed);
        let Some(k) = (0..n)
            .map(|k| (start + k) % n)
            .find(|k| Some(self.backends[*k].instance_id) != exclude)
        else {
            return Pick::None;
        };
        match counters.claim(&self.slots[k]) {
            Some(guard) => Pick::Backend(self.backends[k].clone(), guard),
            None => Pick::Superseded,
        }
    }
}

pub struct Table {
    matcher: RouteMatcher<Arc<AppEntry>>,
    apps: HashMap<String, Arc<AppEntry>>,
}

impl Table {
    pub fn empty() -> Self {
        Self {
            matcher: RouteMatcher::new(Vec::new()),
            apps: HashMap::new(),
        }
    }

    /// Compiles a pushed table. Routes that do not parse were validated by the master, so
    /// one here is a bug there: it is logged and skipped, never fatal. Every backend gets
    /// its counter slot, marked as routed to.
    pub fn build(
        src: &RouteTable,
        rotation: &Mutex<HashMap<String, Arc<AtomicUsize>>>,
        counters: &Counters,
    ) -> Self {
        let mut entries = Vec::new();
        let mut apps = HashMap::new();
        let mut rotation = match rotation.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        rotation.retain(|name, _| src.apps.iter().any(|a| &a.name == name));
        for app in &src.apps {
            let rr = rotation.entry(app.name.clone()).or_default().clone();
            let slots: Vec<Arc<Slot>> = app
                .backends
                .iter()
                .map(|b| counters.slot(&app.name, b.instance_id))
                .collect();
            for slot in &slots {
                reinstate(slot);
            }
            let entry = Arc::new(AppEntry {
                name: Arc::from(app.name.as_str()),
                stopped: app.stopped,
                on_demand: app.on_demand,
                starting: app.starting,
                backends: app.backends.clone(),
                slots,
                release_path: app.release_path.clone(),
                rr,
            });
            for raw in &app.routes {
                match parse_route(raw) {
                    Ok(p) => entries.push((p, app.name.clone(), Arc::clone(&entry))),
                    Err(error) => {
                        tracing::warn!(app = %app.name, route = %raw, %error, "Route skipped")
                    }
                }
            }
            apps.insert(app.name.clone(), entry);
        }
        Self {
            matcher: RouteMatcher::new(entries),
            apps,
        }
    }

    pub fn find(&self, hostname: &str, path: &str) -> Option<(&RoutePattern, &Arc<AppEntry>)> {
        self.matcher.find(hostname, path).map(|(p, _, e)| (p, e))
    }

    pub fn app(&self, name: &str) -> Option<&Arc<AppEntry>> {
        self.apps.get(name)
    }

    /// The backends of this table that `next` no longer routes to, with their slots.
    pub fn removed_by(&self, next: &Table) -> Vec<(Arc<str>, u32, Arc<Slot>)> {
        let mut out = Vec::new();
        for (name, entry) in &self.apps {
            let kept = next.apps.get(name);
            for (b, slot) in entry.backends.iter().zip(&entry.slots) {
                let still = kept
                    .is_some_and(|k| k.backends.iter().any(|nb| nb.instance_id == b.instance_id));
                if !still {
                    out.push((Arc::clone(&entry.name), b.instance_id, Arc::clone(slot)));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tako_ipc::AppRoutes;

    fn app(name: &str, routes: &[&str], ports: &[u16]) -> AppRoutes {
        AppRoutes {
            name: name.into(),
            routes: routes.iter().map(|r| r.to_string()).collect(),
            release_path: "/nonexistent".into(),
            stopped: false,
            on_demand: false,
            backends: ports
                .iter()
                .enumerate()
                .map(|(i, p)| Backend {
                    instance_id: i as u32 + 1,
                    port: *p,
                })
                .collect(),
            starting: false,
        }
    }

    /// The port of the next pick; the request it counts ends at once.
    fn port(e: &AppEntry, exclude: Option<u32>, c: &Arc<Counters>) -> Option<u16> {
        match e.pick(exclude, c) {
            Pick::Backend(b, _) => Some(b.port),
            Pick::None => None,
            Pick::Superseded => panic!("superseded"),
        }
    }

    #[test]
    fn round_robin_survives_a_swap_and_skips_the_failed_instance() {
        let rot = Mutex::new(HashMap::new());
        let c = Arc::new(Counters::default());
        let src = RouteTable {
            epoch: 1,
            apps: vec![app("web", &["a.com", "bad route"], &[1, 2])],
        };
        let t = Table::build(&src, &rot, &c);
        let (_, e) = t.find("a.com", "/").unwrap();
        assert_eq!(port(e, None, &c), Some(1));
        let t2 = Table::build(&src, &rot, &c);
        let e2 = t2.app("web").unwrap();
        assert_eq!(port(e2, None, &c), Some(2));
        assert_eq!(port(e2, Some(1), &c), Some(2));
        assert_eq!(port(e2, Some(2), &c), Some(1));
        let lone = Table::build(
            &RouteTable {
                epoch: 2,
                apps: vec![app("web", &["a.com"], &[7])],
            },
            &rot,
            &c,
        );
        assert_eq!(port(lone.app("web").unwrap(), Some(1), &c), None);
        assert!(Table::empty().find("a.com", "/").is_none());
    }

    /// The drain handshake: a request counted before the swap is in the acknowledgement; a
    /// pick from the old table after it backs off; an instance routed to again is not.
    #[test]
    fn removed_instances_are_counted_or_refused() {
        let rot = Mutex::new(HashMap::new());
        let c = Arc::new(Counters::default());
        let two = RouteTable {
            epoch: 1,
            apps: vec![app("web", &["a.com"], &[1, 2])],
        };
        let old = Table::build(&two, &rot, &c);
        let e = Arc::clone(old.app("web").unwrap());
        // A request that picked instance 1 before the swap.
        let Pick::Backend(b, early) = e.pick(None, &c) else {
            panic!("no pick");
        };
        assert_eq!(b.instance_id, 1);
        // Instance 2 stays, instance 1 leaves.
        let mut kept = app("web", &["a.com"], &[2]);
        kept.backends[0].instance_id = 2;
        let next = Table::build(
            &RouteTable {
                epoch: 2,
                apps: vec![kept],
            },
            &rot,
            &c,
        );
        let gone = old.removed_by(&next);
        assert_eq!(gone.len(), 1);
        let acked = c.retire(&gone);
        assert_eq!(acked.len(), 1);
        assert_eq!((acked[0].instance_id, acked[0].in_flight), (1, 1));
        // The old entry offers instance 1 again (round robin): refused, nothing counted.
        let mut superseded = 0;
        for _ in 0..2 {
            match e.pick(None, &c) {
                Pick::Superseded => superseded += 1,
                Pick::Backend(b, _) => assert_eq!(b.instance_id, 2),
                Pick::None => panic!("no pick"),
            }
        }
        assert_eq!(superseded, 1);
        assert_eq!(c.retire(&gone)[0].in_flight, 1);
        drop(early);
        assert_eq!(c.retire(&gone)[0].in_flight, 0);
        // Routed to again: picks of it count as before.
        let back = Table::build(&two, &rot, &c);
        let Pick::Backend(_, _g) = back.app("web").unwrap().pick(Some(2), &c) else {
            panic!("instance 1 refused after it came back");
        };
    }
}
