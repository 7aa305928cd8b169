//! The master: the services it is made of (apps registry, worker set, launcher link,
//! certificates, state store) and what ties them together. Everything that changes what
//! workers route goes through [`Master::publish`].

mod certificates;
mod status;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tako_ipc::{CertEntry, MasterToWorker, RouteTable};
use tokio::sync::Notify;

use crate::apps::registry::Registry;
use crate::certs::acme_progress::AcmeProgress;
use crate::certs::Certificates;
use crate::cli::Settings;
use crate::datadir::DataDir;
use crate::launcher_link::LauncherLink;
use crate::listeners::Listener;
use crate::server_role::ServerRole;
use crate::state::StateHandle;
use crate::status::RenderedStatus;
use crate::users::Users;
use crate::workers::WorkerTable;

use crate::clock::unix_now;
use crate::sync::lock;

/// How often a bounded wait re-checks its condition without a change notification. Every
/// input of the drain condition notifies (acknowledgements, counter reports, workers that
/// come and go), so this is a guard against a missed one, not a pace anything waits on.
const RECHECK: Duration = Duration::from_millis(250);

pub struct Master {
    pub settings: Settings,
    pub users: Option<Users>,
    pub data: DataDir,
    pub started: Instant,
    pub started_unix: u64,
    pub role: ServerRole,
    pub listeners: Vec<Listener>,
    pub store: StateHandle,
    pub certs: Certificates,
    pub workers: Mutex<WorkerTable>,
    pub launcher: LauncherLink,
    pub apps: Mutex<Registry>,
    /// ACME account, orders, challenge answers and failures (docs/tls.md, "ACME").
    pub acme: AcmeProgress,
    /// Serialises building and broadcasting route tables so epochs arrive in order.
    publish_lock: Mutex<()>,
    epoch: AtomicU64,
    latest_routes: Mutex<RouteTable>,
    status_page: Mutex<Option<RenderedStatus>>,
    shutting_down: AtomicBool,
    /// Wakes waiters on worker acks, counters and instance changes.
    pub changed: Notify,
    /// Wakes the status-page pusher.
    pub status_dirty: Notify,
    /// An in-place upgrade is running: gated commands are refused meanwhile.
    pub reexec_in_progress: AtomicBool,
    /// Fired when a successor took over: this master shuts down, keeping the socket file.
    pub handed_over: Notify,
    /// The data-dir lock's descriptor (primary only), for a re-executed successor.
    pub lock_fd: Option<std::os::fd::RawFd>,
    pub self_exec: crate::handover::SelfExec,
}

