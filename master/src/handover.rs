//! What a re-executed master inherits from its predecessor (docs/architecture.md, "Restarts
//! and upgrades"): the environment names of the inherited descriptors, how this binary was
//! started, and the ready byte. A leaf module: both sides of a hand-over read it.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

/// Set in the successor's environment: which inherited descriptor is the data-dir lock and
/// which one takes the ready byte. Their presence also lets the successor adopt `LISTEN_FDS`
/// without `LISTEN_PID` (a parent cannot know its child's pid before exec).
pub const LOCK_FD_ENV: &str = "TAKO_REEXEC_LOCK_FD";
pub const READY_FD_ENV: &str = "TAKO_REEXEC_READY_FD";

/// The binary and arguments this master was started with, captured at boot.
#[derive(Debug, Clone)]
pub struct SelfExec {
    pub exe: PathBuf,
    pub args: Vec<String>,
}

impl SelfExec {
    pub fn capture() -> SelfExec {
        let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"));
        // After the file was replaced, the link reads "<path> (deleted)": the new binary is
        // at <path>.
        let exe = exe
            .to_str()
            .and_then(|s| s.strip_suffix(" (deleted)"))
            .map(PathBuf::from)
            .unwrap_or(exe);
        SelfExec {
            exe,
            args: std::env::args().skip(1).collect(),
        }
    }
}

/// Inherited descriptors of a successor: `(lock, ready)`, consumed from the environment.
pub fn inherited() -> (Option<OwnedFd>, Option<OwnedFd>) {
    let take = |var: &str| -> Option<OwnedFd> {
        let fd: RawFd = std::env::var(var).ok()?.parse().ok()?;
        // SAFETY: called once at startup before threads; our predecessor put it there.
        unsafe { std::env::remove_var(var) };
        if fd < 3 {
            return None;
        }
        let _ = nix::fcntl::fcntl(
            fd,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        );
        // SAFETY: the predecessor passed this descriptor to us for this purpose.
        Some(unsafe { OwnedFd::from_raw_fd(fd) })
    };
    (take(LOCK_FD_ENV), take(READY_FD_ENV))
}

/// Reports ready to the predecessor.
pub fn report_ready(fd: OwnedFd) {
    use std::io::Write;
    let mut f = std::fs::File::from(fd);
    let _ = f.write_all(b"1");
}
