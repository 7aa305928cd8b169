//! What the master asks of the host at startup: a higher open-file limit, a warning about
//! `tcp_migrate_req`, and the ready notification to systemd.

pub(super) fn raise_nofile_limit() {
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
pub(super) fn warn_tcp_migrate_req() {
    if let Ok(v) = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req") {
        if v.trim() == "0" {
            tracing::warn!("net.ipv4.tcp_migrate_req is 0: connections queued on a closing listener may be reset during upgrades");
        }
    }
}

/// Tells systemd we are ready, when it asked (`NOTIFY_SOCKET`).
pub(super) fn notify_ready() {
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
