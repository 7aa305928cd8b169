//! The one retry curve of the master: a first delay that doubles on every further failure, up
//! to a cap. Crashed workers and the launcher ("Worker generations" in docs/architecture.md),
//! crashed instances ("Crashes and replacement" in docs/apps.md) and ACME account setup each
//! pass their own first delay and cap, so their documented schedules stay as they are. A leaf
//! module, like `clock`.

use std::time::Duration;

/// `first` doubled `doublings` times, at most `cap`.
pub fn doubling(first: Duration, cap: Duration, doublings: u32) -> Duration {
    let factor = 1u32.checked_shl(doublings).unwrap_or(u32::MAX);
    first.saturating_mul(factor).min(cap)
}

/// The wait before replacing something that failed `failures` times in a row: none after the
/// first failure (one crash is usually bad luck), then `first`, doubling up to `cap`.
pub fn after_failures(failures: u32, first: Duration, cap: Duration) -> Duration {
    match failures.checked_sub(2) {
        None => Duration::ZERO,
        Some(doublings) => doubling(first, cap, doublings),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_then_caps() {
        let s = Duration::from_secs;
        assert_eq!(doubling(s(1), s(60), 0), s(1));
        assert_eq!(doubling(s(1), s(60), 5), s(32));
        assert_eq!(doubling(s(1), s(60), 6), s(60));
        assert_eq!(doubling(s(1), s(60), u32::MAX), s(60));
        let secs: Vec<u64> = (0..=4)
            .map(|n| after_failures(n, s(1), s(4)).as_secs())
            .collect();
        assert_eq!(secs, vec![0, 0, 1, 2, 4]);
    }
}
