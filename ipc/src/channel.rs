//! The control channel between the master and a child, the same for every role: the hello
//! handshake, a typed reader, and a bounded send queue drained by one writer task.
//!
//! The queue is bounded in frames and in bytes, and a frame must be taken by the peer within
//! [`Limits::drain_bound`]. A peer that stops reading therefore costs the sender a bounded
//! amount of memory: when the queue is full or a frame stalls, the channel fails, and
//! [`Channel::recv`] reports why, so the owner ends the peer (the master replaces a child as
//! it would after a crash). A full queue is not waited out: a dropped message (a route table,
//! a drain order) would leave the peer silently out of step, so the only safe answer is to
//! end it and start a fresh one from the full state.
//!
//! Frames are encoded when they are queued, so an oversized message is refused to the caller
//! that built it, never discovered later by the writer (which used to end the channel).

use std::marker::PhantomData;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{de::DeserializeOwned, Serialize};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot, watch};

use crate::frame::{encode_frame, FrameError, FrameReader, FrameWriter, MAX_FDS_PER_FRAME};
use crate::messages::{LauncherToMaster, MasterToLauncher, MasterToWorker, WorkerToMaster};
use crate::IPC_VERSION;

/// A message enum whose first message on a channel is a hello carrying the protocol version.
pub trait Greeting {
    /// The protocol version when this message is the hello, `None` for any other message.
    fn hello_version(&self) -> Option<u32>;
}

impl Greeting for WorkerToMaster {
    fn hello_version(&self) -> Option<u32> {
        match self {
            WorkerToMaster::Hello { version, .. } => Some(*version),
            _ => None,
        }
    }
}

impl Greeting for LauncherToMaster {
    fn hello_version(&self) -> Option<u32> {
        match self {
            LauncherToMaster::Hello { version, .. } => Some(*version),
            _ => None,
        }
    }
}

impl Greeting for MasterToWorker {
    fn hello_version(&self) -> Option<u32> {
        match self {
            MasterToWorker::Hello { version, .. } => Some(*version),
            _ => None,
        }
    }
}

impl Greeting for MasterToLauncher {
    fn hello_version(&self) -> Option<u32> {
        match self {
            MasterToLauncher::Hello { version, .. } => Some(*version),
            _ => None,
        }
    }
}

/// Bounds of one channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Frames queued and not yet written.
    pub queue_frames: usize,
    /// Bytes queued and not yet written.
    pub queue_bytes: usize,
    /// Longest time one frame may take to be written: a peer that takes longer is not
    /// reading.
    pub drain_bound: Duration,
    /// Longest wait for the peer's hello.
    pub hello_timeout: Duration,
    /// Whether the peer may pass descriptors (only the master may: listeners to a worker).
    pub accept_fds: bool,
}

impl Limits {
    /// The master's side towards a child. The largest frame the master sends is a status or
    /// metrics page, far under the queue's byte bound.
    pub const MASTER: Limits = Limits {
        queue_frames: 4096,
        queue_bytes: 32 * 1024 * 1024,
        drain_bound: Duration::from_secs(5),
        hello_timeout: Duration::from_secs(10),
        accept_fds: false,
    };

    /// A child's side towards the master. The master is trusted and a child that gives up on
    /// it stops serving (the launcher stops every app), so a busy master gets a minute, not
    /// the five seconds a child gets from the master.
    pub const CHILD: Limits = Limits {
        queue_frames: 16 * 1024,
        queue_bytes: 32 * 1024 * 1024,
        drain_bound: Duration::from_secs(60),
        hello_timeout: Duration::from_secs(30),
        accept_fds: true,
    };
}

/// Why a message could not be queued, or why the sending side failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("the IPC channel is closed")]
    Closed,
    /// The message itself is wrong (too large to be a frame): the caller's bug; the channel
    /// stays up.
    #[error("IPC message cannot be sent: {0}")]
    Encode(String),
    #[error(
        "IPC send queue full ({frames} frames, {bytes} bytes waiting): the peer does not read"
    )]
    QueueFull { frames: usize, bytes: usize },
    #[error("the peer did not take a {bytes}-byte IPC frame within {} s: it does not read", .bound.as_secs())]
    Stalled { bytes: usize, bound: Duration },
    #[error("writing to the IPC peer failed: {0}")]
    Write(String),
}

