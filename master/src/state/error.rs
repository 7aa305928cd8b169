use std::path::PathBuf;

use rusqlite::ErrorCode;

/// Everything that can go wrong with the durable state. The startup variants are the texts
/// docs/operations.md lists under "Troubleshooting"; the master prints them and exits 5.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(
        "State database {file} is corrupt: {detail}. Restore a backup ({file}.bak-*) or move the file away to start with an empty state.",
        file = .file.display()
    )]
    Corrupt { file: PathBuf, detail: String },

    #[error(
        "State database {file} has schema version {version}; this tako-server supports up to 2. Install a newer tako-server or restore a backup.",
        file = .file.display()
    )]
    NewerSchema { file: PathBuf, version: i64 },

    /// `schema_meta.min_binary_version` names a newer release than this binary. The text
    /// follows the newer-schema one.
    #[error(
        "State database {file} was last migrated by tako-server {min_binary_version}; this is tako-server {binary_version}. Install a newer tako-server or restore a backup.",
        file = .file.display()
    )]
    NewerBinary {
        file: PathBuf,
        min_binary_version: String,
        binary_version: String,
    },

    #[error("State database {file} is locked: {err}", file = .file.display())]
    Locked { file: PathBuf, err: String },

    /// `permission_denied` lets the caller decide whether a candidate-shaped process becomes a
    /// stand-in (docs/operations.md, "Upgrade") instead of exiting.
    #[error("Cannot open state database {file}: {err}", file = .file.display())]
    CannotOpen {
        file: PathBuf,
        err: String,
        permission_denied: bool,
    },

    #[error("Another tako-server (pid {pid}) is already running with data dir {dir}", dir = .dir.display())]
    AlreadyRunning { pid: String, dir: PathBuf },

    #[error("Cannot use lock file {path}: {err}", path = .path.display())]
    LockFile { path: PathBuf, err: String },

    /// A run-time database error: what was being read or written, in which file. Callers
    /// wrap the text (`Deploy failed: could not save state: <err>`).
    #[error("cannot {op} in {file}: {source}", file = .file.display())]
    Db {
        op: &'static str,
        file: PathBuf,
        #[source]
        source: rusqlite::Error,
    },

    /// A stored value that does not decode (e.g. broken JSON in `command_json`).
    #[error("{0}")]
    Decode(String),

    #[error("state thread is not running")]
    ThreadGone,

    #[error("cannot start the state thread: {0}")]
    ThreadSpawn(String),
}

impl StateError {
    /// A run-time SQLite failure of `op` on `file`.
    pub(crate) fn db(op: &'static str, file: &std::path::Path, source: rusqlite::Error) -> Self {
        StateError::Db {
            op,
            file: file.to_path_buf(),
            source,
        }
    }

    /// True for a permission problem opening the state file: the only startup failure that
    /// lets a candidate-shaped process continue as a stand-in.
    pub fn is_permission_denied(&self) -> bool {
        matches!(
            self,
            StateError::CannotOpen {
                permission_denied: true,
                ..
            }
        )
    }

    /// Maps an error met while opening, configuring or migrating the file to its startup
    /// text.
    pub(crate) fn at_open(file: &std::path::Path, err: rusqlite::Error) -> StateError {
        let file = file.to_path_buf();
        match err.sqlite_error_code() {
            Some(ErrorCode::DatabaseCorrupt) | Some(ErrorCode::NotADatabase) => {
                StateError::Corrupt {
                    file,
                    detail: err.to_string(),
                }
            }
            Some(ErrorCode::DatabaseBusy) | Some(ErrorCode::DatabaseLocked) => StateError::Locked {
                file,
                err: err.to_string(),
            },
            Some(ErrorCode::PermissionDenied) | Some(ErrorCode::ReadOnly) => {
                StateError::CannotOpen {
                    file,
                    err: err.to_string(),
                    permission_denied: true,
                }
            }
            _ => StateError::CannotOpen {
                file,
                err: err.to_string(),
                permission_denied: false,
            },
        }
    }
}
