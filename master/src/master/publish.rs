//! Publishing to the workers: route tables with their epochs, the status and metrics pages,
//! certificates and cache purges. Each goes out under the worker set's lock, so a worker that
//! registers meanwhile gets either the old state and the message, or the new state.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use tako_ipc::{CertEntry, MasterToWorker, RouteTable};

use super::Master;
use crate::status::RenderedStatus;
use crate::sync::lock;

/// What was last published, for a worker that starts, behind the locks of this service
/// (docs/architecture.md, "Lock order in the master").
pub(super) struct Publication {
    /// Serialises building and broadcasting route tables so epochs arrive in order.
    serial: Mutex<()>,
    epoch: AtomicU64,
    routes: Mutex<RouteTable>,
    status_page: Mutex<Option<RenderedStatus>>,
}

impl Default for Publication {
    fn default() -> Publication {
        Publication {
            serial: Mutex::new(()),
            epoch: AtomicU64::new(0),
            routes: Mutex::new(RouteTable {
                epoch: 0,
                apps: Vec::new(),
            }),
            status_page: Mutex::new(None),
        }
    }
}

impl Master {
    pub fn route_table_snapshot(&self) -> RouteTable {
        lock(&self.published.routes).clone()
    }

    /// The status page as last pushed, as the message that carries it.
    pub fn status_page_snapshot(&self) -> MasterToWorker {
        let page = lock(&self.published.status_page).clone();
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
        let _serial = lock(&self.published.serial);
        let epoch = self.published.epoch.fetch_add(1, Ordering::SeqCst) + 1;
        let apps = self.apps.lock().route_entries();
        let table = RouteTable { epoch, apps };
        // The status page goes out with the table and ahead of it: workers apply messages
        // in order, so one that acknowledged this epoch serves a page at least this new,
        // and a command answered after that shows on tako.internal/status at once.
        let page = self.render_status_page();
        *lock(&self.published.status_page) = Some(page.clone());
        let workers = self.workers.lock();
        *lock(&self.published.routes) = table.clone();
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
        self.workers.broadcast(&MasterToWorker::PurgeApp {
            app: app.to_string(),
        });
    }

    pub fn push_certs(&self, certs: Vec<CertEntry>) {
        let workers = self.workers.lock();
        self.certs.replace(certs.clone());
        workers.broadcast(&MasterToWorker::Certs(certs));
    }

    /// Renders and pushes the status and metrics pages.
    pub fn push_status(&self) {
        // Serialised with `publish`, which sends a page too: a page rendered here before a
        // publish must not reach the workers after that publish's newer one.
        let _serial = lock(&self.published.serial);
        let page = self.render_status_page();
        let metrics = self.render_metrics();
        *lock(&self.published.status_page) = Some(page.clone());
        let workers = self.workers.lock();
        workers.broadcast(&MasterToWorker::StatusPage {
            body: page.body,
            public_body: page.public_body,
            healthy: page.healthy,
        });
        workers.broadcast(&MasterToWorker::MetricsPage { body: metrics });
    }
}