/// Why a channel ended.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("no IPC hello from the peer within {} s", .0.as_secs())]
    HelloTimeout(Duration),
    #[error("the peer closed the IPC channel before its hello")]
    ClosedBeforeHello,
    #[error("the peer's first IPC message was not a hello")]
    NotHello,
    #[error("IPC protocol mismatch: the peer speaks version {peer}, this side version {IPC_VERSION}; both must come from the same tako-server binary")]
    Version { peer: u32 },
    #[error("the peer sent a second IPC hello")]
    SecondHello,
    #[error("the peer sent {0} file descriptors on a channel that accepts none")]
    UnexpectedFds(usize),
    #[error(transparent)]
    Send(#[from] SendError),
}

/// A message encoded once, to be queued on many channels (a broadcast).
pub struct Encoded<T> {
    bytes: Arc<[u8]>,
    _msg: PhantomData<fn(T)>,
}

impl<T> Clone for Encoded<T> {
    fn clone(&self) -> Self {
        Self {
            bytes: Arc::clone(&self.bytes),
            _msg: PhantomData,
        }
    }
}

impl<T: Serialize> Encoded<T> {
    pub fn new(msg: &T) -> Result<Self, SendError> {
        let bytes = encode_frame(msg, 0).map_err(|e| SendError::Encode(e.to_string()))?;
        Ok(Self {
            bytes: bytes.into(),
            _msg: PhantomData,
        })
    }

    /// Frame length on the wire, header included.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

enum Item {
    Frame { bytes: Arc<[u8]>, fds: Vec<OwnedFd> },
    Flush(oneshot::Sender<()>),
}

/// What the senders and the writer task share. Not the queue's sending end: the writer
/// must see the queue close when the last [`Sender`] goes, and end (closing the socket).
struct State {
    queued_bytes: AtomicUsize,
    limits: Limits,
    /// The first failure; every later send reports it.
    failure: Mutex<Option<SendError>>,
    failed: watch::Sender<bool>,
}

struct SendSide {
    queue: mpsc::Sender<Item>,
    state: Arc<State>,
}

impl State {
    fn fail(&self, why: SendError) {
        let mut slot = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(why);
        }
        drop(slot);
        self.failed.send_replace(true);
    }

    fn failure(&self) -> Option<SendError> {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// The sending half: cheap to clone, never blocks. Queuing fails once the channel failed.
pub struct Sender<T> {
    side: Arc<SendSide>,
    _msg: PhantomData<fn(T)>,
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        Self {
            side: Arc::clone(&self.side),
            _msg: PhantomData,
        }
    }
}

impl<T: Serialize> Sender<T> {
    pub fn send(&self, msg: &T) -> Result<(), SendError> {
        self.send_encoded(&Encoded::new(msg)?)
    }

    /// Queues a message with descriptors that ride on its frame.
    pub fn send_with_fds(&self, msg: &T, fds: Vec<OwnedFd>) -> Result<(), SendError> {
        if fds.len() > MAX_FDS_PER_FRAME {
            return Err(SendError::Encode(FrameError::TooManyFds.to_string()));
        }
        let bytes =
            encode_frame(msg, fds.len() as u32).map_err(|e| SendError::Encode(e.to_string()))?;
        self.push(Item::Frame {
            bytes: bytes.into(),
            fds,
        })
    }

