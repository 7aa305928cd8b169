//! Issue 23, "Compression": proxied answers and static files in brotli or gzip when the client
//! takes it and the answer gains from it, precompressed siblings of static files, the cache
//! keeping one variant per coding, and the off switch. Documented in docs/http.md,
//! "Compression". Every encoded body is decoded here with a real decoder and compared with
//! the identity body.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::sync::Mutex;

use crate::common::fixture::{chown, APP_JSON};
use crate::common::http::{http, https};
use crate::common::{Request, Response, Server, ServerOpts};
use crate::python_app;
use serde_json::{json, Value};

const HOST: &str = "zip.example.com";

/// Held while a test starts its server and deploys: the servers of one test process share
/// one instance port block, so two deploys at once could pick the same port.
static DEPLOYING: Mutex<()> = Mutex::new(());

/// `GET /doc?size=N` answers N bytes of JSON (the same bytes for the same N). Query knobs:
/// `ct=<Content-Type>`, `status=<n>`, `h=<Name>:<Value>` (repeatable), `chunked=1` (no
/// length, 4 KiB chunks). `/__counts` tells how many requests each target had.
const APP_PY: &str = python_app!(
    r#"import http.server, json, os, socketserver, threading, urllib.parse

lock = threading.Lock()
counts = {}

def doc(n):
    out = bytearray(b"[")
    i = 0
    while len(out) < n:
        out += b'{"id":%d,"name":"item %d","tags":["alpha","beta"],"ok":true},' % (i, i)
        i += 1
    return bytes(out[:n - 1]) + b"]"

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def answer(self):
        path, _, query = self.path.partition("?")
        if path in ("/status", "/__counts"):
            body = b"ok" if path == "/status" else json.dumps(counts).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
            return
        with lock:
            counts[self.path] = counts.get(self.path, 0) + 1
        q = urllib.parse.parse_qsl(query, keep_blank_values=True)
        get = lambda k, d=None: next((v for (kk, v) in q if kk == k), d)
        body = doc(int(get("size", "2048")))
        self.send_response(int(get("status", "200")))
        self.send_header("Content-Type", get("ct", "application/json"))
        finish(self, q, body, 4096)

    do_GET = answer
    do_HEAD = answer
"#
);

/// One worker (the cache is per worker), test certificates, `args`, and the app on [`HOST`]
/// with `public` files (`(path, bytes)`) and symbolic links (`(path, target)`).
fn start(args: &[&str], public: &[(&str, &[u8])], links: &[(&str, &str)]) -> Server {
    let _one_at_a_time = DEPLOYING.lock().unwrap_or_else(|e| e.into_inner());
    let mut opts = ServerOpts {
        workers: 1,
        ..ServerOpts::default()
    }
    .test_certs();
    for a in args {
        opts = opts.arg(a);
    }
    let server = Server::start(opts);
    server.wait_http_ready();
    let owner = server.deploy_owner();
    let dir = crate::common::fixture::write_release_with(
        &server.data_dir,
        "zip",
        "v1",
        owner,
        APP_PY,
        APP_JSON,
    );
    let root = dir.join("public");
    fs::create_dir_all(&root).expect("public/");
    for (rel, content) in public {
        fs::write(root.join(rel), content).expect("write a public file");
        fs::set_permissions(root.join(rel), fs::Permissions::from_mode(0o644)).expect("chmod");
        chown(&root.join(rel), owner);
    }
    for (rel, target) in links {
        std::os::unix::fs::symlink(target, root.join(rel)).expect("symlink");
        std::os::unix::fs::lchown(root.join(rel), Some(owner.0), Some(owner.1)).expect("lchown");
    }
    fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).expect("chmod public/");
    chown(&root, owner);
    server.ok(&json!({
        "command": "deploy", "app": "zip", "version": "v1",
        "path": dir.display().to_string(), "routes": [HOST], "env": {},
        "instances": 1, "idle_timeout": 300
    }));
    server
}

