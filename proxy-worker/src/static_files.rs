//! Static files from `<release>/public` (docs/http.md, "Static files"): candidate paths with
//! the route prefix stripped, traversal refusal, conditional requests, single byte ranges.
//!
//! Nothing outside `public/` is ever opened: each candidate is percent-decoded and refused
//! when it holds a NUL, a backslash or a `..` segment, then canonicalized (which resolves
//! symlinks) and kept only when the result is still below the canonical `public/`. Files
//! are opened after that check and described by the opened handle, so the size and mtime
//! belong to the file that is read. Filesystem work runs off the runtime threads.
//!
//! Dotfiles are never served: a request path with a segment that starts with `.` (other than
//! `.well-known`) goes to the app without any file being looked at, and a file whose path below
//! `public/` has such a segment once symlinks are resolved is not served either. Builds leave
//! `.env`, `.git/` and editor files in `public/` by accident far more often than on purpose.

use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::header::{
    HeaderMap, HeaderValue, ACCEPT_RANGES, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH,
    CONTENT_RANGE, CONTENT_TYPE, ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, LAST_MODIFIED,
    RANGE,
};
use http::{Method, Response, StatusCode};
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tako_ipc::route::RoutePattern;
use tokio::io::{AsyncRead, AsyncSeekExt, ReadBuf};

use crate::body::{Body, BoxError};
use crate::compress::{self, Accept, Coding};
use crate::no_public;
use crate::responses::{empty, fixed, Canned};
use tako_http1::date as httpdate;

/// Bytes read from disk per body frame: big files stream instead of loading whole.
const CHUNK: usize = 64 * 1024;
const CACHE_CONTROL_VALUE: &str = "public, max-age=3600";

/// `Content-Type` by lower-cased extension.
pub fn mime(path: &str) -> &'static str {
    let ext = path
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "js" => "application/javascript; charset=utf-8",
        "mjs" => "application/javascript",
        "json" | "map" => "application/json",
        "txt" => "text/plain; charset=utf-8",
        "xml" => "application/xml",
        "csv" => "text/csv",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "svg" => "image/svg+xml",
        "ico" => "image/x-icon",
        "webp" => "image/webp",
        "avif" => "image/avif",
        "woff" => "font/woff",
        "woff2" => "font/woff2",
        "ttf" => "font/ttf",
        "otf" => "font/otf",
        "eot" => "application/vnd.ms-fontobject",
        "mp4" => "video/mp4",
        "webm" => "video/webm",
        "mp3" => "audio/mpeg",
        "wav" => "audio/wav",
        "ogg" => "audio/ogg",
        "pdf" => "application/pdf",
        "webmanifest" => "application/manifest+json",
        _ => "application/octet-stream",
    }
}

/// The request paths to try: the path itself, then (for a route with a path) the path
/// with the route prefix removed and re-rooted at `/`, when that differs.
pub fn candidates(path: &str, pattern: &RoutePattern) -> Vec<String> {
    let mut out = vec![path.to_string()];
    if let Some(prefix) = pattern.static_prefix() {
        if let Some(rest) = path.strip_prefix(prefix) {
            let stripped = if rest.starts_with('/') {
                rest.to_string()
            } else {
                format!("/{rest}")
            };
            if stripped != path {
                out.push(stripped);
            }
        }
    }
    out
}

/// Whether the request may be a static file at all (method and last segment).
pub fn is_candidate(method: &Method, path: &str) -> bool {
    if method != Method::GET && method != Method::HEAD {
        return false;
    }
    let last = path.rsplit('/').next().unwrap_or("");
    last.contains('.') && !last.ends_with('.')
}

#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// Relative path below `public/`, as raw bytes.
    File(Vec<u8>),
    /// An encoded `/`: never a file, the app may want it.
    NotAFile,
    /// NUL, backslash or a `..` segment: a 400.
    Refused,
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The one dot directory a site publishes on purpose (RFC 8615).
const WELL_KNOWN: &[u8] = b".well-known";

/// Whether a path segment names a dotfile or dot directory.
fn is_hidden_segment(segment: &[u8]) -> bool {
    segment.first() == Some(&b'.') && segment != WELL_KNOWN
}

