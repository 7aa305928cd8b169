//! The HTTP/1.1 connection loop (plain or over TLS). It reads each head into a buffer that is
//! released while the connection is idle, checks it (head_check.rs: malformed heads, limits and
//! smuggling patterns get their error response and `Connection: close`), builds the request
//! without copying header values, runs the [`Service`] in the connection's own task, and writes
//! the response head and the first body bytes in one write.
//!
//! The connection's waits are the [`Config`]'s, all on one lazy timer: for the first head of a
//! connection or for a head whose first byte arrived (a partial head then gets a 408), idle
//! between requests, and without a request body byte.

//!
//! A request goes through three stages, each in a module of its own with its own tests:
//! reading the head (conn.rs, request.rs), the pump that moves the body to the service while it
//! answers (pump.rs), and writing the response (write.rs); this module strings them together
//! per connection.

mod body;
mod conn;
mod head_check;
mod pump;
mod request;
mod response;
#[cfg(test)]
mod tests;
mod write;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, CONNECTION, UPGRADE};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::Body as HttpBody;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

pub use body::OwnBody;
use conn::{Conn, NoHead, Stop};
use head_check::BodyFraming;
pub use head_check::{check_head, HeadLimits, Refusal, Refused};
use pump::{BodyRead, BodyReads, Pump};
use write::{linger_close, write_response};

use crate::rewind::Rewind;
use crate::BoxError;

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

    /// Whether closing the connection takes a `shutdown` first: TLS sends its `close_notify`
    /// there. A plain socket's close sends the FIN by itself, so a connection closed at once
    /// (nothing left to read from the client) can skip that system call.
    fn close_needs_shutdown(&self) -> bool {
        true
    }
}

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

/// A request head as the connection loop parses it. For fuzzing; returns whether a complete
/// head was accepted.
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

