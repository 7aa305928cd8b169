//! Running the server: startup order, signals and graceful shutdown (docs/cli.md, "Startup",
//! "Signals").

use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::Notify;

use crate::cli::{ConfigError, ServerFlags};
use crate::clock::unix_now;
use crate::datadir::{prepare_socket_dir, DataDir};
use crate::master::Master;
use crate::server_role::ServerRole;
use crate::state::{DataDirLock, ServerMode, StateHandle, Store};
use crate::supervisor::{launcher, workers};
use crate::upgrade;

const WORKER_DRAIN: Duration = Duration::from_secs(30);
const INSTANCE_GRACE: Duration = Duration::from_secs(10);

fn raise_nofile_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!(error = %e, "cannot raise the open-file limit");
            }
        }
    }
}

/// Warns when `net.ipv4.tcp_migrate_req` is 0 (docs/operations.md, "Upgrade").
fn warn_tcp_migrate_req() {
    if let Ok(v) = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req") {
        if v.trim() == "0" {
            tracing::warn!("net.ipv4.tcp_migrate_req is 0: connections queued on a closing listener may be reset during upgrades");
        }
    }
}

/// Tells systemd we are ready, when it asked (`NOTIFY_SOCKET`).
fn notify_ready() {
    let Ok(path) = std::env::var("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(sock) = std::os::unix::net::UnixDatagram::unbound() else {
        return;
    };
    let r = if let Some(name) = path.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            .and_then(|addr| sock.send_to_addr(b"READY=1", &addr))
    } else {
        sock.send_to(b"READY=1", &path)
    };
    if let Err(e) = r {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

pub fn run(flags: ServerFlags) -> i32 {
    // Before any thread exists: the environment is cleaned of LISTEN_* and the re-exec
    // descriptors here.
    let self_exec = crate::handover::SelfExec::capture();
    let inherited = crate::listeners::inherited_sockets();
    let (inherited_lock, ready_fd) = crate::handover::inherited();
    // What was adopted above is close-on-exec now; anything else inherited is closed.
    let stray_fds = crate::child_env::close_stray_descriptors();
    crate::logging::init("role=master".into());
    if !stray_fds.is_empty() {
        tracing::info!(fds = ?stray_fds, "closed inherited descriptors this server does not use");
    }
    let explicit = flags.explicit();
    let mut settings = match flags.resolve() {
        Ok(s) => s,
        Err(ConfigError::Usage(m)) => {
            eprintln!("error: {m}");
            return 2;
        }
        Err(e) => {
            tracing::error!("{e}");
            return 3;
        }
    };
    let root = tako_ipc::privilege::running_as_root();
    let candidate_shaped = upgrade::socket_owner(&settings.socket).is_some();

    let data = DataDir {
        root: settings.data_dir.clone(),
    };
    // Step 4: open the state and decide the role.
    let role = match Store::open(&data.root, env!("CARGO_PKG_VERSION")) {
        Ok(mut store) => {
            let mode = store.server_mode().unwrap_or(ServerMode::Normal);
            let holder = store.upgrade_owner().ok().flatten();
            if upgrade::is_candidate(&settings.socket, mode, holder.as_deref()) {
                let primary = store.primary_settings_json().ok().flatten();
                upgrade::inherit_settings(&mut settings, &explicit, primary.as_deref());
                ServerRole::Candidate
            } else {
                ServerRole::Primary
            }
        }
        Err(e) if e.is_permission_denied() && !root && candidate_shaped => ServerRole::StandIn,
        Err(e) => {
            tracing::error!("{e}");
            return 5;
        }
    };
    let users = match role {
        ServerRole::StandIn => None,
        _ => match crate::users::resolve(&settings) {
            Ok(u) => u,
            Err(e) => {
                tracing::error!("{e}");
                return 3;
            }
        },
    };
    if users.is_none() && role != ServerRole::StandIn {
        let uid = nix::unistd::getuid().as_raw();
        tracing::warn!("privilege separation is off: tako-server runs as uid {uid} (not root); workers, launcher and apps run as this user");
        for flag in &settings.explicit_user_flags {
            tracing::warn!(flag, "{flag} is ignored when not running as root");
        }
    }
    tracing::info!("Tako Server v{}", env!("CARGO_PKG_VERSION"));
    tracing::info!("Socket: {}", settings.socket.display());
    tracing::info!("HTTP port: {}", settings.http_port);
    tracing::info!("HTTPS port: {}", settings.https_port);
    tracing::info!("Data directory: {}", settings.data_dir.display());

    // Candidates and stand-ins leave the CLI's shell at once (docs/operations.md, "Upgrade").
    let daemon = match role {
        ServerRole::Primary => None,
        _ => Some(upgrade::Daemon::fork()),
    };
    if role == ServerRole::StandIn {
        let state_file = data.root.join(crate::state::STATE_FILE);
        let owner = std::fs::metadata(&state_file)
            .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
            .unwrap_or(0);
        tracing::warn!(
            "Upgrade candidate runs as uid {} but the server state belongs to uid {owner}: running as a stand-in without listeners or apps; the primary restart is not covered by a candidate",
            nix::unistd::getuid().as_raw()
        );
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!("cannot start the runtime: {e}");
                return 1;
            }
        };
        let Some(daemon) = daemon else { return 1 };
        return rt.block_on(upgrade::run_stand_in(settings, daemon));
    }

    raise_nofile_limit();
    warn_tcp_migrate_req();
    // Instances orphaned by a launcher crash come to us, so we can kill and reap them.
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        tracing::warn!(error = %e, "cannot become a child subreaper");
    }
    if let Err(e) = data.prepare(users.as_ref()) {
        tracing::error!("Cannot prepare data directory {}: {e}", data.root.display());
        return 5;
    }
    // Only a primary holds the data-dir lock.
    let _dir_lock = match role {
        ServerRole::Primary => match inherited_lock.map_or_else(
            || DataDirLock::acquire(&data.root),
            |fd| DataDirLock::adopt(&data.root, fd),
        ) {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::error!("{e}");
                return 5;
            }
        },
        _ => None,
    };
    let store = match Store::open(&data.root, env!("CARGO_PKG_VERSION")) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("{e}");
            return 5;
        }
    };
    let handle = match StateHandle::spawn(store) {
        Ok(h) => h,
        Err(e) => {
            tracing::error!("{e}");
            return 5;
        }
    };

    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the runtime: {e}");
            return 1;
        }
    };
    let lock_fd = _dir_lock.as_ref().map(|l| l.raw_fd());
    rt.block_on(serve(Boot {
        inherited,
        settings,
        users,
        data,
        store: handle,
        role,
        daemon,
        lock_fd,
        self_exec,
        ready_fd,
    }))
}

