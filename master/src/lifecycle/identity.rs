//! Giving apps their identity and taking it back (docs/isolation.md, "Apps"): the uid an
//! app runs as, allocated and stored on first need, its HOME, and the sweep of its processes
//! and files when it goes.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tako_ipc::{AppIds, MasterToLauncher};

use crate::apps::identity::{allocate, Identity, IdentityError};
use crate::master::Master;
use crate::state::ServerMode;

/// How long shutdown waits for the state to say whether an upgrade is under way.
const MODE_QUERY_BOUND: Duration = Duration::from_secs(2);

impl Master {
    /// The uid of `app`, allocated if it has none (or its stored one lies outside the
    /// range), and its HOME made. Root only: `None` without privilege separation.
    fn app_uid(&self, app: &str) -> Result<Option<u32>, IdentityError> {
        if self.users.is_none() {
            return Ok(None);
        }
        let (first, last) = self.settings.app_uid_range;
        let (uid, persist) = {
            let mut reg = self.apps.lock();
            match reg.ids.get(app) {
                Some(&uid) if uid != 0 && (first..=last).contains(&uid) => (uid, false),
                held => {
                    if let Some(old) = held {
                        tracing::warn!(
                            app,
                            uid = old,
                            first,
                            last,
                            "the app's stored uid is outside --app-uid-range; giving it a new one"
                        );
                    }
                    let taken: HashSet<u32> = reg.ids.values().copied().collect();
                    let uid =
                        allocate(first, last, &taken).ok_or_else(|| IdentityError::RangeFull {
                            app: app.to_string(),
                            first,
                            last,
                        })?;
                    reg.ids.insert(app.to_string(), uid);
                    tracing::info!(app, uid, "allocated a uid for the app");
                    // A stored app keeps it from now on; a first deploy stores it with
                    // its row.
                    (uid, reg.apps.get(app).is_some_and(|a| a.visible))
                }
            }
        };
        // Only a primary writes the state; a candidate finds the same lowest free id.
        if persist && self.is_primary() {
            let store = self.store.clone();
            let name = app.to_string();
            tokio::spawn(async move {
                if let Err(e) = store.set_app_uid(name.clone(), uid).await {
                    tracing::error!(app = %name, uid, error = %e, "cannot store the app's uid; it is allocated again at the next start");
                }
            });
        }
        Ok(Some(uid))
    }

    /// What the app's processes (instances and install steps) run as.
    pub fn app_identity(&self, app: &str) -> Result<Identity, IdentityError> {
        let (Some(users), Some(uid)) = (self.users.as_ref(), self.app_uid(app)?) else {
            return Ok(Identity {
                ids: None,
                home: crate::apps::env::home_of(None),
                cache: None,
            });
        };
        let home = self.data.prepare_app_home(app, uid, uid)?;
        Ok(Identity {
            ids: Some(AppIds {
                uid,
                gid: uid,
                // The --app-user group: ACLs an install made for tako-app keep working.
                groups: vec![users.app.gid],
                limits: self.settings.app_limits,
            }),
            cache: Some(home.join(".cache").display().to_string()),
            home: home.display().to_string(),
        })
    }

    /// The app's uid, when it has one.
    pub fn app_uid_of(&self, app: &str) -> Option<u32> {
        self.apps.lock().ids.get(app).copied()
    }

    /// Ends every process of the app's uid, detached helpers included, unless an instance
    /// of the app is in the registry (it runs under the same uid and must live). Decided
    /// and sent under the registry lock: an instance registered after the check is sent
    /// to the launcher after the sweep, and the launcher sweeps before it reads on.
    /// Returns whether a sweep was sent.
    pub fn sweep_app(&self, app: &str) -> bool {
        if self.users.is_none() {
            return false;
        }
        let reg = self.apps.lock();
        let Some(&uid) = reg.ids.get(app) else {
            return false;
        };
        if reg.apps.get(app).is_some_and(|a| !a.instances.is_empty()) {
            tracing::debug!(app, "instances of the app run; no sweep");
            return false;
        }
        let sent = self
            .launcher
            .send(MasterToLauncher::Sweep {
                app: app.to_string(),
                uid,
            })
            .is_ok();
        if !sent {
            tracing::warn!(
                app,
                uid,
                "the app launcher is not running; the app's stray processes are not swept"
            );
        }
        sent
    }

    /// Forgets the uid of an app that is neither registered nor stored (a first deploy
    /// that failed): the id is free again.
    pub fn forget_unused_uid(&self, app: &str) {
        let mut reg = self.apps.lock();
        if !reg.apps.contains_key(app) {
            reg.ids.remove(app);
        }
    }

    /// `delete`: the uid is free again and the app's HOME goes. The caller has stopped and
    /// swept the app and removed its row.
    pub fn release_app_identity(&self, app: &str) {
        if self.users.is_none() {
            return;
        }
        self.apps.lock().ids.remove(app);
        if let Err(e) = self.data.remove_app_home(app) {
            tracing::warn!(app, error = %e, "cannot remove the app's home");
        }
    }

    /// Whether the launcher may end every process of every app uid at shutdown: only when
    /// no other server runs the same apps under the same uids. A successor after a re-exec
    /// hand-over and an upgrade candidate do; a candidate itself leaves them to the primary.
    pub async fn sweep_at_shutdown(self: &Arc<Self>, handed_over: bool) -> bool {
        if self.users.is_none() || handed_over || !self.is_primary() {
            return false;
        }
        match tokio::time::timeout(MODE_QUERY_BOUND, self.store.server_mode()).await {
            Ok(Ok(ServerMode::Normal)) => true,
            Ok(Ok(ServerMode::Upgrading)) => {
                tracing::info!("an upgrade is under way: a candidate may run the apps; app processes outside their instances are left alone");
                false
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot read the server mode; app processes outside their instances are left alone");
                false
            }
            Err(_) => {
                tracing::warn!("the state did not answer; app processes outside their instances are left alone");
                false
            }
        }
    }
}
