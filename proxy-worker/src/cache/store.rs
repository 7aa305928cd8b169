//! The entries of one worker: primary key → up to 16 variants, least-recently-used eviction by
//! bytes within the budget (docs/http.md, "Response cache").

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::HeaderMap;
use http::StatusCode;

use super::key::VaryRecord;

/// Most variants kept under one primary key.
pub const MAX_VARIANTS: usize = 16;

/// One stored response.
#[derive(Debug)]
pub struct Entry {
    /// The app it came from, for purges.
    pub app: String,
    pub status: StatusCode,
    /// Hop-by-hop and `Age` removed.
    pub headers: HeaderMap,
    pub body: Bytes,
    pub vary: VaryRecord,
    pub stored_at: Instant,
    /// Upstream `Age` plus the time the response took to arrive.
    pub initial_age: Duration,
    pub lifetime: Duration,
    /// The response said `Cache-Control: public`: requests with credentials may have it.
    pub public: bool,
}

impl Entry {
    pub fn age(&self, now: Instant) -> Duration {
        self.initial_age + now.saturating_duration_since(self.stored_at)
    }

    pub fn fresh(&self, now: Instant) -> bool {
        self.age(now) < self.lifetime
    }

    /// Remaining freshness.
    pub fn ttl(&self, now: Instant) -> Duration {
        self.lifetime.saturating_sub(self.age(now))
    }

    /// What the entry costs against the budget: key, headers and body.
    fn size(&self, key: &str) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len())
            .sum();
        key.len() + headers + self.body.len() + self.vary.size() + self.app.len()
    }
}

#[derive(Debug)]
pub enum Found {
    Hit(Arc<Entry>),
    /// The key exists but no variant matches the request.
    VaryMiss,
    /// The matching variant is stale; it was dropped.
    Stale,
    Miss,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    Yes,
    /// Larger than the whole budget.
    TooLarge,
}

struct Slot {
    /// Also the slot's position in the LRU order; renewed on every use.
    tick: u64,
    size: usize,
    entry: Arc<Entry>,
}

pub struct Store {
    budget: usize,
    bytes: usize,
    entries: usize,
    map: HashMap<String, Vec<Slot>>,
    lru: BTreeMap<u64, String>,
    next_tick: u64,
    /// Evictions since the last [`Store::take_evictions`].
    evicted: u64,
}

