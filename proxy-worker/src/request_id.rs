//! Request ids (docs/http.md, "Request IDs"): the id a request carries to the app, back to the
//! client and into the access log. A trusted peer's own `X-Request-ID` is kept when it is
//! short and printable; every other request gets one made here.
//!
//! A made id is 128 bits, rendered as 26 characters of Crockford base32 (the ULID layout, so
//! ULID tools read its time):
//!
//! | bits | what |
//! |---|---|
//! | 48 | milliseconds since the Unix epoch |
//! | 16 | the worker's index |
//! | 32 | a per-worker counter, from a random start |
//! | 32 | a random tag drawn once per worker |
//!
//! The time comes from the request's own start (the access log's `Instant`), counted from a
//! wall-clock reading taken once: no clock is read for an id, and the ids of one worker never
//! go back in time. Within a worker, ids sort in the order they were made (time, then
//! counter); the random parts keep two hosts, or a worker and its successor, apart.

use std::cell::{Cell, RefCell};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use http::header::{Entry, HeaderMap, HeaderName, HeaderValue};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest incoming id that is kept: a UUID is 36 bytes, a ULID 26; 128 leaves room for
/// composite ids without letting one request bloat every log line it appears in.
pub const MAX_INCOMING_LEN: usize = 128;

/// Length of a made id.
pub const LEN: usize = 26;

/// Crockford's base32 alphabet: in ASCII order, so ids of one length sort as their numbers.
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// Made ids are cut from one shared buffer of this many ids, so a request costs no
/// allocation of its own for its id; a chunk is freed when its last id is dropped. Small, so
/// a few long-lived streams pin little memory.
const IDS_PER_CHUNK: usize = 32;

/// Whether an incoming id may be kept: 1 to 128 bytes of visible ASCII (no spaces, no
/// controls), so it can go into a log line and a header unquoted.
pub fn is_acceptable(value: &[u8]) -> bool {
    !value.is_empty()
        && value.len() <= MAX_INCOMING_LEN
        && value.iter().all(|b| (0x21..=0x7e).contains(b))
}

/// The request's id, put into its headers as the app will see it: the incoming
/// `X-Request-ID` when it is a single acceptable value from a trusted peer, else a made one,
/// which replaces whatever came in. `trusted` is only asked when an id came in: most
/// requests carry none.
pub fn assign(
    headers: &mut HeaderMap,
    trusted: impl FnOnce() -> bool,
    worker: u32,
    at: Instant,
) -> HeaderValue {
    match headers.entry(&X_REQUEST_ID) {
        Entry::Occupied(mut given) => {
            let single = given.iter().nth(1).is_none();
            if single && is_acceptable(given.get().as_bytes()) && trusted() {
                return given.get().clone();
            }
            let id = generate(worker, at);
            // `insert` also drops any further values.
            given.insert(id.clone());
            id
        }
        Entry::Vacant(slot) => slot.insert(generate(worker, at)).clone(),
    }
}

/// A new id for a request that started at `at`, made by worker `worker`.
pub fn generate(worker: u32, at: Instant) -> HeaderValue {
    GENERATOR.with(|g| g.value(g.next(worker, at)))
}

thread_local! {
    // A worker serves every connection on one thread (lib.rs, `run`): one generator each.
    static GENERATOR: Generator = Generator::new();
}

struct Generator {
    /// `base` is `base_ms` on the wall clock.
    base: Instant,
    base_ms: u64,
    tag: u32,
    counter: Cell<u32>,
    arena: RefCell<BytesMut>,
}

impl Generator {
    fn new() -> Self {
        let mut seed = [0u8; 8];
        // ring's getrandom(2): the sandbox allows it (sandbox.rs), and /dev/urandom cannot be
        // opened there.
        let rng = rustls::crypto::ring::default_provider().secure_random;
        if let Err(error) = rng.fill(&mut seed) {
            // Ids stay unique within the worker (time and counter); only telling workers
            // apart across hosts gets weaker.
            tracing::warn!(?error, "No randomness for request ids; using the clock");
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            seed = (u64::from(nanos) << 32 | u64::from(std::process::id())).to_le_bytes();
        }
        let base_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Self::with_seed(Instant::now(), base_ms, seed)
    }