fn request(method: &str, target: &str, headers: &[(&str, &str)]) -> Request {
    let mut r = Request::get(HOST, target).header("X-Forwarded-Proto", "https");
    r.method = method.to_string();
    for (k, v) in headers {
        r = r.header(k, v);
    }
    r
}

fn get(server: &Server, target: &str, headers: &[(&str, &str)]) -> Response {
    let r = request("GET", target, headers);
    http(server.http_port, &r).unwrap_or_else(|e| panic!("GET {target}: {e}"))
}

/// The body as the client gets it after undoing `Content-Encoding`.
fn decoded(r: &Response) -> Vec<u8> {
    decode(r.header("content-encoding"), &r.body)
}

fn decode(coding: Option<&str>, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match coding {
        None => out.extend_from_slice(bytes),
        Some("gzip") => {
            flate2::read::GzDecoder::new(bytes)
                .read_to_end(&mut out)
                .expect("a gzip body that decodes");
        }
        Some("br") => {
            brotli::Decompressor::new(bytes, 4096)
                .read_to_end(&mut out)
                .expect("a brotli body that decodes");
        }
        Some(other) => panic!("unexpected Content-Encoding {other}"),
    }
    out
}

fn varies_on_encoding(r: &Response) -> bool {
    r.headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("vary"))
        .flat_map(|(_, v)| v.split(','))
        .any(|m| m.trim().eq_ignore_ascii_case("accept-encoding"))
}

