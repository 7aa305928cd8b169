//! The checks every HTTP/1 request head passes before it is parsed into a request
//! (docs/http.md, "Limits and timeouts", "Error responses"), and what the connection needs to
//! know about it.
//!
//! One pass over the raw head, stricter than httparse where it matters for a proxy:
//! - `Content-Length` with `Transfer-Encoding`, differing lengths, chunked under HTTP/1.0 and a
//!   last coding that is not chunked are smuggling patterns: 400.
//! - HTTP/0.9 request lines, whitespace before a colon, obs-fold and control bytes in values
//!   are 400; more fields than [`HeadLimits::max_fields`] or a head over
//!   [`HeadLimits::max_bytes`] is 431, a target over [`HeadLimits::max_target`] 414.
//!
//! The same pass reads the few fields the loop acts on (framing, `Connection`, `Expect`), so the
//! parsed request is not searched for them again.

/// The size limits of a request head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadLimits {
    /// Header fields (lines) at most.
    pub max_fields: usize,
    /// Bytes of the whole head, request line and blank line included.
    pub max_bytes: usize,
    /// Bytes of the request-target.
    pub max_target: usize,
}

/// Why a request is refused before it reaches the service; each has its status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// 400: malformed, or a smuggling pattern.
    BadRequest,
    /// 414.
    UriTooLong,
    /// 431.
    HeaderFieldsTooLarge,
    /// 408: a head begun and not finished in time.
    RequestTimeout,
}

impl Refused {
    pub fn status(self) -> http::StatusCode {
        match self {
            Refused::BadRequest => http::StatusCode::BAD_REQUEST,
            Refused::UriTooLong => http::StatusCode::URI_TOO_LONG,
            Refused::HeaderFieldsTooLarge => http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Refused::RequestTimeout => http::StatusCode::REQUEST_TIMEOUT,
        }
    }
}

/// How the request body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    None,
    Length(u64),
    Chunked,
}

/// A refusal: what to answer, and whether the request was a HEAD (no body then).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal(pub Refused, pub bool);

/// What a head that passed says about its connection and body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    pub framing: BodyFraming,
    pub http10: bool,
    /// `Connection` lists `close`.
    pub close: bool,
    /// `Connection` lists `keep-alive`.
    pub keep_alive: bool,
    /// The first `Expect` is `100-continue`.
    pub expects_continue: bool,
    /// The method is HEAD (a refusal then has no body).
    pub head_method: bool,
}

impl Checked {
    /// The client allows another request on this connection afterwards.
    pub fn persistent(&self) -> bool {
        if self.http10 {
            self.keep_alive
        } else {
            !self.close
        }
    }
}

/// RFC 9110 `tchar`, as a table: every byte of every header name goes through it.
static TCHAR: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            );
        b += 1;
    }
    t
};

fn is_tchar(b: u8) -> bool {
    TCHAR[usize::from(b)]
}

/// Bytes a field value may hold: HTAB, visible ASCII, space and obs-text; no other control.
static VALUE_BYTE: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = b == 0x09 || (b >= 0x20 && b != 0x7f);
        b += 1;
    }
    t
};

/// A line up to its LF, without the CR before it, and what follows it.
fn split_line(b: &[u8]) -> (&[u8], &[u8]) {
    match b.iter().position(|c| *c == b'\n') {
        Some(nl) => {
            let line = &b[..nl];
            (line.strip_suffix(b"\r").unwrap_or(line), &b[nl + 1..])
        }
        None => (b, &[]),
    }
}

fn skip_empty_lines(head: &[u8]) -> &[u8] {
    let mut h = head;
    while let Some(rest) = h.strip_prefix(b"\r\n").or_else(|| h.strip_prefix(b"\n")) {
        h = rest;
    }
    h
}

