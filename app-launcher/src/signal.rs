//! Signals to instance process groups. Every instance and install leads its own group
//! (setsid), so its pid is the group id.

use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::time::Duration;
use tako_ipc::ExitStatus;
use tokio::sync::oneshot;

/// Sends `sig` to the process group led by `pgid`. A group that is already gone is fine.
pub fn signal_group(pgid: i32, sig: Signal) {
    // 0 would be our own group and 1 is init's: never a group we started.
    if pgid <= 1 {
        return;
    }
    match killpg(Pid::from_raw(pgid), sig) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(e) => tracing::warn!(pgid, signal = %sig, error = %e, "cannot signal process group"),
    }
}

/// How long to wait for a reap after SIGKILL before giving up on it. A process stuck in
/// uninterruptible sleep must not stall a stop forever.
pub const AFTER_KILL_BOUND: Duration = Duration::from_secs(30);

/// The status reported when a process could not be reaped in time, or its reaper is gone:
/// it was sent SIGKILL.
pub const KILLED: ExitStatus = ExitStatus::Signal(libc::SIGKILL);

/// SIGTERM to the group, SIGKILL after `grace`, and the process's exit status once reaped.
pub async fn terminate_group(
    pgid: i32,
    exit: &mut oneshot::Receiver<ExitStatus>,
    grace: Duration,
) -> ExitStatus {
    signal_group(pgid, Signal::SIGTERM);
    if let Ok(status) = tokio::time::timeout(grace, &mut *exit).await {
        return status.unwrap_or(KILLED);
    }
    kill_group(pgid, exit).await
}

/// SIGKILL to the group and the process's exit status once reaped (bounded).
pub async fn kill_group(pgid: i32, exit: &mut oneshot::Receiver<ExitStatus>) -> ExitStatus {
    signal_group(pgid, Signal::SIGKILL);
    match tokio::time::timeout(AFTER_KILL_BOUND, exit).await {
        Ok(status) => status.unwrap_or(KILLED),
        Err(_) => {
            tracing::warn!(
                pgid,
                "process not reaped 30 s after SIGKILL; reporting it as killed"
            );
            KILLED
        }
    }
}
