//! The man pages and shell completions committed under packaging/generated/ (shipped in the
//! .deb, docs/ctl.md "Shell completions and man pages") are what this binary generates: a
//! flag or help text changed without regenerating them fails here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn files(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let entries =
            std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                let rel = path.strip_prefix(root).expect("below root").to_path_buf();
                out.insert(rel, std::fs::read(&path).expect("read a generated file"));
            }
        }
    }
    out
}

#[test]
fn committed_man_pages_and_completions_are_current() {
    let committed = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .join("packaging/generated");
    let dir = crate::common::temp_dir();
    let out = dir.join("generated");
    let run = crate::common::run_to_exit(
        &["generate-docs", &out.display().to_string()],
        Duration::from_secs(60),
    );
    assert_eq!(run.code, 0, "generate-docs failed: {}", run.stderr);
    let fresh = files(&out);
    let old = files(&committed);
    assert!(
        fresh.keys().any(|p| p.ends_with("tako-server.1")),
        "{:?}",
        fresh.keys()
    );
    let stale: Vec<String> = fresh
        .keys()
        .chain(old.keys())
        .filter(|p| fresh.get(*p) != old.get(*p))
        .map(|p| p.display().to_string())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert!(
        stale.is_empty(),
        "packaging/generated/ is stale ({}); run `cargo run -p tako-server -- generate-docs packaging/generated` and commit the result",
        stale.join(", ")
    );
    let _ = std::fs::remove_dir_all(&dir);
}
