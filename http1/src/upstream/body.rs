//! The response body read from an instance's connection. When the body ends cleanly on a
//! keep-alive connection, the connection goes back to the pool; in every other case (cut
//! short, dropped early, extra bytes, `Connection: close`) it is closed.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::net::TcpStream;

use super::head::Framing;
use super::pool::Pool;
use crate::chunked::{ChunkedDecoder, Step};
use crate::rewind::{poll_read_append, poll_read_into, Rewind, DIRECT_READ, DIRECT_READ_MAX};
use crate::BoxError;

#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("instance closed the connection before the end of the body")]
    Truncated,
    #[error("reading the response body failed: {0}")]
    Io(#[from] io::Error),
    #[error("malformed chunked body: {0}")]
    Chunked(#[from] crate::chunked::ChunkError),
}

enum Delimit {
    Length(u64),
    Chunked(ChunkedDecoder),
    UntilClose,
    Done,
}

pub struct UpstreamBody {
    stream: Option<TcpStream>,
    buf: BytesMut,
    delimit: Delimit,
    reusable: bool,
    pool: Arc<Pool>,
    port: u16,
}

impl UpstreamBody {
    pub(super) fn new(
        stream: TcpStream,
        buf: BytesMut,
        framing: Framing,
        reusable: bool,
        pool: Arc<Pool>,
        port: u16,
    ) -> Self {
        let delimit = match framing {
            Framing::Empty | Framing::Length(0) => Delimit::Done,
            Framing::Length(n) => Delimit::Length(n),
            Framing::Chunked => Delimit::Chunked(ChunkedDecoder::new()),
            Framing::UntilClose => Delimit::UntilClose,
        };
        let mut body = Self {
            stream: Some(stream),
            buf,
            delimit,
            reusable,
            pool,
            port,
        };
        if matches!(body.delimit, Delimit::Done) {
            body.finish();
        }
        body
    }

    /// A `101 Switching Protocols` answer: no body, and the connection is kept for
    /// [`Self::into_upgraded`] (or closed when nobody takes it).
    pub(super) fn upgraded(stream: TcpStream, buf: BytesMut, pool: Arc<Pool>, port: u16) -> Self {
        Self {
            stream: Some(stream),
            buf,
            delimit: Delimit::Done,
            reusable: false,
            pool,
            port,
        }
    }

    /// The connection after a `101 Switching Protocols`, with the bytes the instance already
    /// sent past its response head.
    pub fn into_upgraded(mut self) -> Option<Upgraded> {
        let stream = self.stream.take()?;
        Some(Rewind::new(std::mem::take(&mut self.buf).freeze(), stream))
    }

    /// The body ended: the connection is pooled when nothing is left over on it.
    fn finish(&mut self) {
        self.delimit = Delimit::Done;
        if let Some(stream) = self.stream.take() {
            if self.reusable && self.buf.is_empty() {
                self.pool.put(self.port, stream);
            }
        }
    }

    /// Reads more into the buffer; `Ok(0)` at end of stream. The rest of a large body of
    /// known length is read straight into the buffer, in large reads.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<Result<usize, BodyError>> {
        let Some(stream) = self.stream.as_mut() else {
            return Poll::Ready(Ok(0));
        };
        let n = match self.delimit {
            Delimit::Length(left) if left >= DIRECT_READ => {
                let want =
                    usize::try_from(left).map_or(DIRECT_READ_MAX, |l| l.min(DIRECT_READ_MAX));
                ready!(poll_read_into(stream, cx, &mut self.buf, want))?
            }
            _ => ready!(poll_read_append(stream, cx, &mut self.buf))?,
        };
        Poll::Ready(Ok(n))
    }
}

impl HttpBody for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            match &mut this.delimit {
                Delimit::Done => return Poll::Ready(None),
                Delimit::Length(left) => {
                    if !this.buf.is_empty() {
                        let take = usize::try_from(*left)
                            .map_or(this.buf.len(), |l| l.min(this.buf.len()));
                        let data = this.buf.split_to(take).freeze();
                        *left -= take as u64;
                        if *left == 0 {
                            this.finish();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                Delimit::Chunked(dec) => match dec.step(&mut this.buf) {
                    Ok(Step::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(Step::Done) => {
                        this.finish();
                        return Poll::Ready(None);
                    }
                    Ok(Step::NeedMore) => {}
                    Err(e) => return fail(this, e.into()),
                },
                Delimit::UntilClose => {
                    if !this.buf.is_empty() {
                        let data = this.buf.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
            }
            match ready!(this.poll_fill(cx)) {
                Ok(0) if matches!(this.delimit, Delimit::UntilClose) => {
                    this.reusable = false;
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(0) => return fail(this, BodyError::Truncated),
                Ok(_) => {}
                Err(e) => return fail(this, e),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.delimit, Delimit::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.delimit {
            Delimit::Done => SizeHint::with_exact(0),
            Delimit::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

fn fail(body: &mut UpstreamBody, e: BodyError) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
    body.stream = None;
    body.delimit = Delimit::Done;
    Poll::Ready(Some(Err(Box::new(e))))
}

/// An instance's side of an upgraded connection (WebSocket and the like), with the bytes it
/// sent past its response head.
pub type Upgraded = Rewind<TcpStream>;
