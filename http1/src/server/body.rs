//! The request body of an HTTP/1 request on our own connection loop: frames the loop reads
//! off the connection and hands over through a one-slot channel, so the client is read only
//! as fast as the instance takes the body.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::sync::mpsc;

use crate::BoxError;

pub(super) type Sender = mpsc::Sender<Result<Bytes, BoxError>>;

pub struct OwnBody {
    rx: mpsc::Receiver<Result<Bytes, BoxError>>,
    /// `Content-Length`, when the request had one.
    length: Option<u64>,
    done: bool,
}

impl OwnBody {
    pub(super) fn channel(length: Option<u64>) -> (Sender, Self) {
        let (tx, rx) = mpsc::channel(1);
        (
            tx,
            Self {
                rx,
                length,
                done: false,
            },
        )
    }
}

impl HttpBody for OwnBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(data))) => Poll::Ready(Some(Ok(Frame::data(data)))),
            Poll::Ready(Some(Err(e))) => {
                self.done = true;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                self.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        match self.length {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}
