//! One instance from spawn to reap (docs/apps.md, "Startup", "Health checks",
//! "Stopping an instance"): startup probe, health probes, exits noticed at once through the
//! reaper, stop and kill on the master's order.

use std::convert::Infallible;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::Signal;
use tako_ipc::{ExitStatus, InstanceEvent, SpawnSpec};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant, MissedTickBehavior};

use crate::context::Ctx;
use crate::logline::LineSplitter;
use crate::output::{Capture, Stream, STARTUP_CAPTURE_BYTES};
use crate::pipes::{self, InstanceOutput};
use crate::probe::probe;
use crate::signal::{signal_group, AFTER_KILL_BOUND, KILLED};
use crate::spawn::{spawn, ProcessSpec};

/// After an exit during startup, how long to wait for the last output to arrive through
/// the pipes before composing the error message.
pub const OUTPUT_SETTLE: Duration = Duration::from_millis(500);

/// An order from the master.
#[derive(Debug, Clone, Copy)]
pub enum Command {
    /// SIGTERM the group, SIGKILL it after `grace`.
    Stop { grace: Duration },
    /// SIGKILL the group now.
    Kill,
}

/// The control loop's handle on a running instance.
pub struct Handle {
    pub commands: mpsc::UnboundedSender<Command>,
    pub task: JoinHandle<()>,
}

/// Spawns the instance and reports `Spawned` or `SpawnFailed`. `None` when it did not start.
pub fn start(spec: SpawnSpec, ctx: Arc<Ctx>) -> Option<Handle> {
    let spawned_at = Instant::now();
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
            tracing::warn!(app = %spec.app, instance = spec.instance_id, error = %e, "cannot spawn instance");
            ctx.events.instance(
                &spec.app,
                spec.instance_id,
                InstanceEvent::SpawnFailed {
                    error: e.to_string(),
                },
            );
            return None;
        }
    };
    tracing::info!(app = %spec.app, instance = spec.instance_id, pid = spawned.pid, port = spec.port, "instance spawned");
    ctx.events.instance(
        &spec.app,
        spec.instance_id,
        InstanceEvent::Spawned {
            pid: spawned.pid as u32,
        },
    );

    let capture = Arc::new(Mutex::new(
        Capture::new(STARTUP_CAPTURE_BYTES).redacting(&spec.env),
    ));
    let version: Arc<str> = spec.version.as_str().into();
    let log_dir = Arc::new(PathBuf::from(&spec.log_dir));
    let output = |stream| InstanceOutput {
        stream,
        version: version.clone(),
        instance_id: spec.instance_id,
        log_dir: log_dir.clone(),
        logs: ctx.logs.clone(),
        capture: capture.clone(),
        splitter: LineSplitter::new(),
    };
    let readers = vec![
        pipes::drain(spawned.stdout, output(Stream::Out)),
        pipes::drain(spawned.stderr, output(Stream::Err)),
    ];
    let (commands, commands_rx) = mpsc::unbounded_channel();
    let watch = Watch {
        app: spec.app,
        id: spec.instance_id,
        pid: spawned.pid,
        port: spec.port,
        exit: spawned.exit,
        commands: commands_rx,
        capture,
        readers,
        ctx,
    };
    let task = tokio::spawn(watch.run(spawned_at));
    Some(Handle { commands, task })
}

enum Interrupt {
    Exited(ExitStatus),
    Command(Command),
}

enum Startup {
    Ready,
    TimedOut,
    Interrupted(Interrupt),
}

struct Watch {
    app: String,
    id: u32,
    pid: i32,
    port: u16,
    exit: oneshot::Receiver<ExitStatus>,
    commands: mpsc::UnboundedReceiver<Command>,
    capture: Arc<Mutex<Capture>>,
    readers: Vec<JoinHandle<()>>,
    ctx: Arc<Ctx>,
}

impl Watch {
    fn event(&self, event: InstanceEvent) {
        self.ctx.events.instance(&self.app, self.id, event);
    }

    async fn run(mut self, spawned_at: Instant) {
        let interrupt = match self.startup(spawned_at).await {
            Startup::Ready => {
                pipes::lock(&self.capture).stop();
                tracing::info!(app = %self.app, instance = self.id, "instance ready");
                self.event(InstanceEvent::Ready);
                self.probe_health().await
            }
            Startup::TimedOut => {
                tracing::warn!(app = %self.app, instance = self.id, "instance startup timed out; killing it");
                crate::signal::kill_group(self.pid, &mut self.exit).await;
                self.event(InstanceEvent::StartupTimeout);
                return;
            }
            Startup::Interrupted(Interrupt::Exited(status)) => {
                self.exited_during_startup(status).await;
                return;
            }
            Startup::Interrupted(other) => other,
        };
        let status = match interrupt {
            Interrupt::Exited(status) => {
                tracing::warn!(app = %self.app, instance = self.id, ?status, "instance exited");
                status
            }
            Interrupt::Command(cmd) => self.stop(cmd).await,
        };
        // The leader is gone; whatever it left in its group goes with it.
        signal_group(self.pid, Signal::SIGKILL);
        self.event(InstanceEvent::Exited {
            status,
            during_startup: false,
            output: String::new(),
        });
    }

