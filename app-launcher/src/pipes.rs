//! Draining a child's stdout or stderr until EOF. Reading never waits for the log writer, so an
//! app that prints a lot never blocks on a full pipe.

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::task::JoinHandle;

use crate::logline::{format_line, LineSplitter};
use crate::logs::LogSink;
use crate::output::{Capture, Stream};

const READ_CHUNK: usize = 64 * 1024;

/// Where the bytes of one pipe go.
pub trait PipeSink: Send + 'static {
    fn data(&mut self, bytes: &[u8]);
    fn eof(&mut self);
}

/// Reads `fd` until EOF on a task. The task ends when every process holding the write end
/// (grandchildren included) has closed it.
pub fn drain(fd: OwnedFd, mut sink: impl PipeSink) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut rx = match pipe::Receiver::from_owned_fd(fd) {
            Ok(rx) => rx,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read an app output pipe");
                return;
            }
        };
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            match rx.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => sink.data(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "reading app output failed");
                    break;
                }
            }
        }
        sink.eof();
    })
}

pub fn lock(capture: &Mutex<Capture>) -> std::sync::MutexGuard<'_, Capture> {
    capture.lock().unwrap_or_else(|e| e.into_inner())
}

/// An instance's stream: lines to `app.log`, the first bytes to the startup capture.
pub struct InstanceOutput {
    pub stream: Stream,
    pub version: Arc<str>,
    pub instance_id: u32,
    pub log_dir: Arc<PathBuf>,
    pub logs: LogSink,
    pub capture: Arc<Mutex<Capture>>,
    pub splitter: LineSplitter,
}

impl InstanceOutput {
    fn write_line(&self, line: &[u8]) {
        let formatted = format_line(
            time::OffsetDateTime::now_utc(),
            &self.version,
            self.instance_id,
            self.stream,
            line,
        );
        self.logs.app_line(&self.log_dir, formatted);
    }
}

impl PipeSink for InstanceOutput {
    fn data(&mut self, bytes: &[u8]) {
        lock(&self.capture).push(self.stream, bytes);
        let mut splitter = std::mem::take(&mut self.splitter);
        splitter.push(bytes, &mut |line| self.write_line(line));
        self.splitter = splitter;
    }

    fn eof(&mut self) {
        let mut splitter = std::mem::take(&mut self.splitter);
        splitter.finish(&mut |line| self.write_line(line));
    }
}

/// An install's stream: raw bytes to `install.log`, the first bytes to the capture.
pub struct InstallOutput {
    pub stream: Stream,
    pub request_id: u64,
    pub logs: LogSink,
    pub capture: Arc<Mutex<Capture>>,
}

impl PipeSink for InstallOutput {
    fn data(&mut self, bytes: &[u8]) {
        lock(&self.capture).push(self.stream, bytes);
        self.logs.install_data(self.request_id, bytes.to_vec());
    }

    fn eof(&mut self) {}
}
