//! In-memory apps and instances.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tako_ipc::{AppRoutes, Backend};
use tokio::sync::oneshot;

use super::error::StartError;
use crate::sync::lock;

/// What it takes to start an instance of one build.
#[derive(Debug, Clone, PartialEq)]
pub struct Build {
    pub version: String,
    pub path: String,
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
}

/// The switched-in configuration of an app.
#[derive(Debug, Clone)]
pub struct AppConfig {
    pub version: String,
    pub path: String,
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub min_instances: u8,
    pub idle_timeout_secs: u32,
    pub base_port: u16,
    pub routes: Vec<String>,
    pub stopped: bool,
}

impl AppConfig {
    pub fn build(&self) -> Arc<Build> {
        Arc::new(Build {
            version: self.version.clone(),
            path: self.path.clone(),
            argv: self.command.clone(),
            env: self.env.clone(),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum InstState {
    Starting,
    Ready,
    Healthy,
    Unhealthy,
    Draining,
    Stopped,
}

impl InstState {
    pub fn as_str(self) -> &'static str {
        match self {
            InstState::Starting => "starting",
            InstState::Ready => "ready",
            InstState::Healthy => "healthy",
            InstState::Unhealthy => "unhealthy",
            InstState::Draining => "draining",
            InstState::Stopped => "stopped",
        }
    }

    /// In rotation: workers send it traffic.
    pub fn serves(self) -> bool {
        matches!(self, InstState::Ready | InstState::Healthy)
    }
}

pub type StartWaiter = oneshot::Sender<Result<(), StartError>>;

pub struct Instance {
    pub id: u32,
    pub build: Arc<Build>,
    pub slot: u16,
    pub port: u16,
    pub pid: Option<u32>,
    pub state: InstState,
    pub spawned: Instant,
    /// Epoch of the table that first carried it as ready.
    pub ready_epoch: Option<u64>,
    pub healthy_since: Option<Instant>,
    pub last_activity: Instant,
    /// Requests seen at the last activity check.
    pub seen_requests: u64,
    pub start_waiters: Vec<StartWaiter>,
    pub exit_waiters: Vec<oneshot::Sender<()>>,
    /// Replace it when it dies (current build of an always-on app).
    pub replace_on_exit: bool,
}

pub struct App {
    pub name: String,
    pub config: AppConfig,
    /// False while the first deploy runs: the app is invisible to commands and routing.
    pub visible: bool,
    pub instances: BTreeMap<u32, Instance>,
    pub next_id: u32,
    pub last_error: Option<String>,
    pub rollout: bool,
    pub restoring: bool,
    pub cold_start_failed: bool,
    /// A cold start is under way (at most one at a time).
    pub waking: bool,
    pub consecutive_failures: u32,
    pub replacement_pending: bool,
}

impl App {
    pub fn new(name: String, config: AppConfig, visible: bool) -> App {
        App {
            name,
            config,
            visible,
            instances: BTreeMap::new(),
            next_id: 1,
            last_error: None,
            rollout: false,
            restoring: false,
            cold_start_failed: false,
            waking: false,
            consecutive_failures: 0,
            replacement_pending: false,
        }
    }

    /// Live instance processes in any state.
    pub fn live_count(&self) -> usize {
        self.instances.len()
    }

    pub fn on_demand(&self) -> bool {
        self.config.min_instances == 0
    }

    /// The app's `state` in its status object (docs/management-protocol.md, "Status
    /// objects").
    pub fn state(&self) -> &'static str {
        if self.config.stopped {
            return "stopped";
        }
        if self.rollout || self.restoring {
            return "deploying";
        }
        if self.instances.values().any(|i| i.state.serves()) {
            return "running";
        }
        if self
            .instances
            .values()
            .any(|i| i.state == InstState::Starting)
        {
            return "deploying";
        }
        if self.on_demand() && !self.cold_start_failed {
            return "idle";
        }
        "error"
    }
}

#[derive(Default)]
pub struct Registry {
    pub apps: BTreeMap<String, App>,
    /// Apps with an operation running (the per-app try-lock).
    pub busy: HashSet<String>,
    /// The uid (and gid) of each app, root only: stored ones from restore, new ones from
    /// [`super::identity`]. An app in its first deploy is here before it is in `apps`.
    pub ids: BTreeMap<String, u32>,
}

impl Registry {
    pub fn visible(&self, name: &str) -> Option<&App> {
        self.apps.get(name).filter(|a| a.visible)
    }

    /// Route entries for workers: every visible app with its routes, and hidden apps (a
    /// first deploy) with their backends only, so their instances can become healthy.
    pub fn route_entries(&self) -> Vec<AppRoutes> {
        self.apps
            .values()
            .map(|a| AppRoutes {
                name: a.name.clone(),
                routes: if a.visible {
                    a.config.routes.clone()
                } else {
                    Vec::new()
                },
                release_path: a.config.path.clone(),
                stopped: a.config.stopped,
                on_demand: a.on_demand(),
                backends: a
                    .instances
                    .values()
                    .filter(|i| i.state.serves())
                    .map(|i| Backend {
                        instance_id: i.id,
                        port: i.port,
                    })
                    .collect(),
                // A restoring app will have instances soon: hold its requests, do not refuse.
                starting: a.instances.values().any(|i| i.state == InstState::Starting)
                    || (a.restoring && !a.config.stopped),
            })
            .collect()
    }

    /// Port block bases in use (unshifted).
    pub fn used_bases(&self) -> HashSet<u16> {
        self.apps.values().map(|a| a.config.base_port).collect()
    }
}

/// The apps registry as a service: the registry behind its own lock, and the per-app
/// operation locks (docs/management-protocol.md, "One operation per app").
#[derive(Default)]
pub struct AppsRegistry {
    inner: Mutex<Registry>,
}

impl AppsRegistry {
    pub fn new(registry: Registry) -> AppsRegistry {
        AppsRegistry {
            inner: Mutex::new(registry),
        }
    }

    /// The registry under its lock. Never held across an `.await`, nor while a message goes
    /// to the launcher or a table is published (docs/architecture.md, "Lock order in the
    /// master").
    pub fn lock(&self) -> MutexGuard<'_, Registry> {
        lock(&self.inner)
    }

    /// The per-app try-lock: `None` while another operation runs on `name`.
    pub fn try_lock_app(&self, name: &str) -> Option<AppLock<'_>> {
        if !self.lock().busy.insert(name.to_string()) {
            return None;
        }
        Some(AppLock {
            apps: self,
            name: name.to_string(),
        })
    }
}

/// Releases the per-app lock when dropped.
pub struct AppLock<'a> {
    apps: &'a AppsRegistry,
    name: String,
}

impl Drop for AppLock<'_> {
    fn drop(&mut self) {
        self.apps.lock().busy.remove(&self.name);
    }
}