/// Whether a GET or HEAD for `path` must not be served from `public/`: some segment,
/// percent-decoded, starts with `.` and is not `.well-known`. Such a request goes to the app.
pub fn is_hidden(method: &Method, path: &str) -> bool {
    if method != Method::GET && method != Method::HEAD {
        return false;
    }
    // The usual path has neither: no decoding, no allocation.
    if !path.contains("/.") && !path.contains('%') {
        return false;
    }
    let (decoded, _) = percent_decode(path);
    // A path the static stage refuses (traversal, NUL, backslash) keeps its 400.
    !refused(&decoded) && decoded.split(|c| *c == b'/').any(is_hidden_segment)
}

/// A decoded path with a NUL, a backslash or a `..` segment: never a file, always a 400.
fn refused(decoded: &[u8]) -> bool {
    decoded.contains(&0)
        || decoded.contains(&b'\\')
        || decoded.split(|c| *c == b'/').any(|s| s == b"..")
}

/// `path` with every valid `%XX` decoded, and whether one of them was a `/`.
fn percent_decode(path: &str) -> (Vec<u8>, bool) {
    let raw = path.as_bytes();
    let mut out = Vec::with_capacity(raw.len());
    let mut encoded_slash = false;
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if b == b'%' && i + 2 < raw.len() {
            if let (Some(h), Some(l)) = (hex(raw[i + 1]), hex(raw[i + 2])) {
                let c = h * 16 + l;
                if c == b'/' {
                    encoded_slash = true;
                }
                out.push(c);
                i += 3;
                continue;
            }
        }
        out.push(b);
        i += 1;
    }
    (out, encoded_slash)
}

/// Percent-decodes one candidate and applies the refusal rules.
pub fn decode(path: &str) -> Decoded {
    let (out, encoded_slash) = percent_decode(path);
    if refused(&out) {
        return Decoded::Refused;
    }
    if encoded_slash {
        return Decoded::NotAFile;
    }
    let rel: Vec<u8> = out.into_iter().skip_while(|c| *c == b'/').collect();
    Decoded::File(rel)
}

/// A file resolved below `public/`, opened, with what the headers need.
struct Found {
    file: std::fs::File,
    /// The requested file's path: its extension gives the type, also of a precompressed
    /// sibling.
    name: PathBuf,
    size: u64,
    mtime: u64,
    /// `file` is the precompressed sibling in this coding (docs/http.md, "Compression").
    coding: Option<Coding>,
}

enum Lookup {
    Found(Found),
    Missing,
    /// The release has no `public/` (or not a directory).
    NoPublic,
    ReadFailed(std::io::Error),
}

/// Below `root`, and not a dotfile there: a symlink with an ordinary name may point at one.
fn inside(root: &Path, p: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    p.strip_prefix(root).is_ok_and(|rel| {
        !rel.components()
            .any(|c| is_hidden_segment(c.as_os_str().as_bytes()))
    })
}

/// Resolves one decoded candidate; `Ok(None)` means try the next one.
fn resolve(root: &Path, rel: &[u8]) -> std::io::Result<Option<Found>> {
    use std::os::unix::ffi::OsStrExt;
    let joined = root.join(std::ffi::OsStr::from_bytes(rel));
    let Ok(mut canon) = std::fs::canonicalize(&joined) else {
        return Ok(None);
    };
    if !inside(root, &canon) {
        tracing::debug!(path = %joined.display(), "Static path leaves public/; not served");
        return Ok(None);
    }
    let meta = std::fs::metadata(&canon)?;
    if meta.is_dir() {
        let Ok(index) = std::fs::canonicalize(canon.join("index.html")) else {
            return Ok(None);
        };
        if !inside(root, &index) {
            return Ok(None);
        }
        canon = index;
    }
    let file = std::fs::File::open(&canon)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Ok(None);
    }
    Ok(Some(Found {
        file,
        name: canon,
        size: meta.len(),
        mtime: mtime_of(&meta),
        coding: None,
    }))
}

fn mtime_of(meta: &std::fs::Metadata) -> u64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs())
}

