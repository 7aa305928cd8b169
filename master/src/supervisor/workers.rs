//! Proxy workers: start, feed, watch, restart on crash, and roll to a new generation.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tako_ipc::validate::{check_worker_frame, AppBook, WorkerReports};
use tako_ipc::{
    Channel, Encoded, Limits, MasterToWorker, RouteTable, Sender, WorkerConfig, WorkerToMaster,
    IPC_VERSION,
};
use tokio::sync::oneshot;

use crate::core::Master;
use crate::role::ChildRole;
use crate::supervisor::spawn::{restart_delay, spawn_role};

/// How long a new worker has to report ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a draining worker may take.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcState {
    Starting,
    /// Workers accept as soon as they report ready, so `ready` (reported, not yet
    /// accepting) is never observed: they go from starting to active.
    Active,
    Draining,
}

impl ProcState {
    pub fn as_str(self) -> &'static str {
        match self {
            ProcState::Starting => "starting",
            ProcState::Active => "active",
            ProcState::Draining => "draining",
        }
    }
}

pub struct WorkerEntry {
    pub index: u32,
    pub generation: u32,
    pub pid: u32,
    pub uid: u32,
    pub started: Instant,
    pub state: ProcState,
    /// The bounded queue to this worker: a worker that stops reading fails it, and is
    /// replaced.
    pub tx: Sender<MasterToWorker>,
    pub applied_epoch: u64,
    /// The epoch of the table sent when the worker registered: its first table.
    pub first_epoch: u64,
    /// Requests still in flight, by this worker's word, to instances its tables no longer
    /// route to: set by a table acknowledgement, lowered by the counter reports after it.
    /// Zeros are not kept (absent means none): this holds only what a drain waits for.
    pub removed_in_flight: HashMap<(String, u32), u32>,
    /// The worker's last accepted reports (each one checked against the one before).
    pub reports: WorkerReports,
    /// Set when a newer generation replaced this worker: its exit is not a crash.
    pub retired: Arc<AtomicBool>,
    ready_tx: Option<oneshot::Sender<()>>,
}

#[derive(Default)]
pub struct WorkerTable {
    pub entries: Vec<WorkerEntry>,
    /// The current restart round: 1 at boot, +1 per rolling restart.
    pub generation: u32,
    /// Request totals of workers that are gone, so counters never go backwards.
    pub retired_totals: HashMap<(String, u32), u64>,
    pub restart_in_progress: bool,
    pub crash_restarts: u64,
    pub rolling_restarts: u64,
    /// Cache counters of workers that are gone (bytes and entries excluded: they are gone too).
    pub retired_cache: tako_ipc::CacheStats,
    pub retired_http: Vec<tako_ipc::AppHttpStats>,
    pub retired_edge: tako_ipc::EdgeStats,
    /// Every app name (with its highest instance id) and the newest epoch this master put
    /// in a route table: what a worker's reports are checked against. Names stay for the
    /// master's life, since a worker's totals outlive a deleted app. Behind its own lock
    /// because broadcasts take the table by shared reference.
    pub known: Mutex<AppBook>,
}

impl WorkerEntry {
    /// Keeps what an accepted frame says about the drain handshake.
    fn absorb(&mut self, msg: &WorkerToMaster) {
        match msg {
            WorkerToMaster::RoutesApplied { epoch } => {
                self.applied_epoch = self.applied_epoch.max(*epoch);
            }
            WorkerToMaster::TableApplied { epoch, removed } => {
                self.applied_epoch = self.applied_epoch.max(*epoch);
                for r in removed {
                    let key = (r.app.clone(), r.instance_id);
                    if r.in_flight == 0 {
                        self.removed_in_flight.remove(&key);
                    } else {
                        self.removed_in_flight.insert(key, r.in_flight);
                    }
                }
            }
            // Reports after the acknowledgement are newer than it (one ordered channel, and
            // the worker reads and queues both under one lock), and nothing can pick a
            // removed instance any more: its count only goes down, to zero.
            WorkerToMaster::Counters(counters) if !self.removed_in_flight.is_empty() => {
                for c in counters {
                    let key = (c.app.clone(), c.instance_id);
                    if let Some(n) = self.removed_in_flight.get_mut(&key) {
                        if c.in_flight == 0 {
                            self.removed_in_flight.remove(&key);
                        } else {
                            *n = c.in_flight;
                        }
                    }
                }
            }
            _ => {}
        }
    }

