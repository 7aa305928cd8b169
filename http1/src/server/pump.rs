//! The second stage of a request: while the service answers, the pump reads the request body
//! off the connection and hands it on, one frame at a time, as fast as the service takes it
//! (the loop in mod.rs runs both).

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::time::Instant;

use super::body::{OwnBody, Sender};
use super::conn::{read_by, Wait};
use super::head_check::BodyFraming;
use super::Io;
use crate::chunked::{ChunkedDecoder, Step};
use crate::rewind::{DIRECT_READ, DIRECT_READ_MAX};
use crate::{BoxError, LazyTimer};

/// A request body the service did not read (an answer that needs none) is read and dropped
/// up to this much, within this long, to keep the connection; past that it closes.
const DRAIN_BYTES: usize = 64 * 1024;
const DRAIN_WAIT: Duration = Duration::from_secs(1);

/// Where reading a request body stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BodyRead {
    Reading,
    Done,
    /// The service dropped the body unread: the rest is drained after the answer.
    Unwanted,
    /// The client closed, went idle or broke the framing: the connection ends with the answer.
    Broken,
}

/// Reads of a request body: each must bring a byte within `idle` of the last one.
pub(super) struct BodyReads<'a> {
    pub timer: &'a mut LazyTimer,
    pub idle: Duration,
    pub last_byte: Instant,
}

impl BodyReads<'_> {
    /// One read, `direct` as in [`read_by`].
    async fn read<I: Io>(
        &mut self,
        io: &mut I,
        rbuf: &mut BytesMut,
        direct: usize,
    ) -> Result<(), BoxError> {
        match read_by(io, rbuf, direct, self.timer, self.last_byte + self.idle).await {
            Wait::Data => {
                self.last_byte = Instant::now();
                Ok(())
            }
            Wait::Closed => Err("client closed the connection in the middle of the body".into()),
            Wait::TimedOut => Err(format!("request body idle for {:?}", self.idle).into()),
        }
    }
}

/// Moves the request body from the connection to the service, one frame per step.
pub(super) struct Pump {
    tx: Sender,
    left: u64,
    chunked: Option<ChunkedDecoder>,
}

impl Pump {
    /// The body the service reads and the pump that fills it, for a request with a body.
    pub fn for_request(framing: BodyFraming) -> Option<(OwnBody, Pump)> {
        let length = match framing {
            BodyFraming::None => return None,
            BodyFraming::Length(n) => Some(n),
            BodyFraming::Chunked => None,
        };
        let (tx, body) = OwnBody::channel(length);
        Some((body, Pump::new(tx, framing)))
    }

    fn new(tx: Sender, framing: BodyFraming) -> Self {
        match framing {
            BodyFraming::Chunked => Self {
                tx,
                left: 0,
                chunked: Some(ChunkedDecoder::new()),
            },
            BodyFraming::Length(n) => Self {
                tx,
                left: n,
                chunked: None,
            },
            BodyFraming::None => Self {
                tx,
                left: 0,
                chunked: None,
            },
        }
    }

    pub async fn step<I: Io>(
        &mut self,
        io: &mut I,
        rbuf: &mut BytesMut,
        reads: &mut BodyReads<'_>,
    ) -> BodyRead {
        let tx = self.tx.clone();
        let Ok(permit) = tx.reserve().await else {
            return BodyRead::Unwanted;
        };
        match self.next_data(io, rbuf, reads).await {
            Ok(Some(data)) => {
                permit.send(Ok(data));
                if self.finished() {
                    BodyRead::Done
                } else {
                    BodyRead::Reading
                }
            }
            Ok(None) => BodyRead::Done,
            Err(e) => {
                permit.send(Err(e));
                BodyRead::Broken
            }
        }
    }

    fn finished(&self) -> bool {
        match &self.chunked {
            Some(_) => false,
            None => self.left == 0,
        }
    }

    /// The next piece of the body; `None` at its end.
    async fn next_data<I: Io>(
        &mut self,
        io: &mut I,
        rbuf: &mut BytesMut,
        reads: &mut BodyReads<'_>,
    ) -> Result<Option<Bytes>, BoxError> {
        loop {
            match &mut self.chunked {
                Some(decoder) => match decoder.step(rbuf)? {
                    Step::Data(data) => return Ok(Some(data)),
                    Step::Done => return Ok(None),
                    Step::NeedMore => {}
                },
                None => {
                    if self.left == 0 {
                        return Ok(None);
                    }
                    if !rbuf.is_empty() {
                        let take =
                            usize::try_from(self.left).map_or(rbuf.len(), |l| l.min(rbuf.len()));
                        self.left -= take as u64;
                        return Ok(Some(rbuf.split_to(take).freeze()));
                    }
                }
            }
            // The rest of a large body of known length is read straight into the buffer.
            let direct = match self.chunked {
                None if self.left >= DIRECT_READ => {
                    usize::try_from(self.left).map_or(DIRECT_READ_MAX, |l| l.min(DIRECT_READ_MAX))
                }
                _ => 0,
            };
            reads.read(io, rbuf, direct).await?;
        }
    }