/// The precompressed sibling of `found` in the first of `codings` that has one (`x.js.br`,
/// `x.js.gz`). The deploy user made it: it is opened without following a symbolic link, and
/// only a regular file counts (a FIFO would not even block the open). Anything else, or any
/// error, means no sibling: the file itself is served.
fn sibling(found: &Found, codings: &[Coding]) -> Option<Found> {
    use std::os::unix::fs::OpenOptionsExt;
    for coding in codings {
        let mut name = found.name.clone().into_os_string();
        name.push(coding.suffix());
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&name);
        let Ok(file) = opened else { continue };
        let Ok(meta) = file.metadata() else { continue };
        if !meta.is_file() {
            continue;
        }
        return Some(Found {
            file,
            name: found.name.clone(),
            size: meta.len(),
            mtime: mtime_of(&meta),
            coding: Some(*coding),
        });
    }
    None
}

fn lookup(release: &str, decoded: Vec<Vec<u8>>, codings: &[Coding]) -> Lookup {
    let Ok(root) = std::fs::canonicalize(Path::new(release).join("public")) else {
        return Lookup::NoPublic;
    };
    if !root.is_dir() {
        return Lookup::NoPublic;
    }
    for rel in decoded {
        match resolve(&root, &rel) {
            Ok(Some(found)) => {
                return Lookup::Found(sibling(&found, codings).unwrap_or(found));
            }
            Ok(None) => continue,
            Err(e) => return Lookup::ReadFailed(e),
        }
    }
    Lookup::Missing
}

/// Answers the request from `public/` when a candidate resolves; `None` sends it on to the
/// app. The caller has already checked that the app is not stopped.
pub async fn serve(
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    accept: &Accept,
    pattern: &RoutePattern,
    release: &str,
) -> Option<Response<Body>> {
    if !is_candidate(method, path) || release.is_empty() {
        return None;
    }
    let head = method == Method::HEAD;
    let mut decoded = Vec::new();
    for c in candidates(path, pattern) {
        match decode(&c) {
            Decoded::Refused => return Some(Canned::BadRequest.response(head)),
            Decoded::NotAFile => {}
            Decoded::File(rel) => decoded.push(rel),
        }
    }
    if decoded.is_empty() || no_public::recently_absent(release) {
        return None;
    }
    let owned = release.to_string();
    // The codings a sibling may have, best first; none for a HEAD or a range (identity).
    let codings = accept.ranked(&PRECOMPRESSED);
    let found = match tokio::task::spawn_blocking(move || lookup(&owned, decoded, &codings)).await {
        Ok(Lookup::Found(f)) => f,
        Ok(Lookup::Missing) => return None,
        Ok(Lookup::NoPublic) => {
            no_public::record_absent(release);
            return None;
        }
        Ok(Lookup::ReadFailed(error)) => {
            tracing::warn!(path, %error, "Static asset read failed");
            return Some(Canned::StaticReadFailed.response(head));
        }
        Err(error) => {
            tracing::warn!(path, %error, "Static lookup task failed");
            return Some(Canned::StaticReadFailed.response(head));
        }
    };
    let precompressed = found.coding.is_some();
    let resp = respond(found, headers, head).await;
    // Without a sibling, the rules of proxied answers (docs/http.md, "Compression").
    Some(if precompressed {
        resp
    } else {
        compress::apply(resp, accept)
    })
}

/// The codings of precompressed siblings, in our order at equal weight.
const PRECOMPRESSED: [Coding; 2] = [Coding::Brotli, Coding::Gzip];

/// A sibling's tag names its coding: the bytes differ from the file's.
fn etag_of(f: &Found) -> String {
    match f.coding {
        Some(c) => format!("\"{}-{}-{}\"", f.size, f.mtime, c.token()),
        None => format!("\"{}-{}\"", f.size, f.mtime),
    }
}

/// Weak comparison (RFC 9110 §8.8.3.2) against a list or `*`.
fn none_match(header: &str, etag: &str) -> bool {
    let ours = etag.trim_start_matches("W/");
    header
        .split(',')
        .map(str::trim)
        .any(|t| t == "*" || t.trim_start_matches("W/") == ours)
}

