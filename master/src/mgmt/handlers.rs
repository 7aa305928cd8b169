//! Executes one management request: the upgrade gate, validation, the per-app lock, then
//! the command (docs/management-protocol.md, from "Commands refused during an upgrade" to
//! "Commands").

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::deploy::DeployRequest;
use super::error::CommandError;
use super::validate;
use crate::master::Master;
use crate::state::{EnterOutcome, ExitOutcome, ReleaseKind, ServerMode};
use tako_protocol::request::{Request, CAPABILITIES, PROTOCOL_VERSION};
use tako_protocol::validate as fields;

/// The app's operation lock is taken: a deploy or rollback says so in its own words.
fn busy(req: &Request, app: &str) -> CommandError {
    let app = app.to_string();
    match req {
        Request::Deploy(_) | Request::Rollback { .. } => CommandError::DeployInProgress { app },
        _ => CommandError::AppBusy { app },
    }
}

pub async fn handle(master: &Arc<Master>, req: Request) -> Result<Value, CommandError> {
    let changes_status = matches!(
        req,
        Request::Deploy(_)
            | Request::Rollback { .. }
            | Request::Reload { .. }
            | Request::Stop { .. }
            | Request::Delete { .. }
            | Request::ReloadCerts
    );
    let answer = execute(master, req).await;
    if changes_status && !master.is_shutting_down() {
        settle(master).await;
    }
    answer
}

/// Bound on waiting for the workers to apply the page of a change.
const SETTLE_WAIT: Duration = Duration::from_secs(5);

/// Returns once every worker serves a status page that shows what the command changed (or
/// failed to change): a route table published now carries a freshly rendered page ahead of
/// it, and its acknowledgement means both were applied. So a `deploy` answered is a deploy
/// `tako.internal/status` shows (docs/status-page.md).
async fn settle(master: &Arc<Master>) {
    let epoch = master.publish();
    let deadline = tokio::time::Instant::now() + SETTLE_WAIT;
    if !master
        .wait_until(deadline, |m| m.workers.applied_epoch() >= epoch)
        .await
    {
        tracing::warn!(
            epoch,
            "not every worker applied the status page within 5 s; answering anyway"
        );
    }
}

async fn execute(master: &Arc<Master>, req: Request) -> Result<Value, CommandError> {
    if let Some(command) = req.upgrade_gated_name() {
        if master
            .reexec_in_progress
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            return Err(CommandError::Upgrading { command });
        }
        if let Ok(ServerMode::Upgrading) = master.store.server_mode().await {
            return Err(CommandError::Upgrading { command });
        }
    }
    fields::validate_fields(&req)?;
    match req {
        Request::Hello { protocol_version } => {
            if protocol_version != PROTOCOL_VERSION {
                return Err(CommandError::ProtocolMismatch {
                    client: protocol_version,
                });
            }
            Ok(
                json!({"capabilities": CAPABILITIES, "protocol_version": PROTOCOL_VERSION,
                      "server_version": env!("CARGO_PKG_VERSION")}),
            )
        }
        Request::ServerInfo => Ok(server_info(master).await),
        Request::EnterUpgrading { owner } => {
            match master.store.enter_upgrading(owner.clone()).await {
                Ok(EnterOutcome::Acquired | EnterOutcome::AlreadyHeld) => {
                    Ok(json!({"owner": owner, "status": "upgrading"}))
                }
                Ok(EnterOutcome::HeldBy(holder)) => Err(CommandError::AlreadyUpgrading { holder }),
                Err(e) => Err(CommandError::EnterUpgrading(e)),
            }
        }
        Request::ExitUpgrading { owner } => {
            match master.store.exit_upgrading(owner.clone()).await {
                Ok(ExitOutcome::Released) => Ok(json!({"owner": owner, "status": "normal"})),
                Ok(ExitOutcome::NotHolder) => Err(CommandError::NotUpgradeHolder),
                Err(e) => Err(CommandError::ExitUpgrading(e)),
            }
        }
        Request::Deploy(ref d) => {
            let data_dir = master.data.root.clone();
            let d2 = d.clone();
            let valid =
                tokio::task::spawn_blocking(move || validate::validate_deploy(&data_dir, &d2))
                    .await
                    .map_err(CommandError::ValidationTask)??;
            let _guard = master
                .apps
                .try_lock_app(&d.app)
                .ok_or_else(|| busy(&req, &d.app))?;
            if master.is_shutting_down() {
                return Err(CommandError::ShuttingDown);
            }
            let dr = DeployRequest {
                app: d.app.clone(),
                version: d.version.clone(),
                path: valid.path.display().to_string(),
                routes: valid.routes,
                env: d.env.clone(),
                instances: d.instances,
                idle_timeout: d.idle_timeout,
                kind: ReleaseKind::Deploy,
            };
            master.deploy(dr).await
        }
        Request::Rollback {
            ref app,
            ref version,
        } => {
            let _guard = master
                .apps
                .try_lock_app(app)
                .ok_or_else(|| busy(&req, app))?;
            let dr = master.rollback_request(app, version)?;
            master.deploy(dr).await
        }
        Request::Reload { ref app } => {
            let _guard = master
                .apps
                .try_lock_app(app)
                .ok_or_else(|| busy(&req, app))?;
            master.reload(app).await
        }
        Request::Stop { ref app } => {
            let _guard = master
                .apps
                .try_lock_app(app)
                .ok_or_else(|| busy(&req, app))?;
            master.stop_app(app).await
        }
        Request::Delete { ref app } => {
            let _guard = master
                .apps
                .try_lock_app(app)
                .ok_or_else(|| busy(&req, app))?;
            master.delete_app(app).await
        }
        Request::UpdateSecrets {
            ref app,
            ref secrets,
        } => {
            let _guard = master
                .apps
                .try_lock_app(app)
                .ok_or_else(|| busy(&req, app))?;
            master.update_secrets(app, secrets.clone()).await
        }
        Request::Status { app } => master
            .app_status(&app)
            .map(|s| serde_json::to_value(s).unwrap_or(Value::Null))
            .ok_or(CommandError::AppNotFound { app }),
        Request::List => {
            let reg = master.apps.lock();
            let apps: Vec<Value> = reg
                .apps
                .values()
                .filter(|a| a.visible)
                .map(|a| json!({"instances": a.live_count(), "name": a.name, "state": a.state(), "version": a.config.version}))
                .collect();
            Ok(json!({ "apps": apps }))
        }
        Request::Routes => {
            let reg = master.apps.lock();
            let routes: Vec<Value> = reg
                .apps
                .values()
                .filter(|a| a.visible)
                .map(|a| json!({"app": a.name, "routes": a.config.routes}))
                .collect();
            Ok(json!({ "routes": routes }))
        }
        Request::ListReleases { app } => master.list_releases(&app).await,
        Request::RestartWorkers => {
            let (generation, workers) = crate::supervisor::workers::restart_all(master).await?;
            Ok(json!({"generation": generation, "status": "restarted", "workers": workers}))
        }
        Request::Processes => Ok(processes(master)),
        Request::ReloadCerts => Ok(master.reload_certs()),
        Request::Upgrade => {
            let pid = crate::reexec::upgrade(master).await?;
            master.handed_over.notify_one();
            Ok(json!({"new_pid": pid, "status": "upgraded"}))
        }
    }
}

