//! `app.json`: the launch command and the install step (instances.md §1-2).

use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct RawManifest {
    runtime: String,
    main: String,
    #[serde(default)]
    start: Option<Vec<String>>,
    #[serde(default)]
    install: Option<String>,
}

/// Informational fields for `list_releases`.
#[derive(Debug, Default, Deserialize)]
pub struct ReleaseInfo {
    #[serde(default)]
    pub commit_message: Option<String>,
    #[serde(default)]
    pub git_dirty: Option<bool>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    pub runtime: String,
    pub argv: Vec<String>,
    pub install: Option<String>,
}

/// Reads and resolves `<path>/app.json`. Errors are the detail after `Invalid app release: `.
pub fn load(path: &Path) -> Result<Manifest, String> {
    let file = path.join("app.json");
    let shown = file.display();
    let text = match std::fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!("missing deploy manifest {shown}"))
        }
        Err(e) => return Err(format!("failed to read deploy manifest {shown}: {e}")),
    };
    parse(&text, path)
}

/// Resolves the text of `<path>/app.json`; pure apart from [`bun_wrapper`]'s lookup. Split
/// from [`load`] so the fuzz target (fuzz/fuzz_targets/app_manifest.rs) can feed it text.
pub fn parse(text: &str, path: &Path) -> Result<Manifest, String> {
    let file = path.join("app.json");
    let shown = file.display();
    let raw: RawManifest = serde_json::from_str(text)
        .map_err(|e| format!("failed to parse deploy manifest {shown}: {e}"))?;
    if raw.runtime.trim().is_empty() {
        return Err(format!("deploy manifest {shown} has empty runtime field"));
    }
    if raw.main.trim().is_empty() {
        return Err(format!("deploy manifest {shown} has empty main field"));
    }
    let start = raw.start.unwrap_or_default();
    let argv = if !start.is_empty() {
        start
            .into_iter()
            .map(|a| if a == "{main}" { raw.main.clone() } else { a })
            .collect()
    } else {
        match raw.runtime.as_str() {
            "bun" => vec![
                "bun".into(),
                "run".into(),
                bun_wrapper(path).display().to_string(),
                raw.main.clone(),
            ],
            "node" => vec!["node".into(), raw.main.clone()],
            "deno" => vec![
                "deno".into(),
                "run".into(),
                "--allow-net".into(),
                "--allow-env".into(),
                "--allow-read".into(),
                raw.main.clone(),
            ],
            other => {
                return Err(format!(
                    "unsupported runtime '{other}' in deploy manifest {shown}"
                ))
            }
        }
    };
    Ok(Manifest {
        runtime: raw.runtime,
        argv,
        install: raw.install.filter(|s| !s.trim().is_empty()),
    })
}

const WRAPPER: &str = "node_modules/tako.sh/src/wrapper.ts";

/// The first `node_modules/tako.sh/src/wrapper.ts` walking up from `path`.
pub fn bun_wrapper(path: &Path) -> PathBuf {
    path.ancestors()
        .map(|dir| dir.join(WRAPPER))
        .find(|p| p.exists())
        .unwrap_or_else(|| path.join(WRAPPER))
}

/// The install argv (§2), if any.
pub fn install_argv(m: &Manifest, path: &Path) -> Option<Vec<String>> {
    if let Some(cmd) = &m.install {
        return Some(vec!["sh".into(), "-lc".into(), cmd.clone()]);
    }
    if m.runtime == "bun" {
        let mut argv = vec!["bun".to_string(), "install".into(), "--production".into()];
        if path.join("bun.lockb").exists() || path.join("bun.lock").exists() {
            argv.push("--frozen-lockfile".into());
        }
        return Some(argv);
    }
    None
}

pub fn release_info(path: &Path) -> ReleaseInfo {
    std::fs::read_to_string(path.join("app.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with(manifest: &str) -> tempdir::TempDir {
        let d = tempdir::TempDir::new();
        std::fs::write(d.0.join("app.json"), manifest).unwrap();
        d
    }

    mod tempdir {
        pub struct TempDir(pub std::path::PathBuf);
        impl TempDir {
            pub fn new() -> TempDir {
                use std::sync::atomic::{AtomicU32, Ordering};
                static N: AtomicU32 = AtomicU32::new(0);
                let p = std::env::temp_dir().join(format!(
                    "tako-manifest-{}-{}",
                    std::process::id(),
                    N.fetch_add(1, Ordering::SeqCst)
                ));
                std::fs::create_dir_all(&p).unwrap();
                TempDir(p)
            }
        }
        impl Drop for TempDir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn start_replaces_main() {
        let d = dir_with(r#"{"runtime":"node","main":"server.py","start":["python3","{main}"]}"#);
        assert_eq!(load(&d.0).unwrap().argv, vec!["python3", "server.py"]);
    }

    #[test]
    fn defaults_per_runtime() {
        let d = dir_with(r#"{"runtime":"node","main":"index.js"}"#);
        assert_eq!(load(&d.0).unwrap().argv, vec!["node", "index.js"]);
        let d = dir_with(r#"{"runtime":"deno","main":"m.ts","start":[]}"#);
        assert_eq!(load(&d.0).unwrap().argv[0], "deno");
        let d = dir_with(r#"{"runtime":"bun","main":"m.ts"}"#);
        let argv = load(&d.0).unwrap().argv;
        assert!(argv[2].ends_with("node_modules/tako.sh/src/wrapper.ts"));
    }

    #[test]
    fn errors() {
        let d = dir_with(r#"{"runtime":"python","main":"x"}"#);
        assert!(load(&d.0)
            .unwrap_err()
            .starts_with("unsupported runtime 'python' in deploy manifest"));
        let d = dir_with(r#"{"runtime":" ","main":"x"}"#);
        assert!(load(&d.0).unwrap_err().ends_with("has empty runtime field"));
        let d = dir_with(r#"{"runtime":"node","main":""}"#);
        assert!(load(&d.0).unwrap_err().ends_with("has empty main field"));
        let d = dir_with(r#"{"main":"x"}"#);
        assert!(load(&d.0)
            .unwrap_err()
            .starts_with("failed to parse deploy manifest"));
        let d = tempdir::TempDir::new();
        assert!(load(&d.0)
            .unwrap_err()
            .starts_with("missing deploy manifest"));
    }
}
