//! The compiled routing snapshot a request uses from start to end.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tako_ipc::route::{parse_route, RouteMatcher, RoutePattern};
use tako_ipc::{Backend, RouteTable};

/// One app as this table sees it.
pub struct AppEntry {
    /// Shared with the access log and the counters of every request the app serves.
    pub name: Arc<str>,
    pub stopped: bool,
    pub on_demand: bool,
    pub starting: bool,
    pub backends: Vec<Backend>,
    /// The live release: static files come from its `public/`.
    pub release_path: String,
    /// Round-robin position; shared by every table so rotation survives a swap.
    rr: Arc<AtomicUsize>,
}

impl AppEntry {
    /// The next backend in rotation, skipping `exclude` (the instance that just failed).
    pub fn pick(&self, exclude: Option<u32>) -> Option<Backend> {
        let n = self.backends.len();
        if n == 0 {
            return None;
        }
        let start = self.rr.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|k| &self.backends[(start + k) % n])
            .find(|b| Some(b.instance_id) != exclude)
            .cloned()
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
    /// one here is a bug there: it is logged and skipped, never fatal.
    pub fn build(src: &RouteTable, rotation: &Mutex<HashMap<String, Arc<AtomicUsize>>>) -> Self {
        let mut entries = Vec::new();
        let mut apps = HashMap::new();
        let mut rotation = match rotation.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        rotation.retain(|name, _| src.apps.iter().any(|a| &a.name == name));
        for app in &src.apps {
            let rr = rotation.entry(app.name.clone()).or_default().clone();
            let entry = Arc::new(AppEntry {
                name: Arc::from(app.name.as_str()),
                stopped: app.stopped,
                on_demand: app.on_demand,
                starting: app.starting,
                backends: app.backends.clone(),
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

    #[test]
    fn round_robin_survives_a_swap_and_skips_the_failed_instance() {
        let rot = Mutex::new(HashMap::new());
        let src = RouteTable {
            epoch: 1,
            apps: vec![app("web", &["a.com", "bad route"], &[1, 2])],
        };
        let t = Table::build(&src, &rot);
        let (_, e) = t.find("a.com", "/").unwrap();
        assert_eq!(e.pick(None).unwrap().port, 1);
        let t2 = Table::build(&src, &rot);
        let e2 = t2.app("web").unwrap();
        assert_eq!(e2.pick(None).unwrap().port, 2);
        assert_eq!(e2.pick(Some(1)).unwrap().port, 2);
        assert_eq!(e2.pick(Some(2)).unwrap().port, 1);
        let lone = Table::build(
            &RouteTable {
                epoch: 2,
                apps: vec![app("web", &["a.com"], &[7])],
            },
            &rot,
        );
        assert!(lone.app("web").unwrap().pick(Some(1)).is_none());
        assert!(Table::empty().find("a.com", "/").is_none());
    }
}
