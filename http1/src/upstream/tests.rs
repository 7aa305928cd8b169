//! The client against a scripted instance on a real loopback socket.

use crate::LazyTimer;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use http::{HeaderMap, Method, StatusCode};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::{Outgoing, Upstream, UpstreamError};

/// One scripted answer: the bytes, and whether the instance closes afterwards.
type Answer = (&'static [u8], bool);

struct Instance {
    port: u16,
    accepts: Arc<AtomicUsize>,
}

/// Answers the n-th request head (over all connections) with `answers[n]`.
async fn instance(answers: Vec<Answer>) -> Instance {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepts = Arc::new(AtomicUsize::new(0));
    let answers = Arc::new(Mutex::new(answers.into_iter()));
    let counted = Arc::clone(&accepts);
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            let answers = Arc::clone(&answers);
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                        continue;
                    };
                    seen.drain(..end + 4);
                    let Some((bytes, close)) = answers.lock().unwrap().next() else {
                        return;
                    };
                    if conn.write_all(bytes).await.is_err() || close {
                        return;
                    }
                }
            });
        }
    });
    Instance { port, accepts }
}

fn empty_body() -> http_body_util::Empty<bytes::Bytes> {
    http_body_util::Empty::new()
}

async fn get(up: &Upstream, port: u16, method: Method) -> Result<(StatusCode, Vec<u8>), String> {
    let headers = HeaderMap::new();
    let resp = up
        .send(
            port,
            Outgoing {
                method: &method,
                target: "/x",
                headers: &headers,
                body: empty_body(),
            },
            std::time::Instant::now(),
            &mut LazyTimer::new(),
        )
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok((status, body.to_bytes().to_vec()))
}

#[tokio::test]
async fn keep_alive_connections_are_reused() {
    let ok: Answer = (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", false);
    let inst = instance(vec![ok; 5]).await;
    let up = Upstream::new(16);
    for _ in 0..5 {
        assert_eq!(
            get(&up, inst.port, Method::GET).await.unwrap(),
            (StatusCode::OK, b"ok".to_vec())
        );
    }
    assert_eq!(inst.accepts.load(Ordering::SeqCst), 1);
    assert_eq!(up.pool.idle_count(inst.port), 1);
}

#[tokio::test]
async fn a_connection_the_instance_closed_while_idle_is_not_used() {
    // Closes after each answer, without saying so.
    let ok: Answer = (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", true);
    let inst = instance(vec![ok; 3]).await;
    let up = Upstream::new(16);
    for _ in 0..3 {
        assert_eq!(get(&up, inst.port, Method::GET).await.unwrap().1, b"ok");
    }
    assert_eq!(inst.accepts.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn chunked_and_close_delimited_bodies() {
    let inst = instance(vec![
        (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\nt: 1\r\n\r\n",
            false,
        ),
        (b"HTTP/1.1 200 OK\r\n\r\nuntil close", true),
    ])
    .await;
    let up = Upstream::new(16);
    assert_eq!(get(&up, inst.port, Method::GET).await.unwrap().1, b"abcde");
    assert_eq!(
        up.pool.idle_count(inst.port),
        1,
        "chunked body ended cleanly"
    );
    assert_eq!(
        get(&up, inst.port, Method::GET).await.unwrap().1,
        b"until close"
    );
    assert_eq!(
        up.pool.idle_count(inst.port),
        0,
        "a close-delimited body ends the connection"
    );
}

#[tokio::test]
async fn interim_responses_are_skipped_and_head_has_no_body() {
    let inst = instance(vec![
        (
            b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nx",
            false,
        ),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n", false),
        (b"HTTP/1.1 204 No Content\r\n\r\n", false),
    ])
    .await;
    let up = Upstream::new(16);
    assert_eq!(
        get(&up, inst.port, Method::GET).await.unwrap(),
        (StatusCode::OK, b"x".to_vec())
    );
    assert_eq!(
        get(&up, inst.port, Method::HEAD).await.unwrap(),
        (StatusCode::OK, vec![])
    );
    assert_eq!(
        get(&up, inst.port, Method::GET).await.unwrap(),
        (StatusCode::NO_CONTENT, vec![])
    );
    assert_eq!(inst.accepts.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn broken_answers_are_errors_and_close_the_connection() {
    let inst = instance(vec![
        (b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort", true),
        (b"NOT HTTP\r\n\r\n", true),
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nx",
            true,
        ),
        (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
            true,
        ),
    ])
    .await;
    let up = Upstream::new(16);
    let truncated = get(&up, inst.port, Method::GET).await.unwrap_err();
    assert!(
        truncated.contains("before the end of the body"),
        "{truncated}"
    );
    for _ in 0..3 {
        let err = get(&up, inst.port, Method::GET).await.unwrap_err();
        assert!(
            err.contains("upstream request failed") || err.contains("chunk"),
            "{err}"
        );
    }
    assert_eq!(up.pool.idle_count(inst.port), 0);
}

#[tokio::test]
async fn refused_connections_are_connect_errors() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap().port()
    };
    let up = Upstream::new(16);
    let headers = HeaderMap::new();
    let err = up
        .send(
            port,
            Outgoing {
                method: &Method::GET,
                target: "/",
                headers: &headers,
                body: empty_body(),
            },
            std::time::Instant::now(),
            &mut LazyTimer::new(),
        )
        .await;
    assert!(
        matches!(err, Err(UpstreamError::Connect(_))),
        "{:?}",
        err.err()
    );
}

#[tokio::test]
async fn switching_protocols_hands_over_the_connection_with_early_bytes() {
    let inst = instance(vec![(
        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\nEARLY",
        false,
    )])
    .await;
    let up = Upstream::new(16);
    let headers = HeaderMap::new();
    let resp = up
        .send(
            inst.port,
            Outgoing {
                method: &Method::GET,
                target: "/ws",
                headers: &headers,
                body: empty_body(),
            },
            std::time::Instant::now(),
            &mut LazyTimer::new(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    let mut upgraded = resp.into_body().into_upgraded().unwrap();
    let mut early = [0u8; 5];
    upgraded.read_exact(&mut early).await.unwrap();
    assert_eq!(&early, b"EARLY");
    assert_eq!(up.pool.idle_count(inst.port), 0);
}
