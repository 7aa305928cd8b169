//! Process roles at boot (docs/operations.md, "Upgrade"): primary, candidate, stand-in; the
//! daemonizing fork of the latter two, the stand-in's small server, and the candidate's exit
//! watch.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::cli::{ExplicitFlags, Settings};
use crate::master::Master;
use crate::server_role::ServerRole;
use crate::state::ServerMode;

/// `tako-<owner>.sock` → `<owner>`.
pub fn socket_owner(socket: &Path) -> Option<String> {
    let name = socket.file_name()?.to_str()?;
    let owner = name.strip_prefix("tako-")?.strip_suffix(".sock")?;
    (!owner.is_empty()).then(|| owner.to_string())
}

/// The candidate rule: mode `upgrading` and the socket named after the lock holder.
pub fn is_candidate(socket: &Path, mode: ServerMode, holder: Option<&str>) -> bool {
    mode == ServerMode::Upgrading && holder.is_some() && socket_owner(socket).as_deref() == holder
}

/// The parent's side of a daemonizing fork: it waits for the child's word.
pub struct Daemon {
    ready_fd: Option<OwnedFd>,
}

impl Daemon {
    /// Forks. The parent waits (≤ 120 s) for the child to report its socket and listeners up
    /// and exits 0, or 1 when the child failed. Must run before any thread exists.
    pub fn fork() -> Daemon {
        // Close-on-exec: the write end must not leak into the workers and the launcher
        // (they would hold the waiting parent open, and a child gets no descriptor it does
        // not need).
        let (rd, wr) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("tako-server: cannot daemonize: {e}");
                std::process::exit(1);
            }
        };
        // SAFETY: single-threaded at this point (checked by the caller's position in boot).
        match unsafe { nix::unistd::fork() } {
            Ok(nix::unistd::ForkResult::Parent { .. }) => {
                drop(wr);
                let mut f = std::fs::File::from(rd);
                let (tx, rx) = std::sync::mpsc::channel();
                std::thread::spawn(move || {
                    let mut b = [0u8; 1];
                    let _ = tx.send(matches!(f.read(&mut b), Ok(1) if b[0] == b'1'));
                });
                let ok = rx.recv_timeout(Duration::from_secs(120)).unwrap_or(false);
                std::process::exit(if ok { 0 } else { 1 });
            }
            Ok(nix::unistd::ForkResult::Child) => {
                drop(rd);
                let _ = nix::unistd::setsid();
                Daemon { ready_fd: Some(wr) }
            }
            Err(e) => {
                eprintln!("tako-server: cannot daemonize: {e}");
                std::process::exit(1);
            }
        }
    }

    /// Tells the waiting parent that we are up.
    pub fn ready(&mut self) {
        if let Some(fd) = self.ready_fd.take() {
            let mut f = std::fs::File::from(fd);
            let _ = f.write_all(b"1");
        }
    }
}

