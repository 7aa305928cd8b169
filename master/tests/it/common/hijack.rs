//! Playing a compromised proxy worker: a test takes a copy of a worker's control socket and
//! writes frames to the real master as that worker (needs root or ptrace rights over it).

use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use tako_ipc::CHILD_IPC_FD;

use super::{kill, procfs, wait_for};

/// A copy of the control socket of `pid`, stopped first so it cannot interleave its own
/// frames with ours.
pub fn hijack_control_socket(pid: i32) -> UnixStream {
    assert!(kill(pid, libc::SIGSTOP), "cannot stop worker {pid}");
    wait_for(Duration::from_secs(5), "the worker to stop", || {
        procfs::status(pid).filter(|s| s.state == 'T').map(|_| ())
    });
    // SAFETY: plain syscalls with integer arguments; each result is checked.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    assert!(
        pidfd >= 0,
        "pidfd_open({pid}): {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: the kernel just gave us this descriptor.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as i32) };
    let fd = unsafe {
        libc::syscall(
            libc::SYS_pidfd_getfd,
            std::os::fd::AsRawFd::as_raw_fd(&pidfd),
            CHILD_IPC_FD,
            0,
        )
    };
    assert!(
        fd >= 0,
        "pidfd_getfd({pid}, {CHILD_IPC_FD}) (run the test as root): {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: as above; it is a Unix stream socket (the worker's end of the socketpair).
    let sock = unsafe { UnixStream::from_raw_fd(fd as i32) };
    // The copy shares the worker's open file description, which the worker made
    // non-blocking; blocking writes are simpler here. `resume` restores it.
    sock.set_nonblocking(false).expect("blocking socket");
    sock
}

/// Gives the socket back to a worker in the state it left it, and resumes the worker.
pub fn resume(pid: i32, sock: UnixStream) {
    sock.set_nonblocking(true).expect("non-blocking socket");
    drop(sock);
    assert!(kill(pid, libc::SIGCONT), "cannot resume worker {pid}");
}
