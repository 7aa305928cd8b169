//! The whole loop over an in-memory connection: bytes in, bytes out. The stages have their own
//! tests in their modules; these check how they fit together.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::watch;

use super::*;

/// Small limits, so the tests can break them cheaply.
pub(super) static CONFIG: Config = Config {
    head: HeadLimits {
        max_fields: 16,
        max_bytes: 1024,
        max_target: 256,
    },
    header_read_timeout: Duration::from_secs(10),
    keep_alive_idle: Duration::from_secs(60),
    body_idle: Duration::from_secs(60),
    drain_grace: Duration::from_secs(5),
    frequent_names: &[],
};

/// The response a [`Service::refusal`] gives in these tests: the status and nothing else.
pub(super) fn refusal_bytes(refusal: Refusal) -> Vec<u8> {
    format!(
        "HTTP/1.1 {} Refused\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
        refusal.0.status().as_u16()
    )
    .into_bytes()
}

/// Answers `METHOD PATH BODY` with the whole request body read; `/ignore` answers without
/// reading the body.
struct Echo;

impl Service for Echo {
    type RequestBody = Option<OwnBody>;
    type ResponseBody = Full<Bytes>;
    type Guard = ();

    async fn call(&mut self, req: Request<Option<OwnBody>>) -> (Response<Full<Bytes>>, ()) {
        let (parts, body) = req.into_parts();
        let mut text = format!("{} {} ", parts.method, parts.uri.path()).into_bytes();
        if parts.uri.path() != "/ignore" {
            if let Some(body) = body {
                match body.collect().await {
                    Ok(all) => text.extend_from_slice(&all.to_bytes()),
                    Err(e) => text.extend_from_slice(format!("error: {e}").as_bytes()),
                }
            }
        }
        (Response::new(Full::new(Bytes::from(text))), ())
    }

    fn refusal(&mut self, refusal: Refusal) -> Vec<u8> {
        refusal_bytes(refusal)
    }
}

/// A served connection: the client's end, and whether the server drains.
struct Client {
    io: DuplexStream,
    drain: watch::Sender<bool>,
    served: tokio::task::JoinHandle<()>,
}

fn start() -> Client {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let (drain, rx) = watch::channel(false);
    let peer = SocketAddr::from(([127, 0, 0, 1], 4000));
    let served = tokio::spawn(serve(server, peer, Echo, &CONFIG, rx));
    Client {
        io: client,
        drain,
        served,
    }
}

impl Client {
    async fn send(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).await.unwrap();
    }

    /// Everything the server writes until it closes the connection.
    async fn rest(&mut self) -> String {
        let mut out = Vec::new();
        self.io.read_to_end(&mut out).await.unwrap();
        String::from_utf8(out).unwrap()
    }

    /// Reads until `text` has arrived, and returns all that did.
    async fn until(&mut self, text: &str) -> String {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&out).contains(text) {
            let n = self.io.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "closed before {text:?}: {}",
                String::from_utf8_lossy(&out)
            );
            out.extend_from_slice(&buf[..n]);
        }
        String::from_utf8(out).unwrap()
    }
}

