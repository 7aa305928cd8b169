//! Durable state of the master (spec/state.md): the SQLite file with its schema and
//! migrations, the data-dir lock, and the thread that owns the connection.

// Until the master's orchestration calls in, parts of this API are only used by tests.
// Remove once main.rs uses it.
#![allow(dead_code, unused_imports)]

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
pub use lock::{DataDirLock, LOCK_FILE};
pub use schema::SCHEMA_VERSION;
pub use store::{Store, MAX_RELEASES_PER_APP, STATE_FILE};
pub use types::{
    EnterOutcome, ExitOutcome, ReleaseKind, ReleaseResult, ReleaseRow, ServerMode, StoredApp,
};

/// Seconds since the Unix epoch; 0 if the clock is before it.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
