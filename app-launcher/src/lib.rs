//! The app launcher: spawns app instances as the app user, drains their output into log files,
//! probes their health and stops them, reporting every change to the master over the IPC
//! channel (docs/apps.md).
//!
//! Events per instance, in order: `Spawned` (or `SpawnFailed`), then `Ready` or a terminal
//! startup event, then any of `Unhealthy` / `Recovered` / `Dead`, then `Exited`.
//! `StartupTimeout` is terminal: it is sent once the killed process has been reaped, and no
//! `Exited` follows it. Every `Exited` is sent after the process was reaped.

mod context;
mod control;
mod install;
mod instance;
mod logline;
mod logs;
mod output;
mod pipes;
mod probe;
mod reaper;
mod redact;
mod signal;
mod spawn;
mod sweep;

use std::os::unix::net::UnixStream;
use std::time::Duration;

pub use logline::{format_line, LineSplitter, MAX_LINE_BYTES};
pub use logs::rotate;
pub use output::{Capture, Stream};
pub use probe::parse_status_line;

/// The timing rules of docs/apps.md. Production uses [`Limits::default`]; tests shorten some.
#[derive(Debug, Clone)]
pub struct Limits {
    /// No 2xx within this long after spawn → `StartupTimeout` (30 s).
    pub startup_timeout: Duration,
    /// Pause between startup checks (100 ms).
    pub startup_poll: Duration,
    /// Timeout of one startup probe (5 s).
    pub startup_probe_timeout: Duration,
    /// Pause between health probes of a ready instance (1 s).
    pub health_interval: Duration,
    /// Timeout of one health probe (2 s).
    pub health_timeout: Duration,
    /// Consecutive failures that make an instance unhealthy (2).
    pub unhealthy_after: u32,
    /// Consecutive failures that make an instance dead (5).
    pub dead_after: u32,
    /// SIGKILL this long after an install's timeout SIGTERM (10 s).
    pub install_kill_after: Duration,
    /// Grace between SIGTERM and SIGKILL when the master is gone (5 s, docs/cli.md, "Signals").
    pub master_gone_grace: Duration,
    /// `app.log` is rotated once it grows past this size (10 MiB).
    pub log_rotate_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            startup_timeout: Duration::from_secs(30),
            startup_poll: Duration::from_millis(100),
            startup_probe_timeout: Duration::from_secs(5),
            health_interval: Duration::from_secs(1),
            health_timeout: Duration::from_secs(2),
            unhealthy_after: 2,
            dead_after: 5,
            install_kill_after: Duration::from_secs(10),
            master_gone_grace: Duration::from_secs(5),
            log_rotate_bytes: 10 * 1024 * 1024,
        }
    }
}

/// The launcher could not empty its capability bounding set.
#[derive(Debug, thiserror::Error)]
#[error("cannot empty the capability bounding set: {0}")]
pub struct BoundingSetError(#[source] std::io::Error);

/// Empties this process's capability bounding set. Called by the launcher role at start,
/// while it still holds CAP_SETPCAP (needed to drop; the restricted launcher gives it up).
/// The bounding set only limits what an execve may grant, not the capabilities held now, so
/// the launcher keeps switching users and signalling; every process it starts (instances,
/// install steps) inherits the empty set, and no exec below it can gain a capability, even
/// if no_new_privs were lifted or a file capability slipped through.
pub fn empty_bounding_set() -> Result<(), BoundingSetError> {
    spawn::empty_bounding_set().map_err(BoundingSetError)
}

/// Runs the launcher role on its IPC socket until the master says `Shutdown` or goes away.
/// Returns the process exit code. Must be called in the launcher child process, with no
/// other threads running: instances inherit the spawning thread as their parent-death
/// trigger, so the launcher keeps all its async work on the calling thread.
pub fn run(ipc: UnixStream) -> i32 {
    run_with_limits(ipc, Limits::default())
}

/// [`run`] with other timing limits. Only for tests: production always uses the defaults.
#[doc(hidden)]
pub fn run_with_limits(ipc: UnixStream, limits: Limits) -> i32 {
    control::run(ipc, limits)
}