/// The settings a candidate takes from the primary when its own flags did not give them.
pub fn inherit_settings(
    settings: &mut Settings,
    explicit: &ExplicitFlags,
    primary_json: Option<&str>,
) {
    let Some(v) = primary_json.and_then(|j| serde_json::from_str::<Value>(j).ok()) else {
        return;
    };
    if !explicit.listen {
        if let Some(list) = v["listen"].as_array() {
            let addrs: Vec<_> = list
                .iter()
                .filter_map(|a| a.as_str()?.parse().ok())
                .collect();
            if !addrs.is_empty() {
                settings.listen = addrs;
                settings.listen_given = true;
            }
        }
    }
    if !explicit.workers {
        if let Some(n) = v["workers"].as_u64().filter(|n| (1..=256).contains(n)) {
            settings.workers = n as usize;
        }
    }
    for (given, key, slot) in [
        (explicit.proxy_user, "proxy_user", &mut settings.proxy_user),
        (explicit.app_user, "app_user", &mut settings.app_user),
        (
            explicit.deploy_user,
            "deploy_user",
            &mut settings.deploy_user,
        ),
    ] {
        if !given {
            if let Some(u) = v[key].as_str() {
                *slot = u.to_string();
            }
        }
    }
    if !explicit.trusted_proxy {
        if let Some(list) = v["trusted_proxies"].as_array() {
            let nets: Vec<_> = list
                .iter()
                .filter_map(|a| a.as_str()?.parse().ok())
                .collect();
            if !nets.is_empty() {
                settings.trusted_proxies = nets;
            }
        }
    }
    if !explicit.acme_directory {
        if let Some(d) = v["acme_directory"].as_str() {
            settings.acme_directory = d.to_string();
        }
    }
    if !explicit.acme_ca_root {
        if let Some(p) = v["acme_ca_root"].as_str() {
            settings.acme_ca_root = Some(PathBuf::from(p));
        }
    }
    // A candidate serves the same traffic: its workers are confined like the primary's.
    if !explicit.sandbox {
        if let Some(mode) = v["sandbox"]
            .as_str()
            .and_then(|m| crate::cli::parse_sandbox(m).ok())
        {
            settings.sandbox = mode;
        }
    }
    // The balancer in front sends its PROXY headers to the candidate's listeners too; a
    // list from the candidate's own flags or config file wins.
    if !explicit.proxy_protocol && settings.proxy_protocol.is_empty() {
        if let Some(list) = v["proxy_protocol"].as_array() {
            settings.proxy_protocol = list
                .iter()
                .filter_map(|a| a.as_str()?.parse().ok())
                .filter(|a: &SocketAddr| {
                    settings.listen.contains(&a.ip())
                        && [settings.http_port, settings.https_port].contains(&a.port())
                })
                .collect();
        }
    }
    // The same clients reach the candidate: it limits them as the primary does.
    if !explicit.client_limits {
        let n = |k: &str| {
            v["client_limits"][k]
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
        };
        if let (Some(c), Some(r), Some(rate), Some(burst)) = (
            n("max_connections"),
            n("max_requests"),
            n("rate"),
            n("burst"),
        ) {
            let max = crate::cli::MAX_CLIENT_LIMIT;
            if c <= max && r <= max && rate <= max && (1..=max).contains(&burst) {
                settings.client_limits = tako_ipc::ClientLimits {
                    max_connections: c,
                    max_requests: r,
                    rate,
                    burst,
                };
            }
        }
    }
    // The same responses leave the candidate: an operator who turned compression off (e.g.
    // against BREACH-style attacks) or sized the cache keeps that through the upgrade.
    // `compression_given` covers `--no-compression` and the config file's key alike.
    if !settings.compression_given {
        if let Some(on) = v["compression"].as_bool() {
            settings.compression = on;
        }
    }
    if !explicit.cache_size {
        if let Some(bytes) = v["cache_bytes"].as_u64() {
            settings.cache_bytes = bytes;
        }
    }
    // The apps' stored uids come from the primary's range: a candidate with another range
    // would give them new ones.
    if !explicit.app_uid_range {
        let ids = v["app_uid_range"].as_array().map(|r| {
            r.iter()
                .filter_map(|n| n.as_u64().and_then(|n| u32::try_from(n).ok()))
                .collect::<Vec<_>>()
        });
        if let Some([first, last]) = ids.as_deref() {
            if *first != 0 && first <= last {
                settings.app_uid_range = (*first, *last);
            }
        }
    }
}

/// The primary's effective settings, as stored for candidates: the `server_info` keys and
/// `acme_ca_root`.
pub fn settings_json(s: &Settings) -> String {
    json!({
        "acme_ca_root": s.acme_ca_root.as_ref().map(|p| p.display().to_string()),
        "acme_directory": s.acme_directory,
        "acme_email": s.acme_email,
        "acme_staging": s.acme_staging,
        "app_uid_range": [s.app_uid_range.0, s.app_uid_range.1],
        "app_user": s.app_user,
        "cache_bytes": s.cache_bytes,
        "compression": s.compression,
        "data_dir": s.data_dir.display().to_string(),
        "deploy_user": s.deploy_user,
        "http_port": s.http_port,
        "https_port": s.https_port,
        "instance_port_offset": s.instance_port_offset,
        "listen": s.listen.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        "no_acme": s.no_acme,
        "proxy_user": s.proxy_user,
        "renewal_interval_hours": s.renewal_interval_hours,
        "proxy_protocol": s.proxy_protocol.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        "sandbox": crate::cli::sandbox_name(s.sandbox),
        "client_limits": {
            "max_connections": s.client_limits.max_connections,
            "max_requests": s.client_limits.max_requests,
            "rate": s.client_limits.rate,
            "burst": s.client_limits.burst,
        },
        "socket": s.socket.display().to_string(),
        "trusted_proxies": s.trusted_proxies.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
        "workers": s.workers,
    })
    .to_string()
}

