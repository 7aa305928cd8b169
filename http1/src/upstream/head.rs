//! The bytes of an HTTP/1.1 exchange with an instance: the request head we write and the
//! response head we read, and how the response body is delimited (RFC 9112 §6.3).

use bytes::BytesMut;
use http::header::TRANSFER_ENCODING;
use http::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH};
use http::{Method, StatusCode};

/// Largest response head accepted from an instance.
pub const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Most response header lines.
const MAX_HEADERS: usize = 128;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeadError {
    #[error("malformed response head: {0}")]
    Malformed(String),
    #[error("response head larger than {MAX_RESPONSE_HEAD} bytes")]
    TooLarge,
    #[error("response has an invalid or conflicting Content-Length")]
    BadLength,
}

/// How the request body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestFraming {
    /// No body, and no header says otherwise.
    None,
    /// The request's own Content-Length (kept among its headers).
    Length,
    /// A body of unknown length: `Transfer-Encoding: chunked` is added.
    Chunked,
    /// No body for a method that normally has one: `Content-Length: 0` is added.
    Zero,
}

impl RequestFraming {
    pub fn choose(method: &Method, headers: &HeaderMap, has_body: bool) -> Self {
        if headers.contains_key(CONTENT_LENGTH) {
            Self::Length
        } else if has_body {
            Self::Chunked
        } else if matches!(*method, Method::POST | Method::PUT | Method::PATCH) {
            Self::Zero
        } else {
            Self::None
        }
    }
}

/// Writes `METHOD target HTTP/1.1`, every header, the framing header and the blank line.
/// Header values cannot hold CR or LF (`HeaderValue` refuses them), so no line can be split.
pub fn encode_request(
    out: &mut Vec<u8>,
    method: &Method,
    target: &str,
    headers: &HeaderMap,
    framing: RequestFraming,
) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        RequestFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        RequestFraming::Zero => out.extend_from_slice(b"content-length: 0\r\n"),
        RequestFraming::None | RequestFraming::Length => {}
    }
    out.extend_from_slice(b"\r\n");
}

/// A complete response head.
#[derive(Debug)]
pub struct ResponseHead {
    pub status: StatusCode,
    /// `HTTP/1.<minor>`.
    pub minor: u8,
    pub headers: HeaderMap,
}

/// Headers of a usual response head; more are parsed all the same.
const FEW_HEADERS: usize = 24;

/// Parses a response head from the start of `buf` and takes it out of the buffer; `None`
/// (and nothing taken) while it is incomplete. Header values share the head's bytes instead
/// of each being copied.
pub fn parse_response(buf: &mut BytesMut) -> Result<Option<ResponseHead>, HeadError> {
    // (name offset, name length, value offset, value length) of each header in `buf`: on the
    // stack for a usual head (zeroing room for all MAX_HEADERS cost more than the rest of the
    // parse), on the heap for a long one.
    let mut few = [(0u32, 0u32, 0u32, 0u32); FEW_HEADERS];
    let mut many = Vec::new();
    let (len, code, minor, spans) = {
        let mut slots = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default()
            .parse_response_with_uninit_headers(&mut resp, buf, &mut slots);
        let len = match parsed {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if buf.len() >= MAX_RESPONSE_HEAD => {
                return Err(HeadError::TooLarge)
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(HeadError::Malformed(e.to_string())),
        };
        let base = buf.as_ptr() as usize;
        let count = resp.headers.len();
        let spans: &mut [_] = if count <= FEW_HEADERS {
            &mut few[..count]
        } else {
            many.resize(count, (0, 0, 0, 0));
            &mut many
        };
        for (span, h) in spans.iter_mut().zip(resp.headers.iter()) {
            // The head is at most MAX_RESPONSE_HEAD bytes, so offsets fit in u32.
            *span = (
                (h.name.as_ptr() as usize - base) as u32,
                h.name.len() as u32,
                (h.value.as_ptr() as usize - base) as u32,
                h.value.len() as u32,
            );
        }
        (
            len,
            resp.code.unwrap_or(0),
            resp.version.unwrap_or(1),
            spans,
        )
    };
    if len > MAX_RESPONSE_HEAD {
        return Err(HeadError::TooLarge);
    }
    let status =
        StatusCode::from_u16(code).map_err(|_| HeadError::Malformed(format!("status {code}")))?;
    let head = buf.split_to(len).freeze();
    // Room for `Cache-Status` and `Date`, so adding them does not regrow the map.
    let mut headers = HeaderMap::with_capacity(spans.len() + 2);
    for &(name_at, name_len, value_at, value_len) in spans.iter() {
        let (name_at, name_len) = (name_at as usize, name_len as usize);
        let (value_at, value_len) = (value_at as usize, value_len as usize);
        let name = HeaderName::from_bytes(&head[name_at..name_at + name_len]).map_err(|_| {
            HeadError::Malformed(format!(
                "header name {:?}",
                String::from_utf8_lossy(&head[name_at..name_at + name_len])
            ))
        })?;
        let value = HeaderValue::from_maybe_shared(head.slice(value_at..value_at + value_len))
            .map_err(|_| HeadError::Malformed(format!("value of {name}")))?;
        headers.append(name, value);
    }
    Ok(Some(ResponseHead {
        status,
        minor,
        headers,
    }))
}

/// How the response body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// Until the instance closes the connection.
    UntilClose,
}

