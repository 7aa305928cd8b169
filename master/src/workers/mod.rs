//! The worker set: the proxy workers the master feeds, their drain handshake and their
//! reports, behind one lock. Starting and watching the processes is `crate::supervisor`'s
//! job; this module is what the rest of the master reads and broadcasts through.

pub mod client_columns;
mod stats;
mod table;

use std::sync::{Mutex, MutexGuard};

use tako_ipc::MasterToWorker;

pub use table::{ProcState, WorkerEntry, WorkerTable, DRAIN_DEADLINE, READY_TIMEOUT};

use crate::sync::lock;

#[derive(Default)]
pub struct WorkerSet {
    table: Mutex<WorkerTable>,
}

impl WorkerSet {
    /// The table under its lock. Held while a new worker registers and gets its first
    /// snapshots and while a broadcast goes out, so no worker misses a message
    /// (docs/architecture.md, "Lock order in the master").
    pub fn lock(&self) -> MutexGuard<'_, WorkerTable> {
        lock(&self.table)
    }

    /// Sends `msg` to every worker (see [`WorkerTable::broadcast`]).
    pub fn broadcast(&self, msg: &MasterToWorker) {
        self.lock().broadcast(msg);
    }

    /// The lowest epoch every serving worker has applied (`u64::MAX` with no worker: there
    /// is nobody to wait for).
    pub fn applied_epoch(&self) -> u64 {
        self.lock().min_applied_epoch().unwrap_or(u64::MAX)
    }

    /// Whether no worker can send another request to instance `id` of `app`, which the
    /// table of `epoch` took out of rotation.
    pub fn released(&self, app: &str, id: u32, epoch: u64) -> bool {
        self.lock().released(app, id, epoch)
    }
}
