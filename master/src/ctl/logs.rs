//! `ctl logs <app> [-f] [-n N]`: the app's output as the launcher writes it,
//! `<data-dir>/apps/<app>/shared/logs/app.log`, rotated to `app.log.1` … `app.log.5` at
//! 10 MiB (docs/apps.md "App logs"). The files are read directly, so this works while the
//! server is down too; it needs the right to read them (root or the deploy user).

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How often `-f` looks for new lines and for a rotation. A poll, not inotify: it also
/// sees a file replaced under a directory it could not watch, and costs one `stat` a tick.
const FOLLOW_TICK: Duration = Duration::from_millis(200);
/// Bytes read per step when looking backwards for the last lines.
const CHUNK: u64 = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum LogsError {
    #[error("'{0}' is not an app name: {1}")]
    BadName(String, String),
    #[error("no log for app '{app}' in {}: is the app deployed on this server, and is --data-dir the server's data directory?", dir.display())]
    NoLog { app: String, dir: PathBuf },
    #[error("cannot read {}: permission denied; app logs are readable by root and the deploy user (tako)", path.display())]
    Denied { path: PathBuf },
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
}

fn read_error(path: &Path, source: io::Error) -> LogsError {
    if source.kind() == io::ErrorKind::PermissionDenied {
        LogsError::Denied {
            path: path.to_path_buf(),
        }
    } else {
        LogsError::Read {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The byte offset in `f` (of length `len`) where its last `n` lines start, and how many
/// lines were found (fewer than `n` when the file has fewer).
fn tail_start(f: &mut File, len: u64, n: usize) -> io::Result<(u64, usize)> {
    if n == 0 || len == 0 {
        return Ok((len, 0));
    }
    let mut end = len;
    let mut found = 0usize;
    // A last line without its newline still counts as a line.
    let mut skip_final_newline = true;
    let mut buf = vec![0u8; CHUNK as usize];
    while end > 0 {
        let start = end.saturating_sub(CHUNK);
        let chunk = &mut buf[..(end - start) as usize];
        f.seek(SeekFrom::Start(start))?;
        f.read_exact(chunk)?;
        for i in (0..chunk.len()).rev() {
            if chunk[i] != b'\n' {
                skip_final_newline = false;
                continue;
            }
            if skip_final_newline {
                skip_final_newline = false;
                continue;
            }
            found += 1;
            if found == n {
                return Ok((start + i as u64 + 1, found));
            }
        }
        end = start;
    }
    // The first line of the file has no newline before it.
    Ok((0, found + 1))
}

/// Copies `f` from `from` to its current end into `out`; returns the new offset.
fn copy_from(f: &mut File, from: u64, out: &mut dyn Write) -> io::Result<u64> {
    f.seek(SeekFrom::Start(from))?;
    let n = io::copy(f, out)?;
    out.flush()?;
    Ok(from + n)
}

fn open(path: &Path) -> Result<Option<File>, LogsError> {
    match File::open(path) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(read_error(path, e)),
    }
}

/// Prints the last `lines` lines (reaching into `app.log.1` when `app.log` has fewer),
/// then with `follow` keeps printing what is appended, across rotations, until killed.
pub fn run(
    data_dir: &Path,
    app: &str,
    lines: usize,
    follow: bool,
    out: &mut dyn Write,
) -> Result<(), LogsError> {
    tako_protocol::validate::validate_app_name(app)
        .map_err(|e| LogsError::BadName(app.to_string(), e.to_string()))?;
    let dir = data_dir.join("apps").join(app).join("shared").join("logs");
    let current = dir.join("app.log");
    let previous = dir.join("app.log.1");
    let mut file = open(&current)?;
    if file.is_none() && !dir.is_dir() {
        // Tell a missing directory from one we may not look into.
        if let Err(e) = std::fs::read_dir(&dir) {
            return Err(match e.kind() {
                io::ErrorKind::NotFound => LogsError::NoLog {
                    app: app.to_string(),
                    dir,
                },
                _ => read_error(&dir, e),
            });
        }
    }
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |e: io::Error| read_error(&path, e)
    };
    let (mut offset, mut inode) = (0u64, None);
    let mut shown = 0usize;
    if let Some(f) = file.as_mut() {
        let meta = f.metadata().map_err(io_err(&current))?;
        let (start, found) = tail_start(f, meta.len(), lines).map_err(io_err(&current))?;
        shown = found;
        inode = Some(meta.ino());
        offset = start;
    }
    if shown < lines {
        if let Some(mut old) = open(&previous)? {
            let len = old.metadata().map_err(io_err(&previous))?.len();
            let (start, _) = tail_start(&mut old, len, lines - shown).map_err(io_err(&previous))?;
            copy_from(&mut old, start, out).map_err(stdout_error)?;
        }
    }
    if let Some(f) = file.as_mut() {
        offset = copy_from(f, offset, out).map_err(stdout_error)?;
    }
    if !follow {
        return Ok(());
    }
    loop {
        std::thread::sleep(FOLLOW_TICK);
        // What the open file got since the last look: after a rotation, the tail of the
        // renamed file, so no line is lost between the two.
        if let Some(f) = file.as_mut() {
            let len = f.metadata().map_err(io_err(&current))?.len();
            if len < offset {
                // Truncated in place: start over from its beginning.
                offset = 0;
            }
            offset = copy_from(f, offset, out).map_err(stdout_error)?;
        }
        let now = match std::fs::metadata(&current) {
            Ok(m) => Some(m.ino()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(read_error(&current, e)),
        };
        if now.is_some() && now != inode {
            // Rotated (or made for the first time): read the new file from its start.
            file = open(&current)?;
            inode = now;
            offset = 0;
            if let Some(f) = file.as_mut() {
                offset = copy_from(f, 0, out).map_err(stdout_error)?;
            }
        }
    }
}

/// stdout failing (a closed pipe: `ctl logs web | head`) is how a reader says it is done.
fn stdout_error(e: io::Error) -> LogsError {
    LogsError::Read {
        path: PathBuf::from("stdout"),
        source: e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tako-ctl-logs-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("apps/web/shared/logs")).unwrap();
        d
    }

    fn tail(d: &Path, n: usize) -> String {
        let mut out = Vec::new();
        run(d, "web", n, false, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn last_lines_reach_into_the_rotated_file() {
        let d = dir("tail");
        let logs = d.join("apps/web/shared/logs");
        std::fs::write(logs.join("app.log.1"), "a\nb\nc\n").unwrap();
        std::fs::write(logs.join("app.log"), "d\ne\n").unwrap();
        assert_eq!(tail(&d, 1), "e\n");
        assert_eq!(tail(&d, 2), "d\ne\n");
        assert_eq!(tail(&d, 4), "b\nc\nd\ne\n");
        assert_eq!(tail(&d, 0), "");
        std::fs::write(logs.join("app.log"), "d\ne").unwrap();
        assert_eq!(tail(&d, 1), "e");
        assert_eq!(tail(&d, 2), "d\ne");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn long_files_are_read_backwards_in_chunks() {
        let d = dir("long");
        let logs = d.join("apps/web/shared/logs");
        let text: String = (0..50_000).map(|i| format!("line {i}\n")).collect();
        std::fs::write(logs.join("app.log"), &text).unwrap();
        assert_eq!(tail(&d, 3), "line 49997\nline 49998\nline 49999\n");
        let all = tail(&d, 100_000);
        assert_eq!(all, text);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn unknown_app_and_bad_name() {
        let d = dir("missing");
        let mut out = Vec::new();
        let e = run(&d, "nope", 10, false, &mut out).unwrap_err();
        assert!(matches!(e, LogsError::NoLog { .. }), "{e}");
        let e = run(&d, "../etc", 10, false, &mut out).unwrap_err();
        assert!(matches!(e, LogsError::BadName(..)), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }
}
