//! Proxy workers: start, feed, watch, restart on crash, and roll to a new generation.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tako_ipc::validate::{check_worker_frame, WorkerReports};
use tako_ipc::{
    Channel, Encoded, Limits, MasterToWorker, WorkerConfig, WorkerToMaster, IPC_VERSION,
};
use tokio::sync::oneshot;

use crate::master::Master;
use crate::role::ChildRole;
use crate::supervisor::spawn::{restart_delay, spawn_role};
use crate::workers::{ProcState, WorkerEntry, DRAIN_DEADLINE, READY_TIMEOUT};

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
        compression: s.compression,
        client_limits: s.client_limits,
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

/// A worker's column of the per-client table: given back (and cleared) when dropped, which
/// [`run_one`] does only after the worker's process was reaped.
struct ColumnLease<'a>(u16, &'a crate::workers::client_columns::ClientColumns);

impl Drop for ColumnLease<'_> {
    fn drop(&mut self) {
        self.1.give_back(self.0);
    }
}

/// A free column for a new worker (`None` when the table is off), waiting while every column
/// is held by a live or draining worker.
async fn lease_column<'a>(
    master: &'a Master,
    retired: &AtomicBool,
) -> Result<Option<ColumnLease<'a>>, String> {
    let Some(columns) = &master.client_columns else {
        return Ok(None);
    };
    let mut logged = false;
    loop {
        if let Some(c) = columns.lease() {
            return Ok(Some(ColumnLease(c, columns)));
        }
        // A rolling restart that gave up on this worker, or a shutdown: start nothing.
        if master.is_shutting_down() || retired.load(Ordering::SeqCst) {
            return Err("no free per-client table column".into());
        }
        if !logged {
            logged = true;
            tracing::warn!("Every per-client table column is held by a running or draining worker; the next worker waits for one");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
                    master.workers.lock().crash_restarts += 1;
                    tokio::time::sleep(delay).await;
                    if master.is_shutting_down() || slot_retired.load(Ordering::SeqCst) {
                        break;
                    }
                    // A crash replacement takes the current round.
                    gen = master.workers.lock().generation;
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
    // The worker's column of the per-client table, held until its process is reaped.
    let column = match lease_column(master, &retired).await {
        Ok(c) => c,
        Err(reason) => return WorkerEnd::Crashed(reason),
    };
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
    let child = spawned.child;
    master.workers.lock().starting += 1;
    let registered = register(
        master,
        child,
        pid,
        spawned.ipc,
        column.as_ref(),
        index,
        generation,
        &retired,
        ready,
    )
    .await;
    master.workers.lock().starting -= 1;
    let (mut channel, mut child) = match registered {
        Ok(pair) => pair,
        Err(end) => return end,
    };

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
        let mut table = master.workers.lock();
        if let Some(pos) = table.entries.iter().position(|w| w.pid == pid) {
            let entry = table.entries.remove(pos);
            table.retire(entry);
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

/// The hello, the per-client table, the listeners and the first state, then the entry in the
/// worker set. On failure the process is killed and reaped and the reason returned.
#[allow(clippy::too_many_arguments)]
async fn register(
    master: &Arc<Master>,
    mut child: tokio::process::Child,
    pid: u32,
    ipc: tokio::net::UnixStream,
    column: Option<&ColumnLease<'_>>,
    index: u32,
    generation: u32,
    retired: &Arc<AtomicBool>,
    ready: Option<oneshot::Sender<()>>,
) -> Result<
    (
        Channel<WorkerToMaster, MasterToWorker>,
        tokio::process::Child,
    ),
    WorkerEnd,
> {
    let hello = MasterToWorker::Hello {
        version: IPC_VERSION,
        config: worker_config(master, index, generation),
    };
    let opened = Channel::<WorkerToMaster, MasterToWorker>::open(ipc, &hello, Limits::MASTER).await;
    let channel = match opened {
        Ok((channel, WorkerToMaster::Hello { pid: said, .. })) if said == pid => channel,
        Ok((_, other)) => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            let said = match other {
                WorkerToMaster::Hello { pid, .. } => pid,
                _ => 0,
            };
            return Err(WorkerEnd::Crashed(format!("its hello claims pid {said}")));
        }
        Err(e) => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            return Err(WorkerEnd::Crashed(format!("no valid hello: {e}")));
        }
    };
    let tx = channel.sender();

    // Everything the worker needs before it can serve, in order.
    if let (Some(columns), Some(column)) = (&master.client_columns, column) {
        match columns.fd() {
            Ok(fd) => {
                let msg = MasterToWorker::ClientTable {
                    geometry: columns.geometry(),
                    column: column.0,
                };
                let _ = tx.send_with_fds(&msg, vec![fd]);
            }
            Err(error) => {
                tracing::error!(worker = index, %error, "Cannot share the per-client table; this worker serves without per-client limits");
            }
        }
    }
    match listener_fds(master) {
        Ok((kinds, fds)) => {
            let _ = tx.send_with_fds(&MasterToWorker::Listeners { kinds }, fds);
        }
        Err(e) => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            return Err(WorkerEnd::Crashed(format!(
                "cannot duplicate listener sockets: {e}"
            )));
        }
    }
    {
        // Rendering the pages takes the table lock itself: do it first. The metrics page
        // goes out now rather than with the next push, so a scrape of a new worker never
        // finds it without one.
        let status_page = master.status_page_snapshot();
        let metrics_page = MasterToWorker::MetricsPage {
            body: master.render_metrics(),
        };
        // Registration and the initial state push happen under the table lock so that no
        // route update can slip between the snapshot and the registration.
        let mut table = master.workers.lock();
        let routes = master.route_table_snapshot();
        table.learn(&routes);
        let first_epoch = routes.epoch;
        let _ = tx.send(&MasterToWorker::Certs(master.certs_snapshot()));
        let _ = tx.send(&MasterToWorker::AcmeTokens(master.acme.tokens()));
        let _ = tx.send(&MasterToWorker::Routes(routes));
        let _ = tx.send(&status_page);
        let _ = tx.send(&metrics_page);
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
        // A shutdown that began while this worker said hello drained only the workers
        // listed then: this one drains now, and the shutdown's wait sees it in the table.
        if master.is_shutting_down() {
            if let Some(w) = table.entries.last_mut() {
                w.retired.store(true, Ordering::SeqCst);
                w.state = ProcState::Draining;
                let _ = w.tx.send(&MasterToWorker::Drain {
                    deadline_ms: SHUTDOWN_DRAIN.as_millis() as u64,
                });
            }
        }
    }
    Ok((channel, child))
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
            let mut table = master.workers.lock();
            let table = &mut *table;
            let known = crate::sync::lock(&table.known);
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
                    let mut table = master.workers.lock();
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
                let table = master.workers.lock();
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
    master.workers.lock().generation = 1;
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
        let mut table = master.workers.lock();
        if table.restart_in_progress {
            return Err(RestartError::InProgress);
        }
        table.restart_in_progress = true;
        table.generation += 1;
        table.generation
    };
    let result = restart_rounds(master, generation).await;
    master.workers.lock().restart_in_progress = false;
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
            let table = master.workers.lock();
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
        let mut table = master.workers.lock();
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
/// How long a worker may take to finish its connections when the server stops.
pub const SHUTDOWN_DRAIN: Duration = Duration::from_secs(30);

pub fn drain_all(master: &Master, deadline: Duration) {
    let mut table = master.workers.lock();
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
        {
            let table = master.workers.lock();
            if table.entries.is_empty() && table.starting == 0 {
                return true;
            }
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
