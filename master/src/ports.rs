//! Instance ports (docs/apps.md, "Ports"): a block of 64 per app from 10000, slots reused.

use std::collections::HashSet;
use std::net::{Ipv4Addr, TcpListener};

pub const FIRST_BASE: u16 = 10000;
pub const BLOCK: u16 = 64;
pub const BLOCKS: u16 = 156;

pub fn is_valid_base(base: u16) -> bool {
    base >= FIRST_BASE
        && (base - FIRST_BASE).is_multiple_of(BLOCK)
        && (base - FIRST_BASE) / BLOCK < BLOCKS
}

/// The lowest block start not in `used`.
pub fn free_base(used: &HashSet<u16>) -> Option<u16> {
    (0..BLOCKS)
        .map(|k| FIRST_BASE + k * BLOCK)
        .find(|b| !used.contains(b))
}

/// The lowest slot not held by a live instance whose port binds on 127.0.0.1 now.
pub fn free_slot(base: u16, offset: u16, held: &HashSet<u16>) -> Option<(u16, u16)> {
    (0..BLOCK).filter(|s| !held.contains(s)).find_map(|slot| {
        let port = base.checked_add(slot)?.checked_add(offset)?;
        TcpListener::bind((Ipv4Addr::LOCALHOST, port))
            .ok()
            .map(|_| (slot, port))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bases() {
        assert!(is_valid_base(10000));
        assert!(is_valid_base(10064));
        assert!(!is_valid_base(10001));
        assert!(!is_valid_base(9936));
        assert!(!is_valid_base(10000 + 156 * 64));
        let used: HashSet<u16> = [10000, 10128].into_iter().collect();
        assert_eq!(free_base(&used), Some(10064));
    }

    #[test]
    fn slots_skip_held_and_bound_ports() {
        let taken = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = taken.local_addr().unwrap().port();
        // Make the block start at the taken port so slot 0 is busy.
        let held: HashSet<u16> = HashSet::new();
        let (slot, p) = free_slot(port, 0, &held).unwrap();
        assert!(slot >= 1 && p != port);
        let held: HashSet<u16> = [1].into_iter().collect();
        let (slot2, _) = free_slot(port, 0, &held).unwrap();
        assert_ne!(slot2, 1);
    }
}
