//! The worker's sandbox (docs/isolation.md, "Proxy workers"). A worker parses the internet's
//! bytes, so after it has dropped to the proxy user and before it reads its first network byte
//! it confines itself further:
//!
//! - Landlock: files can be opened only for reading, and only beneath `<data-dir>/apps` (the
//!   releases' `public/` directories); TCP connect only to the instance port range; no TCP
//!   bind (the listeners arrive as descriptors); no signal to a process outside its own
//!   domain and no connect to an abstract Unix socket made outside it.
//! - seccomp: an allowlist of the system calls the worker makes. Calls that only an attacker
//!   would make (exec, fork, ptrace, mount, module and key management, …) kill the worker;
//!   any other call not on the list fails with `EPERM`.
//! - rlimits: the open-file limit sized for the connection cap, no core files.
//!
//! The sandbox is per process and is inherited by nothing but the worker's own threads: the
//! master, the launcher and the next generation of workers are not confined by it.
//!
//! The same [`apply`] is what `tako-server sandbox-selftest` runs, so the tests of the
//! sandbox exercise exactly what a worker gets.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use landlock::{
    make_bitflags, Access, AccessFs, AccessNet, CompatLevel, Compatible, NetPort, PathBeneath,
    PathFd, PathFdError, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetError, RulesetStatus,
    Scope, ABI,
};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};
use tako_ipc::{SandboxConfig, SandboxMode};

use crate::limits::MAX_CONNECTIONS;

/// The Landlock ABI this ruleset was written and tested against (the kernel of the CI
/// machines offers 7). Newer kernels are asked for no more than this; older ones give what
/// they have in best-effort mode.
const LANDLOCK_ABI: ABI = ABI::V7;

/// Descriptors beyond two per connection (client and upstream socket): listeners, the IPC
/// socket, epoll and event descriptors, static files being sent, HTTP/2 streams proxied
/// beside their connection's first.
const NOFILE_HEADROOM: u64 = 4096;

/// The open-file limit a worker sets: every connection may hold an upstream socket too.
pub const NOFILE_LIMIT: u64 = 2 * MAX_CONNECTIONS as u64 + NOFILE_HEADROOM;

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(
        "the sandbox must be applied while the worker has one thread, it has {0} \
         (a thread started before the sandbox would escape it)"
    )]
    Threads(usize),
    #[error("cannot build the Landlock ruleset: {0}")]
    Landlock(#[from] RulesetError),
    #[error("cannot open the apps directory '{path}' for the Landlock rule: {source}")]
    AppsDir { path: PathBuf, source: PathFdError },
    #[error("cannot build the seccomp filter: {0}")]
    SeccompBuild(#[from] seccompiler::BackendError),
    #[error("cannot install the seccomp filter: {0}")]
    SeccompInstall(#[from] seccompiler::Error),
    #[error("cannot set the {limit} limit: {source}")]
    Rlimit {
        limit: &'static str,
        source: nix::Error,
    },
    #[error(
        "--sandbox strict: this kernel lacks {0}; the worker refuses to start \
         (run with --sandbox best-effort to start without it)"
    )]
    Missing(String),
}

/// How much of the Landlock ruleset the kernel enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LandlockLevel {
    /// Every rule: filesystem, TCP and scopes.
    Full,
    /// Some of them (an older kernel: filesystem rules without TCP rules, for example).
    Partial,
    /// None: the kernel has no Landlock or it is disabled.
    None,
}

/// What [`apply`] put in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub landlock: LandlockLevel,
    pub seccomp: bool,
    pub nofile: u64,
}

impl Applied {
    /// The parts a best-effort sandbox went without, for the one warning line; empty when
    /// the sandbox is complete.
    pub fn missing(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        match self.landlock {
            LandlockLevel::Full => {}
            LandlockLevel::Partial => {
                v.push("part of Landlock (some filesystem, TCP or scope rules)")
            }
            LandlockLevel::None => v.push("Landlock (no filesystem or TCP rules)"),
        }
        if !self.seccomp {
            v.push("seccomp (no system-call filter)");
        }
        v
    }
}

/// The Landlock ABI that has every right the ruleset handles: filesystem (1-5), TCP (4) and
/// scopes (6).
const LANDLOCK_ABI_COMPLETE: i64 = 6;

