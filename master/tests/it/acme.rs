//! ACME HTTP-01 against a real ACME server (docs/tls.md, "Testing against Pebble"): Debian's
//! Pebble, with pebble-challtestsrv as the DNS that sends every name to 127.0.0.1 and Pebble's
//! HTTP-01 port set to the server's plain port. A route on a public-looking host gets a
//! certificate that chains to Pebble's root, renews without a restart or a failed request, a
//! wildcard route fails with the DNS-01 text, and a host whose challenges nobody answers fails
//! with the CA's error.

use std::io::{BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::{poll, temp_dir, wait_for, Request, Server, ServerOpts};
use serde_json::Value;

const PEBBLE: &str = "/usr/bin/pebble";
const CHALLTESTSRV: &str = "/usr/bin/pebble-challtestsrv";
const HOST: &str = "app.example.com";
/// Its challenges go to 127.0.0.2, where nothing listens.
const UNANSWERED: &str = "bad.example.com";
const WILDCARD: &str = "*.wild.example.com";
/// Pebble's certificates live 20 days: inside the 30-day renewal window from the start, so
/// the certificate check (60 s after the server starts) renews the first one.
const PEBBLE_VALIDITY_SECS: u64 = 20 * 86_400;

/// A child process killed and reaped when the test ends, however it ends.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Free TCP ports on 127.0.0.1, all held until all are chosen.
fn free_ports<const N: usize>() -> [u16; N] {
    let held: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a free port"))
        .collect();
    std::array::from_fn(|i| held[i].local_addr().expect("local addr").port())
}

fn wait_port(port: u16, what: &str) {
    wait_for(Duration::from_secs(20), what, || {
        TcpStream::connect(("127.0.0.1", port)).ok()
    });
}

/// A CA and a leaf for `localhost` + `127.0.0.1`, for Pebble's own HTTPS listeners.
/// Returns the CA's PEM path.
fn pebble_tls(dir: &Path) -> PathBuf {
    let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "tako test CA for Pebble");
    let ca = ca.self_signed(&ca_key).expect("CA");
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()]).expect("params");
    leaf.subject_alt_names
        .push(rcgen::SanType::IpAddress([127, 0, 0, 1].into()));
    leaf.distinguished_name
        .push(rcgen::DnType::CommonName, "localhost");
    let leaf = leaf.signed_by(&key, &ca, &ca_key).expect("leaf");
    std::fs::write(dir.join("pebble-cert.pem"), leaf.pem()).expect("write cert");
    std::fs::write(dir.join("pebble-key.pem"), key.serialize_pem()).expect("write key");
    let ca_path = dir.join("ca.pem");
    std::fs::write(&ca_path, ca.pem()).expect("write CA");
    ca_path
}

fn roots_from_pem(pem: &[u8]) -> rustls::RootCertStore {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(pem) {
        roots.add(cert.expect("PEM certificate")).expect("add root");
    }
    assert!(
        !roots.is_empty(),
        "no root in {:?}",
        String::from_utf8_lossy(pem)
    );
    roots
}

fn client_config(roots: rustls::RootCertStore) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// GET over HTTPS, verified against `cfg`'s roots for `name`: the response and the serial
/// of the leaf the server presented.
fn verified_get(
    cfg: &Arc<rustls::ClientConfig>,
    port: u16,
    name: &str,
    host: &str,
    path: &str,
) -> Result<(crate::common::Response, Vec<u8>), String> {
    let server_name =
        rustls_pki_types::ServerName::try_from(name.to_string()).map_err(|e| e.to_string())?;
    let conn =
        rustls::ClientConnection::new(cfg.clone(), server_name).map_err(|e| e.to_string())?;
    let tcp = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    tls.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    tls.flush().map_err(|e| e.to_string())?;
    let serial = tls
        .conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| serial_of(c.as_ref()))
        .ok_or("no peer certificate")?;
    let resp = crate::common::http::read_response(BufReader::new(tls), false)
        .map_err(|e| e.to_string())?;
    Ok((resp, serial))
}

