//! Reaping every child ourselves. The launcher is a child subreaper, so orphaned
//! grandchildren of instances come to us and must be reaped too: one `waitpid(-1)` loop on
//! SIGCHLD reaps them all and hands each status to whoever spawned that pid.
//!
//! `std::process::Command::spawn` reaps a child itself when exec fails, and a concurrent
//! `waitpid(-1)` would steal that status. Spawning and reaping therefore take the same lock,
//! and a pid is registered before the lock is released.

use std::collections::HashMap;
use std::io;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tako_ipc::ExitStatus;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::oneshot;

/// A safety net in case a SIGCHLD is coalesced with one that arrived mid-loop.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

#[derive(Default)]
pub struct Reaper {
    waiters: Mutex<HashMap<i32, oneshot::Sender<ExitStatus>>>,
}

impl Reaper {
    /// Installs the SIGCHLD listener and starts the reaping task. Call before any spawn.
    pub fn start() -> io::Result<Arc<Reaper>> {
        let reaper = Arc::new(Reaper::default());
        let mut sigchld = signal(SignalKind::child())?;
        let task_reaper = reaper.clone();
        tokio::spawn(async move {
            loop {
                task_reaper.reap_ready();
                tokio::select! {
                    _ = sigchld.recv() => {}
                    _ = tokio::time::sleep(SWEEP_EVERY) => {}
                }
            }
        });
        Ok(reaper)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<i32, oneshot::Sender<ExitStatus>>> {
        self.waiters.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Spawns `cmd` and returns the child with a receiver for its exit status.
    pub fn spawn(&self, cmd: &mut Command) -> io::Result<(Child, oneshot::Receiver<ExitStatus>)> {
        let mut waiters = self.lock();
        let child = cmd.spawn()?;
        let (tx, rx) = oneshot::channel();
        waiters.insert(child.id() as i32, tx);
        Ok((child, rx))
    }

    /// Forks a child that runs `child` and exits with its code, and waits for it here, on
    /// this thread. Only for children that end at once (a few syscalls): the reaping lock is
    /// held throughout, so the reaping task cannot steal the status. `child` runs after a
    /// fork of a threaded process: it may make async-signal-safe calls only.
    pub fn run_short_child(&self, child: impl FnOnce() -> i32) -> io::Result<ExitStatus> {
        let _waiters = self.lock();
        // SAFETY: the child runs `child` (async-signal-safe calls only) and _exits; it
        // never returns into the runtime.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
        if pid == 0 {
            let code = child();
            // SAFETY: ends the forked child without running the parent's exit handlers.
            unsafe { libc::_exit(code) };
        }
        loop {
            match waitpid(Pid::from_raw(pid), None) {
                Ok(WaitStatus::Exited(_, code)) => return Ok(ExitStatus::Code(code)),
                Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(ExitStatus::Signal(sig as i32)),
                Ok(_) | Err(Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Reaps every child that has exited.
    fn reap_ready(&self) {
        let mut waiters = self.lock();
        loop {
            let (pid, status) = match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, ExitStatus::Code(code)),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, ExitStatus::Signal(sig as i32)),
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Ok(_) | Err(Errno::EINTR) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "waitpid failed");
                    return;
                }
            };
            match waiters.remove(&pid.as_raw()) {
                Some(tx) => {
                    let _ = tx.send(status);
                }
                None => tracing::debug!(pid = pid.as_raw(), ?status, "reaped an orphaned process"),
            }
        }
    }
}