/// What this kernel lacks for a complete sandbox, checked without applying anything: the
/// master refuses `--sandbox strict` with this list before it starts a worker.
pub fn kernel_missing() -> Vec<String> {
    let mut missing = Vec::new();
    // SAFETY: landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION) only returns
    // the ABI version (or fails with ENOSYS / EOPNOTSUPP); no memory is read or written.
    let abi = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            1u32,
        )
    };
    if abi < 1 {
        missing.push("Landlock (not built into the kernel or not enabled at boot)".to_string());
    } else if abi < LANDLOCK_ABI_COMPLETE {
        missing.push(format!(
            "Landlock ABI {LANDLOCK_ABI_COMPLETE} (the kernel offers ABI {abi}: no TCP rules below 4, no scopes below 6)"
        ));
    }
    if ARCH.is_none() {
        missing.push("a seccomp syscall table for this architecture".to_string());
    } else if !seccomp_available() {
        missing.push("seccomp (not built into the kernel)".to_string());
    }
    missing
}

/// The instance port range a worker may connect to.
pub fn instance_ports(config: &SandboxConfig) -> RangeInclusive<u16> {
    let (first, last) = config.instance_ports;
    first..=last
}

/// Confines the calling process as [`SandboxConfig`] says and reports what the kernel
/// enforces. Must run while the process has a single thread: Landlock and seccomp bind the
/// calling thread and the threads it starts later, not threads that already exist.
///
/// `Off` does nothing. `BestEffort` applies what the kernel offers. `Strict` fails when any
/// part is missing; the process is then partly confined and must exit.
pub fn apply(config: &SandboxConfig) -> Result<Option<Applied>, SandboxError> {
    if config.mode == SandboxMode::Off {
        return Ok(None);
    }
    let threads = thread_count();
    if threads > 1 {
        return Err(SandboxError::Threads(threads));
    }
    let nofile = set_rlimits()?;
    let landlock = apply_landlock(Path::new(&config.apps_dir), instance_ports(config))?;
    // Last: the filter forbids what the steps above needed (prctl, the Landlock calls).
    let seccomp = apply_seccomp()?;
    let applied = Applied {
        landlock,
        seccomp,
        nofile,
    };
    if config.mode == SandboxMode::Strict {
        let missing = applied.missing();
        if !missing.is_empty() {
            return Err(SandboxError::Missing(missing.join(" and ")));
        }
    }
    Ok(Some(applied))
}

/// The worker's call: [`apply`], logged. Returns false when the worker must not serve
/// (strict mode without a complete sandbox, or a sandbox that failed half way).
pub(crate) fn enter(config: &SandboxConfig) -> bool {
    match apply(config) {
        Ok(None) => {
            tracing::info!("Worker sandbox off (--sandbox off)");
            true
        }
        Ok(Some(applied)) => {
            let missing = applied.missing();
            if missing.is_empty() {
                tracing::info!(
                    landlock = "full",
                    seccomp = true,
                    nofile = applied.nofile,
                    "Worker sandboxed"
                );
            } else {
                // The one line a best-effort worker prints about it.
                tracing::warn!(
                    missing = %missing.join(", "),
                    nofile = applied.nofile,
                    "Worker sandbox incomplete: this kernel lacks {}; serving without it (--sandbox strict refuses to start instead)",
                    missing.join(" and ")
                );
            }
            true
        }
        Err(error) => {
            tracing::error!(%error, "Worker sandbox not applied; refusing to serve");
            false
        }
    }
}

fn thread_count() -> usize {
    // Without /proc the count is unknown; the worker starts no thread before this point.
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(1)
}

fn set_rlimits() -> Result<u64, SandboxError> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    // No core files: a worker holds the private keys of every certificate it serves.
    setrlimit(Resource::RLIMIT_CORE, 0, 0).map_err(|source| SandboxError::Rlimit {
        limit: "core-file size",
        source,
    })?;
    // The hard limit can only go down for an unprivileged process: when the master's limit
    // is already lower, keep it (the connection cap then bites before the limit does).
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(|source| SandboxError::Rlimit {
        limit: "open-file",
        source,
    })?;
    let nofile = NOFILE_LIMIT.min(hard);
    setrlimit(Resource::RLIMIT_NOFILE, nofile, nofile).map_err(|source| SandboxError::Rlimit {
        limit: "open-file",
        source,
    })?;
    // RLIMIT_NPROC is not used for "no new processes": it counts every process and thread of
    // the uid, so 0 would stop the worker's own threads (and those of its sibling workers).
    // The seccomp filter refuses fork, vfork and clone without CLONE_THREAD instead.
    Ok(nofile)
}

