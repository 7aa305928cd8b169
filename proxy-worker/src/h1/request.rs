//! A request head read off an HTTP/1 connection, turned into `http` types without copying:
//! the target and header values share the head's bytes.

use bytes::BytesMut;
use http::header::TRANSFER_ENCODING;
use http::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, EXPECT};
use http::{Method, Request, Uri, Version};

use crate::forwarded;
use crate::listeners::MAX_HEADER_FIELDS;

/// How the request body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    None,
    Length(u64),
    Chunked,
}

/// A parsed head and what the connection needs to know about it.
pub struct Head {
    pub request: Request<()>,
    pub framing: BodyFraming,
    /// The client allows another request on this connection afterwards.
    pub keep_alive: bool,
    pub expects_continue: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeadError {
    #[error("malformed request head: {0}")]
    Malformed(&'static str),
}

/// Names that `http` does not know but proxied requests carry all the time: looked up here,
/// each would otherwise be a heap copy per request.
static FREQUENT_NAMES: [&HeaderName; 4] = [
    &forwarded::X_FORWARDED_FOR,
    &forwarded::X_FORWARDED_PROTO,
    &forwarded::X_FORWARDED_HOST,
    &forwarded::X_REAL_IP,
];

/// A header name as `HeaderName::from_bytes` reads it, shared when it is a frequent one.
fn header_name(raw: &[u8]) -> Result<HeaderName, http::header::InvalidHeaderName> {
    if raw.len() > 8 && raw[..2].eq_ignore_ascii_case(b"x-") {
        if let Some(known) = FREQUENT_NAMES
            .iter()
            .find(|n| n.as_str().as_bytes().eq_ignore_ascii_case(raw))
        {
            return Ok((*known).clone());
        }
    }
    HeaderName::from_bytes(raw)
}

/// Parses and takes a complete head from the front of `buf`; `None` while incomplete.
///
/// The connection guard (conn_guard.rs) has already refused every head it considers
/// malformed, oversized or ambiguous, so an error here is a last line of defence.
pub fn parse(buf: &mut BytesMut) -> Result<Option<Head>, HeadError> {
    // Offsets into the head, not slices: the head is split off the buffer before use.
    let mut spans = [(0u32, 0u32, 0u32, 0u32); MAX_HEADER_FIELDS];
    let (len, method, target, minor, count) = {
        let mut slots = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADER_FIELDS];
        let mut req = httparse::Request::new(&mut []);
        let len = match req.parse_with_uninit_headers(buf, &mut slots) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(_) => return Err(HeadError::Malformed("unparsable head")),
        };
        let base = buf.as_ptr() as usize;
        for (span, h) in spans.iter_mut().zip(req.headers.iter()) {
            // Heads are at most 64 KiB (the connection guard), so offsets fit in u32.
            *span = (
                (h.name.as_ptr() as usize - base) as u32,
                h.name.len() as u32,
                (h.value.as_ptr() as usize - base) as u32,
                h.value.len() as u32,
            );
        }
        let method = Method::from_bytes(req.method.unwrap_or("").as_bytes())
            .map_err(|_| HeadError::Malformed("method"))?;
        let path = req.path.unwrap_or("");
        let target = (path.as_ptr() as usize - base, path.len());
        (
            len,
            method,
            target,
            req.version.unwrap_or(1),
            req.headers.len(),
        )
    };
    let head = buf.split_to(len).freeze();
    let uri = Uri::from_maybe_shared(head.slice(target.0..target.0 + target.1))
        .map_err(|_| HeadError::Malformed("request target"))?;
    // Room for the forwarded headers the pipeline adds, so they do not regrow the map.
    let mut headers = HeaderMap::with_capacity(count + 4);
    for &(name_at, name_len, value_at, value_len) in &spans[..count] {
        let (name_at, name_len) = (name_at as usize, name_len as usize);
        let (value_at, value_len) = (value_at as usize, value_len as usize);
        let name = header_name(&head[name_at..name_at + name_len])
            .map_err(|_| HeadError::Malformed("header name"))?;
        let value = HeaderValue::from_maybe_shared(head.slice(value_at..value_at + value_len))
            .map_err(|_| HeadError::Malformed("header value"))?;
        headers.append(name, value);
    }
    let version = if minor == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let framing = body_framing(&headers)?;
    let keep_alive = if version == Version::HTTP_11 {
        !has_token(&headers, "close")
    } else {
        has_token(&headers, "keep-alive")
    };
    let expects_continue = version == Version::HTTP_11
        && framing != BodyFraming::None
        && headers
            .get(EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    *request.headers_mut() = headers;
    Ok(Some(Head {
        request,
        framing,
        keep_alive,
        expects_continue,
    }))
}

fn body_framing(headers: &HeaderMap) -> Result<BodyFraming, HeadError> {
    if let Some(te) = headers.get_all(TRANSFER_ENCODING).iter().next_back() {
        let last = te
            .to_str()
            .ok()
            .and_then(|v| v.rsplit(',').next())
            .map(str::trim);
        return match last {
            Some(t) if t.eq_ignore_ascii_case("chunked") => Ok(BodyFraming::Chunked),
            _ => Err(HeadError::Malformed(
                "transfer-encoding without chunked last",
            )),
        };
    }
    let mut length = None;
    for v in headers.get_all(CONTENT_LENGTH) {
        let n: u64 = v
            .to_str()
            .ok()
            .map(str::trim)
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse().ok())
            .ok_or(HeadError::Malformed("content-length"))?;
        if length.is_some_and(|l| l != n) {
            return Err(HeadError::Malformed("conflicting content-length"));
        }
        length = Some(n);
    }
    Ok(match length {
        Some(n) if n > 0 => BodyFraming::Length(n),
        _ => BodyFraming::None,
    })
}

