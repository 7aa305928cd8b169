//! The state thread: the one connection lives on a dedicated OS thread and async code
//! reaches it through [`StateHandle`] (docs/architecture.md, "State"). SQLite calls block
//! (up to the 5 s busy timeout), so they never run on a runtime worker.

use std::collections::BTreeMap;
use std::sync::mpsc;

use tokio::sync::oneshot;

use super::error::StateError;
use super::store::Store;
use super::types::{EnterOutcome, ExitOutcome, ReleaseKind, ReleaseRow, ServerMode, StoredApp};

type Job = Box<dyn FnOnce(&mut Store) + Send>;

/// Cheap to clone; every clone talks to the same thread. The thread ends when the last handle
/// is dropped, closing the connection.
#[derive(Clone, Debug)]
pub struct StateHandle {
    tx: mpsc::Sender<Job>,
}

impl StateHandle {
    /// Moves the open store onto its own thread (`tako-state`).
    pub fn spawn(mut store: Store) -> Result<StateHandle, StateError> {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("tako-state".to_string())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    job(&mut store);
                }
                tracing::debug!("state thread finished");
            })
            .map_err(|e| StateError::ThreadSpawn(e.to_string()))?;
        Ok(StateHandle { tx })
    }

    /// Runs `f` on the state thread and returns its answer. The only wait is the store call
    /// itself, which SQLite's busy timeout bounds.
    pub async fn call<R, F>(&self, f: F) -> Result<R, StateError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Store) -> Result<R, StateError> + Send + 'static,
    {
        let (reply_tx, reply_rx) = oneshot::channel();
        let job: Job = Box::new(move |store| {
            // The asker may have gone away (e.g. its connection closed); the write happened anyway.
            let _ = reply_tx.send(f(store));
        });
        self.tx.send(job).map_err(|_| StateError::ThreadGone)?;
        reply_rx.await.map_err(|_| StateError::ThreadGone)?
    }

    pub async fn load_apps(&self) -> Result<Vec<StoredApp>, StateError> {
        self.call(|s| s.load_apps()).await
    }

    pub async fn commit_deploy(
        &self,
        app: StoredApp,
        kind: ReleaseKind,
        now_unix_secs: u64,
    ) -> Result<(), StateError> {
        self.call(move |s| s.commit_deploy(&app, kind, now_unix_secs))
            .await
    }

    pub async fn record_release_failure(
        &self,
        app: String,
        version: String,
        path: String,
        kind: ReleaseKind,
        error: String,
        now_unix_secs: u64,
    ) -> Result<(), StateError> {
        self.call(move |s| {
            s.record_release_failure(&app, &version, &path, kind, &error, now_unix_secs)
        })
        .await
    }

    pub async fn set_stopped(&self, app: String, stopped: bool) -> Result<bool, StateError> {
        self.call(move |s| s.set_stopped(&app, stopped)).await
    }

    pub async fn update_env(
        &self,
        app: String,
        env: BTreeMap<String, String>,
    ) -> Result<bool, StateError> {
        self.call(move |s| s.update_env(&app, &env)).await
    }

    pub async fn delete_app(&self, app: String) -> Result<bool, StateError> {
        self.call(move |s| s.delete_app(&app)).await
    }

    pub async fn set_app_uid(&self, app: String, uid: u32) -> Result<bool, StateError> {
        self.call(move |s| s.set_app_uid(&app, uid)).await
    }

    pub async fn set_base_port(&self, app: String, base_port: u16) -> Result<bool, StateError> {
        self.call(move |s| s.set_base_port(&app, base_port)).await
    }

    pub async fn releases(&self, app: String) -> Result<Vec<ReleaseRow>, StateError> {
        self.call(move |s| s.releases(&app)).await
    }

    pub async fn server_mode(&self) -> Result<ServerMode, StateError> {
        self.call(|s| s.server_mode()).await
    }

    pub async fn upgrade_owner(&self) -> Result<Option<String>, StateError> {
        self.call(|s| s.upgrade_owner()).await
    }

    pub async fn primary_ready_at(&self) -> Result<Option<u64>, StateError> {
        self.call(|s| s.primary_ready_at()).await
    }

    pub async fn enter_upgrading(&self, owner: String) -> Result<EnterOutcome, StateError> {
        self.call(move |s| s.enter_upgrading(&owner)).await
    }

    pub async fn exit_upgrading(&self, owner: String) -> Result<ExitOutcome, StateError> {
        self.call(move |s| s.exit_upgrading(&owner)).await
    }

    pub async fn write_primary_boot(
        &self,
        settings_json: String,
        pid: u32,
        started_at_unix_secs: u64,
    ) -> Result<(), StateError> {
        self.call(move |s| s.write_primary_boot(&settings_json, pid, started_at_unix_secs))
            .await
    }

    pub async fn write_primary_ready(&self, at_unix_secs: u64) -> Result<(), StateError> {
        self.call(move |s| s.write_primary_ready(at_unix_secs))
            .await
    }
}
