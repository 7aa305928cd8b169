//! Plays the master against a real worker: a socketpair for IPC, listeners passed as FDs,
//! self-signed certificates, tiny upstreams, and requests over real TCP.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use tako_ipc::{
    AppRoutes, Backend, CertEntry, FrameReader, FrameWriter, ListenerKind, MasterToWorker,
    RouteTable, WakeOutcome, WorkerConfig, WorkerToMaster, IPC_VERSION,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(10);
const TLS_PORT_IN_REDIRECTS: u16 = 8443;

struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn parse(raw: &[u8]) -> Resp {
    let text = String::from_utf8_lossy(raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Resp {
        status,
        headers,
        body: body.to_string(),
    }
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, raw: &str) -> Resp {
    s.write_all(raw.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    // TLS peers may end without close_notify; what was read is enough.
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut out)).await;
    parse(&out)
}

async fn plain(addr: SocketAddr, raw: &str) -> Resp {
    exchange(TcpStream::connect(addr).await.unwrap(), raw).await
}

fn get(host: &str, path: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n")
}

/// An upstream that answers every request with its name and the request head it saw.
async fn upstream(name: &'static str) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        let mut chunk = [0u8; 4096];
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_string();
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse().ok())?
                        })
                        .unwrap_or(0);
                    while buf.len() < end + len {
                        let mut chunk = [0u8; 4096];
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.drain(..end + len);
                    let body = format!("{name}\n{head}");
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: text/plain\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nX-Upstream: {name}\r\n\r\n{body}",
                        body.len()
                    );
                    if s.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

struct Master {
    tx: FrameWriter<MasterToWorker>,
    rx: mpsc::UnboundedReceiver<WorkerToMaster>,
    http: SocketAddr,
    https: SocketAddr,
    worker: std::thread::JoinHandle<i32>,
    cert_der: Vec<u8>,
    _listeners: Vec<std::net::TcpListener>,
}

