//! Our HTTP/1.1 connection loop, in place of hyper's server for HTTP/1 (plain and TLS; HTTP/2
//! stays with hyper). It reads each head into a buffer that is released while the connection is
//! idle, checks it (head_check.rs: malformed heads, limits and smuggling patterns get their
//! error response and `Connection: close`), builds the request without copying header values,
//! runs the pipeline in the connection's own task, and writes the response head and the first
//! body bytes in one write.
//!
//! The connection's waits have the limits of docs/http.md, "Limits and timeouts", all on one
//! lazy timer: 10 s for the first head of a connection or for a head whose first byte arrived
//! (a partial head then gets a 408), 60 s idle between requests, 60 s without a request body
//! byte.
//!
//! Measured against hyper's server on the same build (BENCHMARKS.md): less CPU per request
//! and about 16 KB less memory per idle keep-alive connection (hyper keeps an 8 KB read and
//! an 8 KB write buffer per connection).

mod body;
mod head_check;
mod request;
mod response;

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use std::future::Future;
use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, CONNECTION, UPGRADE};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Body as HttpBody;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

pub use body::OwnBody;
use head_check::BodyFraming;
pub use head_check::{check_head, HeadLimits, Refusal, Refused};
use response::Framing;

use crate::body::BoxError;
use crate::lazy_timer::LazyTimer;
use crate::rewind::{poll_read_append, read_append, Rewind};
use crate::upstream::chunked::{chunk_size_line, ChunkedDecoder, Step};

/// How a server reads its clients.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    pub head: HeadLimits,
    /// For the first head of a connection, and for a head whose first byte arrived (a partial
    /// head then gets a 408).
    pub header_read_timeout: Duration,
    /// Between two requests.
    pub keep_alive_idle: Duration,
    /// A request body that brings no byte for this long ends the connection.
    pub body_idle: Duration,
    /// A draining server closes a connection once it has been idle this long.
    pub drain_grace: Duration,
    /// Header names `http` does not know (all starting with `x-`) that requests carry all the
    /// time: taken from here, each is shared instead of copied to the heap per request.
    pub frequent_names: &'static [&'static HeaderName],
}

/// What the connection loop calls back into: the answer to each request.
pub trait Service: Send + 'static {
    /// The request as the service takes it: built from the body the loop reads, `None` for a
    /// request without one.
    type RequestBody: From<Option<OwnBody>> + Send;
    type ResponseBody: HttpBody<Data = Bytes, Error: Into<BoxError> + Send> + Unpin + Send;
    /// Kept until the response was written or the client went away (an access log record).
    type Guard: Send;

    /// Answers one request. The future lives in the connection's own, so a request costs no
    /// allocation for it.
    fn call(
        &mut self,
        req: Request<Self::RequestBody>,
    ) -> impl Future<Output = (Response<Self::ResponseBody>, Self::Guard)> + Send + '_;

    /// The whole response, `Connection: close` included, to a request refused before it was
    /// parsed.
    fn refusal(&mut self, refusal: Refusal) -> Vec<u8>;
}

/// Body frames up to this size are copied next to the head (or chunk line) to go out in one
/// write; larger ones are written on their own.
const COALESCE: usize = 16 * 1024;
/// A connection keeps its write buffer between requests only while it is this small: a
/// head and a small body fit, and an idle connection holds next to nothing.
const KEEP_WRITE_BUFFER: usize = 1024;
/// Likewise for the read buffer: one that never held more than this (small heads, no body) is
/// reused for the next head, which then costs no allocation; a larger one is let go.
const KEEP_READ_BUFFER: usize = 1024;
/// After a response that closes the connection, unread client bytes are drained this long
/// (so closing does not reset the connection under the response).
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 1024 * 1024;
/// A request body the pipeline did not read (an answer that needs none) is read and dropped
/// up to this much, within this long, to keep the connection; past that it closes.
const DRAIN_BYTES: usize = 64 * 1024;
const DRAIN_WAIT: Duration = Duration::from_secs(1);

/// Any connection the loop can serve.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// The client side of a connection after a `101`: the bytes already read past the request
/// head, then the connection itself.
pub type ClientUpgraded = Rewind<Box<dyn Io>>;

/// Put in the extensions of an upgrade request; the tunnel takes the connection from it.
#[derive(Clone)]
pub struct UpgradeSlot(Arc<Mutex<Option<oneshot::Receiver<ClientUpgraded>>>>);