    /// Whether this worker can no longer send a request to instance `id` of `app`, which no
    /// table from `epoch` on routes to: it applied such a table and has none in flight.
    fn released(&self, app: &str, id: u32, epoch: u64) -> bool {
        match self.reports.acked_epoch {
            // Nothing applied yet: released when its first table is already without it.
            None => self.first_epoch >= epoch,
            Some(acked) => {
                acked >= epoch && !self.removed_in_flight.contains_key(&(app.to_string(), id))
            }
        }
    }
}

impl WorkerTable {
    /// Sends to every worker that is not draining. The message is encoded once; one that
    /// cannot be a frame is a bug of the master and goes to nobody (logged), instead of
    /// breaking the channels. Route tables go to draining workers too: their keep-alive
    /// connections still send requests, which must leave a stopped instance as well, and
    /// their acknowledgements are what lets a drain end.
    pub fn broadcast(&self, msg: &MasterToWorker) {
        let routes = matches!(msg, MasterToWorker::Routes(_));
        if let MasterToWorker::Routes(table) = msg {
            self.learn(table);
        }
        let frame = match Encoded::new(msg) {
            Ok(f) => f,
            Err(error) => {
                tracing::error!(%error, message = message_name(msg), "not broadcasting a message to the workers");
                return;
            }
        };
        for w in self
            .entries
            .iter()
            .filter(|w| routes || w.state != ProcState::Draining)
        {
            // A failed queue ends that worker's channel; its supervisor replaces it.
            let _ = w.tx.send_encoded(&frame);
        }
    }

    /// Whether no worker can send another request to instance `id` of `app`, which no
    /// table from `epoch` on routes to. A worker counts a request when it picks an
    /// instance, so this holds as soon as every worker acknowledged such a table with no
    /// request in flight there, or reported its last one finished.
    pub fn released(&self, app: &str, id: u32, epoch: u64) -> bool {
        self.entries.iter().all(|w| w.released(app, id, epoch))
    }

    /// Records the apps, instances and epoch of a route table about to be sent
    /// (and which instances it removed: what acknowledgements are checked against).
    pub fn learn(&self, table: &RouteTable) {
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        known.learn_table(table);
    }

