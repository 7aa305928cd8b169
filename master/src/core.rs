//! The master's shared state: settings, listeners, children, apps, and the snapshots pushed
//! to workers. Everything that changes what workers route goes through [`Master::publish`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use tako_ipc::{CertEntry, MasterToWorker, RouteTable};
use tokio::sync::Notify;

use crate::apps::registry::Registry;
use crate::cli::Settings;
use crate::datadir::DataDir;
use crate::listeners::Listener;
use crate::server_role::ServerRole;
use crate::state::StateHandle;
use crate::supervisor::launcher::LauncherLink;
use crate::supervisor::workers::WorkerTable;
use crate::users::Users;

pub use crate::clock::unix_now;

/// Locks a std mutex, recovering from poisoning: a panicked holder must not take the whole
/// master down with it.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub struct Master {
    pub settings: Settings,
    pub users: Option<Users>,
    pub data: DataDir,
    pub started: Instant,
    pub started_unix: u64,
    pub role: ServerRole,
    pub listeners: Vec<Listener>,
    pub store: StateHandle,
    pub certs: Mutex<Vec<CertEntry>>,
    pub workers: Mutex<WorkerTable>,
    pub launcher: LauncherLink,
    pub apps: Mutex<Registry>,
    /// ACME account, orders, challenge answers and failures (docs/tls.md, "ACME").
    pub acme: crate::acme::Acme,
    /// Serialises building and broadcasting route tables so epochs arrive in order.
    publish_lock: Mutex<()>,
    epoch: AtomicU64,
    latest_routes: Mutex<RouteTable>,
    status_page: Mutex<Option<crate::status::RenderedStatus>>,
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
    pub self_exec: crate::reexec::SelfExec,
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
            certs: Mutex::new(certs),
            workers: Mutex::new(WorkerTable::default()),
            launcher: LauncherLink::default(),
            apps: Mutex::new(registry),
            acme: crate::acme::Acme::default(),
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
            self_exec: crate::reexec::SelfExec {
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
        lock(&self.certs).clone()
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
        *lock(&self.certs) = certs.clone();
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

    pub fn on_workers_changed(&self) {
        self.promote_ready_instances();
        self.changed.notify_waiters();
        self.status_dirty.notify_one();
    }

    pub fn on_counters(&self) {
        self.record_activity();
        self.changed.notify_waiters();
    }

    /// The lowest epoch every serving worker has applied (`u64::MAX` with no worker: there
    /// is nobody to wait for).
    pub fn applied_epoch(&self) -> u64 {
        lock(&self.workers).min_applied_epoch().unwrap_or(u64::MAX)
    }
}
