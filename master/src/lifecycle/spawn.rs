//! Starting an instance (docs/apps.md, "Ports"): a free port, the spawn request to the
//! launcher, and the waiter that learns whether it became healthy.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use tako_ipc::{MasterToLauncher, SpawnSpec};
use tokio::sync::oneshot;

use crate::apps::env::build_env;
use crate::apps::error::StartError;
use crate::apps::registry::{Build, InstState, Instance};
use crate::master::Master;
use crate::ports::free_slot;

impl Master {
    /// Allocates a port and asks the launcher to start an instance of `build`. The receiver
    /// resolves once the instance is healthy (in every worker's rotation) or has failed.
    pub fn spawn_instance(
        &self,
        app: &str,
        build: Arc<Build>,
        replace_on_exit: bool,
    ) -> Result<(u32, oneshot::Receiver<Result<(), StartError>>), StartError> {
        // Every start re-opens the release through descriptors: a reload, a replacement or
        // a cold start after the deploy user swapped a directory for a symlink is refused.
        self.data
            .open_release(app, &build.path)
            .map_err(StartError::ReleaseRefused)?;
        let log_dir = self
            .data
            .prepare_app_logs(app, self.users.as_ref())
            .map_err(StartError::LogDir)?;
        let identity = self.app_identity(app).map_err(StartError::Identity)?;
        let (tx, rx) = oneshot::channel();
        let spec = {
            let mut reg = self.apps.lock();
            let a = reg
                .apps
                .get_mut(app)
                .ok_or_else(|| StartError::AppNotFound {
                    app: app.to_string(),
                })?;
            let held: HashSet<u16> = a.instances.values().map(|i| i.slot).collect();
            let (slot, port) = free_slot(
                a.config.base_port,
                self.settings.instance_port_offset,
                &held,
            )
            .ok_or_else(|| StartError::NoFreePort {
                app: app.to_string(),
            })?;
            let id = a.next_id;
            a.next_id += 1;
            let env = build_env(
                &build.env,
                &build.version,
                &identity.home,
                identity.cache.as_deref(),
                Some((port, id)),
            );
            let spec = SpawnSpec {
                app: app.to_string(),
                instance_id: id,
                version: build.version.clone(),
                argv: build.argv.clone(),
                cwd: build.path.clone(),
                env,
                port,
                log_dir: log_dir.display().to_string(),
                ids: identity.ids,
            };
            let now = Instant::now();
            a.instances.insert(
                id,
                Instance {
                    id,
                    build,
                    slot,
                    port,
                    pid: None,
                    state: InstState::Starting,
                    spawned: now,
                    ready_epoch: None,
                    healthy_since: None,
                    last_activity: now,
                    seen_requests: 0,
                    start_waiters: vec![tx],
                    exit_waiters: Vec::new(),
                    replace_on_exit,
                },
            );
            spec
        };
        let id = spec.instance_id;
        if self.launcher.send(MasterToLauncher::Spawn(spec)).is_err() {
            let mut reg = self.apps.lock();
            if let Some(a) = reg.apps.get_mut(app) {
                a.instances.remove(&id);
            }
            return Err(StartError::LauncherDown);
        }
        self.publish();
        Ok((id, rx))
    }
}
