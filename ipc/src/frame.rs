//! Length-prefixed bincode frames over a Unix stream socket, with file descriptors passed
//! beside a frame.
//!
//! Wire format: a 4-byte big-endian payload length, then the payload: bincode (standard
//! config) of `(fd_count: u32, message)`. When `fd_count` is non-zero, exactly that many
//! descriptors ride as `SCM_RIGHTS` on the bytes of the frame itself, so they can never be
//! separated from the frame that announces them.
//!
//! The reader never reads past the current frame (no read-ahead buffer): ancillary data is
//! bound to the bytes it came with, and a buffered read could swallow the descriptors of the
//! next frame.

use std::io::{self, IoSlice, IoSliceMut};
use std::marker::PhantomData;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use bincode::config::{self, Configuration};
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use serde::{de::DeserializeOwned, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

/// Largest payload accepted or sent. Checked from the header, before any allocation.
pub const MAX_FRAME_LEN: usize = 16 * 1024 * 1024;
/// Most descriptors one frame may carry.
pub const MAX_FDS_PER_FRAME: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("IPC channel I/O error: {0}")]
    Io(#[from] io::Error),
    #[error("IPC frame of {0} bytes exceeds the limit of {MAX_FRAME_LEN} bytes")]
    TooLarge(usize),
    #[error("IPC channel closed in the middle of a frame")]
    Truncated,
    #[error("IPC frame does not decode: {0}")]
    Decode(String),
    #[error("IPC message does not encode: {0}")]
    Encode(String),
    #[error("IPC frame announced {announced} file descriptors but carried {received}")]
    FdMismatch { announced: u32, received: usize },
    #[error("IPC frame carries more than {MAX_FDS_PER_FRAME} file descriptors")]
    TooManyFds,
}

fn bincode_config() -> Configuration<config::BigEndian, config::Varint, config::Limit<MAX_FRAME_LEN>>
{
    config::standard()
        .with_big_endian()
        .with_variable_int_encoding()
        .with_limit::<MAX_FRAME_LEN>()
}

/// Encodes `msg` into a complete frame (header included) announcing `fd_count` descriptors.
pub fn encode_frame<T: Serialize>(msg: &T, fd_count: u32) -> Result<Vec<u8>, FrameError> {
    let mut buf = vec![0u8; 4];
    bincode::serde::encode_into_std_write((fd_count, msg), &mut buf, bincode_config())
        .map_err(|e| FrameError::Encode(e.to_string()))?;
    let len = buf.len() - 4;
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge(len));
    }
    buf[..4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(buf)
}

/// Reads the payload length from a header, refusing oversized frames before allocation.
pub fn parse_header(header: [u8; 4]) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge(len));
    }
    Ok(len)
}

/// Decodes a payload into the announced descriptor count and the message. Trailing bytes
/// are an error: a frame is exactly one message.
pub fn decode_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<(u32, T), FrameError> {
    let ((fd_count, msg), used): ((u32, T), usize) =
        bincode::serde::decode_from_slice(payload, bincode_config())
            .map_err(|e| FrameError::Decode(e.to_string()))?;
    if used != payload.len() {
        return Err(FrameError::Decode(format!(
            "{} trailing bytes after the message",
            payload.len() - used
        )));
    }
    Ok((fd_count, msg))
}

/// Splits a byte buffer into frames, for tests and the fuzz target: the same checks as the
/// socket reader, without descriptors.
pub fn decode_stream<T: DeserializeOwned>(mut bytes: &[u8]) -> Result<Vec<T>, FrameError> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        if bytes.len() < 4 {
            return Err(FrameError::Truncated);
        }
        let len = parse_header([bytes[0], bytes[1], bytes[2], bytes[3]])?;
        let rest = &bytes[4..];
        if rest.len() < len {
            return Err(FrameError::Truncated);
        }
        let (fd_count, msg) = decode_payload::<T>(&rest[..len])?;
        if fd_count != 0 {
            return Err(FrameError::FdMismatch {
                announced: fd_count,
                received: 0,
            });
        }
        out.push(msg);
        bytes = &rest[len..];
    }
    Ok(out)
}

