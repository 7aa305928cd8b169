//! Shedding privileges. Each role calls one of these before it touches untrusted input.

use caps::{CapSet, Capability, CapsHashSet};
use nix::unistd::{Gid, Uid, User};

#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("cannot look up user '{name}': {source}")]
    Lookup { name: String, source: nix::Error },
    #[error("cannot {step}: {source}")]
    Sys {
        step: &'static str,
        source: nix::Error,
    },
    #[error("cannot {step}: {source}")]
    Caps {
        step: &'static str,
        source: caps::errors::CapsError,
    },
}

fn sys(step: &'static str) -> impl FnOnce(nix::Error) -> PrivilegeError {
    move |source| PrivilegeError::Sys { step, source }
}

fn capserr(step: &'static str) -> impl FnOnce(caps::errors::CapsError) -> PrivilegeError {
    move |source| PrivilegeError::Caps { step, source }
}

/// A user resolved from the password database.
pub fn lookup_user(name: &str) -> Result<Option<crate::RunAs>, PrivilegeError> {
    let user = User::from_name(name).map_err(|source| PrivilegeError::Lookup {
        name: name.to_string(),
        source,
    })?;
    Ok(user.map(|u| crate::RunAs {
        name: u.name,
        uid: u.uid.as_raw(),
        gid: u.gid.as_raw(),
        home: u.dir.to_string_lossy().into_owned(),
    }))
}

/// Ask the kernel to send SIGTERM when the parent dies, and exit at once if it already has.
pub fn die_with_parent(expected_parent: i32) -> Result<(), PrivilegeError> {
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)
        .map_err(sys("set the parent-death signal"))?;
    // The parent may have died between fork and prctl: then we were re-parented already.
    if nix::unistd::getppid().as_raw() != expected_parent {
        std::process::exit(1);
    }
    Ok(())
}

pub fn set_no_new_privs() -> Result<(), PrivilegeError> {
    nix::sys::prctl::set_no_new_privs().map_err(sys("set no_new_privs"))
}

fn drop_bounding_except(keep: &CapsHashSet) -> Result<(), PrivilegeError> {
    for cap in caps::all() {
        if keep.contains(&cap) {
            continue;
        }
        // A capability unknown to the running kernel cannot be dropped and is not held.
        if caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false) {
            caps::drop(None, CapSet::Bounding, cap)
                .map_err(capserr("drop a capability from the bounding set"))?;
        }
    }
    Ok(())
}

/// The proxy worker's drop: to `uid`/`gid` with no supplementary groups, every capability
/// set empty (bounding and ambient included), and no_new_privs. Called as root only.
pub fn drop_to_unprivileged(uid: u32, gid: u32) -> Result<(), PrivilegeError> {
    set_no_new_privs()?;
    caps::clear(None, CapSet::Ambient).map_err(capserr("clear the ambient capabilities"))?;
    // The bounding set can only shrink while CAP_SETPCAP is still held: before setuid.
    drop_bounding_except(&CapsHashSet::new())?;
    nix::unistd::setgroups(&[]).map_err(sys("clear supplementary groups"))?;
    let (g, u) = (Gid::from_raw(gid), Uid::from_raw(uid));
    nix::unistd::setresgid(g, g, g).map_err(sys("switch group"))?;
    nix::unistd::setresuid(u, u, u).map_err(sys("switch user"))?;
    for set in [CapSet::Effective, CapSet::Permitted, CapSet::Inheritable] {
        caps::clear(None, set).map_err(capserr("clear capabilities"))?;
    }
    Ok(())
}

/// The launcher's drop: stay uid 0 but keep only what switching users and signalling
/// instances needs.
pub fn restrict_to_launcher_caps() -> Result<(), PrivilegeError> {
    let keep: CapsHashSet = [
        Capability::CAP_SETUID,
        Capability::CAP_SETGID,
        Capability::CAP_KILL,
    ]
    .into_iter()
    .collect();
    set_no_new_privs()?;
    caps::clear(None, CapSet::Ambient).map_err(capserr("clear the ambient capabilities"))?;
    drop_bounding_except(&keep)?;
    caps::clear(None, CapSet::Inheritable).map_err(capserr("clear inheritable capabilities"))?;
    caps::set(None, CapSet::Effective, &keep).map_err(capserr("set effective capabilities"))?;
    caps::set(None, CapSet::Permitted, &keep).map_err(capserr("set permitted capabilities"))?;
    Ok(())
}

/// Whether this process runs with the privileges that make separation possible.
pub fn running_as_root() -> bool {
    Uid::effective().is_root()
}