    /// The lowest route-table epoch applied by every serving worker.
    pub fn min_applied_epoch(&self) -> Option<u64> {
        self.entries
            .iter()
            .filter(|w| w.state == ProcState::Active)
            .map(|w| w.applied_epoch)
            .min()
    }

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

/// A message's name for a log line (never its contents).
fn message_name(msg: &MasterToWorker) -> &'static str {
    match msg {
        MasterToWorker::Hello { .. } => "hello",
        MasterToWorker::Listeners { .. } => "listeners",
        MasterToWorker::Routes(_) => "routes",
        MasterToWorker::Certs(_) => "certs",
        MasterToWorker::StatusPage { .. } => "status page",
        MasterToWorker::MetricsPage { .. } => "metrics page",
        MasterToWorker::WakeResult { .. } => "wake result",
        MasterToWorker::Drain { .. } => "drain",
        MasterToWorker::PurgeApp { .. } => "purge app",
        MasterToWorker::CacheInvalidate(_) => "cache invalidate",
        MasterToWorker::AcmeTokens(_) => "ACME tokens",
    }
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

fn worker_config(master: &Master, index: u32, generation: u32) -> WorkerConfig {
    let s = &master.settings;
    WorkerConfig {
        index,
        generation,
        http_port: s.http_port,
        https_port: s.https_port,
        trusted_proxies: s.trusted_proxies.iter().map(|c| c.to_string()).collect(),
        acme_enabled: !s.no_acme,
        server_started_unix_secs: master.started_unix,
        // The budget is split evenly (docs/http.md, "Response cache"): floor(budget / workers)
        // each.
        cache_bytes: s.cache_bytes / (s.workers.max(1) as u64),
        h2_timeouts: s.h2_timeouts,
        sandbox: s.worker_sandbox(),
        proxy_protocol: s.proxy_protocol.iter().map(|a| a.to_string()).collect(),
    }
}

fn listener_fds(master: &Master) -> std::io::Result<(Vec<tako_ipc::ListenerKind>, Vec<OwnedFd>)> {
    let mut kinds = Vec::new();
    let mut fds = Vec::new();
    for l in &master.listeners {
        kinds.push(l.kind);
        fds.push(l.fd.try_clone()?);
    }
    Ok((kinds, fds))
}

/// Why a worker process ended.
enum WorkerEnd {
    Retired,
    Crashed(String),
}

/// Starts worker `index` of `generation` and keeps that slot alive until it is retired or
/// the server shuts down. `ready` fires when the first process of this slot reports ready.
pub fn supervise(
    master: Arc<Master>,
    index: u32,
    generation: u32,
    ready: Option<oneshot::Sender<()>>,
) -> Arc<AtomicBool> {
    let retired = Arc::new(AtomicBool::new(false));
    let slot_retired = retired.clone();
    tokio::spawn(async move {
        let mut ready = ready;
        let mut failures = 0u32;
        let mut gen = generation;
        loop {
            let started = Instant::now();
            let end = run_one(&master, index, gen, slot_retired.clone(), ready.take()).await;
            if master.is_shutting_down() || slot_retired.load(Ordering::SeqCst) {
                break;
            }
            match end {
                WorkerEnd::Retired => break,
                WorkerEnd::Crashed(reason) => {
                    failures = if started.elapsed() > Duration::from_secs(30) {
                        1
                    } else {
                        failures + 1
                    };
                    let delay = restart_delay(failures);
                    tracing::warn!(worker = index, reason = %reason, delay_ms = delay.as_millis() as u64, "proxy worker died; replacing it");
                    master
                        .workers
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .crash_restarts += 1;
                    tokio::time::sleep(delay).await;
                    if master.is_shutting_down() || slot_retired.load(Ordering::SeqCst) {
                        break;
                    }
                    // A crash replacement takes the current round.
                    gen = master
                        .workers
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .generation;
                }
            }
        }
    });
    retired
}

async fn run_one(
    master: &Arc<Master>,
    index: u32,
    generation: u32,
    retired: Arc<AtomicBool>,
    ready: Option<oneshot::Sender<()>>,
) -> WorkerEnd {
    let role = ChildRole::Worker {
        index,
        generation,
        master_pid: std::process::id() as i32,
        drop_to: master.users.as_ref().map(|u| (u.proxy.uid, u.proxy.gid)),
    };
    let spawned = match spawn_role(&role) {
        Ok(s) => s,
        Err(e) => return WorkerEnd::Crashed(format!("cannot start: {e}")),
    };
    let pid = spawned.pid;
    let mut child = spawned.child;
    let hello = MasterToWorker::Hello {
        version: IPC_VERSION,
        config: worker_config(master, index, generation),
    };
    let opened =
        Channel::<WorkerToMaster, MasterToWorker>::open(spawned.ipc, &hello, Limits::MASTER).await;
    let mut channel = match opened {
        Ok((channel, WorkerToMaster::Hello { pid: said, .. })) if said == pid => channel,
        Ok((_, other)) => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            let said = match other {
                WorkerToMaster::Hello { pid, .. } => pid,
                _ => 0,
            };
            return WorkerEnd::Crashed(format!("its hello claims pid {said}"));
        }
        Err(e) => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            return WorkerEnd::Crashed(format!("no valid hello: {e}"));
        }
    };
    let tx = channel.sender();

    // Everything the worker needs before it can serve, in order.
    match listener_fds(master) {
        Ok((kinds, fds)) => {
            let _ = tx.send_with_fds(&MasterToWorker::Listeners { kinds }, fds);
        }
        Err(e) => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            return WorkerEnd::Crashed(format!("cannot duplicate listener sockets: {e}"));
        }
    }
    {
        // Rendering the page takes the table lock itself: do it first.
        let status_page = master.status_page_snapshot();
        // Registration and the initial state push happen under the table lock so that no
        // route update can slip between the snapshot and the registration.
        let mut table = master.workers.lock().unwrap_or_else(|e| e.into_inner());
        let routes = master.route_table_snapshot();
        table.learn(&routes);
        let first_epoch = routes.epoch;
        let _ = tx.send(&MasterToWorker::Certs(master.certs_snapshot()));
        let _ = tx.send(&MasterToWorker::AcmeTokens(master.acme.tokens()));
        let _ = tx.send(&MasterToWorker::Routes(routes));
        let _ = tx.send(&status_page);
        let uid = master
            .users
            .as_ref()
            .map(|u| u.proxy.uid)
            .unwrap_or_else(|| nix::unistd::getuid().as_raw());
        table.entries.push(WorkerEntry {
            index,
            generation,
            pid,
            uid,
            started: Instant::now(),
            state: ProcState::Starting,
            tx,
            applied_epoch: 0,
            first_epoch,
            removed_in_flight: HashMap::new(),
            reports: WorkerReports::default(),
            retired: retired.clone(),
            ready_tx: ready,
        });
    }

    let end = read_loop(master, &mut channel, pid, index).await;
    if let Some(reason) = &end {
        // A broken rule or a worker that does not read: said once, with the worker named.
        tracing::warn!(worker = index, pid, reason = %reason, "ending proxy worker");
    }
    // The worker is gone or misbehaved: make sure the process is too.
    let _ = child.start_kill();
    let status = child.wait().await;
    drop(channel);
    {
        let mut table = master.workers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(pos) = table.entries.iter().position(|w| w.pid == pid) {
            let entry = table.entries.remove(pos);
            let reports = entry.reports;
            for c in reports.counters {
                let t = table
                    .retired_totals
                    .entry((c.app, c.instance_id))
                    .or_default();
                *t = t.saturating_add(c.requests_total);
            }
            add_http(&mut table.retired_http, &reports.http);
            add_edge(&mut table.retired_edge, &reports.edge);
            add_cache_counters(&mut table.retired_cache, &reports.cache);
        }
    }
    master.on_workers_changed();
    if retired.load(Ordering::SeqCst) {
        return WorkerEnd::Retired;
    }
    match (end, status) {
        (Some(reason), _) => WorkerEnd::Crashed(reason),
        (None, Ok(st)) => WorkerEnd::Crashed(format!("exited: {st}")),
        (None, Err(e)) => WorkerEnd::Crashed(e.to_string()),
    }
}

