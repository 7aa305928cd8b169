//! The IPC loop with the master: hello, then listeners, certificates, routes, pages, wake
//! results and drain, over the same [`Channel`] every role uses (its bounded queue carries
//! this worker's messages).

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tako_ipc::{
    Channel, ChannelError, Limits, ListenerKind, MasterToWorker, WorkerToMaster, IPC_VERSION,
};
use tokio::net::UnixStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use crate::internal_host::StatusSnapshot;
use crate::listeners::{self, Server};
use crate::shared::Shared;
use crate::table::Table;
use crate::tls;

/// How long a worker whose master vanished keeps finishing requests.
pub const ORPHAN_DRAIN: Duration = Duration::from_secs(5);
/// Counters go out at most this often.
pub const COUNTERS_PERIOD: Duration = Duration::from_secs(1);

pub async fn run(ipc: UnixStream) -> i32 {
    let hello = WorkerToMaster::Hello {
        version: IPC_VERSION,
        pid: std::process::id(),
    };
    let opened = Channel::<MasterToWorker, WorkerToMaster>::open(ipc, &hello, Limits::CHILD).await;
    let (mut channel, config) = match opened {
        Ok((channel, MasterToWorker::Hello { config, .. })) => (channel, config),
        // `open` returns only a hello.
        Ok(_) => return 1,
        Err(ChannelError::ClosedBeforeHello) => {
            tracing::info!("Master closed the IPC channel before hello");
            return 0;
        }
        Err(error) => {
            tracing::error!(%error, "No usable hello from the master; refusing to run");
            return 1;
        }
    };
    tracing::info!(
        worker = config.index,
        generation = config.generation,
        "Worker connected to the master"
    );
    // Before the first certificate, route or network byte: the sandbox binds this thread and
    // the threads it starts, and this is the only thread so far.
    if !crate::sandbox::enter(&config.sandbox) {
        return 1;
    }
    let shared = Arc::new(Shared::new(config, channel.sender()));
    let tls_config = match tls::server_config(Arc::clone(&shared.certs)) {
        Ok(c) => c,
        Err(error) => {
            tracing::error!(%error, "TLS configuration failed");
            return 1;
        }
    };
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let tracker = Arc::clone(&shared.conns);
    let server = Arc::new(Server::new(
        Arc::clone(&shared),
        TlsAcceptor::from(tls_config),
        shutdown_rx,
        Arc::clone(&tracker),
    ));
    let counters_task = tokio::spawn(counters_loop(Arc::clone(&shared)));

    let mut state = Control {
        shared: Arc::clone(&shared),
        server,
        pending: Vec::new(),
        listening: false,
        certs: false,
        routed: false,
        ready_sent: false,
    };
    let mut deadline: Option<Instant> = None;
    let mut ipc_open = true;
    loop {
        tokio::select! {
            msg = channel.recv(), if ipc_open => match msg {
                Ok(Some((msg, fds))) => {
                    if let Some(d) = state.handle(msg, fds) {
                        if deadline.is_none() {
                            tracing::info!(deadline_ms = d.as_millis() as u64, connections = tracker.active(), "Draining");
                        }
                        let at = Instant::now() + d;
                        deadline = Some(deadline.map_or(at, |old| old.min(at)));
                        let _ = shutdown_tx.send(true);
                    }
                }
                Ok(None) | Err(_) => {
                    if let Err(error) = &msg {
                        tracing::error!(%error, "IPC channel to the master failed");
                    }
                    tracing::info!(connections = tracker.active(), "Master gone; finishing in-flight requests");
                    ipc_open = false;
                    let at = Instant::now() + ORPHAN_DRAIN;
                    deadline = Some(deadline.map_or(at, |old| old.min(at)));
                    let _ = shutdown_tx.send(true);
                }
            },
            _ = tracker.wait_idle(), if deadline.is_some() => {
                tracing::info!("All connections finished");
                break;
            }
            _ = sleep_until_opt(deadline) => {
                tracing::warn!(connections = tracker.active(), "Drain deadline reached; closing remaining connections");
                break;
            }
        }
    }
    counters_task.abort();
    if ipc_open {
        // Final totals, so the master's sums include this worker's last requests.
        send_changed_stats(&shared);
        let _ = tokio::time::timeout(Duration::from_millis(500), shared.flush()).await;
    }
    0
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

struct Control {
    shared: Arc<Shared>,
    server: Arc<Server>,
    /// Listeners received but not served yet: accepting starts only once certificates and
    /// routes are in, so no connection meets an empty table or a handshake without a
    /// certificate (a new worker in a rolling restart, a master booting on sockets kept in
    /// the FD store with connections already queued).
    pending: Vec<(std::net::TcpListener, ListenerKind)>,
    listening: bool,
    certs: bool,
    routed: bool,
    ready_sent: bool,
}

impl Control {
    /// Applies one message; returns the drain deadline for `Drain`.
    fn handle(&mut self, msg: MasterToWorker, fds: Vec<OwnedFd>) -> Option<Duration> {
        match msg {
            MasterToWorker::Hello { .. } => {
                tracing::warn!("Ignoring a second hello from the master");
            }
            MasterToWorker::ClientTable { geometry, column } => {
                self.client_table(geometry, column, fds)
            }
            MasterToWorker::Listeners { kinds } => self.listeners(kinds, fds),
            MasterToWorker::Certs(entries) => {
                let loaded = self.shared.certs.replace(&entries);
                tracing::info!(loaded, offered = entries.len(), "Certificates applied");
                self.certs = true;
            }
            MasterToWorker::Routes(table) => {
                let compiled = Arc::new(Table::build(
                    &table,
                    &self.shared.rotation,
                    &self.shared.counters,
                ));
                self.shared.cache.routes_changed(&table);
                let old = self.shared.table.swap(Arc::clone(&compiled));
                // The new table is in place before the old instances are marked removed: a
                // request that finds its pick removed reloads the table and gets this one.
                let gone = old.removed_by(&compiled);
                {
                    let _order = self.shared.counters.report_order();
                    let removed = self.shared.counters.retire(&gone);
                    tracing::debug!(
                        epoch = table.epoch,
                        apps = table.apps.len(),
                        removed = removed.len(),
                        in_flight = removed.iter().map(|r| u64::from(r.in_flight)).sum::<u64>(),
                        "Routes applied"
                    );
                    self.shared.send(WorkerToMaster::TableApplied {
                        epoch: table.epoch,
                        removed,
                    });
                }
                self.shared.holds.notify();
                self.routed = true;
            }
            MasterToWorker::StatusPage {
                body,
                public_body,
                healthy,
            } => {
                self.shared.status.store(Some(Arc::new(StatusSnapshot {
                    body: Bytes::from(body),
                    public_body: Bytes::from(public_body),
                    healthy,
                })));
            }
            MasterToWorker::MetricsPage { body } => {
                self.shared.metrics.store(Some(Arc::new(Bytes::from(body))));
            }
            MasterToWorker::WakeResult { app, outcome } => {
                tracing::info!(%app, ?outcome, "Wake result");
                self.shared.holds.wake_result(&app, outcome);
            }
            MasterToWorker::Drain { deadline_ms } => {
                return Some(Duration::from_millis(deadline_ms));
            }
            MasterToWorker::PurgeApp { app } => self.shared.cache.purge_app(&app),
            MasterToWorker::CacheInvalidate(inv) => self.shared.cache.invalidate(&inv),
            MasterToWorker::AcmeTokens(tokens) => {
                let count = tokens.len();
                let table = tokens
                    .into_iter()
                    .map(|(token, key_auth)| (token, Bytes::from(key_auth)))
                    .collect();
                self.shared.acme_tokens.store(Arc::new(table));
                tracing::debug!(count, "ACME tokens applied");
            }
        }
        if self.certs && self.routed && !self.pending.is_empty() {
            self.serve_pending();
        }
        if self.listening && self.routed && !self.ready_sent {
            self.ready_sent = true;
            self.shared.send(WorkerToMaster::Ready);
            tracing::info!("Worker ready");
        }
        None
    }

    fn client_table(
        &mut self,
        geometry: tako_ipc::client_table::Geometry,
        column: u16,
        fds: Vec<OwnedFd>,
    ) {
        let Some(fd) = fds.first() else {
            tracing::error!(
                "Per-client table sent without its descriptor; serving without per-client limits"
            );
            return;
        };
        let limits = self.shared.config.client_limits;
        let counters = Arc::clone(&self.shared.counters);
        if let Some(limiter) =
            crate::client_limits::Limiter::open(fd, geometry, column, limits, counters)
        {
            // One per process, for the process's life: connections and requests hold plain
            // references to it.
            let limiter: &'static _ = Box::leak(Box::new(limiter));
            if self.shared.limiter.set(limiter).is_err() {
                tracing::warn!("Ignoring a second per-client table from the master");
            } else {
                tracing::info!(column, ?limits, "Per-client limits on");
            }
        }
    }

    fn listeners(&mut self, kinds: Vec<ListenerKind>, fds: Vec<OwnedFd>) {
        if kinds.len() != fds.len() {
            tracing::error!(
                kinds = kinds.len(),
                fds = fds.len(),
                "Listener message and descriptors disagree; serving the pairs that match"
            );
        }
        for (kind, fd) in kinds.into_iter().zip(fds) {
            self.pending.push((std::net::TcpListener::from(fd), kind));
        }
    }

    fn serve_pending(&mut self) {
        for (listener, kind) in self.pending.drain(..) {
            match listeners::spawn(listener, kind, Arc::clone(&self.server)) {
                Ok(()) => self.listening = true,
                Err(error) => tracing::error!(?kind, %error, "Cannot serve an inherited listener"),
            }
        }
    }
}

/// Sends every counter set that changed since the last call.
fn send_changed_stats(shared: &Shared) {
    {
        let _order = shared.counters.report_order();
        if let Some(snapshot) = shared.counters.take_if_dirty() {
            shared.send(WorkerToMaster::Counters(snapshot));
        }
    }
    if let Some(stats) = shared.cache.take_stats_if_dirty() {
        shared.send(WorkerToMaster::CacheStats(stats));
    }
    if let Some(stats) = shared.counters.take_http_if_dirty() {
        shared.send(WorkerToMaster::HttpStats(stats));
    }
    if let Some(stats) = shared.counters.take_edge_if_dirty() {
        shared.send(WorkerToMaster::EdgeStats(stats));
    }
}

/// Reports every period, and at once when the last request to a removed instance ended:
/// the master is waiting for that zero to stop the instance.
async fn counters_loop(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(COUNTERS_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shared.counters.drained.notified() => {}
        }
        send_changed_stats(&shared);
    }
}
