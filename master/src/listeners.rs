//! Binding the HTTP and HTTPS listeners (docs/cli.md, "Startup", step 7). The master binds once
//! and keeps the sockets for its whole life; every worker generation gets duplicates of the
//! same FDs.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::OwnedFd;

use nix::errno::Errno;
use nix::sys::socket::{
    bind, listen, setsockopt, socket, sockopt, AddressFamily, Backlog, SockFlag, SockType,
    SockaddrStorage,
};
use tako_ipc::ListenerKind;

pub struct Listener {
    pub kind: ListenerKind,
    pub addr: SocketAddr,
    pub fd: OwnedFd,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fd_names_have_no_colon() {
        assert_eq!(
            fd_name(ListenerKind::Http, "127.0.0.1:80".parse().unwrap()),
            "http-127.0.0.1-80"
        );
        assert_eq!(
            fd_name(ListenerKind::Https, "[::]:443".parse().unwrap()),
            "https-__-443"
        );
        assert!(!fd_name(ListenerKind::Https, "[::1]:8443".parse().unwrap()).contains(':'));
    }
}

#[derive(Debug, thiserror::Error)]
#[error("Cannot bind {kind} listener on {addr}: {source}")]
pub struct BindError {
    kind: &'static str,
    addr: SocketAddr,
    source: Errno,
}

fn bind_one(addr: SocketAddr) -> Result<OwnedFd, Errno> {
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    setsockopt(&fd, sockopt::ReusePort, &true)?;
    if addr.is_ipv6() {
        setsockopt(&fd, sockopt::Ipv6V6Only, &true)?;
    }
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrStorage::from(addr),
    )?;
    listen(&fd, Backlog::new(4096).unwrap_or(Backlog::MAXCONN))?;
    Ok(fd)
}

/// The name of a listener in `LISTEN_FDNAMES` and the FD store: `http-<ip>-<port>`, with
/// the colons of an IPv6 address written as `_` (`https-__-443` for `[::]:443`). systemd
/// separates names with `:` and refuses names that contain one, so the spec's
/// `http-<addr>:<port>` cannot be used as written.
pub fn fd_name(kind: ListenerKind, addr: SocketAddr) -> String {
    let scheme = match kind {
        ListenerKind::Http => "http",
        ListenerKind::Https => "https",
    };
    format!(
        "{scheme}-{}-{}",
        addr.ip().to_string().replace(':', "_"),
        addr.port()
    )
}

/// Listening sockets handed to us by a service manager (`LISTEN_FDS`), by name.
pub fn inherited_sockets() -> Vec<(String, OwnedFd)> {
    // A predecessor that re-executed us cannot know our pid; it marks the hand-over with the
    // re-exec descriptors instead.
    let pid_matches = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        .is_some_and(|p| p == std::process::id())
        || std::env::var_os(crate::handover::LOCK_FD_ENV).is_some();
    let count = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse::<i32>().ok())
        .unwrap_or(0);
    let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
    // Children must not see these.
    for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        // SAFETY: called at startup on the main thread, before any other thread exists.
        unsafe { std::env::remove_var(var) };
    }
    if !pid_matches || count <= 0 {
        return Vec::new();
    }
    let names: Vec<&str> = names.split(':').collect();
    (0..count.min(64))
        .map(|i| {
            let raw = 3 + i;
            // SAFETY: the service manager passed these descriptors to us (LISTEN_PID matched).
            let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
            let _ = nix::fcntl::fcntl(
                raw,
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
            );
            (names.get(i as usize).copied().unwrap_or("").to_string(), fd)
        })
        .collect()
}

/// Whether `fd` is a listening TCP socket bound to `addr`.
fn is_listening_on(fd: &OwnedFd, addr: SocketAddr) -> bool {
    let listening = nix::sys::socket::getsockopt(fd, sockopt::AcceptConn).unwrap_or(false);
    let bound =
        nix::sys::socket::getsockname::<SockaddrStorage>(std::os::fd::AsRawFd::as_raw_fd(fd))
            .ok()
            .and_then(|s| {
                s.as_sockaddr_in()
                    .map(|a| SocketAddr::V4((*a).into()))
                    .or_else(|| s.as_sockaddr_in6().map(|a| SocketAddr::V6((*a).into())))
            });
    listening && bound == Some(addr)
}

