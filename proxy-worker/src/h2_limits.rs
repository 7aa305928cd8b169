//! The limits of an HTTP/2 connection that hyper's server does not keep by itself
//! (docs/limits.md, "HTTP/2 limits"): 10 s from the TLS handshake to the client preface and
//! first SETTINGS, GOAWAY after 60 s without an open stream, and a request body that brings no
//! byte for 60 s resets its stream, as does a response the client's flow-control window
//! holds up for as long ([`crate::h2_send`]). Streams, header lists and reset floods are bounded through
//! hyper's own settings (see [`builder`]).
//!
//! hyper runs the connection; this module watches it from outside: an IO wrapper sees the
//! preface arrive, a guard per stream counts open streams (it lives in the service future and
//! then in the response body, so it goes when the stream is done or reset), and one timer per
//! connection checks the deadline that applies. A connection with streams open pays one timer
//! wake per idle period, nothing per request.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use crate::body::Body;
use crate::conn_info::ConnInfo;
use crate::h2_body::{BodyIdle, StreamBody};
use crate::h2_send::{SendClock, StreamExec};
use crate::pipeline;
use crate::request_body::RequestBody;
use crate::shared::Shared;

/// Client preface and first SETTINGS after the TLS handshake; also how long a connection
/// that was sent GOAWAY has to finish the close before it is dropped.
pub const PREFACE_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection without open streams gets GOAWAY after this long.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// A request body that brings no byte for this long resets its stream.
pub const BODY_IDLE: Duration = Duration::from_secs(60);
/// Streams open at once per connection; more are refused with REFUSED_STREAM.
pub const MAX_STREAMS: u32 = 128;
/// Streams the client resets before the server took them up: past this many at once the
/// connection ends with GOAWAY(ENHANCE_YOUR_CALM) (rapid reset, CVE-2023-44487).
pub const MAX_PENDING_ACCEPT_RESETS: usize = 20;
/// Streams the server had to reset because of the client's errors over the connection's
/// life: past this many the connection ends with GOAWAY (the "made you reset" variant).
pub const MAX_LOCAL_ERROR_RESETS: usize = 256;
/// How long a draining worker waits for the first request of a fresh connection (it may
/// be on its way) before the graceful close.
const FIRST_REQUEST_GRACE: Duration = Duration::from_secs(1);
/// The client preface: `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`, then a SETTINGS frame.
const PREFACE_LEN: u64 = 24;
const FRAME_HEAD_LEN: u64 = 9;

/// The connection timers in force in this worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timers {
    pub preface: Duration,
    pub idle: Duration,
    pub body_idle: Duration,
}

impl Timers {
    /// The documented limits, or the test flag's.
    pub fn from_config(t: Option<tako_ipc::H2Timeouts>) -> Self {
        match t {
            None => Self {
                preface: PREFACE_TIMEOUT,
                idle: IDLE_TIMEOUT,
                body_idle: BODY_IDLE,
            },
            Some(t) => Self {
                preface: Duration::from_millis(t.preface_ms),
                idle: Duration::from_millis(t.idle_ms),
                body_idle: Duration::from_millis(t.body_idle_ms),
            },
        }
    }
}

/// hyper's HTTP/2 server with the stream, header and reset bounds; a response stream whose
/// client keeps its window shut for `send_limit` is reset (see [`crate::h2_send`]).
pub fn builder(max_header_list: u32, send_limit: Duration) -> http2::Builder<StreamExec> {
    let mut b = http2::Builder::new(StreamExec { limit: send_limit });
    b.timer(TokioTimer::new())
        .max_concurrent_streams(MAX_STREAMS)
        // The same bound as HTTP/1's header section. h2 also derives from it how many
        // CONTINUATION frames one header block may take, so a block that never ends is
        // cut off after a few frames.
        .max_header_list_size(max_header_list)
        .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESETS)
        .max_local_error_reset_streams(MAX_LOCAL_ERROR_RESETS);
    b
}

/// What the connection's watchers share: one allocation per connection.
struct ConnState {
    opened: Instant,
    preface_done: AtomicBool,
    open_streams: AtomicUsize,
    /// When the last stream ended, in milliseconds after `opened`.
    idle_since_ms: AtomicU64,
    seen_stream: AtomicBool,
    first_stream: Notify,
}

impl ConnState {
    fn new() -> Self {
        Self {
            opened: Instant::now(),
            preface_done: AtomicBool::new(false),
            open_streams: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            seen_stream: AtomicBool::new(false),
            first_stream: Notify::new(),
        }
    }

    /// When the connection counts as idle for `idle`: None while a stream is open.
    fn idle_deadline(&self, idle: Duration) -> Option<Instant> {
        if self.open_streams.load(Ordering::Acquire) > 0 {
            return None;
        }
        let since = Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire));
        Some(self.opened + since + idle)
    }
}