/// The receiving half of a channel, typed by what the peer may send.
pub struct FrameReader<T> {
    half: OwnedReadHalf,
    _msg: PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> FrameReader<T> {
    pub fn new(half: OwnedReadHalf) -> Self {
        Self {
            half,
            _msg: PhantomData,
        }
    }

    /// Receives the next message with the descriptors that rode on it. `Ok(None)` is a clean
    /// end of stream at a frame boundary.
    pub async fn recv(&mut self) -> Result<Option<(T, Vec<OwnedFd>)>, FrameError> {
        let mut header = [0u8; 4];
        let mut got = 0usize;
        let mut fds: Vec<OwnedFd> = Vec::new();
        while got < 4 {
            let (n, mut new_fds) = self.recv_with_fds(&mut header[got..]).await?;
            fds.append(&mut new_fds);
            if n == 0 {
                return if got == 0 && fds.is_empty() {
                    Ok(None)
                } else {
                    Err(FrameError::Truncated)
                };
            }
            got += n;
        }
        let len = parse_header(header)?;
        let mut payload = vec![0u8; len];
        match self.half.read_exact(&mut payload).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(FrameError::Truncated)
            }
            Err(e) => return Err(e.into()),
        }
        let (announced, msg) = decode_payload::<T>(&payload)?;
        if announced as usize != fds.len() {
            return Err(FrameError::FdMismatch {
                announced,
                received: fds.len(),
            });
        }
        Ok(Some((msg, fds)))
    }

    async fn recv_with_fds(&self, buf: &mut [u8]) -> Result<(usize, Vec<OwnedFd>), FrameError> {
        let stream = self.half.as_ref();
        let raw = stream.as_raw_fd();
        let result = stream
            .async_io(Interest::READABLE, || {
                recv_fds_once(raw, buf).map_err(io::Error::from)
            })
            .await?;
        result
    }
}

