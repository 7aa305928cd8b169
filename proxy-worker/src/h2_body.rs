//! An HTTP/2 request body as the pipeline reads it: hyper's stream, where each read must
//! bring a frame within the body-idle limit (docs/limits.md, "HTTP/2 limits").

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use tako_http1::LazyTimer;
use tokio::time::Instant;

use crate::body::BoxError;

#[derive(Debug, thiserror::Error)]
#[error("HTTP/2 request body idle for {0:?}")]
pub struct BodyIdle(pub Duration);

/// An HTTP/2 request body whose reads must each bring a frame within the body-idle limit.
pub struct StreamBody {
    inner: Incoming,
    idle: Duration,
    last_frame: Instant,
    /// Made on the first read that has to wait; a body that is already there costs none.
    timer: Option<LazyTimer>,
    /// Set when the limit passed, so the stream is reset rather than answered.
    timed_out: Arc<AtomicBool>,
}

impl StreamBody {
    pub fn new(inner: Incoming, idle: Duration, timed_out: Arc<AtomicBool>) -> Self {
        Self {
            inner,
            idle,
            last_frame: Instant::now(),
            timer: None,
            timed_out,
        }
    }

    pub fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }

    pub fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    pub fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                self.last_frame = Instant::now();
                Poll::Ready(frame.map(|r| r.map_err(|e| Box::new(e) as BoxError)))
            }
            Poll::Pending => {
                let deadline = self.last_frame + self.idle;
                let timer = self.timer.get_or_insert_with(LazyTimer::new);
                if timer.poll_expired(cx, deadline).is_pending() {
                    return Poll::Pending;
                }
                self.timed_out.store(true, Ordering::Relaxed);
                Poll::Ready(Some(Err(Box::new(BodyIdle(self.idle)))))
            }
        }
    }
}
