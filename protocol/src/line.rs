//! Reads request lines with the 1 MiB cap enforced while reading (docs/management-protocol.md,
//! "Lines"): at most one line's worth of bytes is ever held, however long the peer's line is.

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

use crate::request::MAX_LINE_LEN;

/// What one [`LineReader::next_line`] call produced.
#[derive(Debug, PartialEq, Eq)]
pub enum LineEvent {
    /// A complete line without its `\n`. A last line cut off by EOF counts too.
    Line(Vec<u8>),
    /// The line went over the cap. It is reported as soon as that is known; the rest of it,
    /// up to and including its `\n`, is skipped by the following calls.
    TooLong,
    /// The peer closed the stream and no line is pending.
    Eof,
}

/// Line reader over any byte stream. Cancel-safe: partial input lives in the reader, so a
/// dropped `next_line` future (a timeout, a shutdown `select!`) loses nothing.
pub struct LineReader<R> {
    inner: BufReader<R>,
    max_len: usize,
    buf: Vec<u8>,
    /// Skipping the remainder of an over-long line.
    discarding: bool,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    pub fn new(inner: R) -> Self {
        Self::with_max_len(inner, MAX_LINE_LEN)
    }

    /// `max_len` counts the newline, like [`MAX_LINE_LEN`].
    pub fn with_max_len(inner: R, max_len: usize) -> Self {
        LineReader {
            inner: BufReader::new(inner),
            max_len: max_len.max(1),
            buf: Vec::new(),
            discarding: false,
        }
    }

    pub async fn next_line(&mut self) -> std::io::Result<LineEvent> {
        loop {
            let available = self.inner.fill_buf().await?;
            if available.is_empty() {
                self.discarding = false;
                if self.buf.is_empty() {
                    return Ok(LineEvent::Eof);
                }
                return Ok(LineEvent::Line(std::mem::take(&mut self.buf)));
            }
            let newline = available.iter().position(|&b| b == b'\n');

            if self.discarding {
                match newline {
                    Some(i) => {
                        self.inner.consume(i + 1);
                        self.discarding = false;
                    }
                    None => {
                        let n = available.len();
                        self.inner.consume(n);
                    }
                }
                continue;
            }

            // A line may hold `max_len - 1` bytes plus its newline, or `max_len` bytes when EOF
            // ends it without one. One byte more than that and it is too long.
            let room = self.max_len - self.buf.len();
            match newline {
                Some(i) if i < room => {
                    self.buf.extend_from_slice(&available[..i]);
                    self.inner.consume(i + 1);
                    return Ok(LineEvent::Line(std::mem::take(&mut self.buf)));
                }
                _ if available.len() <= room => {
                    // No newline here and the bytes still fit (as a possible EOF-ended line).
                    let n = available.len();
                    self.buf.extend_from_slice(available);
                    self.inner.consume(n);
                }
                _ => {
                    // Over the cap: either a newline past the room or more bytes than fit.
                    self.buf = Vec::new();
                    match newline {
                        Some(i) => self.inner.consume(i + 1),
                        None => {
                            let n = available.len();
                            self.inner.consume(n);
                            self.discarding = true;
                        }
                    }
                    return Ok(LineEvent::TooLong);
                }
            }
        }
    }

