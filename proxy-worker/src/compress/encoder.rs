//! The streaming encoder: a response body that compresses its inner body frame by frame. It
//! never holds the whole body: what one input frame compresses to goes out with it (or with a
//! later one, when the encoder keeps it for its window), and whenever the inner body has
//! nothing ready the encoder is flushed, so a slow stream reaches the client as it comes.

use std::io::Write;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use brotli::CompressorWriter;
use bytes::Bytes;
use flate2::write::GzEncoder;
use hyper::body::{Body as HttpBody, Frame, SizeHint};

use super::Coding;
use crate::body::{Body, BoxError};

/// gzip level 2: the pure-Rust deflate's level 1 is fast but leaves JSON 7 % larger than
/// zlib's level 1; its level 2 is smaller than that at about zlib's speed
/// (BENCHMARKS.md, "Compression").
pub const GZIP_LEVEL: u32 = 2;
/// brotli quality 3: about a quarter faster than 4 and two fifths less memory on large
/// bodies, for 3 to 5 % more bytes; still well below gzip's size.
pub const BROTLI_QUALITY: u32 = 3;
/// brotli window, log2 bytes: 2^18 = 256 KiB caps the encoder's ring buffer (and so its memory
/// per stream) whatever the body's size.
pub const BROTLI_LGWIN: u32 = 18;
/// The brotli writer's output staging buffer.
const BROTLI_BUFFER: usize = 4096;
/// Responses one worker compresses at once. An encoder holds up to about 1.5 MB (brotli on a
/// large body; gzip about 0.4 MB), so this bounds the worker's memory for them near 190 MB;
/// past it answers go out unencoded (docs/limits.md).
pub const MAX_ENCODERS: usize = 128;

static ACTIVE: AtomicUsize = AtomicUsize::new(0);

/// One of the worker's [`MAX_ENCODERS`] places, given back when dropped.
pub struct Permit(&'static AtomicUsize);

impl Permit {
    pub fn take() -> Option<Permit> {
        Permit::take_from(&ACTIVE, MAX_ENCODERS)
    }

    fn take_from(active: &'static AtomicUsize, max: usize) -> Option<Permit> {
        active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Permit(active))
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
#[test]
fn permits_are_bounded_and_given_back() {
    static COUNT: AtomicUsize = AtomicUsize::new(0);
    let held: Vec<Permit> = (0..3)
        .filter_map(|_| Permit::take_from(&COUNT, 3))
        .collect();
    assert_eq!(held.len(), 3);
    assert!(Permit::take_from(&COUNT, 3).is_none(), "a fourth at once");
    drop(held);
    assert_eq!(COUNT.load(Ordering::Acquire), 0);
    assert!(Permit::take_from(&COUNT, 3).is_some());
}

enum Engine {
    Gzip(GzEncoder<Vec<u8>>),
    Brotli(Box<CompressorWriter<Vec<u8>>>),
}

impl Engine {
    fn new(coding: Coding) -> Option<Engine> {
        match coding {
            Coding::Identity => None,
            Coding::Gzip => Some(Engine::Gzip(GzEncoder::new(
                Vec::new(),
                flate2::Compression::new(GZIP_LEVEL),
            ))),
            Coding::Brotli => Some(Engine::Brotli(Box::new(CompressorWriter::new(
                Vec::new(),
                BROTLI_BUFFER,
                BROTLI_QUALITY,
                BROTLI_LGWIN,
            )))),
        }
    }

    fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            Engine::Gzip(e) => e.write_all(data),
            Engine::Brotli(e) => e.write_all(data),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Engine::Gzip(e) => e.flush(),
            Engine::Brotli(e) => e.flush(),
        }
    }

    /// The compressed bytes produced so far, taken out.
    fn take(&mut self) -> Vec<u8> {
        match self {
            Engine::Gzip(e) => std::mem::take(e.get_mut()),
            Engine::Brotli(e) => std::mem::take(e.get_mut()),
        }
    }

    /// Ends the stream: the rest of the output and the coding's trailer.
    fn finish(self) -> std::io::Result<Vec<u8>> {
        match self {
            Engine::Gzip(e) => e.finish(),
            Engine::Brotli(e) => Ok(e.into_inner()),
        }
    }
}

pub struct Encoder {
    inner: Body,
    /// `None` once the stream is finished.
    engine: Option<Engine>,
    /// Input went in since the last output: a flush would produce bytes.
    unflushed: bool,
    /// Released with the engine, when the stream ends or the client goes away.
    permit: Option<Permit>,
}

impl Encoder {
    /// `inner` encoded with `coding`; identity leaves it as it is.
    pub fn wrap(inner: Body, coding: Coding, permit: Permit) -> Body {
        match Engine::new(coding) {
            None => inner,
            Some(engine) => http_body_util::combinators::UnsyncBoxBody::new(Encoder {
                inner,
                engine: Some(engine),
                unflushed: false,
                permit: Some(permit),
            }),
        }
    }

    /// The stream is over (ended, failed): the engine's memory and the place go at once,
    /// not when the body is dropped.
    fn done(&mut self) {
        self.engine = None;
        self.permit = None;
    }
}

type Polled = Poll<Option<Result<Frame<Bytes>, BoxError>>>;

fn data(out: Vec<u8>) -> Polled {
    Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))))
}

fn failed(e: std::io::Error) -> Polled {
    Poll::Ready(Some(Err(Box::new(e))))
}

impl HttpBody for Encoder {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Polled {
        let this = &mut *self;
        loop {
            let Some(engine) = this.engine.as_mut() else {
                return Poll::Ready(None);
            };
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    // Trailers are dropped: the HTTP/1 path never sends them either.
                    if let Some(input) = frame.data_ref().filter(|d| !d.is_empty()) {
                        if let Err(e) = engine.write(input) {
                            this.done();
                            return failed(e);
                        }
                        this.unflushed = true;
                    }
                    // The usual whole body in one frame leaves with its trailer in one frame.
                    if !this.inner.is_end_stream() {
                        let out = engine.take();
                        if !out.is_empty() {
                            this.unflushed = false;
                            return data(out);
                        }
                        continue;
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    this.done();
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(None) => {}
                Poll::Pending => {
                    if !this.unflushed {
                        return Poll::Pending;
                    }
                    this.unflushed = false;
                    if let Err(e) = engine.flush() {
                        this.done();
                        return failed(e);
                    }
                    let out = engine.take();
                    return if out.is_empty() {
                        Poll::Pending
                    } else {
                        data(out)
                    };
                }
            }
            // The inner body has ended.
            let Some(engine) = this.engine.take() else {
                return Poll::Ready(None);
            };
            let finished = engine.finish();
            this.permit = None;
            return match finished {
                Ok(out) => data(out),
                Err(e) => failed(e),
            };
        }
    }

    fn is_end_stream(&self) -> bool {
        self.engine.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        if self.engine.is_none() {
            SizeHint::with_exact(0)
        } else {
            SizeHint::default()
        }
    }
}
