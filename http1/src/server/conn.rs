//! A connection's state between requests, and the first stage of each request: reading its
//! head, within the limits of the [`Config`].

use std::future::Future;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::BytesMut;
use tokio::io::{AsyncWriteExt, ReadBuf};
use tokio::time::Instant;

use super::head_check::{Refusal, Refused};
use super::request;
use super::write::linger_close;
use super::{Config, Io};
use crate::rewind::{poll_read_append, poll_read_into};
use crate::LazyTimer;

/// The read buffer is kept for the next head only while it never held more than this (small
/// heads, no body): the next head then costs no allocation; a larger one is let go.
const KEEP_READ_BUFFER: usize = 1024;
/// Likewise for the write buffer: a head and a small body fit, and an idle connection holds
/// next to nothing.
const KEEP_WRITE_BUFFER: usize = 1024;

/// How a read of the connection ended.
pub(super) enum Wait {
    Data,
    Closed,
    /// The deadline of the wait passed first.
    TimedOut,
}

/// Why no head came.
#[derive(Debug)]
pub(super) enum NoHead {
    /// The client closed, or sent nothing of a request in time: close quietly.
    Closed,
    /// Answer this and close.
    Refused(Refusal),
}

/// The drain as an idle wait sees it: `stop` resolves at the drain and is not polled again
/// once `stopping` is set.
pub(super) struct Stop<'a, F> {
    pub stop: Pin<&'a mut F>,
    pub stopping: &'a mut bool,
}

/// One client connection and what it keeps from one request to the next.
pub(super) struct Conn<I> {
    pub io: I,
    pub rbuf: BytesMut,
    /// Whether `rbuf` stayed small enough to keep while the connection is idle.
    pub small_reads: bool,
    pub wbuf: Vec<u8>,
    /// The limits on reading the client, all on one timer.
    pub read_timer: LazyTimer,
    pub opened: Instant,
    /// When the last answer went out.
    pub idle_since: Instant,
    /// A request was read on this connection.
    pub served: bool,
    pub config: &'static Config,
}

impl<I: Io> Conn<I> {
    pub fn new(io: I, config: &'static Config) -> Self {
        let opened = Instant::now();
        Self {
            io,
            rbuf: BytesMut::new(),
            small_reads: true,
            wbuf: Vec::new(),
            read_timer: LazyTimer::at(opened + config.header_read_timeout),
            opened,
            idle_since: opened,
            served: false,
            config,
        }
    }

    /// Stage one: reads until a whole head is at the front of the buffer, and returns its
    /// length (`request::take` then takes it, leaving what follows it, a body or pipelined
    /// requests, in the buffer). The head itself is not returned: moved out of this future
    /// and into the connection's, it would be copied twice per request.
    ///
    /// A connection that sends nothing is closed after the header timeout (the first request)
    /// or the keep-alive idle time (later ones), or once it has been idle for the drain grace
    /// after the drain began. A head begun and not finished within the header timeout gets a
    /// 408.
    pub async fn read_head<F: Future<Output = ()>>(
        &mut self,
        mut stop: Stop<'_, F>,
    ) -> Result<usize, NoHead> {
        let config = self.config;
        let mut searched = 0;
        // When the first byte of a head that is not complete yet was seen.
        let mut head_started = None;
        loop {
            match request::find(&self.rbuf, &mut searched, &config.head) {
                Ok(Some(len)) => {
                    self.served = true;
                    return Ok(len);
                }
                Ok(None) => {}
                Err(refusal) => return Err(NoHead::Refused(refusal)),
            }
            let idle = self.rbuf.is_empty();
            if idle {
                if !self.small_reads {
                    // Between requests the connection holds at most a small buffer.
                    self.rbuf = BytesMut::new();
                    self.small_reads = true;
                }
            } else if head_started.is_none() {
                head_started = Some(Instant::now());
            }
            let deadline = match head_started {
                Some(at) => at + config.header_read_timeout,
                None if self.served => self.idle_since + config.keep_alive_idle,
                None => self.opened + config.header_read_timeout,
            };
            let wait = if idle {
                let drain_close = self.idle_since + config.drain_grace;
                self.wait_for_request(&mut stop, drain_close, deadline)
                    .await
            } else {
                self.read_more(deadline).await
            };
            self.small_reads &= self.rbuf.len() <= KEEP_READ_BUFFER;
            match wait {
                Wait::Data => {}
                Wait::Closed => return Err(NoHead::Closed),
                Wait::TimedOut if idle => return Err(NoHead::Closed),
                Wait::TimedOut => {
                    let head = self.rbuf.trim_ascii_start().starts_with(b"HEAD ");
                    return Err(NoHead::Refused(Refusal(Refused::RequestTimeout, head)));
                }
            }
        }
    }

