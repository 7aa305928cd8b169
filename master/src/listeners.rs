//! Binding the HTTP and HTTPS listeners (cli.md §5 step 7). The master binds once and keeps
//! the sockets for its whole life; every worker generation gets duplicates of the same FDs.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::OwnedFd;

use nix::errno::Errno;
use nix::sys::socket::{
    bind, listen, setsockopt, socket, sockopt, AddressFamily, Backlog, SockFlag, SockType, SockaddrStorage,
};
use tako_ipc::ListenerKind;

pub struct Listener {
    pub kind: ListenerKind,
    pub addr: SocketAddr,
    pub fd: OwnedFd,
}

#[derive(Debug, thiserror::Error)]
#[error("Cannot bind {kind} listener on {addr}: {source}")]
pub struct BindError {
    kind: &'static str,
    addr: SocketAddr,
    source: Errno,
}

fn bind_one(addr: SocketAddr) -> Result<OwnedFd, Errno> {
    let family = if addr.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
    let fd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    setsockopt(&fd, sockopt::ReusePort, &true)?;
    if addr.is_ipv6() {
        setsockopt(&fd, sockopt::Ipv6V6Only, &true)?;
    }
    bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrStorage::from(addr))?;
    listen(&fd, Backlog::new(4096).unwrap_or(Backlog::MAXCONN))?;
    Ok(fd)
}

/// Binds one HTTP and one HTTPS listener per address. Without `--listen`, a host without
/// IPv6 skips the `::` listeners with a warning.
pub fn bind_all(addrs: &[IpAddr], listen_given: bool, http: u16, https: u16) -> Result<Vec<Listener>, BindError> {
    let mut out = Vec::new();
    for ip in addrs {
        for (kind, port, label) in [(ListenerKind::Http, http, "HTTP"), (ListenerKind::Https, https, "HTTPS")] {
            let addr = SocketAddr::new(*ip, port);
            match bind_one(addr) {
                Ok(fd) => out.push(Listener { kind, addr, fd }),
                Err(e) if ip.is_ipv6() && !listen_given && matches!(e, Errno::EAFNOSUPPORT | Errno::EADDRNOTAVAIL) => {
                    tracing::warn!(%addr, error = %e, "IPv6 is unavailable; skipping the :: listeners");
                    break;
                }
                Err(source) => return Err(BindError { kind: label, addr, source }),
            }
        }
    }
    Ok(out)
}
