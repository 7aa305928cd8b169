//! The per-client table every proxy worker shares (docs/limits.md, "Per-client limits"): one
//! shared-memory file the master makes at start, sealed against resizing, mapped by the
//! master and by every worker. It holds, per client address, the connections and requests
//! open now (over all workers) and the rate state, so a limit is exact across workers.
//!
//! Layout, every field an 8-byte atomic:
//!
//! | part | size | what |
//! |---|---|---|
//! | locks | [`LOCKS`] words | insert locks, one per stripe of home positions |
//! | slots | `slots` × 4 words | key, counts, rate state (GCRA theoretical arrival time), spare |
//! | columns | `columns` × `slots` words | what each worker process added to each slot |
//!
//! A slot's counts word packs the open connections (bits 0-23), the requests in flight (bits
//! 24-47) and, while a slot changes hands, the column of the worker doing it, plus one (bits
//! 48-63). Each worker process has a column of its own, and adds to it what it adds to a
//! slot: when a worker dies the master subtracts its column from the slots and zeroes it, so
//! what the dead worker held is released and its replacement starts clean.
//!
//! Trust: a worker may be compromised and may write anything here. The master never takes a
//! position, length or pointer from the table: it walks its own geometry and only does
//! arithmetic (saturating) on what it reads. The worst a hostile worker can do through the
//! table is make the limits refuse clients of other workers, which it could do by other
//! means too (docs/security.md, "The per-client table").

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

/// Insert locks: one per group of home positions, so two workers inserting the same new
/// address serialize (and find each other's slot) while other inserts go on.
pub const LOCKS: usize = 4096;
/// Positions looked at from an address's home position. A window with no room sends the
/// address to no slot at all: not limited, counted as `table_full`.
pub const PROBE: usize = 32;
/// Addresses tracked at once.
pub const DEFAULT_SLOTS: u32 = 65536;
const SLOT_WORDS: usize = 4;
/// A key no client has: `ffff:ffff:ffff:ffff::/64` is multicast, never a source.
const EMPTY: u64 = u64::MAX;
/// A slot whose claim a dead worker left half done: not empty (lookups go past it), and free
/// to take.
const TOMBSTONE: u64 = u64::MAX - 1;

/// One open connection, as a counts-word unit.
pub const CONN: u64 = 1;
/// One request in flight, as a counts-word unit.
pub const REQUEST: u64 = 1 << 24;
const FIELD: u64 = (1 << 24) - 1;
const OWNER_SHIFT: u32 = 48;
const OWNER_MASK: u64 = !((1 << OWNER_SHIFT) - 1);
/// How many times a lookup retries a slot that changed hands under it.
const RETRIES: usize = 8;
/// How long an insert spins for its lock before it gives up (the address then goes
/// unlimited once): a holder only ever holds it for a few stores, unless it died, and the
/// master frees a dead worker's locks as soon as it has reaped it.
const LOCK_SPINS: usize = 20_000;

/// The key of a client address: an IPv4 address (IPv4-mapped IPv6 folded to it) whole, an
/// IPv6 address by its /64, the smallest block one subscriber gets. IPv4 keys use
/// `0:ffff::/32`, a reserved range no /64 of a real client falls in.
pub fn key_of(ip: IpAddr) -> u64 {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) => 0x0000_ffff_0000_0000 | u64::from(u32::from(v4)),
        IpAddr::V6(v6) => {
            let k = (u128::from(v6) >> 64) as u64;
            // Multicast is never a source; keep the two markers unreachable anyway.
            if k >= TOMBSTONE {
                TOMBSTONE - 1
            } else {
                k
            }
        }
    }
}

/// The shape of a table: what both sides must agree on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Geometry {
    /// Slots, a power of two.
    pub slots: u32,
    /// Worker columns.
    pub columns: u32,
    /// Mixed into the home position, so addresses cannot be picked to share a window.
    pub seed: u64,
}

impl Geometry {
    fn words(&self) -> Option<usize> {
        let slots = self.slots as usize;
        let columns = self.columns as usize;
        LOCKS
            .checked_add(slots.checked_mul(SLOT_WORDS)?)?
            .checked_add(slots.checked_mul(columns)?)
    }

    /// The file's size in bytes.
    pub fn bytes(&self) -> Option<usize> {
        self.words()?.checked_mul(8)
    }