    /// Waits for the first bytes of the next request until `deadline`. Once the server
    /// drains, the wait ends at `drain_close` too (the connection has then been idle for the
    /// drain grace): closing at once would race a client that is sending its next request
    /// right now, which gets no answer and cannot know whether the request was processed.
    async fn wait_for_request<F: Future<Output = ()>>(
        &mut self,
        stop: &mut Stop<'_, F>,
        drain_close: Instant,
        deadline: Instant,
    ) -> Wait {
        if !*stop.stopping {
            // The read first: bytes that already arrived are a request to answer.
            tokio::select! {
                biased;
                wait = self.read_more(deadline) => return wait,
                () = stop.stop.as_mut() => *stop.stopping = true,
            }
        }
        self.read_more(deadline.min(drain_close)).await
    }

    /// Reads what comes of the next request into the buffer, until `deadline`.
    fn read_more(&mut self, deadline: Instant) -> impl Future<Output = Wait> + '_ {
        read_by(
            &mut self.io,
            &mut self.rbuf,
            0,
            &mut self.read_timer,
            deadline,
        )
    }

    /// After an answer: the connection is idle from now on, and a large write buffer is let
    /// go.
    pub fn answered(&mut self) {
        self.idle_since = Instant::now();
        self.wbuf.clear();
        if self.wbuf.capacity() > KEEP_WRITE_BUFFER {
            self.wbuf = Vec::new();
        }
    }

    /// After the last answer to a client that said it sends nothing more: true when a read
    /// would wait (or finds the client's FIN), so closing now resets nothing under the
    /// answer. It does not wait, and with Tokio's readiness (cleared by the short read that
    /// brought the head) it usually makes no system call. Bytes it finds are dropped: the
    /// connection then lingers (write.rs, `linger_close`), which drops such bytes anyway.
    pub fn nothing_unread(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        let mut probe = [MaybeUninit::<u8>::uninit(); 64];
        let mut buf = ReadBuf::uninit(&mut probe);
        match Pin::new(&mut self.io).poll_read(&mut cx, &mut buf) {
            Poll::Pending => true,
            Poll::Ready(Ok(())) => buf.filled().is_empty(),
            // Reset or broken: nothing to protect.
            Poll::Ready(Err(_)) => true,
        }
    }

    /// Answers `Expect: 100-continue`; false when the client is gone.
    pub async fn send_continue(&mut self) -> bool {
        let interim = b"HTTP/1.1 100 Continue\r\n\r\n";
        self.io.write_all(interim).await.is_ok() && self.io.flush().await.is_ok()
    }

    /// Writes the answer to a head that cannot be served and closes the connection.
    pub async fn refuse(&mut self, raw: Vec<u8>) {
        if self.io.write_all(&raw).await.is_ok() && self.io.flush().await.is_ok() {
            linger_close(&mut self.io).await;
        }
    }
}

