//! A thin IO wrapper in front of the HTTP/1 connection loop (h1/). It reads each request's
//! header section itself, before the loop sees a byte of it, and answers what an HTTP/1 server
//! would answer badly or not at all (routing-and-proxy.md §4, §13, §14). It was written for
//! hyper's server, which the loop replaced; the reasons below are why it exists at all, and it
//! still means the loop only ever parses heads that were already checked:
//!
//! - hyper's automatic answers to parse errors and header limits (400, 414, 431) have no body,
//!   no `Content-Type` and no `Cache-Control`; hyper offers no hook to change them. Here every
//!   head is checked at least as strictly as hyper's parser checks it, so hyper never has to
//!   refuse one, and the refusal carries the §14 text and `Connection: close`.
//! - Smuggling patterns: hyper accepts `Content-Length` with `Transfer-Encoding` (it drops the
//!   length), so the pipeline cannot see the pair; here it is a 400. Differing duplicate
//!   lengths and HTTP/0.9 request lines are 400 as well.
//! - hyper's header read timeout closes the connection silently and also applies to idle
//!   keep-alive connections, so it cannot give the 408 for a partial head nor a 60 s idle
//!   keep-alive. Both timers live here instead: 10 s for the first head of a connection or for
//!   a head whose first byte arrived, 60 s idle between requests, 60 s without a body byte.
//!
//! To know where the next head starts it follows the body framing of each request
//! (`Content-Length` or chunked). After an upgrade request it stops scanning until the
//! answer is known: a 101 turns it into a plain pipe for good; any other answer resumes
//! scanning (bytes sent before that answer pass unscanned, which only matters for a
//! client that pipelines after an upgrade request).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use crate::lazy_timer::LazyTimer;
use crate::listeners::{HEADER_READ_TIMEOUT, MAX_HEADER_BYTES, MAX_HEADER_FIELDS};
use crate::pipeline::MAX_TARGET_LEN;
use crate::responses::Canned;

/// Idle keep-alive between two requests (§13).
pub const KEEP_ALIVE_IDLE: Duration = Duration::from_secs(60);
/// A request body that sends nothing for this long ends the connection (§13).
pub const BODY_IDLE: Duration = Duration::from_secs(60);
/// Longest chunk-size or trailer line followed before giving up on framing.
const MAX_LINE: usize = 8 * 1024;

/// What the service and the wrapper of one connection share.
pub struct ConnState {
    /// Requests whose answer is finished (response body done or dropped).
    completed: AtomicU64,
    upgraded: AtomicBool,
    idle_since: Mutex<Instant>,
    waker: Mutex<Option<Waker>>,
}

impl Default for ConnState {
    fn default() -> Self {
        Self {
            completed: AtomicU64::new(0),
            upgraded: AtomicBool::new(false),
            idle_since: Mutex::new(Instant::now()),
            waker: Mutex::new(None),
        }
    }
}

impl ConnState {
    /// A request is being served until the guard drops (its response body is done).
    pub fn begin(self: &Arc<Self>) -> RequestGuard {
        RequestGuard(Arc::clone(self))
    }

    /// The response is a 101: the connection becomes a tunnel.
    pub fn mark_upgraded(&self) {
        self.upgraded.store(true, Ordering::Release);
        self.wake();
    }

    fn wake(&self) {
        if let Ok(mut w) = self.waker.lock() {
            if let Some(w) = w.take() {
                w.wake();
            }
        }
    }

    /// Whether some of the `released` heads are still being answered. Counting finished
    /// answers against released heads (instead of requests begun) leaves no gap between
    /// the moment hyper gets a head and the moment the service starts.
    fn busy(&self, released: u64) -> bool {
        self.completed.load(Ordering::Acquire) < released
    }

    fn idle_since(&self) -> Instant {
        self.idle_since
            .lock()
            .map_or_else(|_| Instant::now(), |t| *t)
    }
}

pub struct RequestGuard(Arc<ConnState>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.completed.fetch_add(1, Ordering::AcqRel);
        if let Ok(mut t) = self.0.idle_since.lock() {
            *t = Instant::now();
        }
        self.0.wake();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Reading a chunk-size line.
    Size,
    Data(u64),
    /// The CRLF after chunk data.
    DataEnd,
    /// Trailer lines up to the empty one.
    Trailer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Head,
    Length(u64),
    Chunked(Chunk),
    AwaitUpgrade,
    Transparent,
}

