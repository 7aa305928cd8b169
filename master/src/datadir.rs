//! The data-directory layout with owners and modes (state.md §7). Modes are set only on
//! directories this server creates. Below `apps/` the deploy user owns everything, so that
//! part is reached through descriptors only ([`crate::beneath`]).

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use crate::beneath::{Dir, WalkError};
use crate::users::Users;

/// A deploy path that does not name a directory strictly below the app's releases.
#[derive(Debug, thiserror::Error)]
pub enum ReleasePathError {
    #[error("'{0}' must be absolute")]
    NotAbsolute(String),
    #[error("'{path}' must stay under '{root}'")]
    OutsideRoot { path: String, root: String },
    #[error(transparent)]
    Refused(#[from] WalkError),
}

/// A release directory, open. Everything the master does in it goes through `dir`.
#[derive(Debug)]
pub struct Release {
    /// The directory the app runs in: `releases/<version>[/<subdir>]`.
    pub dir: Dir,
    /// Its path below the configured data dir (for messages, the state and the launcher,
    /// which resolves it as the app user).
    pub path: PathBuf,
    /// `releases/<version>`, the top of the release.
    pub top: Dir,
    /// The components from `top` to `dir`.
    pub subdir: PathBuf,
}

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

    /// `apps/`, opened from the root-owned data dir without following a symlink.
    pub fn apps_dir(&self) -> Result<Dir, WalkError> {
        Dir::open_trusted(&self.root)?.open_dir(OsStr::new("apps"))
    }

    /// `apps/<app>/releases`, reached through descriptors. The app name must be valid.
    pub fn open_releases(&self, app: &str) -> Result<Dir, WalkError> {
        self.apps_dir()?
            .open_dir(OsStr::new(app))?
            .open_dir(OsStr::new("releases"))
    }

    /// The part of `path` below `apps/<app>/releases`, by text alone: nothing is resolved.
    /// The data dir may be named as configured or canonical; `.` and `..` are refused.
    pub fn release_rel(&self, app: &str, path: &str) -> Result<PathBuf, ReleasePathError> {
        let given = Path::new(path);
        if !given.is_absolute() {
            return Err(ReleasePathError::NotAbsolute(path.to_string()));
        }
        let configured = self.app_releases(app);
        let outside = || ReleasePathError::OutsideRoot {
            path: path.to_string(),
            root: configured.display().to_string(),
        };
        // The data dir is root's: resolving it is safe, and old state stored canonical paths.
        let canonical = fs::canonicalize(&self.root)
            .ok()
            .map(|r| r.join("apps").join(app).join("releases"));
        let rel = std::iter::once(&configured)
            .chain(canonical.iter())
            .find_map(|root| given.strip_prefix(root).ok())
            .ok_or_else(outside)?;
        if rel.as_os_str().is_empty()
            || !rel.components().all(|c| matches!(c, Component::Normal(_)))
        {
            return Err(outside());
        }
        Ok(rel.components().collect())
    }

    /// Opens the release directory `path` of `app`: every component from the data dir down
    /// is opened with `O_NOFOLLOW | O_DIRECTORY`, so a symlink anywhere is refused.
    pub fn open_release(&self, app: &str, path: &str) -> Result<Release, ReleasePathError> {
        let rel = self.release_rel(app, path)?;
        let mut parts = rel.components();
        let version = parts.next().map(|c| c.as_os_str()).unwrap_or_default();
        let subdir: PathBuf = parts.collect();
        let top = self.open_releases(app)?.open_dir(version)?;
        let dir = top.walk(&subdir)?;
        Ok(Release {
            dir,
            path: self.app_releases(app).join(&rel),
            top,
            subdir,
        })
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
    /// Made through descriptors: a symlink the deploy user planted on the way is refused.
    pub fn prepare_app_logs(&self, app: &str, users: Option<&Users>) -> Result<PathBuf, WalkError> {
        let deploy = users.map(|u| (u.deploy.uid, u.deploy.gid));
        self.apps_dir()?
            .ensure_dir(OsStr::new(app), 0o755, deploy)?
            .ensure_dir(OsStr::new("shared"), 0o755, deploy)?
            .ensure_dir(OsStr::new("logs"), 0o750, deploy)?;
        Ok(self.app_logs(app))
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
