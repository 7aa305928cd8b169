//! Why a management command failed. `Display` is the message of the error answer, word for
//! word as docs/management-protocol.md lists it; only the socket edge (`mgmt::server`) turns
//! a [`CommandError`] into a protocol line.
//!
//! Instance errors ("Instance errors" in docs/management-protocol.md) reach this layer as a
//! [`StartError`] from the instance lifecycle (`crate::lifecycle`); the variants that carry one
//! hold it as `detail`, and their message quotes its `Display`.

use serde_json::json;
use tako_protocol::request::PROTOCOL_VERSION;
use tako_protocol::validate::ValidationError;

use crate::apps::error::{ReleaseError, StartError};
use crate::beneath::WalkError;
use crate::datadir::ReleasePathError;
use crate::reexec::ReexecError;
use crate::state::StateError;
use crate::supervisor::workers::RestartError;

/// A command that did not do what it was asked. Whatever the variant, the app is left as it
/// was before the command.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// An app-changing command while the server is upgrading or handing over to a new
    /// master. `command` is the name as the message shows it (`update-secrets`).
    #[error("Server is upgrading; '{command}' is temporarily blocked. Please retry shortly.")]
    Upgrading { command: &'static str },

    /// A line read on an open connection while the server shuts down.
    #[error("Server is shutting down; '{command}' was not run.")]
    NotRun { command: &'static str },

    #[error(transparent)]
    Invalid(#[from] ValidationError),

    #[error("Protocol version mismatch: client={client} server={server}", server = PROTOCOL_VERSION)]
    ProtocolMismatch { client: u32 },

    #[error("Server is already upgrading (owner: {holder}).")]
    AlreadyUpgrading { holder: String },
    #[error("Failed to enter upgrading mode: {0}")]
    EnterUpgrading(#[source] StateError),
    #[error("Failed to exit upgrading mode: owner does not hold the upgrade lock.")]
    NotUpgradeHolder,
    #[error("Failed to exit upgrading mode: {0}")]
    ExitUpgrading(#[source] StateError),

    /// The app's operation lock is held by a deploy or rollback, and this is one too.
    #[error("Deploy already in progress for app '{app}'. Please wait and try again.")]
    DeployInProgress { app: String },
    /// The app's operation lock is held, and this is `reload`, `stop`, `delete` or
    /// `update_secrets`.
    #[error("Another operation is in progress for app '{app}'. Please wait and try again.")]
    AppBusy { app: String },

    #[error("App not found: {app}")]
    AppNotFound { app: String },

    /// The blocking task that checks a deploy's release path did not finish.
    #[error("Deploy failed: {0}")]
    ValidationTask(#[source] tokio::task::JoinError),
    #[error("Deploy failed: server is shutting down")]
    ShuttingDown,
    #[error("Invalid app release: {0}")]
    InvalidRelease(#[from] ReleaseError),
    /// First start of an on-demand app: its warm instance did not come up.
    #[error("Deploy failed: Warm instance startup failed: {detail}")]
    WarmStartFailed {
        #[source]
        detail: StartError,
    },
    /// First start of an always-on app: an instance did not come up.
    #[error("Deploy failed: {detail}")]
    StartFailed {
        #[source]
        detail: StartError,
    },
    /// Every port block is held by another app.
    #[error("Deploy failed: No free instance port for app '{app}'")]
    NoPortBlock { app: String },
    #[error("Deploy failed: could not save state: {0}")]
    DeploySave(#[source] StateError),
    /// A rolling update whose new instances failed; the old ones kept serving. The message
    /// is a JSON document (docs/management-protocol.md, "`deploy`", error 6).
    #[error("{}", rollback_document(app, error))]
    RolledBack { app: String, error: String },

    #[error("Rolling update failed: the app launcher is not running")]
    RolloutLauncherDown,
    #[error("Rolling update failed: the app launcher was lost")]
    InstallLauncherLost,
    #[error("Rolling update failed: the instance was lost")]
    RolloutInstanceLost,
    /// A reload's rollout could not clear the stored stop flag.
    #[error("Rolling update failed: could not save state: {0}")]
    RolloutSave(#[source] StateError),

    /// `reload` of an app with nothing running.
    #[error("Start failed: the app launcher is not running")]
    StartLauncherDown,
    #[error("Start failed: could not save state: {0}")]
    StartSave(#[source] StateError),
    #[error("Start failed: {detail}")]
    StartInstance {
        #[source]
        detail: StartError,
    },
    #[error("Start failed: the instance was lost")]
    StartInstanceLost,

    #[error("Stop failed: App not found: {app}")]
    StopNotFound { app: String },
    #[error("Stop failed: could not save state: {0}")]
    StopSave(#[source] StateError),
    #[error("Delete failed: {0}")]
    Delete(#[source] StateError),
    #[error("Update secrets failed: could not save state: {0}")]
    SecretsSave(#[source] StateError),

    #[error("Cannot rollback '{app}': no routes are configured")]
    RollbackNoRoutes { app: String },
    #[error("Release '{version}' not found for app '{app}'")]
    ReleaseNotFound { app: String, version: String },
    /// The rollback target is there but may not be used (a symbolic link on the way).
    #[error("Invalid release path: {0}")]
    RollbackPath(#[source] ReleasePathError),

    #[error("Failed to read releases directory: {0}")]
    ReadReleases(#[source] WalkError),

    #[error(transparent)]
    RestartWorkers(#[from] RestartError),
    #[error(transparent)]
    Upgrade(#[from] ReexecError),
}

/// The message of a failed rollout: `{"app":…,"error":…,"rolled_back":true,"status":"rollback"}`.
fn rollback_document(app: &str, error: &str) -> String {
    json!({"app": app, "error": error, "rolled_back": true, "status": "rollback"}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rollback_message_is_the_documented_json() {
        let e = CommandError::RolledBack {
            app: "web".into(),
            error: "Health check failed: Process exited during startup (exit code 3): boom".into(),
        };
        assert_eq!(
            e.to_string(),
            r#"{"app":"web","error":"Health check failed: Process exited during startup (exit code 3): boom","rolled_back":true,"status":"rollback"}"#
        );
    }

    #[test]
    fn messages_are_the_documented_texts() {
        let cases = [
            (
                CommandError::Upgrading {
                    command: "update-secrets",
                },
                "Server is upgrading; 'update-secrets' is temporarily blocked. Please retry shortly.",
            ),
            (
                CommandError::ProtocolMismatch { client: 2 },
                "Protocol version mismatch: client=2 server=3",
            ),
            (
                CommandError::InvalidRelease(ReleaseError::InstallTimedOut),
                "Invalid app release: Release dependency install timed out after 600 s",
            ),
            (
                CommandError::InvalidRelease(ReleaseError::InstallFailed {
                    step: "Release dependency install",
                    exit: "(exit code 1)".into(),
                    output: String::new(),
                }),
                "Invalid app release: Release dependency install failed (exit code 1)",
            ),
            (
                CommandError::InvalidRelease(ReleaseError::InstallFailed {
                    step: "Release dependency install",
                    exit: "(exit code 1)".into(),
                    output: "no".into(),
                }),
                "Invalid app release: Release dependency install failed (exit code 1): no",
            ),
            (
                CommandError::Invalid(ValidationError::RouteConflict {
                    route: "a.com".into(),
                    other: "api".into(),
                }),
                "Deploy rejected: route 'a.com' is already used by app 'api'",
            ),
            (
                CommandError::StartFailed {
                    detail: StartError::LauncherDown,
                },
                "Deploy failed: Failed to spawn instance: the app launcher is not running",
            ),
            (
                CommandError::WarmStartFailed {
                    detail: StartError::Startup("Instance startup timeout".into()),
                },
                "Deploy failed: Warm instance startup failed: Instance startup timeout",
            ),
            (
                CommandError::StartInstance {
                    detail: StartError::NoFreePort { app: "web".into() },
                },
                "Start failed: No free instance port for app 'web'",
            ),
        ];
        for (e, text) in cases {
            assert_eq!(e.to_string(), text);
        }
    }
}
