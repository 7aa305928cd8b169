//! Starting a child role: re-execute our own binary with the hidden role argument and the
//! IPC socket on fd 3.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::process::Stdio;

use tako_ipc::CHILD_IPC_FD;

use crate::role::ChildRole;

pub struct Spawned {
    pub child: tokio::process::Child,
    pub pid: u32,
    pub ipc: tokio::net::UnixStream,
}

pub fn spawn_role(role: &ChildRole) -> io::Result<Spawned> {
    let (ours, theirs) = StdUnixStream::pair()?;
    let their_fd = theirs.as_raw_fd();
    let mut cmd = tokio::process::Command::new("/proc/self/exe");
    cmd.arg0("tako-server")
        .args(role.to_args())
        .stdin(Stdio::null())
        .kill_on_drop(false);
    crate::child_env::scrub(&mut cmd);
    // SAFETY: only async-signal-safe calls (dup2, fcntl) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if their_fd == CHILD_IPC_FD {
                let flags = libc::fcntl(their_fd, libc::F_GETFD);
                if flags < 0 || libc::fcntl(their_fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0
                {
                    return Err(io::Error::last_os_error());
                }
            } else if libc::dup2(their_fd, CHILD_IPC_FD) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    drop(theirs);
    let pid = child.id().unwrap_or(0);
    ours.set_nonblocking(true)?;
    let ipc = tokio::net::UnixStream::from_std(ours)?;
    Ok(Spawned { child, pid, ipc })
}

/// Delay before restarting a child that died: immediate for the first crash, then 250 ms
/// doubling up to 30 s while it keeps dying soon after start.
pub fn restart_delay(consecutive_failures: u32) -> std::time::Duration {
    use std::time::Duration;
    crate::backoff::after_failures(
        consecutive_failures,
        Duration::from_millis(250),
        Duration::from_secs(30),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(restart_delay(1).as_millis(), 0);
        assert_eq!(restart_delay(2).as_millis(), 250);
        assert_eq!(restart_delay(3).as_millis(), 500);
        assert_eq!(restart_delay(50).as_millis(), 30_000);
    }
}