/// How many requests for `target` reached the app.
fn upstream_count(server: &Server, target: &str) -> u64 {
    let r = get(server, "/__counts", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    let v: Value = r.json();
    v[target].as_u64().unwrap_or(0)
}

const BROWSER: &str = "gzip, deflate, br, zstd";

#[test]
fn proxied_answers_get_the_coding_the_client_prefers() {
    let server = start(&[], &[], &[]);
    let target = "/doc?size=16384";
    let plain = get(&server, target, &[]);
    assert_eq!(plain.status, 200);
    assert_eq!(plain.body.len(), 16384);
    assert_eq!(plain.header("content-encoding"), None);
    assert_eq!(plain.header("content-length"), Some("16384"));
    assert!(
        varies_on_encoding(&plain),
        "an identity answer that could have been encoded still varies: {:?}",
        plain.headers
    );

    for (accept, coding) in [
        (BROWSER, "br"),
        ("gzip", "gzip"),
        ("x-gzip", "gzip"),
        ("br;q=0.5, gzip", "gzip"),
        ("*", "br"),
        ("br;q=0, *", "gzip"),
    ] {
        let r = get(&server, target, &[("Accept-Encoding", accept)]);
        assert_eq!(r.status, 200, "{accept}");
        assert_eq!(r.header("content-encoding"), Some(coding), "{accept}");
        assert_eq!(
            r.header("content-length"),
            None,
            "{accept}: the length is unknown"
        );
        assert_eq!(r.header("transfer-encoding"), Some("chunked"), "{accept}");
        assert!(varies_on_encoding(&r), "{accept}: {:?}", r.headers);
        assert!(
            r.body.len() < plain.body.len() / 4,
            "{accept}: {} bytes encoded",
            r.body.len()
        );
        assert_eq!(decoded(&r), plain.body, "{accept}: the body round-trips");
    }
    for accept in [
        "deflate",
        "br;q=0, gzip;q=0",
        "identity",
        "",
        "gzip;q=0.5, identity",
    ] {
        let r = get(&server, target, &[("Accept-Encoding", accept)]);
        assert_eq!(r.header("content-encoding"), None, "{accept:?}");
        assert_eq!(r.body, plain.body, "{accept:?}");
    }

    // A strong ETag turns weak on an encoded body, and stays as it was on an identity one.
    let tagged = "/doc?size=4096&h=ETag:%22v1%22";
    let r = get(&server, tagged, &[("Accept-Encoding", "br")]);
    assert_eq!(r.header("etag"), Some("W/\"v1\""));
    assert_eq!(get(&server, tagged, &[]).header("etag"), Some("\"v1\""));

    // A body the app streams (chunked, no length) is encoded as it streams.
    let streamed = "/doc?size=262144&chunked=1";
    let r = get(&server, streamed, &[("Accept-Encoding", "gzip")]);
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    let plain = get(&server, "/doc?size=262144", &[]);
    assert_eq!(decoded(&r), plain.body);
}

/// (what, method, target, an extra request header)
type Case = (
    &'static str,
    &'static str,
    &'static str,
    Option<(&'static str, &'static str)>,
);

/// Header lines as curl saves them: lower-cased names, trimmed values.
type Headers = Vec<(String, String)>;

#[test]
fn what_is_never_compressed() {
    let server = start(&[], &[], &[]);
    let both = ("Accept-Encoding", "gzip, br");
    let full = get(&server, "/doc?size=4096", &[]).body;
    let cases: [Case; 8] = [
        ("under 1 KiB", "GET", "/doc?size=1023", None),
        ("binary type", "GET", "/doc?size=4096&ct=image/png", None),
        (
            "already encoded",
            "GET",
            "/doc?size=4096&h=Content-Encoding:gzip",
            None,
        ),
        (
            "no-transform",
            "GET",
            "/doc?size=4096&h=Cache-Control:public,%20no-transform",
            None,
        ),
        (
            "a range request",
            "GET",
            "/doc?size=4096",
            Some(("Range", "bytes=0-99")),
        ),
        (
            "a 206",
            "GET",
            "/doc?size=4096&status=206&h=Content-Range:bytes%200-4095/8192",
            None,
        ),
        (
            "an event stream",
            "GET",
            "/doc?size=4096&ct=text/event-stream&chunked=1",
            None,
        ),
        ("a HEAD", "HEAD", "/doc?size=4096", None),
    ];
    for (case, method, target, extra) in cases {
        let mut headers = vec![both];
        headers.extend(extra);
        let r = http(server.http_port, &request(method, target, &headers))
            .unwrap_or_else(|e| panic!("{case}: {e}"));
        let encoding = r.header("content-encoding");
        if case == "already encoded" {
            // The app's own coding and bytes, untouched.
            assert_eq!(encoding, Some("gzip"), "{case}");
            assert_eq!(r.body, full, "{case}");
            continue;
        }
        assert_eq!(encoding, None, "{case}: {:?}", r.headers);
        if method == "HEAD" {
            assert_eq!(r.header("content-length"), Some("4096"), "{case}");
            assert!(varies_on_encoding(&r), "{case}: a GET would be encoded");
        } else if case == "under 1 KiB" {
            assert_eq!(r.body.len(), 1023, "{case}");
        } else {
            assert_eq!(r.body, full, "{case}");
        }
    }
}

#[test]
fn the_off_switch_sends_answers_as_the_app_made_them() {
    let check = |server: &Server, how: &str| {
        let r = get(server, "/doc?size=16384", &[("Accept-Encoding", BROWSER)]);
        assert_eq!(r.status, 200, "{how}");
        assert_eq!(r.header("content-encoding"), None, "{how}");
        assert_eq!(r.header("content-length"), Some("16384"), "{how}");
        assert!(!varies_on_encoding(&r), "{how}: {:?}", r.headers);
        let r = get(server, "/app.js", &[("Accept-Encoding", BROWSER)]);
        assert_eq!(
            r.header("content-encoding"),
            None,
            "{how}: no sibling either"
        );
        assert_eq!(r.body, script(1), "{how}");
    };
    let public: &[(&str, &[u8])] = &[
        ("app.js", &script(1)),
        ("app.js.br", &brotli_of(&script(1))),
    ];
    let server = start(&["--no-compression"], public, &[]);
    check(&server, "--no-compression");
    drop(server);

    let dir = crate::common::temp_dir();
    let config = dir.join("server-config.toml");
    fs::write(&config, "[server]\ncompression = false\n").expect("write the config");
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod");
    let server = start(
        &["--config", config.to_str().expect("utf-8 path")],
        public,
        &[],
    );
    check(&server, "[server] compression = false");
}

#[test]
fn the_cache_keeps_one_variant_per_coding() {
    let server = start(&[], &[], &[]);
    let target = "/doc?size=8192&h=Cache-Control:max-age=300";
    let plain = get(&server, "/doc?size=8192", &[]).body;
    // (Accept-Encoding, the coding it must get, upstream count after it, a hit the first
    // time): each coding goes upstream once, whatever its spelling.
    let requests = [
        (BROWSER, Some("br"), 1, false),
        ("br", Some("br"), 1, true),
        ("gzip", Some("gzip"), 2, false),
        ("gzip, deflate", Some("gzip"), 2, true),
        ("", None, 3, false),
        ("deflate", None, 3, true),
    ];
    let mut br_to_others = 0;
    for round in 0..2 {
        for (accept, coding, count, hit_first) in requests {
            let headers: Vec<(&str, &str)> = if accept.is_empty() {
                Vec::new()
            } else {
                vec![("Accept-Encoding", accept)]
            };
            let r = get(&server, target, &headers);
            let what = format!("round {round}, {accept:?}: {:?}", r.headers);
            assert_eq!(r.status, 200, "{what}");
            if r.header("content-encoding") == Some("br") && !accept.contains("br") {
                br_to_others += 1;
            }
            assert_eq!(r.header("content-encoding"), coding, "{what}");
            assert_eq!(decoded(&r), plain, "{what}");
            assert!(varies_on_encoding(&r), "{what}");
            let hit = r.header("cache-status").unwrap_or("").contains("hit");
            assert_eq!(hit, round == 1 || hit_first, "{what}");
            if hit {
                // The stored encoded bytes, with their exact length.
                let len = r.body.len().to_string();
                assert_eq!(r.header("content-length"), Some(len.as_str()), "{what}");
            }
            let count = if round == 0 { count } else { 3 };
            assert_eq!(upstream_count(&server, target), count, "{what}");
        }
    }
    assert_eq!(
        br_to_others, 0,
        "a client that does not take br got a br body"
    );

    // A range is cut from the identity variant, never from an encoded one.
    let r = get(
        &server,
        target,
        &[("Accept-Encoding", "br"), ("Range", "bytes=0-9")],
    );
    assert_eq!(r.status, 206, "{:?}", r.headers);
    assert_eq!(r.header("content-encoding"), None);
    assert_eq!(r.body, &plain[..10]);
    assert_eq!(upstream_count(&server, target), 3);
}

/// A JavaScript file of about 6 KiB whose text depends on `n`.
fn script(n: u32) -> Vec<u8> {
    let mut out = String::new();
    for i in 0..120 {
        out.push_str(&format!(
            "export function f{n}_{i}(x) {{ return x * {i} + {n}; }}\n"
        ));
    }
    out.into_bytes()
}

fn brotli_of(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut w = brotli::CompressorWriter::new(&mut out, 4096, 11, 22);
        w.write_all(data).expect("brotli");
    }
    out
}

