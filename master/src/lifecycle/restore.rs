//! Restore at boot (docs/architecture.md, "State"): register every app before the
//! listeners open, then start instances in the background.

use std::collections::HashSet;
use std::sync::Arc;

use crate::apps::registry::{App, AppConfig, Registry};
use crate::clock::unix_now;
use crate::datadir::ReleasePathError;
use crate::master::Master;
use crate::ports::{free_base, is_valid_base};
use crate::state::StoredApp;

/// Phase 1: builds the registry. Returns it with the port bases that must be persisted.
pub fn register(stored: Vec<StoredApp>) -> (Registry, Vec<(String, u16)>) {
    let mut reg = Registry::default();
    let mut fixes = Vec::new();
    let mut used: HashSet<u16> = HashSet::new();
    for s in stored {
        if let Err(e) = tako_protocol::validate::validate_app_name(&s.name) {
            tracing::error!(app = %s.name, error = %e, "skipping a stored app with an invalid name");
            continue;
        }
        let mut last_error = None;
        let mut routes = Vec::new();
        for r in &s.routes {
            match tako_ipc::route::parse_route(r) {
                Ok(p) => {
                    let n = p.normalized().to_string();
                    if !routes.contains(&n) {
                        routes.push(n);
                    }
                }
                Err(e) => {
                    tracing::warn!(app = %s.name, route = %r, error = %e, "ignoring an invalid stored route");
                    last_error = Some(format!("Restore: route '{r}' was ignored: {e}"));
                }
            }
        }
        let mut base = s.base_port;
        if !is_valid_base(base) || used.contains(&base) {
            let Some(b) = free_base(&used) else {
                tracing::error!(app = %s.name, "no free port block; skipping app");
                continue;
            };
            tracing::warn!(app = %s.name, old = base, new = b, "replacing an invalid port base");
            base = b;
            fixes.push((s.name.clone(), b));
        }
        used.insert(base);
        let config = AppConfig {
            version: s.version,
            path: s.path,
            command: s.command,
            env: s.env,
            min_instances: s.min_instances,
            idle_timeout_secs: s.idle_timeout_secs,
            base_port: base,
            routes,
            stopped: s.stopped,
        };
        // Two rows with one uid (a file edited by hand): the second app gets a new one.
        match s.uid {
            Some(uid) if !reg.ids.values().any(|u| *u == uid) => {
                reg.ids.insert(s.name.clone(), uid);
            }
            Some(uid) => {
                tracing::warn!(app = %s.name, uid, "another app holds the stored uid; the app gets a new one")
            }
            None => {}
        }
        let mut app = App::new(s.name.clone(), config, true);
        app.last_error = last_error;
        app.restoring = !app.config.stopped && app.config.min_instances > 0;
        reg.apps.insert(s.name, app);
    }
    (reg, fixes)
}

/// Phase 2: start always-on apps, at most 4 at a time, each app's instances in turn.
pub async fn start(master: Arc<Master>) {
    let apps: Vec<String> = {
        let reg = master.apps.lock();
        reg.apps
            .values()
            .filter(|a| a.restoring)
            .map(|a| a.name.clone())
            .collect()
    };
    let sem = Arc::new(tokio::sync::Semaphore::new(4));
    let mut tasks = Vec::new();
    for app in apps {
        let m = master.clone();
        let sem = sem.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire().await;
            restore_app(&m, &app).await;
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    // Only a primary writes the shared state (a candidate never does).
    if master.is_primary() {
        if let Err(e) = master.store.write_primary_ready(unix_now()).await {
            tracing::warn!(error = %e, "cannot record the end of restore");
        }
    }
    tracing::info!("restore finished");
}

async fn restore_app(master: &Arc<Master>, app: &str) {
    let (build, count) = {
        let reg = master.apps.lock();
        let Some(a) = reg.apps.get(app) else { return };
        (a.config.build(), a.config.min_instances)
    };
    let mut failed = None;
    // The stored path is opened like a deploy's: the release may have been swapped for a
    // symlink while the server was down.
    if let Err(e) = master.data.open_release(app, &build.path) {
        failed = Some(match e {
            ReleasePathError::Refused(w) if w.is_missing() => {
                format!("release directory {} is missing", build.path)
            }
            e => format!("release directory refused: {e}"),
        });
    } else {
        for _ in 0..count {
            match master.spawn_instance(app, build.clone(), true) {
                Ok((_, rx)) => match rx.await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        failed = Some(e.to_string());
                        break;
                    }
                    Err(_) => {
                        failed = Some("the instance was lost".into());
                        break;
                    }
                },
                Err(e) => {
                    failed = Some(e.to_string());
                    break;
                }
            }
        }
    }
    {
        let mut reg = master.apps.lock();
        if let Some(a) = reg.apps.get_mut(app) {
            a.restoring = false;
            if let Some(e) = &failed {
                a.last_error = Some(format!("Restore startup failed: {e}"));
            }
        }
    }
    master.status_dirty.notify_one();
    if failed.is_some() {
        // The replacement rule keeps trying.
        master.schedule_replacement(app);
    }
}