fn apply_landlock(
    apps_dir: &Path,
    ports: RangeInclusive<u16>,
) -> Result<LandlockLevel, SandboxError> {
    let abi = LANDLOCK_ABI;
    // Reading files and listing directories, nothing else: no execute, no write, no ioctl on
    // devices opened later.
    let read = make_bitflags!(AccessFs::{ ReadFile | ReadDir });
    let apps = PathFd::new(apps_dir).map_err(|source| SandboxError::AppsDir {
        path: apps_dir.to_path_buf(),
        source,
    })?;
    // Nothing else on the filesystem is opened after this point: certificates and keys come
    // over IPC as PEM text, randomness from the getrandom system call (ring), the time from
    // the vDSO and logs go to the inherited stderr. No rule for /proc, /etc or /dev.
    let status = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(abi))?
        // BindTcp is handled with no rule: binding any TCP port is refused.
        .handle_access(AccessNet::from_all(abi))?
        .scope(Scope::from_all(abi))?
        .create()?
        .add_rule(PathBeneath::new(apps, read))?
        .add_rules(
            ports.map(|port| Ok::<_, RulesetError>(NetPort::new(port, AccessNet::ConnectTcp))),
        )?
        .restrict_self()?;
    Ok(match status.ruleset {
        RulesetStatus::FullyEnforced => LandlockLevel::Full,
        RulesetStatus::PartiallyEnforced => LandlockLevel::Partial,
        RulesetStatus::NotEnforced => LandlockLevel::None,
    })
}

#[cfg(target_arch = "x86_64")]
const ARCH: Option<seccompiler::TargetArch> = Some(seccompiler::TargetArch::x86_64);
#[cfg(target_arch = "aarch64")]
const ARCH: Option<seccompiler::TargetArch> = Some(seccompiler::TargetArch::aarch64);
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const ARCH: Option<seccompiler::TargetArch> = None;

/// Installs the three filters. Returns false when the kernel has no seccomp filters (or the
/// architecture has no table here), so best-effort mode can go on without.
fn apply_seccomp() -> Result<bool, SandboxError> {
    let Some(arch) = ARCH else {
        return Ok(false);
    };
    if !seccomp_available() {
        return Ok(false);
    }
    let filters = filters(arch)?;
    for filter in &filters {
        seccompiler::apply_filter(filter)?;
    }
    Ok(true)
}

/// Whether the kernel takes seccomp filters: `PR_GET_SECCOMP` fails with EINVAL without
/// CONFIG_SECCOMP; filter support (CONFIG_SECCOMP_FILTER) is seen when the first filter is
/// installed, and EINVAL from that is treated the same way by [`apply_seccomp`]'s caller.
fn seccomp_available() -> bool {
    // SAFETY: PR_GET_SECCOMP reads the calling thread's mode and takes no pointers.
    unsafe { libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0) >= 0 }
}

fn cond(
    arg: u8,
    op: SeccompCmpOp,
    value: u64,
) -> Result<SeccompCondition, seccompiler::BackendError> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Qword, op, value)
}

fn dword(
    arg: u8,
    op: SeccompCmpOp,
    value: u64,
) -> Result<SeccompCondition, seccompiler::BackendError> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value)
}

