//! Issue 17, items 2 and 7 (the proxy's share): a request cannot choose the Host the app and
//! the cache see, a request with credentials neither reads nor writes a non-`public` cache
//! entry, and dotfiles under `public/` are never served. Documented in docs/http.md,
//! "Request host", "Static files", "Response cache".

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::common::fixture::{self, chown};
use crate::common::http::{https, tls_config};
use crate::common::{Request, Response, Server, ServerOpts};
use serde_json::{json, Value};

/// Routed host; `*.example.com` has a test certificate.
const HOST: &str = "web.example.com";
/// The host an attacker would like the app and the cache to see.
const EVIL: &str = "evil.example.com";

/// One worker (the cache is per worker), certificates for `*.example.com`, and loopback
/// untrusted, so the forwarded headers are the ones an internet client gets. The app is
/// deployed on [`HOST`] with `public` holding `files`.
fn start(files: &[(&str, &str)]) -> Server {
    let opts = ServerOpts {
        workers: 1,
        ..ServerOpts::default()
    }
    .test_certs()
    .arg("--trusted-proxy")
    .arg("10.0.0.0/8");
    let server = Server::start(opts);
    let path = write_release(&server, files);
    server.ok(&json!({
        "command": "deploy", "app": "web", "version": "v1",
        "path": path.display().to_string(), "routes": [HOST], "env": {},
        "instances": 1, "idle_timeout": 300
    }));
    server
}

fn write_release(server: &Server, files: &[(&str, &str)]) -> PathBuf {
    let owner = server.deploy_owner();
    let dir = crate::common::fixture::write_release_with(
        &server.data_dir,
        "web",
        "v1",
        owner,
        fixture::ECHO_APP_PY,
        fixture::APP_JSON,
    );
    for (rel, content) in files {
        let p = dir.join("public").join(rel);
        let parent = p.parent().expect("a public file has a parent");
        std::fs::create_dir_all(parent).expect("create public dirs");
        std::fs::write(&p, content).expect("write a public file");
    }
    // Owned like an upload, every directory on the way included.
    let mut todo = vec![dir.join("public")];
    while let Some(p) = todo.pop() {
        if !p.exists() {
            continue;
        }
        chown(&p, owner);
        if p.is_dir() {
            for e in std::fs::read_dir(&p).expect("read public dir").flatten() {
                todo.push(e.path());
            }
        }
    }
    dir
}

/// HTTPS with SNI [`HOST`]; `req.host` is the `Host` header sent.
fn send(server: &Server, req: &Request) -> Response {
    https(server.tls_port, Some(HOST), req)
        .unwrap_or_else(|e| panic!("{} {}: {e}", req.method, req.path))
}

fn get(server: &Server, path: &str, headers: &[(&str, &str)]) -> Response {
    let mut req = Request::get(HOST, path);
    for (k, v) in headers {
        req = req.header(k, v);
    }
    send(server, &req)
}

fn cache_status(r: &Response) -> &str {
    r.header("cache-status").unwrap_or("")
}

