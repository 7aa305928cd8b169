//! Two small IO pieces the HTTP/1 loop and the upstream client share: reading that appends
//! exactly what arrived (through a stack buffer, so nothing is held or zeroed per read), and
//! a stream that first replays bytes already read past a head (upgraded connections).

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes asked from the kernel per read.
pub const READ_SIZE: usize = 16 * 1024;

/// Reads once and appends what arrived to `buf`; `Ok(0)` at end of stream. A small read
/// costs a small allocation, not a buffer of `READ_SIZE`.
pub fn poll_read_append<R: AsyncRead + Unpin + ?Sized>(
    io: &mut R,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
) -> Poll<io::Result<usize>> {
    let mut tmp = [MaybeUninit::<u8>::uninit(); READ_SIZE];
    let mut rb = ReadBuf::uninit(&mut tmp);
    ready!(Pin::new(io).poll_read(cx, &mut rb))?;
    buf.extend_from_slice(rb.filled());
    Poll::Ready(Ok(rb.filled().len()))
}

/// [`poll_read_append`] as a future.
pub async fn read_append<R: AsyncRead + Unpin + ?Sized>(
    io: &mut R,
    buf: &mut BytesMut,
) -> io::Result<usize> {
    std::future::poll_fn(|cx| poll_read_append(io, cx, buf)).await
}

/// A connection whose first bytes were already read: they are read again first.
pub struct Rewind<T> {
    prefix: Bytes,
    inner: T,
}

impl<T> Rewind<T> {
    pub fn new(prefix: Bytes, inner: T) -> Self {
        Self { prefix, inner }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
