//! The app operations besides deploy: reload, stop, delete, update_secrets, rollback,
//! list_releases (instances.md §14, management-protocol.md §8.5-§8.13).

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{json, Value};

use super::deploy::DeployRequest;
use super::manifest;
use crate::core::{lock, Master};
use crate::state::{ReleaseKind, ReleaseResult};
use crate::users::Users;

/// Hands a release directory to the app user for the install step and back to the deploy
/// user afterwards (instances.md §2). A no-op without privilege separation.
pub struct ReleaseOwnership {
    path: PathBuf,
    users: Option<Users>,
}

impl ReleaseOwnership {
    pub fn hand_to_app(users: Option<&Users>, path: &Path) -> ReleaseOwnership {
        if let Some(u) = users {
            // lchown: never follow a symlink planted at the release path.
            if let Err(e) = std::os::unix::fs::lchown(path, Some(u.app.uid), Some(u.app.gid)) {
                tracing::warn!(path = %path.display(), error = %e, "cannot hand the release directory to the app user");
            }
        }
        ReleaseOwnership {
            path: path.to_path_buf(),
            users: users.cloned(),
        }
    }

    pub fn give_back(self) {
        let Some(u) = &self.users else { return };
        let (deploy_uid, deploy_gid) = (u.deploy.uid, u.deploy.gid);
        let app_uid = u.app.uid;
        if let Err(e) = std::os::unix::fs::lchown(&self.path, Some(deploy_uid), Some(deploy_gid)) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot give the release directory back");
        }
        let mut stack = vec![self.path.clone()];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let p = entry.path();
                let Ok(md) = std::fs::symlink_metadata(&p) else {
                    continue;
                };
                if md.uid() == app_uid && !(md.is_file() && md.nlink() > 1) {
                    let _ = std::os::unix::fs::lchown(&p, Some(deploy_uid), Some(deploy_gid));
                }
                if md.is_dir() {
                    stack.push(p);
                }
            }
        }
    }
}

impl Master {
    pub fn app_exists(&self, app: &str) -> bool {
        lock(&self.apps).visible(app).is_some()
    }

