//! Status views: the AppStatus of `status` and of `tako.internal/status`, the page itself,
//! and the Prometheus page (docs/management-protocol.md, "Status objects"; docs/status-page.md;
//! docs/operations.md, "Metrics").

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::time::Instant;

use serde::Serialize;

use crate::apps::registry::{App, InstState};
use crate::core::{lock, Master};

/// Field order is the page's key order; the management socket re-sorts keys.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceView {
    pub id: u32,
    pub state: &'static str,
    pub port: u16,
    pub pid: Option<u32>,
    pub uptime_secs: u64,
    pub requests_total: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct BuildView {
    pub version: String,
    pub state: &'static str,
    pub instances: Vec<InstanceView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CertView {
    pub host: String,
    pub state: &'static str,
    pub source: Option<&'static str>,
    pub not_after_unix_secs: Option<u64>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AppStatus {
    pub name: String,
    pub version: String,
    pub instances: Vec<InstanceView>,
    pub builds: Vec<BuildView>,
    pub state: &'static str,
    pub last_error: Option<String>,
    pub certificates: Vec<CertView>,
}

#[derive(Serialize)]
struct StatusPage<'a> {
    healthy: bool,
    apps: &'a [AppStatus],
    uptime_secs: u64,
}

/// What a peer that is neither loopback nor trusted may learn about one app: its name and
/// state. `last_error` holds app output (startup stderr can carry secrets), and pids, ports,
/// versions and instances describe the host, so none of them is here.
#[derive(Serialize)]
struct PublicApp<'a> {
    name: &'a str,
    state: &'static str,
}

#[derive(Serialize)]
struct PublicStatusPage<'a> {
    healthy: bool,
    apps: Vec<PublicApp<'a>>,
}

/// Both bodies of `tako.internal/status`, rendered together from one registry snapshot so
/// that they never disagree on health (docs/status-page.md, "How it is built").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedStatus {
    /// The whole page: loopback and trusted peers.
    pub body: String,
    /// Health and each app's name and state only: every other peer.
    pub public_body: String,
    pub healthy: bool,
}

/// Renders the full and the public page. Pretty-printed with two-space indents, like the
/// page always was, so a human reading either with curl gets the same shape.
pub fn render_pages(apps: &[AppStatus], healthy: bool, uptime_secs: u64) -> RenderedStatus {
    let page = StatusPage {
        healthy,
        apps,
        uptime_secs,
    };
    let public = PublicStatusPage {
        healthy,
        apps: apps
            .iter()
            .map(|a| PublicApp {
                name: &a.name,
                state: a.state,
            })
            .collect(),
    };
    // Serialising these plain structs cannot fail (string keys, no maps of other keys); the
    // fallbacks only keep a broken page from ever carrying more than the health bit.
    let fallback = || format!("{{\n  \"healthy\": {healthy},\n  \"apps\": []\n}}");
    RenderedStatus {
        body: serde_json::to_string_pretty(&page).unwrap_or_else(|_| fallback()),
        public_body: serde_json::to_string_pretty(&public).unwrap_or_else(|_| fallback()),
        healthy,
    }
}

fn build_state(instances: &[&crate::apps::registry::Instance]) -> &'static str {
    if instances.iter().any(|i| i.state.serves()) {
        "running"
    } else if instances
        .iter()
        .any(|i| matches!(i.state, InstState::Starting | InstState::Draining))
    {
        "deploying"
    } else if instances.iter().any(|i| i.state == InstState::Unhealthy) {
        "error"
    } else {
        "stopped"
    }
}

pub fn app_status(
    a: &App,
    totals: &HashMap<(String, u32), (u64, u32)>,
    certs: Vec<CertView>,
    now: Instant,
) -> AppStatus {
    let view = |i: &crate::apps::registry::Instance| InstanceView {
        id: i.id,
        state: i.state.as_str(),
        port: i.port,
        pid: i.pid,
        uptime_secs: now.duration_since(i.spawned).as_secs(),
        requests_total: totals
            .get(&(a.name.clone(), i.id))
            .map(|t| t.0)
            .unwrap_or(0),
    };
    let instances: Vec<InstanceView> = a.instances.values().map(view).collect();
    let mut by_version: BTreeMap<&str, Vec<&crate::apps::registry::Instance>> = BTreeMap::new();
    for i in a.instances.values() {
        by_version
            .entry(i.build.version.as_str())
            .or_default()
            .push(i);
    }
    let mut builds: Vec<BuildView> = Vec::new();
    if let Some(cur) = by_version.remove(a.config.version.as_str()) {
        builds.push(BuildView {
            version: a.config.version.clone(),
            state: build_state(&cur),
            instances: cur.iter().map(|i| view(i)).collect(),
        });
    }
    for (v, list) in by_version {
        builds.push(BuildView {
            version: v.to_string(),
            state: build_state(&list),
            instances: list.iter().map(|i| view(i)).collect(),
        });
    }
    AppStatus {
        name: a.name.clone(),
        version: a.config.version.clone(),
        instances,
        builds,
        state: a.state(),
        last_error: a.last_error.clone(),
        certificates: certs,
    }
}

