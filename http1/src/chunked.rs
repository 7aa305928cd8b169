//! Decoding of a chunked response body (RFC 9112 §7.1): sizes, extensions and trailers are
//! read and dropped, data is handed on without copying. Lines are bounded, so a hostile
//! instance cannot make the worker buffer without limit.

use bytes::{Buf, Bytes, BytesMut};

/// Longest chunk-size line, extensions included.
const MAX_LINE: usize = 4096;
/// Most trailer bytes, all lines together.
const MAX_TRAILERS: usize = 16 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChunkError {
    #[error("invalid chunk size line")]
    BadSize,
    #[error("chunk size line longer than {MAX_LINE} bytes")]
    LineTooLong,
    #[error("chunk data not followed by CRLF")]
    MissingCrlf,
    #[error("trailers longer than {MAX_TRAILERS} bytes")]
    TrailersTooLong,
}

/// One step of decoding.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    Data(Bytes),
    /// The buffer holds no complete next piece: read more.
    NeedMore,
    /// The last chunk and the trailers were read.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
    Done,
}

#[derive(Debug)]
pub struct ChunkedDecoder {
    state: State,
    trailer_bytes: usize,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedDecoder {
    pub fn new() -> Self {
        Self {
            state: State::Size,
            trailer_bytes: 0,
        }
    }

    #[cfg(test)]
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Consumes what it can from `buf`.
    pub fn step(&mut self, buf: &mut BytesMut) -> Result<Step, ChunkError> {
        loop {
            match self.state {
                State::Done => return Ok(Step::Done),
                State::Size => {
                    let Some(line_len) = find_crlf(buf, MAX_LINE)? else {
                        return Ok(Step::NeedMore);
                    };
                    let size = parse_size(&buf[..line_len])?;
                    buf.advance(line_len + 2);
                    self.state = if size == 0 {
                        State::Trailers
                    } else {
                        State::Data(size)
                    };
                }
                State::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Step::NeedMore);
                    }
                    let take = usize::try_from(left).map_or(buf.len(), |l| l.min(buf.len()));
                    let data = buf.split_to(take).freeze();
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        State::DataEnd
                    } else {
                        State::Data(left)
                    };
                    return Ok(Step::Data(data));
                }
                State::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(Step::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(ChunkError::MissingCrlf);
                    }
                    buf.advance(2);
                    self.state = State::Size;
                }
                State::Trailers => {
                    let room = MAX_TRAILERS.saturating_sub(self.trailer_bytes);
                    let Some(line_len) = find_crlf(buf, room).map_err(|e| match e {
                        ChunkError::LineTooLong => ChunkError::TrailersTooLong,
                        other => other,
                    })?
                    else {
                        return Ok(Step::NeedMore);
                    };
                    buf.advance(line_len + 2);
                    self.trailer_bytes += line_len + 2;
                    if line_len == 0 {
                        self.state = State::Done;
                    }
                }
            }
        }
    }
}

/// Length of the line before the first CRLF, if the buffer holds one within `limit` bytes.
fn find_crlf(buf: &[u8], limit: usize) -> Result<Option<usize>, ChunkError> {
    let window = &buf[..buf.len().min(limit.saturating_add(2))];
    match window.windows(2).position(|w| w == b"\r\n") {
        Some(at) => Ok(Some(at)),
        None if buf.len() >= limit.saturating_add(2) => Err(ChunkError::LineTooLong),
        None => Ok(None),
    }
}

/// `1*HEXDIG [ BWS ";" extensions ]`; the extensions are ignored.
fn parse_size(line: &[u8]) -> Result<u64, ChunkError> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return Err(ChunkError::BadSize);
    }
    let rest = &line[digits..];
    let rest_ok = rest.is_empty()
        || rest
            .iter()
            .position(|&b| b != b' ' && b != b'\t')
            .is_some_and(|i| rest[i] == b';');
    if !rest_ok || line.contains(&b'\n') || line.contains(&b'\r') {
        return Err(ChunkError::BadSize);
    }
    let text = std::str::from_utf8(&line[..digits]).map_err(|_| ChunkError::BadSize)?;
    u64::from_str_radix(text, 16).map_err(|_| ChunkError::BadSize)
}

/// Appends a chunk-size line, `{len:x}\r\n`, without formatting machinery: both directions
/// write one per chunk.
pub fn chunk_size_line(out: &mut Vec<u8>, len: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    let mut n = len;
    loop {
        i -= 1;
        digits[i] = HEX[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_size_lines_are_lower_hex() {
        for len in [0usize, 1, 15, 16, 255, 4096, 0x1234_abcd, usize::MAX] {
            let mut out = Vec::new();
            chunk_size_line(&mut out, len);
            assert_eq!(out, format!("{len:x}\r\n").into_bytes());
        }
    }

    fn decode_all(input: &[u8], piece: usize) -> Result<(Vec<u8>, bool, usize), ChunkError> {
        let mut dec = ChunkedDecoder::new();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut fed = 0;
        for part in input.chunks(piece.max(1)) {
            buf.extend_from_slice(part);
            fed += part.len();
            loop {
                match dec.step(&mut buf)? {
                    Step::Data(d) => out.extend_from_slice(&d),
                    Step::NeedMore => break,
                    // Unconsumed: what is buffered and what was never fed.
                    Step::Done => return Ok((out, true, buf.len() + input.len() - fed)),
                }
            }
        }
        Ok((out, dec.is_done(), buf.len()))
    }

    #[test]
    fn decodes_any_split_of_the_input() {
        let input = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        for piece in 1..input.len() {
            let (data, done, left) = decode_all(input, piece).unwrap();
            assert_eq!(data, b"hello, world", "piece {piece}");
            assert!(done);
            assert_eq!(left, 4, "bytes after the body stay in the buffer");
        }
    }

    #[test]
    fn uppercase_hex_and_whitespace_before_extensions() {
        let (data, done, _) = decode_all(b"A  ;x\r\n0123456789\r\n0\r\n\r\n", 64).unwrap();
        assert_eq!(data.len(), 10);
        assert!(done);
    }

    #[test]
    fn refuses_malformed_framing() {
        for bad in [
            &b"\r\n"[..],
            b"zz\r\n",
            b"5 x\r\nhello\r\n",
            b"-5\r\n",
            b"11111111111111111\r\n",
            b"3\r\nabcX\r\n",
        ] {
            assert!(
                decode_all(bad, 64).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn bounds_size_lines_and_trailers() {
        let mut long = b"1;".to_vec();
        long.extend(std::iter::repeat_n(b'a', MAX_LINE + 10));
        assert_eq!(decode_all(&long, 512).unwrap_err(), ChunkError::LineTooLong);
        let mut trailers = b"0\r\n".to_vec();
        for _ in 0..2000 {
            trailers.extend_from_slice(b"X-Trailer: 0123456789\r\n");
        }
        assert_eq!(
            decode_all(&trailers, 1024).unwrap_err(),
            ChunkError::TrailersTooLong
        );
    }

    #[test]
    fn incomplete_input_asks_for_more() {
        let (data, done, _) = decode_all(b"5\r\nhel", 64).unwrap();
        assert_eq!(data, b"hel");
        assert!(!done);
    }
}