fn recv_fds_once(
    raw: RawFd,
    buf: &mut [u8],
) -> Result<Result<(usize, Vec<OwnedFd>), FrameError>, nix::Error> {
    let mut iov = [IoSliceMut::new(buf)];
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS_PER_FRAME]);
    let msg = recvmsg::<()>(raw, &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)?;
    let truncated = msg.flags.contains(MsgFlags::MSG_CTRUNC);
    let mut fds = Vec::new();
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(list) = c {
            for fd in list {
                // SAFETY: the kernel just installed this descriptor in our table for us.
                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    let n = msg.bytes;
    if truncated {
        return Ok(Err(FrameError::TooManyFds));
    }
    Ok(Ok((n, fds)))
}

/// The sending half of a channel, typed by what this side may send.
pub struct FrameWriter<T> {
    half: OwnedWriteHalf,
    _msg: PhantomData<fn(T)>,
}

impl<T> FrameWriter<T> {
    pub fn new(half: OwnedWriteHalf) -> Self {
        Self {
            half,
            _msg: PhantomData,
        }
    }

    /// Writes a frame encoded by [`encode_frame`] (header included) with the descriptors it
    /// announces, which ride on its first bytes.
    pub async fn send_frame_bytes(
        &mut self,
        frame: &[u8],
        fds: &[OwnedFd],
    ) -> Result<(), FrameError> {
        if fds.is_empty() {
            self.half.write_all(frame).await?;
            return Ok(());
        }
        if fds.len() > MAX_FDS_PER_FRAME {
            return Err(FrameError::TooManyFds);
        }
        let raw_fds: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        let stream = self.half.as_ref();
        let sock = stream.as_raw_fd();
        let sent = stream
            .async_io(Interest::WRITABLE, || {
                let iov = [IoSlice::new(frame)];
                let cmsg = [ControlMessage::ScmRights(&raw_fds)];
                sendmsg::<()>(sock, &iov, &cmsg, MsgFlags::MSG_NOSIGNAL, None)
                    .map_err(io::Error::from)
            })
            .await?;
        self.half.write_all(&frame[sent..]).await?;
        Ok(())
    }
}

impl<T: Serialize> FrameWriter<T> {
    pub async fn send(&mut self, msg: &T) -> Result<(), FrameError> {
        let frame = encode_frame(msg, 0)?;
        self.half.write_all(&frame).await?;
        Ok(())
    }

    pub async fn send_with_fds(&mut self, msg: &T, fds: &[OwnedFd]) -> Result<(), FrameError> {
        if fds.len() > MAX_FDS_PER_FRAME {
            return Err(FrameError::TooManyFds);
        }
        let frame = encode_frame(msg, fds.len() as u32)?;
        self.send_frame_bytes(&frame, fds).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{MasterToWorker, WorkerToMaster};
    use std::io::{Read, Seek, Write};
    use tokio::net::UnixStream;

    async fn raw_pair() -> (UnixStream, UnixStream) {
        UnixStream::pair().unwrap()
    }

    #[tokio::test]
    async fn roundtrip_message() {
        let (a, b) = raw_pair().await;
        let (_ra, wa) = a.into_split();
        let (rb, _wb) = b.into_split();
        let mut w = FrameWriter::<WorkerToMaster>::new(wa);
        let mut r = FrameReader::<WorkerToMaster>::new(rb);
        w.send(&WorkerToMaster::Ready).await.unwrap();
        w.send(&WorkerToMaster::Hello {
            version: 7,
            pid: 42,
        })
        .await
        .unwrap();
        let (m1, f1) = r.recv().await.unwrap().unwrap();
        assert!(matches!(m1, WorkerToMaster::Ready));
        assert!(f1.is_empty());
        let (m2, _) = r.recv().await.unwrap().unwrap();
        assert!(matches!(
            m2,
            WorkerToMaster::Hello {
                version: 7,
                pid: 42
            }
        ));
        drop(w);
        assert!(
            r.recv().await.unwrap().is_none(),
            "clean EOF at a frame boundary"
        );
    }

    #[tokio::test]
    async fn fds_travel_with_their_frame() {
        let (a, b) = raw_pair().await;
        let (_ra, wa) = a.into_split();
        let (rb, _wb) = b.into_split();
        let mut w = FrameWriter::<MasterToWorker>::new(wa);
        let mut r = FrameReader::<MasterToWorker>::new(rb);
        let mut file = tempfile_with(b"hello fd");
        file.rewind().unwrap();
        let fd: OwnedFd = file.into();
        w.send(&MasterToWorker::Drain { deadline_ms: 1 })
            .await
            .unwrap();
        w.send_with_fds(&MasterToWorker::Drain { deadline_ms: 2 }, &[fd])
            .await
            .unwrap();
        w.send(&MasterToWorker::Drain { deadline_ms: 3 })
            .await
            .unwrap();
        let (_, fds) = r.recv().await.unwrap().unwrap();
        assert!(fds.is_empty());
        let (m, fds) = r.recv().await.unwrap().unwrap();
        assert!(matches!(m, MasterToWorker::Drain { deadline_ms: 2 }));
        assert_eq!(fds.len(), 1);
        let mut f = std::fs::File::from(fds.into_iter().next().unwrap());
        let mut s = String::new();
        f.read_to_string(&mut s).unwrap();
        assert_eq!(s, "hello fd");
        let (_, fds) = r.recv().await.unwrap().unwrap();
        assert!(fds.is_empty());
    }

    fn tempfile_with(content: &[u8]) -> std::fs::File {
        let path = std::env::temp_dir().join(format!(
            "tako-ipc-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        f.write_all(content).unwrap();
        f
    }

    async fn reader_fed_with(bytes: Vec<u8>) -> FrameReader<WorkerToMaster> {
        let (a, b) = raw_pair().await;
        let (rb, _wb) = b.into_split();
        tokio::spawn(async move {
            let mut a = a;
            let _ = a.write_all(&bytes).await;
            // a drops here: EOF after the bytes
        });
        FrameReader::new(rb)
    }

    #[tokio::test]
    async fn oversized_header_is_refused_before_allocation() {
        let mut r = reader_fed_with(u32::MAX.to_be_bytes().to_vec()).await;
        assert!(matches!(r.recv().await, Err(FrameError::TooLarge(_))));
    }

    #[tokio::test]
    async fn truncated_frames_are_errors() {
        let mut r = reader_fed_with(vec![0, 0]).await;
        assert!(matches!(r.recv().await, Err(FrameError::Truncated)));
        let mut frame = encode_frame(&WorkerToMaster::Ready, 0).unwrap();
        frame.pop();
        let mut r = reader_fed_with(frame).await;
        assert!(matches!(r.recv().await, Err(FrameError::Truncated)));
    }

    #[tokio::test]
    async fn garbage_payload_is_a_decode_error() {
        let mut bytes = 6u32.to_be_bytes().to_vec();
        bytes.extend_from_slice(&[0, 0xff, 0xff, 0xff, 0xff, 0xff]);
        let mut r = reader_fed_with(bytes).await;
        assert!(matches!(r.recv().await, Err(FrameError::Decode(_))));
    }

    #[tokio::test]
    async fn trailing_bytes_are_a_decode_error() {
        let mut frame = encode_frame(&WorkerToMaster::Ready, 0).unwrap();
        frame.push(0);
        let len = (frame.len() - 4) as u32;
        frame[..4].copy_from_slice(&len.to_be_bytes());
        let mut r = reader_fed_with(frame).await;
        assert!(matches!(r.recv().await, Err(FrameError::Decode(_))));
    }

    #[tokio::test]
    async fn announced_fds_that_never_came_are_a_mismatch() {
        let frame = encode_frame(&WorkerToMaster::Ready, 2).unwrap();
        let mut r = reader_fed_with(frame).await;
        assert!(matches!(
            r.recv().await,
            Err(FrameError::FdMismatch {
                announced: 2,
                received: 0
            })
        ));
    }

    #[tokio::test]
    async fn unannounced_fds_are_a_mismatch() {
        let (a, b) = raw_pair().await;
        let (rb, _wb) = b.into_split();
        let frame = encode_frame(&WorkerToMaster::Ready, 0).unwrap();
        let file: OwnedFd = tempfile_with(b"x").into();
        let raw = [file.as_raw_fd()];
        let iov = [IoSlice::new(&frame)];
        sendmsg::<()>(
            a.as_raw_fd(),
            &iov,
            &[ControlMessage::ScmRights(&raw)],
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        let mut r = FrameReader::<WorkerToMaster>::new(rb);
        assert!(matches!(
            r.recv().await,
            Err(FrameError::FdMismatch {
                announced: 0,
                received: 1
            })
        ));
    }

    #[test]
    fn decode_stream_checks_every_rule() {
        let mut bytes = encode_frame(&WorkerToMaster::Ready, 0).unwrap();
        bytes.extend(encode_frame(&WorkerToMaster::Hello { version: 1, pid: 2 }, 0).unwrap());
        let msgs: Vec<WorkerToMaster> = decode_stream(&bytes).unwrap();
        assert_eq!(msgs.len(), 2);
        assert!(matches!(
            decode_stream::<WorkerToMaster>(&bytes[..bytes.len() - 1]),
            Err(FrameError::Truncated)
        ));
        assert!(matches!(
            decode_stream::<WorkerToMaster>(&[0xff; 8]),
            Err(FrameError::TooLarge(_))
        ));
        // A length prefix inside the payload that claims a huge vector must not allocate it.
        let mut evil = 12u32.to_be_bytes().to_vec();
        evil.extend_from_slice(&[0, 9, 0xfc, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0]);
        assert!(decode_stream::<MasterToWorker>(&evil).is_err());
    }
}
