//! The proxy workers the master knows: one entry per live worker process with its queue,
//! its drain handshake and its last reports, and the broadcasts to all of them.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tako_ipc::validate::{AppBook, WorkerReports};
use tako_ipc::{Encoded, MasterToWorker, RouteTable, Sender, WorkerToMaster};
use tokio::sync::oneshot;

use crate::sync::lock;

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
    pub ready_tx: Option<oneshot::Sender<()>>,
}

#[derive(Default)]
pub struct WorkerTable {
    pub entries: Vec<WorkerEntry>,
    /// The current restart round: 1 at boot, +1 per rolling restart.
    pub generation: u32,
    /// Request totals of workers that are gone, so counters never go backwards.
    pub retired_totals: HashMap<(String, u32), u64>,
    pub restart_in_progress: bool,
    /// Worker processes started but not yet in `entries` (their hello is under way): a
    /// shutdown waits for them too, or one could outlive the master.
    pub starting: u32,
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
    pub fn absorb(&mut self, msg: &WorkerToMaster) {
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
        let mut known = lock(&self.known);
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
}

/// A message's name for a log line (never its contents).
fn message_name(msg: &MasterToWorker) -> &'static str {
    match msg {
        MasterToWorker::Hello { .. } => "hello",
        MasterToWorker::ClientTable { .. } => "client table",
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