/// The bodies of the responses in `text`, in order (every test response has a length).
fn bodies(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(end) = rest.find("\r\n\r\n") {
        let head = &rest[..end];
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .map_or(0, |v| v.parse().unwrap());
        let body_start = end + 4;
        out.push(&rest[body_start..body_start + len]);
        rest = &rest[body_start + len..];
    }
    out
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let mut c = start();
    c.send(
        b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n\
          POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc\
          GET /c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    let text = c.rest().await;
    assert_eq!(
        bodies(&text),
        ["GET /a ", "POST /b abc", "GET /c "],
        "{text}"
    );
    assert_eq!(text.matches("HTTP/1.1 200 OK\r\n").count(), 3);
    assert!(text.ends_with("GET /c "), "closed after the last: {text}");
}

/// A client that said `Connection: close` and whose bytes were all read gets its answer and
/// the close at once: the server keeps no end open to drain more.
#[tokio::test]
async fn a_close_request_read_whole_closes_without_lingering() {
    let mut c = start();
    c.send(b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        .await;
    let text = c.rest().await;
    assert_eq!(bodies(&text), ["POST /a ok"], "{text}");
    // The server's end is gone with the close: a late byte finds no reader.
    let late = c.io.write_all(b"x").await;
    assert_eq!(
        late.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::BrokenPipe)
    );
    c.served.await.unwrap();
}

/// Bytes behind a `Connection: close` request (pipelined, or a body the service left unread)
/// are drained after the answer, so that closing does not reset the connection under it.
#[tokio::test]
async fn unread_bytes_behind_a_close_request_are_drained_after_the_answer() {
    for raw in [
        &b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\nGET /b HTTP/1.1\r\n\r\n"[..],
        b"POST /ignore HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\nConnection: close\r\n\r\nabc",
    ] {
        let mut c = start();
        c.send(raw).await;
        let text = c.rest().await;
        assert_eq!(text.matches("HTTP/1.1 200 OK\r\n").count(), 1, "{text}");
        assert!(text.contains("connection: close\r\n"), "{text}");
        // The server still reads (and drops) what the client sends after the answer.
        c.io.write_all(b"more").await.unwrap();
        drop(c.io);
        c.served.await.unwrap();
    }
}

#[tokio::test]
async fn a_chunked_body_reaches_the_service_decoded() {
    let mut c = start();
    c.send(b"PUT /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
        .await;
    c.send(b"2;ext=1\r\nde\r\n0\r\nTrailer: t\r\n\r\n").await;
    let text = c.until("PUT /up abcde").await;
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    // The connection carries the next request.
    c.send(b"GET /next HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await;
    assert!(c.rest().await.ends_with("GET /next "));
}

#[tokio::test(start_paused = true)]
async fn malformed_heads_get_their_status_and_a_close() {
    for (raw, status) in [
        (&b"GET / HTTP/1.1\r\nHost : x\r\n\r\n"[..], "400"),
        (b"GET /\r\n", "400"),
        (
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "400",
        ),
        (
            format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(300)).as_bytes(),
            "414",
        ),
        (
            format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(2000)).as_bytes(),
            "431",
        ),
    ] {
        let mut c = start();
        c.send(raw).await;
        let text = c.rest().await;
        assert!(
            text.starts_with(&format!("HTTP/1.1 {status} ")),
            "{:?}: {text}",
            String::from_utf8_lossy(raw)
        );
        c.served.await.unwrap();
    }
}

#[tokio::test]
async fn http10_closes_unless_kept_alive() {
    let mut c = start();
    c.send(b"GET /a HTTP/1.0\r\n\r\n").await;
    let text = c.rest().await;
    assert!(text.starts_with("HTTP/1.0 200 OK\r\n"), "{text}");
    assert!(text.contains("connection: close\r\n"), "{text}");

    let mut c = start();
    c.send(b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .await;
    let text = c.until("GET /a ").await;
    assert!(text.contains("connection: keep-alive\r\n"), "{text}");
}

#[tokio::test]
async fn expect_continue_gets_its_interim_answer_first() {
    let mut c = start();
    c.send(b"POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
        .await;
    let interim = c.until("\r\n\r\n").await;
    assert_eq!(interim, "HTTP/1.1 100 Continue\r\n\r\n");
    c.send(b"ok").await;
    assert!(c.until("POST /e ok").await.starts_with("HTTP/1.1 200 OK"));
}

#[tokio::test]
async fn an_unread_body_is_drained_and_the_connection_kept() {
    let mut c = start();
    c.send(b"POST /ignore HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n12345GET /after HTTP/1.1\r\nConnection: close\r\n\r\n")
        .await;
    let text = c.rest().await;
    assert_eq!(bodies(&text), ["POST /ignore ", "GET /after "], "{text}");
}

#[tokio::test]
async fn a_draining_server_answers_with_close_and_closes_idle_connections() {
    let mut c = start();
    c.send(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n").await;
    c.until("GET /a ").await;
    c.drain.send(true).unwrap();
    c.send(b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let text = c.rest().await;
    assert!(text.contains("connection: close\r\n"), "{text}");
    assert!(text.ends_with("GET /b "), "{text}");
}

#[tokio::test(start_paused = true)]
async fn an_idle_connection_closes_after_the_drain_grace() {
    let mut c = start();
    c.send(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n").await;
    c.until("GET /a ").await;
    c.drain.send(true).unwrap();
    let started = tokio::time::Instant::now();
    assert_eq!(c.rest().await, "");
    assert!(started.elapsed() >= CONFIG.drain_grace - Duration::from_millis(1));
    assert!(started.elapsed() < CONFIG.keep_alive_idle);
}

#[tokio::test]
async fn an_upgrade_hands_the_connection_over_after_the_101() {
    let (client, server) = tokio::io::duplex(4096);
    let (_drain, rx) = watch::channel(false);
    let peer = SocketAddr::from(([127, 0, 0, 1], 4000));

    /// Takes the client's side out of the request, as a tunnel would.
    struct Taker(Option<tokio::sync::oneshot::Sender<UpgradeSlot>>);
    impl Service for Taker {
        type RequestBody = Option<OwnBody>;
        type ResponseBody = Full<Bytes>;
        type Guard = ();
        fn call(
            &mut self,
            mut req: Request<Option<OwnBody>>,
        ) -> impl Future<Output = (Response<Full<Bytes>>, ())> + Send + '_ {
            let slot = req.extensions_mut().remove::<UpgradeSlot>();
            if let (Some(tx), Some(slot)) = (self.0.take(), slot) {
                let _ = tx.send(slot);
            }
            let mut resp = Response::new(Full::new(Bytes::new()));
            *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            std::future::ready((resp, ()))
        }
        fn refusal(&mut self, refusal: Refusal) -> Vec<u8> {
            refusal_bytes(refusal)
        }
    }

    let (tx, slot) = tokio::sync::oneshot::channel();
    tokio::spawn(serve(server, peer, Taker(Some(tx)), &CONFIG, rx));
    let mut c = Client {
        io: client,
        drain: watch::channel(false).0,
        served: tokio::spawn(async {}),
    };
    c.send(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: test\r\n\r\nearly")
        .await;
    let head = c.until("\r\n\r\n").await;
    assert!(
        head.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
        "{head}"
    );
    let mut upgraded = slot.await.unwrap().take().await.unwrap();
    // Bytes sent past the head come first, then the connection itself.
    let mut early = [0u8; 5];
    upgraded.read_exact(&mut early).await.unwrap();
    assert_eq!(&early, b"early");
    upgraded.write_all(b"pong").await.unwrap();
    assert_eq!(c.until("pong").await, "pong");
}