/// The candidate's exit rule: once the upgrade is over, wait for the new primary's ready mark,
/// then return so the caller shuts down gracefully.
pub async fn candidate_until_done(master: Arc<Master>, owner: String) {
    let started = master.started_unix;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let holder = master.store.upgrade_owner().await.ok().flatten();
        let mode = master
            .store
            .server_mode()
            .await
            .unwrap_or(ServerMode::Upgrading);
        if holder.as_deref() != Some(owner.as_str()) || mode == ServerMode::Normal {
            break;
        }
    }
    tracing::info!("the upgrade is over; waiting for the primary to be ready");
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        if master
            .store
            .primary_ready_at()
            .await
            .ok()
            .flatten()
            .is_some_and(|t| t >= started)
        {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

pub const STAND_IN_REFUSAL: &str =
    "This process is an upgrade stand-in without access to the server state; use the primary socket";

/// The stand-in: its own socket, `hello` and `server_info` only, gone once the primary is back
/// in `normal` mode (or after 30 minutes).
pub async fn run_stand_in(settings: Settings, mut daemon: Daemon) -> i32 {
    let path = settings.socket.clone();
    let _ = std::fs::remove_file(&path);
    let listener = match tokio::net::UnixListener::bind(&path) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("Cannot bind management socket {}: {e}", path.display());
            return 4;
        }
    };
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660));
    tracing::info!("Management socket listening on {}", path.display());
    daemon.ready();
    let primary = path
        .parent()
        .map(|d| d.join("tako.sock"))
        .unwrap_or_else(|| PathBuf::from("tako.sock"));
    let info = Arc::new(stand_in_info(&settings));
    let deadline = Instant::now() + Duration::from_secs(30 * 60);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    let info = info.clone();
                    tokio::spawn(async move { stand_in_connection(stream, info).await });
                }
            }
            _ = tick.tick() => {
                if primary_is_normal(&primary).await {
                    tracing::info!("the primary is back in normal mode; stand-in exiting");
                    break;
                }
                if Instant::now() >= deadline {
                    tracing::info!("stand-in exiting after 30 minutes");
                    break;
                }
            }
        }
    }
    let _ = std::fs::remove_file(&path);
    0
}

/// The `server_info` data (docs/management-protocol.md, "server_info"): the stored settings
/// plus what describes this process now.
pub fn server_info(
    s: &Settings,
    mode: &str,
    role: ServerRole,
    privilege_separation: bool,
    owner: Option<String>,
) -> Value {
    let mut v: Value = serde_json::from_str(&settings_json(s)).unwrap_or(json!({}));
    if let Some(o) = v.as_object_mut() {
        o.remove("acme_ca_root");
        // For candidates only, like the CA root: not server_info keys.
        o.remove("app_uid_range");
        o.remove("sandbox");
        o.remove("proxy_protocol");
        o.remove("client_limits");
        o.insert("mode".into(), json!(mode));
        o.insert("role".into(), json!(role.as_str()));
        o.insert("privilege_separation".into(), json!(privilege_separation));
        o.insert("server_version".into(), json!(env!("CARGO_PKG_VERSION")));
        o.insert("upgrade_owner".into(), json!(owner));
    }
    v
}

fn stand_in_info(s: &Settings) -> Value {
    server_info(
        s,
        "upgrading",
        ServerRole::StandIn,
        false,
        socket_owner(&s.socket),
    )
}

async fn stand_in_connection(stream: tokio::net::UnixStream, info: Arc<Value>) {
    let (rd, mut wr) = stream.into_split();
    let mut lines = tako_protocol::line::LineReader::new(rd);
    use tako_protocol::line::LineEvent;
    use tako_protocol::request::{self as protocol, Request};
    loop {
        let resp = match tokio::time::timeout(Duration::from_secs(600), lines.next_line()).await {
            Ok(Ok(LineEvent::Line(line))) => match protocol::parse_request(&line) {
                Err(m) => protocol::error(&m),
                Ok(Request::Hello { protocol_version })
                    if protocol_version == protocol::PROTOCOL_VERSION =>
                {
                    protocol::ok(
                        json!({"capabilities": protocol::CAPABILITIES, "protocol_version": protocol::PROTOCOL_VERSION,
                           "server_version": env!("CARGO_PKG_VERSION")}),
                    )
                }
                Ok(Request::Hello { protocol_version }) => protocol::error(&format!(
                    "Protocol version mismatch: client={protocol_version} server={}",
                    protocol::PROTOCOL_VERSION
                )),
                Ok(Request::ServerInfo) => protocol::ok((*info).clone()),
                Ok(_) => protocol::error(STAND_IN_REFUSAL),
            },
            Ok(Ok(LineEvent::TooLong)) => protocol::error(protocol::LINE_TOO_LONG),
            _ => return,
        };
        if wr.write_all(resp.as_bytes()).await.is_err() {
            return;
        }
    }
}