impl UpgradeSlot {
    /// Resolves once the `101` went out, with the client's connection.
    pub async fn take(self) -> Option<ClientUpgraded> {
        let rx = self.0.lock().ok()?.take()?;
        rx.await.ok()
    }
}

/// See [`crate::fuzz_h1_request`].
pub fn fuzz_request(data: &[u8], config: &Config) -> bool {
    matches!(
        request::parse(
            &mut BytesMut::from(data),
            &mut 0,
            &config.head,
            config.frequent_names
        ),
        Ok(Some(_))
    )
}

/// An HTTP/1.1 request with `Connection: upgrade` and a non-empty `Upgrade`.
pub fn wants_upgrade(version: Version, headers: &HeaderMap) -> bool {
    version == Version::HTTP_11
        && headers.get(UPGRADE).is_some_and(|v| !v.is_empty())
        && headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// How a read of the connection ended.
enum Wait {
    Data,
    Closed,
    /// The deadline of the wait passed first.
    TimedOut,
}

/// Serves HTTP/1 requests on `io` until the client or a drain closes the connection.
///
/// A drain never closes a connection under a client that may be sending: the next request on
/// it is answered with `Connection: close`, and a connection that stays idle is closed once it
/// has been idle for `config.drain_grace` (docs/limits.md, "Draining"). `peer` names the
/// client in log lines.
///
/// Not an `async fn`: those keep every argument twice in their future, and `io` (a TLS
/// stream is 1.4 KB) is in every connection's.
#[allow(clippy::manual_async_fn)]
pub fn serve<I: Io, S: Service>(
    mut io: I,
    peer: SocketAddr,
    mut service: S,
    config: &'static Config,
    shutdown: watch::Receiver<bool>,
) -> impl Future<Output = ()> + Send {
    async move {
        let header_read_timeout = config.header_read_timeout;
        let drain_grace = config.drain_grace;
        let opened = Instant::now();
        let mut rbuf = BytesMut::new();
        // Whether `rbuf` stayed small enough to keep while the connection is idle.
        let mut small_reads = true;
        let mut wbuf = Vec::new();
        // The limits on reading the client.
        let mut read_timer = LazyTimer::at(opened + header_read_timeout);
        let mut idle_since = opened;
        let mut served = false;
        // One wait for the drain per connection, not one registration per idle wait.
        let mut stop_rx = shutdown.clone();
        let stop = async move { stopped(&mut stop_rx).await };
        tokio::pin!(stop);
        let mut stopping = false;
        loop {
            let mut searched = 0;
            // When the first byte of a head that is not complete yet was seen.
            let mut head_started = None;
            let head = loop {
                match request::parse(
                    &mut rbuf,
                    &mut searched,
                    &config.head,
                    config.frequent_names,
                ) {
                    Ok(Some(head)) => break head,
                    Ok(None) => {}
                    Err(refusal) => {
                        refuse(&mut io, service.refusal(refusal)).await;
                        return;
                    }
                }
                let idle = rbuf.is_empty();
                if idle {
                    if !small_reads {
                        // Between requests the connection holds at most a small buffer.
                        rbuf = BytesMut::new();
                        small_reads = true;
                    }
                } else if head_started.is_none() {
                    head_started = Some(Instant::now());
                }
                let deadline = match head_started {
                    Some(at) => at + header_read_timeout,
                    None if served => idle_since + config.keep_alive_idle,
                    None => opened + header_read_timeout,
                };
                let wait = if idle {
                    wait_for_request(
                        &mut io,
                        &mut rbuf,
                        Stop {
                            stop: stop.as_mut(),
                            stopping: &mut stopping,
                        },
                        idle_since + drain_grace,
                        (&mut read_timer, deadline),
                    )
                    .await
                } else {
                    read_by(&mut io, &mut rbuf, &mut read_timer, deadline).await
                };
                small_reads &= rbuf.len() <= KEEP_READ_BUFFER;
                match wait {
                    Wait::Data => {}
                    Wait::Closed => return,
                    // Nothing of a request came in time: close quietly.
                    Wait::TimedOut if idle => return,
                    Wait::TimedOut => {
                        let head = rbuf.trim_ascii_start().starts_with(b"HEAD ");
                        let timeout = Refusal(Refused::RequestTimeout, head);
                        refuse(&mut io, service.refusal(timeout)).await;
                        return;
                    }
                }
            };
            served = true;

            let request::Head {
                request,
                framing,
                keep_alive,
                expects_continue,
            } = head;
            let (mut parts, ()) = request.into_parts();
            let version = parts.version;
            let head_request = parts.method == Method::HEAD;
            let upgrade_tx = if wants_upgrade(version, &parts.headers) {
                let (tx, rx) = oneshot::channel();
                parts
                    .extensions
                    .insert(UpgradeSlot(Arc::new(Mutex::new(Some(rx)))));
                Some(tx)
            } else {
                None
            };
            // A body is read through the buffer, in reads of any size.
            small_reads &= framing == BodyFraming::None;
            let (body, mut pump) = match framing {
                BodyFraming::None => (None, None),
                BodyFraming::Length(n) => {
                    let (tx, body) = OwnBody::channel(Some(n));
                    (Some(body), Some(Pump::new(tx, framing)))
                }
                BodyFraming::Chunked => {
                    let (tx, body) = OwnBody::channel(None);
                    (Some(body), Some(Pump::new(tx, framing)))
                }
            };
            let mut body_reads = BodyReads {
                timer: &mut read_timer,
                idle: config.body_idle,
                // No clock read for a request without a body.
                last_byte: if pump.is_some() {
                    Instant::now()
                } else {
                    opened
                },
            };
            if expects_continue
                && (io
                    .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                    .await
                    .is_err()
                    || io.flush().await.is_err())
            {
                return;
            }

            // Pinned here, not boxed: the service's future lives in the connection's, so a
            // request costs no allocation for it.
            let answer = service.call(Request::from_parts(parts, body.into()));
            tokio::pin!(answer);
            let mut body = if pump.is_some() {
                BodyRead::Reading
            } else {
                BodyRead::Done
            };
            let (resp, log) = loop {
                let (Some(p), BodyRead::Reading) = (pump.as_mut(), body) else {
                    break answer.as_mut().await;
                };
                tokio::select! {
                    biased;
                    resp = answer.as_mut() => break resp,
                    step = p.step(&mut io, &mut rbuf, &mut body_reads) => {
                        body = step;
                        // The body's end (or error) reaches the pipeline when its sender goes.
                        if matches!(body, BodyRead::Done | BodyRead::Broken) {
                            pump = None;
                        }
                    }
                }
            };
            // What the pipeline left unread of the body is drained after the answer; a body
            // whose framing broke leaves no place where a next request could start.
            let mut unread = pump.take();
            let framing_lost = body == BodyRead::Broken;

            let upgraded = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
            let keep_alive = keep_alive && !framing_lost && !*shutdown.borrow();
            let written =
                write_response(&mut io, &mut wbuf, resp, version, head_request, keep_alive).await;
            // The access log line is written once the last byte went out, or the client left.
            drop(log);
            idle_since = Instant::now();
            wbuf.clear();
            if wbuf.capacity() > KEEP_WRITE_BUFFER {
                wbuf = Vec::new();
            }
            match written {
                Ok(_) if upgraded => {
                    if let Some(tx) = upgrade_tx {
                        let _ = tx.send(Rewind::new(rbuf.freeze(), Box::new(io) as Box<dyn Io>));
                    }
                    return;
                }
                Ok(true) => {
                    if let Some(mut rest) = unread.take() {
                        if !rest.drain(&mut io, &mut rbuf, &mut body_reads).await {
                            linger_close(&mut io).await;
                            return;
                        }
                    }
                }
                Ok(false) => {
                    linger_close(&mut io).await;
                    return;
                }
                Err(error) => {
                    tracing::debug!(%peer, %error, "Response not completed");
                    return;
                }
            }
        }
    }
}

/// The drain as an idle wait sees it: `stop` resolves at the drain and is not polled again
/// once `stopping` is set.
struct Stop<'a, F> {
    stop: Pin<&'a mut F>,
    stopping: &'a mut bool,
}

