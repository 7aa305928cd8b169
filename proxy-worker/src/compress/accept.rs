//! `Accept-Encoding` (RFC 9110 §12.5.3): which content codings a client takes and how much it
//! prefers each, as q-values in thousandths.

use http::header::{HeaderMap, ACCEPT_ENCODING};

use super::Coding;

/// What one request's `Accept-Encoding` allows. Absent means identity only: RFC 9110 would
/// allow any coding, but clients that decode one say so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accept {
    br: u16,
    gzip: u16,
    /// Only an explicit `identity` member competes with the codings: servers compress for
    /// `gzip;q=0.5` alone, and so do we.
    identity: u16,
    /// Compression is turned off: nothing is encoded and nothing varies.
    off: bool,
}

impl Accept {
    /// Identity only: no header, a HEAD, a range, or compression turned off.
    pub const IDENTITY: Accept = Accept {
        br: 0,
        gzip: 0,
        identity: 0,
        off: false,
    };

    /// Compression is off (`--no-compression`): answers go out as they are.
    pub const OFF: Accept = Accept {
        off: true,
        ..Accept::IDENTITY
    };

    pub fn is_off(&self) -> bool {
        self.off
    }

    /// Reads every `Accept-Encoding` line of the request.
    pub fn of(headers: &HeaderMap) -> Accept {
        let mut lines = headers.get_all(ACCEPT_ENCODING).iter().peekable();
        if lines.peek().is_none() {
            return Accept::IDENTITY;
        }
        // Explicit q of br, gzip, identity and `*`, in that order.
        let mut q: [Option<u16>; 4] = [None; 4];
        for line in lines {
            // A value that is not text names nothing we know.
            let Ok(line) = line.to_str() else { continue };
            for member in line.split(',') {
                let mut params = member.split(';');
                let coding = params.next().unwrap_or("").trim();
                let slot = if coding.eq_ignore_ascii_case("br") {
                    0
                } else if coding.eq_ignore_ascii_case("gzip")
                    || coding.eq_ignore_ascii_case("x-gzip")
                {
                    1
                } else if coding.eq_ignore_ascii_case("identity") {
                    2
                } else if coding == "*" {
                    3
                } else {
                    continue;
                };
                let mut weight = Some(1000);
                for param in params {
                    let Some((name, value)) = param.split_once('=') else {
                        continue;
                    };
                    if name.trim().eq_ignore_ascii_case("q") {
                        weight = qvalue(value.trim());
                    }
                }
                // A member with a malformed weight is ignored, as if it were not there.
                if let Some(w) = weight {
                    q[slot] = Some(q[slot].map_or(w, |old: u16| old.max(w)));
                }
            }
        }
        let star = q[3];
        Accept {
            br: q[0].or(star).unwrap_or(0),
            gzip: q[1].or(star).unwrap_or(0),
            identity: q[2].unwrap_or(0),
            off: false,
        }
    }

    fn weight(&self, coding: Coding) -> u16 {
        match coding {
            Coding::Brotli => self.br,
            Coding::Gzip => self.gzip,
            Coding::Identity => self.identity,
        }
    }

    /// The codings of `offered` the client takes and prefers to identity, best first; a tie
    /// keeps the order of `offered` (ours: brotli before gzip).
    pub fn ranked(&self, offered: &[Coding]) -> Vec<Coding> {
        let mut out: Vec<Coding> = offered
            .iter()
            .copied()
            .filter(|c| {
                let w = self.weight(*c);
                w > 0 && w >= self.identity
            })
            .collect();
        out.sort_by_key(|c| std::cmp::Reverse(self.weight(*c)));
        out
    }

    /// The best of `offered`, or identity when the client takes none of them (also when it
    /// refuses identity too: an unencoded answer is still better than none).
    pub fn best(&self, offered: &[Coding]) -> Coding {
        let mut best = Coding::Identity;
        let mut best_weight = 0;
        for c in offered {
            let w = self.weight(*c);
            if w > best_weight && w >= self.identity {
                best = *c;
                best_weight = w;
            }
        }
        best
    }
}