fn gzip_of(data: &[u8]) -> Vec<u8> {
    let mut w = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    w.write_all(data).expect("gzip");
    w.finish().expect("gzip")
}

#[test]
fn static_files_use_their_precompressed_siblings() {
    let app = script(1);
    let css = String::from_utf8(script(2))
        .expect("text")
        .replace("export function", ".rule");
    let lib = script(3);
    let (app_br, app_gz) = (brotli_of(&app), gzip_of(&app));
    let public: &[(&str, &[u8])] = &[
        ("app.js", &app),
        ("app.js.br", &app_br),
        ("app.js.gz", &app_gz),
        ("style.css", css.as_bytes()),
        ("lib.js", &lib),
        // A sibling that is a link, here to a valid br of other text: never served.
        ("other.br", &brotli_of(b"not lib.js")),
    ];
    let server = start(&[], public, &[("lib.js.br", "other.br")]);

    for (accept, coding, bytes) in [
        (BROWSER, "br", &app_br),
        ("br", "br", &app_br),
        ("gzip", "gzip", &app_gz),
        ("gzip, br;q=0.5", "gzip", &app_gz),
    ] {
        let r = get(&server, "/app.js", &[("Accept-Encoding", accept)]);
        assert_eq!(r.status, 200, "{accept}");
        assert_eq!(r.header("content-encoding"), Some(coding), "{accept}");
        assert_eq!(&r.body, bytes, "{accept}: the sibling's bytes, as they are");
        assert_eq!(
            r.header("content-length"),
            Some(bytes.len().to_string().as_str())
        );
        assert_eq!(
            r.header("content-type"),
            Some("application/javascript; charset=utf-8"),
            "{accept}: the type of app.js"
        );
        assert!(varies_on_encoding(&r), "{accept}");
        assert_eq!(decoded(&r), app, "{accept}");
        // Its own validator: a conditional request with it is a 304.
        let etag = r.header("etag").expect("an ETag").to_string();
        let again = get(
            &server,
            "/app.js",
            &[("Accept-Encoding", accept), ("If-None-Match", &etag)],
        );
        assert_eq!(again.status, 304, "{accept}");
    }
    let plain = get(&server, "/app.js", &[]);
    assert_eq!(plain.header("content-encoding"), None);
    assert_eq!(plain.body, app);
    assert!(varies_on_encoding(&plain));

    // A range or a HEAD gets the file itself.
    let r = get(
        &server,
        "/app.js",
        &[("Accept-Encoding", "br"), ("Range", "bytes=0-9")],
    );
    assert_eq!(r.status, 206);
    assert_eq!(r.header("content-encoding"), None);
    assert_eq!(r.body, &app[..10]);
    let r = http(
        server.http_port,
        &request("HEAD", "/app.js", &[("Accept-Encoding", "br")]),
    )
    .expect("HEAD");
    assert_eq!(r.header("content-encoding"), None);
    assert_eq!(
        r.header("content-length"),
        Some(app.len().to_string().as_str())
    );

    // No sibling: encoded on the fly, under the rules of proxied answers.
    let r = get(&server, "/style.css", &[("Accept-Encoding", "gzip")]);
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert_eq!(r.header("content-length"), None);
    assert_eq!(decoded(&r), css.as_bytes());
    // The link is not followed: lib.js is encoded on the fly instead.
    let r = get(&server, "/lib.js", &[("Accept-Encoding", "br")]);
    assert_eq!(r.header("content-encoding"), Some("br"));
    assert_eq!(decoded(&r), lib, "the linked sibling was served");
}

