//! Just enough DER to read an X.509 leaf's validity and names (RFC 5280 §4.1): the
//! workspace has no X.509 parser, and these two facts do not justify adding one.

/// What the master knows about a loaded certificate, read from its leaf.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeafInfo {
    pub not_after_unix_secs: u64,
    /// Issuer equals subject.
    pub self_signed: bool,
}

/// Leaf facts of a PEM chain, for status views; `None` when it does not parse.
pub fn leaf_info(chain_pem: &str) -> Option<LeafInfo> {
    use rustls_pki_types::pem::PemObject;
    let leaf = rustls_pki_types::CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .next()?
        .ok()?;
    parse_leaf(leaf.as_ref()).ok()
}

#[derive(Debug, thiserror::Error)]
pub enum DerError {
    #[error("truncated or malformed DER")]
    Malformed,
    #[error("unexpected DER tag {0:#04x}")]
    Tag(u8),
    #[error("unreadable validity time")]
    Time,
}

/// One TLV: (tag, content, rest after it).
fn tlv(input: &[u8]) -> Result<(u8, &[u8], &[u8]), DerError> {
    let (&tag, rest) = input.split_first().ok_or(DerError::Malformed)?;
    let (&first, mut rest) = rest.split_first().ok_or(DerError::Malformed)?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return Err(DerError::Malformed);
        }
        let mut len = 0usize;
        for &b in &rest[..n] {
            len = (len << 8) | usize::from(b);
        }
        rest = &rest[n..];
        len
    };
    if rest.len() < len {
        return Err(DerError::Malformed);
    }
    Ok((tag, &rest[..len], &rest[len..]))
}

fn expect(input: &[u8], want: u8) -> Result<(&[u8], &[u8]), DerError> {
    let (tag, content, rest) = tlv(input)?;
    if tag != want {
        return Err(DerError::Tag(tag));
    }
    Ok((content, rest))
}

fn digits(s: &[u8]) -> Result<i64, DerError> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return Err(DerError::Time);
    }
    Ok(s.iter().fold(0i64, |acc, d| acc * 10 + i64::from(d - b'0')))
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468
}

/// UTCTime (`YYMMDDHHMMSSZ`) or GeneralizedTime (`YYYYMMDDHHMMSSZ`) to Unix seconds.
fn time(tag: u8, v: &[u8]) -> Result<u64, DerError> {
    let (year, rest) = match tag {
        0x17 if v.len() == 13 => {
            let yy = digits(&v[..2])?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &v[2..])
        }
        0x18 if v.len() == 15 => (digits(&v[..4])?, &v[4..]),
        _ => return Err(DerError::Time),
    };
    if rest.last() != Some(&b'Z') {
        return Err(DerError::Time);
    }
    let f = |i: usize| digits(&rest[i..i + 2]);
    let (mo, d, h, mi, s) = (f(0)?, f(2)?, f(4)?, f(6)?, f(8)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return Err(DerError::Time);
    }
    let secs = days_from_civil(year, mo, d) * 86_400 + h * 3600 + mi * 60 + s;
    // Before 1970 is long expired: clamp rather than fail.
    Ok(u64::try_from(secs).unwrap_or(0))
}

pub fn parse_leaf(cert: &[u8]) -> Result<LeafInfo, DerError> {
    let (certificate, _) = expect(cert, 0x30)?;
    let (tbs, _) = expect(certificate, 0x30)?;
    let mut rest = tbs;
    // [0] EXPLICIT version, absent for v1.
    if rest.first() == Some(&0xa0) {
        rest = tlv(rest)?.2;
    }
    let (_serial, r) = expect(rest, 0x02)?;
    let (_alg, r) = expect(r, 0x30)?;
    let (tag, issuer, r) = tlv(r)?;
    if tag != 0x30 {
        return Err(DerError::Tag(tag));
    }
    let (validity, r) = expect(r, 0x30)?;
    let (tag, subject, _) = tlv(r)?;
    if tag != 0x30 {
        return Err(DerError::Tag(tag));
    }
    let (_nb_tag, _nb, v) = tlv(validity)?;
    let (na_tag, na, _) = tlv(v)?;
    Ok(LeafInfo {
        not_after_unix_secs: time(na_tag, na)?,
        self_signed: issuer == subject,
    })
}
