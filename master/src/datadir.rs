//! The data-directory layout with owners and modes (docs/operations.md,
//! "Files and directories"). Modes are set only on directories this server creates. Below
//! `apps/` the deploy user owns everything, so that part is reached through descriptors only
//! ([`crate::beneath`]).

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use nix::unistd::UnlinkatFlags;

use crate::beneath::{Dir, Kind, WalkError};
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
    /// `app-homes/`: root's, 0755; below it one private HOME per app (root only).
    pub fn app_homes(&self) -> PathBuf {
        self.root.join(APP_HOMES)
    }
    pub fn app_home(&self, app: &str) -> PathBuf {
        self.app_homes().join(app)
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
        if users.is_some() {
            ensure_dir(&self.app_homes(), 0o755, root)?;
            self.remove_leftover_homes();
        }
        Ok(())
    }

    /// The app's HOME, `app-homes/<app>`, owned by its uid and gid with mode 0700; made
    /// if missing. The app owns what is inside, so it is reached through descriptors only.
    /// A home that belongs to another uid (left by an app of the same name that failed
    /// its first deploy, or whose uid was replaced) is removed and made afresh: no app
    /// inherits another uid's files.
    pub fn prepare_app_home(&self, app: &str, uid: u32, gid: u32) -> Result<PathBuf, HomeError> {
        let homes = Dir::open_trusted(&self.root)?.ensure_dir(
            OsStr::new(APP_HOMES),
            0o755,
            Some((0, 0)),
        )?;
        let name = OsStr::new(app);
        match homes.stat_entry(name) {
            Ok(st) if st.st_uid == uid && Kind::Dir == kind(&st) => {}
            Ok(st) => {
                tracing::warn!(app, home = %self.app_home(app).display(), owner = st.st_uid, uid, "the app's home belongs to another uid; making it afresh");
                self.remove_app_home(app)?;
            }
            Err(e) if e.is_missing() => {}
            Err(e) => return Err(e.into()),
        }
        homes.ensure_dir(name, 0o700, Some((uid, gid)))?;
        Ok(self.app_home(app))
    }

    /// Removes `app-homes/<app>` and everything below it. It is renamed aside first (the
    /// parent is root's, so the name cannot be swapped), then removed through descriptors,
    /// never following a symlink. What cannot be removed now stays under a `.deleted-`
    /// name and goes at the next start.
    pub fn remove_app_home(&self, app: &str) -> Result<(), HomeError> {
        let homes = match Dir::open_trusted(&self.app_homes()) {
            Ok(d) => d,
            Err(e) if e.is_missing() => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let aside = OsString::from(format!(
            "{DELETED_PREFIX}{app}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        match nix::fcntl::renameat(
            Some(homes.as_fd().as_raw_fd()),
            OsStr::new(app),
            Some(homes.as_fd().as_raw_fd()),
            aside.as_os_str(),
        ) {
            Ok(()) => {}
            Err(nix::errno::Errno::ENOENT) => return Ok(()),
            Err(e) => {
                return Err(HomeError::Remove {
                    path: self.app_home(app),
                    source: e.into(),
                })
            }
        }
        remove_entry(&homes, &aside, 0).map_err(|source| HomeError::Remove {
            path: self.app_homes().join(&aside),
            source,
        })
    }

    /// Homes renamed aside by a removal that did not finish.
    fn remove_leftover_homes(&self) {
        let Ok(homes) = Dir::open_trusted(&self.app_homes()) else {
            return;
        };
        let Ok(entries) = homes.entries(10_000) else {
            return;
        };
        for (name, _, _) in entries {
            if name
                .as_encoded_bytes()
                .starts_with(DELETED_PREFIX.as_bytes())
            {
                if let Err(e) = remove_entry(&homes, &name, 0) {
                    tracing::warn!(entry = %name.to_string_lossy(), error = %e, "cannot remove a deleted app's home");
                }
            }
        }
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

const APP_HOMES: &str = "app-homes";
const DELETED_PREFIX: &str = ".deleted-";
/// Bounds of the removal walk: an app's home is finite, and a tree deeper than this is
/// left for the next start rather than walked without end.
const REMOVE_MAX_DEPTH: usize = 128;

/// An app's HOME could not be made or removed.
#[derive(Debug, thiserror::Error)]
pub enum HomeError {
    #[error("cannot prepare the app's home: {0}")]
    Walk(#[from] WalkError),
    #[error("cannot remove the app's home '{path}': {source}")]
    Remove { path: PathBuf, source: io::Error },
}

fn kind(st: &nix::sys::stat::FileStat) -> Kind {
    match st.st_mode & libc::S_IFMT {
        libc::S_IFDIR => Kind::Dir,
        libc::S_IFLNK => Kind::Symlink,
        libc::S_IFREG => Kind::File,
        _ => Kind::Other,
    }
}

/// Removes the entry `name` of `parent`: a directory is emptied through its descriptor
/// first; anything else (a symlink included) is unlinked itself, never followed.
fn remove_entry(parent: &Dir, name: &OsStr, depth: usize) -> io::Result<()> {
    let st = parent.stat_entry(name).map_err(io::Error::other)?;
    if kind(&st) == Kind::Dir {
        if depth >= REMOVE_MAX_DEPTH {
            return Err(io::Error::other("the tree is too deep"));
        }
        let dir = parent.open_dir(name).map_err(io::Error::other)?;
        // Rounds of 4096 entries; the app's processes are gone, so nothing refills it,
        // but a bound keeps a surprise from spinning.
        for round in 0.. {
            let entries = dir.entries(4096).map_err(io::Error::other)?;
            if entries.is_empty() {
                break;
            }
            if round >= 10_000 {
                return Err(io::Error::other("the directory keeps growing"));
            }
            for (child, _, _) in entries {
                remove_entry(&dir, &child, depth + 1)?;
            }
        }
        nix::unistd::unlinkat(
            Some(parent.as_fd().as_raw_fd()),
            name,
            UnlinkatFlags::RemoveDir,
        )?;
    } else {
        nix::unistd::unlinkat(
            Some(parent.as_fd().as_raw_fd()),
            name,
            UnlinkatFlags::NoRemoveDir,
        )?;
    }
    Ok(())
}

/// The socket directory: `root:<deploy group>` 01770 when root (docs/operations.md,
/// "Files and directories").
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