/// Waits for the first bytes of the next request until `deadline`. Once the worker drains,
/// the wait ends at `drain_close` too (the connection has then been idle for the drain grace):
/// closing at once would race a client that is sending its next request right now, which
/// gets no answer and cannot know whether the request was processed.
async fn wait_for_request<I: Io, F: std::future::Future<Output = ()>>(
    io: &mut I,
    rbuf: &mut BytesMut,
    stop: Stop<'_, F>,
    drain_close: Instant,
    (timer, deadline): (&mut LazyTimer, Instant),
) -> Wait {
    let Stop { mut stop, stopping } = stop;
    if !*stopping {
        // The read first: bytes that already arrived are a request to answer.
        tokio::select! {
            biased;
            wait = read_by(io, rbuf, timer, deadline) => return wait,
            () = stop.as_mut() => *stopping = true,
        }
    }
    read_by(io, rbuf, timer, deadline.min(drain_close)).await
}

async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// Reads once into `rbuf` (no buffer is held while waiting), unless `deadline` passes first.
/// The timer is looked at only when the read has to wait.
async fn read_by<I: Io>(
    io: &mut I,
    rbuf: &mut BytesMut,
    timer: &mut LazyTimer,
    deadline: Instant,
) -> Wait {
    std::future::poll_fn(|cx| match poll_read_append(io, cx, rbuf) {
        Poll::Ready(Ok(n)) if n > 0 => Poll::Ready(Wait::Data),
        Poll::Ready(_) => Poll::Ready(Wait::Closed),
        Poll::Pending => timer.poll_expired(cx, deadline).map(|()| Wait::TimedOut),
    })
    .await
}