/// Body framing of a checked head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
    Upgrade,
}

/// A refusal: what to answer, and whether the request was a HEAD (no body then).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal(pub Canned, pub bool);

/// RFC 9110 `tchar`, as a table: every byte of every header name goes through it.
static TCHAR: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            );
        b += 1;
    }
    t
};

fn is_tchar(b: u8) -> bool {
    TCHAR[usize::from(b)]
}

fn lines(head: &[u8]) -> impl Iterator<Item = &[u8]> {
    head.split(|b| *b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
}

fn skip_empty_lines(head: &[u8]) -> &[u8] {
    let mut h = head;
    while let Some(rest) = h.strip_prefix(b"\r\n").or_else(|| h.strip_prefix(b"\n")) {
        h = rest;
    }
    h
}

/// Position just past the blank line that ends the head, if it arrived.
fn head_end(buf: &[u8]) -> Option<usize> {
    let start = buf.len() - skip_empty_lines(buf).len();
    let b = &buf[start..];
    let mut i = 0;
    while let Some(p) = b[i..].iter().position(|c| *c == b'\n') {
        let at = i + p;
        let next = &b[at + 1..];
        if next.starts_with(b"\n") {
            return Some(start + at + 2);
        }
        if next.starts_with(b"\r\n") {
            return Some(start + at + 3);
        }
        if next.is_empty() || next == b"\r" {
            return None;
        }
        i = at + 1;
    }
    None
}

/// A complete first line that cannot start an HTTP/1.x request (HTTP/0.9 among them).
fn bad_request_line(buf: &[u8]) -> Option<Refusal> {
    let b = skip_empty_lines(buf);
    let end = b.iter().position(|c| *c == b'\n')?;
    let line = b[..end].strip_suffix(b"\r").unwrap_or(&b[..end]);
    let parts: Vec<&[u8]> = line.split(|c| *c == b' ').collect();
    match parts.as_slice() {
        [_, _, version] if version.starts_with(b"HTTP/1.") => None,
        _ => Some(Refusal(Canned::BadRequest, line.starts_with(b"HEAD "))),
    }
}

/// The answer for a head that exceeds the size limit without ending.
fn oversized(buf: &[u8]) -> Refusal {
    let b = skip_empty_lines(buf);
    let line_end = b.iter().position(|c| *c == b'\n').unwrap_or(b.len());
    let line = &b[..line_end];
    let head = line.starts_with(b"HEAD ");
    let target_len = line
        .split(|c| *c == b' ')
        .nth(1)
        .map_or(line.len(), <[u8]>::len);
    if target_len > MAX_TARGET_LEN {
        Refusal(Canned::UriTooLong, head)
    } else {
        Refusal(Canned::HeaderFieldsTooLarge, head)
    }
}

/// Checks one complete header section and finds its body framing.
pub fn check_head(head: &[u8]) -> Result<Framing, Refusal> {
    let head = skip_empty_lines(head);
    let mut it = lines(head);
    let request_line = it.next().unwrap_or_default();
    let mut parts = request_line.split(|c| *c == b' ');
    let first = parts.next();
    let is_head = first == Some(&b"HEAD"[..]);
    let bad = Refusal(Canned::BadRequest, is_head);
    // HTTP/0.9 (`GET /`) and anything that is not `method SP target SP version`.
    let (Some(method), Some(target), Some(version), None) =
        (first, parts.next(), parts.next(), parts.next())
    else {
        return Err(bad);
    };
    if method.is_empty() || !method.iter().all(|b| is_tchar(*b)) {
        return Err(bad);
    }
    if target.len() > MAX_TARGET_LEN {
        return Err(Refusal(Canned::UriTooLong, is_head));
    }
    if target.is_empty() || target.iter().any(|b| *b < 0x21 || *b == 0x7f) {
        return Err(bad);
    }
    let http10 = match version {
        b"HTTP/1.1" => false,
        b"HTTP/1.0" => true,
        _ => return Err(bad),
    };

    let mut fields = 0usize;
    let mut lengths: Vec<u64> = Vec::new();
    let mut te: Vec<String> = Vec::new();
    let mut upgrade = false;
    let mut connection_upgrade = false;
    for line in it {
        if line.is_empty() {
            break;
        }
        fields += 1;
        if fields > MAX_HEADER_FIELDS {
            return Err(Refusal(Canned::HeaderFieldsTooLarge, is_head));
        }
        // obs-fold and whitespace before the colon are refused (RFC 9112 §5.1, §5.2).
        let colon = line.iter().position(|c| *c == b':').ok_or(bad)?;
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if name.is_empty() || !name.iter().all(|b| is_tchar(*b)) {
            return Err(bad);
        }
        if value
            .iter()
            .any(|b| (*b < 0x20 && *b != b'\t') || *b == 0x7f)
        {
            return Err(bad);
        }
        // Only the four fields looked at below need their value as text.
        let interesting = [
            &b"content-length"[..],
            b"transfer-encoding",
            b"upgrade",
            b"connection",
        ]
        .iter()
        .any(|n| name.eq_ignore_ascii_case(n));
        if !interesting {
            continue;
        }
        let value = String::from_utf8_lossy(value);
        let value = value.trim();
        if name.eq_ignore_ascii_case(b"content-length") {
            for v in value.split(',') {
                let v = v.trim();
                if v.is_empty() || !v.bytes().all(|c| c.is_ascii_digit()) {
                    return Err(bad);
                }
                lengths.push(v.parse().map_err(|_| bad)?);
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            te.extend(
                value
                    .split(',')
                    .map(|c| c.trim().to_ascii_lowercase())
                    .filter(|c| !c.is_empty()),
            );
            if value.trim().is_empty() {
                return Err(bad);
            }
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            upgrade = !value.is_empty();
        } else if name.eq_ignore_ascii_case(b"connection") {
            connection_upgrade |= value
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
        }
    }
    if lengths.windows(2).any(|w| w[0] != w[1]) {
        return Err(bad);
    }
    if !te.is_empty() {
        // CL + TE is the classic smuggling pair; HTTP/1.0 has no chunked coding; a request
        // whose last coding is not chunked has no knowable end.
        if !lengths.is_empty() || http10 || te.last().map(String::as_str) != Some("chunked") {
            return Err(bad);
        }
        return Ok(Framing::Chunked);
    }
    if upgrade && connection_upgrade && !http10 {
        return Ok(Framing::Upgrade);
    }
    Ok(match lengths.first() {
        Some(&n) if n > 0 => Framing::Length(n),
        _ => Framing::None,
    })
}

/// The wrapper. See the module documentation.
pub struct HeadGuard<I> {
    inner: I,
    state: Arc<ConnState>,
    mode: Mode,
    /// The head being collected (not yet given to the connection loop).
    head: Vec<u8>,
    head_started: Option<Instant>,
    /// Chunk-size or trailer line being followed.
    line: Vec<u8>,
    /// Checked bytes waiting for the connection loop.
    out: Vec<u8>,
    out_pos: usize,
    /// No request head was completed yet on this connection.
    first: bool,
    /// Heads given to the connection loop so far.
    released: u64,
    opened: Instant,
    last_body_byte: Instant,
    /// Wakes the reader at the current deadline (or earlier, and is then moved).
    timer: LazyTimer,
    /// The refusal being written, and how much of it went out.
    refusal: Option<(Vec<u8>, usize)>,
    /// The connection loop wrote bytes it has not flushed yet.
    unflushed: bool,
    done: bool,
}

impl<I> HeadGuard<I> {
    pub fn new(inner: I, state: Arc<ConnState>) -> Self {
        let now = Instant::now();
        Self {
            inner,
            state,
            mode: Mode::Head,
            head: Vec::new(),
            head_started: None,
            line: Vec::new(),
            out: Vec::new(),
            out_pos: 0,
            first: true,
            released: 0,
            opened: now,
            last_body_byte: now,
            timer: LazyTimer::at(now + HEADER_READ_TIMEOUT),
            refusal: None,
            unflushed: false,
            done: false,
        }
    }

    fn refuse(&mut self, r: Refusal) {
        tracing::debug!(
            status = r.0.status().as_u16(),
            "Request refused before parsing"
        );
        self.refusal = Some((r.0.raw_close(r.1), 0));
        self.head.clear();
    }

    /// Sorts freshly read bytes into checked output, the pending head, or a refusal.
    fn feed(&mut self, input: &[u8]) {
        // The common case: a whole, valid head arrives in one read with nothing pending. It
        // goes to the output without being collected first; anything else takes the long way.
        if self.mode == Mode::Head && self.head.is_empty() && self.refusal.is_none() {
            if let Some(end) = head_end(input).filter(|&end| end <= MAX_HEADER_BYTES) {
                if let Ok(framing) = check_head(&input[..end]) {
                    self.out.extend_from_slice(&input[..end]);
                    self.release(framing);
                    if end < input.len() {
                        self.feed_slow(&input[end..]);
                    }
                    return;
                }
            }
        }
        self.feed_slow(input);
    }

    /// A checked head went to the output: follow its body.
    fn release(&mut self, framing: Framing) {
        self.first = false;
        self.released += 1;
        self.head_started = None;
        if matches!(framing, Framing::Length(_) | Framing::Chunked) {
            // Only a body has an idle limit: no clock read for a bodiless request.
            self.last_body_byte = Instant::now();
        }
        self.mode = match framing {
            Framing::None => Mode::Head,
            Framing::Length(n) => Mode::Length(n),
            Framing::Chunked => Mode::Chunked(Chunk::Size),
            Framing::Upgrade => Mode::AwaitUpgrade,
        };
    }

    fn feed_slow(&mut self, input: &[u8]) {
        let mut buf = input.to_vec();
        let mut pos = 0;
        while pos < buf.len() && self.refusal.is_none() {
            let data = &buf[pos..];
            match self.mode {
                Mode::Transparent | Mode::AwaitUpgrade => {
                    self.out.extend_from_slice(data);
                    return;
                }
                Mode::Head => {
                    if self.head.is_empty() {
                        self.head_started = Some(Instant::now());
                    }
                    let before = self.head.len();
                    // Only look at what could still belong to this head.
                    let room = (MAX_HEADER_BYTES + 4).saturating_sub(before);
                    let take = data.len().min(room.max(1));
                    self.head.extend_from_slice(&data[..take]);
                    pos += take;
                    let Some(end) = head_end(&self.head) else {
                        if let Some(r) = bad_request_line(&self.head) {
                            // HTTP/0.9 sends one line and waits: answer now, not at 408.
                            self.refuse(r);
                        } else if self.head.len() > MAX_HEADER_BYTES {
                            let r = oversized(&self.head);
                            self.refuse(r);
                        }
                        continue;
                    };
                    if end > MAX_HEADER_BYTES {
                        let r = oversized(&self.head);
                        self.refuse(r);
                        continue;
                    }
                    // Bytes after the head go back in front of what is left to sort.
                    let rest = self.head.split_off(end);
                    match check_head(&self.head) {
                        Err(r) => {
                            self.refuse(r);
                            continue;
                        }
                        Ok(framing) => {
                            self.out.append(&mut self.head);
                            self.release(framing);
                        }
                    }
                    // Bytes read past the head are sorted again under the new mode.
                    buf.splice(pos..pos, rest);
                }
                Mode::Length(n) => {
                    let k = (data.len() as u64).min(n) as usize;
                    self.out.extend_from_slice(&data[..k]);
                    pos += k;
                    self.mode = if n - k as u64 == 0 {
                        Mode::Head
                    } else {
                        Mode::Length(n - k as u64)
                    };
                }
                Mode::Chunked(Chunk::Data(n)) => {
                    let k = (data.len() as u64).min(n) as usize;
                    self.out.extend_from_slice(&data[..k]);
                    pos += k;
                    let left = n - k as u64;
                    self.mode = Mode::Chunked(if left == 0 {
                        Chunk::DataEnd
                    } else {
                        Chunk::Data(left)
                    });
                }
                Mode::Chunked(c) => {
                    // Line-based states: consume up to and including the next LF.
                    let (take, complete) = match data.iter().position(|b| *b == b'\n') {
                        Some(p) => (p + 1, true),
                        None => (data.len(), false),
                    };
                    self.out.extend_from_slice(&data[..take]);
                    self.line.extend_from_slice(&data[..take]);
                    pos += take;
                    if !complete {
                        if self.line.len() > MAX_LINE {
                            // hyper refuses such framing itself; stop following it.
                            self.mode = Mode::Transparent;
                        }
                        continue;
                    }
                    let line = std::mem::take(&mut self.line);
                    let text = String::from_utf8_lossy(&line);
                    let text = text.trim_end_matches(['\r', '\n']);
                    self.mode = match c {
                        Chunk::Size => {
                            let hexpart = text.split(';').next().unwrap_or("").trim();
                            match u64::from_str_radix(hexpart, 16) {
                                Ok(0) => Mode::Chunked(Chunk::Trailer),
                                Ok(n) => Mode::Chunked(Chunk::Data(n)),
                                // hyper answers malformed chunking by closing.
                                Err(_) => Mode::Transparent,
                            }
                        }
                        Chunk::DataEnd => Mode::Chunked(Chunk::Size),
                        Chunk::Trailer if text.is_empty() => Mode::Head,
                        Chunk::Trailer => Mode::Chunked(Chunk::Trailer),
                        Chunk::Data(_) => Mode::Transparent,
                    };
                }
            }
        }
    }

    /// When the current wait ends the connection, if it has a limit at all.
    fn deadline(&self) -> Option<Instant> {
        match self.mode {
            Mode::Head => {
                if let Some(started) = self.head_started {
                    Some(started + HEADER_READ_TIMEOUT)
                } else if self.state.busy(self.released) {
                    None
                } else if self.first {
                    Some(self.opened + HEADER_READ_TIMEOUT)
                } else {
                    Some(self.state.idle_since() + KEEP_ALIVE_IDLE)
                }
            }
            Mode::Length(_) | Mode::Chunked(_) => Some(self.last_body_byte + BODY_IDLE),
            Mode::AwaitUpgrade | Mode::Transparent => None,
        }
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> HeadGuard<I> {
    /// Writes the refusal once the connection loop is quiet, then shuts the write side; after that the
    /// connection reads as closed.
    fn poll_refusal(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.state.busy(self.released) || self.unflushed {
            // A pipelined earlier response is still going out; answer after it.
            self.register(cx);
            return Poll::Pending;
        }
        loop {
            let Some((bytes, pos)) = self.refusal.as_mut() else {
                return Poll::Ready(());
            };
            if *pos >= bytes.len() {
                break;
            }
            match Pin::new(&mut self.inner).poll_write(cx, &bytes[*pos..]) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                    self.done = true;
                    return Poll::Ready(());
                }
                Poll::Ready(Ok(n)) => *pos += n,
                Poll::Pending => return Poll::Pending,
            }
        }
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(_) => {}
        }
        match Pin::new(&mut self.inner).poll_shutdown(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(_) => {
                self.done = true;
                Poll::Ready(())
            }
        }
    }

    fn register(&self, cx: &mut Context<'_>) {
        if let Ok(mut w) = self.state.waker.lock() {
            *w = Some(cx.waker().clone());
        }
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> AsyncRead for HeadGuard<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.out_pos < this.out.len() {
                let n = buf.remaining().min(this.out.len() - this.out_pos);
                buf.put_slice(&this.out[this.out_pos..this.out_pos + n]);
                this.out_pos += n;
                if this.out_pos == this.out.len() {
                    this.out.clear();
                    this.out_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.done {
                return Poll::Ready(Ok(()));
            }
            if this.refusal.is_some() {
                match this.poll_refusal(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(()) => {
                        this.done = true;
                        return Poll::Ready(Ok(()));
                    }
                }
            }
            if this.mode == Mode::AwaitUpgrade {
                if this.state.upgraded.load(Ordering::Acquire) {
                    this.mode = Mode::Transparent;
                } else if !this.state.busy(this.released) {
                    this.mode = Mode::Head;
                } else {
                    this.register(cx);
                }
            }
            if this.mode == Mode::Transparent {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            if let Some(at) = this.deadline() {
                if this.timer.passed(at) {
                    if this.mode == Mode::Head && !this.head.is_empty() {
                        let head = this.head.starts_with(b"HEAD ");
                        this.refuse(Refusal(Canned::RequestTimeout, head));
                        continue;
                    }
                    if matches!(this.mode, Mode::Length(_) | Mode::Chunked(_)) {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "request body idle for 60 s",
                        )));
                    }
                    // Idle, or nothing of a request arrived in time: close quietly.
                    this.done = true;
                    return Poll::Ready(Ok(()));
                }
            } else if this.mode == Mode::Head {
                // A request is in flight: look again when it ends.
                this.register(cx);
            }

            // Uninitialised: zeroing 16 KiB on every poll was the worker's largest cost.
            let mut tmp = [std::mem::MaybeUninit::<u8>::uninit(); 16 * 1024];
            let mut rb = ReadBuf::uninit(&mut tmp);
            match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => {
                    let got = rb.filled();
                    if got.is_empty() {
                        // EOF. A partial head is dropped: there is nobody to answer.
                        this.done = true;
                        return Poll::Ready(Ok(()));
                    }
                    if matches!(this.mode, Mode::Length(_) | Mode::Chunked(_)) {
                        this.last_body_byte = Instant::now();
                    }
                    this.feed(got);
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    if let Some(at) = this.deadline() {
                        // Fired: the deadline is looked at again above.
                        if this.timer.poll_expired(cx, at).is_ready() {
                            continue;
                        }
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> AsyncWrite for HeadGuard<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.unflushed = true;
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.unflushed = true;
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        if matches!(r, Poll::Ready(Ok(()))) {
            self.unflushed = false;
            self.state.wake();
        }
        r
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(s: &str) -> Result<Framing, Canned> {
        check_head(s.as_bytes()).map_err(|r| r.0)
    }

    #[test]
    fn heads() {
        assert_eq!(
            check("GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
            Ok(Framing::None)
        );
        assert_eq!(check("\r\nGET / HTTP/1.1\nHost: a\n\n"), Ok(Framing::None));
        assert_eq!(
            check("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n"),
            Ok(Framing::Length(5))
        );
        assert_eq!(
            check("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Ok(Framing::Chunked)
        );
        assert_eq!(
            check("GET /ws HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n"),
            Ok(Framing::Upgrade)
        );
        let bad = Err(Canned::BadRequest);
        for s in [
            "GET /\r\n\r\n",
            "GET / HTTP/1.1 x\r\n\r\n",
            "GET / HTTP/2.0\r\nHost: a\r\n\r\n",
            "G@T / HTTP/1.1\r\nHost: a\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
            "POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
            "GET / HTTP/1.1\r\nHost : a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
            "GET / HTTP/1.1\r\nNoColon\r\n\r\n",
        ] {
            assert_eq!(check(s), bad, "{s:?}");
        }
        let many: String = (0..129).map(|i| format!("X-{i}: v\r\n")).collect();
        assert_eq!(
            check(&format!("GET / HTTP/1.1\r\n{many}\r\n")),
            Err(Canned::HeaderFieldsTooLarge)
        );
        let long = "a".repeat(MAX_TARGET_LEN + 1);
        assert_eq!(
            check(&format!("GET /{long} HTTP/1.1\r\nHost: a\r\n\r\n")),
            Err(Canned::UriTooLong)
        );
    }

    #[test]
    fn http09_is_refused_on_its_first_line() {
        assert!(bad_request_line(b"GET /\r\n").is_some());
        assert!(bad_request_line(b"\r\nGET /x HTTP/1.1\r\n").is_none());
        assert!(
            bad_request_line(b"GET /x HTTP/1.1").is_none(),
            "line not complete yet"
        );
    }

    #[test]
    fn tchar_table_matches_rfc_9110() {
        let listed = b"!#$%&'*+-.^_`|~";
        for b in 0..=255u8 {
            let expected = b.is_ascii_alphanumeric() || listed.contains(&b);
            assert_eq!(is_tchar(b), expected, "byte {b}");
        }
    }

    #[test]
    fn head_end_finds_the_blank_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nrest"), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\nrest"), Some(16));
        assert_eq!(
            head_end(b"\r\n\r\nGET / HTTP/1.1\r\nA: b\r\n\r\n"),
            Some(28)
        );
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n"), None);
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n\r"), None);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn framing_is_followed_across_requests() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (client, server) = tokio::io::duplex(1 << 16);
        let state = Arc::new(ConnState::default());
        let mut guard = HeadGuard::new(server, Arc::clone(&state));
        // Plays the service: both passed requests are answered, so the refusal may go out.
        drop(state.begin());
        drop(state.begin());
        let mut client = client;
        let first = "POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
        let second = "POST /b HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nGET ";
        let third =
            "GET /c HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        client
            .write_all(format!("{first}{second}{third}").as_bytes())
            .await
            .unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = guard.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
        }
        // The first two pass whole (a body that looks like a request line is a body); the
        // third is refused and never reaches hyper.
        assert_eq!(String::from_utf8_lossy(&seen), format!("{first}{second}"));
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{answer}"
        );
        assert!(answer.contains("Connection: close\r\n"), "{answer}");
        assert!(answer.ends_with("\r\n\r\nBad Request"), "{answer}");
    }
}
