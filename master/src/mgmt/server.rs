//! The management socket: accept, authorize by peer credentials, read capped lines, answer
//! one line per request, audit (docs/management-protocol.md, "Connecting" to "Audit log").
//! This is the edge where a [`CommandError`] becomes an error line.

use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;

use super::error::CommandError;
use crate::master::Master;
use crate::users::Users;
use tako_protocol::line::{LineEvent, LineReader};
use tako_protocol::request::{self as protocol, parse_request, LINE_TOO_LONG};

const MAX_CONNECTIONS: usize = 64;
/// How long an extra connection waits for a slot before it is refused.
const SLOT_WAIT: Duration = Duration::from_millis(500);
const IDLE_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("Management socket {0} is in use by another process")]
    InUse(String),
    #[error("Cannot bind management socket {path}: {source}")]
    Bind {
        path: String,
        source: std::io::Error,
    },
}

/// Binds the socket with its mode and owner (docs/management-protocol.md, "Connecting"),
/// replacing a stale file.
/// `take_over`: a re-executed successor replaces its predecessor's socket file.
pub fn bind(
    path: &Path,
    users: Option<&Users>,
    take_over: bool,
) -> Result<UnixListener, SocketError> {
    let shown = path.display().to_string();
    let err = |source| SocketError::Bind {
        path: shown.clone(),
        source,
    };
    if path.exists() {
        if !take_over && std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(SocketError::InUse(shown));
        }
        std::fs::remove_file(path).map_err(err)?;
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    let mode = if users.is_some() { 0o660 } else { 0o600 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(err)?;
    if let Some(u) = users {
        std::os::unix::fs::chown(path, Some(0), Some(u.deploy.gid)).map_err(err)?;
    }
    Ok(listener)
}

/// Supplementary groups of the peer (SO_PEERGROUPS).
fn peer_groups(stream: &UnixStream) -> Vec<u32> {
    let mut groups = vec![0 as libc::gid_t; 256];
    let mut len = (groups.len() * std::mem::size_of::<libc::gid_t>()) as libc::socklen_t;
    // SAFETY: the buffer and its length describe valid writable memory.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERGROUPS,
            groups.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Vec::new();
    }
    groups.truncate(len as usize / std::mem::size_of::<libc::gid_t>());
    groups
}

pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
    pub comm: String,
}

fn allowed(master: &Master, peer: &Peer, stream: &UnixStream) -> bool {
    if peer.uid == 0 {
        return true;
    }
    match &master.users {
        Some(u) => {
            peer.uid == u.deploy.uid
                || peer.gid == u.deploy.gid
                || peer_groups(stream).contains(&u.deploy.gid)
        }
        None => peer.uid == nix::unistd::getuid().as_raw(),
    }
}

fn comm_of(pid: Option<i32>) -> String {
    pid.and_then(|p| std::fs::read_to_string(format!("/proc/{p}/comm")).ok())
        .map(|s| {
            s.trim_end()
                .chars()
                .map(|c| if c.is_control() { '?' } else { c })
                .collect()
        })
        .unwrap_or_default()
}

pub fn serve(master: Arc<Master>, listener: UnixListener, shutdown: Arc<tokio::sync::Notify>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = shutdown.notified() => break,
            };
            let mut stream = match accepted {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "management accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            // A slot may be held by a connection whose peer already left and whose task has
            // not run yet (a burst of connect-and-close): wait a moment for it before
            // refusing, so such a burst does not lock out a legitimate client. Meanwhile
            // new connections wait in the listen backlog.
            let permit = match slots.clone().try_acquire_owned() {
                Ok(p) => Ok(p),
                Err(_) => tokio::time::timeout(SLOT_WAIT, slots.clone().acquire_owned())
                    .await
                    .map_err(|_| ())
                    .and_then(|r| r.map_err(|_| ())),
            };
            let Ok(permit) = permit else {
                let _ = stream
                    .write_all(protocol::error("Too many management connections").as_bytes())
                    .await;
                continue;
            };
            let m = master.clone();
            tokio::spawn(async move {
                let _permit = permit;
                connection(m, stream).await;
            });
        }
        tracing::info!("management socket closed");
    });
}

async fn connection(master: Arc<Master>, mut stream: UnixStream) {
    let cred = match stream.peer_cred() {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read management peer credentials");
            return;
        }
    };
    let peer = Peer {
        uid: cred.uid(),
        gid: cred.gid(),
        pid: cred.pid(),
        comm: comm_of(cred.pid()),
    };
    if !allowed(&master, &peer, &stream) {
        tracing::warn!(target: "tako::audit", peer_uid = peer.uid, peer_gid = peer.gid, peer_pid = peer.pid.unwrap_or(0), "refused management peer");
        let msg = format!(
            "Permission denied: uid {} may not use the management socket",
            peer.uid
        );
        let _ = stream.write_all(protocol::error(&msg).as_bytes()).await;
        return;
    }
    let (rd, mut wr) = stream.into_split();
    let mut lines = LineReader::new(rd);
    loop {
        let event = match tokio::time::timeout(IDLE_TIMEOUT, lines.next_line()).await {
            Err(_) => return,
            Ok(Err(_)) => return,
            Ok(Ok(ev)) => ev,
        };
        let response = match event {
            LineEvent::Eof => return,
            LineEvent::TooLong => protocol::error(LINE_TOO_LONG),
            LineEvent::Line(line) => match parse_request(&line) {
                Err(msg) => protocol::error(&msg),
                Ok(req) => run(&master, &peer, req).await,
            },
        };
        if wr.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}

async fn run(master: &Arc<Master>, peer: &Peer, req: protocol::Request) -> String {
    let name = req.name();
    if master.is_shutting_down() {
        return answer(Err(CommandError::NotRun { command: name }));
    }
    let mutating = req.is_mutating();
    let app = req.app().map(str::to_string);
    let version = req.version().map(str::to_string);
    let keys: Option<Vec<String>> = match &req {
        protocol::Request::UpdateSecrets { secrets, .. } => Some(secrets.keys().cloned().collect()),
        _ => None,
    };
    let started = Instant::now();
    let result = super::handlers::handle(master, req).await;
    let ms = started.elapsed().as_millis() as u64;
    let (res, err) = match &result {
        Ok(_) => ("ok", String::new()),
        Err(e) => ("error", e.to_string()),
    };
    let app_s = app.as_deref().unwrap_or("");
    let version_s = version.as_deref().unwrap_or("");
    let keys_s = keys.map(|k| k.join(",")).unwrap_or_default();
    if mutating {
        tracing::info!(target: "tako::audit", peer_uid = peer.uid, peer_pid = peer.pid.unwrap_or(0), peer_comm = %peer.comm,
            command = name, app = app_s, version = version_s, keys = %keys_s, result = res, error = %err, duration_ms = ms, "management command");
    } else {
        tracing::debug!(target: "tako::audit", peer_uid = peer.uid, peer_pid = peer.pid.unwrap_or(0), peer_comm = %peer.comm,
            command = name, app = app_s, result = res, duration_ms = ms, "management command");
    }
    answer(result)
}

/// The answer line of a command: its data, or its error's message (for a failed rollout, a
/// JSON document carried as the message).
fn answer(result: Result<serde_json::Value, CommandError>) -> String {
    match result {
        Ok(data) => protocol::ok(data),
        Err(e) => protocol::error(&e.to_string()),
    }
}