/// Writes the answer to a head that cannot be served and closes the connection.
async fn refuse<I: Io>(io: &mut I, raw: Vec<u8>) {
    if io.write_all(&raw).await.is_ok() && io.flush().await.is_ok() {
        linger_close(io).await;
    }
}

/// Where reading a request body stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyRead {
    Reading,
    Done,
    /// The pipeline dropped the body unread: the rest is drained after the answer.
    Unwanted,
    /// The client closed, went idle or broke the framing: the connection ends with the answer.
    Broken,
}

/// Reads of a request body: each must bring a byte within `idle` of the last one.
struct BodyReads<'a> {
    timer: &'a mut LazyTimer,
    idle: Duration,
    last_byte: Instant,
}

impl BodyReads<'_> {
    async fn read<I: Io>(&mut self, io: &mut I, rbuf: &mut BytesMut) -> Result<(), BoxError> {
        match read_by(io, rbuf, self.timer, self.last_byte + self.idle).await {
            Wait::Data => {
                self.last_byte = Instant::now();
                Ok(())
            }
            Wait::Closed => Err("client closed the connection in the middle of the body".into()),
            Wait::TimedOut => Err(format!("request body idle for {:?}", self.idle).into()),
        }
    }
}

/// Moves the request body from the connection to the pipeline, one frame per step.
struct Pump {
    tx: body::Sender,
    left: u64,
    chunked: Option<ChunkedDecoder>,
}

impl Pump {
    fn new(tx: body::Sender, framing: BodyFraming) -> Self {
        match framing {
            BodyFraming::Chunked => Self {
                tx,
                left: 0,
                chunked: Some(ChunkedDecoder::new()),
            },
            BodyFraming::Length(n) => Self {
                tx,
                left: n,
                chunked: None,
            },
            BodyFraming::None => Self {
                tx,
                left: 0,
                chunked: None,
            },
        }
    }

    async fn step<I: Io>(
        &mut self,
        io: &mut I,
        rbuf: &mut BytesMut,
        reads: &mut BodyReads<'_>,
    ) -> BodyRead {
        let tx = self.tx.clone();
        let Ok(permit) = tx.reserve().await else {
            return BodyRead::Unwanted;
        };
        match self.next_data(io, rbuf, reads).await {
            Ok(Some(data)) => {
                permit.send(Ok(data));
                if self.finished() {
                    BodyRead::Done
                } else {
                    BodyRead::Reading
                }
            }
            Ok(None) => BodyRead::Done,
            Err(e) => {
                permit.send(Err(e));
                BodyRead::Broken
            }
        }
    }

    fn finished(&self) -> bool {
        match &self.chunked {
            Some(_) => false,
            None => self.left == 0,
        }
    }

    /// The next piece of the body; `None` at its end.
    async fn next_data<I: Io>(
        &mut self,
        io: &mut I,
        rbuf: &mut BytesMut,
        reads: &mut BodyReads<'_>,
    ) -> Result<Option<Bytes>, BoxError> {
        loop {
            match &mut self.chunked {
                Some(decoder) => match decoder.step(rbuf)? {
                    Step::Data(data) => return Ok(Some(data)),
                    Step::Done => return Ok(None),
                    Step::NeedMore => {}
                },
                None => {
                    if self.left == 0 {
                        return Ok(None);
                    }
                    if !rbuf.is_empty() {
                        let take =
                            usize::try_from(self.left).map_or(rbuf.len(), |l| l.min(rbuf.len()));
                        self.left -= take as u64;
                        return Ok(Some(rbuf.split_to(take).freeze()));
                    }
                }
            }
            reads.read(io, rbuf).await?;
        }
    }

