//! What the workers reported, summed: requests per instance and per app, TLS handshakes,
//! upstream errors, cache counters. Past workers count too: a worker's totals are folded into
//! the table's retired sums when it ends, so counters never go backwards.

use std::collections::HashMap;

use super::table::{WorkerEntry, WorkerTable};

impl WorkerTable {
    /// Request stats per app summed over all workers, past ones included.
    pub fn http_totals(&self) -> Vec<tako_ipc::AppHttpStats> {
        let mut out = self.retired_http.clone();
        for w in &self.entries {
            add_http(&mut out, &w.reports.http);
        }
        out.sort_by(|a, b| a.app.cmp(&b.app));
        out
    }

    /// TLS handshakes and upstream errors summed over all workers, past ones included.
    pub fn edge_totals(&self) -> tako_ipc::EdgeStats {
        let mut t = self.retired_edge.clone();
        for w in &self.entries {
            add_edge(&mut t, &w.reports.edge);
        }
        t.upstream_errors.sort_by(|a, b| a.app.cmp(&b.app));
        t
    }

    /// Cache counters summed over all workers, past ones included.
    pub fn cache_totals(&self) -> tako_ipc::CacheStats {
        let mut t = self.retired_cache.clone();
        for w in &self.entries {
            let c = &w.reports.cache;
            add_cache_counters(&mut t, c);
            t.bytes = t.bytes.saturating_add(c.bytes);
            t.entries = t.entries.saturating_add(c.entries);
        }
        t
    }

    /// Per instance: requests proxied (all workers, past ones included) and in-flight now.
    pub fn instance_totals(&self) -> HashMap<(String, u32), (u64, u32)> {
        let mut out: HashMap<(String, u32), (u64, u32)> = HashMap::new();
        for (k, v) in &self.retired_totals {
            let e = out.entry(k.clone()).or_default();
            e.0 = e.0.saturating_add(*v);
        }
        for w in &self.entries {
            for c in &w.reports.counters {
                let e = out.entry((c.app.clone(), c.instance_id)).or_default();
                e.0 = e.0.saturating_add(c.requests_total);
                e.1 = e.1.saturating_add(c.in_flight);
            }
        }
        out
    }

    /// Keeps the totals of a worker that ended.
    pub fn retire(&mut self, entry: WorkerEntry) {
        let reports = entry.reports;
        for c in reports.counters {
            let t = self
                .retired_totals
                .entry((c.app, c.instance_id))
                .or_default();
            *t = t.saturating_add(c.requests_total);
        }
        add_http(&mut self.retired_http, &reports.http);
        add_edge(&mut self.retired_edge, &reports.edge);
        add_cache_counters(&mut self.retired_cache, &reports.cache);
    }
}

/// Adds the cache counters (not the size gauges, which end with their worker).
fn add_cache_counters(into: &mut tako_ipc::CacheStats, from: &tako_ipc::CacheStats) {
    into.hits = into.hits.saturating_add(from.hits);
    into.misses = into.misses.saturating_add(from.misses);
    into.bypasses = into.bypasses.saturating_add(from.bypasses);
    into.stores = into.stores.saturating_add(from.stores);
    into.evictions = into.evictions.saturating_add(from.evictions);
    into.invalidations = into.invalidations.saturating_add(from.invalidations);
}

/// Sums per-app upstream errors. Linear: an index by name instead of a search per entry (a
/// worker's list is bounded by the apps the master published, but a merge under the table
/// lock must not be quadratic in it either).
fn add_edge(into: &mut tako_ipc::EdgeStats, from: &tako_ipc::EdgeStats) {
    into.tls_handshakes_ok = into
        .tls_handshakes_ok
        .saturating_add(from.tls_handshakes_ok);
    into.tls_handshakes_failed = into
        .tls_handshakes_failed
        .saturating_add(from.tls_handshakes_failed);
    let (c, f) = (&mut into.client_limits, &from.client_limits);
    c.connections_refused = c.connections_refused.saturating_add(f.connections_refused);
    c.requests_refused = c.requests_refused.saturating_add(f.requests_refused);
    c.requests_rate_limited = c
        .requests_rate_limited
        .saturating_add(f.requests_rate_limited);
    c.table_full = c.table_full.saturating_add(f.table_full);
    let mut index: HashMap<String, usize> = into
        .upstream_errors
        .iter()
        .enumerate()
        .map(|(i, e)| (e.app.clone(), i))
        .collect();
    for s in &from.upstream_errors {
        let pos = *index.entry(s.app.clone()).or_insert_with(|| {
            into.upstream_errors.push(tako_ipc::AppUpstreamErrors {
                app: s.app.clone(),
                ..Default::default()
            });
            into.upstream_errors.len() - 1
        });
        let t = &mut into.upstream_errors[pos];
        t.connect = t.connect.saturating_add(s.connect);
        t.timeout = t.timeout.saturating_add(s.timeout);
        t.failed = t.failed.saturating_add(s.failed);
    }
}

/// Sums per-app request stats, linearly (see [`add_edge`]).
fn add_http(into: &mut Vec<tako_ipc::AppHttpStats>, from: &[tako_ipc::AppHttpStats]) {
    let mut index: HashMap<String, usize> = into
        .iter()
        .enumerate()
        .map(|(i, e)| (e.app.clone(), i))
        .collect();
    for s in from {
        let pos = *index.entry(s.app.clone()).or_insert_with(|| {
            into.push(tako_ipc::AppHttpStats {
                app: s.app.clone(),
                ..Default::default()
            });
            into.len() - 1
        });
        let t = &mut into[pos];
        for (a, b) in t.classes.iter_mut().zip(s.classes) {
            *a = a.saturating_add(b);
        }
        for (a, b) in t.buckets.iter_mut().zip(s.buckets) {
            *a = a.saturating_add(b);
        }
        t.duration_sum_secs += s.duration_sum_secs;
    }
}