/// `curl --http2` with `headers`: the status line and headers (names lower-cased) and the
/// body as it came, undecoded.
fn curl_h2(server: &Server, path: &str, headers: &[&str]) -> Option<(Headers, Vec<u8>)> {
    let dir = crate::common::temp_dir();
    let (head_file, body_file) = (dir.join("head"), dir.join("body"));
    let mut cmd = Command::new("curl");
    cmd.args(["--http2", "-k", "-sS", "--max-time", "20"])
        .arg("--resolve")
        .arg(format!("{HOST}:{}:127.0.0.1", server.tls_port))
        .arg("-D")
        .arg(&head_file)
        .arg("-o")
        .arg(&body_file);
    for h in headers {
        cmd.arg("-H").arg(h);
    }
    let out = cmd
        .arg(format!("https://{HOST}:{}{path}", server.tls_port))
        .output()
        .ok()?;
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let head = fs::read_to_string(&head_file).expect("curl's headers");
    assert!(head.starts_with("HTTP/2 200"), "{head}");
    let parsed = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Some((parsed, fs::read(&body_file).expect("curl's body")))
}

fn has_h2_curl() -> bool {
    Command::new("curl")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("HTTP2"))
        .unwrap_or(false)
}

#[test]
fn http2_answers_are_compressed_too() {
    if !has_h2_curl() {
        eprintln!("SKIPPED: this test needs curl with HTTP/2 support (nghttp2) on PATH");
        return;
    }
    let app = script(1);
    let app_gz = gzip_of(&app);
    let server = start(&[], &[("app.js", &app), ("app.js.gz", &app_gz)], &[]);
    let plain = https(
        server.tls_port,
        Some(HOST),
        &Request::get(HOST, "/doc?size=65536"),
    )
    .expect("identity over HTTP/1")
    .body;
    let header = |h: &[(String, String)], name: &str| {
        h.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    };
    for (accept, coding) in [("br", "br"), ("gzip", "gzip")] {
        let (h, body) = curl_h2(
            &server,
            "/doc?size=65536",
            &[&format!("Accept-Encoding: {accept}")],
        )
        .expect("curl runs");
        assert_eq!(
            header(&h, "content-encoding").as_deref(),
            Some(coding),
            "{h:?}"
        );
        assert!(
            header(&h, "vary").is_some_and(|v| v.to_ascii_lowercase().contains("accept-encoding"))
        );
        assert_eq!(header(&h, "content-length"), None, "{h:?}");
        assert_eq!(decode(Some(coding), &body), plain);
    }
    let (h, body) = curl_h2(&server, "/app.js", &["Accept-Encoding: gzip"]).expect("curl runs");
    assert_eq!(header(&h, "content-encoding").as_deref(), Some("gzip"));
    assert_eq!(body, app_gz, "the precompressed sibling over HTTP/2");
    let (h, body) = curl_h2(&server, "/doc?size=65536", &[]).expect("curl runs");
    assert_eq!(header(&h, "content-encoding"), None);
    assert_eq!(body, plain);
}

