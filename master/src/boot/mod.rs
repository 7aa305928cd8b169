//! Running the server: the startup order (docs/cli.md, "Startup") and the serving loop. The
//! host setup, the periodic tasks and the signals with graceful shutdown are submodules.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use crate::cli::{ConfigError, ServerFlags};
use crate::datadir::{prepare_socket_dir, DataDir};
use crate::master::Master;
use crate::server_role::ServerRole;
use crate::state::{DataDirLock, ServerMode, StateHandle, Store};
use crate::supervisor::{launcher, workers};
use crate::upgrade;

mod background;
mod host;
mod shutdown;

use background::{spawn_certificate_check, spawn_status_pusher};
use host::{notify_ready, raise_nofile_limit, warn_tcp_migrate_req};
use shutdown::{shutdown, wait_for_shutdown, Signals, Stop};

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