/// The filters, in the order they are installed. The kernel runs every filter for every
/// call and takes the strictest answer (kill before errno before allow), so:
///
/// 1. `clone3` fails with `ENOSYS`: its flags sit in memory a filter cannot read, and the
///    C library then starts threads with `clone`, whose flags the allowlist checks;
/// 2. calls that only an attacker makes kill the whole worker (SIGSYS);
/// 3. the allowlist: listed calls pass, any other fails with `EPERM`.
fn filters(arch: seccompiler::TargetArch) -> Result<Vec<BpfProgram>, SandboxError> {
    let allow = SeccompFilter::new(
        allowlist()?,
        SeccompAction::Errno(libc::EPERM as u32),
        SeccompAction::Allow,
        arch,
    )?;
    let kill = SeccompFilter::new(
        killlist()?,
        SeccompAction::Allow,
        SeccompAction::KillProcess,
        arch,
    )?;
    let clone3 = SeccompFilter::new(
        BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )?;
    // The allowlist goes in last: it refuses prctl and seccomp, which installing a filter
    // calls.
    Ok(vec![
        clone3.try_into()?,
        kill.try_into()?,
        allow.try_into()?,
    ])
}

type Rules = BTreeMap<i64, Vec<SeccompRule>>;

/// The system calls a worker makes once sandboxed, found by tracing workers through the
/// integration tests (HTTP/1, HTTPS, HTTP/2, static files, the cache, WebSockets and other
/// upgrades, SSE, ACME challenge answers, worker restarts and drains). Grouped by why.
fn allowlist() -> Result<Rules, seccompiler::BackendError> {
    let mut rules: Rules = BTreeMap::new();
    let mut any = |calls: &[i64]| {
        for &c in calls {
            rules.insert(c, Vec::new());
        }
    };
    // Memory: the allocator, thread stacks and their guard pages.
    any(&[
        libc::SYS_brk,
        libc::SYS_mmap,
        libc::SYS_munmap,
        libc::SYS_mremap,
        libc::SYS_mprotect,
        libc::SYS_madvise,
    ]);
    // Descriptors: sockets, the IPC socket, static files, epoll and event descriptors.
    any(&[
        libc::SYS_read,
        libc::SYS_write,
        libc::SYS_writev,
        libc::SYS_close,
        libc::SYS_fcntl,
        libc::SYS_lseek,
        libc::SYS_fstat,
        libc::SYS_newfstatat,
        libc::SYS_statx,
        libc::SYS_readlinkat,
        // FIONBIO on accepted and upstream sockets.
        libc::SYS_ioctl,
    ]);
    // Static files below public/: canonicalize (readlink, statx) and open; Landlock decides
    // which paths open.
    any(&[libc::SYS_openat]);
    // Sockets: accepting on the inherited listeners, connecting to instances.
    any(&[
        libc::SYS_accept4,
        libc::SYS_connect,
        libc::SYS_recvfrom,
        libc::SYS_sendto,
        libc::SYS_recvmsg,
        libc::SYS_sendmsg,
        libc::SYS_shutdown,
        libc::SYS_getsockname,
        libc::SYS_getpeername,
        libc::SYS_setsockopt,
        libc::SYS_getsockopt,
    ]);
    // Event loop and timers.
    any(&[
        libc::SYS_epoll_create1,
        libc::SYS_epoll_ctl,
        libc::SYS_epoll_pwait,
        libc::SYS_eventfd2,
        libc::SYS_futex,
        libc::SYS_clock_gettime,
        libc::SYS_sched_yield,
        libc::SYS_sched_getaffinity,
    ]);
    // Threads (tokio's blocking pool for static-file lookups) and their end.
    any(&[
        libc::SYS_set_robust_list,
        libc::SYS_rseq,
        libc::SYS_gettid,
        libc::SYS_getpid,
        libc::SYS_exit,
        libc::SYS_exit_group,
        libc::SYS_rt_sigaction,
        libc::SYS_rt_sigprocmask,
        libc::SYS_rt_sigreturn,
        libc::SYS_sigaltstack,
        libc::SYS_restart_syscall,
        libc::SYS_getrandom,
        // Allowed here and turned into ENOSYS by the third filter.
        libc::SYS_clone3,
    ]);
    #[cfg(target_arch = "x86_64")]
    any(&[libc::SYS_readlink, libc::SYS_epoll_wait]);
    // New threads only: clone with CLONE_THREAD (a thread of this process, under this filter).
    let thread = libc::CLONE_THREAD as u64;
    rules.insert(
        libc::SYS_clone,
        vec![SeccompRule::new(vec![cond(
            0,
            SeccompCmpOp::MaskedEq(thread),
            thread,
        )?])?],
    );
    // TCP sockets only (the upstream connections): no UDP, raw, netlink or Unix sockets. The
    // type may carry SOCK_NONBLOCK and SOCK_CLOEXEC.
    let stream = SeccompCmpOp::MaskedEq(0xf);
    rules.insert(
        libc::SYS_socket,
        vec![
            SeccompRule::new(vec![
                dword(0, SeccompCmpOp::Eq, libc::AF_INET as u64)?,
                dword(1, stream.clone(), libc::SOCK_STREAM as u64)?,
            ])?,
            SeccompRule::new(vec![
                dword(0, SeccompCmpOp::Eq, libc::AF_INET6 as u64)?,
                dword(1, stream, libc::SOCK_STREAM as u64)?,
            ])?,
        ],
    );
    // Signals to this process only (abort on a fatal error raises SIGABRT at itself).
    let pid = u64::from(std::process::id());
    rules.insert(
        libc::SYS_tgkill,
        vec![SeccompRule::new(vec![dword(0, SeccompCmpOp::Eq, pid)?])?],
    );
    // Naming a thread; nothing else of prctl.
    rules.insert(
        libc::SYS_prctl,
        vec![SeccompRule::new(vec![dword(
            0,
            SeccompCmpOp::Eq,
            libc::PR_SET_NAME as u64,
        )?])?],
    );
    Ok(rules)
}

