//! Why an instance did not start and why a release is refused: the errors of the app
//! services, which the command layer (`crate::mgmt::error`) wraps.

use std::path::PathBuf;

use super::identity::IdentityError;
use super::release::{LendError, ManifestError};
use crate::beneath::WalkError;
use crate::datadir::ReleasePathError;

/// Why an instance did not start. `Display` is the text an app's `last_error` shows and the
/// failed command quotes ("Instance errors" in docs/management-protocol.md, "Crashes and
/// replacement" in docs/apps.md), word for word.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The release directory may not be opened (gone, or a symbolic link on the way).
    #[error("Failed to spawn instance: release directory refused: {0}")]
    ReleaseRefused(#[source] ReleasePathError),
    #[error("Failed to spawn instance: cannot prepare the log directory: {0}")]
    LogDir(#[source] WalkError),
    #[error("Failed to spawn instance: {0}")]
    Identity(#[source] IdentityError),
    #[error("App not found: {app}")]
    AppNotFound { app: String },
    #[error("No free instance port for app '{app}'")]
    NoFreePort { app: String },
    #[error("Failed to spawn instance: the app launcher is not running")]
    LauncherDown,
    /// The start failed as the launcher reported it: the spawn failed, the health check timed
    /// out or the process exited during startup. The text is already the message.
    #[error("{0}")]
    Startup(String),
    /// Exited before it was healthy without the launcher calling it a startup failure.
    #[error("Instance exited")]
    Exited,
    /// The launcher died while the instance was starting.
    #[error("Rolling update failed: the app launcher was lost")]
    LauncherLost,
}

/// Why a release could not be prepared: the detail after `Invalid app release: `.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    /// The release directory may not be opened (gone, or a symbolic link on the way).
    #[error("{0}")]
    Open(#[source] ReleasePathError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("Bun dependency install completed but '{}' is missing. Ensure package 'tako.sh' is installed.", wrapper.display())]
    BunWrapperMissing { wrapper: PathBuf },
    #[error("cannot prepare the log directory: {0}")]
    LogDir(#[source] WalkError),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Lend(#[from] LendError),
    /// The install step ran and failed. `exit` is `(exit code <n>)` or
    /// `(terminated by signal <SIG>)`; `output` is its trimmed output, maybe empty.
    #[error("{step} failed {exit}{}", output_suffix(output))]
    InstallFailed {
        step: &'static str,
        exit: String,
        output: String,
    },
    #[error("Release dependency install timed out after 600 s")]
    InstallTimedOut,
    /// The default Bun install could not be started.
    #[error("Failed to run 'bun install --production' in {path}: {error}")]
    BunInstallSpawn { path: String, error: String },
    /// A custom install step could not be started.
    #[error("{step} failed: {error}")]
    InstallSpawn { step: &'static str, error: String },
}

fn output_suffix(output: &str) -> String {
    if output.is_empty() {
        String::new()
    } else {
        format!(": {output}")
    }
}