    pub fn send_encoded(&self, frame: &Encoded<T>) -> Result<(), SendError> {
        self.push(Item::Frame {
            bytes: Arc::clone(&frame.bytes),
            fds: Vec::new(),
        })
    }
}

impl<T> Sender<T> {
    fn push(&self, item: Item) -> Result<(), SendError> {
        let queue = &self.side.queue;
        let side = &*self.side.state;
        if let Some(why) = side.failure() {
            return Err(why);
        }
        let len = match &item {
            Item::Frame { bytes, .. } => bytes.len(),
            Item::Flush(_) => 0,
        };
        let queued = side.queued_bytes.fetch_add(len, Ordering::AcqRel) + len;
        let full = || SendError::QueueFull {
            frames: side.limits.queue_frames - queue.capacity(),
            bytes: queued,
        };
        if queued > side.limits.queue_bytes {
            side.queued_bytes.fetch_sub(len, Ordering::AcqRel);
            let why = full();
            side.fail(why.clone());
            return Err(why);
        }
        match queue.try_send(item) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                side.queued_bytes.fetch_sub(len, Ordering::AcqRel);
                let why = full();
                side.fail(why.clone());
                Err(why)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                side.queued_bytes.fetch_sub(len, Ordering::AcqRel);
                Err(side.failure().unwrap_or(SendError::Closed))
            }
        }
    }

    /// Waits until everything queued before this call was written, or the channel failed.
    /// Callers bound the wait.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.push(Item::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// The failure that closed the channel, if any.
    pub fn failure(&self) -> Option<SendError> {
        self.side.state.failure()
    }

    /// Bytes queued and not yet written.
    pub fn queued_bytes(&self) -> usize {
        self.side.state.queued_bytes.load(Ordering::Acquire)
    }
}

async fn write_loop(side: Arc<State>, mut rx: mpsc::Receiver<Item>, mut writer: FrameWriter<()>) {
    let bound = side.limits.drain_bound;
    while let Some(item) = rx.recv().await {
        match item {
            Item::Flush(done) => {
                let _ = done.send(());
            }
            Item::Frame { bytes, fds } => {
                let len = bytes.len();
                let written =
                    tokio::time::timeout(bound, writer.send_frame_bytes(&bytes, &fds)).await;
                side.queued_bytes.fetch_sub(len, Ordering::AcqRel);
                let failure = match written {
                    Ok(Ok(())) => continue,
                    Ok(Err(e)) => SendError::Write(e.to_string()),
                    Err(_) => SendError::Stalled { bytes: len, bound },
                };
                side.fail(failure);
                break;
            }
        }
    }
    // Nothing more goes out: refuse new items and let go of the queued ones (and their
    // descriptors) now rather than when the last sender drops.
    rx.close();
    while rx.try_recv().is_ok() {}
    side.queued_bytes.store(0, Ordering::Release);
}

/// One end of a control channel: `In` is what the peer may send, `Out` what this side sends.
pub struct Channel<In, Out> {
    reader: FrameReader<In>,
    sender: Sender<Out>,
    failed: watch::Receiver<bool>,
    accept_fds: bool,
}