/// An upgrade candidate started as the Tako CLI starts it (no `--no-compression` of its own)
/// serves with the primary's compression off (docs/operations.md, "Upgrade"): before, the
/// operator's choice lapsed while the candidate covered the primary's restart.
#[test]
fn an_upgrade_candidate_keeps_the_primarys_compression_off() {
    crate::common::users::require_root("a root candidate");
    let mut server = start(&["--no-compression"], &[], &[]);
    let plain = get(&server, "/doc?size=4096", &[("Accept-Encoding", "gzip")]);
    assert_eq!(plain.status, 200, "{}", plain.text());
    assert_eq!(plain.header("content-encoding"), None);

    let owner = format!("upgrade-ci-zip-{}", std::process::id());
    server.ok(&json!({"command": "enter_upgrading", "owner": owner}));
    let cand_socket = server.socket.with_file_name(format!("tako-{owner}.sock"));
    let log = server.data_dir.join("candidate.log");
    let log_file = fs::File::create(&log).expect("candidate log");
    let status = crate::common::candidate_command(&server, &cand_socket)
        // The daemon keeps what it inherits open: no pipes to wait on.
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log_file)
        .status()
        .expect("start the candidate");
    // The daemonizing parent exits 0 once the candidate is ready.
    assert!(
        status.success(),
        "candidate: {}",
        fs::read_to_string(&log).unwrap_or_default()
    );
    let candidate: Vec<i32> = crate::common::procfs::all_pids()
        .into_iter()
        .filter(|p| {
            crate::common::procfs::cmdline(*p)
                .iter()
                .any(|a| a.contains(&cand_socket.display().to_string()))
        })
        .collect();
    assert!(!candidate.is_empty(), "no candidate process found");

    // With the primary gone, the candidate alone answers on the ports.
    server.stop();
    let r = crate::common::wait_for(
        std::time::Duration::from_secs(30),
        "the candidate's answer",
        || {
            let r = http(
                server.http_port,
                &request("GET", "/doc?size=4096", &[("Accept-Encoding", "gzip")]),
            )
            .ok()?;
            (r.status == 200).then_some(r)
        },
    );
    let stopped = r.header("content-encoding").map(str::to_string);
    for p in &candidate {
        crate::common::kill(*p, libc::SIGTERM);
    }
    crate::common::wait_for(
        std::time::Duration::from_secs(45),
        "the candidate's exit",
        || {
            candidate
                .iter()
                .all(|p| !crate::common::procfs::alive(*p))
                .then_some(())
        },
    );
    assert_eq!(
        stopped, None,
        "the candidate compressed: --no-compression lapsed"
    );
    assert_eq!(r.body, plain.body);
}
