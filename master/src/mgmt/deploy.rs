//! Deploy, rollback and reload: prepare, start new, switch, drain old
//! (docs/architecture.md, "The path of a deploy"). Every failure leaves the app exactly as
//! it was.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{json, Value};
use tako_ipc::InstallResult;

use super::error::CommandError;
use crate::apps::error::{ReleaseError, StartError};
use crate::apps::registry::{App, AppConfig, Build, InstState};
use crate::apps::release::Lease;
use crate::clock::unix_now;
use crate::datadir::Release;
use crate::lifecycle::instance_events::describe_exit;
use crate::master::Master;
use crate::ports::free_base;
use crate::state::{ReleaseKind, StoredApp};
use tako_protocol::manifest;
use tako_protocol::validate::{check_route_conflicts, ValidRoutes, ValidationError};

pub const INSTALL_TIMEOUT_MS: u64 = 600_000;

/// A validated deploy or rollback.
#[derive(Debug, Clone)]
pub struct DeployRequest {
    pub app: String,
    pub version: String,
    /// Canonical release path.
    pub path: String,
    /// Normalized routes in deploy order.
    pub routes: ValidRoutes,
    pub env: BTreeMap<String, String>,
    pub instances: u8,
    pub idle_timeout: u32,
    pub kind: ReleaseKind,
}

impl Master {
    /// The route conflict ("Validation", Routes, in docs/management-protocol.md): one of
    /// `routes` is a pattern another registered app already has.
    pub fn route_conflict(&self, app: &str, routes: &ValidRoutes) -> Result<(), ValidationError> {
        let reg = self.apps.lock();
        let taken: Vec<(&str, tako_ipc::route::RoutePattern)> = reg
            .apps
            .values()
            .filter(|a| a.visible)
            .flat_map(|a| {
                a.config
                    .routes
                    .iter()
                    .filter_map(|r| tako_ipc::route::parse_route(r).ok())
                    .map(move |p| (a.name.as_str(), p))
            })
            .collect();
        check_route_conflicts(app, routes, taken.iter().map(|(owner, p)| (*owner, p)))
    }

    /// Runs the deploy algorithm. The caller holds the app lock and has validated `req`.
    /// Commands that start processes wait (bounded) for the launcher: right after boot the
    /// socket answers before the launcher is up.
    pub async fn launcher_ready(&self) -> bool {
        self.launcher
            .wait_ready(std::time::Duration::from_secs(15))
            .await
    }

    pub async fn deploy(self: &Arc<Self>, req: DeployRequest) -> Result<Value, CommandError> {
        if !self.launcher_ready().await {
            return Err(CommandError::RolloutLauncherDown);
        }
        self.route_conflict(&req.app, &req.routes)?;
        let prepared = self.prepare_release(&req).await;
        let argv = match prepared {
            Ok(argv) => argv,
            Err(e) => {
                self.record_failure(&req, &e).await;
                self.forget_unused_uid(&req.app);
                return Err(e);
            }
        };
        let build = Arc::new(Build {
            version: req.version.clone(),
            path: req.path.clone(),
            argv,
            env: req.env.clone(),
        });
        let result = self
            .roll_out(&req.app, build, req.instances, Some(&req))
            .await;
        if let Err(e) = &result {
            self.record_failure(&req, e).await;
            self.forget_unused_uid(&req.app);
        }
        result
    }

    async fn record_failure(&self, req: &DeployRequest, error: &CommandError) {
        let r = self
            .store
            .record_release_failure(
                req.app.clone(),
                req.version.clone(),
                req.path.clone(),
                req.kind,
                error.to_string(),
                unix_now(),
            )
            .await;
        if let Err(e) = r {
            tracing::error!(app = %req.app, error = %e, "cannot record the failed release");
        }
    }

    /// Opens the release, reads the manifest and runs the install step. Returns the argv.
    async fn prepare_release(&self, req: &DeployRequest) -> Result<Vec<String>, CommandError> {
        let release = self
            .data
            .open_release(&req.app, &req.path)
            .map_err(ReleaseError::Open)?;
        let m = release.manifest().map_err(ReleaseError::from)?;
        if let Some(argv) = manifest::install_argv(&m, release.has_bun_lockfile()) {
            self.run_install(req, &release, argv, m.runtime == "bun")
                .await?;
        }
        if m.runtime == "bun" && !release.has_wrapper() {
            return Err(ReleaseError::BunWrapperMissing {
                wrapper: release.path.join(manifest::WRAPPER),
            }
            .into());
        }
        Ok(m.argv)
    }