impl Master {
    async fn start() -> Master {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let worker = std::thread::spawn(move || tako_proxy_worker::run(theirs));
        ours.set_nonblocking(true).unwrap();
        let (r, w) = tokio::net::UnixStream::from_std(ours).unwrap().into_split();
        let mut tx = FrameWriter::<MasterToWorker>::new(w);
        let mut reader = FrameReader::<WorkerToMaster>::new(r);
        let (msg_tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some((msg, _))) = reader.recv().await {
                if msg_tx.send(msg).is_err() {
                    return;
                }
            }
        });

        let http = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let https = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (http_addr, https_addr) = (http.local_addr().unwrap(), https.local_addr().unwrap());
        let config = WorkerConfig {
            index: 0,
            generation: 1,
            http_port: http_addr.port(),
            https_port: TLS_PORT_IN_REDIRECTS,
            trusted_proxies: vec!["127.0.0.0/8".into(), "::1/128".into()],
            acme_enabled: true,
            server_started_unix_secs: 0,
            cache_bytes: 0,
            h2_timeouts: None,
            sandbox: tako_ipc::SandboxConfig::off(),
            proxy_protocol: Vec::new(),
            compression: true,
            client_limits: tako_ipc::ClientLimits::default(),
        };
        tx.send(&MasterToWorker::Hello {
            version: IPC_VERSION,
            config,
        })
        .await
        .unwrap();
        let fds: Vec<OwnedFd> = vec![
            http.try_clone().unwrap().into(),
            https.try_clone().unwrap().into(),
        ];
        tx.send_with_fds(
            &MasterToWorker::Listeners {
                kinds: vec![ListenerKind::Http, ListenerKind::Https],
            },
            &fds,
        )
        .await
        .unwrap();
        let ck = rcgen::generate_simple_self_signed(vec!["app.test".to_string()]).unwrap();
        let cert_der = ck.cert.der().to_vec();
        tx.send(&MasterToWorker::Certs(vec![CertEntry {
            name: "app.test".into(),
            cert_chain_pem: ck.cert.pem(),
            key_pem: ck.key_pair.serialize_pem(),
        }]))
        .await
        .unwrap();
        let mut m = Master {
            tx,
            rx,
            http: http_addr,
            https: https_addr,
            worker,
            cert_der,
            _listeners: vec![http, https],
        };
        match m.next().await {
            WorkerToMaster::Hello { version, pid } => {
                assert_eq!(version, IPC_VERSION);
                assert_eq!(pid, std::process::id());
            }
            other => panic!("expected hello, got {other:?}"),
        }
        m
    }

    async fn next(&mut self) -> WorkerToMaster {
        tokio::time::timeout(WAIT, self.rx.recv())
            .await
            .expect("worker message in time")
            .expect("worker channel open")
    }

    /// Skips other messages until one matches.
    async fn expect(
        &mut self,
        what: &str,
        pred: impl Fn(&WorkerToMaster) -> bool,
    ) -> WorkerToMaster {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.rx.recv())
                .await
                .unwrap_or_else(|_| panic!("no {what} from the worker"))
                .expect("worker channel open");
            if pred(&msg) {
                return msg;
            }
        }
    }

    async fn routes(&mut self, epoch: u64, apps: Vec<AppRoutes>) {
        self.tx
            .send(&MasterToWorker::Routes(RouteTable { epoch, apps }))
            .await
            .unwrap();
        self.expect(
            "TableApplied",
            |m| matches!(m, WorkerToMaster::TableApplied { epoch: e, .. } if *e == epoch),
        )
        .await;
    }

    async fn stop(self, deadline_ms: u64) -> i32 {
        let mut tx = self.tx;
        tx.send(&MasterToWorker::Drain { deadline_ms })
            .await
            .unwrap();
        let worker = self.worker;
        tokio::time::timeout(
            WAIT,
            tokio::task::spawn_blocking(move || worker.join().unwrap()),
        )
        .await
        .expect("worker exits within the deadline")
        .unwrap()
    }
}

fn app(name: &str, route: &str, ports: &[u16]) -> AppRoutes {
    AppRoutes {
        name: name.into(),
        routes: vec![route.into()],
        release_path: "/nonexistent".into(),
        stopped: false,
        on_demand: false,
        backends: ports
            .iter()
            .enumerate()
            .map(|(i, p)| Backend {
                instance_id: i as u32 + 1,
                port: *p,
            })
            .collect(),
        starting: false,
    }
}