/// Position just past the blank line that ends the head, if it arrived. `from` is how much
/// of `buf` an earlier call already searched: a head that trickles in byte by byte is not
/// searched from its start each time.
pub fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let start = buf.len() - skip_empty_lines(buf).len();
    let b = &buf[start..];
    // A blank line is at most three bytes (`\n\r\n`) around a line feed already searched.
    let mut i = from.saturating_sub(start + 3).min(b.len());
    while let Some(p) = b[i..].iter().position(|c| *c == b'\n') {
        let at = i + p;
        let next = &b[at + 1..];
        if next.starts_with(b"\n") {
            return Some(start + at + 2);
        }
        if next.starts_with(b"\r\n") {
            return Some(start + at + 3);
        }
        if next.is_empty() || next == b"\r" {
            return None;
        }
        i = at + 1;
    }
    None
}

/// A complete first line that cannot start an HTTP/1.x request (HTTP/0.9 among them).
pub fn bad_request_line(buf: &[u8]) -> Option<Refusal> {
    let b = skip_empty_lines(buf);
    let end = b.iter().position(|c| *c == b'\n')?;
    let line = b[..end].strip_suffix(b"\r").unwrap_or(&b[..end]);
    let mut parts = line.split(|c| *c == b' ');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(_), Some(_), Some(version), None) if version.starts_with(b"HTTP/1.") => None,
        _ => Some(Refusal(Refused::BadRequest, line.starts_with(b"HEAD "))),
    }
}

/// The answer for a head that exceeds the size limit without ending.
pub fn oversized(buf: &[u8], limits: &HeadLimits) -> Refusal {
    let b = skip_empty_lines(buf);
    let line_end = b.iter().position(|c| *c == b'\n').unwrap_or(b.len());
    let line = &b[..line_end];
    let head = line.starts_with(b"HEAD ");
    let target_len = line
        .split(|c| *c == b' ')
        .nth(1)
        .map_or(line.len(), <[u8]>::len);
    if target_len > limits.max_target {
        Refusal(Refused::UriTooLong, head)
    } else {
        Refusal(Refused::HeaderFieldsTooLarge, head)
    }
}

/// The fields whose values the check reads; every other field is only validated.
#[derive(Clone, Copy)]
enum Field {
    ContentLength,
    TransferEncoding,
    Connection,
    Expect,
    Other,
}

fn field_kind(name: &[u8]) -> Field {
    // By length first: most names are none of these and cost one comparison.
    let (known, field) = match name.len() {
        6 => (&b"expect"[..], Field::Expect),
        10 => (&b"connection"[..], Field::Connection),
        14 => (&b"content-length"[..], Field::ContentLength),
        17 => (&b"transfer-encoding"[..], Field::TransferEncoding),
        _ => return Field::Other,
    };
    if name.eq_ignore_ascii_case(known) {
        field
    } else {
        Field::Other
    }
}

fn trim(v: &[u8]) -> &[u8] {
    v.trim_ascii()
}

/// Comma-separated list elements, trimmed, empty ones skipped.
fn elements(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|c| *c == b',')
        .map(trim)
        .filter(|e| !e.is_empty())
}

/// A head that passed the check: its request line's parts and what it says.
pub struct Parts<'a> {
    pub method: &'a [u8],
    pub target: &'a [u8],
    pub checked: Checked,
}

/// Checks one complete header section (up to and including its blank line).
pub fn check_head(head: &[u8], limits: &HeadLimits) -> Result<Checked, Refusal> {
    check_head_with(head, limits, |_, _| true).map(|p| p.checked)
}