async fn primary_is_normal(primary: &Path) -> bool {
    let Ok(Ok(stream)) = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::UnixStream::connect(primary),
    )
    .await
    else {
        return false;
    };
    let (rd, mut wr) = stream.into_split();
    if wr
        .write_all(b"{\"command\":\"server_info\"}\n")
        .await
        .is_err()
    {
        return false;
    }
    let mut line = String::new();
    let mut rd = BufReader::new(rd);
    match tokio::time::timeout(Duration::from_secs(2), rd.read_line(&mut line)).await {
        Ok(Ok(n)) if n > 0 => serde_json::from_str::<Value>(&line)
            .ok()
            .is_some_and(|v| v["status"] == "ok" && v["data"]["mode"] == "normal"),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::ServerFlags;
    use clap::Parser;

    #[test]
    fn owners_from_socket_names() {
        assert_eq!(
            socket_owner(Path::new("/run/tako/tako-upgrade-x-1.sock")).as_deref(),
            Some("upgrade-x-1")
        );
        assert_eq!(socket_owner(Path::new("/run/tako/tako.sock")), None);
        assert_eq!(socket_owner(Path::new("/run/tako/tako-.sock")), None);
        assert!(is_candidate(
            Path::new("/r/tako-o.sock"),
            ServerMode::Upgrading,
            Some("o")
        ));
        assert!(!is_candidate(
            Path::new("/r/tako-o.sock"),
            ServerMode::Normal,
            Some("o")
        ));
        assert!(!is_candidate(
            Path::new("/r/tako-p.sock"),
            ServerMode::Upgrading,
            Some("o")
        ));
    }

    #[test]
    fn a_candidate_keeps_the_primarys_sandbox_unless_told_otherwise() {
        let dir = std::env::temp_dir().join("tako-cli-test-sandbox");
        let d = dir.to_str().unwrap();
        let primary = flags(&["--data-dir", d, "--sandbox", "off"])
            .resolve()
            .unwrap();
        let stored = settings_json(&primary);
        let own = flags(&["--data-dir", d]).resolve().unwrap();
        assert_eq!(own.sandbox, tako_ipc::SandboxMode::BestEffort);
        let plain = candidate(&["--data-dir", d], &stored);
        assert_eq!(plain.sandbox, tako_ipc::SandboxMode::Off);
        let told = candidate(&["--data-dir", d, "--sandbox", "best-effort"], &stored);
        assert_eq!(told.sandbox, tako_ipc::SandboxMode::BestEffort);
    }

    #[test]
    fn a_candidate_keeps_the_primarys_proxy_protocol_listeners() {
        let dir = std::env::temp_dir().join("tako-cli-test-proxy-inherit");
        let d = dir.to_str().unwrap();
        let base = ["--data-dir", d, "--listen", "127.0.0.1", "--port", "8080"];
        let mut with = base.to_vec();
        with.extend(["--proxy-protocol", "127.0.0.1:8080"]);
        let primary = flags(&with).resolve().unwrap();
        assert!(flags(&base).resolve().unwrap().proxy_protocol.is_empty());
        let plain = candidate(&base, &settings_json(&primary));
        assert_eq!(plain.proxy_protocol, primary.proxy_protocol);
    }

    #[test]
    fn a_candidate_keeps_the_primarys_compression_and_cache_size_unless_told_otherwise() {
        let dir = std::env::temp_dir().join("tako-cli-test-compression-inherit");
        let d = dir.to_str().unwrap();
        let primary = flags(&["--data-dir", d, "--no-compression", "--cache-size", "0"])
            .resolve()
            .unwrap();
        let stored = settings_json(&primary);
        let own = flags(&["--data-dir", d]).resolve().unwrap();
        assert!(own.compression);
        assert_eq!(own.cache_bytes, crate::cli::DEFAULT_CACHE_BYTES);
        let plain = candidate(&["--data-dir", d], &stored);
        assert!(!plain.compression, "compression stays off");
        assert_eq!(plain.cache_bytes, 0, "the cache stays off");

        // The candidate's own word wins: a flag, or a config file's key.
        let told = candidate(&["--data-dir", d, "--cache-size", "1024"], &stored);
        assert_eq!(told.cache_bytes, 1024);
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = dir.join("on.toml");
        std::fs::write(&cfg, "[server]\ncompression = true\n").unwrap();
        let told = candidate(
            &["--data-dir", d, "--config", cfg.to_str().unwrap()],
            &stored,
        );
        assert!(told.compression, "the config file says on");

        // A primary with compression on does not turn off a candidate told to stay plain.
        let on = settings_json(&flags(&["--data-dir", d]).resolve().unwrap());
        let told = candidate(&["--data-dir", d, "--no-compression"], &on);
        assert!(!told.compression);
    }

    /// A candidate started with `args`, once it took what it may from the primary's stored
    /// settings.
    fn candidate(args: &[&str], stored: &str) -> Settings {
        let flags = flags(args);
        let explicit = flags.explicit();
        let mut settings = flags.resolve().unwrap();
        inherit_settings(&mut settings, &explicit, Some(stored));
        settings
    }

    fn flags(args: &[&str]) -> ServerFlags {
        let mut v = vec!["tako-server"];
        v.extend_from_slice(args);
        Flags::try_parse_from(v).unwrap().server
    }

    /// The server's flags alone, as the command line parses them.
    #[derive(Debug, clap::Parser)]
    struct Flags {
        #[command(flatten)]
        server: ServerFlags,
    }
}
