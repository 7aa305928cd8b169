//! The install step (docs/apps.md, "Install step"): run the master's argv as the app user like
//! an instance, output into `install.log`, bounded by the request's timeout.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::Signal;
use tako_ipc::{ExitStatus, InstallResult, InstallSpec, LauncherToMaster};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::context::Ctx;
use crate::instance::OUTPUT_SETTLE;
use crate::output::{Capture, Stream, INSTALL_CAPTURE_BYTES};
use crate::pipes::{self, InstallOutput};
use crate::signal::{signal_group, terminate_group, KILLED};
use crate::spawn::{spawn, ProcessSpec};

/// Set to `Some(grace)` when the launcher shuts down: running installs are stopped too.
pub type ShutdownSignal = watch::Receiver<Option<Duration>>;

/// Runs the install on a task and answers the master with `InstallDone`.
pub fn start(spec: InstallSpec, ctx: Arc<Ctx>, shutdown: ShutdownSignal) -> JoinHandle<()> {
    tokio::spawn(async move {
        let result = run(&spec, &ctx, shutdown).await;
        tracing::info!(app = %spec.app, request_id = spec.request_id, ?result, "install finished");
        ctx.events.send(LauncherToMaster::InstallDone {
            request_id: spec.request_id,
            result,
        });
    })
}

enum End {
    Exited(ExitStatus),
    TimedOut,
    Shutdown(Duration),
}

async fn run(spec: &InstallSpec, ctx: &Ctx, mut shutdown: ShutdownSignal) -> InstallResult {
    let id = spec.request_id;
    ctx.logs.install_begin(id, PathBuf::from(&spec.log_dir));
    let process = ProcessSpec {
        argv: &spec.argv,
        env: &spec.env,
        cwd: &spec.cwd,
        ids: spec.ids.as_ref(),
        run_as: ctx.config.app_user.as_ref(),
    };
    let spawned = match spawn(&process, &ctx.reaper) {
        Ok(s) => s,
        Err(e) => {
            ctx.logs.install_end(id);
            return InstallResult::SpawnError {
                error: e.to_string(),
            };
        }
    };
    tracing::info!(app = %spec.app, request_id = id, pid = spawned.pid, "install started");
    let pid = spawned.pid;
    let mut exit = spawned.exit;
    let capture = Arc::new(Mutex::new(
        Capture::new(INSTALL_CAPTURE_BYTES).redacting(&spec.env),
    ));
    let output = |stream| InstallOutput {
        stream,
        request_id: id,
        logs: ctx.logs.clone(),
        capture: capture.clone(),
    };
    let mut readers = [
        pipes::drain(spawned.stdout, output(Stream::Out)),
        pipes::drain(spawned.stderr, output(Stream::Err)),
    ];

    let end = tokio::select! {
        biased;
        status = &mut exit => End::Exited(status.unwrap_or(KILLED)),
        _ = tokio::time::sleep(Duration::from_millis(spec.timeout_ms)) => End::TimedOut,
        grace = shutdown_requested(&mut shutdown) => End::Shutdown(grace),
    };
    let status = match end {
        End::Exited(status) => Some(status),
        End::TimedOut => {
            tracing::warn!(app = %spec.app, request_id = id, timeout_ms = spec.timeout_ms, "install timed out; stopping it");
            terminate_group(pid, &mut exit, ctx.limits.install_kill_after).await;
            None
        }
        End::Shutdown(grace) => Some(terminate_group(pid, &mut exit, grace).await),
    };
    // An install leaves nothing running behind it.
    signal_group(pid, Signal::SIGKILL);
    let _ = tokio::time::timeout(OUTPUT_SETTLE, async {
        for reader in readers.iter_mut() {
            let _ = reader.await;
        }
    })
    .await;
    ctx.logs.install_end(id);

    match status {
        None => InstallResult::TimedOut,
        Some(ExitStatus::Code(0)) => InstallResult::Ok,
        Some(status) => InstallResult::Failed {
            status,
            output: pipes::lock(&capture).install_output(),
        },
    }
}

async fn shutdown_requested(shutdown: &mut ShutdownSignal) -> Duration {
    loop {
        if let Some(grace) = *shutdown.borrow_and_update() {
            return grace;
        }
        if shutdown.changed().await.is_err() {
            // The control loop is gone without a shutdown: nothing will ever ask.
            std::future::pending::<()>().await;
        }
    }
}
