//! The app operations besides deploy: reload, stop, delete, update_secrets, rollback,
//! list_releases (docs/management-protocol.md, "Commands").

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::{json, Value};

use super::deploy::DeployRequest;
use super::error::CommandError;
use crate::beneath::{Kind, WalkError};
use crate::datadir::ReleasePathError;
use crate::master::Master;
use crate::state::{ReleaseKind, ReleaseResult};
use tako_protocol::manifest;
use tako_protocol::validate::ValidRoutes;

/// At most this many entries of `releases/` are read for a listing.
const MAX_LISTED_RELEASES: usize = 10_000;

impl Master {
    pub fn app_exists(&self, app: &str) -> bool {
        self.apps.lock().visible(app).is_some()
    }

    fn not_found(app: &str) -> CommandError {
        CommandError::AppNotFound {
            app: app.to_string(),
        }
    }

    /// `reload`: rolling restart of the current build, or a fresh start.
    pub async fn reload(self: &Arc<Self>, app: &str) -> Result<Value, CommandError> {
        let (config, live) = {
            let reg = self.apps.lock();
            let a = reg.visible(app).ok_or_else(|| Self::not_found(app))?;
            (a.config.clone(), a.live_count())
        };
        let build = config.build();
        if !self.launcher_ready().await {
            return Err(CommandError::StartLauncherDown);
        }
        if live == 0 {
            self.store
                .set_stopped(app.to_string(), false)
                .await
                .map_err(CommandError::StartSave)?;
            {
                let mut reg = self.apps.lock();
                if let Some(a) = reg.apps.get_mut(app) {
                    a.config.stopped = false;
                    a.cold_start_failed = false;
                }
            }
            self.publish();
            for _ in 0..config.min_instances {
                let (_, rx) = self
                    .spawn_instance(app, build.clone(), true)
                    .map_err(|detail| CommandError::StartInstance { detail })?;
                match rx.await {
                    Ok(Ok(())) => {}
                    Ok(Err(detail)) => return Err(CommandError::StartInstance { detail }),
                    Err(_) => return Err(CommandError::StartInstanceLost),
                }
            }
            return Ok(
                json!({"app": app, "note": "App was not running, started fresh", "status": "started"}),
            );
        }
        let mut data = self
            .roll_out(app, build, config.min_instances, None)
            .await?;
        data["status"] = json!("reloaded");
        if let Some(obj) = data.as_object_mut() {
            obj.remove("version");
            obj.remove("on_demand");
            obj.remove("startup_validated");
            obj.remove("warm_instance");
        }
        Ok(data)
    }

    /// `stop`: durable; answers once every instance has exited.
    pub async fn stop_app(self: &Arc<Self>, app: &str) -> Result<Value, CommandError> {
        let not_found = || CommandError::StopNotFound {
            app: app.to_string(),
        };
        if !self.app_exists(app) {
            return Err(not_found());
        }
        self.store
            .set_stopped(app.to_string(), true)
            .await
            .map_err(CommandError::StopSave)?;
        let ids = {
            let mut reg = self.apps.lock();
            let Some(a) = reg.apps.get_mut(app) else {
                return Err(not_found());
            };
            a.config.stopped = true;
            a.instances.keys().copied().collect::<Vec<_>>()
        };
        self.publish();
        self.purge_cache(app);
        self.stop_all(app, ids).await;
        // Helpers that left the instances' sessions end too.
        self.sweep_app(app);
        Ok(json!({"app": app, "status": "stopped"}))
    }

    async fn stop_all(self: &Arc<Self>, app: &str, ids: Vec<u32>) {
        let tasks: Vec<_> = ids
            .into_iter()
            .map(|id| {
                let me = self.clone();
                let app = app.to_string();
                tokio::spawn(async move { me.stop_instance(&app, id, true).await })
            })
            .collect();
        for t in tasks {
            let _ = t.await;
        }
    }

    /// `delete`: idempotent.
    pub async fn delete_app(self: &Arc<Self>, app: &str) -> Result<Value, CommandError> {
        let ids = {
            let reg = self.apps.lock();
            reg.visible(app)
                .map(|a| a.instances.keys().copied().collect::<Vec<_>>())
        };
        let Some(ids) = ids else {
            // A valid name that is not registered: nothing to stop; clear any stray rows.
            self.store
                .delete_app(app.to_string())
                .await
                .map_err(CommandError::Delete)?;
            // A home left by a first deploy that failed.
            self.release_app_identity(app);
            return Ok(json!({"app": app, "existed": false, "status": "deleted"}));
        };
        self.stop_all(app, ids).await;
        // Every process of the app's uid ends before the uid is free for another app.
        self.sweep_app(app);
        self.store
            .delete_app(app.to_string())
            .await
            .map_err(CommandError::Delete)?;
        self.apps.lock().apps.remove(app);
        self.release_app_identity(app);
        self.publish();
        self.purge_cache(app);
        Ok(json!({"app": app, "existed": true, "status": "deleted"}))
    }