/// The app's JSON, or a panic naming what came instead.
fn echoed(r: &Response) -> Value {
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

// ---- Item 2: the Host the app and the cache see --------------------------------------------

#[test]
fn absolute_form_target_cannot_smuggle_host_into_app_or_cache() {
    let server = start(&[]);
    let target = "/page?cc=max-age%3D60";

    // Routed by the target's authority; the client's own Host names another site.
    let smuggled = Request::get(EVIL, &format!("https://{HOST}{target}"));
    let r = send(&server, &smuggled);
    let seen = echoed(&r);
    assert_eq!(
        seen["headers"]["host"], HOST,
        "the app must see the host the request was routed by: {seen}"
    );
    assert_eq!(
        seen["headers"]["x-forwarded-host"], HOST,
        "X-Forwarded-Host agrees with Host: {seen}"
    );

    // Whatever the cache kept for this URL was made for HOST.
    let normal = get(&server, target, &[]);
    let body = echoed(&normal);
    assert_eq!(
        body["headers"]["host"],
        HOST,
        "a normal request got a body made for another Host (Cache-Status {:?}): {body}",
        cache_status(&normal)
    );

    // With a port in the authority, the port goes upstream too.
    let with_port = format!("{HOST}:{}", server.tls_port);
    let r = send(
        &server,
        &Request::get(EVIL, &format!("https://{with_port}/port")),
    );
    let seen = echoed(&r);
    assert_eq!(seen["headers"]["host"], with_port.as_str(), "{seen}");
    assert_eq!(
        seen["headers"]["x-forwarded-host"],
        with_port.as_str(),
        "{seen}"
    );
}

/// A minimal HTTP/2 client over TLS: one GET with the given header list (pseudo-headers
/// first), HPACK literals without Huffman, and the DATA of stream 1 as the answer. The test
/// needs a `host` header that differs from `:authority`, which curl will not send.
fn h2_get(port: u16, sni: &str, fields: &[(&str, &str)]) -> io::Result<Vec<u8>> {
    let mut cfg = (*tls_config()).clone();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let name = rustls_pki_types::ServerName::try_from(sni.to_string())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let conn = rustls::ClientConnection::new(Arc::new(cfg), name).map_err(io::Error::other)?;
    let tcp = TcpStream::connect(("127.0.0.1", port))?;
    tcp.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }
    /// An HPACK integer with a 7-bit prefix and the Huffman bit clear, then the bytes.
    fn string(out: &mut Vec<u8>, s: &str) {
        let mut n = s.len();
        if n < 127 {
            out.push(n as u8);
        } else {
            out.push(127);
            n -= 127;
            while n >= 128 {
                out.push((n % 128) as u8 | 0x80);
                n /= 128;
            }
            out.push(n as u8);
        }
        out.extend_from_slice(s.as_bytes());
    }
    let mut block = Vec::new();
    for (k, v) in fields {
        // Literal header field without indexing, new name.
        block.push(0);
        string(&mut block, k);
        string(&mut block, v);
    }
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(0x4, 0, 0, &[]));
    // END_STREAM | END_HEADERS.
    out.extend(frame(0x1, 0x5, 1, &block));
    tls.write_all(&out)?;
    tls.flush()?;

    let mut body = Vec::new();
    loop {
        let mut head = [0u8; 9];
        tls.read_exact(&mut head)?;
        let len = (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
        let (kind, flags) = (head[3], head[4]);
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        tls.read_exact(&mut payload)?;
        match kind {
            // SETTINGS from the server: acknowledged.
            0x4 if flags & 0x1 == 0 => {
                tls.write_all(&frame(0x4, 0x1, 0, &[]))?;
                tls.flush()?;
            }
            0x0 if stream == 1 => {
                let data = if flags & 0x8 != 0 {
                    let pad = usize::from(*payload.first().unwrap_or(&0));
                    payload
                        .get(1..len.saturating_sub(pad))
                        .unwrap_or_default()
                        .to_vec()
                } else {
                    payload
                };
                body.extend_from_slice(&data);
                if flags & 0x1 != 0 {
                    return Ok(body);
                }
            }
            0x1 if stream == 1 && flags & 0x1 != 0 => return Ok(body),
            0x3 => return Err(io::Error::other(format!("RST_STREAM {payload:?}"))),
            0x7 => return Err(io::Error::other(format!("GOAWAY {payload:?}"))),
            _ => {}
        }
    }
}

#[test]
fn h2_host_header_cannot_override_authority() {
    let server = start(&[]);
    let target = "/h2?cc=max-age%3D60";
    let body = h2_get(
        server.tls_port,
        HOST,
        &[
            (":method", "GET"),
            (":scheme", "https"),
            (":path", target),
            (":authority", HOST),
            ("host", EVIL),
        ],
    )
    .expect("HTTP/2 request");
    let seen: Value = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&body)));
    assert_eq!(
        seen["headers"]["host"], HOST,
        ":authority wins over a differing host header: {seen}"
    );
    assert_eq!(seen["headers"]["x-forwarded-host"], HOST, "{seen}");

    let normal = get(&server, target, &[]);
    let body = echoed(&normal);
    assert_eq!(
        body["headers"]["host"],
        HOST,
        "cached for another Host (Cache-Status {:?}): {body}",
        cache_status(&normal)
    );
}

// ---- Item 7b: credentials and the cache ----------------------------------------------------

const CREDENTIALS: [(&str, &str); 2] = [
    ("Cookie", "session=alice"),
    ("Authorization", "Bearer alice"),
];