struct Boot {
    inherited: Vec<(String, std::os::fd::OwnedFd)>,
    settings: crate::cli::Settings,
    users: Option<crate::users::Users>,
    data: DataDir,
    store: StateHandle,
    role: ServerRole,
    daemon: Option<upgrade::Daemon>,
    lock_fd: Option<std::os::fd::RawFd>,
    self_exec: crate::handover::SelfExec,
    /// Set when a predecessor re-executed us: it waits for our ready byte.
    ready_fd: Option<std::os::fd::OwnedFd>,
}

async fn serve(boot: Boot) -> i32 {
    let Boot {
        inherited,
        settings,
        users,
        data,
        store,
        role,
        mut daemon,
        lock_fd,
        self_exec,
        ready_fd,
    } = boot;
    // Before anything can be asked of this server: a SIGTERM that arrives while the workers
    // start (a `systemctl stop` right after a start) must wait its turn, not end the master
    // by the default action and leave its children behind.
    let mut signals = match Signals::install() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot install signal handlers");
            return 1;
        }
    };
    let successor = ready_fd.is_some();
    // Sockets from a service manager (not from a re-executing predecessor, which is gone)
    // are still held by it: they must stay listening when we shut down.
    let manager_sockets = !inherited.is_empty() && !successor;
    // Certificates: what is on disk, plus an in-memory default for clients without SNI.
    let (mut certs, _) = crate::certs::load_dir(&data.certs());
    if !certs.iter().any(|c| c.name == "default") {
        match crate::certs::self_signed("localhost") {
            Ok(mut c) => {
                c.name = "default".into();
                certs.push(c);
            }
            Err(e) => tracing::warn!(error = %e, "cannot generate the default certificate"),
        }
    }

    // Register every app before anything listens.
    let stored = match store.load_apps().await {
        Ok(a) => a,
        Err(e) => {
            tracing::error!("{e}");
            return 5;
        }
    };
    let (registry, fixes) = crate::lifecycle::restore::register(stored);
    // A candidate never writes app rows: its fixed bases live in memory only.
    for (app, base) in fixes.into_iter().filter(|_| role == ServerRole::Primary) {
        if let Err(e) = store.set_base_port(app.clone(), base).await {
            tracing::warn!(app = %app, error = %e, "cannot persist the new port base");
        }
    }
    let app_count = registry.apps.len();

    let listeners = match crate::listeners::bind_all(
        &settings.listen,
        settings.listen_given,
        settings.http_port,
        settings.https_port,
        inherited,
    ) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("{e}");
            return 4;
        }
    };
    let stored = crate::listeners::store_in_service_manager(&listeners);
    let listeners_shared = stored || manager_sockets;
    if let Err(e) = prepare_socket_dir(&settings.socket, users.as_ref()) {
        tracing::error!(
            "Cannot create the socket directory for {}: {e}",
            settings.socket.display()
        );
        return 4;
    }
    let mgmt_listener = match crate::mgmt::server::bind(&settings.socket, users.as_ref(), successor)
    {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("{e}");
            return 4;
        }
    };
    tracing::info!(
        "Management socket listening on {}",
        settings.socket.display()
    );

    let settings_json = upgrade::settings_json(&settings);
    let socket_path = settings.socket.clone();
    let mut m = Master::new(
        settings, users, data, listeners, store, certs, registry, role,
    );
    m.lock_fd = lock_fd;
    m.self_exec = self_exec;
    let master = Arc::new(m);
    if role == ServerRole::Primary {
        if let Err(e) = master
            .store
            .write_primary_boot(settings_json, std::process::id(), master.started_unix)
            .await
        {
            tracing::warn!(error = %e, "cannot record the primary's boot");
        }
    }
    master.publish();

    let mgmt_shutdown = Arc::new(Notify::new());
    crate::mgmt::server::serve(master.clone(), mgmt_listener, mgmt_shutdown.clone());

    launcher::supervise(master.clone());
    let ready = workers::start_all(&master).await;
    tracing::info!("Ready: {ready} workers, {app_count} apps");
    if let Some(d) = daemon.as_mut() {
        d.ready();
    }
    // A re-executed successor is not the unit's main process yet (NotifyAccess=main would
    // refuse its READY=1): its predecessor reports the new MAINPID once it is ready.
    if !successor {
        notify_ready();
    }

    spawn_status_pusher(master.clone());
    spawn_certificate_check(master.clone());
    crate::acme::start(&master);
    crate::lifecycle::idle::spawn(master.clone());
    {
        let m = master.clone();
        tokio::spawn(async move {
            if m.launcher.wait_ready(Duration::from_secs(30)).await {
                crate::lifecycle::restore::start(m).await;
            } else {
                tracing::error!("the app launcher did not start; apps are not restored");
            }
            // A predecessor hands over once our apps are back.
            if let Some(fd) = ready_fd {
                crate::handover::report_ready(fd);
            }
        });
    }

    let mut keep_socket = false;
    if role == ServerRole::Candidate {
        let owner = upgrade::socket_owner(&socket_path).unwrap_or_default();
        tokio::select! {
            _ = upgrade::candidate_until_done(master.clone(), owner) => {
                tracing::info!("upgrade finished; candidate shutting down");
            }
            _ = wait_for_shutdown(&master, &mut signals) => {}
        }
    } else {
        keep_socket = wait_for_shutdown(&master, &mut signals).await == Stop::HandedOver;
    }
    // After a hand-over the successor serves from the very same sockets.
    let stop_listening = !keep_socket && !listeners_shared;
    shutdown(
        master,
        mgmt_shutdown,
        socket_path,
        keep_socket,
        stop_listening,
    )
    .await
}

