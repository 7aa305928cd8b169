//! `Cache-Control` as the cache reads it (RFC 9111 §5.2): a comma-separated list of
//! directives, names case-insensitive, values as token or quoted-string. Lenient about case,
//! whitespace, empty list elements and quoting; strict about the values freshness depends on.

use http::header::{HeaderMap, CACHE_CONTROL};

/// A delta-seconds directive (`max-age`, `s-maxage`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Delta {
    #[default]
    Absent,
    Seconds(u64),
    /// Not a plain number, no value, or given more than once: no freshness (docs/http.md,
    /// "Response cache").
    Invalid,
}

/// RFC 9111 §1.2.2: a delta-seconds too large to represent counts as 2^31.
const DELTA_CAP: u64 = 1 << 31;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Directives {
    pub no_store: bool,
    /// `no-cache`, with or without a field list.
    pub no_cache: bool,
    /// `private`, with or without a field list.
    pub private: bool,
    pub public: bool,
    pub must_revalidate: bool,
    pub max_age: Delta,
    pub s_maxage: Delta,
    /// Some field line could not be read (bad bytes, bad name, unterminated quote). The
    /// caller cannot know what was meant, so a response with it is not stored.
    pub malformed: bool,
}

impl Directives {
    /// Reads every `Cache-Control` field line of `headers`.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let mut d = Directives::default();
        for value in headers.get_all(CACHE_CONTROL) {
            d.read_line(value.as_bytes());
        }
        d
    }

    /// Reads one field line; may be called for each line in order.
    pub fn read_line(&mut self, line: &[u8]) {
        let mut rest = line;
        loop {
            rest = skip_ows_and_commas(rest);
            if rest.is_empty() {
                return;
            }
            let name_len = rest.iter().take_while(|b| is_tchar(**b)).count();
            if name_len == 0 {
                self.malformed = true;
                return;
            }
            let name = &rest[..name_len];
            rest = skip_ows(&rest[name_len..]);
            let mut value: Option<Vec<u8>> = None;
            let mut bad_value = false;
            if let Some(after_eq) = rest.strip_prefix(b"=") {
                let after_eq = skip_ows(after_eq);
                match read_value(after_eq) {
                    Some((v, after)) => {
                        value = Some(v);
                        rest = after;
                    }
                    None => {
                        // An unterminated quote swallows the rest of the line.
                        self.malformed = true;
                        bad_value = true;
                        rest = b"";
                    }
                }
            }
            rest = skip_ows(rest);
            if !(rest.is_empty() || rest[0] == b',') {
                // Junk after the directive: `max-age=5 x`, `no-store"`.
                self.malformed = true;
                bad_value = true;
                rest = rest
                    .iter()
                    .position(|b| *b == b',')
                    .map_or(&b""[..], |i| &rest[i..]);
            }
            self.apply(name, value.as_deref(), bad_value);
        }
    }

    fn apply(&mut self, name: &[u8], value: Option<&[u8]>, bad_value: bool) {
        let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
        if is("no-store") {
            self.no_store = true;
        } else if is("no-cache") {
            self.no_cache = true;
        } else if is("private") {
            self.private = true;
        } else if is("public") {
            self.public = true;
        } else if is("must-revalidate") {
            self.must_revalidate = true;
        } else if is("max-age") {
            self.max_age = next_delta(self.max_age, value, bad_value);
        } else if is("s-maxage") {
            self.s_maxage = next_delta(self.s_maxage, value, bad_value);
        }
    }
}

fn next_delta(previous: Delta, value: Option<&[u8]>, bad_value: bool) -> Delta {
    if previous != Delta::Absent || bad_value {
        return Delta::Invalid;
    }
    match value {
        Some(v) if !v.is_empty() && v.iter().all(u8::is_ascii_digit) => {
            let mut n: u64 = 0;
            for d in v {
                n = n.saturating_mul(10).saturating_add(u64::from(d - b'0'));
            }
            Delta::Seconds(n.min(DELTA_CAP))
        }
        _ => Delta::Invalid,
    }
}

