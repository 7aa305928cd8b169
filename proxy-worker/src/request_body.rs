//! Request bodies as the pipeline sees them, from whichever connection handler read them, and
//! the upstream request body that can be handed back for a retry when it was never polled.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};

use crate::body::BoxError;
use crate::h2_body::StreamBody;

#[derive(Debug, thiserror::Error)]
#[error("request body exceeds {0} bytes")]
pub struct BodyTooLarge(pub u64);

/// A request body as the pipeline sees it, from whichever connection handler read it.
pub enum RequestBody {
    Empty,
    /// HTTP/2, through hyper, with the body-idle limit (h2_limits.rs).
    Hyper(StreamBody),
    /// HTTP/1, through our own connection loop (the http1 crate).
    Own(tako_http1::server::OwnBody),
}

impl HttpBody for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            RequestBody::Empty => Poll::Ready(None),
            RequestBody::Hyper(b) => b.poll_frame(cx),
            RequestBody::Own(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Empty => true,
            RequestBody::Hyper(b) => b.is_end_stream(),
            RequestBody::Own(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Empty => SizeHint::with_exact(0),
            RequestBody::Hyper(b) => b.size_hint(),
            RequestBody::Own(b) => b.size_hint(),
        }
    }
}

/// What a request's upstream attempts share: the body until an attempt takes it, and what
/// went wrong with it. One allocation per proxied request.
pub struct ReplayState {
    slot: Mutex<Option<RequestBody>>,
    too_large: AtomicBool,
    /// Reading the client's body failed (bad chunking, cut off): the failure is the client's,
    /// so the answer is a 400, not a 502 (docs/http.md, "Error responses").
    client_failed: AtomicBool,
}

impl ReplayState {
    pub fn new(body: Option<RequestBody>) -> Arc<Self> {
        Arc::new(Self {
            slot: Mutex::new(body),
            too_large: AtomicBool::new(false),
            client_failed: AtomicBool::new(false),
        })
    }

    /// No attempt has taken the body yet: nothing of it was sent.
    pub fn untouched(&self) -> bool {
        self.slot.lock().map(|s| s.is_some()).unwrap_or(false)
    }

    pub fn too_large(&self) -> bool {
        self.too_large.load(Ordering::Relaxed)
    }

    pub fn client_failed(&self) -> bool {
        self.client_failed.load(Ordering::Relaxed)
    }
}

/// The downstream request body, sent upstream. It stays in the shared slot until the upstream
/// connection first polls it, so after a failed connect the caller can try another instance:
/// no byte of it was sent.
pub struct ReplayBody {
    /// `None` for a request without a body: nothing to hand over, lock or allocate.
    state: Option<Arc<ReplayState>>,
    body: Option<RequestBody>,
    seen: u64,
    limit: u64,
}

impl ReplayBody {
    pub fn new(state: Option<Arc<ReplayState>>, limit: u64) -> Self {
        Self {
            state,
            body: None,
            seen: 0,
            limit,
        }
    }

    fn with_inner<R>(&self, f: impl FnOnce(Option<&RequestBody>) -> R) -> R {
        match (&self.body, &self.state) {
            (Some(b), _) => f(Some(b)),
            (None, None) => f(None),
            (None, Some(state)) => match state.slot.lock() {
                Ok(guard) => f(guard.as_ref()),
                Err(_) => f(None),
            },
        }
    }
}

impl HttpBody for ReplayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let Some(state) = this.state.as_ref() else {
            return Poll::Ready(None);
        };
        if this.body.is_none() {
            this.body = state.slot.lock().ok().and_then(|mut s| s.take());
        }
        let Some(body) = this.body.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.seen += data.len() as u64;
                    if this.seen > this.limit {
                        state.too_large.store(true, Ordering::Relaxed);
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge(this.limit)))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                state.client_failed.store(true, Ordering::Relaxed);
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.with_inner(|b| b.is_none_or(|b| b.is_end_stream()))
    }

    fn size_hint(&self) -> SizeHint {
        self.with_inner(|b| {
            b.map(|b| b.size_hint())
                .unwrap_or_else(|| SizeHint::with_exact(0))
        })
    }
}