    async fn run_install(
        &self,
        req: &DeployRequest,
        release: &Release,
        argv: Vec<String>,
        bun_default: bool,
    ) -> Result<(), CommandError> {
        let log_dir = self
            .data
            .prepare_app_logs(&req.app, self.users.as_ref())
            .map_err(ReleaseError::LogDir)?;
        let custom = argv.first().map(String::as_str) == Some("sh");
        let identity = self.app_identity(&req.app).map_err(ReleaseError::from)?;
        let env = crate::apps::env::build_env(
            &req.env,
            &req.version,
            &identity.home,
            identity.cache.as_deref(),
            None,
        );
        let uid = identity.ids.as_ref().map(|i| i.uid);
        let spec = tako_ipc::InstallSpec {
            request_id: 0,
            app: req.app.clone(),
            argv,
            cwd: release.path.display().to_string(),
            env,
            log_dir: log_dir.display().to_string(),
            timeout_ms: INSTALL_TIMEOUT_MS,
            ids: identity.ids,
        };
        let lease = Lease::lend(self.users.as_ref(), uid, release).map_err(ReleaseError::from)?;
        let result = self.launcher.install(spec).await;
        // What the install left running (a helper in a session of its own) ends with it,
        // unless instances of the app run under the same uid (a redeploy): those must live,
        // and the app's next stop or delete ends such leftovers.
        self.sweep_app(&req.app);
        lease.give_back();
        let step = if custom {
            "Release dependency install"
        } else {
            "Bun dependency install"
        };
        let failure = match result {
            Err(_) => return Err(CommandError::InstallLauncherLost),
            Ok(InstallResult::Ok) => return Ok(()),
            Ok(InstallResult::Failed { status, output }) => ReleaseError::InstallFailed {
                step,
                exit: describe_exit(status),
                output: tako_ipc::output::summarize(&output),
            },
            Ok(InstallResult::TimedOut) => ReleaseError::InstallTimedOut,
            Ok(InstallResult::SpawnError { error }) if bun_default && !custom => {
                ReleaseError::BunInstallSpawn {
                    path: req.path.clone(),
                    error,
                }
            }
            Ok(InstallResult::SpawnError { error }) => ReleaseError::InstallSpawn { step, error },
        };
        Err(failure.into())
    }

