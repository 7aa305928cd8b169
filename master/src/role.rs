//! The child side of re-execution: `tako-server __role <worker|launcher> …` with the IPC
//! socket on fd 3. Privileges are shed here, before any thread exists and before the role
//! reads a byte from anyone.

use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;

use nix::sys::signal::{signal, SigHandler, Signal};
use nix::sys::stat::{fstat, SFlag};
use tako_ipc::{privilege, CHILD_IPC_FD};

/// Hidden first argument that selects a child role.
pub const ROLE_ARG: &str = "__role";

pub enum ChildRole {
    Worker {
        index: u32,
        generation: u32,
        master_pid: i32,
        drop_to: Option<(u32, u32)>,
    },
    Launcher {
        generation: u32,
        master_pid: i32,
        restrict: bool,
    },
}

impl ChildRole {
    pub fn to_args(&self) -> Vec<String> {
        match self {
            ChildRole::Worker {
                index,
                generation,
                master_pid,
                drop_to,
            } => {
                let mut v = vec![
                    ROLE_ARG.into(),
                    "worker".into(),
                    index.to_string(),
                    generation.to_string(),
                    master_pid.to_string(),
                ];
                if let Some((uid, gid)) = drop_to {
                    v.push(uid.to_string());
                    v.push(gid.to_string());
                }
                v
            }
            ChildRole::Launcher {
                generation,
                master_pid,
                restrict,
            } => vec![
                ROLE_ARG.into(),
                "launcher".into(),
                generation.to_string(),
                master_pid.to_string(),
                if *restrict {
                    "restrict".into()
                } else {
                    "keep".into()
                },
            ],
        }
    }

    fn parse(args: &[String]) -> Option<ChildRole> {
        let num = |i: usize| args.get(i).and_then(|s| s.parse::<u64>().ok());
        match args.first().map(String::as_str) {
            Some("worker") => {
                let drop_to = match (num(4), num(5)) {
                    (Some(u), Some(g)) => Some((u32::try_from(u).ok()?, u32::try_from(g).ok()?)),
                    _ => None,
                };
                Some(ChildRole::Worker {
                    index: u32::try_from(num(1)?).ok()?,
                    generation: u32::try_from(num(2)?).ok()?,
                    master_pid: i32::try_from(num(3)?).ok()?,
                    drop_to,
                })
            }
            Some("launcher") => Some(ChildRole::Launcher {
                generation: u32::try_from(num(1)?).ok()?,
                master_pid: i32::try_from(num(2)?).ok()?,
                restrict: args.get(3).map(String::as_str) == Some("restrict"),
            }),
            _ => None,
        }
    }
}

fn ipc_socket() -> Option<UnixStream> {
    let st = fstat(CHILD_IPC_FD).ok()?;
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFSOCK {
        return None;
    }
    // SAFETY: fd 3 was checked to be an open socket; the master put it there for us alone.
    let fd = unsafe { OwnedFd::from_raw_fd(CHILD_IPC_FD) };
    nix::fcntl::fcntl(
        CHILD_IPC_FD,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .ok()?;
    Some(UnixStream::from(fd))
}

/// Runs a child role and returns its exit code.
pub fn run_child(args: &[String]) -> i32 {
    let Some(role) = ChildRole::parse(args) else {
        eprintln!("tako-server: internal role arguments are invalid");
        return 2;
    };
    let Some(ipc) = ipc_socket() else {
        eprintln!("tako-server: this role is started by the tako-server master only (no IPC socket on fd {CHILD_IPC_FD})");
        return 2;
    };
    let master_pid = match &role {
        ChildRole::Worker { master_pid, .. } | ChildRole::Launcher { master_pid, .. } => {
            *master_pid
        }
    };
    // SAFETY: no threads exist yet; SIG_IGN installs no handler code.
    unsafe {
        let _ = signal(Signal::SIGINT, SigHandler::SigIgn);
        let _ = signal(Signal::SIGHUP, SigHandler::SigIgn);
        let _ = signal(Signal::SIGPIPE, SigHandler::SigIgn);
    }
    if let Err(e) = privilege::die_with_parent(master_pid) {
        eprintln!("tako-server: {e}");
        return 1;
    }
    match role {
        ChildRole::Worker {
            index,
            generation,
            drop_to,
            ..
        } => {
            crate::logging::init(format!(
                "role=worker worker={index} generation={generation}"
            ));
            if let Some((uid, gid)) = drop_to {
                if let Err(e) = privilege::drop_to_unprivileged(uid, gid) {
                    tracing::error!(error = %e, "cannot drop privileges; refusing to serve");
                    return 1;
                }
            }
            tako_proxy_worker::run(ipc)
        }
        ChildRole::Launcher { restrict, .. } => {
            crate::logging::init("role=launcher".into());
            if restrict {
                // First, while CAP_SETPCAP is still held: apps and install steps inherit
                // the empty bounding set (issue 17, item 7).
                if let Err(e) = tako_app_launcher::empty_bounding_set() {
                    tracing::error!(error = %e, "cannot empty the capability bounding set; refusing to launch apps");
                    return 1;
                }
                if let Err(e) = privilege::restrict_to_launcher_caps() {
                    tracing::error!(error = %e, "cannot restrict capabilities; refusing to launch apps");
                    return 1;
                }
            }
            tako_app_launcher::run(ipc)
        }
    }
}
