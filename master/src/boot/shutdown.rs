//! Signals and graceful shutdown (docs/cli.md, "Signals"; docs/architecture.md, "Restarts
//! and upgrades"): what each signal does, the orderly stop, and the forced one.

use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::Notify;

use crate::master::Master;
use crate::supervisor::workers;

const WORKER_DRAIN: Duration = workers::SHUTDOWN_DRAIN;
const INSTANCE_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, PartialEq, Eq)]
pub(super) enum Stop {
    Signal,
    /// A re-executed successor took over.
    HandedOver,
}

/// The signals the master acts on, registered once at startup.
pub(super) struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    usr2: tokio::signal::unix::Signal,
}

impl Signals {
    pub(super) fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
            usr2: signal(SignalKind::user_defined2())?,
        })
    }
}

pub(super) async fn wait_for_shutdown(master: &Arc<Master>, signals: &mut Signals) -> Stop {
    let Signals {
        term,
        int,
        hup,
        usr2,
    } = signals;
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); return Stop::Signal; }
            _ = int.recv() => { tracing::info!("SIGINT: shutting down"); return Stop::Signal; }
            _ = master.handed_over.notified() => {
                tracing::info!("a new server took over; shutting down");
                return Stop::HandedOver;
            }
            _ = usr2.recv() => {
                tracing::info!("SIGUSR2: upgrading in place");
                let m = master.clone();
                tokio::spawn(async move {
                    match crate::reexec::upgrade(&m).await {
                        Ok(pid) => {
                            tracing::info!(new_pid = pid, "upgrade handed over");
                            m.handed_over.notify_one();
                        }
                        Err(e) => tracing::error!("{e}"),
                    }
                });
            }
            _ = hup.recv() => {
                tracing::info!("SIGHUP: rolling restart of the proxy workers");
                let m = master.clone();
                tokio::spawn(async move {
                    match workers::restart_all(&m).await {
                        Ok((generation, n)) => tracing::info!(generation, workers = n, "workers restarted"),
                        Err(e) => tracing::warn!("{e}"),
                    }
                });
            }
        }
    }
}

/// Graceful shutdown (docs/architecture.md, "Restarts and upgrades"); a second signal forces.
pub(super) async fn shutdown(
    master: Arc<Master>,
    mgmt: Arc<Notify>,
    socket: std::path::PathBuf,
    keep_socket: bool,
    stop_listening: bool,
) -> i32 {
    master.begin_shutdown();
    mgmt.notify_waiters();
    // After a hand-over the socket file belongs to the successor.
    if !keep_socket {
        let _ = std::fs::remove_file(&socket);
    }
    // Apps' stray processes (helpers outside their instances) end with the server, unless
    // another server runs the same apps under the same uids.
    let sweep = master.sweep_at_shutdown(keep_socket).await;
    let graceful = async {
        workers::drain_all(&master, WORKER_DRAIN);
        if stop_listening {
            crate::listeners::stop_listening(&master.listeners);
        }
        workers::wait_all_gone(&master, WORKER_DRAIN + Duration::from_secs(2)).await;
        let grace_ms = INSTANCE_GRACE.as_millis() as u64;
        let _ = master.launcher.send(if sweep {
            tako_ipc::MasterToLauncher::ShutdownAndSweep { grace_ms }
        } else {
            tako_ipc::MasterToLauncher::Shutdown { grace_ms }
        });
        let deadline = tokio::time::Instant::now() + INSTANCE_GRACE + Duration::from_secs(3);
        while master.launcher.info().is_some_and(|l| l.ready)
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        graceful.await;
        return 0;
    };
    tokio::select! {
        _ = graceful => {
            tracing::info!("shutdown complete");
            0
        }
        _ = term.recv() => force(&master),
        _ = int.recv() => force(&master),
    }
}

fn force(master: &Master) -> i32 {
    tracing::warn!("second signal: forcing shutdown");
    let reg = master.apps.lock();
    for a in reg.apps.values() {
        for i in a.instances.values() {
            if let Some(pid) = i.pid {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
    for w in master.workers.lock().entries.iter() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(w.pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    if let Some(l) = master.launcher.info() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(l.pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    1
}