impl Store {
    pub fn new(budget: usize) -> Self {
        Self {
            budget,
            bytes: 0,
            entries: 0,
            map: HashMap::new(),
            lru: BTreeMap::new(),
            next_tick: 0,
            evicted: 0,
        }
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn len(&self) -> usize {
        self.entries
    }

    pub fn take_evictions(&mut self) -> u64 {
        std::mem::take(&mut self.evicted)
    }

    fn tick(&mut self) -> u64 {
        self.next_tick += 1;
        self.next_tick
    }

    pub fn lookup(&mut self, key: &str, req: &HeaderMap, now: Instant) -> Found {
        let Some(slots) = self.map.get(key) else {
            return Found::Miss;
        };
        let Some(i) = slots.iter().position(|s| s.entry.vary.matches(req)) else {
            return Found::VaryMiss;
        };
        if !slots[i].entry.fresh(now) {
            self.remove_at(key, i);
            return Found::Stale;
        }
        let tick = self.tick();
        let Some(slot) = self.map.get_mut(key).and_then(|s| s.get_mut(i)) else {
            return Found::Miss;
        };
        self.lru.remove(&slot.tick);
        slot.tick = tick;
        self.lru.insert(tick, key.to_string());
        Found::Hit(Arc::clone(&slot.entry))
    }

    /// Stores `entry`, replacing the variant the fetching request `req` matched, evicting
    /// least recently used entries until it fits.
    pub fn insert(&mut self, key: String, entry: Entry, req: &HeaderMap) -> Stored {
        let size = entry.size(&key);
        if size > self.budget {
            return Stored::TooLarge;
        }
        if let Some(slots) = self.map.get(&key) {
            let replaced: Vec<usize> = slots
                .iter()
                .enumerate()
                .filter(|(_, s)| s.entry.vary.matches(req) || s.entry.vary == entry.vary)
                .map(|(i, _)| i)
                .collect();
            for i in replaced.into_iter().rev() {
                self.remove_at(&key, i);
            }
        }
        if self.map.get(&key).is_some_and(|s| s.len() >= MAX_VARIANTS) {
            let oldest = self.map.get(&key).and_then(|s| {
                s.iter()
                    .enumerate()
                    .min_by_key(|(_, s)| s.tick)
                    .map(|(i, _)| i)
            });
            if let Some(i) = oldest {
                self.remove_at(&key, i);
                self.evicted += 1;
            }
        }
        while self.bytes + size > self.budget {
            let Some((_, victim_key)) = self.lru.first_key_value() else {
                break;
            };
            let victim_key = victim_key.clone();
            let Some(i) = self.oldest_in(&victim_key) else {
                break;
            };
            self.remove_at(&victim_key, i);
            self.evicted += 1;
        }
        let tick = self.tick();
        self.lru.insert(tick, key.clone());
        self.bytes += size;
        self.entries += 1;
        self.map.entry(key).or_default().push(Slot {
            tick,
            size,
            entry: Arc::new(entry),
        });
        Stored::Yes
    }

    fn oldest_in(&self, key: &str) -> Option<usize> {
        let first = *self.lru.first_key_value()?.0;
        self.map.get(key)?.iter().position(|s| s.tick == first)
    }

    fn remove_at(&mut self, key: &str, i: usize) {
        let Some(slots) = self.map.get_mut(key) else {
            return;
        };
        if i >= slots.len() {
            return;
        }
        let slot = slots.swap_remove(i);
        if slots.is_empty() {
            self.map.remove(key);
        }
        self.lru.remove(&slot.tick);
        self.bytes -= slot.size;
        self.entries -= 1;
    }

    /// Drops every variant of `key`; returns how many.
    pub fn remove_key(&mut self, key: &str) -> usize {
        let n = self.map.get(key).map_or(0, Vec::len);
        for i in (0..n).rev() {
            self.remove_at(key, i);
        }
        n
    }

    /// Drops every entry of `app`; returns how many.
    pub fn purge_app(&mut self, app: &str) -> usize {
        let keys: Vec<String> = self
            .map
            .iter()
            .filter(|(_, slots)| slots.iter().any(|s| s.entry.app == app))
            .map(|(k, _)| k.clone())
            .collect();
        let mut n = 0;
        for key in keys {
            while let Some(i) = self
                .map
                .get(&key)
                .and_then(|s| s.iter().position(|s| s.entry.app == app))
            {
                self.remove_at(&key, i);
                n += 1;
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::{HeaderName, HeaderValue};

    fn entry(app: &str, body: usize, vary: VaryRecord, lifetime: u64) -> Entry {
        Entry {
            app: app.into(),
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: Bytes::from(vec![b'x'; body]),
            vary,
            stored_at: Instant::now(),
            initial_age: Duration::ZERO,
            lifetime: Duration::from_secs(lifetime),
            public: false,
        }
    }

    fn lang(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            HeaderName::from_static("accept-language"),
            HeaderValue::from_str(v).expect("test value"),
        );
        h
    }

    #[test]
    fn lru_by_bytes() {
        // Each entry: key (2) + body (100) + app (1).
        let mut s = Store::new(3 * 103);
        let none = HeaderMap::new();
        for k in ["/a", "/b", "/c"] {
            assert_eq!(
                s.insert(k.into(), entry("w", 100, VaryRecord::default(), 60), &none),
                Stored::Yes
            );
        }
        assert_eq!(s.bytes(), 309);
        assert!(matches!(
            s.lookup("/a", &none, Instant::now()),
            Found::Hit(_)
        ));
        s.insert(
            "/d".into(),
            entry("w", 100, VaryRecord::default(), 60),
            &none,
        );
        assert!(
            matches!(s.lookup("/b", &none, Instant::now()), Found::Miss),
            "b was LRU"
        );
        assert!(matches!(
            s.lookup("/a", &none, Instant::now()),
            Found::Hit(_)
        ));
        assert_eq!(s.take_evictions(), 1);
        assert_eq!(s.len(), 3);
        assert_eq!(
            s.insert(
                "/big".into(),
                entry("w", 400, VaryRecord::default(), 60),
                &none
            ),
            Stored::TooLarge
        );
        assert_eq!(s.len(), 3);
    }

    #[test]
    fn variants_replace_and_cap() {
        let mut s = Store::new(1 << 20);
        let names = [HeaderName::from_static("accept-language")];
        let en = lang("en");
        let fr = lang("fr");
        s.insert(
            "/".into(),
            entry("w", 1, VaryRecord::record(&names, &en, None), 60),
            &en,
        );
        s.insert(
            "/".into(),
            entry("w", 2, VaryRecord::record(&names, &fr, None), 60),
            &fr,
        );
        assert_eq!(s.len(), 2);
        let Found::Hit(e) = s.lookup("/", &fr, Instant::now()) else {
            panic!("fr")
        };
        assert_eq!(e.body.len(), 2);
        assert!(matches!(
            s.lookup("/", &lang("de"), Instant::now()),
            Found::VaryMiss
        ));
        s.insert(
            "/".into(),
            entry("w", 3, VaryRecord::record(&names, &en, None), 60),
            &en,
        );
        assert_eq!(s.len(), 2, "same variant replaced");
        for i in 0..20 {
            let v = lang(&format!("l{i}"));
            s.insert(
                "/".into(),
                entry("w", 1, VaryRecord::record(&names, &v, None), 60),
                &v,
            );
        }
        assert_eq!(s.len(), MAX_VARIANTS);
        assert!(
            matches!(s.lookup("/", &en, Instant::now()), Found::VaryMiss),
            "oldest went"
        );
    }

    #[test]
    fn stale_is_dropped_purge_and_remove() {
        let mut s = Store::new(1 << 20);
        let none = HeaderMap::new();
        s.insert(
            "/old".into(),
            entry("w", 1, VaryRecord::default(), 0),
            &none,
        );
        assert!(matches!(
            s.lookup("/old", &none, Instant::now()),
            Found::Stale
        ));
        assert!(matches!(
            s.lookup("/old", &none, Instant::now()),
            Found::Miss
        ));
        s.insert("/a".into(), entry("w", 1, VaryRecord::default(), 60), &none);
        s.insert(
            "/b".into(),
            entry("api", 1, VaryRecord::default(), 60),
            &none,
        );
        assert_eq!(s.purge_app("w"), 1);
        assert_eq!(s.remove_key("/b"), 1);
        assert_eq!((s.len(), s.bytes()), (0, 0));
        assert!(s.lru.is_empty() && s.map.is_empty());
    }
}
