//! What the master does inside a release directory, all through the descriptor it opened
//! ([`crate::datadir::Release`]): read `app.json`, look for the Bun files, and lend the
//! directory to the app user for the install step.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use crate::beneath::WalkError;
use crate::datadir::Release;
use crate::users::Users;
use tako_protocol::manifest::{self, Manifest, MANIFEST_LIMIT, WRAPPER};

/// How far the hand-back after an install walks: a dependency tree is large but finite,
/// and an app that keeps creating files must not keep the master busy forever.
const GIVE_BACK_MAX_ENTRIES: usize = 2_000_000;
const GIVE_BACK_MAX_DEPTH: usize = 256;

/// Why `app.json` could not be used; the text follows `Invalid app release: `.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("missing deploy manifest {}", file.display())]
    Missing { file: PathBuf },
    /// Not a regular file, too large, or unreadable; the walk error says which.
    #[error("deploy manifest {0}")]
    Read(#[source] WalkError),
    #[error("failed to read deploy manifest {}: not UTF-8 text", file.display())]
    NotUtf8 { file: PathBuf },
    /// The parser's own message (`tako_protocol::manifest::parse`), which names the file.
    #[error("{0}")]
    Parse(String),
}

/// Why the release directory could not be lent to the app for its install step.
#[derive(Debug, thiserror::Error)]
pub enum LendError {
    #[error("{0}")]
    Stat(#[source] WalkError),
    #[error("'{}' belongs to uid {owner}, not to the deploy user (uid {deploy}); its install step does not run", path.display())]
    NotDeployUser {
        path: PathBuf,
        owner: u32,
        deploy: u32,
    },
    #[error("cannot lend the release directory to the app: {0}")]
    Chown(#[source] WalkError),
}

impl Release {
    /// Reads and resolves `app.json`.
    pub fn manifest(&self) -> Result<Manifest, ManifestError> {
        let file = self.path.join("app.json");
        let bytes = match self.dir.read_file(OsStr::new("app.json"), MANIFEST_LIMIT) {
            Ok(b) => b,
            Err(WalkError::Missing(_)) => return Err(ManifestError::Missing { file }),
            Err(e) => return Err(ManifestError::Read(e)),
        };
        let text = String::from_utf8(bytes).map_err(|_| ManifestError::NotUtf8 { file })?;
        manifest::parse(&text, &self.path, &|| self.bun_wrapper()).map_err(ManifestError::Parse)
    }

    /// The first `node_modules/tako.sh/src/wrapper.ts` from the app's directory up to the
    /// top of the release (a monorepo keeps `node_modules` above the app). Nothing above
    /// the release is looked at.
    pub fn bun_wrapper(&self) -> PathBuf {
        let parts: Vec<&OsStr> = self.subdir.iter().collect();
        for depth in (0..=parts.len()).rev() {
            let rel: PathBuf = parts[..depth].iter().collect();
            if self.top.has_file(&rel.join(WRAPPER)) {
                return self.path_at(depth).join(WRAPPER);
            }
        }
        self.path.join(WRAPPER)
    }

    /// Whether the app's directory holds the Bun wrapper itself.
    pub fn has_wrapper(&self) -> bool {
        self.dir.has_file(Path::new(WRAPPER))
    }

    /// Whether the app's directory has a Bun lockfile.
    pub fn has_bun_lockfile(&self) -> bool {
        self.dir.has_file(Path::new("bun.lockb")) || self.dir.has_file(Path::new("bun.lock"))
    }

    /// The path of the directory `depth` components below the top of the release.
    fn path_at(&self, depth: usize) -> PathBuf {
        let up = self.subdir.iter().count() - depth;
        let mut p = self.path.clone();
        for _ in 0..up {
            p.pop();
        }
        p
    }
}

/// The release directory lent to the app's own uid for the install step, and given back
/// after it. Both ends go through the held descriptor; a no-op without privilege separation.
pub struct Lease<'a> {
    release: &'a Release,
    users: Option<Users>,
    /// The app's uid and gid (the same number).
    app_uid: u32,
}

impl<'a> Lease<'a> {
    /// Lends the app's directory to the app's uid. It must belong to the deploy user: root
    /// hands nothing else to the app. `app_uid` is `None` without privilege separation.
    pub fn lend(
        users: Option<&Users>,
        app_uid: Option<u32>,
        release: &'a Release,
    ) -> Result<Lease<'a>, LendError> {
        let users = users.zip(app_uid);
        if let Some((u, app_uid)) = users {
            let st = release.dir.stat().map_err(LendError::Stat)?;
            if st.st_uid != u.deploy.uid {
                return Err(LendError::NotDeployUser {
                    path: release.path.clone(),
                    owner: st.st_uid,
                    deploy: u.deploy.uid,
                });
            }
            release
                .dir
                .chown(app_uid, app_uid)
                .map_err(LendError::Chown)?;
        }
        Ok(Lease {
            release,
            users: users.map(|(u, _)| u.clone()),
            app_uid: app_uid.unwrap_or(0),
        })
    }

    /// Gives the directory and whatever the app made in it back to the deploy user.
    pub fn give_back(self) {
        let Some(u) = &self.users else { return };
        let dir = &self.release.dir;
        let deploy = (u.deploy.uid, u.deploy.gid);
        if let Err(e) = dir.chown(deploy.0, deploy.1) {
            tracing::warn!(path = %self.release.path.display(), error = %e, "cannot give the release directory back");
        }
        match dir.give_tree(
            self.app_uid,
            deploy,
            GIVE_BACK_MAX_ENTRIES,
            GIVE_BACK_MAX_DEPTH,
        ) {
            Ok(n) => {
                tracing::debug!(path = %self.release.path.display(), entries = n, "install output given back to the deploy user")
            }
            Err(e) => {
                tracing::warn!(path = %self.release.path.display(), error = %e, "cannot give the install output back")
            }
        }
    }
}