/// A token, or a quoted-string with its escapes resolved; `None` for an unterminated quote.
fn read_value(s: &[u8]) -> Option<(Vec<u8>, &[u8])> {
    if let Some(mut q) = s.strip_prefix(b"\"") {
        let mut out = Vec::new();
        loop {
            match q.first()? {
                b'"' => return Some((out, &q[1..])),
                b'\\' => {
                    out.push(*q.get(1)?);
                    q = &q[2..];
                }
                b => {
                    out.push(*b);
                    q = &q[1..];
                }
            }
        }
    }
    let n = s.iter().take_while(|b| is_tchar(**b)).count();
    Some((s[..n].to_vec(), &s[n..]))
}

fn skip_ows(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|b| **b == b' ' || **b == b'\t').count();
    &s[n..]
}

fn skip_ows_and_commas(s: &[u8]) -> &[u8] {
    let n = s
        .iter()
        .take_while(|b| matches!(**b, b' ' | b'\t' | b','))
        .count();
    &s[n..]
}

/// RFC 9110 §5.6.2 tchar.
pub fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(lines: &[&[u8]]) -> Directives {
        let mut d = Directives::default();
        for l in lines {
            d.read_line(l);
        }
        d
    }

    #[test]
    fn common_forms() {
        let d = parse(&[b"public, max-age=60"]);
        assert!(d.public && !d.malformed);
        assert_eq!(d.max_age, Delta::Seconds(60));
        assert_eq!(d.s_maxage, Delta::Absent);
        let d = parse(&[b"NO-STORE"]);
        assert!(d.no_store);
        let d = parse(&[b"private=\"set-cookie, x-user\", s-maxage=\"30\""]);
        assert!(d.private && !d.malformed);
        assert_eq!(d.s_maxage, Delta::Seconds(30));
        let d = parse(&[b"no-cache=Set-Cookie"]);
        assert!(d.no_cache);
        let d = parse(&[b"max-age=5", b"must-revalidate"]);
        assert_eq!(d.max_age, Delta::Seconds(5));
        assert!(d.must_revalidate);
        let d = parse(&[b" , ,max-age = 7 ,, immutable, x-ext=\"a\\\"b\""]);
        assert_eq!(d.max_age, Delta::Seconds(7));
        assert!(!d.malformed);
        let d = parse(&[b""]);
        assert_eq!(d, Directives::default());
    }

    #[test]
    fn bad_delta_values_are_invalid() {
        for v in [
            &b"max-age=abc"[..],
            b"max-age=-1",
            b"max-age=",
            b"max-age",
            b"max-age=1.5",
            b"max-age=+5",
            b"max-age=\"\"",
            b"max-age=\"5s\"",
            b"max-age=5, max-age=5",
            b"max-age=5, max-age=10",
        ] {
            let d = parse(&[v]);
            assert_eq!(
                d.max_age,
                Delta::Invalid,
                "{:?}",
                String::from_utf8_lossy(v)
            );
        }
        let d = parse(&[b"max-age=1", b"MAX-AGE=2"]);
        assert_eq!(d.max_age, Delta::Invalid, "duplicates across lines");
        let d = parse(&[b"s-maxage=x, max-age=5"]);
        assert_eq!(d.s_maxage, Delta::Invalid);
        assert_eq!(d.max_age, Delta::Seconds(5));
    }

    #[test]
    fn huge_delta_is_capped() {
        let d = parse(&[b"max-age=99999999999999999999999999999"]);
        assert_eq!(d.max_age, Delta::Seconds(1 << 31));
    }

    #[test]
    fn malformed_lines_are_flagged_never_panic() {
        for v in [
            &b"max-age=\"5"[..],
            b"no-store\"",
            b"=5",
            b"max-age=5 extra",
            b"\"quoted\"",
            b"\xff\xfe",
            b"private=\"unterminated, max-age=5",
            b"a=\"\\",
            b"{}",
            b"max-age=5;x",
        ] {
            let d = parse(&[v]);
            assert!(d.malformed, "{:?}", String::from_utf8_lossy(v));
        }
        // A directive before the damage still counts.
        let d = parse(&[b"no-store, max-age=\"5"]);
        assert!(d.no_store && d.malformed);
        assert_eq!(d.max_age, Delta::Invalid);
        // Damage in one element does not hide a later one.
        let d = parse(&[b"max-age=5 x, private"]);
        assert!(d.private && d.malformed);
    }
}