/// The serial number of a DER certificate (RFC 5280 §4.1: Certificate → TBSCertificate →
/// optional [0] version → serialNumber).
fn serial_of(der: &[u8]) -> Vec<u8> {
    fn tlv(b: &[u8]) -> (u8, &[u8], &[u8]) {
        let tag = b[0];
        let (len, hdr) = if b[1] < 0x80 {
            (b[1] as usize, 2)
        } else {
            let n = (b[1] & 0x7f) as usize;
            (
                b[2..2 + n]
                    .iter()
                    .fold(0usize, |a, x| (a << 8) | *x as usize),
                2 + n,
            )
        };
        (tag, &b[hdr..hdr + len], &b[hdr + len..])
    }
    let (_, cert, _) = tlv(der);
    let (_, tbs, _) = tlv(cert);
    let mut rest = tbs;
    if rest[0] == 0xa0 {
        rest = tlv(rest).2;
    }
    let (tag, serial, _) = tlv(rest);
    assert_eq!(tag, 0x02, "serial is an INTEGER");
    serial.to_vec()
}

/// A plain HTTP/1.1 POST of JSON, for challtestsrv's management API.
fn post_json(port: u16, path: &str, body: &str) -> u16 {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect challtestsrv");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).expect("send");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// One self-signed certificate for `localhost` + `127.0.0.1`, flagged as a CA the way such
/// certificates usually are, serving as Pebble's HTTPS certificate and as its own "root".
/// Returns its PEM path.
fn pebble_tls_self_signed(dir: &Path) -> PathBuf {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).expect("params");
    params
        .subject_alt_names
        .push(rcgen::SanType::IpAddress([127, 0, 0, 1].into()));
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "localhost");
    let cert = params.self_signed(&key).expect("self-signed");
    let path = dir.join("pebble-cert.pem");
    std::fs::write(&path, cert.pem()).expect("write cert");
    std::fs::write(dir.join("pebble-key.pem"), key.serialize_pem()).expect("write key");
    path
}

/// Pebble and its DNS stub, running until dropped.
struct Pebble {
    _dns: Proc,
    _ca: Proc,
    dir: PathBuf,
    pub ca_pem: PathBuf,
    pub listen: u16,
    pub mgmt: u16,
    pub dns_mgmt: u16,
}

impl Pebble {
    fn start(http_port: u16) -> Pebble {
        Pebble::start_with(http_port, false)
    }

