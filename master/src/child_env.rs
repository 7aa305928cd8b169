//! What the master's children inherit from it: the environment they are started with, and
//! the descriptors the master itself holds from its own start.
//!
//! The workers and the launcher run code that parses untrusted bytes (requests, app output),
//! so they get only what they need. Above all not `NOTIFY_SOCKET`: with it, a compromised
//! child could send `MAINPID=`, `FDSTOREREMOVE=1` or `STOPPING=1` to systemd in the name of
//! the service. The unit's `NotifyAccess=main` refuses those from any pid but the master's;
//! not handing the socket out keeps that true without systemd too. Apps already get an
//! environment built from scratch by the launcher.

use std::os::fd::RawFd;

/// Variables a child role reads: the log filter (`logging::init` reads `RUST_LOG` in every
/// role) and the backtrace switch a crash report needs. Nothing else of the master's
/// environment is read by a worker or the launcher: the app environment is built by the
/// master and sent over IPC.
pub const KEPT_VARS: &[&str] = &["RUST_LOG", "RUST_BACKTRACE"];

/// Gives `cmd` an environment of only [`KEPT_VARS`], with the values the master has.
pub fn scrub(cmd: &mut tokio::process::Command) {
    cmd.env_clear();
    for name in KEPT_VARS {
        if let Some(value) = std::env::var_os(name) {
            cmd.env(name, value);
        }
    }
}

/// Closes every descriptor above stderr that is still inheritable (no `FD_CLOEXEC`) and
/// returns their numbers. Called at the master's start after it adopted what it was given
/// (the service manager's `LISTEN_FDS`, a predecessor's lock and ready pipe): those are
/// `FD_CLOEXEC` by then, so anything still inheritable is a descriptor nobody meant to hand
/// us, and would otherwise leak into every worker, launcher and app. Must run before any
/// other thread exists and before the master opens anything inheritable itself.
pub fn close_stray_descriptors() -> Vec<RawFd> {
    let mut closed = Vec::new();
    for fd in open_descriptors() {
        if fd <= 2 {
            continue;
        }
        // SAFETY: F_GETFD reads the flags of a descriptor number; a stale number gives EBADF.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        if flags < 0 || flags & libc::FD_CLOEXEC != 0 {
            continue;
        }
        // SAFETY: no Rust object owns this descriptor: everything the master opened or
        // adopted so far is close-on-exec, and no other thread exists yet.
        if unsafe { libc::close(fd) } == 0 {
            closed.push(fd);
        }
    }
    closed
}

/// The numbers of the open descriptors, from `/proc/self/fd`. The directory handle used for
/// the listing is closed before returning, so it is never mistaken for a stray one; it is
/// close-on-exec anyway.
fn open_descriptors() -> Vec<RawFd> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    let fds: Vec<RawFd> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    fds
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_log_switches_are_kept() {
        let mut cmd = tokio::process::Command::new("/bin/true");
        scrub(&mut cmd);
        let set: Vec<String> = cmd
            .as_std()
            .get_envs()
            .filter_map(|(k, v)| v.map(|_| k.to_string_lossy().into_owned()))
            .collect();
        assert!(
            set.iter().all(|k| KEPT_VARS.contains(&k.as_str())),
            "{set:?}"
        );
        assert!(!set.iter().any(|k| k == "NOTIFY_SOCKET"));
    }
}
