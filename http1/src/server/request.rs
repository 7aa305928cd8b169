//! A request head read off an HTTP/1 connection, turned into `http` types without copying:
//! the target and header values share the head's bytes.

use bytes::BytesMut;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Uri, Version};

use super::head_check::{self, BodyFraming, HeadLimits, Refusal, Refused, Scan};

/// A parsed head and what the connection needs to know about it.
pub struct Head {
    pub request: Request<()>,
    pub framing: BodyFraming,
    /// The client allows another request on this connection afterwards.
    pub keep_alive: bool,
    pub expects_continue: bool,
}

/// A header name as `HeaderName::from_bytes` reads it, shared when it is one of `frequent`
/// (names `http` does not know, all starting with `x-`; each would otherwise be a heap copy
/// per request).
fn header_name(
    raw: &[u8],
    frequent: &[&'static HeaderName],
) -> Result<HeaderName, http::header::InvalidHeaderName> {
    if raw.len() > 8 && raw[..2].eq_ignore_ascii_case(b"x-") {
        if let Some(known) = frequent
            .iter()
            .find(|n| n.as_str().as_bytes().eq_ignore_ascii_case(raw))
        {
            return Ok((*known).clone());
        }
    }
    HeaderName::from_bytes(raw)
}

/// Checks, parses and takes a complete head from the front of `buf`; `None` while incomplete.
/// `searched` carries how much of an incomplete head was already searched for its end, from
/// one call to the next on the same connection.
pub fn parse(
    buf: &mut BytesMut,
    searched: &mut usize,
    limits: &HeadLimits,
    frequent: &[&'static HeaderName],
) -> Result<Option<Head>, Refusal> {
    match find(buf, searched, limits)? {
        Some(len) => take(buf, len, limits, frequent).map(Some),
        None => Ok(None),
    }
}

/// The length of the complete head at the front of `buf`, once it is there (within the size
/// limit); `searched` as in [`parse`].
pub fn find(
    buf: &[u8],
    searched: &mut usize,
    limits: &HeadLimits,
) -> Result<Option<usize>, Refusal> {
    match head_check::scan(buf, *searched, limits)? {
        Scan::Partial { searched: s } => {
            *searched = s;
            Ok(None)
        }
        Scan::Head(len) => {
            *searched = 0;
            Ok(Some(len))
        }
    }
}

/// Checks and takes the head of `len` bytes that [`find`] found at the front of `buf`.
pub fn take(
    buf: &mut BytesMut,
    len: usize,
    limits: &HeadLimits,
    frequent: &[&'static HeaderName],
) -> Result<Head, Refusal> {
    // The head leaves the buffer first: its target and header values share its bytes.
    let head = buf.split_to(len).freeze();
    // A field per line, less the request line and the blank one; room for the forwarded
    // headers the pipeline adds, so they do not regrow the map.
    let lines = head.iter().filter(|b| **b == b'\n').count();
    let mut headers = HeaderMap::with_capacity(lines.saturating_sub(2) + 4);
    // One pass checks the head and builds the map; the values' bytes were checked in it.
    let parts = head_check::check_head_with(&head, limits, |name, value| {
        match (
            header_name(name, frequent),
            HeaderValue::from_maybe_shared(head.slice_ref(value)),
        ) {
            (Ok(name), Ok(value)) => {
                headers.append(name, value);
                true
            }
            _ => false,
        }
    })?;
    let checked = parts.checked;
    let refused = Refusal(Refused::BadRequest, checked.head_method);
    let method = Method::from_bytes(parts.method).map_err(|_| refused)?;
    let uri = Uri::from_maybe_shared(head.slice_ref(parts.target)).map_err(|_| refused)?;
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = if checked.http10 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    *request.headers_mut() = headers;
    Ok(Head {
        request,
        framing: checked.framing,
        keep_alive: checked.persistent(),
        expects_continue: checked.expects_continue,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use head_check::tests::LIMITS;

    static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
    static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
    static FREQUENT: [&HeaderName; 2] = [&X_FORWARDED_PROTO, &X_REAL_IP];

    #[test]
    fn frequent_names_are_shared_and_others_parsed() {
        let name = |raw: &[u8]| header_name(raw, &FREQUENT);
        assert_eq!(name(b"X-Forwarded-Proto").unwrap(), X_FORWARDED_PROTO);
        assert_eq!(name(b"x-real-ip").unwrap(), X_REAL_IP);
        assert_eq!(name(b"X-Custom-Thing").unwrap().as_str(), "x-custom-thing");
        assert_eq!(name(b"Host").unwrap(), http::header::HOST);
        assert!(name(b"x-bad name").is_err());
    }

    fn parse_with(buf: &mut BytesMut, searched: &mut usize) -> Result<Option<Head>, Refusal> {
        parse(buf, searched, &LIMITS, &FREQUENT)
    }

    fn parse_str(s: &str) -> Result<Option<Head>, Refusal> {
        parse_with(&mut BytesMut::from(s.as_bytes()), &mut 0)
    }

    #[test]
    fn a_head_becomes_a_request_and_leaves_the_rest() {
        let mut buf = BytesMut::from(
            &b"POST /a?b=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\nabcGET"[..],
        );
        let h = parse_with(&mut buf, &mut 0).unwrap().unwrap();
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

    #[test]
    fn a_head_that_arrives_in_pieces_is_taken_whole() {
        let whole = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n";
        let mut buf = BytesMut::new();
        let mut searched = 0;
        for (i, b) in whole.iter().enumerate() {
            buf.extend_from_slice(&[*b]);
            match parse_with(&mut buf, &mut searched).unwrap() {
                None => assert!(i + 1 < whole.len()),
                Some(h) => {
                    assert_eq!(i + 1, whole.len());
                    assert_eq!(h.request.uri(), "/x");
                    assert!(buf.is_empty() && searched == 0);
                }
            }
        }
    }
}
