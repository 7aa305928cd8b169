//! Management socket client: one JSON line out, one line back.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

/// A deploy waits for instances to pass their startup probe (up to 30 s each).
pub const MGMT_TIMEOUT: Duration = Duration::from_secs(120);

pub struct Mgmt {
    writer: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Mgmt {
    pub fn connect(path: &Path) -> io::Result<Mgmt> {
        let s = UnixStream::connect(path)?;
        s.set_read_timeout(Some(MGMT_TIMEOUT))?;
        s.set_write_timeout(Some(MGMT_TIMEOUT))?;
        let reader = BufReader::new(s.try_clone()?);
        Ok(Mgmt { writer: s, reader })
    }

    /// Sends raw bytes (a `\n` is added when missing) and reads one response line.
    pub fn raw(&mut self, line: &[u8]) -> io::Result<String> {
        self.writer.write_all(line)?;
        if line.last() != Some(&b'\n') {
            self.writer.write_all(b"\n")?;
        }
        self.writer.flush()?;
        self.read_line()
    }

    /// Writes without a newline and without reading: for partial lines and EOF tests.
    pub fn write_only(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.writer.write_all(bytes)?;
        self.writer.flush()
    }

    pub fn shutdown_write(&self) -> io::Result<()> {
        self.writer.shutdown(std::net::Shutdown::Write)
    }

    pub fn read_line(&mut self) -> io::Result<String> {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "management socket closed without a response",
            ));
        }
        if !line.ends_with('\n') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("response line without a newline: {line:?}"),
            ));
        }
        line.pop();
        Ok(line)
    }

    /// Sends a command and parses the response envelope.
    pub fn request(&mut self, cmd: &Value) -> Value {
        let line = serde_json::to_vec(cmd).expect("a Value always serializes");
        let resp = self
            .raw(&line)
            .unwrap_or_else(|e| panic!("management request {cmd} failed: {e}"));
        parse_response(&resp)
    }

    /// The `data` of a successful response; panics with the error message otherwise.
    pub fn ok(&mut self, cmd: &Value) -> Value {
        let resp = self.request(cmd);
        match resp["status"].as_str() {
            Some("ok") => resp.get("data").cloned().unwrap_or(Value::Null),
            _ => panic!("command {cmd} was expected to succeed, got {resp}"),
        }
    }

    /// The `message` of an error response; panics when the command succeeded.
    pub fn err(&mut self, cmd: &Value) -> String {
        let resp = self.request(cmd);
        match (resp["status"].as_str(), resp["message"].as_str()) {
            (Some("error"), Some(m)) => m.to_string(),
            _ => panic!("command {cmd} was expected to fail, got {resp}"),
        }
    }
}

/// Checks the envelope invariants (docs/management-protocol.md, "Lines", "Envelope") and parses
/// the line.
pub fn parse_response(line: &str) -> Value {
    assert!(!line.contains('\n'), "a response is one line, got {line:?}");
    let v: Value = serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("response is not JSON ({e}): {line:?}"));
    match v["status"].as_str() {
        Some("ok") => assert!(v.get("data").is_some(), "ok response without data: {line}"),
        Some("error") => assert!(
            v["message"].is_string(),
            "error response without a message string: {line}"
        ),
        _ => panic!("response has no status ok|error: {line}"),
    }
    v
}