    /// `self_signed`: Pebble's HTTPS certificate is one self-signed certificate (its
    /// `ca_pem`), not a leaf under a separate CA.
    fn start_with(http_port: u16, self_signed: bool) -> Pebble {
        let dir = temp_dir();
        let ca_pem = if self_signed {
            pebble_tls_self_signed(&dir)
        } else {
            pebble_tls(&dir)
        };
        let [listen, mgmt, tls_port, dns, dns_mgmt] = free_ports::<5>();
        let config = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{listen}"),
            "managementListenAddress": format!("127.0.0.1:{mgmt}"),
            "certificate": dir.join("pebble-cert.pem"),
            "privateKey": dir.join("pebble-key.pem"),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
            "certificateValidityPeriod": PEBBLE_VALIDITY_SECS,
        }});
        let cfg_path = dir.join("pebble-config.json");
        std::fs::write(&cfg_path, config.to_string()).expect("write the Pebble config");
        let log = |name: &str| std::fs::File::create(dir.join(name)).expect("create a log file");
        let dns_proc = Command::new(CHALLTESTSRV)
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .args(["-dns01", &format!("127.0.0.1:{dns}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &format!("127.0.0.1:{dns_mgmt}")])
            .stdin(Stdio::null())
            .stdout(log("challtestsrv.log"))
            .stderr(log("challtestsrv.err"))
            .spawn()
            .expect("start pebble-challtestsrv");
        let dns_proc = Proc(dns_proc);
        // Keep the default random nonce rejections: the client must retry them.
        let ca_proc = Command::new(PEBBLE)
            .arg("-config")
            .arg(&cfg_path)
            .args(["-strict", "-dnsserver", &format!("127.0.0.1:{dns}")])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .stdin(Stdio::null())
            .stdout(log("pebble.log"))
            .stderr(log("pebble.err"))
            .spawn()
            .expect("start pebble");
        let ca_proc = Proc(ca_proc);
        wait_port(dns_mgmt, "pebble-challtestsrv's management port");
        wait_port(listen, "Pebble's ACME port");
        wait_port(mgmt, "Pebble's management port");
        Pebble {
            _dns: dns_proc,
            _ca: ca_proc,
            dir,
            ca_pem,
            listen,
            mgmt,
            dns_mgmt,
        }
    }

    /// Pebble's issuing root (a new one every run), from its management port.
    fn root(&self) -> rustls::RootCertStore {
        let pem = std::fs::read(&self.ca_pem).expect("read the CA");
        let cfg = client_config(roots_from_pem(&pem));
        let (resp, _) = verified_get(&cfg, self.mgmt, "127.0.0.1", "127.0.0.1", "/roots/0")
            .unwrap_or_else(|e| panic!("fetch Pebble's root: {e}"));
        assert_eq!(resp.status, 200, "{}", resp.text());
        roots_from_pem(&resp.body)
    }

    fn logs(&self) -> String {
        ["pebble.log", "pebble.err", "challtestsrv.err"]
            .iter()
            .map(|f| {
                let text = std::fs::read_to_string(self.dir.join(f)).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                format!("--- {f}\n{}", tail.join("\n"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn pebble_installed() -> bool {
    Path::new(PEBBLE).exists() && Path::new(CHALLTESTSRV).exists()
}

/// The status entry of `host` among the app's certificates.
fn cert_entry(server: &Server, app: &str, host: &str) -> Value {
    server.app_status(app)["certificates"]
        .as_array()
        .and_then(|c| c.iter().find(|e| e["host"] == host).cloned())
        .unwrap_or(Value::Null)
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn pebble_issues_renews_and_reports_failures() {
    if !pebble_installed() {
        assert!(
            std::env::var_os("CI").is_none(),
            "pebble is not installed; .ci/run installs it (apt-get install pebble)"
        );
        println!("SKIPPED: Debian's pebble is not installed (apt-get install pebble)");
        return;
    }
    let started = Instant::now();
    let [http_port, tls_port] = free_ports::<2>();
    let pebble = Pebble::start(http_port);
    // Pebble's validator for the unanswered host lands on an address nobody listens on.
    let code = post_json(
        pebble.dns_mgmt,
        "/add-a",
        &format!(r#"{{"host":"{UNANSWERED}","addresses":["127.0.0.2"]}}"#),
    );
    assert_eq!(code, 200, "challtestsrv add-a");

    let opts = ServerOpts {
        ports: Some((http_port, tls_port)),
        acme: true,
        ..ServerOpts::default()
    }
    .arg("--acme-directory")
    .arg(&format!("https://127.0.0.1:{}/dir", pebble.listen))
    .arg("--acme-ca-root")
    .arg(&pebble.ca_pem.display().to_string())
    .arg("--renewal-interval-hours")
    .arg("1");
    let mut server = Server::start(opts);
    server.wait_http_ready();
    let report = |server: &Server, what: &str| {
        format!(
            "{what}\nstatus: {}\nserver stderr:\n{}\n{}",
            server.app_status("web"),
            server.stderr_text(),
            pebble.logs()
        )
    };

    // An unknown token is refused by every worker before any order exists.
    let r = crate::common::http::http(
        http_port,
        &Request::get(HOST, "/.well-known/acme-challenge/nope"),
    )
    .expect("challenge request");
    assert_eq!((r.status, r.text().as_str()), (404, "Token not found"));

    server.deploy("web", "v1", &[HOST, UNANSWERED, WILDCARD], 1, &[]);

    // Wildcard hosts are never ordered: failed at once with the DNS-01 text.
    let wild = wait_for(Duration::from_secs(10), "the wildcard to be failed", || {
        let e = cert_entry(&server, "web", WILDCARD);
        (e["state"] == "failed").then_some(e)
    });
    assert_eq!(
        wild["error"],
        "Wildcard certificates need DNS-01, which is not supported; install one in certs/*.wild.example.com/",
        "{wild}"
    );

    // Issuance: valid in status, acme.json on disk, private files private.
    let valid = poll(Duration::from_secs(45), Duration::from_millis(200), || {
        let e = cert_entry(&server, "web", HOST);
        (e["state"] == "valid" && e["source"] == "acme").then_some(e)
    });
    let valid = valid.unwrap_or_else(|| panic!("{}", report(&server, "no valid ACME certificate")));
    assert_eq!(valid["error"], Value::Null, "{valid}");
    let cert_dir = server.data_dir.join("certs").join(HOST);
    let meta: Value = serde_json::from_slice(
        &std::fs::read(cert_dir.join("acme.json")).expect("acme.json exists"),
    )
    .expect("acme.json is JSON");
    assert_eq!(
        meta["directory"],
        format!("https://127.0.0.1:{}/dir", pebble.listen)
    );
    assert_eq!(meta["not_after_unix_secs"], valid["not_after_unix_secs"]);
    assert!(meta["issued_at_unix_secs"].as_u64().is_some(), "{meta}");
    assert_eq!(mode(&cert_dir.join("acme.json")), 0o600);
    assert_eq!(mode(&cert_dir.join("privkey.pem")), 0o600);
    assert_eq!(mode(&cert_dir.join("fullchain.pem")), 0o644);
    let acme_dir = server.data_dir.join("acme");
    assert_eq!(mode(&acme_dir.join("credentials.json")), 0o600);
    assert_eq!(mode(&acme_dir.join("account.json")), 0o600);
    let account: Value = serde_json::from_slice(
        &std::fs::read(acme_dir.join("account.json")).expect("account.json"),
    )
    .expect("account.json is JSON");
    assert_eq!(account["directory"], meta["directory"], "{account}");
    assert!(
        account["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("https://")),
        "{account}"
    );

    // The certificate verifies against Pebble's root for that name.
    let cfg = client_config(pebble.root());
    let (resp, first_serial) = verified_get(&cfg, tls_port, HOST, HOST, "/").unwrap_or_else(|e| {
        panic!(
            "{}",
            report(&server, &format!("verified handshake failed: {e}"))
        )
    });
    assert_eq!(resp.status, 200, "{}", resp.text());

    // The host whose challenges nobody answers fails with the CA's words.
    let bad = poll(Duration::from_secs(30), Duration::from_millis(200), || {
        let e = cert_entry(&server, "web", UNANSWERED);
        (e["state"] == "failed").then_some(e)
    })
    .unwrap_or_else(|| panic!("{}", report(&server, "the unanswered host did not fail")));
    let err = bad["error"].as_str().unwrap_or_default().to_string();
    assert!(!err.is_empty() && !err.contains("DNS-01"), "{bad}");
    assert!(
        server
            .stderr_text()
            .contains(&format!("Certificate for {UNANSWERED} failed: ")),
        "{}",
        report(&server, "no failure log line")
    );

    // Renewal: the 60 s check finds the 20-day certificate inside the 30-day window. A
    // client keeps making verified requests meanwhile; none may fail.
    let workers_before = server.pids_of("worker");
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let serials = Arc::new(Mutex::new(Vec::<Vec<u8>>::new()));
    let client = {
        let (stop, done, failures, serials, cfg) = (
            stop.clone(),
            done.clone(),
            failures.clone(),
            serials.clone(),
            cfg.clone(),
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                match verified_get(&cfg, tls_port, HOST, HOST, "/") {
                    Ok((r, serial)) if r.status == 200 => {
                        let mut s = serials.lock().unwrap_or_else(|e| e.into_inner());
                        if s.last() != Some(&serial) {
                            s.push(serial);
                        }
                    }
                    Ok((r, _)) => failures
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(format!("status {}", r.status)),
                    Err(e) => failures.lock().unwrap_or_else(|e| e.into_inner()).push(e),
                }
                done.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let renewed = poll(Duration::from_secs(90), Duration::from_millis(200), || {
        let s = serials.lock().unwrap_or_else(|e| e.into_inner());
        s.iter().any(|x| *x != first_serial).then_some(())
    });
    // A few more requests on the new certificate.
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    let _ = client.join();
    renewed.unwrap_or_else(|| panic!("{}", report(&server, "the certificate was not renewed")));
    let failures = failures.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed during the renewal: {failures:?}",
        failures.len(),
        done.load(Ordering::SeqCst)
    );
    assert_eq!(
        server.pids_of("worker"),
        workers_before,
        "no worker restart"
    );
    let after = wait_for(Duration::from_secs(10), "valid after renewal", || {
        let e = cert_entry(&server, "web", HOST);
        (e["state"] == "valid").then_some(e)
    });
    assert_eq!(after["source"], "acme", "{after}");
    println!(
        "issued, verified and renewed in {:?} ({} requests during renewal)",
        started.elapsed(),
        done.load(Ordering::SeqCst)
    );

    // A restart reuses the account (same directory) and serves the stored certificate.
    server.restart();
    server.wait_processes();
    wait_for(
        Duration::from_secs(30),
        "the stored account to load",
        || {
            server
                .stderr_text()
                .contains("ACME account loaded")
                .then_some(())
        },
    );
    let again: Value = serde_json::from_slice(
        &std::fs::read(acme_dir.join("account.json")).expect("account.json"),
    )
    .expect("account.json is JSON");
    assert_eq!(again["id"], account["id"], "the account is reused");
    assert_eq!(
        server.stderr_text().matches("ACME account created").count(),
        1
    );
    let (resp, serial) = verified_get(&cfg, tls_port, HOST, HOST, "/")
        .unwrap_or_else(|e| panic!("{}", report(&server, &format!("after restart: {e}"))));
    assert_eq!(resp.status, 200);
    assert_ne!(serial, first_serial, "the renewed certificate was stored");

    for line in server.stderr_text().lines() {
        if line.contains("ACME") || line.contains("Certificate for") || line.contains("Ordering") {
            println!("{line}");
        }
    }
}

/// A directory certificate that is self-signed (issue 21): given to `--acme-ca-root`, it is
/// pinned and accepted as Pebble's leaf, and a certificate is issued. A root that does not
/// match, and a directory where nothing listens, fail with their cause in the status and
/// the log instead of `client error (Connect)`.
#[test]
fn pebble_with_a_self_signed_directory_certificate() {
    if !pebble_installed() {
        assert!(
            std::env::var_os("CI").is_none(),
            "pebble is not installed; .ci/run installs it (apt-get install pebble)"
        );
        println!("SKIPPED: Debian's pebble is not installed (apt-get install pebble)");
        return;
    }
    let [http_port, tls_port] = free_ports::<2>();
    let pebble = Pebble::start_with(http_port, true);
    let directory = format!("https://127.0.0.1:{}/dir", pebble.listen);
    {
        let opts = ServerOpts {
            ports: Some((http_port, tls_port)),
            acme: true,
            ..ServerOpts::default()
        }
        .arg("--acme-directory")
        .arg(&directory)
        .arg("--acme-ca-root")
        .arg(&pebble.ca_pem.display().to_string());
        let server = Server::start(opts);
        server.wait_http_ready();
        server.deploy("web", "v1", &[HOST], 1, &[]);
        let valid = poll(Duration::from_secs(45), Duration::from_millis(200), || {
            let e = cert_entry(&server, "web", HOST);
            (e["state"] == "valid" && e["source"] == "acme").then_some(e)
        });
        valid.unwrap_or_else(|| {
            panic!(
                "no certificate through a pinned directory certificate\nstatus: {}\nstderr:\n{}\n{}",
                server.app_status("web"),
                server.stderr_text(),
                pebble.logs()
            )
        });
        let r = server.tls_get(HOST, "/").expect("TLS handshake");
        assert_eq!(r.status, 200, "{}", r.text());
    }

    // Another certificate as the root: the handshake with Pebble fails verification.
    let other_dir = temp_dir();
    let other = pebble_tls_self_signed(&other_dir);
    let untrusted = ServerOpts {
        acme: true,
        ..ServerOpts::default()
    }
    .arg("--acme-directory")
    .arg(&directory)
    .arg("--acme-ca-root")
    .arg(&other.display().to_string());
    // Nothing listens on this port.
    let closed = free_ports::<1>()[0];
    let refused = ServerOpts {
        acme: true,
        ..ServerOpts::default()
    }
    .arg("--acme-directory")
    .arg(&format!("https://127.0.0.1:{closed}/dir"));
    for (opts, cause) in [
        (untrusted, "certificate verification failed"),
        (refused, "connection refused"),
    ] {
        let server = Server::start(opts);
        server.deploy("web", "v1", &[HOST], 1, &[]);
        let entry = poll(Duration::from_secs(30), Duration::from_millis(100), || {
            let e = cert_entry(&server, "web", HOST);
            e["error"].as_str().is_some().then_some(e)
        })
        .unwrap_or_else(|| {
            panic!(
                "no error in the status for {cause}\nstatus: {}\nstderr:\n{}",
                server.app_status("web"),
                server.stderr_text()
            )
        });
        let error = entry["error"].as_str().unwrap_or_default();
        assert_eq!(entry["state"], "pending", "{entry}");
        assert!(
            error.starts_with(&format!("Failed to initialize ACME client: {cause}")),
            "{entry}"
        );
        let logged = server
            .stderr_text()
            .lines()
            .any(|l| l.contains(&format!("Failed to initialize ACME client: {cause}")));
        assert!(logged, "{}", server.stderr_text());
    }
    let _ = std::fs::remove_dir_all(&other_dir);
}
