//! The send deadline of an HTTP/2 response stream (docs/limits.md, "HTTP/2 limits"): a
//! stream whose client leaves its flow-control window shut for longer than the limit is
//! reset, so it stops holding the response's buffers and its upstream connection.
//!
//! hyper takes the next chunk of a response body only once the previous one fits the
//! client's window, and it does not tell its caller how long it has been waiting. So the
//! response body notes when it handed hyper a chunk and when hyper came back for the next
//! one ([`SendClock`]); the task hyper spawns for the stream ([`StreamExec`]) watches that
//! clock and, when the wait passes the limit, drops the stream's future. h2 answers a stream
//! dropped before its end with `RST_STREAM(CANCEL)` and frees what it had queued for it.
//! A body that is slow to produce (server-sent events) is being waited on by hyper, not
//! blocked, and has no limit here.

use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::Poll;
use std::time::Duration;

use tokio::time::Instant;

use tako_http1::LazyTimer;

tokio::task_local! {
    /// The clock of the stream whose task is running: the response body picks it up.
    static SEND_CLOCK: Arc<SendClock>;
}

const NOT_BLOCKED: u64 = u64::MAX;

/// One stream's wait for flow control.
pub struct SendClock {
    started: Instant,
    /// Milliseconds after `started` at which hyper took a chunk and has not asked for the
    /// next one since; `NOT_BLOCKED` while it is asking.
    blocked_since_ms: AtomicU64,
    /// The client, for the log line; set once the response exists.
    peer: OnceLock<SocketAddr>,
}

impl SendClock {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            blocked_since_ms: AtomicU64::new(NOT_BLOCKED),
            peer: OnceLock::new(),
        }
    }

    /// The clock of the stream this task serves, if it runs under [`StreamExec`].
    pub fn current(peer: SocketAddr) -> Option<Arc<Self>> {
        let clock = SEND_CLOCK.try_with(Arc::clone).ok()?;
        let _ = clock.peer.set(peer);
        Some(clock)
    }

    /// hyper took a chunk: it comes back for the next once the client's window has room.
    pub fn chunk_taken(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(NOT_BLOCKED - 1);
        self.blocked_since_ms.store(ms, Ordering::Relaxed);
    }

    /// hyper asks for the next chunk: the window had room.
    pub fn asked(&self) {
        self.blocked_since_ms.store(NOT_BLOCKED, Ordering::Relaxed);
    }

    /// When the current wait passes `limit`; None while hyper is not waiting on the client.
    fn deadline(&self, limit: Duration) -> Option<Instant> {
        match self.blocked_since_ms.load(Ordering::Relaxed) {
            NOT_BLOCKED => None,
            ms => Some(self.started + Duration::from_millis(ms) + limit),
        }
    }
}

/// The executor hyper spawns each HTTP/2 stream with: a tokio task that ends the stream
/// when its response has waited on the client's window for longer than `limit`.
#[derive(Clone, Copy, Debug)]
pub struct StreamExec {
    pub limit: Duration,
}

impl<F> hyper::rt::Executor<F> for StreamExec
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        let limit = self.limit;
        let clock = Arc::new(SendClock::new());
        let watched = Arc::clone(&clock);
        tokio::spawn(SEND_CLOCK.scope(clock, async move {
            let mut fut = std::pin::pin!(fut);
            // Made on the first wait: a stream whose client reads costs no timer.
            let mut timer: Option<LazyTimer> = None;
            poll_fn(|cx| {
                if fut.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(());
                }
                let Some(deadline) = watched.deadline(limit) else {
                    return Poll::Pending;
                };
                let timer = timer.get_or_insert_with(LazyTimer::new);
                if timer.poll_expired(cx, deadline).is_pending() {
                    return Poll::Pending;
                }
                tracing::info!(
                    peer = ?watched.peer.get(),
                    ?limit,
                    "HTTP/2 client left its flow-control window shut; stream reset"
                );
                Poll::Ready(())
            })
            .await;
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_runs_only_while_a_chunk_waits() {
        let clock = SendClock::new();
        let limit = Duration::from_secs(60);
        assert_eq!(clock.deadline(limit), None);
        clock.chunk_taken();
        let d = clock.deadline(limit).expect("waiting on the window");
        assert!(d >= clock.started + limit);
        clock.asked();
        assert_eq!(clock.deadline(limit), None);
    }
}