/// `q=` as thousandths: `0`, `1`, or up to three decimals (RFC 9110 §12.4.2).
fn qvalue(v: &str) -> Option<u16> {
    let (int, frac) = v.split_once('.').unwrap_or((v, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut thousandths = 0u16;
    for (i, b) in frac.bytes().enumerate() {
        thousandths += u16::from(b - b'0') * [100, 10, 1][i];
    }
    match int {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    const OURS: [Coding; 2] = [Coding::Brotli, Coding::Gzip];

    fn accept(lines: &[&'static str]) -> Accept {
        let mut h = HeaderMap::new();
        for l in lines {
            h.append(ACCEPT_ENCODING, HeaderValue::from_static(l));
        }
        Accept::of(&h)
    }

    fn best(lines: &[&'static str]) -> Coding {
        accept(lines).best(&OURS)
    }

    #[test]
    fn browsers_get_brotli_and_older_clients_gzip() {
        assert_eq!(best(&["gzip, deflate, br, zstd"]), Coding::Brotli);
        assert_eq!(best(&["gzip, deflate"]), Coding::Gzip);
        assert_eq!(best(&["x-gzip"]), Coding::Gzip);
        assert_eq!(best(&["GZIP"]), Coding::Gzip);
        assert_eq!(best(&["deflate"]), Coding::Identity);
        assert_eq!(best(&[]), Coding::Identity, "no header");
        assert_eq!(best(&[""]), Coding::Identity, "empty header");
        assert_eq!(best(&["gzip", "br"]), Coding::Brotli, "several lines");
    }

    #[test]
    fn q_values_order_and_refuse() {
        assert_eq!(best(&["br;q=0.5, gzip;q=0.8"]), Coding::Gzip);
        assert_eq!(best(&["br;q=0.8, gzip"]), Coding::Gzip);
        assert_eq!(best(&["br;q=0, gzip;q=0.1"]), Coding::Gzip);
        assert_eq!(best(&["br;q=0, gzip;q=0"]), Coding::Identity);
        assert_eq!(best(&["br ; Q=1.000 ,gzip;q=0.999"]), Coding::Brotli);
        // Identity preferred to both: no coding.
        assert_eq!(best(&["gzip;q=0.5, identity"]), Coding::Identity);
        // A malformed weight drops the member.
        for bad in [
            "br;q=2",
            "br;q=1.5",
            "br;q=0.1234",
            "br;q=x",
            "br;q=",
            "br;q=-1",
        ] {
            let a = accept(&[bad]);
            assert_eq!(a.best(&OURS), Coding::Identity, "{bad}");
        }
        assert_eq!(best(&["br;q=0.5;q=bad, gzip;q=0.4"]), Coding::Gzip);
        // A parameter without a value is ignored.
        assert_eq!(best(&["br;level, gzip;q=0.4"]), Coding::Brotli);
    }

    #[test]
    fn the_wildcard() {
        assert_eq!(best(&["*"]), Coding::Brotli);
        assert_eq!(best(&["br;q=0, *"]), Coding::Gzip);
        assert_eq!(best(&["*;q=0"]), Coding::Identity);
        assert_eq!(best(&["*;q=0, identity"]), Coding::Identity);
        assert_eq!(best(&["*;q=0.5, gzip"]), Coding::Gzip);
    }

    #[test]
    fn ranked_lists_what_beats_identity() {
        assert_eq!(
            accept(&["gzip, br;q=0.9"]).ranked(&OURS),
            vec![Coding::Gzip, Coding::Brotli]
        );
        assert_eq!(accept(&["br"]).ranked(&OURS), vec![Coding::Brotli]);
        assert!(accept(&[]).ranked(&OURS).is_empty());
        assert!(Accept::IDENTITY.ranked(&OURS).is_empty());
        assert!(accept(&["gzip;q=0.2, identity;q=0.5"])
            .ranked(&OURS)
            .is_empty());
    }

    #[test]
    fn non_text_values_name_nothing() {
        let mut h = HeaderMap::new();
        h.append(
            ACCEPT_ENCODING,
            HeaderValue::from_bytes(b"br\xff").expect("obs-text is a valid value"),
        );
        assert_eq!(Accept::of(&h).best(&OURS), Coding::Identity);
    }
}