    /// Reads and drops what the pipeline left of the body, so the connection can carry the
    /// next request; false when that is more than a small amount or does not come quickly.
    async fn drain<I: Io>(
        &mut self,
        io: &mut I,
        rbuf: &mut BytesMut,
        reads: &mut BodyReads<'_>,
    ) -> bool {
        let drain = async {
            let mut seen = 0usize;
            while seen <= DRAIN_BYTES {
                match self.next_data(io, rbuf, reads).await {
                    Ok(Some(data)) => seen += data.len(),
                    Ok(None) => return true,
                    Err(_) => return false,
                }
            }
            false
        };
        tokio::time::timeout(DRAIN_WAIT, drain)
            .await
            .unwrap_or(false)
    }
}

/// Writes the response; `Ok(true)` when the connection may carry another request.
async fn write_response<I: Io, B>(
    io: &mut I,
    out: &mut Vec<u8>,
    resp: Response<B>,
    version: http::Version,
    head_request: bool,
    keep_alive: bool,
) -> io::Result<bool>
where
    B: HttpBody<Data = Bytes, Error: Into<BoxError>> + Unpin,
{
    let (mut parts, mut body) = resp.into_parts();
    let known_len = if body.is_end_stream() {
        Some(0)
    } else {
        body.size_hint().exact()
    };
    let plan = response::encode(
        out,
        version,
        head_request,
        parts.status,
        &mut parts.headers,
        known_len,
        keep_alive,
    );
    if plan.framing == Framing::NoBody {
        drop(body);
        io.write_all(out).await?;
        io.flush().await?;
        return Ok(plan.keep_alive);
    }
    let mut left = match plan.framing {
        Framing::Length(n) => Some(n),
        _ => None,
    };
    let chunked = plan.framing == Framing::Chunked;
    // The head waits for the first body bytes only if they are already there.
    let first = std::future::poll_fn(|cx| match Pin::new(&mut body).poll_frame(cx) {
        Poll::Ready(frame) => Poll::Ready(Some(frame)),
        Poll::Pending => Poll::Ready(None),
    })
    .await;
    // `None` once the body has ended.
    let mut pending = match first {
        Some(frame) => frame,
        None => {
            io.write_all(out).await?;
            io.flush().await?;
            out.clear();
            body.frame().await
        }
    };
    while let Some(frame) = pending.take() {
        let frame = frame.map_err(|e| io::Error::other(e.into()))?;
        if let Ok(data) = frame.into_data() {
            if !data.is_empty() {
                if let Some(left) = left.as_mut() {
                    if data.len() as u64 > *left {
                        return Err(io::Error::other("response body longer than its length"));
                    }
                    *left -= data.len() as u64;
                }
                if chunked {
                    chunk_size_line(out, data.len());
                }
                if data.len() <= COALESCE {
                    out.extend_from_slice(&data);
                } else {
                    io.write_all(out).await?;
                    out.clear();
                    io.write_all(&data).await?;
                }
                if chunked {
                    out.extend_from_slice(b"\r\n");
                }
            }
        }
        if body.is_end_stream() {
            break;
        }
        // Streamed bodies (SSE and the like) go out frame by frame.
        if !out.is_empty() {
            io.write_all(out).await?;
            out.clear();
        }
        io.flush().await?;
        pending = body.frame().await;
    }
    if left.is_some_and(|l| l > 0) {
        return Err(io::Error::other("response body shorter than its length"));
    }
    if chunked {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    if !out.is_empty() {
        io.write_all(out).await?;
    }
    io.flush().await?;
    Ok(plan.keep_alive && plan.framing != Framing::UntilClose)
}

/// Closes after the last response: a FIN first, then whatever the client still sends is
/// read and dropped for a moment, so that the close does not reset the connection before
/// the client has read the answer.
async fn linger_close<I: Io>(io: &mut I) {
    let _ = io.shutdown().await;
    let drain = async {
        let mut seen = 0usize;
        let mut sink = BytesMut::new();
        while seen < LINGER_BYTES {
            sink.clear();
            match read_append(io, &mut sink).await {
                Ok(n) if n > 0 => seen += n,
                _ => break,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}