    /// Reads and drops what the service left of the body, so the connection can carry the
    /// next request; false when that is more than a small amount or does not come quickly.
    pub async fn drain<I: Io>(
        &mut self,
        io: &mut I,
        rbuf: &mut BytesMut,
        reads: &mut BodyReads<'_>,
    ) -> bool {
        let drain = async {
            let mut seen = 0usize;
            while seen <= DRAIN_BYTES {
                match self.next_data(io, rbuf, reads).await {
                    Ok(Some(data)) => seen += data.len(),
                    Ok(None) => return true,
                    Err(_) => return false,
                }
            }
            false
        };
        tokio::time::timeout(DRAIN_WAIT, drain)
            .await
            .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;
    use tokio::io::{AsyncWriteExt, DuplexStream};

    use super::*;

    /// The pump against a service that reads the whole body (or, with `read: false`, none of
    /// it): what the service got, where the body stands, what is left in the buffer, and the
    /// pump when the rest is still to be drained.
    async fn run(
        framing: BodyFraming,
        sent: &[&[u8]],
        read: bool,
    ) -> (Result<Bytes, String>, BodyRead, BytesMut, Option<Pump>) {
        let (mut client, mut io): (DuplexStream, DuplexStream) = tokio::io::duplex(1 << 16);
        let mut rbuf = BytesMut::from(sent[0]);
        let later: Vec<Vec<u8>> = sent[1..].iter().map(|s| s.to_vec()).collect();
        tokio::spawn(async move {
            for piece in later {
                // The pump may be done before it needed every piece.
                if client.write_all(&piece).await.is_err() {
                    return;
                }
                tokio::task::yield_now().await;
            }
            // Kept open: the end of the body must come from its framing.
            std::future::pending::<()>().await;
        });
        let (body, mut pump) = Pump::for_request(framing).expect("a body");
        let service = tokio::spawn(async move {
            if !read {
                drop(body);
                return Ok(Bytes::new());
            }
            body.collect()
                .await
                .map(|c| c.to_bytes())
                .map_err(|e| e.to_string())
        });
        let mut timer = LazyTimer::new();
        let mut reads = BodyReads {
            timer: &mut timer,
            idle: Duration::from_secs(60),
            last_byte: Instant::now(),
        };
        let mut state = BodyRead::Reading;
        while state == BodyRead::Reading {
            state = pump.step(&mut io, &mut rbuf, &mut reads).await;
        }
        // The body's end reaches the service when its sender goes, as in the loop.
        let rest = matches!(state, BodyRead::Unwanted).then_some(pump);
        let got = service.await.unwrap();
        (got, state, rbuf, rest)
    }

    #[tokio::test]
    async fn a_length_body_is_handed_on_and_the_next_request_left_alone() {
        let (got, state, rest, pump) = run(
            BodyFraming::Length(7),
            &[b"abc", b"defgGET / HTTP/1.1\r\n\r\n"],
            true,
        )
        .await;
        assert_eq!(got.unwrap(), "abcdefg");
        assert_eq!(state, BodyRead::Done);
        assert_eq!(&rest[..], b"GET / HTTP/1.1\r\n\r\n");
        assert!(pump.is_none());
    }

    #[tokio::test]
    async fn a_chunked_body_is_decoded_across_reads() {
        let (got, state, rest, _) = run(
            BodyFraming::Chunked,
            &[b"4\r\nwi", b"ki\r\n5;x=y\r\npedia\r\n0\r\n\r\nnext"],
            true,
        )
        .await;
        assert_eq!(got.unwrap(), "wikipedia");
        assert_eq!(state, BodyRead::Done);
        assert_eq!(&rest[..], b"next");
    }

    #[tokio::test]
    async fn broken_chunking_reaches_the_service_as_an_error_and_ends_the_connection() {
        let (got, state, _, pump) =
            run(BodyFraming::Chunked, &[b"zz\r\nabc\r\n0\r\n\r\n"], true).await;
        assert!(got.is_err(), "{got:?}");
        assert_eq!(state, BodyRead::Broken);
        assert!(pump.is_none());
    }

    #[tokio::test]
    async fn an_unread_body_is_left_to_drain_and_a_large_one_is_not_drained() {
        let (got, state, mut rest, pump) =
            run(BodyFraming::Length(5), &[b"12", b"345GET"], false).await;
        assert_eq!(got.unwrap(), "");
        assert_eq!(state, BodyRead::Unwanted);
        let mut pump = pump.expect("left for the drain");
        let (mut client, mut io) = tokio::io::duplex(1 << 18);
        client.write_all(b"345GET").await.unwrap();
        let mut timer = LazyTimer::new();
        let mut reads = BodyReads {
            timer: &mut timer,
            idle: Duration::from_secs(60),
            last_byte: Instant::now(),
        };
        assert!(pump.drain(&mut io, &mut rest, &mut reads).await);
        assert!(rest.ends_with(b"GET"), "{rest:?}");

        let big = DRAIN_BYTES as u64 * 2;
        let (_, _, mut rest, pump) = run(BodyFraming::Length(big), &[b"x"], false).await;
        let mut pump = pump.unwrap();
        client
            .write_all(&vec![b'x'; DRAIN_BYTES + 10])
            .await
            .unwrap();
        assert!(!pump.drain(&mut io, &mut rest, &mut reads).await);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stops_coming_fails_after_the_idle_limit() {
        let (got, state, _, _) = run(BodyFraming::Length(10), &[b"abc"], true).await;
        assert!(got.unwrap_err().contains("idle"));
        assert_eq!(state, BodyRead::Broken);
    }
}
