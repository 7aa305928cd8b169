//! Idle keep-alive connections to instances, per port. Last in, first out, so a busy worker
//! keeps reusing its warm connections and the extra ones age out; a connection the instance
//! closed while idle is noticed from its readiness, without a syscall in the common case.
//! A request that finds no idle connection connects, and meanwhile waits for one to come
//! back: with an app that accepts slowly (a small listen backlog), requests then share the
//! connections that exist instead of each waiting for its own connect.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio::sync::oneshot;

/// An idle connection is closed after this long. Below the 5 s default keep-alive of Node's
/// HTTP server, so we close first and never send on a connection the app is closing.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(4);
/// How often expired idle connections are closed.
const REAP_EVERY: Duration = Duration::from_secs(1);

struct Idle {
    stream: TcpStream,
    since: Instant,
}

#[derive(Default)]
struct PortIdle {
    idle: Vec<Idle>,
    /// Requests connecting right now that would take a connection someone else frees first.
    waiters: VecDeque<oneshot::Sender<TcpStream>>,
}

pub struct Pool {
    idle: Mutex<HashMap<u16, PortIdle, BuildHasherDefault<PortHasher>>>,
    reaper_running: AtomicBool,
    /// Idle connections kept per instance; idle ones still close after `IDLE_TIMEOUT`.
    max_idle_per_port: usize,
}

/// Hashes a port number: the ports come from the caller's route table, not from clients, so
/// no flooding resistance is needed, and the map is looked at twice per request.
#[derive(Default)]
struct PortHasher(u64);

impl Hasher for PortHasher {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8 | u64::from(*b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u16(&mut self, port: u16) {
        // Multiplied so the high bits the table indexes by differ from port to port.
        self.0 = u64::from(port).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Resolves when another request hands back a connection to the port.
pub type Handoff = oneshot::Receiver<TcpStream>;

impl Pool {
    pub fn new(max_idle_per_port: usize) -> Self {
        Self {
            idle: Mutex::default(),
            reaper_running: AtomicBool::new(false),
            max_idle_per_port,
        }
    }

    /// The most recently used live connection to `port`, if any.
    pub fn take(&self, port: u16) -> Option<TcpStream> {
        let now = Instant::now();
        let mut idle = self.idle.lock().ok()?;
        let list = &mut idle.get_mut(&port)?.idle;
        while let Some(entry) = list.pop() {
            if now.duration_since(entry.since) < IDLE_TIMEOUT && still_open(&entry.stream) {
                return Some(entry.stream);
            }
        }
        None
    }

    /// Queues for the next connection handed back to `port`; for a request that is
    /// connecting because none was idle.
    pub fn wait(&self, port: u16) -> Option<Handoff> {
        let (tx, rx) = oneshot::channel();
        let mut idle = self.idle.lock().ok()?;
        let waiters = &mut idle.entry(port).or_default().waiters;
        waiters.retain(|w| !w.is_closed());
        waiters.push_back(tx);
        Some(rx)
    }

    /// Keeps a connection whose last response was read completely.
    pub fn put(self: &Arc<Self>, port: u16, stream: TcpStream) {
        let Ok(mut idle) = self.idle.lock() else {
            return;
        };
        let entry = idle.entry(port).or_default();
        let mut stream = stream;
        // Oldest waiter first; one that gave up hands the connection back.
        while let Some(waiter) = entry.waiters.pop_front() {
            match waiter.send(stream) {
                Ok(()) => return,
                Err(back) => stream = back,
            }
        }
        let list = &mut entry.idle;
        if list.len() >= self.max_idle_per_port {
            return;
        }
        list.push(Idle {
            stream,
            since: Instant::now(),
        });
        drop(idle);
        if !self.reaper_running.swap(true, Ordering::AcqRel) {
            tokio::spawn(reap(Arc::downgrade(self)));
        }
    }

    /// Closes expired connections; true when none is left.
    fn reap_expired(&self) -> bool {
        let Ok(mut idle) = self.idle.lock() else {
            return true;
        };
        let now = Instant::now();
        for port in idle.values_mut() {
            // Oldest first: the expired ones are a prefix.
            let expired = port
                .idle
                .iter()
                .take_while(|e| now.duration_since(e.since) >= IDLE_TIMEOUT)
                .count();
            port.idle.drain(..expired);
            port.waiters.retain(|w| !w.is_closed());
        }
        idle.retain(|_, port| !port.idle.is_empty() || !port.waiters.is_empty());
        idle.is_empty()
    }

    #[cfg(test)]
    pub fn idle_count(&self, port: u16) -> usize {
        self.idle
            .lock()
            .map(|i| i.get(&port).map_or(0, |p| p.idle.len()))
            .unwrap_or(0)
    }
}

async fn reap(pool: Weak<Pool>) {
    loop {
        tokio::time::sleep(REAP_EVERY).await;
        let Some(pool) = pool.upgrade() else {
            return;
        };
        if pool.reap_expired() {
            pool.reaper_running.store(false, Ordering::Release);
            // A put may have raced the flag; it found it set and started nobody.
            if pool.idle.lock().map(|i| i.is_empty()).unwrap_or(true)
                || pool.reaper_running.swap(true, Ordering::AcqRel)
            {
                return;
            }
        }
    }
}

/// An idle connection that became readable has either been closed by the instance or holds
/// bytes nobody asked for; both make it unusable. Readiness comes from the event loop, so
/// only a connection that shows some is probed with a read.
fn still_open(stream: &TcpStream) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    match stream.poll_read_ready(&mut cx) {
        Poll::Pending => true,
        Poll::Ready(Err(_)) => false,
        Poll::Ready(Ok(())) => matches!(
            stream.try_read(&mut [0u8; 1]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
        ),
    }
}