impl<In, Out> Channel<In, Out>
where
    In: DeserializeOwned + Greeting,
    Out: Serialize,
{
    /// Queues `hello`, then waits (bounded) for the peer's hello and checks its version.
    /// Returns the channel and the peer's hello. Needs a tokio runtime (spawns the writer).
    pub async fn open(
        stream: UnixStream,
        hello: &Out,
        limits: Limits,
    ) -> Result<(Self, In), ChannelError> {
        let (read, write) = stream.into_split();
        let (tx, rx) = mpsc::channel(limits.queue_frames.max(1));
        let (failed_tx, failed) = watch::channel(false);
        let state = Arc::new(State {
            queued_bytes: AtomicUsize::new(0),
            limits,
            failure: Mutex::new(None),
            failed: failed_tx,
        });
        tokio::spawn(write_loop(
            Arc::clone(&state),
            rx,
            FrameWriter::<()>::new(write),
        ));
        let side = Arc::new(SendSide { queue: tx, state });
        let mut channel = Channel {
            reader: FrameReader::<In>::new(read),
            sender: Sender {
                side,
                _msg: PhantomData,
            },
            failed,
            accept_fds: limits.accept_fds,
        };
        channel.sender.send(hello)?;
        let first = tokio::time::timeout(limits.hello_timeout, channel.reader.recv())
            .await
            .map_err(|_| ChannelError::HelloTimeout(limits.hello_timeout))??;
        let Some((msg, fds)) = first else {
            return Err(ChannelError::ClosedBeforeHello);
        };
        if !fds.is_empty() {
            return Err(ChannelError::UnexpectedFds(fds.len()));
        }
        match msg.hello_version() {
            None => Err(ChannelError::NotHello),
            Some(v) if v != IPC_VERSION => Err(ChannelError::Version { peer: v }),
            Some(_) => Ok((channel, msg)),
        }
    }

    pub fn sender(&self) -> Sender<Out> {
        self.sender.clone()
    }

    /// The next message after the hello, with its descriptors (always none where
    /// [`Limits::accept_fds`] is off). `Ok(None)` is a clean end of stream. A failure of the
    /// sending side (the peer does not read) ends the channel here too, so one loop sees
    /// every reason to end the peer.
    pub async fn recv(&mut self) -> Result<Option<(In, Vec<OwnedFd>)>, ChannelError> {
        let received = tokio::select! {
            biased;
            _ = self.failed.wait_for(|f| *f) => {
                return Err(self.sender.failure().unwrap_or(SendError::Closed).into());
            }
            r = self.reader.recv() => r?,
        };
        let Some((msg, fds)) = received else {
            return Ok(None);
        };
        if msg.hello_version().is_some() {
            return Err(ChannelError::SecondHello);
        }
        if !self.accept_fds && !fds.is_empty() {
            return Err(ChannelError::UnexpectedFds(fds.len()));
        }
        Ok(Some((msg, fds)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{AppHttpStats, LauncherConfig};

    // The launcher's pair of enums: their hellos are the simplest to build.
    type MasterSide = Channel<LauncherToMaster, MasterToLauncher>;
    type ChildSide = Channel<MasterToLauncher, LauncherToMaster>;

    fn master_hello() -> MasterToLauncher {
        MasterToLauncher::Hello {
            version: IPC_VERSION,
            config: LauncherConfig {
                app_user: None,
                log_owner: None,
            },
        }
    }

    fn worker_hello() -> LauncherToMaster {
        LauncherToMaster::Hello {
            version: IPC_VERSION,
            pid: 1,
        }
    }

    fn done() -> LauncherToMaster {
        LauncherToMaster::InstallDone {
            request_id: 1,
            result: crate::messages::InstallResult::Ok,
        }
    }

    /// A message of about `n` bytes.
    fn big(n: usize) -> MasterToLauncher {
        MasterToLauncher::Kill {
            app: "x".repeat(n),
            instance_id: 1,
        }
    }

    async fn pair() -> (MasterSide, ChildSide) {
        let (a, b) = UnixStream::pair().unwrap();
        let master =
            tokio::spawn(async move { MasterSide::open(a, &master_hello(), Limits::MASTER).await });
        let (child, hello) = ChildSide::open(b, &worker_hello(), Limits::CHILD)
            .await
            .unwrap();
        assert!(matches!(hello, MasterToLauncher::Hello { .. }));
        let (master, hello) = master.await.unwrap().unwrap();
        assert!(matches!(hello, LauncherToMaster::Hello { pid: 1, .. }));
        (master, child)
    }

    #[tokio::test]
    async fn hello_both_ways_then_messages() {
        let (mut master, mut child) = pair().await;
        child.sender().send(&done()).unwrap();
        let (m, _) = master.recv().await.unwrap().unwrap();
        assert!(matches!(
            m,
            LauncherToMaster::InstallDone { request_id: 1, .. }
        ));
        master
            .sender()
            .send(&MasterToLauncher::Shutdown { grace_ms: 5 })
            .unwrap();
        let (m, _) = child.recv().await.unwrap().unwrap();
        assert!(matches!(m, MasterToLauncher::Shutdown { grace_ms: 5 }));
        let s = child.sender();
        drop(child);
        s.flush().await;
    }

    #[tokio::test]
    async fn wrong_version_and_not_hello_are_refused() {
        let (a, b) = UnixStream::pair().unwrap();
        tokio::spawn(async move {
            let (_r, w) = b.into_split();
            let mut w = FrameWriter::<LauncherToMaster>::new(w);
            w.send(&LauncherToMaster::Hello {
                version: IPC_VERSION + 1,
                pid: 1,
            })
            .await
            .unwrap();
            tokio::time::sleep(Duration::from_secs(1)).await;
        });
        let r = MasterSide::open(a, &master_hello(), Limits::MASTER).await;
        assert!(matches!(r, Err(ChannelError::Version { .. })));

        let (a, b) = UnixStream::pair().unwrap();
        tokio::spawn(async move {
            let (_r, w) = b.into_split();
            let mut w = FrameWriter::<LauncherToMaster>::new(w);
            w.send(&done()).await.unwrap();
            tokio::time::sleep(Duration::from_secs(1)).await;
        });
        let r = MasterSide::open(a, &master_hello(), Limits::MASTER).await;
        assert!(matches!(r, Err(ChannelError::NotHello)));
    }

    #[tokio::test]
    async fn second_hello_and_fds_from_a_child_end_the_channel() {
        let (mut master, child) = pair().await;
        child.sender().send(&worker_hello()).unwrap();
        assert!(matches!(
            master.recv().await,
            Err(ChannelError::SecondHello)
        ));
        let (mut master, child) = pair().await;
        let fd: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
        child.sender().send_with_fds(&done(), vec![fd]).unwrap();
        assert!(matches!(
            master.recv().await,
            Err(ChannelError::UnexpectedFds(1))
        ));
    }

    #[tokio::test]
    async fn a_peer_that_does_not_read_fails_the_channel_within_the_bound() {
        let (a, b) = UnixStream::pair().unwrap();
        // The peer answers hello and then never reads again.
        let peer = tokio::spawn(async move {
            let (r, w) = b.into_split();
            let mut w = FrameWriter::<LauncherToMaster>::new(w);
            w.send(&worker_hello()).await.unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(r);
        });
        let limits = Limits {
            queue_frames: 64,
            queue_bytes: 1024 * 1024,
            drain_bound: Duration::from_millis(300),
            ..Limits::MASTER
        };
        let (mut master, _) = MasterSide::open(a, &master_hello(), limits).await.unwrap();
        let page = big(64 * 1024);
        let tx = master.sender();
        let mut refused = None;
        for _ in 0..1000 {
            if let Err(e) = tx.send(&page) {
                refused = Some(e);
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(
            matches!(
                refused,
                Some(SendError::QueueFull { .. } | SendError::Stalled { .. })
            ),
            "{refused:?}"
        );
        assert!(tx.queued_bytes() <= limits.queue_bytes);
        let end = tokio::time::timeout(Duration::from_secs(5), master.recv())
            .await
            .expect("recv reports the failure");
        assert!(matches!(end, Err(ChannelError::Send(_))), "{end:?}");
        peer.abort();
    }

    #[tokio::test]
    async fn a_stalled_frame_fails_after_the_drain_bound() {
        let (a, b) = UnixStream::pair().unwrap();
        let peer = tokio::spawn(async move {
            let (r, w) = b.into_split();
            let mut w = FrameWriter::<LauncherToMaster>::new(w);
            w.send(&worker_hello()).await.unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(r);
        });
        let limits = Limits {
            drain_bound: Duration::from_millis(300),
            ..Limits::MASTER
        };
        let (mut master, _) = MasterSide::open(a, &master_hello(), limits).await.unwrap();
        // One frame larger than any socket buffer: it can never be taken whole.
        let page = big(8 * 1024 * 1024);
        master.sender().send(&page).unwrap();
        let end = tokio::time::timeout(Duration::from_secs(5), master.recv())
            .await
            .expect("recv reports the stall");
        assert!(
            matches!(end, Err(ChannelError::Send(SendError::Stalled { .. }))),
            "{end:?}"
        );
        assert!(master
            .sender()
            .send(&MasterToLauncher::Shutdown { grace_ms: 1 })
            .is_err());
        peer.abort();
    }

    #[tokio::test]
    async fn the_socket_closes_when_the_channel_and_every_sender_are_gone() {
        let (master, mut child) = pair().await;
        let tx = master.sender();
        drop(master);
        tx.send(&MasterToLauncher::Shutdown { grace_ms: 1 })
            .unwrap();
        drop(tx);
        let (m, _) = child.recv().await.unwrap().unwrap();
        assert!(matches!(m, MasterToLauncher::Shutdown { grace_ms: 1 }));
        let end = tokio::time::timeout(Duration::from_secs(5), child.recv())
            .await
            .expect("EOF once the master's side is gone");
        assert!(matches!(end, Ok(None)), "{end:?}");
    }

    #[test]
    fn oversized_messages_are_refused_to_the_caller() {
        let big = WorkerToMaster::HttpStats(vec![AppHttpStats {
            app: "x".repeat(crate::MAX_FRAME_LEN + 1),
            ..Default::default()
        }]);
        assert!(matches!(Encoded::new(&big), Err(SendError::Encode(_))));
    }
}