#[test]
fn credentialed_request_not_served_from_cache_without_public() {
    let server = start(&[]);
    for (i, (name, value)) in CREDENTIALS.iter().enumerate() {
        // Stored from an anonymous request, without `public`.
        let t = format!("/shared-{i}?cc=max-age%3D60");
        let first = get(&server, &t, &[]);
        assert_eq!(cache_status(&first), "tako; fwd=uri-miss; stored");
        let r = get(&server, &t, &[(name, value)]);
        assert!(
            !cache_status(&r).contains("hit"),
            "{name}: a request with credentials was served a non-public entry ({:?})",
            cache_status(&r)
        );
        assert_eq!(echoed(&r)["n"], 2, "{name}: the app answered it");
        // Anonymous requests still get the entry.
        let again = get(&server, &t, &[]);
        assert!(
            cache_status(&again).starts_with("tako; hit"),
            "{name}: {:?}",
            cache_status(&again)
        );

        // An entry marked public is for everyone.
        let t = format!("/public-{i}?cc=public%2C%20max-age%3D60");
        get(&server, &t, &[]);
        let r = get(&server, &t, &[(name, value)]);
        assert!(
            cache_status(&r).starts_with("tako; hit"),
            "{name}: {:?}",
            cache_status(&r)
        );
    }
}

#[test]
fn credentialed_response_not_stored_without_public() {
    let server = start(&[]);
    for (i, (name, value)) in CREDENTIALS.iter().enumerate() {
        for (j, cc) in [
            "max-age%3D60",
            "s-maxage%3D60",
            "max-age%3D60%2C%20must-revalidate",
        ]
        .iter()
        .enumerate()
        {
            let t = format!("/mine-{i}-{j}?cc={cc}");
            let alice = get(&server, &t, &[(name, value)]);
            assert_eq!(echoed(&alice)["headers"][name.to_ascii_lowercase()], *value);
            assert!(
                !cache_status(&alice).contains("stored"),
                "{name} with {cc}: a personal answer was stored ({:?})",
                cache_status(&alice)
            );
            let bob = get(&server, &t, &[]);
            let seen = echoed(&bob);
            assert!(
                seen["headers"].get(name.to_ascii_lowercase()).is_none() && seen["n"] == 2,
                "{name} with {cc}: another client got alice's answer (Cache-Status {:?}): {seen}",
                cache_status(&bob)
            );
        }
        // `public` says the answer is the same for everyone: stored.
        let t = format!("/theirs-{i}?cc=public%2C%20max-age%3D60");
        let r = get(&server, &t, &[(name, value)]);
        assert_eq!(cache_status(&r), "tako; fwd=uri-miss; stored", "{name}");
        let r = get(&server, &t, &[]);
        assert!(cache_status(&r).starts_with("tako; hit"), "{name}");
    }
}

// ---- Item 7c: dotfiles -------------------------------------------------------------------

#[test]
fn dotfiles_under_public_are_not_served() {
    let server = start(&[
        (".env", "DATABASE_URL=postgres://root:hunter2@db/prod"),
        (".git/config", "[remote \"origin\"] secret-token"),
        (".git/objects/pack/p.pack", "secret-pack"),
        ("a/.secret", "secret-a"),
        (".hidden/x.js", "secret-js"),
        (
            ".well-known/security.txt",
            "Contact: mailto:sec@example.com",
        ),
        (".well-known/.inner.txt", "secret-inner"),
        ("ok.txt", "fine"),
    ]);
    for path in [
        "/.env",
        "/.git/config",
        "/.git/objects/pack/p.pack",
        "/a/.secret",
        "/.hidden/x.js",
        "/%2eenv",
        "/%2Egit/config",
        "/a/%2esecret",
        "/.well-known/.inner.txt",
    ] {
        for method in ["GET", "HEAD"] {
            let mut req = Request::get(HOST, path);
            req.method = method.into();
            let r = send(&server, &req);
            for leaked in [
                "hunter2",
                "secret-token",
                "secret-pack",
                "secret-a",
                "secret-js",
                "secret-inner",
            ] {
                assert!(!r.text().contains(leaked), "{method} {path}: {}", r.text());
            }
            // Not a file: the app answered, as for any path without one.
            if method == "GET" {
                assert_eq!(echoed(&r)["path"], path, "{method} {path}: {}", r.text());
            }
        }
    }
    let r = get(&server, "/.well-known/security.txt", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "Contact: mailto:sec@example.com");
    let r = get(&server, "/ok.txt", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "fine");
    // Other paths still reach the app.
    let r = get(&server, "/app/page", &[]);
    assert_eq!(echoed(&r)["path"], "/app/page");
}