    fn valid(&self) -> bool {
        self.slots.is_power_of_two()
            && self.slots as usize >= PROBE
            && self.columns >= 1
            && self.columns < (1 << 16) - 1
            && self.bytes().is_some()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("invalid client table geometry {0:?}")]
    Geometry(Geometry),
    #[error("cannot create the client table: {0}")]
    Create(io::Error),
    #[error("the client table file is {actual} bytes, expected {expected}")]
    Size { actual: u64, expected: usize },
    #[error("the client table file is not sealed against shrinking")]
    NotSealed,
    #[error("cannot map the client table: {0}")]
    Map(io::Error),
}

/// A mapping of the table.
pub struct Table {
    base: *mut AtomicU64,
    geometry: Geometry,
    len: usize,
}

// SAFETY: the mapping is only ever accessed through atomics, and it lives as long as the
// value (unmapped on drop).
unsafe impl Send for Table {}
unsafe impl Sync for Table {}

impl Drop for Table {
    fn drop(&mut self) {
        // SAFETY: `base` and `len` are the mapping made in `map`, not used after this.
        unsafe {
            libc::munmap(self.base.cast(), self.len);
        }
    }
}

/// Makes the table file (the master's side): a memfd of the geometry's size, zeroed and then
/// set to empty keys, sealed against growing, shrinking and further seals, so no worker can
/// shrink it under another process's mapping.
pub fn create(geometry: Geometry) -> Result<(OwnedFd, Table), TableError> {
    if !geometry.valid() {
        return Err(TableError::Geometry(geometry));
    }
    let len = geometry.bytes().ok_or(TableError::Geometry(geometry))?;
    // SAFETY: a constant NUL-terminated name and flags; the result is checked.
    let raw = unsafe {
        libc::memfd_create(
            c"tako-client-table".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    if raw < 0 {
        return Err(TableError::Create(io::Error::last_os_error()));
    }
    // SAFETY: `raw` is a new descriptor owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: plain calls on a descriptor we own; results checked.
    unsafe {
        if libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) != 0 {
            return Err(TableError::Create(io::Error::last_os_error()));
        }
        let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
        if libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) != 0 {
            return Err(TableError::Create(io::Error::last_os_error()));
        }
    }
    let table = map_checked(&fd, geometry)?;
    for s in 0..geometry.slots as usize {
        table.slot_word(s, 0).store(EMPTY, Ordering::Relaxed);
    }
    Ok((fd, table))
}

/// Maps a table the master made (a worker's side), after checking that the file has the
/// size the geometry says and cannot shrink: a shorter file would fault on access.
pub fn map(fd: &OwnedFd, geometry: Geometry) -> Result<Table, TableError> {
    if !geometry.valid() {
        return Err(TableError::Geometry(geometry));
    }
    // SAFETY: F_GET_SEALS on a descriptor we hold.
    let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
    if seals < 0 || seals & libc::F_SEAL_SHRINK == 0 {
        return Err(TableError::NotSealed);
    }
    map_checked(fd, geometry)
}

fn map_checked(fd: &OwnedFd, geometry: Geometry) -> Result<Table, TableError> {
    let len = geometry.bytes().ok_or(TableError::Geometry(geometry))?;
    // SAFETY: fstat into a zeroed struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(TableError::Map(io::Error::last_os_error()));
    }
    if st.st_size as u64 != len as u64 {
        return Err(TableError::Size {
            actual: st.st_size as u64,
            expected: len,
        });
    }
    // SAFETY: a fresh shared mapping of the whole file; checked below.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(TableError::Map(io::Error::last_os_error()));
    }
    Ok(Table {
        base: base.cast(),
        geometry,
        len,
    })
}

/// Why an address was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The cap on this kind of unit is reached.
    Cap,
}

/// Where an address's units were counted: hand it back to [`Table::release`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pinned(u32);

impl Table {
    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    fn word(&self, index: usize) -> &AtomicU64 {
        debug_assert!(index < self.len / 8);
        // SAFETY: every caller passes an index inside the geometry (positions are masked
        // with `slots - 1`, columns checked), so it lies inside the mapping, which is
        // 8-aligned (page-aligned base, 8-byte words) and only ever accessed atomically.
        unsafe { &*self.base.add(index) }
    }

    fn lock(&self, stripe: usize) -> &AtomicU64 {
        self.word(stripe % LOCKS)
    }

    /// Word `w` of slot `s`: 0 key, 1 counts, 2 theoretical arrival time.
    fn slot_word(&self, s: usize, w: usize) -> &AtomicU64 {
        self.word(LOCKS + (s % self.geometry.slots as usize) * SLOT_WORDS + w)
    }

    fn column(&self, column: u16, s: usize) -> &AtomicU64 {
        let slots = self.geometry.slots as usize;
        let c = (column as usize).min(self.geometry.columns as usize - 1);
        self.word(LOCKS + slots * SLOT_WORDS + c * slots + s % slots)
    }

