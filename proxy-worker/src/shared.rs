//! State shared by every connection of this worker. Everything the master pushes is swapped
//! whole, so a request reads one consistent snapshot.

use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, OnceLock};

use arc_swap::{ArcSwap, ArcSwapOption};
use bytes::Bytes;
use tako_http1::upstream::Upstream;
use tako_ipc::cidr::Cidr;
use tako_ipc::{Sender, WorkerConfig, WorkerToMaster};

use crate::cache::Cache;
use crate::client_limits::Limiter;
use crate::conns::ConnTracker;
use crate::counters::Counters;
use crate::hold::Holds;
use crate::internal_host::StatusSnapshot;
use crate::limits::MAX_CONNECTIONS;
use crate::table::Table;
use crate::tls::CertStore;

pub struct Shared {
    pub config: WorkerConfig,
    pub trusted: Vec<Cidr>,
    pub table: ArcSwap<Table>,
    /// Round-robin positions per app, carried from table to table.
    pub rotation: Mutex<HashMap<String, Arc<AtomicUsize>>>,
    pub status: ArcSwapOption<StatusSnapshot>,
    pub metrics: ArcSwapOption<Bytes>,
    /// ACME HTTP-01 answers: token -> key authorization, replaced whole by the master.
    pub acme_tokens: ArcSwap<HashMap<String, Bytes>>,
    pub holds: Holds,
    pub counters: Arc<Counters>,
    pub certs: Arc<CertStore>,
    pub upstream: Upstream,
    /// The response cache (docs/http.md, "Response cache"); off when the budget is 0.
    pub cache: Arc<Cache>,
    /// Open connections and tunnels: draining waits for them.
    pub conns: Arc<ConnTracker>,
    /// The per-client limits, once the master's table arrived (before the listeners); unset
    /// when every limit is off. Lives as long as the process.
    pub limiter: OnceLock<&'static Limiter>,
    outbox: Sender<WorkerToMaster>,
}

impl Shared {
    pub fn new(config: WorkerConfig, outbox: Sender<WorkerToMaster>) -> Self {
        let mut trusted = Vec::new();
        for raw in &config.trusted_proxies {
            match raw.parse::<Cidr>() {
                Ok(c) => trusted.push(c),
                // The master validated the flag; a bad entry here only narrows trust.
                Err(error) => tracing::warn!(cidr = %raw, %error, "Trusted proxy ignored"),
            }
        }
        let cache_tx = outbox.clone();
        let cache = Arc::new(Cache::new(
            config.cache_bytes,
            Box::new(move |m| {
                send_to_master(&cache_tx, m);
            }),
        ));
        Self {
            config,
            trusted,
            table: ArcSwap::from_pointee(Table::empty()),
            rotation: Mutex::new(HashMap::new()),
            status: ArcSwapOption::empty(),
            metrics: ArcSwapOption::empty(),
            acme_tokens: ArcSwap::from_pointee(HashMap::new()),
            holds: Holds::default(),
            counters: Arc::new(Counters::default()),
            certs: Arc::new(CertStore::default()),
            // As many idle connections per instance as the worker has client connections:
            // below the client concurrency every request past the cap opens and closes a
            // connection (measured: 66 vs 40 µs of worker CPU per request at 64 client
            // connections with a cap of 32, and 88.7 vs 47.5 µs at 5000 connections with a
            // cap of 1024).
            upstream: Upstream::new(MAX_CONNECTIONS),
            cache,
            conns: Arc::new(ConnTracker::default()),
            limiter: OnceLock::new(),
            outbox,
        }
    }

    /// Queues a message to the master. Lost only when the channel is already gone.
    pub fn send(&self, msg: WorkerToMaster) {
        send_to_master(&self.outbox, msg);
    }

    /// Waits (bounded by the caller) until everything queued so far was written.
    pub async fn flush(&self) {
        self.outbox.flush().await;
    }

    /// Seconds since the master started, for a status page before the first snapshot.
    pub fn uptime_secs(&self) -> u64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        now.saturating_sub(self.config.server_started_unix_secs)
    }
}

/// Queues a message to the master. An invalidation goes in pieces within the master's
/// bounds (`tako_ipc::validate`): a response that names thousands of locations is the app's
/// doing and must not make this worker look hostile.
fn send_to_master(outbox: &Sender<WorkerToMaster>, msg: WorkerToMaster) {
    match msg {
        WorkerToMaster::CacheInvalidate(inv) => {
            for part in tako_ipc::validate::split_invalidation(inv) {
                let _ = outbox.send(&WorkerToMaster::CacheInvalidate(part));
            }
        }
        other => {
            let _ = outbox.send(&other);
        }
    }
}
