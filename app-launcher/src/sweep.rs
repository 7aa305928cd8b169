//! Per-app uids: which ids the launcher accepts, and the sweep that ends every process of
//! an app, those that left the instance's session and process group included.
//!
//! Every app runs under a uid of its own, so "every process of the app" is "every process
//! of that uid". A short-lived child takes the uid (all three of real, effective and saved,
//! which also clears its capabilities) and calls `kill(-1, SIGKILL)`: the kernel delivers
//! it to every process that uid may signal, which is exactly the app's. The processes it
//! kills that were orphaned came to the launcher (a child subreaper) and are reaped by the
//! reaping loop like any orphan; instance bookkeeping keys on the pids it spawned only.

use tako_ipc::{AppIds, ExitStatus};

use crate::reaper::Reaper;

/// Why an app's ids, or a sweep, were refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum IdError {
    #[error("app '{app}' has no uid range to check its uid {uid} against: the master sent none; refusing to run it")]
    NoRange { app: String, uid: u32 },
    #[error("app '{app}' would run as uid {uid} gid {gid}, outside the app uid range {first}-{last}; refusing to run it")]
    OutsideRange {
        app: String,
        uid: u32,
        gid: u32,
        first: u32,
        last: u32,
    },
    #[error("app '{app}' would carry group 0 (root); refusing to run it")]
    RootGroup { app: String },
    #[error("the launcher does not run as root: it cannot switch an app to uid {uid}")]
    NotRoot { uid: u32 },
    #[error("cannot start the sweep of uid {uid}: {source}")]
    Fork { uid: u32, source: std::io::Error },
    #[error("the sweep of uid {uid} failed: {reason}")]
    Sweeper { uid: u32, reason: &'static str },
}

/// The ids the launcher accepts for apps: `first..=last`, never 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub first: u32,
    pub last: u32,
}

impl Range {
    fn contains(&self, id: u32) -> bool {
        id != 0 && (self.first..=self.last).contains(&id)
    }
}

/// Defense in depth: whatever the master sends, no app runs as root or as a uid (or gid)
/// outside the configured range.
pub fn check_ids(app: &str, ids: &AppIds, range: Option<Range>) -> Result<(), IdError> {
    let Some(r) = range else {
        return Err(IdError::NoRange {
            app: app.to_string(),
            uid: ids.uid,
        });
    };
    if !r.contains(ids.uid) || !r.contains(ids.gid) {
        return Err(IdError::OutsideRange {
            app: app.to_string(),
            uid: ids.uid,
            gid: ids.gid,
            first: r.first,
            last: r.last,
        });
    }
    if ids.groups.contains(&0) {
        return Err(IdError::RootGroup {
            app: app.to_string(),
        });
    }
    Ok(())
}

/// Exit codes of the sweeper child.
const SWEPT: i32 = 0;
const SETUID_FAILED: i32 = 10;
const STILL_PRIVILEGED: i32 = 11;

/// Sends SIGKILL to every process of `uid` and returns once that is done (the processes
/// die and are reaped moments later). The caller has checked `uid` against the range.
pub fn sweep_uid(reaper: &Reaper, uid: u32) -> Result<(), IdError> {
    if uid == 0 {
        // kill(-1) as root would end every process on the host.
        return Err(IdError::Sweeper {
            uid,
            reason: "uid 0 is never swept",
        });
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(IdError::NotRoot { uid });
    }
    let status = reaper
        .run_short_child(|| sweeper(uid))
        .map_err(|source| IdError::Fork { uid, source })?;
    match status {
        ExitStatus::Code(SWEPT) => Ok(()),
        ExitStatus::Code(SETUID_FAILED) => Err(IdError::Sweeper {
            uid,
            reason: "the sweeper could not take the uid",
        }),
        ExitStatus::Code(STILL_PRIVILEGED) => Err(IdError::Sweeper {
            uid,
            reason: "the sweeper kept a privilege after taking the uid",
        }),
        _ => Err(IdError::Sweeper {
            uid,
            reason: "the sweeper ended abnormally",
        }),
    }
}

/// The sweeper child: async-signal-safe syscalls only (it runs after a fork of a threaded
/// process). It never signals anything unless it is exactly `uid` with no capability left.
fn sweeper(uid: u32) -> i32 {
    // SAFETY: plain syscalls on this process's own credentials and a capget into a local.
    unsafe {
        if libc::setgroups(0, std::ptr::null()) != 0
            || libc::setresgid(uid, uid, uid) != 0
            || libc::setresuid(uid, uid, uid) != 0
        {
            return SETUID_FAILED;
        }
        let (mut r, mut e, mut s) = (0, 0, 0);
        if libc::getresuid(&mut r, &mut e, &mut s) != 0 || r != uid || e != uid || s != uid {
            return SETUID_FAILED;
        }
        // Leaving uid 0 for a non-zero uid clears the capabilities; if a securebit kept
        // them, CAP_KILL would let kill(-1) reach every process on the host.
        let mut header = CapHeader {
            version: LINUX_CAPABILITY_VERSION_3,
            pid: 0,
        };
        let mut data = [CapData::default(); 2];
        if libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) != 0
            || data.iter().any(|d| d.effective != 0 || d.permitted != 0)
        {
            return STILL_PRIVILEGED;
        }
        // One pass reaches every process: the kernel walks the process list under a lock
        // that fork also takes, and a fork under way is abandoned once its parent has a
        // pending SIGKILL. The second pass is a cheap guard.
        for _ in 0..2 {
            libc::kill(-1, libc::SIGKILL);
        }
    }
    SWEPT
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use tako_ipc::AppLimits;

    fn ids(uid: u32, gid: u32, groups: Vec<u32>) -> AppIds {
        AppIds {
            uid,
            gid,
            groups,
            limits: AppLimits {
                nproc: 10,
                nofile: 10,
            },
        }
    }

    #[test]
    fn ids_outside_the_range_or_root_are_refused() {
        let r = Some(Range {
            first: 61184,
            last: 65519,
        });
        assert!(check_ids("a", &ids(61184, 61184, vec![999]), r).is_ok());
        assert!(check_ids("a", &ids(61184, 61184, vec![999]), None).is_err());
        assert!(check_ids("a", &ids(0, 61184, vec![]), r).is_err());
        assert!(check_ids("a", &ids(61184, 0, vec![]), r).is_err());
        assert!(check_ids("a", &ids(1000, 1000, vec![]), r).is_err());
        assert!(check_ids("a", &ids(61184, 61184, vec![0]), r).is_err());
        let zero = Some(Range { first: 0, last: 10 });
        assert!(check_ids("a", &ids(0, 0, vec![]), zero).is_err());
        assert!(sweep_uid(&Reaper::default(), 0).is_err());
    }
}
