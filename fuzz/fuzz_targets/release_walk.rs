//! The master's descriptor walk below the deploy user's tree (`master/src/beneath.rs`): the
//! input builds a random tree of directories, files, symlinks (inside, outside, `..`,
//! absolute) and FIFOs under a temporary `inside/` beside an `outside/` directory, then
//! drives the walk's operations over random names. Whatever the tree, no operation returns
//! a directory that is not inside the tree, creates or changes anything outside it, reads a
//! file outside it, or blocks on a FIFO.
//!
//! The master is a binary crate; `beneath.rs` is self-contained and compiled here from its
//! source file.
#![no_main]

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../master/src/beneath.rs"]
mod beneath;

use beneath::Dir;

/// Names the input picks from: plain names, and the ones a walk must refuse.
const NAMES: [&str; 8] = ["a", "b", "c", "app.json", "..", ".", "", "x/y"];
const SECRET: &[u8] = b"outside-secret";

struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn scratch() -> Scratch {
    static N: AtomicU64 = AtomicU64::new(0);
    let p = std::env::temp_dir().join(format!(
        "tako-fuzz-walk-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = fs::remove_dir_all(&p);
    fs::create_dir_all(p.join("inside")).expect("scratch inside");
    fs::create_dir_all(p.join("outside/deep")).expect("scratch outside");
    fs::write(p.join("outside/app.json"), SECRET).expect("outside file");
    Scratch(p)
}

/// A relative path of 1-3 names picked by the input.
fn rel(bytes: &mut impl Iterator<Item = u8>) -> PathBuf {
    let n = 1 + bytes.next().unwrap_or(0) % 3;
    (0..n)
        .map(|_| NAMES[usize::from(bytes.next().unwrap_or(0)) % 4])
        .collect()
}

/// Any name, the refused ones included.
fn name(bytes: &mut impl Iterator<Item = u8>) -> &'static OsStr {
    OsStr::new(NAMES[usize::from(bytes.next().unwrap_or(0)) % NAMES.len()])
}

/// (dev, inode) of every directory under `root`, symlinks not followed.
fn dirs_under(root: &Path) -> HashSet<(u64, u64)> {
    let mut out = HashSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(m) = fs::symlink_metadata(&d) else {
            continue;
        };
        if !m.is_dir() {
            continue;
        }
        out.insert((m.dev(), m.ino()));
        if let Ok(entries) = fs::read_dir(&d) {
            stack.extend(entries.flatten().map(|e| e.path()));
        }
    }
    out
}

/// Every path under `root` with its kind, inode and mode: what "unchanged" means.
fn snapshot(root: &Path) -> Vec<(PathBuf, u64, u32, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(m) = fs::symlink_metadata(&p) else {
            continue;
        };
        out.push((p.clone(), m.ino(), m.mode(), m.size()));
        if m.is_dir() {
            if let Ok(entries) = fs::read_dir(&p) {
                stack.extend(entries.flatten().map(|e| e.path()));
            }
        }
    }
    out.sort();
    out
}

/// Whether every component of `rel` below `inside` before the last is a real directory
/// and the last is free: the tree is built without following what it planted.
fn free_slot(inside: &Path, rel: &Path) -> bool {
    let mut at = inside.to_path_buf();
    let parts: Vec<_> = rel.components().collect();
    for (i, c) in parts.iter().enumerate() {
        at.push(c);
        match fs::symlink_metadata(&at) {
            Ok(m) if i + 1 < parts.len() && m.is_dir() => {}
            Err(_) if i + 1 == parts.len() => return true,
            _ => return false,
        }
    }
    false
}

fn build_tree(base: &Path, bytes: &mut impl Iterator<Item = u8>) {
    let inside = base.join("inside");
    let outside = base.join("outside");
    let count = bytes.next().unwrap_or(0) % 12;
    for _ in 0..count {
        let r = rel(bytes);
        let kind = bytes.next().unwrap_or(0) % 6;
        if !free_slot(&inside, &r) {
            continue;
        }
        let at = inside.join(&r);
        let _ = match kind {
            0 => fs::create_dir(&at),
            1 => fs::write(&at, br#"{"runtime":"node","main":"m"}"#),
            2 => std::os::unix::fs::symlink(&outside, &at),
            3 => std::os::unix::fs::symlink(outside.join("app.json"), &at),
            4 => std::os::unix::fs::symlink("../../../outside", &at),
            _ => nix::unistd::mkfifo(&at, nix::sys::stat::Mode::from_bits_truncate(0o644))
                .map_err(std::io::Error::from),
        };
    }
}

fuzz_target!(|data: &[u8]| {
    let s = scratch();
    let inside = s.0.join("inside");
    let outside = s.0.join("outside");
    let mut bytes = data.iter().copied();
    build_tree(&s.0, &mut bytes);
    let before = snapshot(&outside);
    let Ok(root) = Dir::open_trusted(&inside) else {
        return;
    };
    let me = (nix::unistd::getuid().as_raw(), nix::unistd::getgid().as_raw());
    let mut opened: Vec<Dir> = Vec::new();
    for _ in 0..16 {
        let Some(op) = bytes.next() else { break };
        let from = if opened.is_empty() || op & 0x80 == 0 {
            &root
        } else {
            &opened[usize::from(op) % opened.len()]
        };
        match op % 6 {
            0 => {
                if let Ok(d) = from.walk(&rel(&mut bytes)) {
                    opened.push(d);
                }
            }
            1 => {
                if let Ok(d) = from.open_dir(name(&mut bytes)) {
                    opened.push(d);
                }
            }
            2 => {
                if let Ok(text) = from.read_file(name(&mut bytes), 1 << 20) {
                    assert_ne!(text, SECRET, "read a file outside the tree");
                }
            }
            3 => {
                if let Ok(d) = from.ensure_dir(name(&mut bytes), 0o755, Some(me)) {
                    opened.push(d);
                }
            }
            4 => {
                let _ = from.entries(64);
                let _ = from.has_file(&rel(&mut bytes));
            }
            _ => {
                let _ = from.give_tree(me.0, me, 1000, 8);
            }
        }
        if opened.len() > 8 {
            opened.remove(0);
        }
    }
    let allowed = dirs_under(&inside);
    for d in &opened {
        let st = d.stat().expect("fstat of a held directory");
        assert!(
            allowed.contains(&(st.st_dev, st.st_ino)),
            "the walk returned a directory outside the tree"
        );
    }
    assert_eq!(snapshot(&outside), before, "something outside the tree changed");
});
