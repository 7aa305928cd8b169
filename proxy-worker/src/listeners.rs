//! Accept loops for the inherited listeners, TLS handshakes, and the HTTP connections with
//! graceful shutdown (stop accepting, finish in-flight, close idle keep-alive).

use std::sync::Arc;
use std::time::{Duration, Instant};

use std::pin::Pin;
use std::task::{Context, Poll};
use tako_http1::{server as h1, LazyTimer};
use tako_ipc::ListenerKind;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::client_limits::ConnSlot;
use crate::conn_info::ConnInfo;
use crate::conns::ConnTracker;
use crate::h1_service;
use crate::h2_limits;
use crate::limits::{MAX_CONNECTIONS, MAX_HEADER_BYTES, TLS_HANDSHAKE_TIMEOUT};
use crate::proxy_protocol::{self, Header};
use crate::shared::Shared;

/// How often a worker at the cap looks again whether a connection closed.
const CAP_RECHECK: Duration = Duration::from_millis(20);
/// At most one "connection cap reached" line per this period.
const CAP_LOG_PERIOD: Duration = Duration::from_secs(1);

/// The per-worker connection cap. Over the cap the accept loop stops accepting instead of
/// accepting and closing: all workers accept from the same inherited socket, so a connection
/// this worker leaves in the backlog goes to a worker with room, and when every worker is full
/// the kernel backlog makes clients wait (and retry SYNs) instead of failing at once.
pub struct ConnCap {
    limit: usize,
    last_log: Option<Instant>,
}

/// What the accept loop does next.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    Accept,
    /// At the cap: wait, and log when `log` (at most once per [`CAP_LOG_PERIOD`]).
    Pause {
        log: bool,
    },
}

impl ConnCap {
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            last_log: None,
        }
    }

    pub fn check(&mut self, active: usize, now: Instant) -> Admission {
        if active < self.limit {
            return Admission::Accept;
        }
        let log = self
            .last_log
            .is_none_or(|t| now.saturating_duration_since(t) >= CAP_LOG_PERIOD);
        if log {
            self.last_log = Some(now);
        }
        Admission::Pause { log }
    }
}

/// Everything an accept loop needs.
pub struct Server {
    pub shared: Arc<Shared>,
    pub tls: TlsAcceptor,
    pub shutdown: watch::Receiver<bool>,
    pub tracker: Arc<ConnTracker>,
    http2: hyper::server::conn::http2::Builder<crate::h2_send::StreamExec>,
    h2_timers: h2_limits::Timers,
}

impl Server {
    pub fn new(
        shared: Arc<Shared>,
        tls: TlsAcceptor,
        shutdown: watch::Receiver<bool>,
        tracker: Arc<ConnTracker>,
    ) -> Self {
        let h2_timers = h2_limits::Timers::from_config(shared.config.h2_timeouts);
        Self {
            shared,
            tls,
            shutdown,
            tracker,
            http2: h2_limits::builder(MAX_HEADER_BYTES as u32, h2_timers.body_idle),
            h2_timers,
        }
    }
}

/// Starts serving one inherited listener.
pub fn spawn(
    listener: std::net::TcpListener,
    kind: ListenerKind,
    server: Arc<Server>,
) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    // Set once here instead of once per connection: Linux gives an accepted socket the
    // listening socket's TCP_NODELAY. Every worker sets the same on the shared socket.
    if let Err(error) =
        nix::sys::socket::setsockopt(&listener, nix::sys::socket::sockopt::TcpNoDelay, &true)
    {
        tracing::warn!(?kind, %error, "TCP_NODELAY on the listener failed");
    }
    let listener = TcpListener::from_std(listener)?;
    let local = listener.local_addr().ok();
    let proxy = local.is_some_and(|addr| expects_proxy_header(&server.shared.config, addr));
    tracing::info!(?kind, addr = ?local, proxy_protocol = proxy, "Serving listener");
    tokio::spawn(accept_loop(listener, kind, proxy, server));
    Ok(())
}

