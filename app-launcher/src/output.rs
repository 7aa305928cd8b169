//! Output kept in memory for error messages: the first bytes of each stream during startup or
//! of an install (docs/apps.md, "Startup", "Install step"). The trimming rule is the shared one
//! in `tako_ipc::output`, which the master also applies to install output.

use tako_ipc::output::summarize;

use crate::redact::Redactor;

/// Bytes kept per stream while an instance starts.
pub const STARTUP_CAPTURE_BYTES: usize = 4096;
/// Bytes kept per stream of an install: enough for 400 characters after trimming.
pub const INSTALL_CAPTURE_BYTES: usize = 16 * 1024;

/// Which pipe bytes came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Out,
    Err,
}

impl Stream {
    /// The word in `app.log` lines.
    pub fn label(self) -> &'static str {
        match self {
            Stream::Out => "out",
            Stream::Err => "err",
        }
    }
}

/// The first `limit` bytes of stdout and of stderr.
#[derive(Debug)]
pub struct Capture {
    out: Vec<u8>,
    err: Vec<u8>,
    limit: usize,
    active: bool,
    redact: Redactor,
}

impl Capture {
    pub fn new(limit: usize) -> Self {
        Self {
            out: Vec::new(),
            err: Vec::new(),
            limit,
            active: true,
            redact: Redactor::default(),
        }
    }

    /// The process's env values are hidden in the messages made from this capture: they
    /// are cut to 400 characters only after, so no part of a value survives the cut.
    pub fn redacting(mut self, env: &[(String, String)]) -> Self {
        self.redact = Redactor::new(env);
        self
    }

    fn text(&self, bytes: &[u8]) -> String {
        self.redact.apply(&String::from_utf8_lossy(bytes))
    }

    pub fn push(&mut self, stream: Stream, bytes: &[u8]) {
        if !self.active {
            return;
        }
        let buf = match stream {
            Stream::Out => &mut self.out,
            Stream::Err => &mut self.err,
        };
        let room = self.limit.saturating_sub(buf.len());
        buf.extend_from_slice(&bytes[..room.min(bytes.len())]);
    }

    /// Stops keeping output and frees what was kept: startup is over.
    pub fn stop(&mut self) {
        self.active = false;
        self.out = Vec::new();
        self.err = Vec::new();
    }

    /// The startup output: stderr first, then stdout, trimmed, 400 characters max.
    pub fn startup_output(&self) -> String {
        let parts: Vec<String> = [&self.err, &self.out]
            .into_iter()
            .map(|b| self.text(b).trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        summarize(&parts.join("\n"))
    }

    /// The install output: the trimmed stderr, stdout when stderr is empty.
    pub fn install_output(&self) -> String {
        let err = self.text(&self.err);
        if err.trim().is_empty() {
            summarize(&self.text(&self.out))
        } else {
            summarize(&err)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_output_puts_stderr_first() {
        let mut c = Capture::new(STARTUP_CAPTURE_BYTES);
        c.push(Stream::Out, b"listening\n");
        c.push(Stream::Err, b"\n  boom  \n");
        assert_eq!(c.startup_output(), "boom\nlistening");
        let mut only_out = Capture::new(STARTUP_CAPTURE_BYTES);
        only_out.push(Stream::Out, b"hello\n");
        assert_eq!(only_out.startup_output(), "hello");
        assert_eq!(Capture::new(10).startup_output(), "");
    }

    #[test]
    fn capture_keeps_only_the_first_bytes_of_each_stream() {
        let mut c = Capture::new(4);
        c.push(Stream::Err, b"abc");
        c.push(Stream::Err, b"defg");
        c.push(Stream::Out, b"123456");
        assert_eq!(c.startup_output(), "abcd\n1234");
        c.stop();
        c.push(Stream::Err, b"x");
        assert_eq!(c.startup_output(), "");
    }

    #[test]
    fn install_output_prefers_stderr() {
        let mut c = Capture::new(INSTALL_CAPTURE_BYTES);
        c.push(Stream::Out, b"progress\n");
        assert_eq!(c.install_output(), "progress");
        c.push(Stream::Err, b"error: no lockfile\n");
        assert_eq!(c.install_output(), "error: no lockfile");
        let mut long = Capture::new(INSTALL_CAPTURE_BYTES);
        long.push(Stream::Err, "x".repeat(1000).as_bytes());
        assert_eq!(long.install_output(), format!("{}...", "x".repeat(400)));
    }

    #[test]
    fn env_values_are_hidden_before_the_cut() {
        let env = vec![("API_TOKEN".to_string(), "s3cr3t-value".to_string())];
        let mut c = Capture::new(INSTALL_CAPTURE_BYTES).redacting(&env);
        // The value straddles character 400: not even its first bytes may survive.
        let text = format!("{}s3cr3t-value tail", "x".repeat(395));
        c.push(Stream::Err, text.as_bytes());
        let out = c.install_output();
        assert!(!out.contains("s3cr3t"), "{out}");
        assert!(out.starts_with(&"x".repeat(395)), "{out}");
        let mut s = Capture::new(STARTUP_CAPTURE_BYTES).redacting(&env);
        s.push(Stream::Out, b"token s3cr3t-value\n");
        s.push(Stream::Err, b"boom s3cr3t-value\n");
        assert_eq!(s.startup_output(), "boom [redacted]\ntoken [redacted]");
    }
}
