//! Proxy workers: start, feed, watch, restart on crash, and roll to a new generation.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tako_ipc::{
    FrameReader, FrameWriter, InstanceCounters, MasterToWorker, Outgoing, WorkerConfig,
    WorkerToMaster, IPC_VERSION,
};
use tokio::sync::{mpsc, oneshot};

use crate::core::Master;
use crate::role::Role;
use crate::supervisor::next_frame;
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
    pub tx: mpsc::UnboundedSender<Outgoing<MasterToWorker>>,
    pub applied_epoch: u64,
    pub counters: Vec<InstanceCounters>,
    pub cache: tako_ipc::CacheStats,
    pub http: Vec<tako_ipc::AppHttpStats>,
    pub edge: tako_ipc::EdgeStats,
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
}

impl WorkerTable {
    /// Sends to every worker that is not draining.
    pub fn broadcast(&self, msg: &MasterToWorker) {
        for w in self
            .entries
            .iter()
            .filter(|w| w.state != ProcState::Draining)
        {
            let _ = w.tx.send(Outgoing::from(msg.clone()));
        }
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
            add_http(&mut out, &w.http);
        }
        out.sort_by(|a, b| a.app.cmp(&b.app));
        out
    }

    /// TLS handshakes and upstream errors summed over all workers, past ones included.
    pub fn edge_totals(&self) -> tako_ipc::EdgeStats {
        let mut t = self.retired_edge.clone();
        for w in &self.entries {
            add_edge(&mut t, &w.edge);
        }
        t.upstream_errors.sort_by(|a, b| a.app.cmp(&b.app));
        t
    }

    /// Cache counters summed over all workers, past ones included.
    pub fn cache_totals(&self) -> tako_ipc::CacheStats {
        let mut t = self.retired_cache.clone();
        for w in &self.entries {
            t.hits += w.cache.hits;
            t.misses += w.cache.misses;
            t.bypasses += w.cache.bypasses;
            t.stores += w.cache.stores;
            t.evictions += w.cache.evictions;
            t.invalidations += w.cache.invalidations;
            t.bytes += w.cache.bytes;
            t.entries += w.cache.entries;
        }
        t
    }

    /// Per instance: requests proxied (all workers, past ones included) and in-flight now.
    pub fn instance_totals(&self) -> HashMap<(String, u32), (u64, u32)> {
        let mut out: HashMap<(String, u32), (u64, u32)> = HashMap::new();
        for (k, v) in &self.retired_totals {
            out.entry(k.clone()).or_default().0 += v;
        }
        for w in &self.entries {
            for c in &w.counters {
                let e = out.entry((c.app.clone(), c.instance_id)).or_default();
                e.0 += c.requests_total;
                e.1 += c.in_flight;
            }
        }
        out
    }
}

fn add_edge(into: &mut tako_ipc::EdgeStats, from: &tako_ipc::EdgeStats) {
    into.tls_handshakes_ok += from.tls_handshakes_ok;
    into.tls_handshakes_failed += from.tls_handshakes_failed;
    for s in &from.upstream_errors {
        let pos = match into.upstream_errors.iter().position(|t| t.app == s.app) {
            Some(p) => p,
            None => {
                into.upstream_errors.push(tako_ipc::AppUpstreamErrors {
                    app: s.app.clone(),
                    ..Default::default()
                });
                into.upstream_errors.len() - 1
            }
        };
        let t = &mut into.upstream_errors[pos];
        t.connect += s.connect;
        t.timeout += s.timeout;
        t.failed += s.failed;
    }
}