    /// `reload`: rolling restart of the current build, or a fresh start.
    pub async fn reload(self: &Arc<Self>, app: &str) -> Result<Value, String> {
        let (config, live) = {
            let reg = lock(&self.apps);
            let a = reg
                .visible(app)
                .ok_or_else(|| format!("App not found: {app}"))?;
            (a.config.clone(), a.live_count())
        };
        let build = config.build();
        if !self.launcher_ready().await {
            return Err("Start failed: the app launcher is not running".into());
        }
        if live == 0 {
            if let Err(e) = self.store.set_stopped(app.to_string(), false).await {
                return Err(format!("Start failed: could not save state: {e}"));
            }
            {
                let mut reg = lock(&self.apps);
                if let Some(a) = reg.apps.get_mut(app) {
                    a.config.stopped = false;
                    a.cold_start_failed = false;
                }
            }
            self.publish();
            for _ in 0..config.min_instances {
                let (_, rx) = self
                    .spawn_instance(app, build.clone(), true)
                    .map_err(|e| format!("Start failed: {e}"))?;
                match rx.await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Err(format!("Start failed: {e}")),
                    Err(_) => return Err("Start failed: the instance was lost".into()),
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
    pub async fn stop_app(self: &Arc<Self>, app: &str) -> Result<Value, String> {
        if !self.app_exists(app) {
            return Err(format!("Stop failed: App not found: {app}"));
        }
        self.store
            .set_stopped(app.to_string(), true)
            .await
            .map_err(|e| format!("Stop failed: could not save state: {e}"))?;
        let ids = {
            let mut reg = lock(&self.apps);
            let Some(a) = reg.apps.get_mut(app) else {
                return Err(format!("Stop failed: App not found: {app}"));
            };
            a.config.stopped = true;
            a.instances.keys().copied().collect::<Vec<_>>()
        };
        self.publish();
        self.purge_cache(app);
        self.stop_all(app, ids).await;
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
    pub async fn delete_app(self: &Arc<Self>, app: &str) -> Result<Value, String> {
        let ids = {
            let reg = lock(&self.apps);
            reg.visible(app)
                .map(|a| a.instances.keys().copied().collect::<Vec<_>>())
        };
        let Some(ids) = ids else {
            // A valid name that is not registered: nothing to stop; clear any stray rows.
            self.store
                .delete_app(app.to_string())
                .await
                .map_err(|e| format!("Delete failed: {e}"))?;
            return Ok(json!({"app": app, "existed": false, "status": "deleted"}));
        };
        self.stop_all(app, ids).await;
        self.store
            .delete_app(app.to_string())
            .await
            .map_err(|e| format!("Delete failed: {e}"))?;
        lock(&self.apps).apps.remove(app);
        self.publish();
        self.purge_cache(app);
        Ok(json!({"app": app, "existed": true, "status": "deleted"}))
    }

    /// `update_secrets`: merged and persisted; running instances keep their env.
    pub async fn update_secrets(
        &self,
        app: &str,
        secrets: BTreeMap<String, String>,
    ) -> Result<Value, String> {
        let merged = {
            let reg = lock(&self.apps);
            let a = reg
                .visible(app)
                .ok_or_else(|| format!("App not found: {app}"))?;
            let mut env = a.config.env.clone();
            env.extend(secrets);
            env
        };
        self.store
            .update_env(app.to_string(), merged.clone())
            .await
            .map_err(|e| format!("Update secrets failed: could not save state: {e}"))?;
        if let Some(a) = lock(&self.apps).apps.get_mut(app) {
            a.config.env = merged;
        }
        Ok(
            json!({"app": app, "note": "Call reload to apply secrets to running instances", "status": "updated"}),
        )
    }

    /// Builds the deploy request of a rollback from the stored config (§8.5).
    pub fn rollback_request(&self, app: &str, version: &str) -> Result<DeployRequest, String> {
        let reg = lock(&self.apps);
        let a = reg
            .visible(app)
            .ok_or_else(|| format!("App not found: {app}"))?;
        if a.config.routes.is_empty() {
            return Err(format!("Cannot rollback '{app}': no routes are configured"));
        }
        let releases = self.data.app_releases(app);
        let current_root = releases.join(&a.config.version);
        let subdir = Path::new(&a.config.path)
            .strip_prefix(&current_root)
            .ok()
            .map(Path::to_path_buf)
            .or_else(|| {
                // The stored path is canonical; the root may not be.
                std::fs::canonicalize(&current_root).ok().and_then(|root| {
                    Path::new(&a.config.path)
                        .strip_prefix(root)
                        .ok()
                        .map(Path::to_path_buf)
                })
            })
            .unwrap_or_default();
        let target = releases.join(version).join(subdir);
        if !target.is_dir() {
            return Err(format!("Release '{version}' not found for app '{app}'"));
        }
        let path = std::fs::canonicalize(&target)
            .map_err(|_| format!("Release '{version}' not found for app '{app}'"))?
            .display()
            .to_string();
        let route_keys = a
            .config
            .routes
            .iter()
            .filter_map(|r| {
                tako_ipc::route::parse_route(r)
                    .ok()
                    .map(|p| p.identity_key())
            })
            .collect();
        Ok(DeployRequest {
            app: app.to_string(),
            version: version.to_string(),
            path,
            routes: a.config.routes.clone(),
            route_keys,
            env: a.config.env.clone(),
            instances: a.config.min_instances,
            idle_timeout: a.config.idle_timeout_secs,
            kind: ReleaseKind::Rollback,
        })
    }

    /// `list_releases` (§8.13).
    pub async fn list_releases(&self, app: &str) -> Result<Value, String> {
        let (current, subdir) = {
            let reg = lock(&self.apps);
            let a = reg
                .visible(app)
                .ok_or_else(|| format!("App not found: {app}"))?;
            let root = self.data.app_releases(app).join(&a.config.version);
            let root = std::fs::canonicalize(&root).unwrap_or(root);
            let sub = Path::new(&a.config.path)
                .strip_prefix(&root)
                .map(Path::to_path_buf)
                .unwrap_or_default();
            (a.config.version.clone(), sub)
        };
        let dir = self.data.app_releases(app);
        let history = self
            .store
            .releases(app.to_string())
            .await
            .unwrap_or_default();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(json!({"app": app, "releases": []}))
            }
            Err(e) => {
                return Err(format!(
                    "Failed to read releases directory '{}': {e}",
                    dir.display()
                ))
            }
        };
        let mut rows: Vec<(Option<u64>, String, Value)> = Vec::new();
        for entry in entries.flatten() {
            let Ok(ft) = entry.file_type() else { continue };
            if !ft.is_dir() {
                continue;
            }
            let version = entry.file_name().to_string_lossy().into_owned();
            let deployed = history
                .iter()
                .filter(|r| r.version == version && r.result == ReleaseResult::Success)
                .map(|r| r.deployed_at_unix_secs)
                .max()
                .or_else(|| {
                    entry
                        .metadata()
                        .ok()
                        .and_then(|m| m.modified().ok())
                        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                        .map(|d| d.as_secs())
                });
            let info = manifest::release_info(&entry.path().join(&subdir));
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
