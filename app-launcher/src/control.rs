//! The IPC loop with the master: hello, then orders until `Shutdown` or the master is gone.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::sync::Arc;
use std::time::Duration;

use tako_ipc::{
    AppIds, Channel, InstallResult, InstanceEvent, LauncherToMaster, MasterToLauncher, IPC_VERSION,
};
use tokio::net::UnixStream;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::context::{Ctx, Events};
use crate::instance::{self, Command};
use crate::logs::LogWriterThread;
use crate::reaper::Reaper;
use crate::signal::AFTER_KILL_BOUND;
use crate::sweep::{self, Range};
use crate::{install, Limits};

/// How long the last events and log lines may take to be written out at exit.
const FLUSH_BOUND: Duration = Duration::from_secs(2);

pub fn run(ipc: StdUnixStream, limits: Limits) -> i32 {
    // Orphaned grandchildren of instances come to us, so we can reap them.
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        tracing::warn!(error = %e, "cannot become a child subreaper; orphaned app processes will go to init");
    }
    if let Err(e) = ipc.set_nonblocking(true) {
        tracing::error!(error = %e, "cannot use the IPC socket");
        return 1;
    }
    // One thread: instances get PR_SET_PDEATHSIG, which fires when the thread that forked
    // them ends, so every spawn must come from the thread that lives as long as we do.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return 1;
        }
    };
    let code = runtime.block_on(serve(ipc, limits));
    runtime.shutdown_timeout(Duration::from_secs(1));
    code
}

async fn serve(ipc: StdUnixStream, limits: Limits) -> i32 {
    let stream = match UnixStream::from_std(ipc) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot use the IPC socket");
            return 1;
        }
    };
    let answer = LauncherToMaster::Hello {
        version: IPC_VERSION,
        pid: std::process::id(),
    };
    // The master passes no descriptors to the launcher.
    let limits_ipc = tako_ipc::Limits {
        accept_fds: false,
        ..tako_ipc::Limits::CHILD
    };
    let (mut channel, config) = match Channel::<MasterToLauncher, LauncherToMaster>::open(
        stream, &answer, limits_ipc,
    )
    .await
    {
        Ok((channel, MasterToLauncher::Hello { config, .. })) => (channel, config),
        // `open` returns only a hello.
        Ok(_) => return 1,
        Err(e) => {
            tracing::error!(error = %e, "launcher cannot start");
            return 1;
        }
    };

    let log_thread = match LogWriterThread::start(config.log_owner.clone(), limits.log_rotate_bytes)
    {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the log writer thread");
            return 1;
        }
    };
    let reaper = match Reaper::start() {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGCHLD");
            return 1;
        }
    };
    let events = Events(channel.sender());
    let ctx = Arc::new(Ctx {
        config,
        reaper,
        logs: log_thread.sink(),
        events: events.clone(),
        limits: limits.clone(),
    });
    // SIGTERM (also our parent-death signal) means the master is gone (docs/cli.md, "Signals").
    let mut sigterm = signal(SignalKind::terminate())
        .inspect_err(|e| tracing::warn!(error = %e, "cannot listen for SIGTERM"))
        .ok();

    tracing::info!("launcher ready");
    let mut supervisor = Supervisor::new(ctx);
    // Without the master's word, no sweep: a successor may already run the same apps
    // under the same uids.
    let (grace, code, sweep) = loop {
        tokio::select! {
            msg = channel.recv() => match msg {
                Ok(Some((msg, _))) => {
                    if let Some(Exit { grace, sweep }) = supervisor.handle(msg) {
                        tracing::info!(grace_ms = grace.as_millis() as u64, sweep, "shutdown requested; stopping every instance");
                        break (grace, 0, sweep);
                    }
                }
                Ok(None) => {
                    tracing::warn!("the master closed the IPC channel; stopping every instance");
                    break (limits.master_gone_grace, 0, false);
                }
                Err(e) => {
                    tracing::error!(error = %e, "IPC channel failed; stopping every instance");
                    break (limits.master_gone_grace, 1, false);
                }
            },
            _ = next_signal(&mut sigterm) => {
                tracing::warn!("SIGTERM: the master is gone; stopping every instance");
                break (limits.master_gone_grace, 0, false);
            }
        }
    };
    supervisor.shutdown(grace).await;
    if sweep {
        supervisor.sweep_all();
    }

    let _ = tokio::time::timeout(FLUSH_BOUND, events.0.flush()).await;
    log_thread.close(FLUSH_BOUND);
    tracing::info!(code, "launcher exiting");
    code
}

