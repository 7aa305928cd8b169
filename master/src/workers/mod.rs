//! The worker set: the proxy workers the master feeds, their drain handshake and their
//! reports. Starting and watching the processes is `crate::supervisor`'s job; this module is
//! what the rest of the master reads and broadcasts through.

mod stats;
mod table;

pub use table::{ProcState, WorkerEntry, WorkerTable, DRAIN_DEADLINE, READY_TIMEOUT};
