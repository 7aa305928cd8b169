//! Who an app's processes are (docs/isolation.md, "Apps"). Run as root, every app gets a
//! uid and gid of its own, the same number, from `--app-uid-range`: allocated the first
//! time the app needs one, kept in the state (`apps.app_uid`) and so stable across
//! restarts, redeploys and upgrades, and freed with `delete`. Its processes also carry the
//! `--app-user` group, and get a private HOME below the data dir. Without privilege
//! separation, apps run as the server's own user with its HOME, as before.

use std::collections::HashSet;

use nix::unistd::{Gid, Group, Uid, User};
use tako_ipc::AppIds;

/// No uid could be given to an app.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("no free uid for app '{app}' in --app-uid-range {first}-{last}: every id is taken by another app or by an account in passwd or group; widen the range")]
    RangeFull { app: String, first: u32, last: u32 },
    #[error(transparent)]
    Home(#[from] crate::datadir::HomeError),
}

/// What an app's process runs as: its ids (root only) and its HOME.
#[derive(Debug, Clone)]
pub struct Identity {
    pub ids: Option<AppIds>,
    pub home: String,
    /// `XDG_CACHE_HOME`, inside the home (root only).
    pub cache: Option<String>,
}

/// Whether `id` is free on the host: neither a user nor a group has it. A failed lookup
/// counts as taken: better skip an id than share it.
fn free_on_host(id: u32) -> bool {
    matches!(User::from_uid(Uid::from_raw(id)), Ok(None))
        && matches!(Group::from_gid(Gid::from_raw(id)), Ok(None))
}

/// The lowest id of `first..=last` that no app holds and no account or group has.
pub fn allocate(first: u32, last: u32, taken: &HashSet<u32>) -> Option<u32> {
    (first..=last).find(|id| !taken.contains(id) && free_on_host(*id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocation_skips_held_ids_and_host_accounts() {
        // uid 0 (root) and gid 0 exist on every host.
        assert_eq!(allocate(0, 0, &HashSet::new()), None);
        let first = 61184;
        let taken: HashSet<u32> = (first..first + 3).collect();
        let got = allocate(first, 65519, &taken).expect("a free id");
        assert!(got >= first + 3);
        assert!(free_on_host(got));
        assert_eq!(allocate(first, first + 2, &taken), None);
    }
}