/// Whether the master named this listener's address for the PROXY protocol (docs/http.md,
/// "PROXY protocol").
fn expects_proxy_header(config: &tako_ipc::WorkerConfig, local: std::net::SocketAddr) -> bool {
    config
        .proxy_protocol
        .iter()
        .any(|a| a.parse::<std::net::SocketAddr>() == Ok(local))
}

/// The client's address on a PROXY protocol listener, from the header a trusted proxy sent
/// first; `None` closes the connection: an untrusted peer may not speak for another address,
/// and a trusted one that sends no valid header in time is not followed further.
async fn proxied_peer(
    stream: &mut TcpStream,
    peer: std::net::SocketAddr,
    server: &Server,
) -> Option<std::net::SocketAddr> {
    if !server.shared.trusted.iter().any(|c| c.contains(peer.ip())) {
        tracing::debug!(%peer, "PROXY protocol listener: peer is not a trusted proxy; closing");
        return None;
    }
    match proxy_protocol::read_header(stream).await {
        Ok(Header::Proxied(client)) => Some(client),
        Ok(Header::Local) => Some(peer),
        Err(error) => {
            tracing::debug!(%peer, %error, "PROXY protocol header refused; closing");
            None
        }
    }
}

async fn accept_loop(listener: TcpListener, kind: ListenerKind, proxy: bool, server: Arc<Server>) {
    let mut shutdown = server.shutdown.clone();
    let mut cap = ConnCap::new(MAX_CONNECTIONS);
    loop {
        let active = server.tracker.active();
        if let Admission::Pause { log } = cap.check(active, Instant::now()) {
            if log {
                tracing::warn!(
                    ?kind,
                    connections = active,
                    limit = MAX_CONNECTIONS,
                    "Connection cap reached; not accepting until a connection closes"
                );
            }
            tokio::select! {
                _ = stopped(&mut shutdown) => break,
                _ = tokio::time::sleep(CAP_RECHECK) => continue,
            }
        }
        // The drain first: once it began, no connection is accepted. An unbiased choice
        // could still take one while the worker was finishing (sending its last totals after
        // its connections ended), and that connection was dropped unanswered when the
        // runtime stopped.
        let accepted = tokio::select! {
            biased;
            _ = stopped(&mut shutdown) => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                let guard = server.tracker.enter();
                let server = Arc::clone(&server);
                // A task per kind: a plain connection's future is then sized for plain HTTP
                // alone, not for the TLS handshake and HTTP/2 as well, and spawning it copies
                // that much less (bench/cost.sh, MODE=close).
                if kind == ListenerKind::Https {
                    tokio::spawn(async move {
                        let _guard = guard;
                        if let Some((stream, conn)) =
                            admit(stream, peer, proxy, true, &server).await
                        {
                            serve_tls(stream, conn, &server).await;
                        }
                    });
                } else {
                    tokio::spawn(async move {
                        let _guard = guard;
                        if let Some((stream, conn)) =
                            admit(stream, peer, proxy, false, &server).await
                        {
                            serve_h1(stream, conn, &server).await;
                        }
                    });
                }
            }
            // The master shut the socket down for good (graceful shutdown without a
            // successor): nothing more will arrive on it.
            Err(error) if error.kind() == std::io::ErrorKind::InvalidInput => {
                tracing::info!(?kind, "Listener shut down by the master");
                break;
            }
            Err(error) => {
                // Out of descriptors or a transient error: back off briefly, keep serving.
                tracing::warn!(?kind, %error, "Accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    // Dropping the listener closes only this process's copy; the master keeps its own.
    tracing::info!(?kind, "Stopped accepting");
}

/// A client's connection with its place in the per-client table (docs/limits.md,
/// "Per-client limits"), given back when the connection closes, wherever it went: a
/// WebSocket tunnel keeps it as long as it runs.
pub struct ClientStream {
    io: TcpStream,
    _client: Option<ConnSlot>,
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Resolves once shutdown was ordered (or its sender is gone, which means the same).
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// A new connection's client (from the PROXY header on such a listener) and its place in
/// the per-client table; `None` closes it.
async fn admit(
    mut stream: TcpStream,
    peer: std::net::SocketAddr,
    proxy: bool,
    tls: bool,
    server: &Server,
) -> Option<(ClientStream, ConnInfo)> {
    // The header comes before anything else, the TLS ClientHello included.
    let peer = if proxy {
        proxied_peer(&mut stream, peer, server).await?
    } else {
        peer
    };
    // docs/limits.md, "Per-client limits": over the cap, closed before any byte (no TLS
    // handshake).
    let client = match server.shared.limiter.get() {
        Some(limiter) => match limiter.connection(peer.ip(), &server.shared.trusted) {
            Ok(slot) => slot,
            Err(()) => {
                tracing::debug!(%peer, "Connection over the per-client cap; closing");
                return None;
            }
        },
        None => None,
    };
    let mut conn = ConnInfo::new(peer, tls);
    conn.client = client.as_ref().map(|c| c.pinned());
    let stream = ClientStream {
        io: stream,
        _client: client,
    };
    Some((stream, conn))
}

async fn serve_tls(stream: ClientStream, conn: ConnInfo, server: &Server) {
    let tls = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, server.tls.accept(stream)).await {
        Ok(Ok(s)) => {
            server.shared.counters.record_handshake(true);
            s
        }
        Ok(Err(error)) => {
            server.shared.counters.record_handshake(false);
            tracing::debug!(peer = %conn.peer, %error, "TLS handshake failed");
            return;
        }
        Err(_) => {
            server.shared.counters.record_handshake(false);
            tracing::debug!(peer = %conn.peer, "TLS handshake timed out");
            return;
        }
    };
    if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
        serve_h2(tls, conn, server).await;
    } else {
        serve_h1(tls, conn, server).await;
    }
}

/// HTTP/1 goes through our own connection loop (the http1 crate, `server`).
/// A plain function handing back the loop's future: an `async` wrapper would hold a second
/// copy of the stream for the whole connection.
fn serve_h1<I>(io: I, conn: ConnInfo, server: &Server) -> impl std::future::Future<Output = ()>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = conn.peer;
    let service = h1_service::Pipeline {
        conn,
        shared: Arc::clone(&server.shared),
        head_timer: LazyTimer::new(),
    };
    h1::serve(
        io,
        peer,
        service,
        &h1_service::CONFIG,
        server.shutdown.clone(),
    )
}

/// HTTP/2 stays with hyper, inside the connection limits of h2_limits.rs.
fn serve_h2<I>(io: I, conn: ConnInfo, server: &Server) -> impl std::future::Future<Output = ()> + '_
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    h2_limits::serve(
        io,
        conn,
        h2_limits::Conn {
            builder: &server.http2,
            timers: server.h2_timers,
            shared: &server.shared,
            shutdown: server.shutdown.clone(),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_pauses_at_the_limit_and_logs_once_a_second() {
        let mut cap = ConnCap::new(3);
        let t0 = Instant::now();
        assert_eq!(cap.check(0, t0), Admission::Accept);
        assert_eq!(cap.check(2, t0), Admission::Accept);
        assert_eq!(cap.check(3, t0), Admission::Pause { log: true });
        assert_eq!(cap.check(4, t0), Admission::Pause { log: false });
        let later = t0 + Duration::from_millis(999);
        assert_eq!(cap.check(3, later), Admission::Pause { log: false });
        assert_eq!(cap.check(2, later), Admission::Accept, "room again");
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(cap.check(3, t1), Admission::Pause { log: true });
        assert_eq!(cap.check(3, t1), Admission::Pause { log: false });
    }
}