async fn server_info(master: &Master) -> Value {
    let mode = master
        .store
        .server_mode()
        .await
        .map(|m| m.as_str())
        .unwrap_or("normal");
    let owner = master.store.upgrade_owner().await.ok().flatten();
    crate::upgrade::server_info(
        &master.settings,
        mode,
        master.role,
        master.users.is_some(),
        owner,
    )
}

fn processes(master: &Master) -> Value {
    let mut list = vec![
        json!({"generation": 1, "index": null, "pid": std::process::id(), "role": "master",
        "state": "active", "uid": nix::unistd::getuid().as_raw(), "uptime_secs": master.started.elapsed().as_secs()}),
    ];
    if let Some(l) = master.launcher.info() {
        list.push(json!({"generation": l.generation, "index": null, "pid": l.pid, "role": "launcher",
            "state": if l.ready { "active" } else { "starting" }, "uid": nix::unistd::getuid().as_raw(),
            "uptime_secs": l.uptime.as_secs()}));
    }
    let table = master.workers.lock();
    let mut workers: Vec<_> = table.entries.iter().collect();
    workers.sort_by(|a, b| a.index.cmp(&b.index).then(b.generation.cmp(&a.generation)));
    for w in workers {
        list.push(
            json!({"generation": w.generation, "index": w.index, "pid": w.pid, "role": "worker",
            "state": w.state.as_str(), "uid": w.uid, "uptime_secs": w.started.elapsed().as_secs()}),
        );
    }
    drop(table);
    json!({ "instances": app_instances(master), "processes": list })
}

/// Every live app instance, by app name then instance id (docs/management-protocol.md,
/// "`processes`"). The uid is the app's own when the server runs as root, else the server's:
/// instances then run as the server's user.
fn app_instances(master: &Master) -> Vec<Value> {
    let own_uid = nix::unistd::getuid().as_raw();
    let now = std::time::Instant::now();
    let apps: Vec<(String, Vec<Value>)> = {
        let reg = master.apps.lock();
        reg.apps
            .values()
            .filter(|a| a.visible)
            .map(|a| {
                let list = a
                    .instances
                    .values()
                    .map(|i| {
                        json!({"app": a.name, "instance": i.id, "pid": i.pid, "port": i.port,
                               "state": i.state.as_str(), "version": i.build.version,
                               "uptime_secs": now.duration_since(i.spawned).as_secs()})
                    })
                    .collect();
                (a.name.clone(), list)
            })
            .collect()
    };
    // The uid lookup takes the registry again: done after it was released.
    let mut out = Vec::new();
    for (name, list) in apps {
        let uid = if master.users.is_some() {
            master.app_uid_of(&name)
        } else {
            Some(own_uid)
        };
        for mut i in list {
            i["uid"] = json!(uid);
            out.push(i);
        }
    }
    out
}

impl Master {
    /// `reload_certs`: re-scan `certs/`; the in-memory `default` and failed names stay.
    pub fn reload_certs(&self) -> Value {
        let (mut loaded, errors) = crate::certs::load_dir(&self.data.certs());
        let previous = self.certs_snapshot();
        for (name, _) in &errors {
            if let Some(old) = previous.iter().find(|c| &c.name == name) {
                loaded.push(old.clone());
            }
        }
        if !loaded.iter().any(|c| c.name == "default") {
            if let Some(d) = previous.iter().find(|c| c.name == "default") {
                loaded.push(d.clone());
            }
        }
        let removed = previous
            .iter()
            .filter(|p| !loaded.iter().any(|c| c.name == p.name))
            .count();
        let count = loaded.len();
        self.push_certs(loaded);
        json!({"errors": errors.iter().map(|(n, e)| json!({"error": e, "name": n})).collect::<Vec<_>>(),
               "loaded": count, "removed": removed, "status": "reloaded"})
    }
}