pub fn has_token(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frequent_names_are_shared_and_others_parsed() {
        assert_eq!(
            header_name(b"X-Forwarded-Proto").unwrap(),
            forwarded::X_FORWARDED_PROTO
        );
        assert_eq!(header_name(b"x-real-ip").unwrap(), forwarded::X_REAL_IP);
        assert_eq!(
            header_name(b"X-Custom-Thing").unwrap().as_str(),
            "x-custom-thing"
        );
        assert_eq!(header_name(b"Host").unwrap(), http::header::HOST);
        assert!(header_name(b"x-bad name").is_err());
    }

    fn parse_str(s: &str) -> Result<Option<Head>, HeadError> {
        parse(&mut BytesMut::from(s.as_bytes()))
    }

    #[test]
    fn a_head_becomes_a_request_and_leaves_the_rest() {
        let mut buf = BytesMut::from(
            &b"POST /a?b=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\nabcGET"[..],
        );
        let h = parse(&mut buf).unwrap().unwrap();
        assert_eq!(h.request.method(), Method::POST);
        assert_eq!(h.request.uri().path_and_query().unwrap().as_str(), "/a?b=1");
        assert_eq!(h.request.headers()["host"], "x");
        assert_eq!(h.framing, BodyFraming::Length(3));
        assert!(h.keep_alive && h.expects_continue);
        assert_eq!(&buf[..], b"abcGET");
    }

    #[test]
    fn partial_heads_wait() {
        assert!(parse_str("GET / HTTP/1.1\r\nHost: x\r\n")
            .unwrap()
            .is_none());
    }

    #[test]
    fn keep_alive_and_framing_rules() {
        let h = parse_str("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(!h.keep_alive);
        assert_eq!(h.request.version(), Version::HTTP_10);
        let h = parse_str("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(h.keep_alive);
        let h = parse_str("GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!h.keep_alive);
        let h = parse_str("PUT / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, BodyFraming::Chunked);
        for bad in [
            "PUT / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
            "PUT / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "PUT / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            "GET / HTTP/1.1\r\nBad Header: x\r\n\r\n",
        ] {
            assert!(parse_str(bad).is_err(), "{bad}");
        }
    }
}
