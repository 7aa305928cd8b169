//! Response body types: the boxed body every response has, and a wrapper that keeps guards
//! alive until the body is done (access log, in-flight count). Request bodies are in
//! request_body.rs.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::{Body as HttpBody, Frame, SizeHint};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Every response body the worker produces.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// A body that holds `G` until it is dropped: after the last byte was written, or when the
/// client went away.
pub struct Guarded<B, G> {
    inner: B,
    _guard: G,
}

impl<G: Send + Unpin + 'static> Guarded<Body, G> {
    /// Wraps `inner` and boxes the pair: one allocation, the inner body not boxed again.
    pub fn wrap<B>(inner: B, guard: G) -> Body
    where
        B: HttpBody<Data = Bytes, Error = BoxError> + Send + Unpin + 'static,
    {
        UnsyncBoxBody::new(Guarded {
            inner,
            _guard: guard,
        })
    }
}

impl<B, G> HttpBody for Guarded<B, G>
where
    B: HttpBody<Data = Bytes, Error = BoxError> + Unpin,
    G: Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