/// An HTTP-date as file-time seconds; dates before 1970 are none (no file here is older).
fn unix_date(v: &str) -> Option<u64> {
    httpdate::parse(v).and_then(|t| u64::try_from(t).ok())
}

/// `If-Range`: a strong ETag match or the exact Last-Modified date.
fn if_range_matches(value: &str, etag: &str, mtime: u64) -> bool {
    let v = value.trim();
    if v.starts_with('"') {
        v == etag
    } else if v.starts_with("W/") {
        false
    } else {
        unix_date(v) == Some(mtime)
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum RangeReq {
    /// Serve the whole file (no header, several ranges, or one we do not understand).
    Full,
    /// Inclusive byte bounds.
    Part(u64, u64),
    Unsatisfiable,
}

/// One `bytes=` range against a file of `size` bytes.
pub fn parse_range(value: &str, size: u64) -> RangeReq {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return RangeReq::Full;
    };
    if spec.contains(',') {
        return RangeReq::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeReq::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
    if a.is_empty() {
        // Suffix: the last n bytes.
        if !digits(b) {
            return RangeReq::Full;
        }
        let n: u64 = b.parse().unwrap_or(u64::MAX);
        if n == 0 || size == 0 {
            return RangeReq::Unsatisfiable;
        }
        return RangeReq::Part(size.saturating_sub(n), size - 1);
    }
    if !digits(a) || !(b.is_empty() || digits(b)) {
        return RangeReq::Full;
    }
    let Ok(start) = a.parse::<u64>() else {
        return RangeReq::Unsatisfiable;
    };
    let end = if b.is_empty() {
        u64::MAX
    } else {
        b.parse::<u64>().unwrap_or(u64::MAX)
    };
    if end < start {
        return RangeReq::Full;
    }
    if start >= size {
        return RangeReq::Unsatisfiable;
    }
    RangeReq::Part(start, end.min(size - 1))
}

fn header_str<'a>(h: &'a HeaderMap, name: &http::header::HeaderName) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

fn set(h: &mut HeaderMap, name: http::header::HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(name, v);
    }
}