/// The certificate check (docs/tls.md, "The certificate check"): 60 s after start, then every
/// renewal interval, (re)generate missing or expired self-signed certificates of private route
/// hosts and queue the ACME orders that are due. A candidate leaves certificates to the primary.
fn spawn_certificate_check(master: Arc<Master>) {
    if !master.is_primary() {
        return;
    }
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(60)).await;
        let period = Duration::from_secs(u64::from(master.settings.renewal_interval_hours) * 3600);
        loop {
            if master.is_shutting_down() {
                return;
            }
            let routes: Vec<String> = {
                let reg = master.apps.lock();
                reg.apps
                    .values()
                    .filter(|a| a.visible)
                    .flat_map(|a| a.config.routes.clone())
                    .collect()
            };
            let _ = master.ensure_certificates(&routes);
            crate::acme::queue_routes(&master, &routes);
            tokio::time::sleep(period).await;
        }
    });
}

fn spawn_status_pusher(master: Arc<Master>) {
    tokio::spawn(async move {
        loop {
            master.push_status();
            tokio::select! {
                _ = master.status_dirty.notified() => {
                    // Coalesce bursts of changes into one push.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            if master.is_shutting_down() {
                return;
            }
        }
    });
}

#[derive(Debug, PartialEq, Eq)]
enum Stop {
    Signal,
    /// A re-executed successor took over.
    HandedOver,
}

/// The signals the master acts on, registered once at startup.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    usr2: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
            usr2: signal(SignalKind::user_defined2())?,
        })
    }
}

