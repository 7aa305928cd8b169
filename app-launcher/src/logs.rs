//! The log writer: one dedicated thread does all log file I/O (docs/apps.md, "App logs").
//!
//! In root mode the launcher has no CAP_DAC_OVERRIDE, so it cannot write into the deploy
//! user's 0750 log directories as plain uid 0. The writer thread takes the deploy user's
//! filesystem ids (`setfsuid`/`setfsgid`, allowed by CAP_SETUID/CAP_SETGID). Those ids are
//! per thread, which is why every file operation must happen on this one thread.

use std::collections::HashMap;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tako_ipc::RunAs;

/// Rotated files kept beside `app.log`.
pub const KEEP_ROTATED: u32 = 5;
/// Bytes queued for the writer before new lines are dropped: a stalled disk must cost
/// bounded memory, and reading the pipes never stops.
const MAX_PENDING_BYTES: usize = 64 * 1024 * 1024;
const WARN_EVERY: Duration = Duration::from_secs(60);
/// After a failed open, retry no sooner than this, so a full disk costs one syscall a second.
const REOPEN_AFTER: Duration = Duration::from_secs(1);
const LOG_FILE_MODE: u32 = 0o640;
const LOG_DIR_MODE: u32 = 0o750;

enum LogMsg {
    AppLine { dir: Arc<PathBuf>, line: Vec<u8> },
    InstallBegin { id: u64, dir: PathBuf },
    InstallData { id: u64, data: Vec<u8> },
    InstallEnd { id: u64 },
    Close(mpsc::Sender<()>),
}

struct Shared {
    pending: AtomicUsize,
    dropped: AtomicU64,
}

/// A cheap handle to the writer thread. Sending never blocks.
#[derive(Clone)]
pub struct LogSink {
    tx: mpsc::Sender<LogMsg>,
    shared: Arc<Shared>,
}

/// The writer thread itself; [`LogWriterThread::close`] flushes and joins it.
pub struct LogWriterThread {
    sink: LogSink,
    handle: Option<JoinHandle<()>>,
}

impl LogWriterThread {
    pub fn start(owner: Option<RunAs>, rotate_bytes: u64) -> io::Result<Self> {
        let (tx, rx) = mpsc::channel();
        let shared = Arc::new(Shared {
            pending: AtomicUsize::new(0),
            dropped: AtomicU64::new(0),
        });
        let thread_shared = shared.clone();
        let handle = std::thread::Builder::new()
            .name("tako-log-writer".into())
            .spawn(move || {
                if let Some(owner) = &owner {
                    take_fs_ids(owner);
                }
                Writer::new(rotate_bytes, thread_shared).run(rx);
            })?;
        Ok(Self {
            sink: LogSink { tx, shared },
            handle: Some(handle),
        })
    }

    pub fn sink(&self) -> LogSink {
        self.sink.clone()
    }

    /// Writes out what is queued and stops the thread, waiting at most `bound`.
    pub fn close(mut self, bound: Duration) {
        let (ack_tx, ack_rx) = mpsc::channel();
        if self.sink.tx.send(LogMsg::Close(ack_tx)).is_ok() && ack_rx.recv_timeout(bound).is_ok() {
            if let Some(h) = self.handle.take() {
                let _ = h.join();
            }
        } else {
            tracing::warn!("log writer did not finish in time; some app output may be lost");
        }
    }
}

fn take_fs_ids(owner: &RunAs) {
    // SAFETY: plain syscalls on this thread's own credentials.
    let (gid_now, uid_now) = unsafe {
        libc::setfsgid(owner.gid);
        libc::setfsuid(owner.uid);
        // Called with -1 they change nothing and return the current value: the only way
        // to learn whether the switch happened.
        (libc::setfsgid(u32::MAX), libc::setfsuid(u32::MAX))
    };
    if uid_now as u32 != owner.uid || gid_now as u32 != owner.gid {
        tracing::error!(
            user = %owner.name,
            uid = owner.uid,
            gid = owner.gid,
            "cannot take the log owner's filesystem ids; app log files may not be writable"
        );
    }
}

