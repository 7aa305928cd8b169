//! The last stage of a request: the response head and body go out, framed for the client
//! (response.rs decides the framing), and a connection that ends is closed gently.

use std::io;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::Response;
use http_body::Body as HttpBody;
use http_body_util::BodyExt;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::response::{self, Framing};
use super::Io;
use crate::chunked::chunk_size_line;
use crate::rewind::read_append;
use crate::BoxError;

/// Body frames up to this size are copied next to the head (or chunk line) to go out in one
/// write; larger ones are written on their own.
const COALESCE: usize = 16 * 1024;
/// On a connection that writes vectored (plain TCP), frames larger than this go out with the
/// head in one `writev` instead of being copied next to it: the write buffer then stays small
/// enough to keep between requests (conn.rs) and body bytes are not copied in user space.
const COPY_VECTORED: usize = 1024;
/// After a response that closes the connection, unread client bytes are drained this long
/// (so closing does not reset the connection under the response).
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 1024 * 1024;

/// Writes the response; `Ok(true)` when the connection may carry another request.
pub(super) async fn write_response<W: AsyncWrite + Unpin, B>(
    io: &mut W,
    out: &mut Vec<u8>,
    resp: Response<B>,
    version: http::Version,
    head_request: bool,
    keep_alive: bool,
) -> io::Result<bool>
where
    B: HttpBody<Data = Bytes, Error: Into<BoxError>> + Unpin,
{
    let (mut parts, mut body) = resp.into_parts();
    let known_len = if body.is_end_stream() {
        Some(0)
    } else {
        body.size_hint().exact()
    };
    let plan = response::encode(
        out,
        version,
        head_request,
        parts.status,
        &mut parts.headers,
        known_len,
        keep_alive,
    );
    if plan.framing == Framing::NoBody {
        drop(body);
        io.write_all(out).await?;
        io.flush().await?;
        return Ok(plan.keep_alive);
    }
    let mut left = match plan.framing {
        Framing::Length(n) => Some(n),
        _ => None,
    };
    let chunked = plan.framing == Framing::Chunked;
    // The head waits for the first body bytes only if they are already there.
    let first = std::future::poll_fn(|cx| match Pin::new(&mut body).poll_frame(cx) {
        Poll::Ready(frame) => Poll::Ready(Some(frame)),
        Poll::Pending => Poll::Ready(None),
    })
    .await;
    // `None` once the body has ended.
    let mut pending = match first {
        Some(frame) => frame,
        None => {
            io.write_all(out).await?;
            io.flush().await?;
            out.clear();
            body.frame().await
        }
    };
    while let Some(frame) = pending.take() {
        let frame = frame.map_err(|e| io::Error::other(e.into()))?;
        if let Ok(data) = frame.into_data() {
            if !data.is_empty() {
                if let Some(left) = left.as_mut() {
                    if data.len() as u64 > *left {
                        return Err(io::Error::other("response body longer than its length"));
                    }
                    *left -= data.len() as u64;
                }
                if chunked {
                    chunk_size_line(out, data.len());
                }
                let copy = if io.is_write_vectored() {
                    data.len() <= COPY_VECTORED
                } else {
                    data.len() <= COALESCE
                };
                if copy {
                    out.extend_from_slice(&data);
                } else {
                    write_both(io, out, &data).await?;
                    out.clear();
                }
                if chunked {
                    out.extend_from_slice(b"\r\n");
                }
            }
        }
        if body.is_end_stream() {
            break;
        }
        // Streamed bodies (SSE and the like) go out frame by frame.
        if !out.is_empty() {
            io.write_all(out).await?;
            out.clear();
        }
        io.flush().await?;
        pending = body.frame().await;
    }
    if left.is_some_and(|l| l > 0) {
        return Err(io::Error::other("response body shorter than its length"));
    }
    if chunked {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    if !out.is_empty() {
        io.write_all(out).await?;
    }
    io.flush().await?;
    Ok(plan.keep_alive && plan.framing != Framing::UntilClose)
}

/// Writes `first`, then `second`: in one `writev` where the connection has it, so `second`
/// need not be copied next to `first`.
async fn write_both<W: AsyncWrite + Unpin>(
    io: &mut W,
    mut first: &[u8],
    mut second: &[u8],
) -> io::Result<()> {
    while !first.is_empty() {
        let n = io
            .write_vectored(&[io::IoSlice::new(first), io::IoSlice::new(second)])
            .await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        if n < first.len() {
            first = &first[n..];
        } else {
            second = &second[n - first.len()..];
            first = &[];
        }
    }
    io.write_all(second).await
}

/// Closes after the last response: a FIN first, then whatever the client still sends is
/// read and dropped for a moment, so that the close does not reset the connection before
/// the client has read the answer.
pub(super) async fn linger_close<I: Io>(io: &mut I) {
    let _ = io.shutdown().await;
    let drain = async {
        let mut seen = 0usize;
        let mut sink = BytesMut::new();
        while seen < LINGER_BYTES {
            sink.clear();
            match read_append(io, &mut sink).await {
                Ok(n) if n > 0 => seen += n,
                _ => break,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::task::Context;

    use http::{StatusCode, Version};
    use http_body::{Frame, SizeHint};
    use http_body_util::Full;

    use super::*;

    /// A body of frames whose length is not known in advance (a streamed answer).
    struct Frames(VecDeque<&'static [u8]>);

    impl HttpBody for Frames {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(
                self.0
                    .pop_front()
                    .map(|d| Ok(Frame::data(Bytes::from_static(d)))),
            )
        }

        fn size_hint(&self) -> SizeHint {
            SizeHint::default()
        }
    }

    /// A connection that takes at most `step` bytes per write, vectored or not.
    struct Trickle {
        got: Vec<u8>,
        step: usize,
        writes: usize,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = buf.len().min(self.step);
            self.got.extend_from_slice(&buf[..n]);
            self.writes += 1;
            Poll::Ready(Ok(n))
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[io::IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(self.step - n);
                self.got.extend_from_slice(&b[..take]);
                n += take;
            }
            self.writes += 1;
            Poll::Ready(Ok(n))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn head_and_large_body_survive_partial_vectored_writes() {
        let body: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        // Steps that end writes inside the head, on its last byte, and inside the body.
        for step in [1, 7, 50, 51, 52, 4096, 1 << 20] {
            let mut conn = Trickle {
                got: Vec::new(),
                step,
                writes: 0,
            };
            let mut buf = Vec::new();
            let resp = with_date(Full::new(Bytes::from(body.clone())));
            let kept = write_response(&mut conn, &mut buf, resp, Version::HTTP_11, false, true)
                .await
                .unwrap();
            assert!(kept);
            let head = b"HTTP/1.1 200 OK\r\ndate: D\r\ncontent-length: 20000\r\n\r\n";
            assert_eq!(&conn.got[..head.len()], head, "step {step}");
            assert!(
                conn.got[head.len()..] == body[..],
                "step {step}: body bytes"
            );
            if step == 1 << 20 {
                assert_eq!(conn.writes, 1, "head and body in one write");
            }
        }
    }

    async fn write<B>(resp: Response<B>, version: Version, head: bool) -> (String, io::Result<bool>)
    where
        B: HttpBody<Data = Bytes, Error: Into<BoxError>> + Unpin,
    {
        let (mut out, mut buf) = (Vec::new(), Vec::new());
        let kept = write_response(&mut out, &mut buf, resp, version, head, true).await;
        (String::from_utf8(out).unwrap(), kept)
    }

    fn with_date<B>(body: B) -> Response<B> {
        let mut resp = Response::new(body);
        resp.headers_mut()
            .insert(http::header::DATE, http::HeaderValue::from_static("D"));
        resp
    }

    #[tokio::test]
    async fn a_known_length_goes_out_with_its_head_in_one_piece() {
        let (text, kept) = write(
            with_date(Full::new(Bytes::from_static(b"hello"))),
            Version::HTTP_11,
            false,
        )
        .await;
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\ndate: D\r\ncontent-length: 5\r\n\r\nhello"
        );
        assert!(kept.unwrap());
    }

    #[tokio::test]
    async fn an_unknown_length_is_chunked_or_closes_for_http10() {
        let frames = || Frames(VecDeque::from([&b"ab"[..], b"", b"cde"]));
        let (text, kept) = write(with_date(frames()), Version::HTTP_11, false).await;
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\ndate: D\r\ntransfer-encoding: chunked\r\n\r\n\
             2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n"
        );
        assert!(kept.unwrap());
        let (text, kept) = write(with_date(frames()), Version::HTTP_10, false).await;
        assert_eq!(
            text,
            "HTTP/1.0 200 OK\r\ndate: D\r\nconnection: close\r\n\r\nabcde"
        );
        assert!(!kept.unwrap(), "the close delimits the body");
    }

    #[tokio::test]
    async fn head_answers_have_no_body_and_short_or_long_bodies_fail() {
        let (text, _) = write(
            with_date(Full::new(Bytes::from_static(b"hello"))),
            Version::HTTP_11,
            true,
        )
        .await;
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\ndate: D\r\ncontent-length: 5\r\n\r\n"
        );
        for declared in ["3", "9"] {
            let mut resp = with_date(Frames(VecDeque::from([&b"hello"[..]])));
            resp.headers_mut().insert(
                http::header::CONTENT_LENGTH,
                http::HeaderValue::from_static(declared),
            );
            let (_, kept) = write(resp, Version::HTTP_11, false).await;
            assert!(kept.is_err(), "declared {declared}, sent 5");
        }
        let mut resp = with_date(Full::new(Bytes::new()));
        *resp.status_mut() = StatusCode::NO_CONTENT;
        let (text, _) = write(resp, Version::HTTP_11, false).await;
        assert_eq!(text, "HTTP/1.1 204 No Content\r\ndate: D\r\n\r\n");
    }
}