    /// `update_secrets`: merged and persisted; running instances keep their env.
    pub async fn update_secrets(
        &self,
        app: &str,
        secrets: BTreeMap<String, String>,
    ) -> Result<Value, CommandError> {
        let merged = {
            let reg = self.apps.lock();
            let a = reg.visible(app).ok_or_else(|| Self::not_found(app))?;
            let mut env = a.config.env.clone();
            env.extend(secrets);
            env
        };
        self.store
            .update_env(app.to_string(), merged.clone())
            .await
            .map_err(CommandError::SecretsSave)?;
        if let Some(a) = self.apps.lock().apps.get_mut(app) {
            a.config.env = merged;
        }
        Ok(
            json!({"app": app, "note": "Call reload to apply secrets to running instances", "status": "updated"}),
        )
    }

    /// Builds the deploy request of a rollback from the stored config
    /// (docs/management-protocol.md, "`rollback`"). The target release is opened like a
    /// deploy's path: a symlink on the way is refused.
    pub fn rollback_request(
        &self,
        app: &str,
        version: &str,
    ) -> Result<DeployRequest, CommandError> {
        let (config_path, routes, env, instances, idle_timeout) = {
            let reg = self.apps.lock();
            let a = reg.visible(app).ok_or_else(|| Self::not_found(app))?;
            if a.config.routes.is_empty() {
                return Err(CommandError::RollbackNoRoutes {
                    app: app.to_string(),
                });
            }
            // Stored routes were normalized when they were deployed or restored.
            let patterns = a
                .config
                .routes
                .iter()
                .filter_map(|r| tako_ipc::route::parse_route(r).ok())
                .collect();
            (
                a.config.path.clone(),
                ValidRoutes { patterns },
                a.config.env.clone(),
                a.config.min_instances,
                a.config.idle_timeout_secs,
            )
        };
        let target = self
            .data
            .app_releases(app)
            .join(version)
            .join(self.release_subdir(app, &config_path));
        let target = target.display().to_string();
        match self.data.open_release(app, &target) {
            Ok(_) => {}
            Err(ReleasePathError::Refused(e))
                if e.is_missing() || matches!(e, WalkError::NotDirectory(_)) =>
            {
                return Err(CommandError::ReleaseNotFound {
                    app: app.to_string(),
                    version: version.to_string(),
                })
            }
            Err(e) => return Err(CommandError::RollbackPath(e)),
        }
        Ok(DeployRequest {
            app: app.to_string(),
            version: version.to_string(),
            path: target,
            routes,
            env,
            instances,
            idle_timeout,
            kind: ReleaseKind::Rollback,
        })
    }

    /// The part of the app's release path below `releases/<version>` (a monorepo app runs
    /// in a subdirectory of its release); empty when the stored path has none.
    fn release_subdir(&self, app: &str, stored: &str) -> PathBuf {
        self.data
            .release_rel(app, stored)
            .map(|rel| rel.components().skip(1).collect())
            .unwrap_or_default()
    }

    /// `list_releases`. Only real directories below the app's `releases` are listed, read
    /// through descriptors.
    pub async fn list_releases(&self, app: &str) -> Result<Value, CommandError> {
        let (current, stored) = {
            let reg = self.apps.lock();
            let a = reg.visible(app).ok_or_else(|| Self::not_found(app))?;
            (a.config.version.clone(), a.config.path.clone())
        };
        let subdir = self.release_subdir(app, &stored);
        let history = self
            .store
            .releases(app.to_string())
            .await
            .unwrap_or_default();
        let releases = match self.data.open_releases(app) {
            Ok(d) => d,
            Err(e) if e.is_missing() => return Ok(json!({"app": app, "releases": []})),
            Err(e) => return Err(CommandError::ReadReleases(e)),
        };
        let entries = releases
            .entries(MAX_LISTED_RELEASES)
            .map_err(CommandError::ReadReleases)?;
        let mut rows: Vec<(Option<u64>, String, Value)> = Vec::new();
        for (name, kind, st) in entries {
            if kind != Kind::Dir {
                continue;
            }
            let version = name.to_string_lossy().into_owned();
            let deployed = history
                .iter()
                .filter(|r| r.version == version && r.result == ReleaseResult::Success)
                .map(|r| r.deployed_at_unix_secs)
                .max()
                .or_else(|| u64::try_from(st.st_mtime).ok());
            let info = releases
                .open_dir(&name)
                .and_then(|d| d.walk(&subdir))
                .and_then(|d| d.read_file(OsStr::new("app.json"), manifest::MANIFEST_LIMIT))
                .map(|b| manifest::release_info(&b))
                .unwrap_or_default();
            rows.push((
                deployed,
                version.clone(),
                json!({"commit_message": info.commit_message, "current": version == current,
                       "deployed_at_unix_secs": deployed, "git_dirty": info.git_dirty, "version": version}),
            ));
        }
        rows.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| b.1.cmp(&a.1)));
        Ok(json!({"app": app, "releases": rows.into_iter().map(|r| r.2).collect::<Vec<_>>()}))
    }
}
