//! Per-client limits (docs/limits.md, "Per-client limits"): open connections, requests in
//! flight and an optional request rate per client address, counted in the table the master
//! shares with every worker (`tako_ipc::client_table`), so a limit holds over all workers.
//!
//! The connection cap is checked once the client's address is known: at accept, or after
//! the PROXY header. A trusted proxy's own connections are not capped (it carries many
//! clients); its requests count against the client its `X-Forwarded-For` names.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use http::header::{HeaderMap, HeaderValue, RETRY_AFTER};
use http::Response;
use tako_ipc::cidr::{any_contains, Cidr};
use tako_ipc::client_table::{self, key_of, Geometry, Pinned, Table, CONN, REQUEST};
use tako_ipc::ClientLimits;

use crate::body::Body;
use crate::conn_info::ConnInfo;
use crate::counters::{ClientRefusal, Counters};
use crate::responses::Canned;

/// A worker's view of the table: its own column and the limits.
pub struct Limiter {
    table: Table,
    column: u16,
    limits: ClientLimits,
    /// Nanoseconds between two requests at the rate (0: no rate).
    interval_ns: u64,
    /// An `Instant` and CLOCK_MONOTONIC at the same moment: a request's start becomes a
    /// table time without a clock read of its own.
    base: (Instant, u64),
    counters: Arc<Counters>,
}

impl Limiter {
    /// Maps the table the master sent. `None` (logged) when no limit is on or the table is
    /// unusable: the worker then serves without per-client limits rather than not at all.
    pub fn open(
        fd: &std::os::fd::OwnedFd,
        geometry: Geometry,
        column: u16,
        limits: ClientLimits,
        counters: Arc<Counters>,
    ) -> Option<Limiter> {
        if !limits.any() {
            return None;
        }
        let table = match client_table::map(fd, geometry) {
            Ok(t) => t,
            Err(error) => {
                tracing::error!(%error, "Per-client table unusable; serving without per-client limits");
                return None;
            }
        };
        let interval_ns = if limits.rate > 0 {
            1_000_000_000 / u64::from(limits.rate)
        } else {
            0
        };
        Some(Limiter {
            table,
            column,
            limits,
            interval_ns,
            base: (Instant::now(), client_table::monotonic_ns()),
            counters,
        })
    }

    /// The table's time for `at`; only a rate needs it (slots of a table without rates are
    /// free to take whenever nothing is open), so without one it is 0 and costs nothing.
    fn now_ns(&self, at: Instant) -> u64 {
        if self.interval_ns == 0 {
            return 0;
        }
        let since = at.saturating_duration_since(self.base.0).as_nanos();
        self.base
            .1
            .saturating_add(u64::try_from(since).unwrap_or(u64::MAX))
    }

    /// Counts a new connection from `ip`; `Err` when the address has its connections (the
    /// connection is then closed without a byte). `Ok(None)`: not counted (a trusted proxy,
    /// or no room in the table).
    pub fn connection(&'static self, ip: IpAddr, trusted: &[Cidr]) -> Result<Option<ConnSlot>, ()> {
        if any_contains(trusted, ip) {
            return Ok(None);
        }
        let now = if self.interval_ns > 0 {
            self.now_ns(Instant::now())
        } else {
            0
        };
        match self.table.acquire(
            self.column,
            key_of(ip),
            CONN,
            self.limits.max_connections,
            now,
        ) {
            Ok(Some(pinned)) => Ok(Some(ConnSlot {
                limiter: self,
                pinned,
            })),
            Ok(None) => {
                self.counters.record_client(ClientRefusal::TableFull);
                Ok(None)
            }
            Err(_) => {
                self.counters.record_client(ClientRefusal::Connection);
                Err(())
            }
        }
    }

    /// Counts one request of `conn` (whose client is the forwarded one when the peer is a
    /// trusted proxy) and checks the rate; the refusal is the answer to send.
    pub fn request(
        &'static self,
        conn: &ConnInfo,
        headers: &HeaderMap,
        trusted: &[Cidr],
        at: Instant,
    ) -> Result<Option<RequestSlot>, TooMany> {
        let now = self.now_ns(at);
        let cap = self.limits.max_requests;
        let counted = match conn.client {
            // The connection's own address, already in the table: no lookup.
            Some(pinned) => self
                .table
                .add(self.column, pinned, REQUEST, cap)
                .map(|()| Some(pinned)),
            None => {
                let peer = conn.peer.ip();
                let ip = if any_contains(trusted, peer) {
                    crate::forwarded::client_ip(headers, trusted).unwrap_or(peer)
                } else {
                    peer
                };
                self.table
                    .acquire(self.column, key_of(ip), REQUEST, cap, now)
            }
        };
        let pinned = match counted {
            Ok(Some(p)) => p,
            Ok(None) => {
                self.counters.record_client(ClientRefusal::TableFull);
                return Ok(None);
            }
            Err(_) => {
                self.counters.record_client(ClientRefusal::Requests);
                return Err(TooMany { retry_secs: 1 });
            }
        };
        let slot = RequestSlot {
            limiter: self,
            pinned,
        };
        if self.interval_ns > 0 {
            if let Err(retry_ns) = self
                .table
                .rate(pinned, now, self.interval_ns, self.limits.burst)
            {
                self.counters.record_client(ClientRefusal::Rate);
                return Err(TooMany {
                    retry_secs: retry_secs(retry_ns),
                });
            }
        }
        Ok(Some(slot))
    }
}

/// Whole seconds until a refused request would be admitted, rounded up, at least 1 and at
/// most a day (a rate state a hostile worker wrote could say anything).
fn retry_secs(retry_ns: u64) -> u64 {
    retry_ns.div_ceil(1_000_000_000).clamp(1, 86_400)
}

/// A request a per-client limit refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooMany {
    retry_secs: u64,
}

impl TooMany {
    /// `429 Too Many Requests` with `Retry-After`.
    pub fn response(self, head: bool) -> Response<Body> {
        let mut resp = Canned::TooManyRequests.response(head);
        resp.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(self.retry_secs));
        resp
    }
}

/// One counted connection: given back when the connection closes.
pub struct ConnSlot {
    limiter: &'static Limiter,
    pinned: Pinned,
}

impl ConnSlot {
    pub fn pinned(&self) -> Pinned {
        self.pinned
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let l = self.limiter;
        l.table.release(l.column, self.pinned, CONN);
    }
}

/// One counted request: given back when its answer is done (it lives in the access log
/// record, which goes with the last body byte).
pub struct RequestSlot {
    limiter: &'static Limiter,
    pinned: Pinned,
}

impl Drop for RequestSlot {
    fn drop(&mut self) {
        let l = self.limiter;
        l.table.release(l.column, self.pinned, REQUEST);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_within_bounds() {
        assert_eq!(retry_secs(0), 1);
        assert_eq!(retry_secs(1), 1);
        assert_eq!(retry_secs(1_000_000_000), 1);
        assert_eq!(retry_secs(1_000_000_001), 2);
        assert_eq!(retry_secs(u64::MAX), 86_400);
    }
}
