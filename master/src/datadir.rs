//! The data-directory layout with owners and modes (state.md §7). Modes are set only on
//! directories this server creates.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::users::Users;

/// Creates `path` with `mode` (and `owner` when root) unless it exists. Returns whether it
/// was created.
pub fn ensure_dir(path: &Path, mode: u32, owner: Option<(u32, u32)>) -> io::Result<bool> {
    match fs::DirBuilder::new().mode(mode).create(path) {
        Ok(()) => {
            // The umask may have trimmed the mode.
            fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
            }
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

fn ensure_tree(path: &Path, mode: u32, owner: Option<(u32, u32)>) -> io::Result<()> {
    if path.exists() {
        return Ok(());
    }
    if let Some(parent) = path.parent() {
        if !parent.as_os_str().is_empty() && !parent.exists() {
            ensure_tree(parent, 0o755, None)?;
        }
    }
    ensure_dir(path, mode, owner).map(|_| ())
}

#[derive(Debug, Clone)]
pub struct DataDir {
    pub root: PathBuf,
}

impl DataDir {
    pub fn apps(&self) -> PathBuf {
        self.root.join("apps")
    }
    pub fn app_releases(&self, app: &str) -> PathBuf {
        self.apps().join(app).join("releases")
    }
    pub fn app_logs(&self, app: &str) -> PathBuf {
        self.apps().join(app).join("shared").join("logs")
    }
    pub fn certs(&self) -> PathBuf {
        self.root.join("certs")
    }

    /// Creates the fixed part of the layout at startup.
    pub fn prepare(&self, users: Option<&Users>) -> io::Result<()> {
        let deploy = users.map(|u| (u.deploy.uid, u.deploy.gid));
        let root = users.map(|_| (0, 0));
        ensure_tree(&self.root, 0o755, root)?;
        ensure_dir(&self.apps(), 0o755, deploy)?;
        ensure_dir(&self.root.join("upgrade-logs"), 0o755, deploy)?;
        ensure_dir(&self.certs(), 0o700, root)?;
        ensure_dir(&self.root.join("acme"), 0o700, root)?;
        Ok(())
    }

    /// `apps/<app>/shared/logs`, owned by the deploy user so the CLI can tail and delete it.
    pub fn prepare_app_logs(&self, app: &str, users: Option<&Users>) -> io::Result<PathBuf> {
        let deploy = users.map(|u| (u.deploy.uid, u.deploy.gid));
        let app_dir = self.apps().join(app);
        ensure_dir(&app_dir, 0o755, deploy)?;
        ensure_dir(&app_dir.join("shared"), 0o755, deploy)?;
        let logs = self.app_logs(app);
        ensure_dir(&logs, 0o750, deploy)?;
        Ok(logs)
    }
}

/// The socket directory: `root:<deploy group>` 01770 when root (state.md §7).
pub fn prepare_socket_dir(socket: &Path, users: Option<&Users>) -> io::Result<()> {
    let Some(dir) = socket.parent() else {
        return Ok(());
    };
    if dir.as_os_str().is_empty() || dir.exists() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        if !parent.as_os_str().is_empty() && !parent.exists() {
            ensure_tree(parent, 0o755, None)?;
        }
    }
    match users {
        Some(u) => ensure_dir(dir, 0o1770, Some((0, u.deploy.gid))).map(|_| ()),
        None => ensure_dir(dir, 0o700, None).map(|_| ()),
    }
}
