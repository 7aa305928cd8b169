//! The per-client table as the master keeps it (docs/limits.md, "Per-client limits"): made
//! once at start, handed to every worker with a column of its own, and that column cleared
//! once the worker is reaped, so what a dead worker held is released at once and its
//! replacement starts from exact counts. The rate states live in the slots, not in a
//! column: they outlive any worker.

use std::os::fd::OwnedFd;
use std::sync::Mutex;

use tako_ipc::client_table::{self, Geometry, Table, DEFAULT_SLOTS};
use tako_ipc::ClientLimits;

/// The table and the columns no live worker holds.
pub struct ClientColumns {
    fd: OwnedFd,
    table: Table,
    free: Mutex<Vec<u16>>,
}

/// Columns for `workers` worker slots: a rolling restart runs an old and a new process per
/// slot while the old one drains, and a few more cover crash replacements meanwhile. A worker
/// that finds none free waits for one (docs/limits.md).
fn columns_for(workers: usize) -> u32 {
    (workers as u32).saturating_mul(2).saturating_add(4)
}

impl ClientColumns {
    /// `None` when every limit is off, or (logged) when the table cannot be made: the
    /// workers then serve without per-client limits.
    pub fn create(workers: usize, limits: ClientLimits) -> Option<ClientColumns> {
        if !limits.any() {
            return None;
        }
        let geometry = Geometry {
            slots: DEFAULT_SLOTS,
            columns: columns_for(workers),
            seed: seed(),
        };
        match client_table::create(geometry) {
            Ok((fd, table)) => {
                let free = (0..geometry.columns as u16).rev().collect();
                Some(ClientColumns {
                    fd,
                    table,
                    free: Mutex::new(free),
                })
            }
            Err(error) => {
                tracing::error!(%error, "Cannot make the per-client table; serving without per-client limits");
                None
            }
        }
    }

    pub fn geometry(&self) -> Geometry {
        self.table.geometry()
    }

    /// A descriptor of the table for one worker.
    pub fn fd(&self) -> std::io::Result<OwnedFd> {
        self.fd.try_clone()
    }

    /// A column no live worker holds, if any.
    pub fn lease(&self) -> Option<u16> {
        crate::sync::lock(&self.free).pop()
    }

    /// Releases what the column's worker held and makes the column free again. Only once
    /// its process is gone: a live one would go on writing to it.
    pub fn give_back(&self, column: u16) {
        let released = self.table.clear_column(column);
        if released > 0 {
            tracing::info!(
                column,
                released,
                "Released a gone worker's per-client counts"
            );
        }
        let mut free = crate::sync::lock(&self.free);
        if !free.contains(&column) {
            free.push(column);
        }
    }
}

/// A random seed for the table's hash, so no one can pick addresses that share a window.
fn seed() -> u64 {
    let mut buf = [0u8; 8];
    // SAFETY: getrandom writes at most `buf.len()` bytes into `buf`.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n != buf.len() as isize {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        return nanos ^ u64::from(std::process::id()) << 32;
    }
    u64::from_ne_bytes(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_leased_once_and_cleared_on_return() {
        let limits = ClientLimits {
            max_connections: 1,
            ..Default::default()
        };
        let c = ClientColumns::create(1, limits).unwrap();
        let leased: Vec<u16> = std::iter::from_fn(|| c.lease()).collect();
        assert_eq!(leased.len(), 6);
        assert_eq!(c.lease(), None);
        let key = client_table::key_of("192.0.2.1".parse().unwrap());
        let t = &c.table;
        t.acquire(leased[0], key, client_table::CONN, 1, 1)
            .unwrap()
            .unwrap();
        assert!(t.acquire(leased[1], key, client_table::CONN, 1, 1).is_err());
        c.give_back(leased[0]);
        assert!(t.acquire(leased[1], key, client_table::CONN, 1, 1).is_ok());
        assert_eq!(c.lease(), Some(leased[0]));
        assert!(
            ClientColumns::create(1, ClientLimits::default()).is_none(),
            "all off"
        );
    }
}