    fn with_seed(base: Instant, base_ms: u64, seed: [u8; 8]) -> Self {
        let [a, b, c, d, e, f, g, h] = seed;
        Self {
            base,
            base_ms,
            tag: u32::from_le_bytes([a, b, c, d]),
            // A random start, below 2^31 so the counter wraps only after two billion ids:
            // an id does not tell how many requests the worker served since it started.
            counter: Cell::new(u32::from_le_bytes([e, f, g, h]) >> 1),
            arena: RefCell::new(BytesMut::new()),
        }
    }

    fn next(&self, worker: u32, at: Instant) -> u128 {
        let ms = self.base_ms + at.saturating_duration_since(self.base).as_millis() as u64;
        let count = self.counter.get();
        self.counter.set(count.wrapping_add(1));
        u128::from(ms & 0xffff_ffff_ffff) << 80
            | u128::from(worker & 0xffff) << 64
            | u128::from(count) << 32
            | u128::from(self.tag)
    }

    fn value(&self, id: u128) -> HeaderValue {
        let text = encode(id);
        let mut arena = self.arena.borrow_mut();
        if arena.capacity() - arena.len() < LEN {
            *arena = BytesMut::with_capacity(LEN * IDS_PER_CHUNK);
        }
        arena.extend_from_slice(&text);
        let bytes = arena.split().freeze();
        // Only alphabet characters: always a valid value.
        HeaderValue::from_maybe_shared(bytes).unwrap_or_else(|_| HeaderValue::from_static("-"))
    }
}

