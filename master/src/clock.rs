//! The wall clock in the one form the master stores and shows: whole seconds since the Unix
//! epoch. A leaf module, so every room can read the time without reaching into another.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch; 0 if the clock is set before it.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