/// What a response head says about its framing and connection, read in one pass over its
/// few headers instead of a hashed lookup per question.
#[derive(Default)]
struct Fields {
    close: bool,
    keep_alive: bool,
    /// Whether the last `Transfer-Encoding` ends in `chunked`, when there is one.
    chunked_last: Option<bool>,
    has_length: bool,
    /// One value, or the same value repeated (in several lines or a list).
    length: Option<u64>,
    bad_length: bool,
}

impl Fields {
    fn of(headers: &HeaderMap) -> Self {
        let mut f = Self::default();
        for (name, value) in headers {
            if name == CONNECTION {
                for t in value.to_str().unwrap_or("").split(',') {
                    let t = t.trim();
                    f.close |= t.eq_ignore_ascii_case("close");
                    f.keep_alive |= t.eq_ignore_ascii_case("keep-alive");
                }
            } else if name == TRANSFER_ENCODING {
                f.chunked_last = Some(
                    value
                        .to_str()
                        .ok()
                        .and_then(|v| v.rsplit(',').next())
                        .is_some_and(|t| t.trim().eq_ignore_ascii_case("chunked")),
                );
            } else if name == CONTENT_LENGTH {
                f.has_length = true;
                f.add_length(value);
            }
        }
        f
    }

    fn add_length(&mut self, value: &HeaderValue) {
        let Ok(text) = value.to_str() else {
            self.bad_length = true;
            return;
        };
        for part in text.split(',') {
            let part = part.trim();
            let n = (!part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()))
                .then(|| part.parse::<u64>().ok())
                .flatten();
            match n {
                Some(n) if self.length.is_none_or(|l| l == n) => self.length = Some(n),
                _ => self.bad_length = true,
            }
        }
    }
}