/// 128 bits as 26 base32 characters, most significant first (the first carries 3 bits).
fn encode(id: u128) -> [u8; LEN] {
    let mut out = [0u8; LEN];
    for (i, c) in out.iter_mut().enumerate() {
        let shift = 5 * (LEN - 1 - i);
        *c = ALPHABET[((id >> shift) & 31) as usize];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::time::Duration;

    fn decode(text: &str) -> u128 {
        text.bytes().fold(0u128, |acc, c| {
            let digit = ALPHABET.iter().position(|&a| a == c).expect("alphabet") as u128;
            acc << 5 | digit
        })
    }

    #[test]
    fn format_is_26_crockford_characters_with_time_and_worker() {
        let before = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis();
        let id = generate(7, Instant::now());
        let text = id.to_str().unwrap();
        assert_eq!(text.len(), LEN, "{text}");
        assert!(text.bytes().all(|c| ALPHABET.contains(&c)), "{text}");
        assert!(
            text.as_bytes()[0] <= b'7',
            "the first character carries 3 bits"
        );
        let raw = decode(text);
        let ms = raw >> 80;
        assert!(ms + 5 >= before && ms <= before + 5_000, "{ms} vs {before}");
        assert_eq!((raw >> 64) & 0xffff, 7);
        assert_eq!(encode(raw), text.as_bytes());
    }

    #[test]
    fn encoding_round_trips_the_extremes() {
        assert_eq!(&encode(0), b"00000000000000000000000000");
        assert_eq!(&encode(u128::MAX), b"7ZZZZZZZZZZZZZZZZZZZZZZZZZ");
        let ulid = "01ARZ3NDEKTSV4RRFFQ69G5FAV";
        assert_eq!(&encode(decode(ulid)), ulid.as_bytes());
    }

    #[test]
    fn a_burst_is_unique_and_sorted() {
        let at = Instant::now();
        let mut seen = HashSet::new();
        let mut last = String::new();
        for i in 0..20_000u32 {
            // Many in one millisecond, then time moving on.
            let id = generate(3, at + Duration::from_micros(u64::from(i) * 10));
            let text = id.to_str().unwrap().to_string();
            assert!(text > last, "{text} after {last}");
            assert!(seen.insert(text.clone()));
            last = text;
        }
    }

    #[test]
    fn ids_sort_by_time_then_counter() {
        let base = Instant::now();
        let g = Generator::with_seed(
            base,
            1_700_000_000_000,
            [1, 2, 3, 4, 0xff, 0xff, 0xff, 0xff],
        );
        let a = encode(g.next(1, base + Duration::from_millis(5)));
        let b = encode(g.next(1, base + Duration::from_millis(5)));
        let c = encode(g.next(1, base + Duration::from_millis(6)));
        assert!(a < b && b < c);
        // A request that started before the generator did counts from its start.
        let d = g.next(1, base.checked_sub(Duration::from_secs(1)).unwrap_or(base));
        assert_eq!(d >> 80, 1_700_000_000_000);
        assert_eq!(d as u32, u32::from_le_bytes([1, 2, 3, 4]));
    }

    #[test]
    fn chunks_hand_out_separate_values() {
        // More than a chunk's worth: values cut from a full chunk and a new one stay intact.
        let at = Instant::now();
        let ids: Vec<_> = (0..IDS_PER_CHUNK * 3).map(|_| generate(0, at)).collect();
        for id in &ids {
            assert_eq!(id.len(), LEN);
            assert!(id.to_str().unwrap().bytes().all(|c| ALPHABET.contains(&c)));
        }
        let set: HashSet<_> = ids.iter().map(|v| v.as_bytes().to_vec()).collect();
        assert_eq!(set.len(), ids.len());
    }

    #[test]
    fn acceptable_incoming_ids() {
        for ok in [
            "a",
            "01ARZ3NDEKTSV4RRFFQ69G5FAV",
            "f47ac10b-58cc-4372-a567-0e02b2c3d479",
            "trace=abc;span=1/2",
            &"x".repeat(128),
        ] {
            assert!(is_acceptable(ok.as_bytes()), "{ok}");
        }
        for bad in [
            &b""[..],
            &[b'x'; 129][..],
            b"has space",
            b"tab\there",
            b"nul\0",
            b"del\x7f",
            "caf\u{e9}".as_bytes(),
        ] {
            assert!(!is_acceptable(bad), "{bad:?}");
        }
    }

    fn headers(values: &[&[u8]]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for v in values {
            m.append(&X_REQUEST_ID, HeaderValue::from_bytes(v).unwrap());
        }
        m
    }

    #[test]
    fn a_trusted_valid_id_is_kept() {
        let mut m = headers(&[b"abc-123"]);
        let id = assign(&mut m, || true, 0, Instant::now());
        assert_eq!(id, "abc-123");
        assert_eq!(m[&X_REQUEST_ID], "abc-123");
    }

    #[test]
    fn untrusted_invalid_or_repeated_ids_are_replaced() {
        let long = vec![b'a'; 129];
        let cases: [(&[&[u8]], bool); 4] = [
            (&[b"abc-123"], false),
            (&[&long], true),
            (&[b"a b"], true),
            (&[b"one", b"two"], true),
        ];
        for (given, trusted) in cases {
            let mut m = headers(given);
            let id = assign(&mut m, || trusted, 0, Instant::now());
            assert_eq!(id.len(), LEN, "{given:?}");
            assert_eq!(m.get_all(&X_REQUEST_ID).iter().count(), 1, "{given:?}");
            assert_eq!(m[&X_REQUEST_ID], id, "{given:?}");
        }
    }

    #[test]
    fn trust_is_not_asked_without_an_incoming_id() {
        let mut m = HeaderMap::new();
        let id = assign(&mut m, || panic!("asked"), 0, Instant::now());
        assert_eq!(m[&X_REQUEST_ID], id);
    }
}