/// Why the worker must end (a broken channel, a frame that breaks the rules), or `None` at
/// a clean EOF.
async fn read_loop(
    master: &Arc<Master>,
    channel: &mut Channel<WorkerToMaster, MasterToWorker>,
    pid: u32,
    index: u32,
) -> Option<String> {
    loop {
        let msg = match channel.recv().await {
            Ok(Some((msg, _))) => msg,
            Ok(None) => return None,
            Err(e) => return Some(e.to_string()),
        };
        {
            // Checked against what the master knows and what this worker said before,
            // before anything of the frame is kept or acted on.
            let mut table = master.workers.lock().unwrap_or_else(|e| e.into_inner());
            let table = &mut *table;
            let known = table.known.lock().unwrap_or_else(|e| e.into_inner());
            let Some(w) = table.entries.iter_mut().find(|w| w.pid == pid) else {
                return Some("the worker is no longer registered".into());
            };
            if let Err(v) = check_worker_frame(&msg, &*known, &w.reports) {
                return Some(format!("invalid frame: {v}"));
            }
            w.absorb(&msg);
            w.reports.record(&msg);
        }
        match msg {
            WorkerToMaster::Hello { .. } => {}
            WorkerToMaster::Ready => {
                let ready_tx = {
                    let mut table = master.workers.lock().unwrap_or_else(|e| e.into_inner());
                    match table.entries.iter_mut().find(|w| w.pid == pid) {
                        Some(w) => {
                            if w.state == ProcState::Starting {
                                w.state = ProcState::Active;
                            }
                            w.ready_tx.take()
                        }
                        None => None,
                    }
                };
                tracing::info!(worker = index, pid, "proxy worker ready");
                if let Some(tx) = ready_tx {
                    let _ = tx.send(());
                }
                master.on_workers_changed();
            }
            // Kept above, with the counts of a table acknowledgement.
            WorkerToMaster::RoutesApplied { .. } | WorkerToMaster::TableApplied { .. } => {
                master.on_workers_changed();
            }
            WorkerToMaster::Wake { app } => master.on_wake(app),
            WorkerToMaster::Counters(_) => master.on_counters(),
            // Recorded above.
            WorkerToMaster::HttpStats(_)
            | WorkerToMaster::EdgeStats(_)
            | WorkerToMaster::CacheStats(_) => {}
            WorkerToMaster::CacheInvalidate(inv) => {
                // Fan out to every other serving worker, encoded once.
                let frame = match Encoded::new(&MasterToWorker::CacheInvalidate(inv)) {
                    Ok(f) => f,
                    Err(e) => return Some(format!("invalid frame: {e}")),
                };
                let table = master.workers.lock().unwrap_or_else(|e| e.into_inner());
                for w in table
                    .entries
                    .iter()
                    .filter(|w| w.pid != pid && w.state != ProcState::Draining)
                {
                    let _ = w.tx.send_encoded(&frame);
                }
            }
        }
    }
}