/// [`check_head`], handing each field line's name and value (without surrounding whitespace)
/// to `field` as it passes: the request is built in the same pass. `field` answers false for
/// a field it cannot take, which refuses the head.
pub fn check_head_with<'a>(
    head: &'a [u8],
    limits: &HeadLimits,
    mut field: impl FnMut(&'a [u8], &'a [u8]) -> bool,
) -> Result<Parts<'a>, Refusal> {
    let head = skip_empty_lines(head);
    let (request_line, mut rest) = split_line(head);
    let mut parts = request_line.split(|c| *c == b' ');
    let first = parts.next();
    let is_head = first == Some(&b"HEAD"[..]);
    let bad = Refusal(Refused::BadRequest, is_head);
    // HTTP/0.9 (`GET /`) and anything that is not `method SP target SP version`.
    let (Some(method), Some(target), Some(version), None) =
        (first, parts.next(), parts.next(), parts.next())
    else {
        return Err(bad);
    };
    if method.is_empty() || !method.iter().all(|b| is_tchar(*b)) {
        return Err(bad);
    }
    if target.len() > limits.max_target {
        return Err(Refusal(Refused::UriTooLong, is_head));
    }
    if target.is_empty() || target.iter().any(|b| *b < 0x21 || *b == 0x7f) {
        return Err(bad);
    }
    let http10 = match version {
        b"HTTP/1.1" => false,
        b"HTTP/1.0" => true,
        _ => return Err(bad),
    };

    let mut fields = 0usize;
    let mut length: Option<u64> = None;
    let mut chunked_last: Option<bool> = None;
    let mut close = false;
    let mut keep_alive = false;
    let mut expect: Option<bool> = None;
    // One pass per field line: the name up to its colon, then the value up to its line end.
    // obs-fold and whitespace before the colon are refused (RFC 9112 §5.1, §5.2): neither is
    // a tchar.
    while !(rest.is_empty() || rest.starts_with(b"\n") || rest.starts_with(b"\r\n")) {
        fields += 1;
        if fields > limits.max_fields {
            return Err(Refusal(Refused::HeaderFieldsTooLarge, is_head));
        }
        let colon = rest.iter().position(|b| !is_tchar(*b)).ok_or(bad)?;
        if colon == 0 || rest[colon] != b':' {
            return Err(bad);
        }
        let name = &rest[..colon];
        let from = colon + 1;
        let end = rest[from..]
            .iter()
            .position(|b| !VALUE_BYTE[usize::from(*b)])
            .map_or(rest.len(), |p| from + p);
        // The first byte that may not be in a value must end the line.
        let next = match &rest[end..] {
            [b'\n', ..] => end + 1,
            [b'\r', b'\n', ..] => end + 2,
            _ => return Err(bad),
        };
        let value = trim(&rest[from..end]);
        rest = &rest[next..];
        if !field(name, value) {
            return Err(bad);
        }
        match field_kind(name) {
            Field::Other => {}
            Field::ContentLength => {
                // A list of equal lengths is one length (RFC 9110 §8.6); anything else is 400.
                let mut any = false;
                for v in value.split(|c| *c == b',').map(trim) {
                    any = true;
                    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
                        return Err(bad);
                    }
                    let n = v.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
                    if length.is_some_and(|l| l != n) {
                        return Err(bad);
                    }
                    length = Some(n);
                }
                if !any {
                    return Err(bad);
                }
            }
            Field::TransferEncoding => {
                let last = elements(value).last().ok_or(bad)?;
                chunked_last = Some(last.eq_ignore_ascii_case(b"chunked"));
            }
            Field::Connection => {
                for t in elements(value) {
                    close |= t.eq_ignore_ascii_case(b"close");
                    keep_alive |= t.eq_ignore_ascii_case(b"keep-alive");
                }
            }
            Field::Expect => {
                if expect.is_none() {
                    expect = Some(value.eq_ignore_ascii_case(b"100-continue"));
                }
            }
        }
    }
    let framing = match chunked_last {
        // CL + TE is the classic smuggling pair; HTTP/1.0 has no chunked coding; a request
        // whose last coding is not chunked has no knowable end.
        Some(chunked) => {
            if length.is_some() || http10 || !chunked {
                return Err(bad);
            }
            BodyFraming::Chunked
        }
        None => match length {
            Some(n) if n > 0 => BodyFraming::Length(n),
            _ => BodyFraming::None,
        },
    };
    Ok(Parts {
        method,
        target,
        checked: Checked {
            framing,
            http10,
            close,
            keep_alive,
            expects_continue: !http10 && framing != BodyFraming::None && expect == Some(true),
            head_method: is_head,
        },
    })
}

