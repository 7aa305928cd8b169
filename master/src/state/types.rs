use std::collections::BTreeMap;

/// One row of `apps` with its routes, as restore and the deploy switch see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredApp {
    pub name: String,
    pub version: String,
    /// Canonical release path (deploy `path`).
    pub path: String,
    /// Equal to `path`.
    pub cwd: String,
    /// Resolved argv.
    pub command: Vec<String>,
    /// Deploy env with merged secrets.
    pub env: BTreeMap<String, String>,
    /// Deploy `instances`; 0 means on-demand.
    pub min_instances: u8,
    /// Unshifted start of the app's port block.
    pub base_port: u16,
    pub idle_timeout_secs: u32,
    /// Read from the file; [`super::Store::commit_deploy`] always writes `false`.
    pub stopped: bool,
    /// Normalized route strings in deploy order.
    pub routes: Vec<String>,
    /// The app's own uid (and gid), root only; `None` until one is allocated. A deploy
    /// with `None` keeps the stored one.
    pub uid: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseKind {
    Deploy,
    Rollback,
}

impl ReleaseKind {
    pub fn as_db(self) -> &'static str {
        match self {
            ReleaseKind::Deploy => "deploy",
            ReleaseKind::Rollback => "rollback",
        }
    }

    pub fn from_db(s: &str) -> Option<ReleaseKind> {
        match s {
            "deploy" => Some(ReleaseKind::Deploy),
            "rollback" => Some(ReleaseKind::Rollback),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseResult {
    Success,
    Failed,
}

impl ReleaseResult {
    pub fn as_db(self) -> &'static str {
        match self {
            ReleaseResult::Success => "success",
            ReleaseResult::Failed => "failed",
        }
    }

    pub fn from_db(s: &str) -> Option<ReleaseResult> {
        match s {
            "success" => Some(ReleaseResult::Success),
            "failed" => Some(ReleaseResult::Failed),
            _ => None,
        }
    }
}

/// One row of `releases`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseRow {
    pub id: i64,
    pub app_name: String,
    pub version: String,
    pub path: String,
    pub kind: ReleaseKind,
    pub deployed_at_unix_secs: u64,
    pub result: ReleaseResult,
    pub error: Option<String>,
}

/// The durable `server_state.server_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerMode {
    Normal,
    Upgrading,
}

impl ServerMode {
    /// The stored and reported text (`server_info.mode`).
    pub fn as_str(self) -> &'static str {
        match self {
            ServerMode::Normal => "normal",
            ServerMode::Upgrading => "upgrading",
        }
    }
}

/// Result of `enter_upgrading` when the state could be read and written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnterOutcome {
    /// The lock was free and is now held by the caller; the mode is `upgrading`.
    Acquired,
    /// The caller already held it (idempotent); the mode is `upgrading`.
    AlreadyHeld,
    /// Someone else holds it (`unknown` when the owner is unreadable); nothing changed.
    HeldBy(String),
}

/// Result of `exit_upgrading` when the state could be read and written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitOutcome {
    /// The lock is released and the mode is `normal`.
    Released,
    /// The caller does not hold the lock, or there is none; nothing changed.
    NotHolder,
}
