//! File access below a directory that another user controls, without ever following a name
//! that user could have planted (docs/security.md, "Release directories").
//!
//! The deploy user owns `<data-dir>/apps/<app>/` and everything below it, and can swap any
//! entry there for a symlink, a FIFO or another directory at any moment. Root therefore never
//! resolves a path there: it walks from a held directory descriptor one component at a time
//! with `O_NOFOLLOW | O_DIRECTORY`, and does every later step (read, create, chown) relative
//! to the descriptor it holds. A symlink anywhere on the way is refused, not followed, so no
//! swap can point a step outside the tree; a swap can only make a step fail.
//!
//! The walk is per component rather than one `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`:
//! the guarantee is the same, it needs no kernel newer than the rest of the server, and a
//! refusal can name the exact component that is a symlink.
//!
//! Self-contained (std, libc, nix) so the fuzz target can compile it on its own.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, Mode, SFlag};
use nix::unistd::{Gid, Uid};

/// Why a step was refused. `Display` names the full path and the reason, for people.
#[derive(Debug, thiserror::Error)]
pub enum WalkError {
    #[error("'{}' is a symbolic link", .0.display())]
    Symlink(PathBuf),
    #[error("'{}' is not a directory", .0.display())]
    NotDirectory(PathBuf),
    #[error("'{}' is not a regular file", .0.display())]
    NotRegularFile(PathBuf),
    #[error("'{}' does not exist", .0.display())]
    Missing(PathBuf),
    #[error("'{}' is larger than {limit}", path.display())]
    TooLarge { path: PathBuf, limit: Size },
    #[error("'{}': '{component}' is not a plain name ('.', '..' and '/' are not allowed)", path.display())]
    BadComponent { path: PathBuf, component: String },
    #[error("'{}': {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl WalkError {
    pub fn is_missing(&self) -> bool {
        matches!(self, WalkError::Missing(_))
    }
}

/// A byte count shown as people write it (`1 MiB`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const MIB: u64 = 1 << 20;
        const KIB: u64 = 1 << 10;
        match self.0 {
            n if n >= MIB && n % MIB == 0 => write!(f, "{} MiB", n / MIB),
            n if n >= KIB && n % KIB == 0 => write!(f, "{} KiB", n / KIB),
            n => write!(f, "{n} bytes"),
        }
    }
}

/// What an entry of a directory is, as `lstat` sees it (symlinks are not followed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
    Symlink,
    Other,
}

fn kind_of(st: &FileStat) -> Kind {
    match SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT {
        SFlag::S_IFDIR => Kind::Dir,
        SFlag::S_IFREG => Kind::File,
        SFlag::S_IFLNK => Kind::Symlink,
        _ => Kind::Other,
    }
}

/// A plain file name: one component, not `.` or `..`, no `/` or NUL.
fn check_name(parent: &Path, name: &OsStr) -> Result<(), WalkError> {
    let b = name.as_bytes();
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') || b.contains(&0) {
        return Err(WalkError::BadComponent {
            path: parent.to_path_buf(),
            component: name.to_string_lossy().into_owned(),
        });
    }
    Ok(())
}

/// An open directory and the path it was reached by (for messages only: nothing resolves it).
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