impl Master {
    pub fn app_statuses(&self) -> Vec<AppStatus> {
        let totals = lock(&self.workers).instance_totals();
        let now = Instant::now();
        let reg = lock(&self.apps);
        reg.apps
            .values()
            .filter(|a| a.visible)
            .map(|a| app_status(a, &totals, self.cert_views(&a.config.routes), now))
            .collect()
    }

    pub fn app_status(&self, name: &str) -> Option<AppStatus> {
        let totals = lock(&self.workers).instance_totals();
        let reg = lock(&self.apps);
        reg.visible(name).map(|a| {
            app_status(
                a,
                &totals,
                self.cert_views(&a.config.routes),
                Instant::now(),
            )
        })
    }

    pub fn render_status_page(&self) -> RenderedStatus {
        let apps = self.app_statuses();
        let healthy = {
            let reg = lock(&self.apps);
            !reg.apps.values().any(|a| {
                a.visible
                    && !a.config.stopped
                    && a.config.min_instances >= 1
                    && !a.instances.values().any(|i| i.state == InstState::Healthy)
            })
        };
        render_pages(&apps, healthy, self.started.elapsed().as_secs())
    }

    pub fn render_metrics(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP tako_uptime_seconds Seconds since the server started."
        );
        let _ = writeln!(out, "# TYPE tako_uptime_seconds gauge");
        let _ = writeln!(
            out,
            "tako_uptime_seconds {}",
            self.started.elapsed().as_secs()
        );
        let (crash, rolling) = {
            let t = lock(&self.workers);
            (t.crash_restarts, t.rolling_restarts)
        };
        let _ = writeln!(
            out,
            "# HELP tako_worker_restarts_total Proxy worker replacements."
        );
        let _ = writeln!(out, "# TYPE tako_worker_restarts_total counter");
        let _ = writeln!(
            out,
            "tako_worker_restarts_total{{reason=\"crash\"}} {crash}"
        );
        let _ = writeln!(
            out,
            "tako_worker_restarts_total{{reason=\"rolling\"}} {rolling}"
        );
        let http = lock(&self.workers).http_totals();
        let _ = writeln!(
            out,
            "# HELP tako_http_requests_total Finished requests by app and status class."
        );
        let _ = writeln!(out, "# TYPE tako_http_requests_total counter");
        for a in &http {
            for (i, n) in a.classes.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "tako_http_requests_total{{app=\"{}\",class=\"{}xx\"}} {n}",
                    a.app,
                    i + 1
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP tako_http_request_duration_seconds Request durations by app."
        );
        let _ = writeln!(out, "# TYPE tako_http_request_duration_seconds histogram");
        for a in &http {
            let mut cumulative = 0u64;
            for (i, n) in a.buckets.iter().enumerate() {
                cumulative += n;
                let le = tako_ipc::DURATION_BUCKETS
                    .get(i)
                    .map(|b| b.to_string())
                    .unwrap_or_else(|| "+Inf".into());
                let _ = writeln!(out, "tako_http_request_duration_seconds_bucket{{app=\"{}\",le=\"{le}\"}} {cumulative}", a.app);
            }
            let _ = writeln!(
                out,
                "tako_http_request_duration_seconds_sum{{app=\"{}\"}} {}",
                a.app, a.duration_sum_secs
            );
            let _ = writeln!(
                out,
                "tako_http_request_duration_seconds_count{{app=\"{}\"}} {cumulative}",
                a.app
            );
        }
        let edge = lock(&self.workers).edge_totals();
        let _ = writeln!(
            out,
            "# HELP tako_tls_handshakes_total TLS handshakes by result (failed includes timeouts)."
        );
        let _ = writeln!(out, "# TYPE tako_tls_handshakes_total counter");
        for (result, n) in [
            ("ok", edge.tls_handshakes_ok),
            ("failed", edge.tls_handshakes_failed),
        ] {
            let _ = writeln!(out, "tako_tls_handshakes_total{{result=\"{result}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP tako_upstream_errors_total Failed requests to app instances: connect (refused or connect timeout), timeout (no response headers in time), failed (reset or invalid response)."
        );
        let _ = writeln!(out, "# TYPE tako_upstream_errors_total counter");
        for a in &edge.upstream_errors {
            for (kind, n) in [
                ("connect", a.connect),
                ("timeout", a.timeout),
                ("failed", a.failed),
            ] {
                let _ = writeln!(
                    out,
                    "tako_upstream_errors_total{{app=\"{}\",kind=\"{kind}\"}} {n}",
                    a.app
                );
            }
        }
        let c = lock(&self.workers).cache_totals();
        let _ = writeln!(
            out,
            "# HELP tako_cache_lookups_total Response cache lookups by result."
        );
        let _ = writeln!(out, "# TYPE tako_cache_lookups_total counter");
        for (result, n) in [("hit", c.hits), ("miss", c.misses), ("bypass", c.bypasses)] {
            let _ = writeln!(out, "tako_cache_lookups_total{{result=\"{result}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP tako_cache_stores_total Responses stored in the cache."
        );
        let _ = writeln!(out, "# TYPE tako_cache_stores_total counter");
        let _ = writeln!(out, "tako_cache_stores_total {}", c.stores);
        let _ = writeln!(
            out,
            "# HELP tako_cache_evictions_total Cache entries evicted to make room."
        );
        let _ = writeln!(out, "# TYPE tako_cache_evictions_total counter");
        let _ = writeln!(out, "tako_cache_evictions_total {}", c.evictions);
        let _ = writeln!(
            out,
            "# HELP tako_cache_bytes Bytes held by the response cache."
        );
        let _ = writeln!(out, "# TYPE tako_cache_bytes gauge");
        let _ = writeln!(out, "tako_cache_bytes {}", c.bytes);
        let _ = writeln!(
            out,
            "# HELP tako_certificate_expiry_timestamp_seconds notAfter of each certificate in use."
        );
        let _ = writeln!(
            out,
            "# TYPE tako_certificate_expiry_timestamp_seconds gauge"
        );
        for c in self.certs_snapshot().iter().filter(|c| c.name != "default") {
            if let Some(info) = crate::certs::leaf_info(&c.cert_chain_pem) {
                let _ = writeln!(
                    out,
                    "tako_certificate_expiry_timestamp_seconds{{host=\"{}\"}} {}",
                    c.name, info.not_after_unix_secs
                );
            }
        }
        let _ = writeln!(out, "# HELP tako_instances App instances by state.");
        let _ = writeln!(out, "# TYPE tako_instances gauge");
        let reg = lock(&self.apps);
        for a in reg.apps.values().filter(|a| a.visible) {
            let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
            for i in a.instances.values() {
                *counts.entry(i.state.as_str()).or_default() += 1;
            }
            for (state, n) in counts {
                let _ = writeln!(
                    out,
                    "tako_instances{{app=\"{}\",state=\"{state}\"}} {n}",
                    a.name
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(name: &str, state: &'static str, last_error: Option<&str>) -> AppStatus {
        AppStatus {
            name: name.into(),
            version: "v7".into(),
            instances: vec![InstanceView {
                id: 3,
                state: "healthy",
                port: 47123,
                pid: Some(4242),
                uptime_secs: 9,
                requests_total: 5,
            }],
            builds: Vec::new(),
            state,
            last_error: last_error.map(str::to_string),
            certificates: Vec::new(),
        }
    }

    #[test]
    fn public_page_holds_health_and_app_states_only() {
        let apps = [
            app(
                "web",
                "error",
                Some("boom DATABASE_URL=postgres://u:pw@db/x"),
            ),
            app("api", "running", None),
        ];
        let r = render_pages(&apps, false, 12);
        assert!(!r.healthy);
        assert_eq!(
            r.public_body,
            "{\n  \"healthy\": false,\n  \"apps\": [\n    {\n      \"name\": \"web\",\n      \"state\": \"error\"\n    },\n    {\n      \"name\": \"api\",\n      \"state\": \"running\"\n    }\n  ]\n}"
        );
        // The full page still carries everything, for loopback and trusted peers.
        let full: serde_json::Value = serde_json::from_str(&r.body).expect("the full page is JSON");
        assert_eq!(
            full["apps"][0]["last_error"],
            "boom DATABASE_URL=postgres://u:pw@db/x"
        );
        assert_eq!(full["apps"][0]["instances"][0]["pid"], 4242);
        assert_eq!(full["uptime_secs"], 12);
    }
}
