//! Starting a process the way instances and installs run (docs/apps.md, "Environment"): argv
//! without a shell, exactly the given environment, stdin `/dev/null`, stdout and stderr piped,
//! its own session and process group, the app's own uid and gid (or the app user with the
//! user's groups), the app's resource limits, an empty capability bounding set, no_new_privs
//! and umask 0022.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use tako_ipc::{AppIds, ExitStatus, RunAs};
use tokio::sync::oneshot;

use crate::reaper::Reaper;

/// `PATH` when the environment has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Signals whose disposition the launcher changed: an ignored signal stays ignored across
/// exec, and an app must start with the defaults.
const RESET_SIGNALS: [libc::c_int; 6] = [
    libc::SIGHUP,
    libc::SIGINT,
    libc::SIGPIPE,
    libc::SIGTERM,
    libc::SIGQUIT,
    libc::SIGCHLD,
];

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The os error text alone: the master prefixes it (`Failed to spawn instance: ...`).
    #[error("{0}")]
    Os(#[from] io::Error),
    #[error("the command is empty")]
    EmptyArgv,
    #[error("the working directory contains a NUL byte")]
    BadCwd,
    #[error("cannot read the groups of user '{name}': {source}")]
    Groups { name: String, source: nix::Error },
}

/// What to run.
pub struct ProcessSpec<'a> {
    pub argv: &'a [String],
    pub env: &'a [(String, String)],
    pub cwd: &'a str,
    /// The app's own ids; they win over `run_as`.
    pub ids: Option<&'a AppIds>,
    /// The shared app user, when the app has no ids of its own.
    pub run_as: Option<&'a RunAs>,
}

/// A started process: its pid (also its process group id), its output pipes and its exit.
pub struct Spawned {
    pub pid: i32,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    pub exit: oneshot::Receiver<ExitStatus>,
}

struct Ids {
    uid: libc::uid_t,
    gid: libc::gid_t,
    groups: Vec<libc::gid_t>,
}

/// Everything the child does between fork and exec, prepared before the fork: after it only
/// async-signal-safe calls are allowed.
struct ChildSetup {
    ids: Option<Ids>,
    /// `(resource, limit)` pairs, set as soft and hard limit before the user switch.
    rlimits: Vec<(libc::__rlimit_resource_t, libc::rlim_t)>,
    cwd: CString,
    launcher_pid: libc::pid_t,
}

pub fn spawn(spec: &ProcessSpec<'_>, reaper: &Reaper) -> Result<Spawned, SpawnError> {
    let arg0 = spec.argv.first().ok_or(SpawnError::EmptyArgv)?;
    let ids = match (spec.ids, spec.run_as) {
        (Some(app), _) => Some(app_ids(app)),
        (None, Some(user)) => Some(user_ids(user)?),
        (None, None) => None,
    };
    let program = resolve_program_for(arg0, spec.env, ids.as_ref())?;
    let setup = ChildSetup {
        ids,
        rlimits: spec.ids.map(|i| rlimits(&i.limits)).unwrap_or_default(),
        cwd: CString::new(spec.cwd).map_err(|_| SpawnError::BadCwd)?,
        launcher_pid: std::process::id() as libc::pid_t,
    };
    let mut cmd = Command::new(program);
    cmd.arg0(arg0)
        .args(&spec.argv[1..])
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: child_setup only makes async-signal-safe syscalls on data prepared before fork.
    unsafe {
        cmd.pre_exec(move || child_setup(&setup));
    }
    let (mut child, exit) = reaper.spawn(&mut cmd)?;
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        // Cannot happen with piped stdio; never leave a process we cannot watch.
        crate::signal::signal_group(child.id() as i32, nix::sys::signal::Signal::SIGKILL);
        return Err(SpawnError::Os(io::Error::other("output pipes missing")));
    };
    Ok(Spawned {
        pid: child.id() as i32,
        stdout: stdout.into(),
        stderr: stderr.into(),
        exit,
    })
}

/// The app's own uid and gid, its gid again and the extra groups as supplementary groups.
fn app_ids(app: &AppIds) -> Ids {
    let mut groups = vec![app.gid];
    for g in &app.groups {
        if !groups.contains(g) {
            groups.push(*g);
        }
    }
    Ids {
        uid: app.uid,
        gid: app.gid,
        groups,
    }
}

/// The app's limits, each lowered to what the launcher itself may hold: without
/// CAP_SYS_RESOURCE a hard limit can only go down, and a spawn must not fail over it.
fn rlimits(limits: &tako_ipc::AppLimits) -> Vec<(libc::__rlimit_resource_t, libc::rlim_t)> {
    [
        (libc::RLIMIT_NPROC, limits.nproc),
        (libc::RLIMIT_NOFILE, limits.nofile),
    ]
    .into_iter()
    .map(|(res, want)| {
        let mut now = libc::rlimit {
            rlim_cur: 0,
            rlim_max: libc::RLIM_INFINITY,
        };
        // SAFETY: getrlimit writes into `now`, which outlives the call.
        let hard = if unsafe { libc::getrlimit(res, &mut now) } == 0 {
            now.rlim_max
        } else {
            libc::RLIM_INFINITY
        };
        (res, (want as libc::rlim_t).min(hard))
    })
    .collect()
}

