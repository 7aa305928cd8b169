//! The response body of a storable miss: every chunk goes on to the client at once and a copy
//! is kept; when the body ended cleanly the copy becomes an entry (docs/http.md,
//! "Response cache": the whole body arrived and fits). Nothing here waits for the cache.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use hyper::body::{Body as HttpBody, Frame, SizeHint};

use super::admission::MAX_BODY_BYTES;
use super::flight::FlightGuard;
use super::store::Entry;
use super::Cache;
use crate::body::{Body, BoxError};

/// What is needed to store the entry once the body is complete.
pub struct StoreJob {
    pub cache: Arc<Cache>,
    pub key: String,
    /// The request's headers, for replacing the variant it matched.
    pub req_headers: http::HeaderMap,
    /// The entry, body still empty.
    pub entry: Entry,
    /// Released after the entry is stored (or abandoned), so followers find it.
    pub _flight: Option<FlightGuard>,
}

pub struct TeeBody {
    inner: Body,
    pending: Option<StoreJob>,
    chunks: Vec<Bytes>,
    collected: u64,
}

impl TeeBody {
    pub fn wrap(inner: Body, pending: StoreJob) -> Body {
        http_body_util::combinators::UnsyncBoxBody::new(TeeBody {
            inner,
            pending: Some(pending),
            chunks: Vec::new(),
            collected: 0,
        })
    }

    fn finish(&mut self) {
        let Some(mut p) = self.pending.take() else {
            return;
        };
        let mut body = BytesMut::with_capacity(self.collected as usize);
        for c in self.chunks.drain(..) {
            body.extend_from_slice(&c);
        }
        p.entry.body = body.freeze();
        p.cache.store_entry(p.key, p.entry, &p.req_headers);
        // `p.flight` drops here, after the entry is visible.
    }

    fn abandon(&mut self, why: &'static str) {
        if let Some(p) = self.pending.take() {
            tracing::debug!(key = %p.key, why, "Response not stored");
        }
        self.chunks = Vec::new();
    }
}

impl HttpBody for TeeBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if this.pending.is_some() {
                    if let Some(data) = frame.data_ref() {
                        this.collected += data.len() as u64;
                        if this.collected > MAX_BODY_BYTES {
                            this.abandon("body grew past the per-entry limit");
                        } else {
                            this.chunks.push(data.clone());
                        }
                    }
                    // hyper may never poll again once the body says it has ended.
                    if this.inner.is_end_stream() {
                        this.finish();
                    }
                }
            }
            Poll::Ready(Some(Err(_))) => this.abandon("upstream failed mid-body"),
            Poll::Ready(None) => this.finish(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for TeeBody {
    fn drop(&mut self) {
        if self.pending.is_some() {
            if self.inner.is_end_stream() {
                self.finish();
            } else {
                self.abandon("client went away before the body ended");
            }
        }
    }
}