impl LogSink {
    fn send(&self, msg: LogMsg, bytes: usize) {
        let shared = &self.shared;
        if shared.pending.load(Ordering::Relaxed) + bytes > MAX_PENDING_BYTES {
            shared.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        shared.pending.fetch_add(bytes, Ordering::Relaxed);
        if self.tx.send(msg).is_err() {
            shared.pending.fetch_sub(bytes, Ordering::Relaxed);
            shared.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Queues one formatted `app.log` line for `<dir>/app.log`.
    pub fn app_line(&self, dir: &Arc<PathBuf>, line: Vec<u8>) {
        let n = line.len();
        self.send(
            LogMsg::AppLine {
                dir: dir.clone(),
                line,
            },
            n,
        );
    }

    /// Truncates `<dir>/install.log` for install `id`. Sent before any of its data.
    pub fn install_begin(&self, id: u64, dir: PathBuf) {
        // Control messages are never dropped: they are tiny and order the data.
        let _ = self.tx.send(LogMsg::InstallBegin { id, dir });
    }

    pub fn install_data(&self, id: u64, data: Vec<u8>) {
        let n = data.len();
        self.send(LogMsg::InstallData { id, data }, n);
    }

    pub fn install_end(&self, id: u64) {
        let _ = self.tx.send(LogMsg::InstallEnd { id });
    }
}

struct AppLog {
    file: Option<BufWriter<File>>,
    size: u64,
    retry_at: Option<Instant>,
}

struct Writer {
    rotate_bytes: u64,
    shared: Arc<Shared>,
    apps: HashMap<Arc<PathBuf>, AppLog>,
    installs: HashMap<u64, Option<File>>,
    reported_drops: u64,
    last_warn: Option<Instant>,
}

impl Writer {
    fn new(rotate_bytes: u64, shared: Arc<Shared>) -> Self {
        Self {
            rotate_bytes,
            shared,
            apps: HashMap::new(),
            installs: HashMap::new(),
            reported_drops: 0,
            last_warn: None,
        }
    }

    fn run(mut self, rx: mpsc::Receiver<LogMsg>) {
        while let Ok(first) = rx.recv() {
            let mut next = Some(first);
            // Batch what is queued, then flush once: one write per batch, not per line.
            while let Some(msg) = next {
                if let LogMsg::Close(ack) = msg {
                    self.flush_all();
                    let _ = ack.send(());
                    return;
                }
                self.handle(msg);
                next = rx.try_recv().ok();
            }
            self.flush_all();
            self.warn_about_drops();
        }
        self.flush_all();
    }

    fn handle(&mut self, msg: LogMsg) {
        match msg {
            LogMsg::AppLine { dir, line } => {
                self.shared.pending.fetch_sub(line.len(), Ordering::Relaxed);
                self.write_app_line(dir, &line);
            }
            LogMsg::InstallBegin { id, dir } => {
                let file = match open_log(&dir, "install.log", true) {
                    Ok(f) => Some(f),
                    Err(e) => {
                        tracing::warn!(dir = %dir.display(), error = %e, "cannot open install.log");
                        None
                    }
                };
                self.installs.insert(id, file);
            }
            LogMsg::InstallData { id, data } => {
                self.shared.pending.fetch_sub(data.len(), Ordering::Relaxed);
                let failed = match self.installs.get_mut(&id) {
                    Some(Some(f)) => f.write_all(&data).is_err(),
                    _ => true,
                };
                if failed {
                    self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            LogMsg::InstallEnd { id } => {
                self.installs.remove(&id);
            }
            LogMsg::Close(_) => {}
        }
    }

    fn write_app_line(&mut self, dir: Arc<PathBuf>, line: &[u8]) {
        let log = self.apps.entry(dir.clone()).or_insert(AppLog {
            file: None,
            size: 0,
            retry_at: None,
        });
        if log.file.is_none() {
            if log.retry_at.is_some_and(|t| Instant::now() < t) {
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            match open_app_log(&dir) {
                Ok((file, size)) => {
                    log.file = Some(BufWriter::with_capacity(64 * 1024, file));
                    log.size = size;
                    log.retry_at = None;
                }
                Err(e) => {
                    tracing::debug!(dir = %dir.display(), error = %e, "cannot open app.log");
                    log.retry_at = Some(Instant::now() + REOPEN_AFTER);
                    self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }
        let Some(file) = log.file.as_mut() else {
            return;
        };
        if file.write_all(line).is_err() {
            // The buffer may hold an unknown part of the line: start over with a fresh
            // handle later rather than guess.
            log.file = None;
            log.retry_at = Some(Instant::now() + REOPEN_AFTER);
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        log.size += line.len() as u64;
        if log.size > self.rotate_bytes {
            let flushed = file.flush();
            log.file = None;
            log.size = 0;
            if let Err(e) = flushed.and_then(|_| rotate(&dir, KEEP_ROTATED)) {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot rotate app.log");
                log.retry_at = Some(Instant::now() + REOPEN_AFTER);
            }
        }
    }

    fn flush_all(&mut self) {
        for (dir, log) in self.apps.iter_mut() {
            if let Some(file) = log.file.as_mut() {
                if let Err(e) = file.flush() {
                    tracing::debug!(dir = %dir.display(), error = %e, "cannot flush app.log");
                    log.file = None;
                    log.retry_at = Some(Instant::now() + REOPEN_AFTER);
                    self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    fn warn_about_drops(&mut self) {
        let dropped = self.shared.dropped.load(Ordering::Relaxed);
        if dropped == self.reported_drops {
            return;
        }
        if self.last_warn.is_some_and(|t| t.elapsed() < WARN_EVERY) {
            return;
        }
        tracing::warn!(
            dropped_since_last_warning = dropped - self.reported_drops,
            dropped_total = dropped,
            "app log lines were dropped because they could not be written"
        );
        self.reported_drops = dropped;
        self.last_warn = Some(Instant::now());
    }
}

fn open_log(dir: &Path, name: &str, truncate: bool) -> io::Result<File> {
    DirBuilder::new()
        .recursive(true)
        .mode(LOG_DIR_MODE)
        .create(dir)?;
    let mut opts = OpenOptions::new();
    opts.create(true).mode(LOG_FILE_MODE);
    if truncate {
        opts.write(true).truncate(true);
    } else {
        opts.append(true);
    }
    opts.open(dir.join(name))
}

fn open_app_log(dir: &Path) -> io::Result<(File, u64)> {
    let file = open_log(dir, "app.log", false)?;
    let size = file.metadata()?.len();
    Ok((file, size))
}

fn rotated_name(dir: &Path, n: u32) -> PathBuf {
    dir.join(format!("app.log.{n}"))
}

/// Shifts `app.log.N` to `app.log.N+1` (dropping the one past `keep`) and `app.log` to
/// `app.log.1`.
pub fn rotate(dir: &Path, keep: u32) -> io::Result<()> {
    if keep == 0 {
        return fs::remove_file(dir.join("app.log"));
    }
    match fs::remove_file(rotated_name(dir, keep)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    for n in (1..keep).rev() {
        match fs::rename(rotated_name(dir, n), rotated_name(dir, n + 1)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    fs::rename(dir.join("app.log"), rotated_name(dir, 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "tako-launcher-logs-{tag}-{}-{:?}",
            std::process::id(),
            Instant::now()
        ));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn read(p: PathBuf) -> String {
        fs::read_to_string(p).unwrap_or_default()
    }

    #[test]
    fn rotate_shifts_and_keeps_five() {
        let dir = temp_dir("rotate");
        fs::create_dir_all(&dir).unwrap();
        for round in 0..7 {
            fs::write(dir.join("app.log"), format!("round {round}")).unwrap();
            rotate(&dir, KEEP_ROTATED).unwrap();
        }
        assert!(!dir.join("app.log").exists());
        assert_eq!(read(dir.join("app.log.1")), "round 6");
        assert_eq!(read(dir.join("app.log.5")), "round 2");
        assert!(!dir.join("app.log.6").exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn writer_creates_dir_rotates_and_sets_modes() {
        let dir = Arc::new(temp_dir("writer").join("nested/logs"));
        let thread = LogWriterThread::start(None, 100).unwrap();
        let sink = thread.sink();
        for i in 0..12 {
            sink.app_line(&dir, format!("line {i:02} ........\n").into_bytes());
        }
        sink.install_begin(9, (*dir).clone());
        sink.install_data(9, b"installing\n".to_vec());
        sink.install_end(9);
        thread.close(Duration::from_secs(5));

        let dir_mode = fs::metadata(&*dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(dir_mode, 0o750);
        let file_mode = fs::metadata(dir.join("app.log.1"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(file_mode & 0o777, 0o640);
        // 17-byte lines, rotation once past 100 bytes: 6 lines per file.
        assert_eq!(read(dir.join("app.log.2")).lines().count(), 6);
        assert!(read(dir.join("app.log.1")).ends_with("line 11 ........\n"));
        assert_eq!(read(dir.join("install.log")), "installing\n");
        fs::remove_dir_all(dir.parent().unwrap().parent().unwrap()).unwrap();
    }

    #[test]
    fn install_log_is_truncated_per_install() {
        let dir = temp_dir("install");
        let thread = LogWriterThread::start(None, 1 << 20).unwrap();
        let sink = thread.sink();
        sink.install_begin(1, dir.clone());
        sink.install_data(1, b"first run, long output\n".to_vec());
        sink.install_end(1);
        sink.install_begin(2, dir.clone());
        sink.install_data(2, b"second\n".to_vec());
        sink.install_end(2);
        thread.close(Duration::from_secs(5));
        assert_eq!(read(dir.join("install.log")), "second\n");
        fs::remove_dir_all(&dir).unwrap();
    }
}
