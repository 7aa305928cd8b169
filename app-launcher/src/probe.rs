//! The health request (docs/apps.md, "Startup", "Health checks"): `GET /status` with
//! `Host: tako.internal` to `127.0.0.1:<port>` over HTTP/1.1. Only the status code matters, so
//! a few lines over a TCP stream do: the request asks the app to close, and the reply is read
//! up to the end of its status line.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const REQUEST: &[u8] = b"GET /status HTTP/1.1\r\nHost: tako.internal\r\nUser-Agent: tako-server\r\nAccept: */*\r\nConnection: close\r\n\r\n";
/// A status line longer than this is not HTTP.
const MAX_STATUS_LINE: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("health check returned HTTP {0}")]
    Status(u16),
    #[error("health check could not connect: {0}")]
    Connect(io::Error),
    #[error("health check failed: {0}")]
    Io(io::Error),
    #[error("health check closed the connection without an HTTP status")]
    NoStatus,
    #[error("health check got an answer that is not HTTP")]
    Malformed,
    #[error("health check timed out after {} ms", .0.as_millis())]
    Timeout(Duration),
}

/// After the status line, how long and how much of the rest of the answer is read, so that
/// the connection ends with the app's close rather than a reset from unread data.
const DRAIN_BOUND: Duration = Duration::from_millis(100);
const DRAIN_MAX: usize = 64 * 1024;

/// One probe with a bound on its whole duration. `Ok` means a 2xx answer.
pub async fn probe(port: u16, limit: Duration) -> Result<(), ProbeError> {
    let (code, mut stream) = match tokio::time::timeout(limit, status(port)).await {
        Ok(result) => result?,
        Err(_) => return Err(ProbeError::Timeout(limit)),
    };
    let _ = tokio::time::timeout(DRAIN_BOUND, async {
        let mut buf = [0u8; 4096];
        let mut total = 0;
        while total < DRAIN_MAX {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    })
    .await;
    if (200..300).contains(&code) {
        Ok(())
    } else {
        Err(ProbeError::Status(code))
    }
}

/// Sends the request and reads the status code.
async fn status(port: u16) -> Result<(u16, TcpStream), ProbeError> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(ProbeError::Connect)?;
    stream.write_all(REQUEST).await.map_err(ProbeError::Io)?;
    let mut head = Vec::with_capacity(128);
    let mut buf = [0u8; 512];
    loop {
        if let Some(end) = head.iter().position(|&b| b == b'\n') {
            head.truncate(end);
            break;
        }
        if head.len() > MAX_STATUS_LINE {
            return Err(ProbeError::Malformed);
        }
        let n = stream.read(&mut buf).await.map_err(ProbeError::Io)?;
        if n == 0 {
            if head.is_empty() {
                return Err(ProbeError::NoStatus);
            }
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let code = parse_status_line(&head).ok_or(ProbeError::Malformed)?;
    Ok((code, stream))
}

/// The status code of an HTTP/1.x status line such as `HTTP/1.1 200 OK` (with or without
/// the trailing CR).
pub fn parse_status_line(line: &[u8]) -> Option<u16> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let rest = line.strip_prefix(b"HTTP/1.")?;
    let (minor, rest) = rest.split_first()?;
    if !minor.is_ascii_digit() {
        return None;
    }
    let rest = rest.strip_prefix(b" ")?;
    let (code, reason) = rest.split_at_checked(3)?;
    if !code.iter().all(u8::is_ascii_digit) || !(reason.is_empty() || reason[0] == b' ') {
        return None;
    }
    let code = code
        .iter()
        .fold(0u16, |acc, d| acc * 10 + u16::from(d - b'0'));
    (100..=599).contains(&code).then_some(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK\r"), Some(200));
        assert_eq!(parse_status_line(b"HTTP/1.0 204 No Content"), Some(204));
        assert_eq!(parse_status_line(b"HTTP/1.1 503"), Some(503));
        assert_eq!(parse_status_line(b"HTTP/1.1 404 Not Found\r"), Some(404));
        assert_eq!(parse_status_line(b"HTTP/2 200 OK"), None);
        assert_eq!(parse_status_line(b"HTTP/1.1 20 OK"), None);
        assert_eq!(parse_status_line(b"HTTP/1.1 2000 OK"), None);
        assert_eq!(parse_status_line(b"HTTP/1.1 abc OK"), None);
        assert_eq!(parse_status_line(b"HTTP/1.1 999 Weird"), None);
        assert_eq!(parse_status_line(b"SSH-2.0-OpenSSH"), None);
        assert_eq!(parse_status_line(b""), None);
    }

    #[tokio::test]
    async fn probe_against_a_tiny_server() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            for answer in [
                &b"HTTP/1.1 200 OK\r\n\r\n"[..],
                b"HTTP/1.1 500 Oops\r\n\r\n",
                b"junk\n",
            ] {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut req = vec![0u8; 1024];
                let n = s.read(&mut req).await.unwrap();
                let req = String::from_utf8_lossy(&req[..n]).to_string();
                assert!(req.starts_with("GET /status HTTP/1.1\r\n"));
                assert!(req.contains("\r\nHost: tako.internal\r\n"));
                s.write_all(answer).await.unwrap();
            }
            // Accept and never answer: the timeout must fire.
            let (_s, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        let limit = Duration::from_millis(500);
        assert!(probe(port, limit).await.is_ok());
        assert!(matches!(
            probe(port, limit).await,
            Err(ProbeError::Status(500))
        ));
        assert!(matches!(
            probe(port, limit).await,
            Err(ProbeError::Malformed)
        ));
        assert!(matches!(
            probe(port, limit).await,
            Err(ProbeError::Timeout(_))
        ));
        server.abort();
    }
}
