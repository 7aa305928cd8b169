//! Durable state of the master (docs/architecture.md, "State"): the SQLite file with its
//! schema and migrations, the data-dir lock, and the thread that owns the connection.

mod error;
mod handle;
mod lock;
mod schema;
mod store;
mod types;

#[cfg(test)]
mod tests;

pub use error::StateError;
pub use handle::StateHandle;
pub use lock::DataDirLock;
pub use store::{Store, STATE_FILE};
pub use types::{EnterOutcome, ExitOutcome, ReleaseKind, ReleaseResult, ServerMode, StoredApp};

/// Seconds since the Unix epoch; 0 if the clock is before it.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