/// Reads once into `rbuf`, unless `deadline` passes first. With `direct` 0 no buffer is held
/// while waiting; otherwise up to `direct` bytes are read straight into `rbuf`
/// ([`poll_read_into`], for the rest of a large body). The timer is looked at only when the
/// read has to wait.
pub(super) async fn read_by<I: Io>(
    io: &mut I,
    rbuf: &mut BytesMut,
    direct: usize,
    timer: &mut LazyTimer,
    deadline: Instant,
) -> Wait {
    std::future::poll_fn(|cx| {
        let read = if direct == 0 {
            poll_read_append(io, cx, rbuf)
        } else {
            poll_read_into(io, cx, rbuf, direct)
        };
        match read {
            Poll::Ready(Ok(n)) if n > 0 => Poll::Ready(Wait::Data),
            Poll::Ready(_) => Poll::Ready(Wait::Closed),
            Poll::Pending => timer.poll_expired(cx, deadline).map(|()| Wait::TimedOut),
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncWriteExt, DuplexStream};

    use super::*;
    use crate::server::request::Head;
    use crate::server::tests::CONFIG;

    /// Reads and takes one head with no drain going on, as the loop does.
    async fn next(conn: &mut Conn<DuplexStream>) -> Result<Head, NoHead> {
        let stop = std::future::pending::<()>();
        tokio::pin!(stop);
        let mut stopping = false;
        let stop = Stop {
            stop: stop.as_mut(),
            stopping: &mut stopping,
        };
        let len = conn.read_head(stop).await?;
        request::take(&mut conn.rbuf, len, &CONFIG.head, CONFIG.frequent_names)
            .map_err(NoHead::Refused)
    }

    fn pair() -> (DuplexStream, Conn<DuplexStream>) {
        let (client, server) = tokio::io::duplex(4096);
        (client, Conn::new(server, &CONFIG))
    }

    fn refused(r: Result<Head, NoHead>) -> Refusal {
        match r {
            Err(NoHead::Refused(refusal)) => refusal,
            Err(other) => panic!("not refused: {other:?}"),
            Ok(head) => panic!("accepted: {:?}", head.request),
        }
    }

    #[tokio::test]
    async fn a_head_in_pieces_is_read_whole_and_pipelined_bytes_stay() {
        let (mut client, mut conn) = pair();
        client.write_all(b"GET /a HTTP/1.1\r\nHo").await.unwrap();
        let reading = tokio::spawn(async move {
            let head = next(&mut conn).await.unwrap();
            (head.request.uri().to_string(), conn)
        });
        client
            .write_all(b"st: x\r\n\r\nGET /b HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let (uri, mut conn) = reading.await.unwrap();
        assert_eq!(uri, "/a");
        assert_eq!(&conn.rbuf[..], b"GET /b HTTP/1.1\r\n\r\n");
        // The second head is taken from the buffer without another read.
        drop(client);
        assert_eq!(next(&mut conn).await.unwrap().request.uri(), "/b");
        assert!(matches!(next(&mut conn).await, Err(NoHead::Closed)));
    }

    #[tokio::test]
    async fn heads_over_the_limits_are_refused_with_their_status() {
        for (raw, why) in [
            (
                format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(2000)),
                Refused::HeaderFieldsTooLarge,
            ),
            (
                format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(300)),
                Refused::UriTooLong,
            ),
            (
                (0..17)
                    .map(|i| format!("X-{i}: v\r\n"))
                    .fold("GET / HTTP/1.1\r\n".to_string(), |h, f| h + &f)
                    + "\r\n",
                Refused::HeaderFieldsTooLarge,
            ),
            (
                "HEAD / HTTP/1.1\r\nBad Name: x\r\n\r\n".to_string(),
                Refused::BadRequest,
            ),
        ] {
            let (mut client, mut conn) = pair();
            client.write_all(raw.as_bytes()).await.unwrap();
            let refusal = refused(next(&mut conn).await);
            assert_eq!(refusal.0, why, "{raw:.40}");
            assert_eq!(refusal.1, raw.starts_with("HEAD"));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_begun_and_not_finished_in_time_is_a_408() {
        let (mut client, mut conn) = pair();
        client.write_all(b"HEAD / HTTP/1.1\r\n").await.unwrap();
        let start = Instant::now();
        let refusal = refused(next(&mut conn).await);
        assert_eq!(refusal, Refusal(Refused::RequestTimeout, true));
        assert!(start.elapsed() >= CONFIG.header_read_timeout);
    }

    #[tokio::test(start_paused = true)]
    async fn silence_closes_quietly_at_the_header_then_the_idle_timeout() {
        let (_client, mut conn) = pair();
        let start = Instant::now();
        assert!(matches!(next(&mut conn).await, Err(NoHead::Closed)));
        assert_eq!(start.elapsed(), CONFIG.header_read_timeout);

        let (mut client, mut conn) = pair();
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        next(&mut conn).await.unwrap();
        conn.answered();
        let start = Instant::now();
        assert!(matches!(next(&mut conn).await, Err(NoHead::Closed)));
        assert_eq!(start.elapsed(), CONFIG.keep_alive_idle);
    }

    #[tokio::test(start_paused = true)]
    async fn a_drain_closes_an_idle_connection_after_the_grace_only() {
        let (_client, mut conn) = pair();
        let stop = std::future::ready(());
        tokio::pin!(stop);
        let mut stopping = false;
        let start = Instant::now();
        let stop = Stop {
            stop: stop.as_mut(),
            stopping: &mut stopping,
        };
        assert!(matches!(conn.read_head(stop).await, Err(NoHead::Closed)));
        assert!(stopping);
        assert_eq!(start.elapsed(), CONFIG.drain_grace);
        assert!(CONFIG.drain_grace < Duration::from_secs(10));
    }
}
