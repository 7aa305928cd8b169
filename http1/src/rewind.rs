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
    poll_read_append_up_to::<READ_SIZE, R>(io, cx, buf)
}

/// Bytes asked from the kernel for an instance's response head: [`READ_SIZE`] and room for a
/// head of up to 4 KiB, so that a 16 KiB body arrives with its head in one read and leaves in
/// one write (it took two of each at [`READ_SIZE`]). Not more: what arrives here is copied
/// from the stack, where a large body's rest is read straight into its buffer
/// ([`poll_read_into`]); 64 KiB here doubled the instructions of a 1 MiB download.
pub const HEAD_READ_SIZE: usize = READ_SIZE + 4 * 1024;

/// [`poll_read_append`] with up to `N` bytes per read.
pub fn poll_read_append_up_to<const N: usize, R: AsyncRead + Unpin + ?Sized>(
    io: &mut R,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
) -> Poll<io::Result<usize>> {
    let mut tmp = [MaybeUninit::<u8>::uninit(); N];
    let mut rb = ReadBuf::uninit(&mut tmp);
    ready!(Pin::new(io).poll_read(cx, &mut rb))?;
    buf.extend_from_slice(rb.filled());
    Poll::Ready(Ok(rb.filled().len()))
}

/// A body read goes straight into its buffer ([`poll_read_into`]) when at least this much
/// of the body is still to come.
pub const DIRECT_READ: u64 = 16 * 1024;
/// At most this much per direct read: with a 1 MiB body, 16 reads instead of 64.
pub const DIRECT_READ_MAX: usize = 64 * 1024;

/// Reads once straight into `buf`'s spare room, which is first made at least `want` bytes
/// (at most `want` are read): no copy through the stack as with [`poll_read_append`]. The
/// room stays while the read waits, so this is for the rest of a body of known length, which
/// is expected to come, and not for a wait between requests. Once the bytes handed out of
/// `buf` are gone, the next read reuses the same allocation.
pub fn poll_read_into<R: AsyncRead + Unpin + ?Sized>(
    io: &mut R,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
    want: usize,
) -> Poll<io::Result<usize>> {
    buf.reserve(want);
    let spare = buf.spare_capacity_mut();
    let room = spare.len().min(want);
    let mut rb = ReadBuf::uninit(&mut spare[..room]);
    let start = rb.filled().as_ptr();
    ready!(Pin::new(io).poll_read(cx, &mut rb))?;
    if rb.filled().as_ptr() != start {
        // A reader that swapped the `ReadBuf` filled someone else's memory.
        return Poll::Ready(Err(io::Error::other("reader replaced its read buffer")));
    }
    let n = rb.filled().len();
    // SAFETY: `ReadBuf` counts as filled only bytes the reader initialised, and those are the
    // first `n` bytes of `buf`'s spare room.
    unsafe { buf.set_len(buf.len() + n) };
    Poll::Ready(Ok(n))
}

/// [`poll_read_append`] as a future.
pub async fn read_append<R: AsyncRead + Unpin + ?Sized>(
    io: &mut R,
    buf: &mut BytesMut,
) -> io::Result<usize> {
    std::future::poll_fn(|cx| poll_read_append(io, cx, buf)).await
}

/// [`poll_read_append_up_to`] as a future.
pub async fn read_append_up_to<const N: usize, R: AsyncRead + Unpin + ?Sized>(
    io: &mut R,
    buf: &mut BytesMut,
) -> io::Result<usize> {
    std::future::poll_fn(|cx| poll_read_append_up_to::<N, R>(io, cx, buf)).await
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