fn dead_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn tls_connector(cert_der: &[u8], alpn: &[u8]) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from(cert_der.to_vec()))
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_serves_routes_like_the_spec_says() {
    let a = upstream("A").await;
    let b = upstream("B").await;
    let mut m = Master::start().await;
    m.tx.send(&MasterToWorker::StatusPage {
        body: "{\n  \"healthy\": true\n}".into(),
        public_body: "{\n  \"healthy\": true\n}".into(),
        healthy: true,
    })
    .await
    .unwrap();
    m.tx.send(&MasterToWorker::MetricsPage {
        body: "tako_uptime_seconds 1\n".into(),
    })
    .await
    .unwrap();
    let mut stopped = app("stopped", "stopped.test", &[]);
    stopped.stopped = true;
    let mut idle = app("idle", "idle.test", &[]);
    idle.stopped = false;
    m.routes(
        1,
        vec![
            app("web", "app.test", &[a, b]),
            stopped,
            idle,
            app("retry", "retry.test", &[dead_port(), a]),
        ],
    )
    .await;
    m.expect("Ready", |msg| matches!(msg, WorkerToMaster::Ready))
        .await;

    // tako.internal
    let r = plain(m.http, &get("tako.internal", "/status?x=1", "")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "{\n  \"healthy\": true\n}");
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("cache-control"), Some("no-cache, no-store"));
    assert_eq!(r.header("content-length"), Some("21"));
    let r = plain(
        m.http,
        "HEAD /status HTTP/1.1\r\nHost: TAKO.internal:80\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "");
    assert_eq!(r.header("content-length"), Some("21"));
    let r = plain(m.http, &get("tako.internal", "/metrics", "")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "tako_uptime_seconds 1\n");
    let r = plain(m.http, &get("tako.internal", "/nope", "")).await;
    assert_eq!((r.status, r.body.as_str()), (404, "Not Found"));

    // Redirect comes before routing, for known and unknown hosts alike.
    let r = plain(m.http, &get("App.Test:8080", "/a?b=1", "")).await;
    assert_eq!(r.status, 307);
    assert_eq!(r.header("location"), Some("https://app.test:8443/a?b=1"));
    assert_eq!(r.header("content-type"), Some("text/plain"));
    assert_eq!(r.header("content-length"), Some("20"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(r.body, "Redirecting to HTTPS");
    let r = plain(m.http, &get("unknown.test", "/", "")).await;
    assert_eq!(r.status, 307);
    assert_eq!(r.header("location"), Some("https://unknown.test:8443/"));

    // ACME is on: unknown tokens, any host, before the redirect.
    let r = plain(
        m.http,
        &get("whatever.com", "/.well-known/acme-challenge/abc", ""),
    )
    .await;
    assert_eq!((r.status, r.body.as_str()), (404, "Token not found"));

    // Missing and duplicate hosts.
    let r = plain(m.http, "GET / HTTP/1.1\r\nConnection: close\r\n\r\n").await;
    assert_eq!((r.status, r.body.as_str()), (400, "Bad Request"));
    let r = plain(
        m.http,
        "GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 400);

    // An overlong target.
    let long = format!("/{}", "a".repeat(8 * 1024));
    let r = plain(m.http, &get("app.test", &long, "")).await;
    assert_eq!((r.status, r.body.as_str()), (414, "URI Too Long"));

    // A trusted peer says https: no redirect, routing decides.
    let xfp = "X-Forwarded-Proto: https\r\n";
    let r = plain(m.http, &get("nothing.test", "/", xfp)).await;
    assert_eq!((r.status, r.body.as_str()), (404, "Not Found"));
    assert_eq!(r.header("content-type"), Some("text/plain"));
    assert_eq!(r.header("content-length"), Some("9"));
    assert_eq!(r.header("cache-control"), Some("no-store"));

    // Proxying with forwarded headers.
    let r = plain(m.http, &get("app.test", "/p/x?q=%20", xfp)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.body.starts_with("GET /p/x?q=%20 HTTP/1.1\r\n")
            || r.body.contains("\nGET /p/x?q=%20 HTTP/1.1\r\n"),
        "{}",
        r.body
    );
    let seen = r.body.to_ascii_lowercase();
    assert!(seen.contains("x-forwarded-proto: https\r\n"), "{seen}");
    assert!(seen.contains("x-forwarded-for: 127.0.0.1\r\n"), "{seen}");
    assert!(seen.contains("x-forwarded-host: app.test\r\n"), "{seen}");
    assert!(seen.contains("host: app.test\r\n"), "{seen}");
    assert!(
        !seen.contains("connection: close"),
        "hop-by-hop removed: {seen}"
    );
    assert_eq!(
        r.header("keep-alive"),
        None,
        "hop-by-hop removed downstream"
    );

    // Round-robin over two instances.
    let mut order = Vec::new();
    for _ in 0..4 {
        let r = plain(m.http, &get("app.test", "/", xfp)).await;
        assert_eq!(r.status, 200);
        order.push(r.header("x-upstream").unwrap_or_default().to_string());
    }
    assert_ne!(order[0], order[1], "{order:?}");
    assert_eq!(order[0], order[2], "{order:?}");
    assert_eq!(order[1], order[3], "{order:?}");

    // A refused connect is retried once on the other instance.
    for _ in 0..3 {
        let r = plain(m.http, &get("retry.test", "/", xfp)).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.header("x-upstream"), Some("A"));
    }

    // Stopped and always-on apps without instances.
    let r = plain(m.http, &get("stopped.test", "/", xfp)).await;
    assert_eq!((r.status, r.body.as_str()), (503, "No healthy backend"));
    let r = plain(m.http, &get("idle.test", "/", xfp)).await;
    assert_eq!((r.status, r.body.as_str()), (503, "No healthy backend"));
    let r = plain(
        m.http,
        "HEAD / HTTP/1.1\r\nHost: stopped.test\r\nX-Forwarded-Proto: https\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!((r.status, r.body.as_str()), (503, ""));
    assert_eq!(r.header("content-length"), Some("18"));

    // TLS with SNI: the effective scheme is https without any header.
    let tls = tls_connector(&m.cert_der, b"http/1.1");
    let tcp = TcpStream::connect(m.https).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("app.test").unwrap();
    let stream = tls
        .connect(name, tcp)
        .await
        .expect("handshake for app.test");
    let r = exchange(stream, &get("app.test", "/tls", "")).await;
    assert_eq!(r.status, 200);
    assert!(r
        .body
        .to_ascii_lowercase()
        .contains("x-forwarded-proto: https\r\n"));
    // HTTP/2 via ALPN: :authority becomes the upstream Host.
    let h2 = tls_connector(&m.cert_der, b"h2");
    let tcp = TcpStream::connect(m.https).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("app.test").unwrap();
    let stream = h2.connect(name, tcp).await.expect("h2 handshake");
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = http::Request::builder()
        .uri("https://app.test/h2?x=1")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    let body = String::from_utf8_lossy(&body).to_ascii_lowercase();
    assert!(body.contains("get /h2?x=1 http/1.1\r\n"), "{body}");
    assert!(body.contains("host: app.test\r\n"), "{body}");
    assert!(body.contains("x-forwarded-proto: https\r\n"), "{body}");

    // An unknown SNI name is refused.
    let tcp = TcpStream::connect(m.https).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("other.test").unwrap();
    assert!(tls.connect(name, tcp).await.is_err());

    // Counters arrive with the proxied requests.
    let counters = m
        .expect("Counters", |msg| match msg {
            WorkerToMaster::Counters(c) => {
                c.iter()
                    .filter(|c| c.app == "web")
                    .map(|c| c.requests_total)
                    .sum::<u64>()
                    >= 6
            }
            _ => false,
        })
        .await;
    if let WorkerToMaster::Counters(c) = counters {
        assert!(c.iter().all(|c| c.in_flight == 0), "{c:?}");
        assert!(c.iter().any(|c| c.app == "web" && c.instance_id == 1));
        assert!(c.iter().any(|c| c.app == "web" && c.instance_id == 2));
    }

    // Unhealthy status page.
    m.tx.send(&MasterToWorker::StatusPage {
        body: "{}".into(),
        public_body: "{}".into(),
        healthy: false,
    })
    .await
    .unwrap();
    m.routes(2, vec![app("web", "app.test", &[a, b])]).await;
    let r = plain(m.http, &get("tako.internal", "/status", "")).await;
    assert_eq!((r.status, r.body.as_str()), (503, "{}"));

    assert_eq!(m.stop(2000).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_demand_requests_are_held_until_a_backend_or_a_failure() {
    let a = upstream("A").await;
    let mut m = Master::start().await;
    let mut lazy = app("lazy", "lazy.test", &[]);
    lazy.on_demand = true;
    m.routes(1, vec![lazy.clone()]).await;
    m.expect("Ready", |msg| matches!(msg, WorkerToMaster::Ready))
        .await;
    let xfp = "X-Forwarded-Proto: https\r\n";

    // A failed start answers 502.
    let http = m.http;
    let held = tokio::spawn(async move { plain(http, &get("lazy.test", "/", xfp)).await });
    m.expect(
        "Wake",
        |msg| matches!(msg, WorkerToMaster::Wake { app } if app == "lazy"),
    )
    .await;
    m.tx.send(&MasterToWorker::WakeResult {
        app: "lazy".into(),
        outcome: WakeOutcome::Failed,
    })
    .await
    .unwrap();
    let r = held.await.unwrap();
    assert_eq!((r.status, r.body.as_str()), (502, "App failed to start"));

    // A table with a backend releases held requests to it.
    let held: Vec<_> = (0..3)
        .map(|_| tokio::spawn(async move { plain(http, &get("lazy.test", "/h", xfp)).await }))
        .collect();
    m.expect(
        "Wake",
        |msg| matches!(msg, WorkerToMaster::Wake { app } if app == "lazy"),
    )
    .await;
    let mut ready = lazy.clone();
    ready.backends = vec![Backend {
        instance_id: 1,
        port: a,
    }];
    m.routes(2, vec![ready]).await;
    for h in held {
        let r = h.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.header("x-upstream"), Some("A"));
    }

    // A starting always-on app holds too, and a table where it stopped starting fails it.
    let mut booting = app("boot", "boot.test", &[]);
    booting.starting = true;
    m.routes(3, vec![booting.clone()]).await;
    let held = tokio::spawn(async move { plain(http, &get("boot.test", "/", xfp)).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    booting.starting = false;
    m.routes(4, vec![booting]).await;
    let r = held.await.unwrap();
    assert_eq!((r.status, r.body.as_str()), (502, "App failed to start"));

    assert_eq!(m.stop(1000).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_finishes_in_flight_requests() {
    // An upstream that answers after a delay.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                tokio::time::sleep(Duration::from_millis(500)).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nslow")
                    .await;
            });
        }
    });
    let mut m = Master::start().await;
    m.routes(1, vec![app("slow", "slow.test", &[port])]).await;
    m.expect("Ready", |msg| matches!(msg, WorkerToMaster::Ready))
        .await;
    let http = m.http;
    let req = tokio::spawn(async move {
        plain(http, &get("slow.test", "/", "X-Forwarded-Proto: https\r\n")).await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(m.stop(5000).await, 0);
    let r = req.await.unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "slow"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_eof_ends_the_worker_with_zero() {
    let m = Master::start().await;
    drop(m.tx);
    let worker = m.worker;
    let code = tokio::time::timeout(
        WAIT,
        tokio::task::spawn_blocking(move || worker.join().unwrap()),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(code, 0);
}

#[test]
fn version_mismatch_exits_one() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let worker = std::thread::spawn(move || tako_proxy_worker::run(theirs));
    rt.block_on(async move {
        ours.set_nonblocking(true).unwrap();
        let (r, w) = tokio::net::UnixStream::from_std(ours).unwrap().into_split();
        let mut tx = FrameWriter::<MasterToWorker>::new(w);
        let _reader = FrameReader::<WorkerToMaster>::new(r);
        tx.send(&MasterToWorker::Hello {
            version: IPC_VERSION + 1,
            config: WorkerConfig {
                index: 0,
                generation: 1,
                http_port: 80,
                https_port: 443,
                trusted_proxies: vec![],
                acme_enabled: false,
                server_started_unix_secs: 0,
                cache_bytes: 0,
                h2_timeouts: None,
                sandbox: tako_ipc::SandboxConfig::off(),
                proxy_protocol: Vec::new(),
                compression: true,
                client_limits: tako_ipc::ClientLimits::default(),
            },
        })
        .await
        .unwrap();
        // Keep our end open until the worker decided.
        let code = tokio::task::spawn_blocking(move || worker.join().unwrap())
            .await
            .unwrap();
        assert_eq!(code, 1);
    });
}