fn add_http(into: &mut Vec<tako_ipc::AppHttpStats>, from: &[tako_ipc::AppHttpStats]) {
    for s in from {
        let pos = match into.iter().position(|t| t.app == s.app) {
            Some(p) => p,
            None => {
                into.push(tako_ipc::AppHttpStats {
                    app: s.app.clone(),
                    ..Default::default()
                });
                into.len() - 1
            }
        };
        let t = &mut into[pos];
        for i in 0..t.classes.len() {
            t.classes[i] += s.classes[i];
        }
        for i in 0..t.buckets.len() {
            t.buckets[i] += s.buckets[i];
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
        // cache.md §1: floor(budget / workers) each.
        cache_bytes: s.cache_bytes / (s.workers.max(1) as u64),
        h2_timeouts: s.h2_timeouts,
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
    let role = Role::Worker {
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
    let (rd, wr) = spawned.ipc.into_split();
    let mut reader = FrameReader::<WorkerToMaster>::new(rd);
    let mut writer = FrameWriter::<MasterToWorker>::new(wr);
    let (tx, mut rx) = mpsc::unbounded_channel::<Outgoing<MasterToWorker>>();
    tokio::spawn(async move {
        while let Some(out) = rx.recv().await {
            if let Err(e) = writer.send_outgoing(&out).await {
                tracing::debug!(worker = index, error = %e, "worker channel closed while sending");
                break;
            }
        }
    });

    // Everything the worker needs before it can serve, in order.
    let _ = tx.send(
        MasterToWorker::Hello {
            version: IPC_VERSION,
            config: worker_config(master, index, generation),
        }
        .into(),
    );
    match listener_fds(master) {
        Ok((kinds, fds)) => {
            let _ = tx.send(Outgoing {
                msg: MasterToWorker::Listeners { kinds },
                fds,
            });
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
        let _ = tx.send(MasterToWorker::Certs(master.certs_snapshot()).into());
        let _ = tx.send(MasterToWorker::AcmeTokens(master.acme.tokens()).into());
        let _ = tx.send(MasterToWorker::Routes(master.route_table_snapshot()).into());
        let _ = tx.send(status_page.into());
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
            tx: tx.clone(),
            applied_epoch: 0,
            counters: Vec::new(),
            cache: tako_ipc::CacheStats::default(),
            http: Vec::new(),
            edge: tako_ipc::EdgeStats::default(),
            retired: retired.clone(),
            ready_tx: ready,
        });
    }

    let end = read_loop(master, &mut reader, pid, index).await;
    // The worker is gone or misbehaved: make sure the process is too.
    let _ = child.start_kill();
    let status = child.wait().await;
    {
        let mut table = master.workers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(pos) = table.entries.iter().position(|w| w.pid == pid) {
            let entry = table.entries.remove(pos);
            for c in entry.counters {
                *table
                    .retired_totals
                    .entry((c.app, c.instance_id))
                    .or_default() += c.requests_total;
            }
            let mut retired_http = std::mem::take(&mut table.retired_http);
            add_http(&mut retired_http, &entry.http);
            table.retired_http = retired_http;
            let mut retired_edge = std::mem::take(&mut table.retired_edge);
            add_edge(&mut retired_edge, &entry.edge);
            table.retired_edge = retired_edge;
            let r = &mut table.retired_cache;
            r.hits += entry.cache.hits;
            r.misses += entry.cache.misses;
            r.bypasses += entry.cache.bypasses;
            r.stores += entry.cache.stores;
            r.evictions += entry.cache.evictions;
            r.invalidations += entry.cache.invalidations;
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

/// Returns a protocol error, or `None` at EOF.
async fn read_loop(
    master: &Arc<Master>,
    reader: &mut FrameReader<WorkerToMaster>,
    pid: u32,
    index: u32,
) -> Option<String> {
    let mut greeted = false;
    loop {
        let msg = match next_frame(
            reader.recv().await,
            greeted,
            WorkerToMaster::is_hello,
            "worker",
        ) {
            Ok(Some(msg)) => msg,
            Ok(None) => return None,
            Err(e) => return Some(e),
        };
        match msg {
            WorkerToMaster::Hello { version, .. } => {
                if version != IPC_VERSION {
                    return Some(format!(
                        "IPC version mismatch: worker={version} master={IPC_VERSION}"
                    ));
                }
                greeted = true;
            }
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
            WorkerToMaster::RoutesApplied { epoch } => {
                {
                    let mut table = master.workers.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(w) = table.entries.iter_mut().find(|w| w.pid == pid) {
                        w.applied_epoch = w.applied_epoch.max(epoch);
                    }
                }
                master.on_workers_changed();
            }
            WorkerToMaster::Wake { app } => master.on_wake(app),
            WorkerToMaster::Counters(counters) => {
                {
                    let mut table = master.workers.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(w) = table.entries.iter_mut().find(|w| w.pid == pid) {
                        w.counters = counters;
                    }
                }
                master.on_counters();
            }
            WorkerToMaster::HttpStats(stats) => {
                let mut table = master.workers.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(w) = table.entries.iter_mut().find(|w| w.pid == pid) {
                    w.http = stats;
                }
            }
            WorkerToMaster::EdgeStats(stats) => {
                let mut table = master.workers.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(w) = table.entries.iter_mut().find(|w| w.pid == pid) {
                    w.edge = stats;
                }
            }
            WorkerToMaster::CacheStats(stats) => {
                let mut table = master.workers.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(w) = table.entries.iter_mut().find(|w| w.pid == pid) {
                    w.cache = stats;
                }
            }
            WorkerToMaster::CacheInvalidate(inv) => {
                // Fan out to every other serving worker.
                let table = master.workers.lock().unwrap_or_else(|e| e.into_inner());
                for w in table
                    .entries
                    .iter()
                    .filter(|w| w.pid != pid && w.state != ProcState::Draining)
                {
                    let _ =
                        w.tx.send(MasterToWorker::CacheInvalidate(inv.clone()).into());
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

/// Rolling restart (upgrade-and-restarts.md §6): one index at a time, new first, then the
/// old one drains.
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
            let _ = w.tx.send(
                MasterToWorker::Drain {
                    deadline_ms: DRAIN_DEADLINE.as_millis() as u64,
                }
                .into(),
            );
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
        let _ = w.tx.send(
            MasterToWorker::Drain {
                deadline_ms: deadline.as_millis() as u64,
            }
            .into(),
        );
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
