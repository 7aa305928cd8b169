//! The master: the services it is made of (apps registry, worker set, launcher link,
//! certificates, state store) and what ties them together. Everything that changes what
//! workers route goes through [`Master::publish`].

mod certificates;
mod publish;
mod status;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tako_ipc::CertEntry;
use tokio::sync::Notify;

use crate::apps::registry::{AppsRegistry, Registry};
use crate::certs::acme_progress::AcmeProgress;
use crate::certs::Certificates;
use crate::cli::Settings;
use crate::clock::unix_now;
use crate::datadir::DataDir;
use crate::launcher_link::LauncherLink;
use crate::listeners::Listener;
use crate::server_role::ServerRole;
use crate::state::StateHandle;
use crate::users::Users;
use crate::workers::WorkerSet;
use publish::Publication;

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
    pub workers: WorkerSet,
    /// The per-client table shared with the workers; `None` when every limit is off.
    pub client_columns: Option<crate::workers::client_columns::ClientColumns>,
    pub launcher: LauncherLink,
    pub apps: AppsRegistry,
    /// ACME account, orders, challenge answers and failures (docs/tls.md, "ACME").
    pub acme: AcmeProgress,
    /// What was last published to the workers: route table and status page.
    published: Publication,
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
        let client_columns = crate::workers::client_columns::ClientColumns::create(
            settings.workers,
            settings.client_limits,
        );
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
            workers: WorkerSet::default(),
            client_columns,
            launcher: LauncherLink::default(),
            apps: AppsRegistry::new(registry),
            acme: AcmeProgress::default(),
            published: Publication::default(),
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
}