async fn wait_for_shutdown(master: &Arc<Master>, signals: &mut Signals) -> Stop {
    let Signals {
        term,
        int,
        hup,
        usr2,
    } = signals;
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); return Stop::Signal; }
            _ = int.recv() => { tracing::info!("SIGINT: shutting down"); return Stop::Signal; }
            _ = master.handed_over.notified() => {
                tracing::info!("a new server took over; shutting down");
                return Stop::HandedOver;
            }
            _ = usr2.recv() => {
                tracing::info!("SIGUSR2: upgrading in place");
                let m = master.clone();
                tokio::spawn(async move {
                    match crate::reexec::upgrade(&m).await {
                        Ok(pid) => {
                            tracing::info!(new_pid = pid, "upgrade handed over");
                            m.handed_over.notify_one();
                        }
                        Err(e) => tracing::error!("{e}"),
                    }
                });
            }
            _ = hup.recv() => {
                tracing::info!("SIGHUP: rolling restart of the proxy workers");
                let m = master.clone();
                tokio::spawn(async move {
                    match workers::restart_all(&m).await {
                        Ok((generation, n)) => tracing::info!(generation, workers = n, "workers restarted"),
                        Err(e) => tracing::warn!("{e}"),
                    }
                });
            }
        }
    }
}

/// Graceful shutdown (docs/architecture.md, "Restarts and upgrades"); a second signal forces.
async fn shutdown(
    master: Arc<Master>,
    mgmt: Arc<Notify>,
    socket: std::path::PathBuf,
    keep_socket: bool,
    stop_listening: bool,
) -> i32 {
    master.begin_shutdown();
    mgmt.notify_waiters();
    // After a hand-over the socket file belongs to the successor.
    if !keep_socket {
        let _ = std::fs::remove_file(&socket);
    }
    // Apps' stray processes (helpers outside their instances) end with the server, unless
    // another server runs the same apps under the same uids.
    let sweep = master.sweep_at_shutdown(keep_socket).await;
    let graceful = async {
        workers::drain_all(&master, WORKER_DRAIN);
        if stop_listening {
            crate::listeners::stop_listening(&master.listeners);
        }
        workers::wait_all_gone(&master, WORKER_DRAIN + Duration::from_secs(2)).await;
        let grace_ms = INSTANCE_GRACE.as_millis() as u64;
        let _ = master.launcher.send(if sweep {
            tako_ipc::MasterToLauncher::ShutdownAndSweep { grace_ms }
        } else {
            tako_ipc::MasterToLauncher::Shutdown { grace_ms }
        });
        let deadline = tokio::time::Instant::now() + INSTANCE_GRACE + Duration::from_secs(3);
        while master.launcher.info().is_some_and(|l| l.ready)
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        graceful.await;
        return 0;
    };
    tokio::select! {
        _ = graceful => {
            tracing::info!("shutdown complete");
            0
        }
        _ = term.recv() => force(&master),
        _ = int.recv() => force(&master),
    }
}

fn force(master: &Master) -> i32 {
    tracing::warn!("second signal: forcing shutdown");
    let reg = master.apps.lock();
    for a in reg.apps.values() {
        for i in a.instances.values() {
            if let Some(pid) = i.pid {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
    for w in master.workers.lock().entries.iter() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(w.pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    if let Some(l) = master.launcher.info() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(l.pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let _ = unix_now();
    1
}
