//! The one deploy check that needs the file system: whether the release path may be used.
//! Every other check is pure and lives in `tako_protocol::validate`; [`validate_deploy`]
//! runs them all in the documented order with this one in its place.

use std::path::{Path, PathBuf};

use tako_protocol::validate::{validate_deploy_with, ValidDeploy, ValidationError};
use tako_protocol::DeployRequest;

use crate::beneath::WalkError;
use crate::datadir::{DataDir, ReleasePathError};

/// Checks a deploy `path` and returns it as it is below the configured data dir. The path
/// is split by text alone (no `.` or `..`, strictly below the releases root), then opened
/// one component at a time from the data dir without following a symlink: the deploy user
/// owns that tree, and a name there must never lead root elsewhere. The app name must
/// already be valid.
pub fn validate_release_path(
    data_dir: &Path,
    app: &str,
    path: &str,
) -> Result<PathBuf, ValidationError> {
    let data = DataDir {
        root: data_dir.to_path_buf(),
    };
    match data.open_release(app, path) {
        Ok(release) => Ok(release.path),
        Err(ReleasePathError::NotAbsolute(p)) => Err(ValidationError::PathNotAbsolute(p)),
        Err(ReleasePathError::OutsideRoot { path, root }) => {
            Err(ValidationError::PathOutsideRoot { path, root })
        }
        Err(ReleasePathError::Refused(WalkError::Missing(_) | WalkError::NotDirectory(_))) => {
            Err(ValidationError::PathNotDirectory(path.to_string()))
        }
        Err(ReleasePathError::Refused(e)) => Err(ValidationError::PathRefused(e.to_string())),
    }
}

/// Every check of a deploy, in order. Touches the file system (opens the release), so
/// callers on the runtime may prefer `spawn_blocking`.
pub fn validate_deploy(
    data_dir: &Path,
    req: &DeployRequest,
) -> Result<ValidDeploy, ValidationError> {
    validate_deploy_with(req, |path| validate_release_path(data_dir, &req.app, path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// `<data-dir>/apps/<app>/releases`.
    fn releases_root(data_dir: &Path, app: &str) -> PathBuf {
        data_dir.join("apps").join(app).join("releases")
    }

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            static N: AtomicU32 = AtomicU32::new(0);
            let p = std::env::temp_dir().join(format!(
                "tako-validate-{tag}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).expect("temp dir");
            TempDir(p)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn msg<T: std::fmt::Debug>(r: Result<T, ValidationError>) -> String {
        r.expect_err("must fail").to_string()
    }

    #[test]
    fn release_path_rules() {
        let tmp = TempDir::new("path");
        let data = tmp.0.join("data");
        let root = releases_root(&data, "web");
        let v1 = root.join("v1");
        std::fs::create_dir_all(v1.join("sub")).expect("mkdir");
        std::fs::write(root.join("file"), b"x").expect("file");
        let outside = tmp.0.join("outside");
        std::fs::create_dir_all(&outside).expect("mkdir");
        std::os::unix::fs::symlink(&outside, root.join("escape")).expect("symlink");
        std::os::unix::fs::symlink(&v1, root.join("alias")).expect("symlink");
        std::fs::create_dir_all(data.join("apps/web/releases-x/v1")).expect("mkdir");
        let s = |p: &Path| p.display().to_string();

        assert_eq!(validate_release_path(&data, "web", &s(&v1)), Ok(v1.clone()));
        assert_eq!(
            validate_release_path(&data, "web", &format!("{}/", s(&v1))),
            Ok(v1.clone())
        );
        assert!(validate_release_path(&data, "web", &s(&v1.join("sub"))).is_ok());
        // A symlink is refused wherever it is, even one that stays inside.
        for link in [root.join("alias"), root.join("escape")] {
            assert_eq!(
                msg(validate_release_path(&data, "web", &s(&link))),
                format!("Invalid release path: '{}' is a symbolic link", s(&link))
            );
        }
        std::fs::rename(&root, data.join("apps/web/moved")).expect("move");
        std::os::unix::fs::symlink(data.join("apps/web/moved"), &root).expect("symlink");
        assert_eq!(
            msg(validate_release_path(&data, "web", &s(&v1))),
            format!("Invalid release path: '{}' is a symbolic link", s(&root))
        );
        std::fs::remove_file(&root).expect("unlink");
        std::fs::rename(data.join("apps/web/moved"), &root).expect("move back");

        assert_eq!(
            msg(validate_release_path(&data, "web", "releases/v1")),
            "Invalid release path: 'releases/v1' must be absolute"
        );
        assert_eq!(
            msg(validate_release_path(&data, "web", "")),
            "Invalid release path: '' must be absolute"
        );
        let missing = s(&root.join("nope"));
        assert_eq!(
            msg(validate_release_path(&data, "web", &missing)),
            format!("Invalid release path: '{missing}' is not a directory")
        );
        let file = s(&root.join("file"));
        assert_eq!(
            msg(validate_release_path(&data, "web", &file)),
            format!("Invalid release path: '{file}' is not a directory")
        );
        let outside_cases = [
            s(&root),
            format!("{}/../v1", s(&v1)),
            format!("{}/../../../../../outside", s(&v1)),
            s(&data.join("apps/web/releases-x/v1")),
            s(&outside),
        ];
        for p in outside_cases {
            assert_eq!(
                msg(validate_release_path(&data, "web", &p)),
                format!("Invalid release path: '{p}' must stay under '{}'", s(&root)),
            );
        }
        // Another app's releases are outside this app's root.
        assert!(matches!(
            validate_release_path(&data, "api", &s(&v1)),
            Err(ValidationError::PathOutsideRoot { .. })
        ));
    }

    #[test]
    fn deploy_opens_the_release_in_its_place_in_the_order() {
        let tmp = TempDir::new("deploy");
        let v1 = releases_root(&tmp.0, "web").join("v1");
        std::fs::create_dir_all(&v1).expect("mkdir");
        let mut req = DeployRequest {
            app: "web".into(),
            version: "v1".into(),
            path: v1.join("missing").display().to_string(),
            routes: vec![],
            env: Default::default(),
            instances: 40,
            idle_timeout: 0,
        };
        // The path is checked after the version and before the instances.
        assert!(msg(validate_deploy(&tmp.0, &req)).starts_with("Invalid release path"));
        req.path = v1.display().to_string();
        req.instances = 1;
        req.routes = vec!["web.com".into()];
        assert_eq!(validate_deploy(&tmp.0, &req).expect("valid").path, v1);
    }
}