    fn home(&self, key: u64) -> usize {
        // splitmix64's finalizer over the seeded key.
        let mut z = key ^ self.geometry.seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z as usize) & (self.geometry.slots as usize - 1)
    }

    /// Counts one `unit` ([`CONN`] or [`REQUEST`]) for `key` in `column` unless that makes
    /// more than `cap` (0: no cap). `Ok(None)`: no room in the table, the unit goes
    /// uncounted.
    pub fn acquire(
        &self,
        column: u16,
        key: u64,
        unit: u64,
        cap: u32,
        now_ns: u64,
    ) -> Result<Option<Pinned>, Refused> {
        let home = self.home(key);
        for _ in 0..RETRIES {
            // Usually found at once; a miss ends at the first never-used slot.
            let mut found = None;
            for i in 0..PROBE {
                let s = (home + i) & (self.geometry.slots as usize - 1);
                let k = self.slot_word(s, 0).load(Ordering::Acquire);
                if k == key {
                    found = Some(s);
                    break;
                }
                if k == EMPTY {
                    break;
                }
            }
            let s = match found {
                Some(s) => s,
                None => match self.insert(column, key, home, unit, now_ns) {
                    Insert::Pinned(s) => return Ok(Some(Pinned(s as u32))),
                    Insert::Found(s) => s,
                    Insert::NoRoom => return Ok(None),
                },
            };
            match self.pin(column, s, key, unit, cap) {
                Pin::Done => return Ok(Some(Pinned(s as u32))),
                Pin::Over => return Err(Refused::Cap),
                Pin::Moved => continue,
            }
        }
        Ok(None)
    }

    /// Adds `unit` to a slot found holding `key`.
    fn pin(&self, column: u16, s: usize, key: u64, unit: u64, cap: u32) -> Pin {
        let counts = self.slot_word(s, 1);
        let old = counts.fetch_add(unit, Ordering::AcqRel);
        // Changing hands, or changed hands since the key was read: look again.
        if old & OWNER_MASK != 0 || self.slot_word(s, 0).load(Ordering::Acquire) != key {
            counts.fetch_sub(unit, Ordering::AcqRel);
            return Pin::Moved;
        }
        let shift = unit.trailing_zeros();
        let n = ((old >> shift) & FIELD) + 1;
        if cap > 0 && n > u64::from(cap) {
            counts.fetch_sub(unit, Ordering::AcqRel);
            return Pin::Over;
        }
        // After the total: a worker killed in between leaves one unit too many, never one
        // too few (the master's subtraction could otherwise go below what others hold).
        self.column(column, s).fetch_add(unit, Ordering::AcqRel);
        Pin::Done
    }

    /// Finds or makes the slot of `key`, under the lock of its home's stripe: two workers
    /// inserting one address take turns, so an address never gets two slots.
    fn insert(&self, column: u16, key: u64, home: usize, unit: u64, now_ns: u64) -> Insert {
        let lock = self.lock(home);
        let me = u64::from(column) + 1;
        let mut spins = 0;
        while lock
            .compare_exchange(0, me, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            spins += 1;
            if spins >= LOCK_SPINS {
                return Insert::NoRoom;
            }
            if spins % 64 == 0 {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        let out = self.insert_locked(column, key, home, unit, now_ns);
        lock.store(0, Ordering::Release);
        out
    }

    fn insert_locked(&self, column: u16, key: u64, home: usize, unit: u64, now_ns: u64) -> Insert {
        let mask = self.geometry.slots as usize - 1;
        for i in 0..PROBE {
            let s = (home + i) & mask;
            if self.slot_word(s, 0).load(Ordering::Acquire) == key {
                return Insert::Found(s);
            }
        }
        let me = u64::from(column) + 1;
        for i in 0..PROBE {
            let s = (home + i) & mask;
            let counts = self.slot_word(s, 1);
            // Only a slot nobody holds anything in can change hands; taking it blocks
            // every pin until it has its new key.
            if counts
                .compare_exchange(0, me << OWNER_SHIFT, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                continue;
            }
            let k = self.slot_word(s, 0).load(Ordering::Acquire);
            let tat = self.slot_word(s, 2).load(Ordering::Acquire);
            // A slot whose rate state is still running keeps its address.
            if k == key || (k != EMPTY && k != TOMBSTONE && tat > now_ns) {
                counts.fetch_and(!OWNER_MASK, Ordering::AcqRel);
                if k == key {
                    return Insert::Found(s);
                }
                continue;
            }
            self.slot_word(s, 2).store(0, Ordering::Release);
            self.slot_word(s, 0).store(key, Ordering::Release);
            counts.fetch_add(unit, Ordering::AcqRel);
            self.column(column, s).fetch_add(unit, Ordering::AcqRel);
            counts.fetch_and(!OWNER_MASK, Ordering::AcqRel);
            return Insert::Pinned(s);
        }
        Insert::NoRoom
    }

    /// Counts one more `unit` in a slot this worker already holds a unit of (so its key
    /// cannot change), unless that makes more than `cap` (0: no cap).
    pub fn add(&self, column: u16, pinned: Pinned, unit: u64, cap: u32) -> Result<(), Refused> {
        let s = pinned.0 as usize;
        let counts = self.slot_word(s, 1);
        let old = counts.fetch_add(unit, Ordering::AcqRel);
        let n = ((old >> unit.trailing_zeros()) & FIELD) + 1;
        if cap > 0 && n > u64::from(cap) {
            counts.fetch_sub(unit, Ordering::AcqRel);
            return Err(Refused::Cap);
        }
        self.column(column, s).fetch_add(unit, Ordering::AcqRel);
        Ok(())
    }

    /// Gives back a unit [`Table::acquire`] or [`Table::add`] counted.
    pub fn release(&self, column: u16, pinned: Pinned, unit: u64) {
        let s = pinned.0 as usize;
        // The column first: a worker killed in between leaves one unit too many (see `pin`).
        saturating_sub(self.column(column, s), unit);
        saturating_sub(self.slot_word(s, 1), unit);
    }

    /// Counts one request against the rate of the pinned slot's address (generic cell rate:
    /// `interval_ns` apart on average, `burst` at once). `Err(retry_ns)` when over.
    pub fn rate(
        &self,
        pinned: Pinned,
        now_ns: u64,
        interval_ns: u64,
        burst: u32,
    ) -> Result<(), u64> {
        let tat = self.slot_word(pinned.0 as usize, 2);
        let window = interval_ns.saturating_mul(u64::from(burst.max(1)));
        let mut cur = tat.load(Ordering::Acquire);
        loop {
            let next = cur.max(now_ns).saturating_add(interval_ns);
            let ahead = next - now_ns;
            if ahead > window {
                return Err(ahead - window);
            }
            match tat.compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Ok(()),
                Err(seen) => cur = seen,
            }
        }
    }

    /// The units a pinned slot holds now: (connections, requests), over all workers.
    pub fn counts(&self, pinned: Pinned) -> (u64, u64) {
        let w = self.slot_word(pinned.0 as usize, 1).load(Ordering::Acquire);
        (w & FIELD, (w >> 24) & FIELD)
    }

    /// Releases everything a dead worker's column holds, and the locks and half-done claims
    /// it left (the master's side, once the process is reaped). Reads only numbers.
    pub fn clear_column(&self, column: u16) -> u64 {
        if u32::from(column) >= self.geometry.columns {
            return 0;
        }
        let me = u64::from(column) + 1;
        let mut released = 0u64;
        for s in 0..self.geometry.slots as usize {
            let held = self.column(column, s).swap(0, Ordering::AcqRel);
            let counts = self.slot_word(s, 1);
            if held != 0 {
                let (c, r) = (held & FIELD, (held >> 24) & FIELD);
                released = released.saturating_add(c + r);
                let _ = counts.fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                    let nc = (w & FIELD).saturating_sub(c);
                    let nr = ((w >> 24) & FIELD).saturating_sub(r);
                    Some((w & OWNER_MASK) | nr << 24 | nc)
                });
            }
            if counts.load(Ordering::Acquire) >> OWNER_SHIFT == me {
                let key = self.slot_word(s, 0);
                let _ = key.compare_exchange(EMPTY, TOMBSTONE, Ordering::AcqRel, Ordering::Acquire);
                counts.fetch_and(!OWNER_MASK, Ordering::AcqRel);
            }
        }
        for l in 0..LOCKS {
            let _ = self
                .lock(l)
                .compare_exchange(me, 0, Ordering::AcqRel, Ordering::Acquire);
        }
        released
    }
}