fn user_ids(user: &RunAs) -> Result<Ids, SpawnError> {
    let name = CString::new(user.name.as_str()).map_err(|_| SpawnError::Groups {
        name: user.name.clone(),
        source: nix::Error::EINVAL,
    })?;
    let groups = nix::unistd::getgrouplist(&name, nix::unistd::Gid::from_raw(user.gid)).map_err(
        |source| SpawnError::Groups {
            name: user.name.clone(),
            source,
        },
    )?;
    Ok(Ids {
        uid: user.uid,
        gid: user.gid,
        groups: groups.into_iter().map(|g| g.as_raw()).collect(),
    })
}

/// `argv[0]` as given when it has a `/`, else the first executable file of that name in the
/// environment's `PATH`.
#[cfg(test)]
fn resolve_program(arg0: &str, env: &[(String, String)]) -> io::Result<PathBuf> {
    resolve_program_for(arg0, env, None)
}

/// [`resolve_program`] as the user the process will run as: a PATH entry that user cannot
/// reach (say, a shim under root's home) is skipped, as execvp would do for that user.
fn resolve_program_for(
    arg0: &str,
    env: &[(String, String)],
    ids: Option<&Ids>,
) -> io::Result<PathBuf> {
    if arg0.contains('/') {
        return Ok(PathBuf::from(arg0));
    }
    if arg0.is_empty() {
        return Err(io::Error::from_raw_os_error(libc::ENOENT));
    }
    let path = env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_str())
        .unwrap_or(DEFAULT_PATH);
    path.split(':')
        .filter(|dir| !dir.is_empty())
        .map(|dir| Path::new(dir).join(OsStr::from_bytes(arg0.as_bytes())))
        .find(|candidate| {
            is_executable_file(candidate) && ids.is_none_or(|ids| user_may_exec(candidate, ids))
        })
        .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))
}

/// Whether `ids` may search every directory on the way to `path` and execute it. Symlinks
/// are followed as exec would follow them.
fn user_may_exec(path: &Path, ids: &Ids) -> bool {
    let allowed = |md: &std::fs::Metadata, bit: u32| {
        use std::os::unix::fs::MetadataExt;
        let mode = md.mode();
        if md.uid() == ids.uid {
            mode & (bit << 6) != 0
        } else if md.gid() == ids.gid || ids.groups.contains(&md.gid()) {
            mode & (bit << 3) != 0
        } else {
            mode & bit != 0
        }
    };
    let Ok(real) = std::fs::canonicalize(path) else {
        return false;
    };
    let dirs_ok = real
        .ancestors()
        .skip(1)
        .all(|dir| std::fs::metadata(dir).is_ok_and(|md| allowed(&md, 0o1)));
    dirs_ok
        && std::fs::metadata(path).is_ok_and(|md| allowed(&md, 0o1))
        // The caller's original path may pass through symlinked directories too.
        && path.ancestors().skip(1).all(|dir| std::fs::metadata(dir).is_ok_and(|md| allowed(&md, 0o1)))
}

fn is_executable_file(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn child_setup(s: &ChildSetup) -> io::Result<()> {
    // SAFETY: each call is an async-signal-safe syscall wrapper on memory owned by `s`.
    unsafe {
        check(libc::setsid())?;
        for sig in RESET_SIGNALS {
            libc::signal(sig, libc::SIG_DFL);
        }
        if let Some(ids) = &s.ids {
            // Started by root for another user: the bounding set must be empty. The
            // launcher emptied its own at start, so this normally finds nothing; a
            // capability still there is dropped, or the spawn fails rather than start an
            // app that keeps it.
            empty_bounding_set()?;
            for &(res, limit) in &s.rlimits {
                let lim = libc::rlimit {
                    rlim_cur: limit,
                    rlim_max: limit,
                };
                check(libc::setrlimit(res, &lim))?;
            }
            check(libc::setgroups(ids.groups.len(), ids.groups.as_ptr()))?;
            check(libc::setresgid(ids.gid, ids.gid, ids.gid))?;
            check(libc::setresuid(ids.uid, ids.uid, ids.uid))?;
        }
        // After the user switch: the app user must be able to enter its directory.
        check(libc::chdir(s.cwd.as_ptr()))?;
        // Instances never outlive the launcher. Set after the credential change, which
        // clears it; the check catches a launcher that died before this line.
        check(libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        ))?;
        if libc::getppid() != s.launcher_pid {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
        check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
        libc::umask(0o022);
        // Descriptors the launcher may have inherited without CLOEXEC never reach the app.
        // Best effort: kernels before 5.11 lack the flag.
        libc::syscall(
            libc::SYS_close_range,
            3 as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        );
    }
    Ok(())
}

/// Drops every capability left in the bounding set. Async-signal-safe: prctl only, so the
/// child may call it between fork and exec.
pub fn empty_bounding_set() -> io::Result<()> {
    for cap in 0..64 as libc::c_ulong {
        // SAFETY: prctl with integer arguments only.
        let held = unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap, 0, 0, 0) };
        if held < 0 {
            // Past the kernel's last capability.
            break;
        }
        if held == 1 {
            // SAFETY: as above. Fails with EPERM without CAP_SETPCAP.
            check(unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_lookup_uses_the_given_path_only() {
        let env = vec![("PATH".to_string(), "/nonexistent:/bin:/usr/bin".to_string())];
        let sh = resolve_program("sh", &env).unwrap();
        assert!(sh.ends_with("sh") && sh.is_absolute());
        let none = vec![("PATH".to_string(), "/nonexistent".to_string())];
        let err = resolve_program("sh", &none).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
        assert_eq!(
            resolve_program("./run.sh", &none).unwrap(),
            PathBuf::from("./run.sh")
        );
    }
}