/// Calls with no use in a worker and every use to an attacker: starting programs or
/// processes, reading or changing other processes, the mount table, namespaces, identity,
/// kernel modules and keys, BPF, perf and io_uring (which would run calls past this filter).
fn killlist() -> Result<Rules, seccompiler::BackendError> {
    let mut rules: Rules = BTreeMap::new();
    for call in [
        libc::SYS_execve,
        libc::SYS_execveat,
        libc::SYS_ptrace,
        libc::SYS_process_vm_readv,
        libc::SYS_process_vm_writev,
        libc::SYS_pidfd_getfd,
        libc::SYS_mount,
        libc::SYS_umount2,
        libc::SYS_pivot_root,
        libc::SYS_chroot,
        libc::SYS_unshare,
        libc::SYS_setns,
        libc::SYS_setuid,
        libc::SYS_setgid,
        libc::SYS_setreuid,
        libc::SYS_setregid,
        libc::SYS_setresuid,
        libc::SYS_setresgid,
        libc::SYS_setgroups,
        libc::SYS_capset,
        libc::SYS_init_module,
        libc::SYS_finit_module,
        libc::SYS_delete_module,
        libc::SYS_kexec_load,
        libc::SYS_bpf,
        libc::SYS_perf_event_open,
        libc::SYS_userfaultfd,
        libc::SYS_keyctl,
        libc::SYS_add_key,
        libc::SYS_request_key,
        libc::SYS_io_uring_setup,
        libc::SYS_io_uring_enter,
        libc::SYS_io_uring_register,
        libc::SYS_personality,
    ] {
        rules.insert(call, Vec::new());
    }
    #[cfg(target_arch = "x86_64")]
    for call in [libc::SYS_fork, libc::SYS_vfork, libc::SYS_uselib] {
        rules.insert(call, Vec::new());
    }
    // A new process rather than a thread.
    let thread = libc::CLONE_THREAD as u64;
    rules.insert(
        libc::SYS_clone,
        vec![SeccompRule::new(vec![cond(
            0,
            SeccompCmpOp::MaskedEq(thread),
            0,
        )?])?],
    );
    Ok(rules)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_compile_for_this_machine() {
        let arch = ARCH.expect("an architecture with a syscall table");
        let filters = filters(arch).expect("filters");
        assert_eq!(filters.len(), 3);
        assert!(filters.iter().all(|f| !f.is_empty()));
    }

    #[test]
    fn nothing_is_both_allowed_and_killed_except_clone() {
        let allow = allowlist().expect("allowlist");
        let kill = killlist().expect("killlist");
        let both: Vec<i64> = allow
            .keys()
            .filter(|k| kill.contains_key(k))
            .copied()
            .collect();
        assert_eq!(both, vec![libc::SYS_clone]);
    }

    #[test]
    fn the_file_limit_covers_two_descriptors_per_connection() {
        assert!(NOFILE_LIMIT >= 2 * MAX_CONNECTIONS as u64);
    }
}