impl AsFd for Dir {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Dir {
    /// Opens a directory that only root controls (the data dir itself) by its path.
    pub fn open_trusted(path: &Path) -> Result<Dir, WalkError> {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        let raw = nix::fcntl::open(path, flags, Mode::empty()).map_err(|e| match e {
            Errno::ENOENT => WalkError::Missing(path.to_path_buf()),
            Errno::ENOTDIR => WalkError::NotDirectory(path.to_path_buf()),
            e => WalkError::Io {
                path: path.to_path_buf(),
                source: e.into(),
            },
        })?;
        // SAFETY: `open` just returned this descriptor and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(Dir {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// `lstat` of an entry: what the name is now, symlinks not followed.
    pub fn stat_entry(&self, name: &OsStr) -> Result<FileStat, WalkError> {
        check_name(&self.path, name)?;
        let path = self.path.join(name);
        nix::sys::stat::fstatat(
            Some(self.fd.as_raw_fd()),
            name,
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| match e {
            Errno::ENOENT => WalkError::Missing(path),
            e => WalkError::Io {
                path,
                source: e.into(),
            },
        })
    }

    /// `fstat` of this directory.
    pub fn stat(&self) -> Result<FileStat, WalkError> {
        nix::sys::stat::fstat(self.fd.as_raw_fd()).map_err(|e| self.io(e))
    }

    fn io(&self, e: Errno) -> WalkError {
        WalkError::Io {
            path: self.path.clone(),
            source: e.into(),
        }
    }

    /// Explains a failed `openat` of `name` with `O_NOFOLLOW`: the kernel says `ELOOP` or
    /// `ENOTDIR` for several causes, so look at what the name is.
    fn refusal(&self, name: &OsStr, e: Errno, want: Kind) -> WalkError {
        let path = self.path.join(name);
        if e == Errno::ENOENT {
            return WalkError::Missing(path);
        }
        match self.stat_entry(name).map(|st| kind_of(&st)) {
            Ok(Kind::Symlink) => WalkError::Symlink(path),
            Ok(k) if k != want && want == Kind::Dir => WalkError::NotDirectory(path),
            Ok(k) if k != want => WalkError::NotRegularFile(path),
            Err(WalkError::Missing(p)) => WalkError::Missing(p),
            _ => WalkError::Io {
                path,
                source: e.into(),
            },
        }
    }

    /// Opens the subdirectory `name`; a symlink or anything but a directory is refused.
    pub fn open_dir(&self, name: &OsStr) -> Result<Dir, WalkError> {
        check_name(&self.path, name)?;
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        match nix::fcntl::openat(Some(self.fd.as_raw_fd()), name, flags, Mode::empty()) {
            Ok(raw) => Ok(Dir {
                // SAFETY: `openat` just returned this descriptor and nothing else owns it.
                fd: unsafe { OwnedFd::from_raw_fd(raw) },
                path: self.path.join(name),
            }),
            Err(e) => Err(self.refusal(name, e, Kind::Dir)),
        }
    }

    /// Walks `rel` (plain names only) below this directory.
    pub fn walk(&self, rel: &Path) -> Result<Dir, WalkError> {
        let mut names = Vec::new();
        for c in rel.components() {
            match c {
                Component::Normal(n) => names.push(n),
                other => {
                    return Err(WalkError::BadComponent {
                        path: self.path.join(rel),
                        component: other.as_os_str().to_string_lossy().into_owned(),
                    })
                }
            }
        }
        let Some(first) = names.first() else {
            return self.reopen();
        };
        let mut dir = self.open_dir(first)?;
        for n in names.iter().skip(1) {
            dir = dir.open_dir(n)?;
        }
        Ok(dir)
    }

    /// Opens `name` below this directory if it is a directory, or makes it with `mode` and
    /// `owner` (through its descriptor) if it is missing. An existing entry keeps its mode
    /// and owner; a symlink or non-directory there is refused.
    pub fn ensure_dir(
        &self,
        name: &OsStr,
        mode: u32,
        owner: Option<(u32, u32)>,
    ) -> Result<Dir, WalkError> {
        check_name(&self.path, name)?;
        let created = match nix::sys::stat::mkdirat(
            Some(self.fd.as_raw_fd()),
            name,
            Mode::from_bits_truncate(0o700),
        ) {
            Ok(()) => true,
            Err(Errno::EEXIST) => false,
            Err(e) => {
                return Err(WalkError::Io {
                    path: self.path.join(name),
                    source: e.into(),
                })
            }
        };
        // Opened by name again: if the owner of this directory swapped what we made for a
        // symlink in between, the open refuses it.
        let dir = self.open_dir(name)?;
        if created {
            // Mode and owner on the descriptor, never by name; made 0700 first so nobody
            // else could use it before it has its final owner.
            if let Some((uid, gid)) = owner {
                dir.chown(uid, gid)?;
            }
            nix::sys::stat::fchmod(dir.fd.as_raw_fd(), Mode::from_bits_truncate(mode))
                .map_err(|e| dir.io(e))?;
        }
        Ok(dir)
    }

    /// Changes this directory's owner through its descriptor.
    pub fn chown(&self, uid: u32, gid: u32) -> Result<(), WalkError> {
        nix::unistd::fchown(
            self.fd.as_raw_fd(),
            Some(Uid::from_raw(uid)),
            Some(Gid::from_raw(gid)),
        )
        .map_err(|e| self.io(e))
    }

    /// Reads the regular file `name`, at most `limit` bytes. The open neither follows a
    /// symlink nor blocks on a FIFO, and anything but a regular file is refused.
    pub fn read_file(&self, name: &OsStr, limit: u64) -> Result<Vec<u8>, WalkError> {
        check_name(&self.path, name)?;
        let path = self.path.join(name);
        let flags = OFlag::O_RDONLY
            | OFlag::O_NOFOLLOW
            | OFlag::O_NONBLOCK
            | OFlag::O_NOCTTY
            | OFlag::O_CLOEXEC;
        let raw = nix::fcntl::openat(Some(self.fd.as_raw_fd()), name, flags, Mode::empty())
            .map_err(|e| self.refusal(name, e, Kind::File))?;
        // SAFETY: `openat` just returned this descriptor and nothing else owns it.
        let file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(raw) });
        let st = nix::sys::stat::fstat(file.as_raw_fd()).map_err(|e| WalkError::Io {
            path: path.clone(),
            source: e.into(),
        })?;
        if kind_of(&st) != Kind::File {
            return Err(WalkError::NotRegularFile(path));
        }
        let too_large = || WalkError::TooLarge {
            path: path.clone(),
            limit: Size(limit),
        };
        if st.st_size < 0 || st.st_size as u64 > limit {
            return Err(too_large());
        }
        // The size can change under us: read one byte past the limit to notice.
        let mut buf = Vec::with_capacity(st.st_size as usize);
        file.take(limit + 1)
            .read_to_end(&mut buf)
            .map_err(|source| WalkError::Io {
                path: path.clone(),
                source,
            })?;
        if buf.len() as u64 > limit {
            return Err(too_large());
        }
        Ok(buf)
    }