    /// Runs `fut` unless the process exits or the master sends an order first.
    async fn interrupt_or<F: Future>(&mut self, fut: F) -> Result<F::Output, Interrupt> {
        tokio::select! {
            biased;
            status = &mut self.exit => Err(Interrupt::Exited(status.unwrap_or(KILLED))),
            Some(cmd) = self.commands.recv() => Err(Interrupt::Command(cmd)),
            out = fut => Ok(out),
        }
    }

    async fn wait_interrupt(&mut self) -> Interrupt {
        match self
            .interrupt_or(std::future::pending::<Infallible>())
            .await
        {
            Err(i) => i,
            Ok(never) => match never {},
        }
    }

    /// Startup: every poll interval, check for an exit, then probe; 2xx before the deadline
    /// wins.
    async fn startup(&mut self, spawned_at: Instant) -> Startup {
        let limits = self.ctx.limits.clone();
        let deadline = spawned_at + limits.startup_timeout;
        let port = self.port;
        loop {
            let next = (Instant::now() + limits.startup_poll).min(deadline);
            if let Err(i) = self.interrupt_or(sleep_until(next)).await {
                return Startup::Interrupted(i);
            }
            let now = Instant::now();
            if now >= deadline {
                return Startup::TimedOut;
            }
            let limit = limits.startup_probe_timeout.min(deadline - now);
            match self.interrupt_or(probe(port, limit)).await {
                Err(i) => return Startup::Interrupted(i),
                Ok(Ok(())) => return Startup::Ready,
                Ok(Err(e)) => {
                    tracing::trace!(app = %self.app, instance = self.id, error = %e, "not ready yet")
                }
            }
        }
    }

    /// Health checks: probe every interval; report unhealthy, recovered and dead transitions.
    async fn probe_health(&mut self) -> Interrupt {
        let limits = self.ctx.limits.clone();
        let port = self.port;
        let mut ticks = tokio::time::interval_at(
            Instant::now() + limits.health_interval,
            limits.health_interval,
        );
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut failures = 0u32;
        let mut unhealthy = false;
        loop {
            if let Err(i) = self.interrupt_or(ticks.tick()).await {
                return i;
            }
            match self.interrupt_or(probe(port, limits.health_timeout)).await {
                Err(i) => return i,
                Ok(Ok(())) => {
                    if unhealthy {
                        tracing::info!(app = %self.app, instance = self.id, "instance recovered");
                        self.event(InstanceEvent::Recovered);
                    }
                    failures = 0;
                    unhealthy = false;
                }
                Ok(Err(e)) => {
                    failures += 1;
                    if failures >= limits.unhealthy_after && !unhealthy {
                        unhealthy = true;
                        tracing::warn!(app = %self.app, instance = self.id, reason = %e, "instance unhealthy");
                        self.event(InstanceEvent::Unhealthy {
                            reason: e.to_string(),
                        });
                    }
                    if failures >= limits.dead_after {
                        tracing::warn!(app = %self.app, instance = self.id, "instance dead; waiting for the master to stop it");
                        self.event(InstanceEvent::Dead);
                        return self.wait_interrupt().await;
                    }
                }
            }
        }
    }

    /// The end of a stop (the drain is the master's): SIGTERM, SIGKILL after the grace (sooner
    /// on a `Kill`), reap.
    async fn stop(&mut self, first: Command) -> ExitStatus {
        let mut kill_at = match first {
            Command::Stop { grace } => {
                signal_group(self.pid, Signal::SIGTERM);
                Instant::now() + grace
            }
            Command::Kill => Instant::now(),
        };
        let mut killed_at: Option<Instant> = None;
        loop {
            if killed_at.is_none() && Instant::now() >= kill_at {
                signal_group(self.pid, Signal::SIGKILL);
                killed_at = Some(Instant::now());
            }
            let wake = killed_at.map_or(kill_at, |t| t + AFTER_KILL_BOUND);
            tokio::select! {
                biased;
                status = &mut self.exit => return status.unwrap_or(KILLED),
                Some(cmd) = self.commands.recv() => {
                    let sooner = match cmd {
                        Command::Stop { grace } => Instant::now() + grace,
                        Command::Kill => Instant::now(),
                    };
                    kill_at = kill_at.min(sooner);
                }
                _ = sleep_until(wake) => {
                    if killed_at.is_some() {
                        tracing::warn!(app = %self.app, instance = self.id, "instance not reaped 30 s after SIGKILL; reporting it as killed");
                        return KILLED;
                    }
                }
            }
        }
    }

    async fn exited_during_startup(&mut self, status: ExitStatus) {
        tracing::warn!(app = %self.app, instance = self.id, ?status, "instance exited during startup");
        // Leftovers in its group would keep the pipes open.
        signal_group(self.pid, Signal::SIGKILL);
        let mut readers = std::mem::take(&mut self.readers);
        let _ = tokio::time::timeout(OUTPUT_SETTLE, async {
            for reader in readers.iter_mut() {
                let _ = reader.await;
            }
        })
        .await;
        let output = pipes::lock(&self.capture).startup_output();
        self.event(InstanceEvent::Exited {
            status,
            during_startup: true,
            output,
        });
    }
}