    /// The stream back, with any read-ahead bytes dropped.
    pub fn into_inner(self) -> R {
        self.inner.into_inner()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn events(input: Vec<u8>, max_len: usize) -> Vec<LineEvent> {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let writer = tokio::spawn(async move {
            client.write_all(&input).await.expect("write");
            client.shutdown().await.expect("shutdown");
        });
        let mut reader = LineReader::with_max_len(server, max_len);
        let mut out = Vec::new();
        loop {
            let ev = reader.next_line().await.expect("read");
            let done = ev == LineEvent::Eof;
            out.push(ev);
            if done {
                break;
            }
        }
        writer.await.expect("writer");
        out
    }

    fn line(s: &[u8]) -> LineEvent {
        LineEvent::Line(s.to_vec())
    }

    #[tokio::test]
    async fn lines_and_last_line_without_newline() {
        let got = events(b"a\n\nbc\nlast".to_vec(), MAX_LINE_LEN).await;
        assert_eq!(
            got,
            [
                line(b"a"),
                line(b""),
                line(b"bc"),
                line(b"last"),
                LineEvent::Eof
            ]
        );
        assert_eq!(events(Vec::new(), MAX_LINE_LEN).await, [LineEvent::Eof]);
    }

    #[tokio::test]
    async fn exact_cap_line_is_accepted() {
        // 1048575 bytes plus the newline is exactly 1 MiB.
        let mut input = vec![b'x'; MAX_LINE_LEN - 1];
        input.push(b'\n');
        input.extend_from_slice(b"next\n");
        let got = events(input, MAX_LINE_LEN).await;
        assert_eq!(got.len(), 3);
        assert!(matches!(&got[0], LineEvent::Line(l) if l.len() == MAX_LINE_LEN - 1));
        assert_eq!(got[1], line(b"next"));
    }

    #[tokio::test]
    async fn cap_plus_one_is_too_long_and_the_next_line_works() {
        let mut input = vec![b'x'; MAX_LINE_LEN];
        input.push(b'\n');
        input.extend_from_slice(b"{\"command\":\"list\"}\n");
        let got = events(input, MAX_LINE_LEN).await;
        assert_eq!(
            got,
            [
                LineEvent::TooLong,
                line(b"{\"command\":\"list\"}"),
                LineEvent::Eof
            ]
        );
    }

    #[tokio::test]
    async fn cap_sized_last_line_before_eof_is_a_line() {
        // No newline, so the line is exactly 1 MiB long: within the cap.
        let got = events(vec![b'y'; MAX_LINE_LEN], MAX_LINE_LEN).await;
        assert!(matches!(&got[0], LineEvent::Line(l) if l.len() == MAX_LINE_LEN));
        let got = events(vec![b'y'; MAX_LINE_LEN + 1], MAX_LINE_LEN).await;
        assert_eq!(got, [LineEvent::TooLong, LineEvent::Eof]);
    }

    #[tokio::test]
    async fn five_mib_of_garbage_then_a_good_line() {
        let mut input: Vec<u8> = (0..5 * MAX_LINE_LEN).map(|i| (i % 251) as u8 | 1).collect();
        for b in input.iter_mut() {
            if *b == b'\n' {
                *b = b'z';
            }
        }
        input.push(b'\n');
        input.extend_from_slice(b"good\n");
        let got = events(input, MAX_LINE_LEN).await;
        assert_eq!(got, [LineEvent::TooLong, line(b"good"), LineEvent::Eof]);
    }

    #[tokio::test]
    async fn too_long_is_reported_before_the_line_ends() {
        // The peer keeps the over-long line open; the answer must not wait for its end.
        let (mut client, server) = tokio::io::duplex(4096);
        let mut reader = LineReader::with_max_len(server, 16);
        client.write_all(&[b'q'; 40]).await.expect("write");
        let ev = tokio::time::timeout(std::time::Duration::from_secs(5), reader.next_line())
            .await
            .expect("not stuck")
            .expect("read");
        assert_eq!(ev, LineEvent::TooLong);
        client.write_all(b"qqq\nok\n").await.expect("write");
        assert_eq!(reader.next_line().await.expect("read"), line(b"ok"));
    }

    #[tokio::test]
    async fn small_cap_boundaries() {
        // cap 4: "abc\n" fits, "abcd\n" does not, "abcd" at EOF fits.
        let got = events(b"abc\nabcd\nok\nabcd".to_vec(), 4).await;
        assert_eq!(
            got,
            [
                line(b"abc"),
                LineEvent::TooLong,
                line(b"ok"),
                line(b"abcd"),
                LineEvent::Eof
            ]
        );
    }
}
