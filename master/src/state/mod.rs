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

pub use crate::clock::unix_now;