/// Starts the boot workers and waits (bounded) until each reported ready.
pub async fn start_all(master: &Arc<Master>) -> usize {
    let n = master.settings.workers as u32;
    master
        .workers
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .generation = 1;
    let mut waits = Vec::new();
    for index in 0..n {
        let (tx, rx) = oneshot::channel();
        supervise(master.clone(), index, 1, Some(tx));
        waits.push(rx);
    }
    let mut ready = 0;
    for rx in waits {
        if tokio::time::timeout(READY_TIMEOUT, rx)
            .await
            .map(|r| r.is_ok())
            .unwrap_or(false)
        {
            ready += 1;
        }
    }
    ready
}

#[derive(Debug, thiserror::Error)]
pub enum RestartError {
    #[error("Worker restart already in progress")]
    InProgress,
    #[error("Worker restart failed: worker {index} (generation {generation}) did not become ready within 10 s; previous workers keep serving")]
    NotReady { index: u32, generation: u32 },
}

/// Rolling restart (docs/architecture.md, "Restarts and upgrades"): one index at a time, new
/// first, then the old one drains.
pub async fn restart_all(master: &Arc<Master>) -> Result<(u32, usize), RestartError> {
    let generation = {
        let mut table = master.workers.lock().unwrap_or_else(|e| e.into_inner());
        if table.restart_in_progress {
            return Err(RestartError::InProgress);
        }
        table.restart_in_progress = true;
        table.generation += 1;
        table.generation
    };
    let result = restart_rounds(master, generation).await;
    master
        .workers
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .restart_in_progress = false;
    result.map(|n| (generation, n))
}

async fn restart_rounds(master: &Arc<Master>, generation: u32) -> Result<usize, RestartError> {
    let n = master.settings.workers as u32;
    for index in 0..n {
        let (tx, rx) = oneshot::channel();
        let new_retired = supervise(master.clone(), index, generation, Some(tx));
        let ok = tokio::time::timeout(READY_TIMEOUT, rx)
            .await
            .map(|r| r.is_ok())
            .unwrap_or(false);
        if !ok {
            new_retired.store(true, Ordering::SeqCst);
            let table = master.workers.lock().unwrap_or_else(|e| e.into_inner());
            for w in table
                .entries
                .iter()
                .filter(|w| w.index == index && w.generation == generation)
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(w.pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            return Err(RestartError::NotReady { index, generation });
        }
        let mut table = master.workers.lock().unwrap_or_else(|e| e.into_inner());
        table.rolling_restarts += 1;
        for w in table
            .entries
            .iter_mut()
            .filter(|w| w.index == index && w.generation < generation)
        {
            w.retired.store(true, Ordering::SeqCst);
            w.state = ProcState::Draining;
            let _ = w.tx.send(&MasterToWorker::Drain {
                deadline_ms: DRAIN_DEADLINE.as_millis() as u64,
            });
        }
    }
    Ok(n as usize)
}

/// Tells every worker to drain (shutdown).
pub fn drain_all(master: &Master, deadline: Duration) {
    let mut table = master.workers.lock().unwrap_or_else(|e| e.into_inner());
    for w in table.entries.iter_mut() {
        w.retired.store(true, Ordering::SeqCst);
        w.state = ProcState::Draining;
        let _ = w.tx.send(&MasterToWorker::Drain {
            deadline_ms: deadline.as_millis() as u64,
        });
    }
}

/// Waits until no worker process is left, up to `limit`.
pub async fn wait_all_gone(master: &Master, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if master
            .workers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entries
            .is_empty()
        {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