/// Binds (or adopts from `inherited`) one HTTP and one HTTPS listener per address. Without
/// `--listen`, a host without IPv6 skips the `::` listeners with a warning. Inherited sockets
/// that match nothing are closed with a warning.
pub fn bind_all(
    addrs: &[IpAddr],
    listen_given: bool,
    http: u16,
    https: u16,
    mut inherited: Vec<(String, OwnedFd)>,
) -> Result<Vec<Listener>, BindError> {
    let mut out = Vec::new();
    for ip in addrs {
        for (kind, port, label) in [
            (ListenerKind::Http, http, "HTTP"),
            (ListenerKind::Https, https, "HTTPS"),
        ] {
            let addr = SocketAddr::new(*ip, port);
            let name = fd_name(kind, addr);
            if let Some(pos) = inherited
                .iter()
                .position(|(n, fd)| *n == name && is_listening_on(fd, addr))
            {
                let (_, fd) = inherited.remove(pos);
                tracing::info!(listener = %name, "adopted an inherited listening socket");
                out.push(Listener { kind, addr, fd });
                continue;
            }
            match bind_one(addr) {
                Ok(fd) => out.push(Listener { kind, addr, fd }),
                Err(e)
                    if ip.is_ipv6()
                        && !listen_given
                        && matches!(e, Errno::EAFNOSUPPORT | Errno::EADDRNOTAVAIL) =>
                {
                    tracing::warn!(%addr, error = %e, "IPv6 is unavailable; skipping the :: listeners");
                    break;
                }
                Err(source) => {
                    return Err(BindError {
                        kind: label,
                        addr,
                        source,
                    })
                }
            }
        }
    }
    for (name, _) in inherited {
        tracing::warn!(name = %name, "closing an inherited socket that matches no configured listener");
    }
    Ok(out)
}

/// Takes the listeners out of service at the start of a graceful shutdown, when no one else
/// will use them: new connections then go to another socket of the `SO_REUSEPORT` group (an
/// upgrade candidate) or are refused at once, instead of waiting in a queue that nobody accepts
/// from until the drain ends and is then reset. Connections already queued are migrated when
/// `tcp_migrate_req` is 1 (docs/operations.md, "Upgrade").
pub fn stop_listening(listeners: &[Listener]) {
    for l in listeners {
        if let Err(e) = nix::sys::socket::shutdown(
            std::os::fd::AsRawFd::as_raw_fd(&l.fd),
            nix::sys::socket::Shutdown::Read,
        ) {
            tracing::debug!(error = %e, listener = %fd_name(l.kind, l.addr), "cannot shut down a listener");
        }
    }
}

/// Hands every listener to the service manager's file-descriptor store, so a restart keeps them
/// open (docs/architecture.md, "Restarts and upgrades"). A no-op without `NOTIFY_SOCKET`.
/// Returns whether any listener was stored.
pub fn store_in_service_manager(listeners: &[Listener]) -> bool {
    let Ok(path) = std::env::var("NOTIFY_SOCKET") else {
        return false;
    };
    let Ok(sock) = std::os::unix::net::UnixDatagram::unbound() else {
        return false;
    };
    let addr = if let Some(name) = path.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
    } else {
        std::os::unix::net::SocketAddr::from_pathname(&path)
    };
    let Ok(addr) = addr else { return false };
    if sock.connect_addr(&addr).is_err() {
        tracing::warn!(socket = %path, "cannot reach the service manager to store listeners");
        return false;
    }
    let mut stored = false;
    for l in listeners {
        let msg = format!("FDSTORE=1\nFDNAME={}", fd_name(l.kind, l.addr));
        let fds = [std::os::fd::AsRawFd::as_raw_fd(&l.fd)];
        let iov = [std::io::IoSlice::new(msg.as_bytes())];
        let cmsg = [nix::sys::socket::ControlMessage::ScmRights(&fds)];
        if let Err(e) = nix::sys::socket::sendmsg::<()>(
            std::os::fd::AsRawFd::as_raw_fd(&sock),
            &iov,
            &cmsg,
            nix::sys::socket::MsgFlags::empty(),
            None,
        ) {
            tracing::warn!(error = %e, listener = %fd_name(l.kind, l.addr), "cannot store a listener in the service manager");
        } else {
            stored = true;
        }
    }
    stored
}
