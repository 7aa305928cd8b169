//! In-place upgrade by re-execution (`ctl upgrade`, SIGUSR2; docs/architecture.md,
//! "Restarts and upgrades"): start the binary at our own path with the listeners, the data-dir
//! lock and a ready pipe inherited; keep serving until it reports ready; roll back (keep
//! serving) if it dies first.

use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt;

use crate::handover::{LOCK_FD_ENV, READY_FD_ENV};
use crate::listeners::fd_name;
use crate::master::Master;

/// How long the successor has to restore its apps and report ready.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum ReexecError {
    #[error("Upgrade already in progress")]
    InProgress,
    #[error("Upgrade failed: {0}; this server keeps serving")]
    Failed(#[source] UpgradeFailure),
}

/// Why the successor did not take over.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeFailure {
    #[error("only a primary can upgrade in place")]
    NotPrimary,
    #[error("cannot create a pipe: {0}")]
    Pipe(#[source] nix::errno::Errno),
    #[error("cannot start {}: {source}", exe.display())]
    Start {
        exe: PathBuf,
        source: std::io::Error,
    },
    /// `status` is the exit status as the OS words it (empty when it could not be read).
    #[error("the new server exited before it was ready ({status})")]
    ExitedEarly { status: String },
    #[error("the new server was not ready within 120 s")]
    NotReady,
}

/// Starts the successor and waits for its ready byte. On success the caller shuts down
/// gracefully (without removing the socket file, which the successor now owns).
pub async fn upgrade(master: &Arc<Master>) -> Result<u32, ReexecError> {
    if master.reexec_in_progress.swap(true, Ordering::SeqCst) {
        return Err(ReexecError::InProgress);
    }
    let result = run(master).await;
    if result.is_err() {
        master.reexec_in_progress.store(false, Ordering::SeqCst);
    }
    result
}

async fn run(master: &Arc<Master>) -> Result<u32, ReexecError> {
    let fail = ReexecError::Failed;
    let Some(lock_fd) = master.lock_fd else {
        return Err(fail(UpgradeFailure::NotPrimary));
    };
    let (ready_rd, ready_wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| fail(UpgradeFailure::Pipe(e)))?;
    // The descriptors the successor finds at 3, 4, …: listeners, then the lock, then the pipe.
    let mut sources: Vec<RawFd> = master.listeners.iter().map(|l| l.fd.as_raw_fd()).collect();
    let names: Vec<String> = master
        .listeners
        .iter()
        .map(|l| fd_name(l.kind, l.addr))
        .collect();
    let n = sources.len();
    sources.push(lock_fd);
    sources.push(ready_wr.as_raw_fd());
    let exec = &master.self_exec;
    let mut cmd = tokio::process::Command::new(&exec.exe);
    cmd.args(&exec.args)
        .env("LISTEN_FDS", n.to_string())
        .env("LISTEN_FDNAMES", names.join(":"))
        .env_remove("LISTEN_PID")
        .env(LOCK_FD_ENV, (3 + n).to_string())
        .env(READY_FD_ENV, (3 + n + 1).to_string())
        .stdin(Stdio::null())
        .kill_on_drop(false);
    let srcs = sources.clone();
    // SAFETY: only async-signal-safe calls (fcntl, dup2, close) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // Move every source out of the target range first, so no dup2 clobbers another.
            let mut tmp = [0 as RawFd; 64];
            for (i, fd) in srcs.iter().enumerate().take(64) {
                let t = libc::fcntl(*fd, libc::F_DUPFD, 256);
                if t < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                tmp[i] = t;
            }
            for (i, t) in tmp.iter().enumerate().take(srcs.len().min(64)) {
                if libc::dup2(*t, 3 + i as RawFd) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(*t);
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|source| {
        fail(UpgradeFailure::Start {
            exe: exec.exe.clone(),
            source,
        })
    })?;
    drop(ready_wr);
    let pid = child.id().unwrap_or(0);
    tracing::info!(pid, exe = %exec.exe.display(), "started the new server; waiting for it to be ready");
    let mut ready = tokio::fs::File::from_std(std::fs::File::from(ready_rd));
    let mut byte = [0u8; 1];
    tokio::select! {
        r = tokio::time::timeout(READY_TIMEOUT, ready.read(&mut byte)) => match r {
            Ok(Ok(1)) if byte[0] == b'1' => {
                tracing::info!(pid, "the new server is ready; handing over");
                // The successor lives on without us; systemd learns its pid.
                notify_main_pid(pid);
                tokio::spawn(async move { let _ = child.wait().await; });
                Ok(pid)
            }
            Ok(_) => {
                let _ = child.start_kill();
                let status = child.wait().await.map(|s| s.to_string()).unwrap_or_default();
                Err(fail(UpgradeFailure::ExitedEarly { status }))
            }
            Err(_) => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                Err(fail(UpgradeFailure::NotReady))
            }
        },
        status = child.wait() => {
            let status = status.map(|s| s.to_string()).unwrap_or_default();
            Err(fail(UpgradeFailure::ExitedEarly { status }))
        }
    }
}

/// Tells systemd that the successor is the service's main process now. Sent by this
/// process while it still is the main one: the unit's `NotifyAccess=main` accepts only that
/// (the successor itself may not claim it, nor may any other process of the service).
fn notify_main_pid(pid: u32) {
    let Ok(path) = std::env::var("NOTIFY_SOCKET") else {
        return;
    };
    let msg = format!("MAINPID={pid}");
    let sent = std::os::unix::net::UnixDatagram::unbound().and_then(|sock| {
        if let Some(name) = path.strip_prefix('@') {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
                .and_then(|a| sock.send_to_addr(msg.as_bytes(), &a))
        } else {
            sock.send_to(msg.as_bytes(), &path)
        }
    });
    match sent {
        Ok(_) => tracing::info!(pid, "told the service manager the new main pid"),
        // systemd then still tracks this process: when it exits, systemd ends the service,
        // successor included, and Restart=always starts it again from the stored listeners.
        Err(e) => {
            tracing::warn!(pid, error = %e, "cannot tell the service manager the new main pid")
        }
    }
}
