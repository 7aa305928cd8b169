//! The primary's data-dir lock (docs/architecture.md, "State"): an exclusive `flock` on
//! `<data-dir>/tako-server.lock`, held for the life of the value.

use std::fs::{File, OpenOptions, Permissions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use super::error::StateError;

/// File name of the lock inside the data dir.
pub const LOCK_FILE: &str = "tako-server.lock";

/// Held by the primary for its whole life; dropping it releases the lock. The file itself is
/// left in place: removing it would let a second process lock a fresh inode.
#[derive(Debug)]
pub struct DataDirLock {
    _lock: Flock<File>,
}

impl DataDirLock {
    /// Takes the lock without waiting and writes our pid into the file. A held lock gives
    /// `Another tako-server (pid <pid>) is already running with data dir <dir>`.
    pub fn acquire(data_dir: &Path) -> Result<DataDirLock, StateError> {
        let path = data_dir.join(LOCK_FILE);
        let lock_err = |err: String| StateError::LockFile {
            path: path.clone(),
            err,
        };
        // No truncation at open: the holder's pid must survive until we own the lock.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(&path)
            .map_err(|e| lock_err(e.to_string()))?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((mut file, Errno::EWOULDBLOCK)) => {
                let mut text = String::new();
                let pid = match file.read_to_string(&mut text) {
                    Ok(_) if !text.trim().is_empty() => text.trim().to_string(),
                    _ => "unknown".to_string(),
                };
                return Err(StateError::AlreadyRunning {
                    pid,
                    dir: data_dir.to_path_buf(),
                });
            }
            Err((_, errno)) => return Err(lock_err(errno.to_string())),
        };
        let write_pid = |f: &mut File| -> std::io::Result<()> {
            f.set_len(0)?;
            f.seek(SeekFrom::Start(0))?;
            writeln!(f, "{}", std::process::id())?;
            f.sync_all()?;
            f.set_permissions(Permissions::from_mode(0o644))
        };
        write_pid(&mut lock).map_err(|e| lock_err(e.to_string()))?;
        Ok(DataDirLock { _lock: lock })
    }

    /// Takes over the lock held through an inherited descriptor (in-place re-exec): the
    /// descriptor shares the old master's open file description, so the lock is already ours.
    pub fn adopt(data_dir: &Path, fd: std::os::fd::OwnedFd) -> Result<DataDirLock, StateError> {
        let path = data_dir.join(LOCK_FILE);
        let file = File::from(fd);
        let mut lock =
            Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| {
                StateError::AlreadyRunning {
                    pid: format!("unknown ({errno})"),
                    dir: data_dir.to_path_buf(),
                }
            })?;
        let mut write_pid = || -> std::io::Result<()> {
            lock.set_len(0)?;
            lock.seek(SeekFrom::Start(0))?;
            writeln!(lock, "{}", std::process::id())?;
            lock.sync_all()
        };
        write_pid().map_err(|e| StateError::LockFile {
            path: path.clone(),
            err: e.to_string(),
        })?;
        Ok(DataDirLock { _lock: lock })
    }

    /// The descriptor of the locked file, to hand to a re-executed successor.
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&*self._lock)
    }
}
