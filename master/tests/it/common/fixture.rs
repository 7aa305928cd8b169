//! The app the deploy tests run: a Python 3 HTTP server written into a release directory.
//!
//! Knobs, all read from the instance environment:
//! - `EXIT_CODE=n`: print `boom` to stderr and exit with `n` at start;
//! - `PRINT_MB=n`: print `n` MiB of 1 KiB lines to stdout at start, then `PRINT_DONE`;
//! - `STARTUP_DELAY_FILE=path`: when that file exists, sleep the seconds it holds before
//!   listening;
//! - `FAIL_STATUS_FILE=path`: while that file exists, `/status` answers 500. `{instance}` in
//!   the path is replaced by `TAKO_INSTANCE`, so one instance can be made to fail.
//!
//! `/status` answers 200 `ok`; every other path answers JSON with the pid, uid, instance id,
//! version, port, path, request headers and the whole environment.

/// A Python 3 app from the text of its request handler: `$handler` is the program up to and
/// including `class Handler(http.server.BaseHTTPRequestHandler)`, which must come last. The
/// macro appends what every test app shares: no request log on stderr, `finish(handler, q,
/// body)` (query-driven extra headers, Content-Length or chunked framing, the body), a threaded
/// server on `127.0.0.1:$PORT` with a deep accept queue, and a `listening on` line on stdout.
#[macro_export]
macro_rules! python_app {
    ($handler:literal) => {
        concat!(
            $handler,
            r#"

import http.server, os, socketserver

Handler.log_message = lambda self, *args: None

def finish(handler, q, body, piece=65536):
    """The rest of an answer: each `h=Name:value` of the query `q` as a header, then the body
    by Content-Length, or chunked in `piece`-byte chunks with `chunked=1` (no body for HEAD)."""
    for (k, v) in q:
        if k == "h":
            name, _, value = v.partition(":")
            handler.send_header(name, value)
    chunked = ("chunked", "1") in q
    if chunked:
        handler.send_header("Transfer-Encoding", "chunked")
    else:
        handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    if handler.command == "HEAD":
        return
    if chunked:
        for i in range(0, len(body), piece):
            part = body[i:i + piece]
            handler.wfile.write(b"%x\r\n" % len(part) + part + b"\r\n")
            handler.wfile.flush()
        handler.wfile.write(b"0\r\n\r\n")
    else:
        handler.wfile.write(body)

class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

port = int(os.environ["PORT"])
print("listening on 127.0.0.1:%d instance %s" % (port, os.environ.get("TAKO_INSTANCE", "")), flush=True)
Server(("127.0.0.1", port), Handler).serve_forever()
"#
        )
    };
}

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

pub const APP_PY: &str = python_app!(
    r#"import http.server, json, os, socketserver, sys, time

code = os.environ.get("EXIT_CODE")
if code:
    sys.stderr.write("boom\n")
    sys.stderr.flush()
    sys.exit(int(code))

delay_file = os.environ.get("STARTUP_DELAY_FILE")
if delay_file and os.path.exists(delay_file):
    with open(delay_file) as f:
        time.sleep(float(f.read().strip() or "0"))

mb = int(os.environ.get("PRINT_MB", "0") or "0")
if mb > 0:
    line = "x" * 1023 + "\n"
    chunk = line * 64
    for _ in range(mb * 16):
        sys.stdout.write(chunk)
    sys.stdout.write("PRINT_DONE\n")
    sys.stdout.flush()

instance = os.environ.get("TAKO_INSTANCE", "")

def failing():
    f = os.environ.get("FAIL_STATUS_FILE")
    return bool(f) and os.path.exists(f.replace("{instance}", instance))

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes: without this, Nagle and delayed ACKs add
    # tens of milliseconds to every response.
    disable_nagle_algorithm = True

    def answer(self):
        if self.path.split("?")[0] == "/status":
            status = 500 if failing() else 200
            body = b"failing" if status == 500 else b"ok"
            ctype = "text/plain"
        else:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            status = 200
            ctype = "application/json"
            body = json.dumps({
                "pid": os.getpid(),
                "uid": os.getuid(),
                "instance": instance,
                "version": os.environ.get("TAKO_VERSION"),
                "port": os.environ.get("PORT"),
                "method": self.command,
                "path": self.path,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "env": dict(os.environ),
            }).encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = answer
    do_POST = answer
    do_HEAD = answer

"#
);

/// An app that echoes the request headers as JSON with a count of hits per target (HEAD
/// without a body); `cc=<value>` in the
/// query becomes `Cache-Control`, and `/garbage` answers bytes that are not HTTP.
pub const ECHO_APP_PY: &str = python_app!(
    r#"import http.server, json, os, socketserver, threading, urllib.parse

lock = threading.Lock()
counts = {}

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_GET(self):
        path, _, query = self.path.partition("?")
        if path == "/garbage":
            self.wfile.write(b"this is not http\r\n\r\n")
            self.wfile.flush()
            self.close_connection = True
            return
        cc = None
        if path == "/status":
            body = b"ok"
        else:
            with lock:
                counts[self.path] = counts.get(self.path, 0) + 1
                n = counts[self.path]
            q = dict(urllib.parse.parse_qsl(query, keep_blank_values=True))
            cc = q.get("cc")
            body = json.dumps({"n": n, "path": self.path,
                               "headers": {k.lower(): v for k, v in self.headers.items()}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if cc is not None:
            self.send_header("Cache-Control", cc)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_HEAD = do_GET

"#
);

/// The manifest that runs the fixture with `python3`.
pub const APP_JSON: &str = r#"{"runtime":"node","main":"server.py","start":["python3","{main}"]}"#;

/// Writes `<data-dir>/apps/<app>/releases/<version>/` with the fixture, owned by
/// `owner` (uid, gid) the way the Tako CLI would upload it, and returns its path.
pub fn write_release(data_dir: &Path, app: &str, version: &str, owner: (u32, u32)) -> PathBuf {
    write_release_with(data_dir, app, version, owner, APP_PY, APP_JSON)
}

/// [`write_release`] with another `server.py` and `app.json`.
pub fn write_release_with(
    data_dir: &Path,
    app: &str,
    version: &str,
    owner: (u32, u32),
    app_py: &str,
    app_json: &str,
) -> PathBuf {
    let app_dir = data_dir.join("apps").join(app);
    let dir = app_dir.join("releases").join(version);
    fs::create_dir_all(&dir).expect("create the release directory");
    fs::write(dir.join("server.py"), app_py).expect("write server.py");
    fs::write(dir.join("app.json"), app_json).expect("write app.json");
    for p in [
        app_dir.clone(),
        app_dir.join("releases"),
        dir.clone(),
        dir.join("server.py"),
        dir.join("app.json"),
    ] {
        let mode = if p.is_dir() { 0o755 } else { 0o644 };
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).expect("chmod release");
        chown(&p, owner);
    }
    dir
}

pub fn chown(p: &Path, (uid, gid): (u32, u32)) {
    std::os::unix::fs::chown(p, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("chown {} to {uid}:{gid}: {e}", p.display()));
}
