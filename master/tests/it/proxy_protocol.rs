//! Issue 23, "PROXY protocol": listeners named by `--proxy-protocol` take the client address
//! from a PROXY v1 or v2 header a trusted proxy sends first, over HTTP and before the TLS
//! ClientHello; a missing or malformed header, or one from an untrusted peer, closes the
//! connection; other listeners are unchanged. Documented in docs/http.md, "PROXY protocol".

use std::io::{self, BufReader, Read, Write};
use std::net::{Ipv6Addr, SocketAddr, TcpStream};
use std::os::fd::OwnedFd;
use std::time::Duration;

use crate::common::http::{read_response, tls_config};
use crate::common::{fixture, Response, Server, ServerOpts};
use crate::python_app;
use serde_json::{json, Value};

/// Routed host with a certificate: served over HTTPS (plain HTTP redirects there).
const HOST: &str = "web.example.com";
/// Routed host without a certificate: served over plain HTTP.
const PLAIN: &str = "web.test";

/// Answers every path with the request headers as JSON.
const APP_PY: &str = python_app!(
    r#"import http.server, json, os, socketserver

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = json.dumps({k.lower(): v for k, v in self.headers.items()}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

"#
);

/// Both 127.0.0.1 listeners expect the PROXY protocol; the 127.0.0.2 ones do not. Only
/// 127.0.0.1 is a trusted proxy, so a connection from 127.0.0.2 may not send a header.
fn start() -> Server {
    let (http, tls) = crate::common::free_ports();
    let opts = ServerOpts {
        workers: 1,
        ports: Some((http, tls)),
        ..ServerOpts::default()
    }
    .test_certs()
    .arg("--listen")
    .arg("127.0.0.2")
    .arg("--trusted-proxy")
    .arg("127.0.0.1/32")
    .arg("--proxy-protocol")
    .arg(&format!("127.0.0.1:{http}"))
    .arg("--proxy-protocol")
    .arg(&format!("127.0.0.1:{tls}"));
    let server = Server::start(opts);
    let owner = server.deploy_owner();
    let path = crate::common::fixture::write_release_with(
        &server.data_dir,
        "web",
        "v1",
        owner,
        APP_PY,
        fixture::APP_JSON,
    );
    server.ok(&json!({
        "command": "deploy", "app": "web", "version": "v1",
        "path": path.display().to_string(), "routes": [HOST, PLAIN], "env": {},
        "instances": 1, "idle_timeout": 300
    }));
    server
}

fn request(host: &str, path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").into_bytes()
}

fn connect(ip: [u8; 4], port: u16) -> TcpStream {
    let s = TcpStream::connect_timeout(&SocketAddr::from((ip, port)), Duration::from_secs(5))
        .expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

/// A connection from 127.0.0.2, a peer outside the trusted list.
fn connect_from_untrusted(port: u16) -> TcpStream {
    use nix::sys::socket::{bind, connect, socket, AddressFamily, SockFlag, SockType, SockaddrIn};
    let fd: OwnedFd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .expect("socket");
    let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
    bind(raw, &SockaddrIn::new(127, 0, 0, 2, 0)).expect("bind 127.0.0.2");
    connect(raw, &SockaddrIn::new(127, 0, 0, 1, port)).expect("connect");
    let s = TcpStream::from(fd);
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

/// Plain HTTP on `s`, after `prefix`.
fn http_after(mut s: TcpStream, prefix: &[u8], path: &str) -> io::Result<Response> {
    s.write_all(&[prefix, &request(PLAIN, path)].concat())?;
    read_response(BufReader::new(s), false)
}

/// HTTPS (SNI [`HOST`]) to 127.0.0.1:`port`, after `prefix` in the clear.
fn https_after(port: u16, prefix: &[u8], path: &str) -> io::Result<Response> {
    let mut tcp = connect([127, 0, 0, 1], port);
    tcp.write_all(prefix)?;
    let name = rustls_pki_types::ServerName::try_from(HOST.to_string()).unwrap();
    let conn = rustls::ClientConnection::new(tls_config(), name).map_err(io::Error::other)?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(&request(HOST, path))?;
    tls.flush()?;
    read_response(BufReader::new(tls), false)
}

fn v1(family: &str, src: &str, dst: &str) -> Vec<u8> {
    format!("PROXY {family} {src} {dst} 51234 80\r\n").into_bytes()
}

/// A v2 PROXY header for TCP over IPv6 (`tcp6`) or IPv4, with one TLV after the addresses.
fn v2(src: &str, tcp6: bool) -> Vec<u8> {
    let mut payload = Vec::new();
    let family = if tcp6 {
        payload.extend_from_slice(&src.parse::<Ipv6Addr>().unwrap().octets());
        payload.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        0x21
    } else {
        payload.extend_from_slice(&src.parse::<std::net::Ipv4Addr>().unwrap().octets());
        payload.extend_from_slice(&[127, 0, 0, 1]);
        0x11
    };
    payload.extend_from_slice(&51234u16.to_be_bytes());
    payload.extend_from_slice(&443u16.to_be_bytes());
    // PP2_TYPE_AUTHORITY: skipped.
    payload.extend_from_slice(&[0x02, 0x00, 0x04, b'a', b'.', b'b', b'c']);
    let mut out = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    out.push(0x21);
    out.push(family);
    out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    out.extend_from_slice(&payload);
    out
}

fn forwarded_for(r: &io::Result<Response>) -> String {
    let r = r.as_ref().expect("a response");
    assert_eq!(r.status, 200, "{}", r.text());
    let seen: Value = r.json();
    seen["x-forwarded-for"].as_str().unwrap_or("").to_string()
}

/// Whether the server closed `s` without answering: end of stream or a reset.
fn closed_without_answer(mut s: TcpStream) -> bool {
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => matches!(
            e.kind(),
            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
        ),
    }
}

#[test]
fn proxy_protocol_listeners() {
    let server = start();
    let (http, tls) = (server.http_port, server.tls_port);

    let cases = [
        (v1("TCP4", "203.0.113.7", "127.0.0.1"), "203.0.113.7"),
        (v1("TCP6", "2001:db8::7", "::1"), "2001:db8::7"),
        (v2("198.51.100.9", false), "198.51.100.9"),
        (v2("2001:db8::9", true), "2001:db8::9"),
    ];
    // Over HTTPS the header comes before the ClientHello; the app sees the header's client.
    for (header, client) in &cases {
        let r = https_after(tls, header, "/tls");
        assert_eq!(forwarded_for(&r), *client, "HTTPS after {header:?}");
    }
    // v1 UNKNOWN and v2 LOCAL keep the connection's own address.
    let r = https_after(tls, b"PROXY UNKNOWN\r\n", "/");
    assert_eq!(forwarded_for(&r), "127.0.0.1");
    let local = b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00";
    let r = https_after(tls, local, "/");
    assert_eq!(forwarded_for(&r), "127.0.0.1");

    // Over plain HTTP (redirected to HTTPS, as every plain request from an untrusted client):
    // the access log line names the header's client.
    for (i, (header, client)) in cases.iter().enumerate() {
        let path = format!("/plain-{i}");
        let r = http_after(connect([127, 0, 0, 1], http), header, &path).expect("a response");
        assert_eq!(r.status, 307, "HTTP after {header:?}: {}", r.text());
        let want = format!("path={path} ");
        let peer = format!("peer={client} ");
        crate::common::wait_for(Duration::from_secs(10), "the access log line", || {
            server
                .stderr_text()
                .lines()
                .any(|l| l.contains("tako::access") && l.contains(&want) && l.contains(&peer))
                .then_some(())
        });
    }

    // No header, or a malformed one: closed without an answer.
    for prefix in [
        &b""[..],
        b"PROXY TCP4 203.0.113.7 127.0.0.1 51234\r\n",
        b"PROXY TCP4 999.0.113.7 127.0.0.1 1 2\r\n",
        b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x04abcd",
        b"\x00\x01garbage\r\n",
    ] {
        let mut s = connect([127, 0, 0, 1], http);
        // The server may have closed before the last bytes: a failed write is fine.
        let _ = s.write_all(&[prefix, &request(PLAIN, "/")].concat());
        assert!(closed_without_answer(s), "after {prefix:?}");
    }
    assert!(
        https_after(tls, b"", "/").is_err(),
        "a ClientHello without a header is refused"
    );
    assert!(https_after(tls, b"PROXY TCP4 x y 1 2\r\n", "/").is_err());

    // A peer outside the trusted list may not send one, on either listener.
    for port in [http, tls] {
        let mut s = connect_from_untrusted(port);
        let _ = s.write_all(
            &[
                &v1("TCP4", "203.0.113.7", "127.0.0.1")[..],
                &request(PLAIN, "/"),
            ]
            .concat(),
        );
        assert!(closed_without_answer(s), "untrusted peer on {port}");
    }

    // The other listeners are as before: no header needed, and a PROXY line is no request.
    let r = http_after(connect([127, 0, 0, 2], http), b"", "/").expect("a response");
    assert_eq!(r.status, 307, "{}", r.text());
    for header in [
        v1("TCP4", "203.0.113.7", "127.0.0.1"),
        v2("198.51.100.9", false),
    ] {
        let r = http_after(connect([127, 0, 0, 2], http), &header, "/").expect("an answer");
        assert_eq!(r.status, 400, "after {header:?}: {}", r.text());
    }
}