/// One open stream; dropped when its response is done or the stream was reset.
struct StreamGuard(Arc<ConnState>);

impl StreamGuard {
    fn new(state: &Arc<ConnState>) -> Self {
        state.open_streams.fetch_add(1, Ordering::AcqRel);
        if !state.seen_stream.swap(true, Ordering::Relaxed) {
            state.first_stream.notify_one();
        }
        Self(Arc::clone(state))
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let s = &self.0;
        // The time first: the idle check reads the count, then the time.
        let ms = u64::try_from(s.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        s.idle_since_ms.fetch_max(ms, Ordering::AcqRel);
        s.open_streams.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The response body with its stream's guard and send clock.
pub struct Tracked<B> {
    inner: B,
    _guard: StreamGuard,
    send: Option<Arc<SendClock>>,
}

impl<B: HttpBody + Unpin> HttpBody for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if let Some(send) = &self.send {
            // hyper asks for the next frame only once the last one fitted the window.
            match &r {
                Poll::Ready(Some(Ok(f))) if f.is_data() => send.chunk_taken(),
                _ => send.asked(),
            }
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Counts the bytes of the client preface and its first SETTINGS frame as they are read.
#[derive(Default)]
struct PrefaceCount {
    seen: u64,
    /// The SETTINGS frame's payload length, from the first three bytes of its head.
    settings_len: u64,
}

impl PrefaceCount {
    /// Takes the next bytes read; true once the preface and the whole SETTINGS frame are in.
    /// Does not check them: hyper does, and ends the connection if they are wrong.
    fn feed(&mut self, mut bytes: &[u8]) -> bool {
        while !bytes.is_empty() {
            let take = if self.seen < PREFACE_LEN {
                (PREFACE_LEN - self.seen).min(bytes.len() as u64)
            } else if self.seen < PREFACE_LEN + 3 {
                self.settings_len = self.settings_len << 8 | u64::from(bytes[0]);
                1
            } else {
                let end = PREFACE_LEN + FRAME_HEAD_LEN + self.settings_len;
                (end - self.seen).min(bytes.len() as u64)
            };
            self.seen += take;
            // `take` is at most `bytes.len()`.
            bytes = &bytes[take as usize..];
            if self.seen >= PREFACE_LEN + 3
                && self.seen == PREFACE_LEN + FRAME_HEAD_LEN + self.settings_len
            {
                return true;
            }
        }
        false
    }
}

/// The client connection, with the preface noted as it arrives.
struct Watched<I> {
    io: I,
    preface: Option<PrefaceCount>,
    state: Arc<ConnState>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let r = Pin::new(&mut this.io).poll_read(cx, buf);
        if let (Poll::Ready(Ok(())), Some(count)) = (&r, this.preface.as_mut()) {
            if count.feed(&buf.filled()[before..]) {
                this.preface = None;
                this.state.preface_done.store(true, Ordering::Release);
            }
        }
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Where the connection's life stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Serving,
    /// The worker drains; a fresh connection gets a moment for its first request.
    DrainWait,
    /// GOAWAY was sent: the connection ends when its streams do, and is dropped if it is
    /// still there with none open when the timer fires.
    Closing,
}

/// What a connection needs from its worker.
pub struct Conn<'a> {
    pub builder: &'a http2::Builder<StreamExec>,
    pub timers: Timers,
    pub shared: &'a Arc<Shared>,
    pub shutdown: watch::Receiver<bool>,
}

/// Serves HTTP/2 on `io` (TLS done, ALPN h2) until the client, a limit or a drain ends it.
pub async fn serve<I>(io: I, conn: ConnInfo, ctx: Conn<'_>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Conn {
        builder,
        timers,
        shared,
        mut shutdown,
    } = ctx;
    let state = Arc::new(ConnState::new());
    let io = Watched {
        io,
        preface: Some(PrefaceCount::default()),
        state: Arc::clone(&state),
    };
    let svc = {
        let (state, shared, conn) = (Arc::clone(&state), Arc::clone(shared), conn.clone());
        let body_idle = timers.body_idle;
        service_fn(move |req: http::Request<Incoming>| {
            let guard = StreamGuard::new(&state);
            let shared = Arc::clone(&shared);
            let conn = conn.clone();
            let timed_out = Arc::new(AtomicBool::new(false));
            let req = req.map(|inner| {
                RequestBody::Hyper(StreamBody::new(inner, body_idle, Arc::clone(&timed_out)))
            });
            // Boxed: hyper keeps a service future per stream; unboxed it would be as large
            // as the whole pipeline.
            Box::pin(async move {
                let peer = conn.peer;
                let resp = pipeline::handle(req, conn, shared).await;
                if timed_out.load(Ordering::Relaxed) {
                    // The answer would be for a request the client never finished: hyper
                    // resets the stream instead.
                    return Err(BodyIdle(body_idle));
                }
                let send = SendClock::current(peer);
                Ok::<_, BodyIdle>(resp.map(|inner: Body| Tracked {
                    inner,
                    _guard: guard,
                    send,
                }))
            })
        })
    };
    let connection = builder.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(connection);
    let timer = tokio::time::sleep_until(state.opened + timers.preface);
    tokio::pin!(timer);
    let mut phase = Phase::Serving;
    loop {
        tokio::select! {
            biased;
            r = connection.as_mut() => {
                if let Err(error) = r {
                    tracing::debug!(peer = %conn.peer, %error, "Connection ended with an error");
                }
                return;
            }
            () = timer.as_mut() => {
                let now = Instant::now();
                if !state.preface_done.load(Ordering::Acquire) {
                    tracing::debug!(peer = %conn.peer, "No HTTP/2 preface in time; closing");
                    return;
                }
                match phase {
                    Phase::Serving => match state.idle_deadline(timers.idle) {
                        Some(at) if at <= now => {
                            tracing::debug!(peer = %conn.peer, "HTTP/2 connection idle; GOAWAY");
                            connection.as_mut().graceful_shutdown();
                            phase = Phase::Closing;
                            timer.as_mut().reset(now + timers.preface);
                        }
                        Some(at) => timer.as_mut().reset(at),
                        // Looked at again one idle period later: a stream open now is
                        // either done by then or the connection is not idle.
                        None => timer.as_mut().reset(now + timers.idle),
                    },
                    Phase::DrainWait => {
                        connection.as_mut().graceful_shutdown();
                        phase = Phase::Closing;
                        timer.as_mut().reset(now + timers.preface);
                    }
                    Phase::Closing => {
                        if state.open_streams.load(Ordering::Acquire) == 0 {
                            tracing::debug!(peer = %conn.peer, "GOAWAY not completed; closing");
                            return;
                        }
                        timer.as_mut().reset(now + timers.preface);
                    }
                }
            }
            _ = stopped(&mut shutdown), if phase == Phase::Serving => {
                let now = Instant::now();
                // A connection accepted just before the drain may carry a request hyper has
                // not read yet: closing it as idle would reset that client.
                if state.seen_stream.load(Ordering::Relaxed) {
                    connection.as_mut().graceful_shutdown();
                    phase = Phase::Closing;
                    timer.as_mut().reset(now + timers.preface);
                } else {
                    phase = Phase::DrainWait;
                    timer.as_mut().reset(now + FIRST_REQUEST_GRACE);
                }
            }
            () = state.first_stream.notified(), if phase == Phase::DrainWait => {
                connection.as_mut().graceful_shutdown();
                phase = Phase::Closing;
                timer.as_mut().reset(Instant::now() + timers.preface);
            }
        }
    }
}

/// Resolves once shutdown was ordered (or its sender is gone, which means the same).
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(len: usize) -> Vec<u8> {
        let mut v = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        let l = (len as u32).to_be_bytes();
        v.extend_from_slice(&[l[1], l[2], l[3], 0x4, 0, 0, 0, 0, 0]);
        v.extend(std::iter::repeat_n(0u8, len));
        v
    }

    #[test]
    fn preface_counts_to_the_end_of_the_first_settings_frame() {
        for len in [0, 6, 18, 300] {
            let all = settings(len);
            // Whole, and byte by byte: done exactly at the last byte.
            assert!(PrefaceCount::default().feed(&all), "len {len}");
            let mut c = PrefaceCount::default();
            for (i, b) in all.iter().enumerate() {
                assert_eq!(c.feed(&[*b]), i + 1 == all.len(), "len {len} byte {i}");
            }
            let mut c = PrefaceCount::default();
            assert!(!c.feed(&all[..all.len() - 1]));
        }
        // More bytes behind the SETTINGS frame in the same read still finish it.
        let mut more = settings(6);
        more.extend_from_slice(&[0, 0, 0, 0x4, 0x1, 0, 0, 0, 0]);
        assert!(PrefaceCount::default().feed(&more));
    }

    #[test]
    fn idle_deadline_waits_for_the_last_stream() {
        let state = Arc::new(ConnState::new());
        let idle = Duration::from_secs(60);
        assert_eq!(state.idle_deadline(idle), Some(state.opened + idle));
        let a = StreamGuard::new(&state);
        let b = StreamGuard::new(&state);
        assert!(state.seen_stream.load(Ordering::Relaxed));
        assert_eq!(state.idle_deadline(idle), None);
        drop(a);
        assert_eq!(state.idle_deadline(idle), None);
        drop(b);
        assert!(state
            .idle_deadline(idle)
            .is_some_and(|d| d >= state.opened + idle));
    }
}