/// RFC 9112 §6.3, in order. The second value says whether the connection may carry another
/// request afterwards.
pub fn response_framing(
    request_was_head: bool,
    head: &ResponseHead,
) -> Result<(Framing, bool), HeadError> {
    let fields = Fields::of(&head.headers);
    let mut reusable = if head.minor >= 1 {
        !fields.close
    } else {
        fields.keep_alive
    };
    let status = head.status;
    if request_was_head
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok((Framing::Empty, reusable));
    }
    if let Some(chunked) = fields.chunked_last {
        // With both, Transfer-Encoding wins and the connection is not trusted again.
        if fields.has_length {
            reusable = false;
        }
        return Ok(if chunked {
            (Framing::Chunked, reusable)
        } else {
            (Framing::UntilClose, false)
        });
    }
    if fields.bad_length {
        return Err(HeadError::BadLength);
    }
    match fields.length {
        Some(n) => Ok((Framing::Length(n), reusable)),
        None => Ok((Framing::UntilClose, false)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8]) -> Result<Option<ResponseHead>, HeadError> {
        parse_response(&mut BytesMut::from(bytes))
    }

    fn head(text: &str) -> ResponseHead {
        parse(text.as_bytes()).unwrap().unwrap()
    }

    #[test]
    fn encodes_the_request_line_headers_and_framing() {
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("example.com"));
        h.append("x-a", HeaderValue::from_static("1"));
        h.append("x-a", HeaderValue::from_static("2"));
        let mut out = Vec::new();
        encode_request(
            &mut out,
            &Method::POST,
            "/p?q=1",
            &h,
            RequestFraming::Chunked,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /p?q=1 HTTP/1.1\r\nhost: example.com\r\nx-a: 1\r\nx-a: 2\r\n\
             transfer-encoding: chunked\r\n\r\n"
        );
    }

    #[test]
    fn framing_of_a_request() {
        let mut h = HeaderMap::new();
        assert_eq!(
            RequestFraming::choose(&Method::GET, &h, false),
            RequestFraming::None
        );
        assert_eq!(
            RequestFraming::choose(&Method::POST, &h, false),
            RequestFraming::Zero
        );
        assert_eq!(
            RequestFraming::choose(&Method::POST, &h, true),
            RequestFraming::Chunked
        );
        h.insert(CONTENT_LENGTH, HeaderValue::from_static("3"));
        assert_eq!(
            RequestFraming::choose(&Method::POST, &h, true),
            RequestFraming::Length
        );
    }

    #[test]
    fn partial_heads_wait_and_oversized_ones_fail() {
        assert!(parse(b"HTTP/1.1 200 OK\r\ncontent-le").unwrap().is_none());
        let mut big = b"HTTP/1.1 200 OK\r\nx: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', MAX_RESPONSE_HEAD));
        assert_eq!(parse(&big).unwrap_err(), HeadError::TooLarge);
        assert!(parse(b"HTTP/1.1 abc\r\n\r\n").is_err());
        assert!(parse(b"garbage\r\n\r\n").is_err());
        let mut two = BytesMut::from(&b"HTTP/1.1 200 OK\r\nx-a: 1\r\n\r\nBODY"[..]);
        let h = parse_response(&mut two).unwrap().unwrap();
        assert_eq!(h.headers["x-a"], "1");
        assert_eq!(&two[..], b"BODY", "the head is taken out of the buffer");
    }

    #[test]
    fn body_delimiting_follows_rfc_9112() {
        let cases = [
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n",
                false,
                Framing::Length(5),
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 5, 5\r\n\r\n",
                false,
                Framing::Length(5),
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
                false,
                Framing::Chunked,
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n",
                false,
                Framing::UntilClose,
                false,
            ),
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n",
                false,
                Framing::Chunked,
                false,
            ),
            ("HTTP/1.1 200 OK\r\n\r\n", false, Framing::UntilClose, false),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n",
                true,
                Framing::Empty,
                true,
            ),
            (
                "HTTP/1.1 204 No Content\r\n\r\n",
                false,
                Framing::Empty,
                true,
            ),
            (
                "HTTP/1.1 304 Not Modified\r\ncontent-length: 9\r\n\r\n",
                false,
                Framing::Empty,
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 1\r\n\r\n",
                false,
                Framing::Length(1),
                false,
            ),
            (
                "HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n",
                false,
                Framing::Length(1),
                false,
            ),
            (
                "HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 1\r\n\r\n",
                false,
                Framing::Length(1),
                true,
            ),
        ];
        for (text, was_head, framing, reusable) in cases {
            assert_eq!(
                response_framing(was_head, &head(text)).unwrap(),
                (framing, reusable),
                "{text:?}"
            );
        }
        for bad in [
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 1x\r\n\r\n",
        ] {
            assert_eq!(
                response_framing(false, &head(bad)).unwrap_err(),
                HeadError::BadLength
            );
        }
    }
}
