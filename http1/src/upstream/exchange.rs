//! One request on one connection: write the head (and the body, while watching for an early
//! response), read the response head, and hand the connection to the response body.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use http::{Method, Response, StatusCode};
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::body::UpstreamBody;
use super::head::{self, RequestFraming, ResponseHead};
use super::pool::Pool;
use super::{Outgoing, OutgoingBody, UpstreamError, CONNECT_TIMEOUT};
use crate::chunked;
use crate::rewind::{read_append_up_to, HEAD_READ_SIZE};
use crate::BoxError;

#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("writing the request failed: {0}")]
    Write(std::io::Error),
    #[error("reading the response failed: {0}")]
    Read(std::io::Error),
    #[error("instance closed the connection before a response")]
    Closed,
    #[error(transparent)]
    Head(#[from] head::HeadError),
    #[error("reading the request body failed: {0}")]
    ClientBody(BoxError),
}

struct ExchangeError {
    failure: Failure,
    /// Some response byte arrived: the request reached the instance.
    received: bool,
}

impl ExchangeError {
    fn new(failure: Failure, received: bool) -> Self {
        Self { failure, received }
    }
}

/// The request head's bytes, in a buffer the worker thread keeps from one request to the
/// next (a `Vec` per request was one allocation of ten). A request that finds it taken by
/// another one in flight uses a fresh one.
struct HeadBytes(Vec<u8>);

thread_local! {
    static HEAD_BYTES: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

impl HeadBytes {
    /// Heads larger than this are not kept.
    const KEEP: usize = 4096;

    fn take() -> Self {
        Self(
            HEAD_BYTES
                .try_with(std::cell::Cell::take)
                .unwrap_or_default(),
        )
    }
}

impl std::ops::Deref for HeadBytes {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        &self.0
    }
}

impl std::ops::DerefMut for HeadBytes {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }
}

impl Drop for HeadBytes {
    fn drop(&mut self) {
        if self.0.capacity() <= Self::KEEP {
            let mut buf = std::mem::take(&mut self.0);
            buf.clear();
            // Not at all once the thread is tearing down its locals.
            let _ = HEAD_BYTES.try_with(|kept| kept.set(buf));
        }
    }
}

pub async fn send<B: OutgoingBody>(
    pool: &Arc<Pool>,
    port: u16,
    req: Outgoing<'_, B>,
) -> Result<Response<UpstreamBody>, UpstreamError> {
    let has_body = !req.body.is_end_stream();
    let framing = RequestFraming::choose(req.method, req.headers, has_body);
    let mut head_bytes = HeadBytes::take();
    head_bytes.reserve(128 + req.target.len() + 48 * req.headers.len());
    head::encode_request(
        &mut head_bytes,
        req.method,
        req.target,
        req.headers,
        framing,
    );
    let was_head = *req.method == Method::HEAD;
    let mut body = has_body.then_some(req.body);
    let mut fresh_only = false;
    loop {
        let pooled = if fresh_only { None } else { pool.take(port) };
        let reused = pooled.is_some();
        let mut stream = match pooled {
            Some(s) => s,
            // Boxed (as is the exchange with a body): rarer paths whose futures would
            // otherwise enlarge every request's future, which is allocated per request.
            None => Box::pin(connect_or_handoff(pool, port, !fresh_only)).await?,
        };
        let mut buf = BytesMut::new();
        let chunked = framing == RequestFraming::Chunked;
        match exchange(&mut stream, &head_bytes, body.take(), chunked, &mut buf).await {
            Ok((resp_head, body_sent)) => {
                return respond(resp_head, body_sent, was_head, stream, buf, pool, port)
            }
            // A kept-alive connection the instance closed as we picked it: nothing reached
            // the app, and a bodiless request can go again on a new connection.
            Err(e) if reused && !e.received && !has_body => {
                tracing::debug!(port, error = %e.failure, "Pooled connection was stale; reconnecting");
                fresh_only = true;
            }
            Err(e) => return Err(UpstreamError::Failed(e.failure.to_string())),
        }
    }
}

fn respond(
    head: ResponseHead,
    body_sent: bool,
    was_head: bool,
    stream: TcpStream,
    buf: BytesMut,
    pool: &Arc<Pool>,
    port: u16,
) -> Result<Response<UpstreamBody>, UpstreamError> {
    let body = if head.status == StatusCode::SWITCHING_PROTOCOLS {
        UpstreamBody::upgraded(stream, buf, Arc::clone(pool), port)
    } else {
        let (framing, reusable) = head::response_framing(was_head, &head)
            .map_err(|e| UpstreamError::Failed(e.to_string()))?;
        // A body we stopped sending leaves the connection mid-request.
        let reusable = reusable && body_sent;
        UpstreamBody::new(stream, buf, framing, reusable, Arc::clone(pool), port)
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = head.status;
    *resp.headers_mut() = head.headers;
    Ok(resp)
}

/// A new connection, or one another request hands back first, whichever comes sooner. A
/// connect that loses the race still completes into the pool: abandoning it would close a
/// fresh connection at once, and under a burst the pool would never grow to the concurrency
/// it needs (measured at 1000 client connections: a connect and close for one request in 50).
async fn connect_or_handoff(
    pool: &Arc<Pool>,
    port: u16,
    accept_handoff: bool,
) -> Result<TcpStream, UpstreamError> {
    let Some(mut handoff) = accept_handoff.then(|| pool.wait(port)).flatten() else {
        return connect(port).await;
    };
    let mut connecting = Box::pin(connect(port));
    tokio::select! {
        biased;
        Ok(stream) = &mut handoff => {
            let pool = Arc::clone(pool);
            tokio::spawn(async move {
                if let Ok(spare) = connecting.await {
                    pool.put(port, spare);
                }
            });
            Ok(stream)
        }
        connected = &mut connecting => {
            // A connection handed to us meanwhile goes back to the pool, not to waste.
            handoff.close();
            if let Ok(stream) = handoff.try_recv() {
                pool.put(port, stream);
            }
            connected
        }
    }
}

async fn connect(port: u16) -> Result<TcpStream, UpstreamError> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Err(_) => Err(UpstreamError::Connect(format!(
            "no answer from {addr} within {CONNECT_TIMEOUT:?}"
        ))),
        Ok(Err(e)) => Err(UpstreamError::Connect(format!("{addr}: {e}"))),
        Ok(Ok(stream)) => {
            // Heads and small bodies go out at once, not after the peer's delayed ACK.
            let _ = stream.set_nodelay(true);
            Ok(stream)
        }
    }
}