async fn respond(found: Found, req: &HeaderMap, head: bool) -> Response<Body> {
    let etag = etag_of(&found);
    let last_modified = httpdate::format(found.mtime);
    let validators = |h: &mut HeaderMap| {
        set(h, ETAG, &etag);
        set(h, LAST_MODIFIED, &last_modified);
        h.insert(CACHE_CONTROL, HeaderValue::from_static(CACHE_CONTROL_VALUE));
    };

    let not_modified = match header_str(req, &IF_NONE_MATCH) {
        Some(inm) => none_match(inm, &etag),
        None => header_str(req, &IF_MODIFIED_SINCE)
            .and_then(unix_date)
            .is_some_and(|since| found.mtime <= since),
    };
    if not_modified {
        let mut resp = Response::new(empty());
        *resp.status_mut() = StatusCode::NOT_MODIFIED;
        validators(resp.headers_mut());
        if found.coding.is_some() {
            compress::add_vary(resp.headers_mut());
        }
        return resp;
    }

    let size = found.size;
    let range = match header_str(req, &RANGE) {
        None => RangeReq::Full,
        Some(r) => {
            let if_range_ok =
                header_str(req, &IF_RANGE).is_none_or(|v| if_range_matches(v, &etag, found.mtime));
            if if_range_ok {
                parse_range(r, size)
            } else {
                RangeReq::Full
            }
        }
    };
    let (status, start, len) = match range {
        RangeReq::Full => (StatusCode::OK, 0, size),
        RangeReq::Part(a, b) => (StatusCode::PARTIAL_CONTENT, a, b - a + 1),
        RangeReq::Unsatisfiable => {
            let mut resp = fixed(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "text/plain",
                "no-store",
                Bytes::new(),
                head,
            );
            set(
                resp.headers_mut(),
                CONTENT_RANGE,
                &format!("bytes */{size}"),
            );
            return resp;
        }
    };

    let body = if head || len == 0 {
        empty()
    } else {
        let mut file = tokio::fs::File::from_std(found.file);
        if start > 0 {
            if let Err(error) = file.seek(SeekFrom::Start(start)).await {
                tracing::warn!(file = %found.name.display(), %error, "Static asset read failed");
                return Canned::StaticReadFailed.response(head);
            }
        }
        http_body_util::BodyExt::boxed_unsync(FileBody {
            file,
            remaining: len,
            buf: BytesMut::new(),
        })
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    set(h, CONTENT_TYPE, mime(&found.name.to_string_lossy()));
    h.insert(CONTENT_LENGTH, HeaderValue::from(len));
    if let Some(coding) = found.coding {
        h.insert(CONTENT_ENCODING, HeaderValue::from_static(coding.token()));
        compress::add_vary(h);
    }
    h.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    validators(h);
    if status == StatusCode::PARTIAL_CONTENT {
        set(
            h,
            CONTENT_RANGE,
            &format!("bytes {start}-{}/{size}", start + len - 1),
        );
    }
    resp
}

/// Streams `remaining` bytes of a file in chunks of [`CHUNK`].
struct FileBody {
    file: tokio::fs::File,
    remaining: u64,
    buf: BytesMut,
}

#[derive(Debug, thiserror::Error)]
#[error("static file ended early: {0} bytes missing")]
struct Truncated(u64);

impl HttpBody for FileBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.remaining == 0 {
            return Poll::Ready(None);
        }
        let want = this.remaining.min(CHUNK as u64) as usize;
        if this.buf.capacity() < want {
            this.buf.reserve(want);
        }
        this.buf.resize(want, 0);
        let mut rb = ReadBuf::new(&mut this.buf[..want]);
        match Pin::new(&mut this.file).poll_read(cx, &mut rb) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => {
                tracing::warn!(error = %e, "Static asset read failed while streaming");
                Poll::Ready(Some(Err(Box::new(e))))
            }
            Poll::Ready(Ok(())) => {
                let n = rb.filled().len();
                if n == 0 {
                    return Poll::Ready(Some(Err(Box::new(Truncated(this.remaining)))));
                }
                this.remaining -= n as u64;
                let chunk = this.buf.split_to(n).freeze();
                Poll::Ready(Some(Ok(Frame::data(chunk))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tako_ipc::route::parse_route;

    #[test]
    fn decoding_rules() {
        assert_eq!(decode("/a/b.js"), Decoded::File(b"a/b.js".to_vec()));
        assert_eq!(decode("/a%20b.js"), Decoded::File(b"a b.js".to_vec()));
        assert_eq!(decode("/a%2Fb.js"), Decoded::NotAFile);
        assert_eq!(decode("/a%2fb.js"), Decoded::NotAFile);
        for bad in [
            "/../x.js",
            "/a/%2e%2e/x.js",
            "/a/.%2E/x.js",
            "/a%00.js",
            "/a%5cb.js",
            "/a\\b.js",
            "/..",
        ] {
            assert_eq!(decode(bad), Decoded::Refused, "{bad}");
        }
        // A dot segment and `...` are not `..`.
        assert_eq!(decode("/./a...js"), Decoded::File(b"./a...js".to_vec()));
        // A stray `%` stays literal.
        assert_eq!(decode("/100%.js"), Decoded::File(b"100%.js".to_vec()));
        assert_eq!(decode("/a%2.js"), Decoded::File(b"a%2.js".to_vec()));
    }

    #[test]
    fn dotfiles_are_hidden() {
        for path in [
            "/.env",
            "/.git/config",
            "/a/.secret",
            "/a/b/.x.js",
            "/%2eenv",
            "/%2Egit/HEAD",
            "/a%2F.env",
            "/.well-known/.inner",
            "/.well-known/a/.b",
            "/./a.js",
            "/.well-knownx/a",
            "/.Well-Known/a",
        ] {
            assert!(is_hidden(&Method::GET, path), "{path}");
            assert!(is_hidden(&Method::HEAD, path), "{path}");
        }
        for path in [
            "/",
            "",
            "/a.js",
            "/a/b.c/d",
            "/a./b",
            "/a/x.env",
            "/.well-known/security.txt",
            "/.well-known/acme-challenge/tok",
            "/a/.well-known/x",
            "/100%.js",
            "/%2",
            "/a%2e",
        ] {
            assert!(!is_hidden(&Method::GET, path), "{path}");
        }
        // Traversal keeps its own answer (400 from the static stage).
        for path in [
            "/../.env",
            "/%2e%2e/secret.txt",
            "/.git/../a.js",
            "/..%5csecret.txt",
            "/.env%00.js",
        ] {
            assert!(!is_hidden(&Method::GET, path), "{path}");
        }
        // Other methods are the app's business: nothing is served from public/ for them.
        assert!(!is_hidden(&Method::POST, "/.env"));
    }

    #[test]
    fn inside_refuses_dot_segments_after_resolution() {
        let root = Path::new("/r/public");
        assert!(inside(root, Path::new("/r/public/a/b.js")));
        assert!(inside(root, Path::new("/r/public/.well-known/x.txt")));
        assert!(!inside(root, Path::new("/r/public/.env")));
        assert!(!inside(root, Path::new("/r/public/a/.git/config")));
        assert!(!inside(root, Path::new("/r/publicx/a.js")));
        assert!(!inside(root, Path::new("/r/secret.txt")));
    }

    #[test]
    fn candidate_paths() {
        let p = parse_route("example.com/app/*").unwrap();
        assert_eq!(
            candidates("/app/assets/main.js", &p),
            vec!["/app/assets/main.js", "/assets/main.js"]
        );
        let g = parse_route("example.com/api*").unwrap();
        assert_eq!(
            candidates("/apiv2/x.js", &g),
            vec!["/apiv2/x.js", "/v2/x.js"]
        );
        let e = parse_route("example.com/logo.png").unwrap();
        assert_eq!(candidates("/logo.png", &e), vec!["/logo.png", "/"]);
        let h = parse_route("example.com").unwrap();
        assert_eq!(candidates("/a.css", &h), vec!["/a.css"]);
        assert!(is_candidate(&Method::GET, "/a/b.css"));
        assert!(is_candidate(&Method::HEAD, "/b.css"));
        assert!(!is_candidate(&Method::POST, "/b.css"));
        assert!(!is_candidate(&Method::GET, "/a.b/c"));
        assert!(!is_candidate(&Method::GET, "/c."));
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-4", 10), RangeReq::Part(0, 4));
        assert_eq!(parse_range("bytes=5-", 10), RangeReq::Part(5, 9));
        assert_eq!(parse_range("bytes=-3", 10), RangeReq::Part(7, 9));
        assert_eq!(parse_range("bytes=-30", 10), RangeReq::Part(0, 9));
        assert_eq!(parse_range("bytes=2-100", 10), RangeReq::Part(2, 9));
        assert_eq!(parse_range("bytes=10-", 10), RangeReq::Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 10), RangeReq::Unsatisfiable);
        assert_eq!(parse_range("bytes=0-1,3-4", 10), RangeReq::Full);
        assert_eq!(parse_range("bytes=5-2", 10), RangeReq::Full);
        assert_eq!(parse_range("items=0-1", 10), RangeReq::Full);
        assert_eq!(parse_range("bytes=x-1", 10), RangeReq::Full);
        assert_eq!(parse_range("bytes=0-0", 0), RangeReq::Unsatisfiable);
    }

    #[test]
    fn validators() {
        assert!(none_match("\"3-5\"", "\"3-5\""));
        assert!(none_match("W/\"3-5\"", "\"3-5\""));
        assert!(none_match("\"x\", \"3-5\"", "\"3-5\""));
        assert!(none_match("*", "\"3-5\""));
        assert!(!none_match("\"3-6\"", "\"3-5\""));
        assert!(if_range_matches("\"3-5\"", "\"3-5\"", 5));
        assert!(!if_range_matches("W/\"3-5\"", "\"3-5\"", 5));
        assert!(if_range_matches(&httpdate::format(5), "\"3-5\"", 5));
        assert!(!if_range_matches(&httpdate::format(6), "\"3-5\"", 5));
        assert_eq!(mime("/A.PNG"), "image/png");
        assert_eq!(mime("/x.webmanifest"), "application/manifest+json");
        assert_eq!(mime("/x.unknown"), "application/octet-stream");
    }
}