async fn next_signal(sig: &mut Option<Signal>) {
    match sig {
        Some(s) => {
            if s.recv().await.is_none() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending::<()>().await,
    }
}

/// Running instances and installs, keyed the way the master names them.
struct Supervisor {
    ctx: Arc<Ctx>,
    instances: HashMap<(String, u32), instance::Handle>,
    installs: Vec<JoinHandle<()>>,
    shutdown: watch::Sender<Option<Duration>>,
    /// The range app uids must come from (`AppIdRange`); `None` refuses every app uid.
    range: Option<Range>,
    /// The uid of every app this launcher ran, for the sweep at shutdown.
    uids: BTreeMap<String, u32>,
}

/// How the control loop ends.
struct Exit {
    grace: Duration,
    /// Sweep every app uid after the instances stopped.
    sweep: bool,
}

impl Supervisor {
    fn new(ctx: Arc<Ctx>) -> Self {
        Self {
            ctx,
            instances: HashMap::new(),
            installs: Vec::new(),
            shutdown: watch::channel(None).0,
            range: None,
            uids: BTreeMap::new(),
        }
    }

    /// Checks an app's ids against the range and remembers its uid for the final sweep.
    fn admit(&mut self, app: &str, ids: Option<&AppIds>) -> Result<(), sweep::IdError> {
        if let Some(ids) = ids {
            sweep::check_ids(app, ids, self.range)?;
            self.uids.insert(app.to_string(), ids.uid);
        }
        Ok(())
    }

    /// Ends every process of `uid`, which must be in the range.
    fn sweep(&self, app: &str, uid: u32) {
        let known = self.range.is_some_and(|r| {
            sweep::check_ids(
                app,
                &AppIds {
                    uid,
                    gid: uid,
                    groups: Vec::new(),
                    limits: tako_ipc::AppLimits {
                        nproc: 0,
                        nofile: 0,
                    },
                },
                Some(r),
            )
            .is_ok()
        });
        if !known {
            tracing::error!(
                app,
                uid,
                "refusing to sweep a uid outside the app uid range"
            );
            return;
        }
        match sweep::sweep_uid(&self.ctx.reaper, uid) {
            Ok(()) => tracing::info!(app, uid, "every process of the app's uid was sent SIGKILL"),
            Err(e) => tracing::error!(app, uid, error = %e, "cannot end the app's processes"),
        }
    }

    /// The sweep at shutdown: every app uid this launcher ran.
    fn sweep_all(&self) {
        for (app, uid) in &self.uids {
            self.sweep(app, *uid);
        }
    }

    /// Handles one order. `Some(_)` means shut down.
    fn handle(&mut self, msg: MasterToLauncher) -> Option<Exit> {
        self.instances.retain(|_, h| !h.task.is_finished());
        self.installs.retain(|t| !t.is_finished());
        match msg {
            MasterToLauncher::Hello { .. } => {
                tracing::warn!("ignoring a second hello from the master");
            }
            MasterToLauncher::Spawn(spec) => {
                let key = (spec.app.clone(), spec.instance_id);
                if self.instances.contains_key(&key) {
                    self.ctx.events.instance(
                        &spec.app,
                        spec.instance_id,
                        InstanceEvent::SpawnFailed {
                            error: format!(
                                "instance {} of app '{}' is already running",
                                spec.instance_id, spec.app
                            ),
                        },
                    );
                } else if let Err(e) = self.admit(&spec.app, spec.ids.as_ref()) {
                    tracing::error!(app = %spec.app, instance = spec.instance_id, error = %e, "refusing to spawn");
                    self.ctx.events.instance(
                        &spec.app,
                        spec.instance_id,
                        InstanceEvent::SpawnFailed {
                            error: e.to_string(),
                        },
                    );
                } else if let Some(handle) = instance::start(spec, self.ctx.clone()) {
                    self.instances.insert(key, handle);
                }
            }
            MasterToLauncher::Stop {
                app,
                instance_id,
                grace_ms,
            } => self.command(
                app,
                instance_id,
                Command::Stop {
                    grace: Duration::from_millis(grace_ms),
                },
            ),
            MasterToLauncher::Kill { app, instance_id } => {
                self.command(app, instance_id, Command::Kill)
            }
            MasterToLauncher::Install(spec) => {
                if let Err(e) = self.admit(&spec.app, spec.ids.as_ref()) {
                    tracing::error!(app = %spec.app, error = %e, "refusing to install");
                    self.ctx.events.send(LauncherToMaster::InstallDone {
                        request_id: spec.request_id,
                        result: InstallResult::SpawnError {
                            error: e.to_string(),
                        },
                    });
                } else {
                    let task = install::start(spec, self.ctx.clone(), self.shutdown.subscribe());
                    self.installs.push(task);
                }
            }
            MasterToLauncher::Shutdown { grace_ms } => {
                return Some(Exit {
                    grace: Duration::from_millis(grace_ms),
                    sweep: false,
                });
            }
            MasterToLauncher::ShutdownAndSweep { grace_ms } => {
                return Some(Exit {
                    grace: Duration::from_millis(grace_ms),
                    sweep: true,
                });
            }
            MasterToLauncher::AppIdRange { first, last } => {
                if first == 0 || first > last {
                    tracing::error!(first, last, "ignoring an invalid app uid range");
                } else {
                    self.range = Some(Range { first, last });
                }
            }
            MasterToLauncher::Sweep { app, uid } => {
                self.sweep(&app, uid);
                self.uids.remove(&app);
            }
        }
        None
    }

    fn command(&mut self, app: String, instance_id: u32, cmd: Command) {
        match self.instances.get(&(app, instance_id)) {
            Some(handle) => {
                let _ = handle.commands.send(cmd);
            }
            // Already exited, and its Exited is on its way or sent.
            None => tracing::debug!(
                instance_id,
                ?cmd,
                "order for an instance that is not running"
            ),
        }
    }

    /// Stops every instance and install and waits (bounded) until each is reaped and reported.
    async fn shutdown(&mut self, grace: Duration) {
        for handle in self.instances.values() {
            let _ = handle.commands.send(Command::Stop { grace });
        }
        let _ = self.shutdown.send(Some(grace));
        let instances: Vec<_> = self.instances.drain().map(|(_, h)| h.task).collect();
        let installs = std::mem::take(&mut self.installs);
        let all = async move {
            for task in instances.into_iter().chain(installs) {
                let _ = task.await;
            }
        };
        let bound = grace + AFTER_KILL_BOUND + Duration::from_secs(5);
        if tokio::time::timeout(bound, all).await.is_err() {
            tracing::warn!("some instances did not finish stopping in time");
        }
    }
}