/// Writes the request and reads the response head. The second value says whether the whole
/// request body was sent.
async fn exchange<B: OutgoingBody>(
    stream: &mut TcpStream,
    head_bytes: &[u8],
    body: Option<B>,
    chunked: bool,
    buf: &mut BytesMut,
) -> Result<(ResponseHead, bool), ExchangeError> {
    let Some(body) = body else {
        stream
            .write_all(head_bytes)
            .await
            .map_err(|e| ExchangeError::new(Failure::Write(e), false))?;
        return Ok((read_head(stream, buf).await?, true));
    };
    Box::pin(exchange_with_body(stream, head_bytes, body, chunked, buf)).await
}

/// Writes the body while watching for an early answer.
async fn exchange_with_body<B: OutgoingBody>(
    stream: &mut TcpStream,
    head_bytes: &[u8],
    body: B,
    chunked: bool,
    buf: &mut BytesMut,
) -> Result<(ResponseHead, bool), ExchangeError> {
    let (mut rd, mut wr) = stream.split();
    let write = async {
        wr.write_all(head_bytes).await.map_err(Failure::Write)?;
        pump(body, &mut wr, chunked).await
    };
    let read = read_head(&mut rd, buf);
    tokio::pin!(write, read);
    let mut sent = false;
    let mut writing = true;
    loop {
        tokio::select! {
            biased;
            head = &mut read => return Ok((head?, sent)),
            written = &mut write, if writing => {
                writing = false;
                match written {
                    Ok(()) => sent = true,
                    // The client's body is bad: no point waiting for the instance.
                    Err(f @ Failure::ClientBody(_)) => return Err(ExchangeError::new(f, false)),
                    // The instance may still answer (say, 413 and close): keep reading.
                    Err(f) => tracing::debug!(error = %f, "Request body not fully sent"),
                }
            }
        }
    }
}

/// Copies the request body, chunk-encoded when its length is unknown.
async fn pump<B: OutgoingBody, W: AsyncWrite + Unpin>(
    mut body: B,
    wr: &mut W,
    chunked: bool,
) -> Result<(), Failure> {
    let mut framed = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Failure::ClientBody(e.into()))?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers are not forwarded
        };
        if data.is_empty() {
            continue;
        }
        if chunked {
            framed.clear();
            chunked::chunk_size_line(&mut framed, data.len());
            framed.extend_from_slice(&data);
            framed.extend_from_slice(b"\r\n");
            wr.write_all(&framed).await.map_err(Failure::Write)?;
        } else {
            wr.write_all(&data).await.map_err(Failure::Write)?;
        }
    }
    if chunked {
        wr.write_all(b"0\r\n\r\n").await.map_err(Failure::Write)?;
    }
    Ok(())
}

/// Reads until a final response head; interim 1xx responses other than 101 are skipped.
async fn read_head<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
) -> Result<ResponseHead, ExchangeError> {
    let mut received = false;
    loop {
        if !buf.is_empty() {
            received = true;
            match head::parse_response(buf) {
                Ok(Some(h)) => {
                    if h.status.is_informational() && h.status != StatusCode::SWITCHING_PROTOCOLS {
                        continue;
                    }
                    return Ok(h);
                }
                Ok(None) => {}
                Err(e) => return Err(ExchangeError::new(e.into(), true)),
            }
        }
        match read_append_up_to::<HEAD_READ_SIZE, _>(rd, buf).await {
            Ok(0) => return Err(ExchangeError::new(Failure::Closed, received)),
            Ok(_) => {}
            Err(e) => return Err(ExchangeError::new(Failure::Read(e), received)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use tokio::io::ReadBuf;

    use super::*;

    /// Hands out `data` as fast as the reader's buffer allows, counting the reads.
    struct Counted {
        data: Vec<u8>,
        reads: usize,
    }

    impl AsyncRead for Counted {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            let n = self.data.len().min(buf.remaining());
            buf.put_slice(&self.data[..n]);
            self.data.drain(..n);
            self.reads += 1;
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_16k_answer_that_is_there_is_read_with_its_head_in_one_read() {
        let body = vec![b'x'; 16 * 1024];
        let mut data = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\n\
             content-length: {}\r\ndate: Fri, 27 Nov 2026 12:00:00 GMT\r\n\r\n",
            body.len()
        )
        .into_bytes();
        data.extend_from_slice(&body);
        let mut rd = Counted { data, reads: 0 };
        let mut buf = BytesMut::new();
        let Ok(head) = read_head(&mut rd, &mut buf).await else {
            panic!("no head read");
        };
        assert_eq!(head.status, StatusCode::OK);
        assert_eq!(rd.reads, 1);
        assert_eq!(buf.len(), body.len(), "the whole body is already read");
        assert!(buf[..] == body[..]);
    }
}