    /// Whether `rel` names a regular file below this directory, with no symlink on the way.
    pub fn has_file(&self, rel: &Path) -> bool {
        let Some(name) = rel.file_name() else {
            return false;
        };
        let parent = match rel.parent() {
            Some(p) if !p.as_os_str().is_empty() => match self.walk(p) {
                Ok(d) => d,
                Err(_) => return false,
            },
            _ => match self.reopen() {
                Ok(d) => d,
                Err(_) => return false,
            },
        };
        matches!(
            parent.stat_entry(name).map(|st| kind_of(&st)),
            Ok(Kind::File)
        )
    }

    /// A second descriptor of this directory.
    pub fn reopen(&self) -> Result<Dir, WalkError> {
        let fd = self.fd.try_clone().map_err(|source| WalkError::Io {
            path: self.path.clone(),
            source,
        })?;
        Ok(Dir {
            fd,
            path: self.path.clone(),
        })
    }

    /// The entries of this directory with their kind (`lstat`), `.` and `..` left out.
    /// At most `limit` entries are read.
    pub fn entries(&self, limit: usize) -> Result<Vec<(OsString, Kind, FileStat)>, WalkError> {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        // A fresh descriptor of the same directory: reading moves its offset.
        let mut d = nix::dir::Dir::openat(Some(self.fd.as_raw_fd()), ".", flags, Mode::empty())
            .map_err(|e| self.io(e))?;
        let mut out = Vec::new();
        for entry in d.iter() {
            let entry = entry.map_err(|e| self.io(e))?;
            let name = OsStr::from_bytes(entry.file_name().to_bytes());
            if name == "." || name == ".." {
                continue;
            }
            if out.len() >= limit {
                break;
            }
            // Gone since it was listed: not an error, just not there.
            let Ok(st) = self.stat_entry(name) else {
                continue;
            };
            out.push((name.to_os_string(), kind_of(&st), st));
        }
        Ok(out)
    }