enum Pin {
    Done,
    Over,
    Moved,
}

enum Insert {
    Pinned(usize),
    Found(usize),
    NoRoom,
}

/// Takes `unit` off a counts word, never below zero in its field: a word a hostile worker
/// wrote stays a number.
fn saturating_sub(word: &AtomicU64, unit: u64) {
    let shift = unit.trailing_zeros();
    let _ = word.fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
        if (w >> shift) & FIELD == 0 {
            None
        } else {
            Some(w - unit)
        }
    });
}

/// CLOCK_MONOTONIC in nanoseconds: one clock for every process on the host, so rate states
/// written by one worker are read right by another.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
    }
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(columns: u32) -> Table {
        create(Geometry {
            slots: 64,
            columns,
            seed: 7,
        })
        .unwrap()
        .1
    }

    fn k(s: &str) -> u64 {
        key_of(s.parse().unwrap())
    }

    #[test]
    fn keys_fold_mapped_ipv4_and_group_ipv6_by_64() {
        assert_eq!(k("192.0.2.1"), k("::ffff:192.0.2.1"));
        assert_ne!(k("192.0.2.1"), k("192.0.2.2"));
        assert_eq!(k("2001:db8:1:2::1"), k("2001:db8:1:2:ffff::9"));
        assert_ne!(k("2001:db8:1:2::1"), k("2001:db8:1:3::1"));
        assert_ne!(k("::1"), EMPTY);
    }

    #[test]
    fn caps_are_exact_over_columns_and_release_gives_back() {
        let t = table(2);
        let a = k("192.0.2.1");
        let p = t.acquire(0, a, CONN, 3, 1).unwrap().unwrap();
        t.acquire(1, a, CONN, 3, 1).unwrap().unwrap();
        t.acquire(0, a, CONN, 3, 1).unwrap().unwrap();
        assert_eq!(t.acquire(1, a, CONN, 3, 1), Err(Refused::Cap));
        // Requests are a cap of their own.
        t.acquire(1, a, REQUEST, 1, 1).unwrap().unwrap();
        assert_eq!(t.acquire(0, a, REQUEST, 1, 1), Err(Refused::Cap));
        assert_eq!(t.counts(p), (3, 1));
        t.release(0, p, CONN);
        assert!(t.acquire(1, a, CONN, 3, 1).unwrap().is_some());
        // Another address is not touched.
        assert!(t.acquire(0, k("192.0.2.2"), CONN, 1, 1).unwrap().is_some());
    }

    #[test]
    fn a_dead_columns_units_are_released() {
        let t = table(2);
        let a = k("192.0.2.1");
        for _ in 0..2 {
            t.acquire(1, a, CONN, 2, 1).unwrap().unwrap();
        }
        let p = t.acquire(0, a, REQUEST, 0, 1).unwrap().unwrap();
        assert_eq!(t.acquire(0, a, CONN, 2, 1), Err(Refused::Cap));
        assert_eq!(t.clear_column(1), 2);
        assert_eq!(t.counts(p), (0, 1), "column 0's request stays");
        assert!(t.acquire(0, a, CONN, 2, 1).unwrap().is_some());
        // A column out of range is nothing to clear.
        assert_eq!(t.clear_column(9), 0);
    }

    #[test]
    fn rate_allows_a_burst_then_one_per_interval() {
        let t = table(1);
        let p = t
            .acquire(0, k("192.0.2.1"), REQUEST, 0, 1000)
            .unwrap()
            .unwrap();
        let now = 1_000_000_000;
        for _ in 0..3 {
            assert_eq!(t.rate(p, now, 100, 3), Ok(()));
        }
        assert_eq!(t.rate(p, now, 100, 3), Err(100));
        assert_eq!(t.rate(p, now + 100, 100, 3), Ok(()));
    }

    #[test]
    fn idle_slots_change_hands_but_running_rate_states_stay() {
        let t = table(1);
        let now = 1_000;
        // Addresses with a running rate state and nothing open, until one finds no room.
        let mut homeless = None;
        for x in 0..10_000u64 {
            match t.acquire(0, x, REQUEST, 0, now).unwrap() {
                Some(p) => {
                    t.rate(p, now, 1_000_000, 10).unwrap();
                    t.release(0, p, REQUEST);
                }
                None => {
                    homeless = Some(x);
                    break;
                }
            }
        }
        let x = homeless.expect("a full window");
        // Once the rate states ran out, their slots are free to take.
        let later = now + 10_000_000;
        let p = t.acquire(0, x, REQUEST, 0, later).unwrap().expect("room");
        assert_eq!(t.counts(p), (0, 1));
    }

    #[test]
    fn a_table_that_can_shrink_is_refused() {
        let (fd, t) = create(Geometry {
            slots: 64,
            columns: 1,
            seed: 1,
        })
        .unwrap();
        assert!(map(&fd, t.geometry()).is_ok());
        let other = Geometry {
            slots: 128,
            ..t.geometry()
        };
        assert!(matches!(map(&fd, other), Err(TableError::Size { .. })));
    }
}