impl Master {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        settings: Settings,
        users: Option<Users>,
        data: DataDir,
        listeners: Vec<Listener>,
        store: StateHandle,
        certs: Vec<CertEntry>,
        registry: Registry,
        role: ServerRole,
    ) -> Master {
        Master {
            settings,
            users,
            data,
            started: Instant::now(),
            started_unix: unix_now(),
            role,
            listeners,
            store,
            certs: Certificates::new(certs),
            workers: Mutex::new(WorkerTable::default()),
            launcher: LauncherLink::default(),
            apps: Mutex::new(registry),
            acme: AcmeProgress::default(),
            publish_lock: Mutex::new(()),
            epoch: AtomicU64::new(0),
            latest_routes: Mutex::new(RouteTable {
                epoch: 0,
                apps: Vec::new(),
            }),
            status_page: Mutex::new(None),
            shutting_down: AtomicBool::new(false),
            changed: Notify::new(),
            status_dirty: Notify::new(),
            reexec_in_progress: AtomicBool::new(false),
            handed_over: Notify::new(),
            lock_fd: None,
            self_exec: crate::handover::SelfExec {
                exe: std::path::PathBuf::new(),
                args: Vec::new(),
            },
        }
    }

    pub fn is_primary(&self) -> bool {
        self.role == ServerRole::Primary
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    pub fn begin_shutdown(&self) -> bool {
        !self.shutting_down.swap(true, Ordering::SeqCst)
    }

    pub fn certs_snapshot(&self) -> Vec<CertEntry> {
        self.certs.snapshot()
    }

    pub fn route_table_snapshot(&self) -> RouteTable {
        lock(&self.latest_routes).clone()
    }

    /// The status page as last pushed, as the message that carries it.
    pub fn status_page_snapshot(&self) -> MasterToWorker {
        let page = lock(&self.status_page).clone();
        let page = match page {
            Some(p) => p,
            None => self.render_status_page(),
        };
        MasterToWorker::StatusPage {
            body: page.body,
            public_body: page.public_body,
            healthy: page.healthy,
        }
    }

    /// Builds a new route table from the registry and pushes it to every worker. Returns
    /// its epoch: an instance that became ready before this call is in every worker's
    /// rotation once every worker acknowledged this epoch.
    pub fn publish(&self) -> u64 {
        let _serial = lock(&self.publish_lock);
        let epoch = self.epoch.fetch_add(1, Ordering::SeqCst) + 1;
        let apps = lock(&self.apps).route_entries();
        let table = RouteTable { epoch, apps };
        // The status page goes out with the table and ahead of it: workers apply messages
        // in order, so one that acknowledged this epoch serves a page at least this new,
        // and a command answered after that shows on tako.internal/status at once.
        let page = self.render_status_page();
        *lock(&self.status_page) = Some(page.clone());
        let workers = lock(&self.workers);
        *lock(&self.latest_routes) = table.clone();
        workers.broadcast(&MasterToWorker::StatusPage {
            body: page.body,
            public_body: page.public_body,
            healthy: page.healthy,
        });
        workers.broadcast(&MasterToWorker::Routes(table));
        drop(workers);
        // The metrics page and anything else that changed still come from the pusher.
        self.status_dirty.notify_one();
        epoch
    }

    /// Drops an app's cached responses in every worker (deploy switch, stop, delete).
    pub fn purge_cache(&self, app: &str) {
        lock(&self.workers).broadcast(&MasterToWorker::PurgeApp {
            app: app.to_string(),
        });
    }

    pub fn push_certs(&self, certs: Vec<CertEntry>) {
        let workers = lock(&self.workers);
        self.certs.replace(certs.clone());
        workers.broadcast(&MasterToWorker::Certs(certs));
    }

    /// Renders and pushes the status and metrics pages.
    pub fn push_status(&self) {
        // Serialised with `publish`, which sends a page too: a page rendered here before a
        // publish must not reach the workers after that publish's newer one.
        let _serial = lock(&self.publish_lock);
        let page = self.render_status_page();
        let metrics = self.render_metrics();
        *lock(&self.status_page) = Some(page.clone());
        let workers = lock(&self.workers);
        workers.broadcast(&MasterToWorker::StatusPage {
            body: page.body,
            public_body: page.public_body,
            healthy: page.healthy,
        });
        workers.broadcast(&MasterToWorker::MetricsPage { body: metrics });
    }

    /// Whether no worker can send another request to instance `id` of `app`, which the
    /// table of `epoch` took out of rotation.
    pub fn released(&self, app: &str, id: u32, epoch: u64) -> bool {
        lock(&self.workers).released(app, id, epoch)
    }

    /// Waits (bounded) until `cond` holds, re-checking on every change notification.
    pub async fn wait_until(
        &self,
        deadline: tokio::time::Instant,
        mut cond: impl FnMut(&Master) -> bool,
    ) -> bool {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if cond(self) {
                return true;
            }
            let tick = tokio::time::Instant::now() + RECHECK;
            let until = deadline.min(tick);
            let _ = tokio::time::timeout_at(until, notified).await;
            if tokio::time::Instant::now() >= deadline {
                return cond(self);
            }
        }
    }

    /// The lowest epoch every serving worker has applied (`u64::MAX` with no worker: there
    /// is nobody to wait for).
    pub fn applied_epoch(&self) -> u64 {
        lock(&self.workers).min_applied_epoch().unwrap_or(u64::MAX)
    }
}

/// Releases the per-app lock when dropped.
pub struct AppLock<'a> {
    master: &'a Master,
    name: String,
}

impl Drop for AppLock<'_> {
    fn drop(&mut self) {
        lock(&self.master.apps).busy.remove(&self.name);
    }
}

impl Master {
    /// The per-app try-lock (docs/management-protocol.md, "One operation per app").
    pub fn try_lock_app(&self, name: &str) -> Option<AppLock<'_>> {
        let mut reg = lock(&self.apps);
        if !reg.busy.insert(name.to_string()) {
            return None;
        }
        Some(AppLock {
            master: self,
            name: name.to_string(),
        })
    }
}