/// Serves HTTP/1 requests on `io` until the client or a drain closes the connection.
///
/// A drain never closes a connection under a client that may be sending: the next request on
/// it is answered with `Connection: close`, and a connection that stays idle is closed once it
/// has been idle for `config.drain_grace` (docs/limits.md, "Draining"). `peer` names the
/// client in log lines.
///
/// Not an `async fn`: those keep every argument twice in their future, and `io` (a TLS
/// stream is 1.4 KB) is in every connection's. The stages are awaited here rather than in a
/// function per request, for the same reason: the service's future (kilobytes) is pinned in
/// this one and never moved.
#[allow(clippy::manual_async_fn)]
pub fn serve<I: Io, S: Service>(
    io: I,
    peer: SocketAddr,
    mut service: S,
    config: &'static Config,
    shutdown: watch::Receiver<bool>,
) -> impl Future<Output = ()> + Send {
    async move {
        let mut conn = Conn::new(io, config);
        let close_needs_shutdown = service.close_needs_shutdown();
        // One wait for the drain per connection, not one registration per idle wait.
        let mut stop_rx = shutdown.clone();
        let stop = async move { stopped(&mut stop_rx).await };
        tokio::pin!(stop);
        let mut stopping = false;
        loop {
            // Stage one: the head.
            let stop = Stop {
                stop: stop.as_mut(),
                stopping: &mut stopping,
            };
            let head = match conn.read_head(stop).await {
                Ok(len) => request::take(&mut conn.rbuf, len, &config.head, config.frequent_names),
                Err(NoHead::Closed) => return,
                Err(NoHead::Refused(refusal)) => Err(refusal),
            };
            let head = match head {
                Ok(head) => head,
                Err(refusal) => {
                    conn.refuse(service.refusal(refusal)).await;
                    return;
                }
            };
            let (request, mut exchange) = Exchange::begin(&mut conn, head);
            if exchange.expects_continue && !conn.send_continue().await {
                return;
            }

            // Stage two: the answer, while the pump moves the body to the service. Pinned
            // here, not boxed: the service's future lives in the connection's, so a request
            // costs no allocation for it; and the loop is here, not in a function, so its
            // answer is not copied out of one more future.
            let answer = service.call(request);
            tokio::pin!(answer);
            let mut reads = BodyReads {
                timer: &mut conn.read_timer,
                idle: config.body_idle,
                last_byte: exchange.body_started,
            };
            let mut body = if exchange.pump.is_some() {
                BodyRead::Reading
            } else {
                BodyRead::Done
            };
            let (resp, guard) = loop {
                let (Some(pump), BodyRead::Reading) = (exchange.pump.as_mut(), body) else {
                    break answer.as_mut().await;
                };
                tokio::select! {
                    biased;
                    resp = answer.as_mut() => break resp,
                    step = pump.step(&mut conn.io, &mut conn.rbuf, &mut reads) => {
                        body = step;
                        // The body's end (or error) reaches the service when its sender goes.
                        if matches!(body, BodyRead::Done | BodyRead::Broken) {
                            exchange.pump = None;
                        }
                    }
                }
            };
            let last_byte = reads.last_byte;

            // Stage three: the response. A body whose framing broke leaves no place where a
            // next request could start.
            let upgraded = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
            let keep_alive = exchange.keep_alive && body != BodyRead::Broken && !*shutdown.borrow();
            let written = write_response(
                &mut conn.io,
                &mut conn.wbuf,
                resp,
                exchange.version,
                exchange.head_request,
                keep_alive,
            )
            .await;
            // The guard (an access log line, say) goes once the last byte went out, or the
            // client left.
            drop(guard);
            conn.answered();
            match written {
                Ok(_) if upgraded => {
                    if let Some(tx) = exchange.upgrade_tx {
                        let Conn { io, rbuf, .. } = conn;
                        let _ = tx.send(Rewind::new(rbuf.freeze(), Box::new(io) as Box<dyn Io>));
                    }
                    return;
                }
                Ok(true) => {
                    // What the service left unread of the body is drained first.
                    if let Some(mut rest) = exchange.pump {
                        let mut reads = BodyReads {
                            timer: &mut conn.read_timer,
                            idle: config.body_idle,
                            last_byte,
                        };
                        if !rest.drain(&mut conn.io, &mut conn.rbuf, &mut reads).await {
                            linger_close(&mut conn.io).await;
                            return;
                        }
                    }
                }
                Ok(false) => {
                    // The client said it sends nothing more (`Connection: close`, or HTTP/1.0
                    // without keep-alive) and all it sent was read: no lingering, as nginx.
                    let all_read = !exchange.keep_alive
                        && exchange.pump.is_none()
                        && body == BodyRead::Done
                        && conn.rbuf.is_empty();
                    if all_read && conn.nothing_unread() {
                        if close_needs_shutdown {
                            let _ = conn.io.shutdown().await;
                        }
                    } else {
                        linger_close(&mut conn.io).await;
                    }
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

/// What the loop keeps of a request while it is answered.
struct Exchange {
    version: Version,
    head_request: bool,
    /// The client allows another request on the connection.
    keep_alive: bool,
    expects_continue: bool,
    /// Moves the body to the service; `None` for a request without one, or once the body is
    /// read to its end.
    pump: Option<Pump>,
    /// When reading the body began (the connection's opening for a request without one: no
    /// clock read).
    body_started: Instant,
    /// Hands the connection to the tunnel after a `101`.
    upgrade_tx: Option<oneshot::Sender<ClientUpgraded>>,
}

impl Exchange {
    /// The request for the service, with its body (and an [`UpgradeSlot`] when it asks for
    /// an upgrade), and what the loop keeps.
    fn begin<I: Io, B: From<Option<OwnBody>>>(
        conn: &mut Conn<I>,
        head: request::Head,
    ) -> (Request<B>, Self) {
        let request::Head {
            request,
            framing,
            keep_alive,
            expects_continue,
        } = head;
        let (mut parts, ()) = request.into_parts();
        let version = parts.version;
        let upgrade_tx = wants_upgrade(version, &parts.headers).then(|| {
            let (tx, rx) = oneshot::channel();
            parts
                .extensions
                .insert(UpgradeSlot(Arc::new(Mutex::new(Some(rx)))));
            tx
        });
        // A body is read through the buffer, in reads of any size.
        conn.small_reads &= framing == BodyFraming::None;
        let (body, pump) = match Pump::for_request(framing) {
            Some((body, pump)) => (Some(body), Some(pump)),
            None => (None, None),
        };
        let exchange = Exchange {
            version,
            head_request: parts.method == Method::HEAD,
            keep_alive,
            expects_continue,
            body_started: if pump.is_some() {
                Instant::now()
            } else {
                conn.opened
            },
            pump,
            upgrade_tx,
        };
        (Request::from_parts(parts, body.into()), exchange)
    }
}

async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}
