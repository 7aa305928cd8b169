//! Releases seen without a `public/` directory a moment ago (docs/http.md, "Static files").
//!
//! A request whose last path segment has a dot (an API's `/users.json` as much as an asset)
//! is a static file candidate, and looking for the file runs on the blocking pool: a hand-off
//! to another thread and back, and a few filesystem calls, for every such request. Most apps
//! have no `public/` at all, so its absence is remembered for [`FOR`] and those requests go
//! straight to the app; a `public/` created in a live release is served within that time.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How long a missing `public/` is taken as still missing.
pub const FOR: Duration = Duration::from_secs(1);
/// Releases remembered at once; past it the memo starts over (a worker serves few releases).
const MAX: usize = 64;

#[derive(Default)]
struct Memo {
    seen: HashMap<String, Instant>,
}

impl Memo {
    fn absent(&self, release: &str, now: Instant) -> bool {
        self.seen
            .get(release)
            .is_some_and(|&at| now.saturating_duration_since(at) < FOR)
    }

    fn record(&mut self, release: &str, now: Instant) {
        if self.seen.len() >= MAX && !self.seen.contains_key(release) {
            self.seen.clear();
        }
        self.seen.insert(release.to_string(), now);
    }
}

thread_local! {
    // The worker's runtime is single-threaded: one memo per worker.
    static MEMO: RefCell<Memo> = RefCell::new(Memo::default());
}

/// Whether `release` had no `public/` a moment ago.
pub fn recently_absent(release: &str) -> bool {
    let now = Instant::now();
    MEMO.with(|m| m.borrow().absent(release, now))
}

/// `release` has no `public/` now.
pub fn record_absent(release: &str) {
    let now = Instant::now();
    MEMO.with(|m| m.borrow_mut().record(release, now));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absence_is_remembered_for_a_while_and_per_release() {
        let mut memo = Memo::default();
        let t0 = Instant::now();
        assert!(!memo.absent("/r/1", t0), "never looked at");
        memo.record("/r/1", t0);
        assert!(memo.absent("/r/1", t0 + FOR / 2));
        assert!(!memo.absent("/r/1", t0 + FOR), "looked at again after FOR");
        assert!(!memo.absent("/r/2", t0), "another release");
    }

    #[test]
    fn the_memo_is_bounded() {
        let mut memo = Memo::default();
        let t0 = Instant::now();
        for i in 0..MAX * 3 {
            memo.record(&format!("/r/{i}"), t0);
            assert!(memo.seen.len() <= MAX);
        }
        assert!(memo.absent(&format!("/r/{}", MAX * 3 - 1), t0));
    }
}
