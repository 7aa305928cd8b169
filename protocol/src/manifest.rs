//! `app.json`: the launch command and the install step (docs/apps.md, "The manifest",
//! "Install step").

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

/// The largest `app.json` read: a manifest is a few lines, and the deploy user writes it.
pub const MANIFEST_LIMIT: u64 = 1 << 20;

/// Resolves the text of `<path>/app.json`. Pure: `find_wrapper` is asked for the Bun
/// wrapper's path only when the default Bun command needs it. The reading half lives with
/// the release directory (`apps::release`), which reads through descriptors.
pub fn parse(
    text: &str,
    path: &Path,
    find_wrapper: &dyn Fn() -> PathBuf,
) -> Result<Manifest, String> {
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
                find_wrapper().display().to_string(),
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

pub const WRAPPER: &str = "node_modules/tako.sh/src/wrapper.ts";

/// The install argv, if any. `has_lockfile`: the release has `bun.lockb` or `bun.lock`.
pub fn install_argv(m: &Manifest, has_lockfile: bool) -> Option<Vec<String>> {
    if let Some(cmd) = &m.install {
        return Some(vec!["sh".into(), "-lc".into(), cmd.clone()]);
    }
    if m.runtime == "bun" {
        let mut argv = vec!["bun".to_string(), "install".into(), "--production".into()];
        if has_lockfile {
            argv.push("--frozen-lockfile".into());
        }
        return Some(argv);
    }
    None
}

/// The informational fields of an `app.json` text; anything unreadable gives none.
pub fn release_info(text: &[u8]) -> ReleaseInfo {
    serde_json::from_slice(text).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Manifest, String> {
        let path = Path::new("/srv/release");
        parse(text, path, &|| path.join(WRAPPER))
    }

    #[test]
    fn start_replaces_main() {
        let m = load(r#"{"runtime":"node","main":"server.py","start":["python3","{main}"]}"#);
        assert_eq!(m.unwrap().argv, vec!["python3", "server.py"]);
    }

    #[test]
    fn defaults_per_runtime() {
        let m = load(r#"{"runtime":"node","main":"index.js"}"#);
        assert_eq!(m.unwrap().argv, vec!["node", "index.js"]);
        let m = load(r#"{"runtime":"deno","main":"m.ts","start":[]}"#);
        assert_eq!(m.unwrap().argv[0], "deno");
        let argv = load(r#"{"runtime":"bun","main":"m.ts"}"#).unwrap().argv;
        assert_eq!(argv[2], "/srv/release/node_modules/tako.sh/src/wrapper.ts");
    }

    #[test]
    fn errors() {
        assert!(load(r#"{"runtime":"python","main":"x"}"#)
            .unwrap_err()
            .starts_with("unsupported runtime 'python' in deploy manifest"));
        assert!(load(r#"{"runtime":" ","main":"x"}"#)
            .unwrap_err()
            .ends_with("has empty runtime field"));
        assert!(load(r#"{"runtime":"node","main":""}"#)
            .unwrap_err()
            .ends_with("has empty main field"));
        assert!(load(r#"{"main":"x"}"#)
            .unwrap_err()
            .starts_with("failed to parse deploy manifest"));
    }
}
