//! The system users the server runs as when started by root (docs/cli.md,
//! "Users and privileges").

use nix::unistd::{Uid, User};

pub const DEPLOY_USER: &str = "tako";
pub const PROXY_USER: &str = "tako-proxy";
pub const APP_USER: &str = "tako-app";

#[derive(Debug, Clone)]
pub struct SysUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
}

pub fn is_root() -> bool {
    Uid::effective().is_root()
}

/// Looks a user up; panics with the fix when it is missing, never skips.
pub fn user(name: &str) -> SysUser {
    match User::from_name(name) {
        Ok(Some(u)) => SysUser {
            name: u.name,
            uid: u.uid.as_raw(),
            gid: u.gid.as_raw(),
            home: u.dir.to_string_lossy().into_owned(),
        },
        Ok(None) => panic!(
            "user '{name}' does not exist. The tests need the users tako, tako-proxy and \
             tako-app: run .ci/run as root, or create them with \
             `useradd --system --user-group {name}`"
        ),
        Err(e) => panic!("cannot look up user '{name}': {e}"),
    }
}

/// The three default users, checked at once so a missing one is reported early.
pub fn require_default_users() {
    for name in [DEPLOY_USER, PROXY_USER, APP_USER] {
        user(name);
    }
}

/// A test that only means something as root fails loudly elsewhere instead of passing
/// silently.
pub fn require_root(what: &str) {
    assert!(
        is_root(),
        "{what} needs root (CI runs as root via .ci/run); this run has uid {}",
        Uid::effective()
    );
}