/// What the start of a connection's buffer holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Scan {
    /// A whole head of this many bytes, within the size limit (not checked yet).
    Head(usize),
    /// Not a whole head yet; `searched` bytes need not be searched again.
    Partial { searched: usize },
}

/// Looks for a whole head at the front of `buf`. `searched` is what an earlier call on the
/// same head reported.
pub fn scan(buf: &[u8], searched: usize, limits: &HeadLimits) -> Result<Scan, Refusal> {
    let Some(end) = head_end(buf, searched) else {
        if let Some(r) = bad_request_line(buf) {
            // HTTP/0.9 sends one line and waits: answer now, not at the 408.
            return Err(r);
        }
        if buf.len() > limits.max_bytes {
            return Err(oversized(buf, limits));
        }
        return Ok(Scan::Partial {
            searched: buf.len(),
        });
    };
    if end > limits.max_bytes {
        return Err(oversized(buf, limits));
    }
    Ok(Scan::Head(end))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(crate) const LIMITS: HeadLimits = HeadLimits {
        max_fields: 128,
        max_bytes: 64 * 1024,
        max_target: 8 * 1024,
    };
    const MAX_TARGET_LEN: usize = LIMITS.max_target;
    const MAX_HEADER_BYTES: usize = LIMITS.max_bytes;

    fn check(s: &str) -> Result<BodyFraming, Refused> {
        check_head(s.as_bytes(), &LIMITS)
            .map(|c| c.framing)
            .map_err(|r| r.0)
    }

    #[test]
    fn heads() {
        assert_eq!(
            check("GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
            Ok(BodyFraming::None)
        );
        assert_eq!(
            check("\r\nGET / HTTP/1.1\nHost: a\n\n"),
            Ok(BodyFraming::None)
        );
        assert_eq!(
            check("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n"),
            Ok(BodyFraming::Length(5))
        );
        assert_eq!(
            check("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n"),
            Ok(BodyFraming::Length(5))
        );
        assert_eq!(
            check("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n"),
            Ok(BodyFraming::None)
        );
        assert_eq!(
            check("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Ok(BodyFraming::Chunked)
        );
        assert_eq!(
            check("PUT / HTTP/1.1\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n"),
            Ok(BodyFraming::Chunked)
        );
        let bad = Err(Refused::BadRequest);
        for s in [
            "GET /\r\n\r\n",
            "GET / HTTP/1.1 x\r\n\r\n",
            "GET / HTTP/2.0\r\nHost: a\r\n\r\n",
            "G@T / HTTP/1.1\r\nHost: a\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: \r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n",
            "POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \r\n\r\n",
            "GET / HTTP/1.1\r\nHost : a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
            "GET / HTTP/1.1\r\nNoColon\r\n\r\n",
            "GET / HTTP/1.1\r\nX: a\x01b\r\n\r\n",
        ] {
            assert_eq!(check(s), bad, "{s:?}");
        }
        let many: String = (0..129).map(|i| format!("X-{i}: v\r\n")).collect();
        assert_eq!(
            check(&format!("GET / HTTP/1.1\r\n{many}\r\n")),
            Err(Refused::HeaderFieldsTooLarge)
        );
        let long = "a".repeat(MAX_TARGET_LEN + 1);
        assert_eq!(
            check(&format!("GET /{long} HTTP/1.1\r\nHost: a\r\n\r\n")),
            Err(Refused::UriTooLong)
        );
        assert_eq!(
            check_head(b"HEAD / HTTP/1.1\r\nX: \x7f\r\n\r\n", &LIMITS),
            Err(Refusal(Refused::BadRequest, true))
        );
    }

    #[test]
    fn connection_and_expect_are_read_in_the_same_pass() {
        let c = |s: &str| check_head(s.as_bytes(), &LIMITS).unwrap();
        assert!(c("GET / HTTP/1.1\r\n\r\n").persistent());
        assert!(!c("GET / HTTP/1.0\r\n\r\n").persistent());
        assert!(c("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").persistent());
        assert!(!c("GET / HTTP/1.1\r\nConnection: upgrade, close\r\n\r\n").persistent());
        assert!(!c("GET / HTTP/1.1\r\nConnection: x\r\nConnection: close\r\n\r\n").persistent());
        let post = "POST / HTTP/1.1\r\nContent-Length: 2\r\nExpect: 100-Continue\r\n\r\n";
        assert!(c(post).expects_continue);
        // Nothing to continue to without a body, and HTTP/1.0 has no interim answers.
        assert!(!c("GET / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n").expects_continue);
        assert!(
            !c("POST / HTTP/1.0\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
                .expects_continue
        );
        assert!(!c("POST / HTTP/1.1\r\nContent-Length: 2\r\nExpect: x\r\n\r\n").expects_continue);
    }

    #[test]
    fn http09_is_refused_on_its_first_line() {
        assert!(bad_request_line(b"GET /\r\n").is_some());
        assert!(bad_request_line(b"\r\nGET /x HTTP/1.1\r\n").is_none());
        assert!(
            bad_request_line(b"GET /x HTTP/1.1").is_none(),
            "line not complete yet"
        );
    }

    #[test]
    fn tchar_table_matches_rfc_9110() {
        let listed = b"!#$%&'*+-.^_`|~";
        for b in 0..=255u8 {
            let expected = b.is_ascii_alphanumeric() || listed.contains(&b);
            assert_eq!(is_tchar(b), expected, "byte {b}");
        }
    }

    #[test]
    fn head_end_finds_the_blank_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nrest", 0), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\nrest", 0), Some(16));
        assert_eq!(
            head_end(b"\r\n\r\nGET / HTTP/1.1\r\nA: b\r\n\r\n", 0),
            Some(28)
        );
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n", 0), None);
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n\r", 0), None);
    }

    #[test]
    fn a_head_that_trickles_in_is_found_wherever_it_was_cut() {
        let whole = b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\nnext";
        let end = head_end(whole, 0).unwrap();
        // Fed byte by byte, each search resuming where the last stopped, the end is found
        // exactly when its last byte arrives.
        let mut searched = 0;
        for len in 1..=whole.len() {
            match scan(&whole[..len], searched, &LIMITS).unwrap() {
                Scan::Head(at) => {
                    assert_eq!((at, len), (end, end));
                    return;
                }
                Scan::Partial { searched: s } => searched = s,
            }
        }
        panic!("never found the end");
    }

    #[test]
    fn oversized_heads_name_the_limit_they_broke() {
        let long_target = format!("GET /{} HTTP/1.1\r\n", "a".repeat(MAX_HEADER_BYTES));
        assert_eq!(
            scan(long_target.as_bytes(), 0, &LIMITS).err(),
            Some(Refusal(Refused::UriTooLong, false))
        );
        let big = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(MAX_HEADER_BYTES));
        assert_eq!(
            scan(big.as_bytes(), 0, &LIMITS).err(),
            Some(Refusal(Refused::HeaderFieldsTooLarge, false))
        );
        let ended = format!(
            "HEAD / HTTP/1.1\r\nX: {}\r\n\r\n",
            "a".repeat(MAX_HEADER_BYTES)
        );
        assert_eq!(
            scan(ended.as_bytes(), 0, &LIMITS).err(),
            Some(Refusal(Refused::HeaderFieldsTooLarge, true))
        );
    }
}
