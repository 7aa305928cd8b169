//! The status and metrics pages as the master renders them from its services
//! (docs/status-page.md); the page layouts are `crate::status`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Instant;

use super::Master;
use crate::apps::registry::InstState;
use crate::status::{app_status, render_pages, AppStatus, RenderedStatus};

impl Master {
    pub fn app_statuses(&self) -> Vec<AppStatus> {
        let totals = self.workers.lock().instance_totals();
        let now = Instant::now();
        let reg = self.apps.lock();
        reg.apps
            .values()
            .filter(|a| a.visible)
            .map(|a| app_status(a, &totals, self.cert_views(&a.config.routes), now))
            .collect()
    }

    pub fn app_status(&self, name: &str) -> Option<AppStatus> {
        let totals = self.workers.lock().instance_totals();
        let reg = self.apps.lock();
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
            let reg = self.apps.lock();
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
            let t = self.workers.lock();
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
        let http = self.workers.lock().http_totals();
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
        let edge = self.workers.lock().edge_totals();
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
        // docs/limits.md, "Per-client limits".
        let cl = &edge.client_limits;
        let _ = writeln!(
            out,
            "# HELP tako_client_limited_total Connections closed and requests answered 429 by the per-client limits: connections (open connections), requests (requests in flight), rate (request rate)."
        );
        let _ = writeln!(out, "# TYPE tako_client_limited_total counter");
        for (limit, n) in [
            ("connections", cl.connections_refused),
            ("requests", cl.requests_refused),
            ("rate", cl.requests_rate_limited),
        ] {
            let _ = writeln!(out, "tako_client_limited_total{{limit=\"{limit}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP tako_client_table_full_total Connections and requests that found no room in the per-client table and went unlimited."
        );
        let _ = writeln!(out, "# TYPE tako_client_table_full_total counter");
        let _ = writeln!(out, "tako_client_table_full_total {}", cl.table_full);
        let c = self.workers.lock().cache_totals();
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
        let reg = self.apps.lock();
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