    /// Starts `build`, switches the app to it and drains what ran before. `req` is `None`
    /// for a reload (same config, nothing persisted but the stopped flag).
    pub async fn roll_out(
        self: &Arc<Self>,
        app: &str,
        build: Arc<Build>,
        instances: u8,
        req: Option<&DeployRequest>,
    ) -> Result<Value, CommandError> {
        // Register a first deploy invisibly; find what runs now.
        let (new_app, old_ids, base_port) = {
            let mut reg = self.apps.lock();
            let used = reg.used_bases();
            match reg.apps.get_mut(app) {
                Some(a) if a.visible => {
                    a.rollout = true;
                    // Instances already leaving (a previous rollout's drain) are not ours to count.
                    let old: Vec<u32> = a
                        .instances
                        .values()
                        .filter(|i| !matches!(i.state, InstState::Draining | InstState::Stopped))
                        .map(|i| i.id)
                        .collect();
                    (false, old, a.config.base_port)
                }
                _ => {
                    let Some(base) = free_base(&used) else {
                        return Err(CommandError::NoPortBlock {
                            app: app.to_string(),
                        });
                    };
                    let Some(req) = req else {
                        return Err(CommandError::AppNotFound {
                            app: app.to_string(),
                        });
                    };
                    let config = AppConfig {
                        version: req.version.clone(),
                        path: req.path.clone(),
                        command: build.argv.clone(),
                        env: req.env.clone(),
                        min_instances: req.instances,
                        idle_timeout_secs: req.idle_timeout,
                        base_port: base,
                        routes: req.routes.normalized(),
                        stopped: false,
                    };
                    let mut a = App::new(app.to_string(), config, false);
                    a.rollout = true;
                    reg.apps.insert(app.to_string(), a);
                    (true, Vec::new(), base)
                }
            }
        };
        let rolling = !old_ids.is_empty();
        // An instance that did not come up: a rolling update answers with the rollback
        // document, a first start with the instance's error.
        let start_failed = |detail: StartError| {
            if rolling {
                CommandError::RolledBack {
                    app: app.to_string(),
                    error: detail.to_string(),
                }
            } else if instances == 0 {
                CommandError::WarmStartFailed { detail }
            } else {
                CommandError::StartFailed { detail }
            }
        };
        let target = instances.max(1) as usize;
        let mut started: Vec<u32> = Vec::new();
        let mut failure: Option<CommandError> = None;
        for _ in 0..target {
            match self.spawn_instance(app, build.clone(), false) {
                Ok((id, rx)) => {
                    started.push(id);
                    match rx.await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            failure = Some(start_failed(e));
                            break;
                        }
                        Err(_) => {
                            failure = Some(CommandError::RolloutInstanceLost);
                            break;
                        }
                    }
                }
                Err(e) => {
                    failure = Some(start_failed(e));
                    break;
                }
            }
            if self.is_shutting_down() {
                failure = Some(CommandError::ShuttingDown);
                break;
            }
        }
        if let Some(e) = failure {
            self.abandon(app, &started, new_app).await;
            return Err(e);
        }

        // Switch: persist first, then swap in memory.
        let routes = req.map(|r| r.routes.normalized());
        if let Some(req) = req {
            if let Err(e) = self.route_conflict(app, &req.routes) {
                self.abandon(app, &started, new_app).await;
                return Err(e.into());
            }
            let stored = StoredApp {
                name: app.to_string(),
                version: req.version.clone(),
                path: req.path.clone(),
                cwd: req.path.clone(),
                command: build.argv.clone(),
                env: req.env.clone(),
                min_instances: req.instances,
                base_port,
                idle_timeout_secs: req.idle_timeout,
                stopped: false,
                routes: routes.clone().unwrap_or_default(),
                uid: self.app_uid_of(app),
            };
            if let Err(e) = self.store.commit_deploy(stored, req.kind, unix_now()).await {
                self.abandon(app, &started, new_app).await;
                return Err(CommandError::DeploySave(e));
            }
        } else if let Err(e) = self.store.set_stopped(app.to_string(), false).await {
            self.abandon(app, &started, new_app).await;
            return Err(CommandError::RolloutSave(e));
        }
        {
            let mut reg = self.apps.lock();
            if let Some(a) = reg.apps.get_mut(app) {
                if let (Some(req), Some(routes)) = (req, &routes) {
                    a.config = AppConfig {
                        version: req.version.clone(),
                        path: req.path.clone(),
                        command: build.argv.clone(),
                        env: req.env.clone(),
                        min_instances: req.instances,
                        idle_timeout_secs: req.idle_timeout,
                        base_port,
                        routes: routes.clone(),
                        stopped: false,
                    };
                }
                a.config.stopped = false;
                a.visible = true;
                a.rollout = false;
                a.cold_start_failed = false;
                let always_on = !a.on_demand();
                for id in &started {
                    if let Some(i) = a.instances.get_mut(id) {
                        i.replace_on_exit = always_on;
                    }
                }
                for id in &old_ids {
                    if let Some(i) = a.instances.get_mut(id) {
                        i.replace_on_exit = false;
                        if i.state != InstState::Stopped {
                            i.state = InstState::Draining;
                        }
                    }
                }
            }
        }
        let epoch = self.publish();
        self.purge_cache(app);
        // A new instance that died between its health check and the switch was not yet
        // marked for replacement: top the new build up to its count (a no-op when it is).
        self.schedule_replacement(app);
        // Answer once the old instances are out of every worker's rotation.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        self.wait_until(deadline, |m| m.workers.applied_epoch() >= epoch)
            .await;
        for id in &old_ids {
            let me = self.clone();
            let app = app.to_string();
            let id = *id;
            tokio::spawn(async move { me.stop_instance(&app, id, true).await });
        }
        if let Some(routes) = &routes {
            if self.ensure_certificates(routes) {
                // Answer once every worker serves the new certificates: workers apply messages
                // in order, so acknowledging a later route table means the certificates are in.
                let epoch = self.publish();
                let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
                self.wait_until(deadline, |m| m.workers.applied_epoch() >= epoch)
                    .await;
            }
            crate::acme::queue_routes(self, routes);
        }

        let version = build.version.clone();
        let mut data = if rolling {
            json!({"app": app, "new_instances": started.len(), "old_instances": old_ids.len(),
                   "rolled_back": false, "status": "deployed", "version": version})
        } else {
            json!({"app": app, "new_app": new_app, "on_demand": instances == 0, "status": "deployed", "version": version})
        };
        if instances == 0 {
            data["on_demand"] = json!(true);
            data["startup_validated"] = json!(true);
            data["warm_instance"] = json!(true);
        }
        Ok(data)
    }

    /// Undo a failed start: stop what this attempt started; forget a first deploy.
    async fn abandon(self: &Arc<Self>, app: &str, started: &[u32], new_app: bool) {
        let stops: Vec<_> = started
            .iter()
            .map(|id| {
                let me = self.clone();
                let app = app.to_string();
                let id = *id;
                tokio::spawn(async move { me.stop_instance(&app, id, true).await })
            })
            .collect();
        for s in stops {
            let _ = s.await;
        }
        if new_app {
            // A first deploy that failed leaves nothing running under the app's uid.
            self.sweep_app(app);
        }
        {
            let mut reg = self.apps.lock();
            if new_app {
                reg.apps.remove(app);
            } else if let Some(a) = reg.apps.get_mut(app) {
                a.rollout = false;
            }
        }
        self.publish();
        if !new_app {
            // Crashes of the old build are not replaced while a rollout runs; now that it
            // has failed, the old build is the current one again and must be back at its
            // count (a no-op when it is).
            self.schedule_replacement(app);
        }
    }
}
