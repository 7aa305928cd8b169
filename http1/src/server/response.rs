//! The response head on an HTTP/1 connection: status line, headers, `Date`, and the framing
//! the body gets (RFC 9112 §6).

use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

use http::header::{HeaderMap, HeaderValue, CONNECTION, CONTENT_LENGTH, DATE, TRANSFER_ENCODING};
use http::{StatusCode, Version};

/// How the body goes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body bytes at all (HEAD, 1xx, 204, 304).
    NoBody,
    /// Exactly this many bytes, announced by `Content-Length`.
    Length(u64),
    Chunked,
    /// Until the connection closes (HTTP/1.0 client, length unknown).
    UntilClose,
}

/// What the connection needs to write the body and to know whether it stays open.
pub struct Plan {
    pub framing: Framing,
    pub keep_alive: bool,
}

/// What the response's own headers say about its framing and connection, read in one pass:
/// a handful of entries compared by name is cheaper than a hashed lookup for each question.
#[derive(Default)]
struct Seen {
    /// `Connection` lists `close`.
    close: bool,
    /// The first `Content-Length`, when there is one: its value if it is a number.
    length: Option<Option<u64>>,
    transfer_encoding: bool,
    date: bool,
}

impl Seen {
    fn of(headers: &HeaderMap) -> Self {
        let mut seen = Self::default();
        for (name, value) in headers {
            if name == CONNECTION {
                seen.close |= value
                    .to_str()
                    .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")));
            } else if name == CONTENT_LENGTH {
                if seen.length.is_none() {
                    seen.length = Some(
                        value
                            .to_str()
                            .ok()
                            .and_then(|v| v.trim().parse::<u64>().ok()),
                    );
                }
            } else if name == TRANSFER_ENCODING {
                seen.transfer_encoding = true;
            } else if name == DATE {
                seen.date = true;
            }
        }
        seen
    }
}

/// Room made in the write buffer before a head is encoded.
const HEAD_ROOM: usize = 512;

/// Decides the framing and writes the head into `out`.
///
/// `body_len` is the body's exact length when it is known (size hint or end of stream).
pub fn encode(
    out: &mut Vec<u8>,
    version: Version,
    head_request: bool,
    status: StatusCode,
    headers: &mut HeaderMap,
    body_len: Option<u64>,
    keep_alive: bool,
) -> Plan {
    // Room for a usual head at once: a new connection's buffer grew in five steps.
    out.reserve(HEAD_ROOM);
    let mut seen = Seen::of(headers);
    let mut keep_alive = keep_alive && !seen.close;
    let no_body = head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    if status.is_informational() || status == StatusCode::NO_CONTENT {
        if seen.length.take().is_some() {
            headers.remove(CONTENT_LENGTH);
        }
        if std::mem::take(&mut seen.transfer_encoding) {
            headers.remove(TRANSFER_ENCODING);
        }
    }
    let declared = seen.length.flatten();
    let mut drop_transfer_encoding = || {
        if seen.transfer_encoding {
            headers.remove(TRANSFER_ENCODING);
        }
    };
    let framing = if status == StatusCode::SWITCHING_PROTOCOLS {
        Framing::NoBody
    } else if no_body {
        if declared.is_none() && head_request {
            if let Some(n) = body_len {
                headers.insert(CONTENT_LENGTH, HeaderValue::from(n));
            }
        }
        Framing::NoBody
    } else if let Some(n) = declared {
        drop_transfer_encoding();
        Framing::Length(n)
    } else if let Some(n) = body_len {
        drop_transfer_encoding();
        headers.insert(CONTENT_LENGTH, HeaderValue::from(n));
        Framing::Length(n)
    } else if version == Version::HTTP_11 {
        headers.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        Framing::Chunked
    } else {
        keep_alive = false;
        Framing::UntilClose
    };
    if status != StatusCode::SWITCHING_PROTOCOLS {
        if !keep_alive {
            if !seen.close {
                headers.insert(CONNECTION, HeaderValue::from_static("close"));
            }
        } else if version == Version::HTTP_10 {
            headers.insert(CONNECTION, HeaderValue::from_static("keep-alive"));
        }
    }
    if !seen.date {
        headers.insert(DATE, now_date());
    }

    out.extend_from_slice(if version == Version::HTTP_10 {
        b"HTTP/1.0 "
    } else {
        b"HTTP/1.1 "
    });
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers.iter() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Plan {
        framing,
        keep_alive,
    }
}

thread_local! {
    /// The `Date` value of the current second; one worker thread formats it once a second.
    static DATE_CACHE: RefCell<(u64, Option<HeaderValue>)> = const { RefCell::new((0, None)) };
}

fn now_date() -> HeaderValue {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE_CACHE.with(|cell| {
        let mut cache = cell.borrow_mut();
        match &cache.1 {
            Some(v) if cache.0 == secs => v.clone(),
            _ => {
                let v = HeaderValue::from_str(&crate::date::format(secs))
                    .unwrap_or_else(|_| HeaderValue::from_static(""));
                *cache = (secs, Some(v.clone()));
                v
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(
        version: Version,
        head: bool,
        status: u16,
        headers: &[(&'static str, &'static str)],
        len: Option<u64>,
        keep: bool,
    ) -> (String, Framing, bool) {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.append(*k, HeaderValue::from_static(v));
        }
        h.insert(DATE, HeaderValue::from_static("D"));
        let mut out = Vec::new();
        let plan = encode(
            &mut out,
            version,
            head,
            StatusCode::from_u16(status).unwrap(),
            &mut h,
            len,
            keep,
        );
        (
            String::from_utf8(out).unwrap(),
            plan.framing,
            plan.keep_alive,
        )
    }

    #[test]
    fn lengths_chunking_and_close() {
        let (text, f, keep) = run(Version::HTTP_11, false, 200, &[], Some(5), true);
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\ndate: D\r\ncontent-length: 5\r\n\r\n"
        );
        assert_eq!((f, keep), (Framing::Length(5), true));
        let (text, f, _) = run(Version::HTTP_11, false, 200, &[], None, true);
        assert!(text.contains("transfer-encoding: chunked\r\n"));
        assert_eq!(f, Framing::Chunked);
        let (text, f, keep) = run(Version::HTTP_10, false, 200, &[], None, true);
        assert!(text.starts_with("HTTP/1.0 200 OK\r\n") && text.contains("connection: close"));
        assert_eq!((f, keep), (Framing::UntilClose, false));
        let (_, _, keep) = run(
            Version::HTTP_11,
            false,
            400,
            &[("connection", "close")],
            Some(1),
            true,
        );
        assert!(!keep);
    }

    #[test]
    fn bodiless_answers() {
        let (text, f, _) = run(Version::HTTP_11, true, 200, &[], Some(9), true);
        assert!(text.contains("content-length: 9"));
        assert_eq!(f, Framing::NoBody);
        let (text, f, _) = run(
            Version::HTTP_11,
            false,
            204,
            &[("content-length", "3")],
            None,
            true,
        );
        assert!(!text.contains("content-length"));
        assert_eq!(f, Framing::NoBody);
        let (text, f, _) = run(
            Version::HTTP_11,
            false,
            304,
            &[("content-length", "3")],
            None,
            true,
        );
        assert!(text.contains("content-length: 3"));
        assert_eq!(f, Framing::NoBody);
    }
}