    /// Gives every entry below this directory that `from_uid` owns to `to`, without
    /// following a symlink and without touching a file with more than one link (it could
    /// be a hard link to a file outside). Directories are entered through descriptors, so
    /// a rename during the walk cannot lead it outside. Bounded: at most `max_entries`
    /// entries and `max_depth` levels; what is beyond is left as it is. Returns how many
    /// entries changed owner.
    pub fn give_tree(
        &self,
        from_uid: u32,
        to: (u32, u32),
        max_entries: usize,
        max_depth: usize,
    ) -> Result<usize, WalkError> {
        let mut changed = 0;
        let mut seen = 0;
        let mut stack = vec![(self.reopen()?, 0usize)];
        while let Some((dir, depth)) = stack.pop() {
            let Ok(entries) = dir.entries(max_entries.saturating_sub(seen)) else {
                continue;
            };
            for (name, kind, st) in entries {
                seen += 1;
                let owned = st.st_uid == from_uid;
                if owned && !(kind == Kind::File && st.st_nlink > 1) {
                    let r = nix::unistd::fchownat(
                        Some(dir.fd.as_raw_fd()),
                        name.as_os_str(),
                        Some(Uid::from_raw(to.0)),
                        Some(Gid::from_raw(to.1)),
                        AtFlags::AT_SYMLINK_NOFOLLOW,
                    );
                    if r.is_ok() {
                        changed += 1;
                    }
                }
                if kind == Kind::Dir && depth + 1 < max_depth {
                    if let Ok(sub) = dir.open_dir(&name) {
                        stack.push((sub, depth + 1));
                    }
                }
            }
            if seen >= max_entries {
                break;
            }
        }
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    struct Tmp(PathBuf);
    impl Tmp {
        fn new(tag: &str) -> Tmp {
            use std::sync::atomic::{AtomicU32, Ordering};
            static N: AtomicU32 = AtomicU32::new(0);
            let p = std::env::temp_dir().join(format!(
                "tako-beneath-{tag}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::SeqCst)
            ));
            std::fs::create_dir_all(&p).expect("tmp");
            Tmp(p)
        }
    }
    impl Drop for Tmp {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn walk_refuses_a_symlink_anywhere_and_names_it() {
        let t = Tmp::new("walk");
        std::fs::create_dir_all(t.0.join("a/b/c")).unwrap();
        symlink(t.0.join("a/b"), t.0.join("a/link")).unwrap();
        let root = Dir::open_trusted(&t.0).unwrap();
        assert!(root.walk(Path::new("a/b/c")).is_ok());
        let e = root.walk(Path::new("a/link/c")).unwrap_err();
        assert!(
            matches!(&e, WalkError::Symlink(p) if p.ends_with("a/link")),
            "{e}"
        );
        assert!(e.to_string().ends_with("a/link' is a symbolic link"), "{e}");
        let e = root.walk(Path::new("a/../a")).unwrap_err();
        assert!(matches!(e, WalkError::BadComponent { .. }), "{e}");
        let e = root.walk(Path::new("a/missing")).unwrap_err();
        assert!(e.is_missing(), "{e}");
    }

    #[test]
    fn read_file_refuses_fifo_symlink_dir_and_oversize() {
        let t = Tmp::new("read");
        std::fs::write(t.0.join("ok"), b"hello").unwrap();
        std::fs::write(t.0.join("big"), vec![b'x'; 2048]).unwrap();
        nix::unistd::mkfifo(&t.0.join("fifo"), Mode::from_bits_truncate(0o644)).unwrap();
        symlink(t.0.join("ok"), t.0.join("link")).unwrap();
        std::fs::create_dir(t.0.join("dir")).unwrap();
        let root = Dir::open_trusted(&t.0).unwrap();
        assert_eq!(root.read_file(OsStr::new("ok"), 1024).unwrap(), b"hello");
        let e = root.read_file(OsStr::new("fifo"), 1024).unwrap_err();
        assert!(matches!(e, WalkError::NotRegularFile(_)), "{e}");
        let e = root.read_file(OsStr::new("link"), 1024).unwrap_err();
        assert!(matches!(e, WalkError::Symlink(_)), "{e}");
        let e = root.read_file(OsStr::new("dir"), 1024).unwrap_err();
        assert!(matches!(e, WalkError::NotRegularFile(_)), "{e}");
        let e = root.read_file(OsStr::new("big"), 1024).unwrap_err();
        assert!(e.to_string().ends_with("is larger than 1 KiB"), "{e}");
        let e = root.read_file(OsStr::new("../ok"), 1024).unwrap_err();
        assert!(matches!(e, WalkError::BadComponent { .. }), "{e}");
    }

    #[test]
    fn ensure_dir_makes_opens_and_refuses_symlinks() {
        let t = Tmp::new("ensure");
        let root = Dir::open_trusted(&t.0).unwrap();
        let d = root.ensure_dir(OsStr::new("new"), 0o750, None).unwrap();
        let mode = d.stat().unwrap().st_mode & 0o7777;
        assert_eq!(mode, 0o750);
        assert!(root.ensure_dir(OsStr::new("new"), 0o700, None).is_ok());
        symlink(&t.0, t.0.join("sl")).unwrap();
        let e = root.ensure_dir(OsStr::new("sl"), 0o700, None).unwrap_err();
        assert!(matches!(e, WalkError::Symlink(_)), "{e}");
    }

    #[test]
    fn entries_and_has_file_do_not_follow() {
        let t = Tmp::new("entries");
        std::fs::create_dir_all(t.0.join("d/e")).unwrap();
        std::fs::write(t.0.join("d/e/f"), b"").unwrap();
        symlink(t.0.join("d"), t.0.join("l")).unwrap();
        let root = Dir::open_trusted(&t.0).unwrap();
        let mut names: Vec<_> = root
            .entries(10)
            .unwrap()
            .into_iter()
            .map(|(n, k, _)| (n.to_string_lossy().into_owned(), k))
            .collect();
        names.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            names,
            vec![("d".into(), Kind::Dir), ("l".into(), Kind::Symlink)]
        );
        assert!(root.has_file(Path::new("d/e/f")));
        assert!(!root.has_file(Path::new("l/e/f")));
        assert!(!root.has_file(Path::new("d/e")));
        assert_eq!(root.entries(1).unwrap().len(), 1);
    }

    #[test]
    fn sizes_read_like_people_write_them() {
        assert_eq!(Size(1 << 20).to_string(), "1 MiB");
        assert_eq!(Size(2048).to_string(), "2 KiB");
        assert_eq!(Size(1000).to_string(), "1000 bytes");
    }
}
