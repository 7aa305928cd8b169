//! Certificates in the master: loading `certs/`, the in-memory `default`, and self-signed
//! certificates for private hosts (docs/tls.md, "Files" to "Self-signed certificates"). Workers
//! get them over IPC only.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use tako_ipc::CertEntry;

use crate::clock::unix_now;
use crate::core::{lock, Master};
use crate::status::CertView;

/// A name is private when it never gets a public certificate (docs/http.md, "Forwarded headers
/// and the effective scheme").
pub fn is_private_host(host: &str) -> bool {
    let h = host.trim_end_matches('.').to_ascii_lowercase();
    h == "localhost"
        || h.ends_with(".localhost")
        || !h.contains('.')
        || h.parse::<std::net::Ipv4Addr>().is_ok()
        || [".local", ".test", ".invalid", ".example", ".home.arpa"]
            .iter()
            .any(|s| h.ends_with(s))
}

/// A self-signed certificate: ECDSA P-256, CN = host, O = Tako, 3650 days from yesterday.
pub fn self_signed(host: &str) -> Result<CertEntry, rcgen::Error> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.subject_alt_names = vec![match host.parse::<std::net::IpAddr>() {
        Ok(ip) => rcgen::SanType::IpAddress(ip),
        Err(_) => rcgen::SanType::DnsName(host.try_into()?),
    }];
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, host);
    dn.push(rcgen::DnType::OrganizationName, "Tako");
    params.distinguished_name = dn;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(3650);
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let cert = params.self_signed(&key)?;
    Ok(CertEntry {
        name: host.to_string(),
        cert_chain_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn valid_cert_name(name: &str) -> bool {
    if name == "default" {
        return true;
    }
    let host = name.strip_prefix("*.").unwrap_or(name);
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

/// Why a directory under `certs/` was skipped. The texts go to `reload_certs` `errors`.
#[derive(Debug, thiserror::Error)]
pub enum CertLoadError {
    #[error("not a valid host, wildcard or 'default'")]
    Name,
    #[error("cannot read {file}: {source}")]
    Read {
        file: &'static str,
        source: std::io::Error,
    },
    #[error("certificate chain does not parse: {0}")]
    Chain(String),
    #[error("certificate chain does not parse: no certificate in fullchain.pem")]
    EmptyChain,
    #[error("private key does not parse: {0}")]
    Key(String),
    #[error("private key does not match certificate")]
    Mismatch,
}

/// What the master knows about a loaded certificate, read from its leaf.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeafInfo {
    pub not_after_unix_secs: u64,
    /// Issuer equals subject.
    pub self_signed: bool,
}

/// Parses the chain and the key, checks that the key belongs to the leaf, and reads the
/// leaf's notAfter and issuer/subject.
pub fn check_entry(entry: &CertEntry) -> Result<LeafInfo, CertLoadError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};

    let chain = CertificateDer::pem_slice_iter(entry.cert_chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertLoadError::Chain(e.to_string()))?;
    let leaf = chain.first().ok_or(CertLoadError::EmptyChain)?;
    let info = der::leaf_info(leaf.as_ref()).map_err(|e| CertLoadError::Chain(e.to_string()))?;
    let key = PrivateKeyDer::from_pem_slice(entry.key_pem.as_bytes())
        .map_err(|e| CertLoadError::Key(e.to_string()))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| CertLoadError::Key(e.to_string()))?;
    let certified = rustls::sign::CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(CertLoadError::Mismatch)
        }
        // `Unknown` (a key type ring cannot derive a public key for) is not a mismatch.
        _ => Ok(info),
    }
}

/// Leaf facts of a PEM chain, for status views; `None` when it does not parse.
pub fn leaf_info(chain_pem: &str) -> Option<LeafInfo> {
    use rustls_pki_types::pem::PemObject;
    let leaf = rustls_pki_types::CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .next()?
        .ok()?;
    der::leaf_info(leaf.as_ref()).ok()
}

fn load_one(dir: &Path, name: &str) -> Result<(CertEntry, LeafInfo), CertLoadError> {
    if !valid_cert_name(name) {
        return Err(CertLoadError::Name);
    }
    let read = |file: &'static str| {
        std::fs::read_to_string(dir.join(file))
            .map_err(|source| CertLoadError::Read { file, source })
    };
    let entry = CertEntry {
        name: name.to_string(),
        cert_chain_pem: read("fullchain.pem")?,
        key_pem: read("privkey.pem")?,
    };
    let info = check_entry(&entry)?;
    Ok((entry, info))
}

/// Reads every `certs/<name>/{fullchain,privkey}.pem` (docs/tls.md, "Loading and reloading").
/// Directories without both files are not certificates; bad ones are skipped with a warning and
/// returned as `(name, error)`. Expired certificates load, with a warning: they serve until
/// replaced.
pub fn load_dir(dir: &Path) -> (Vec<CertEntry>, Vec<(String, String)>) {
    let mut certs = Vec::new();
    let mut errors = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (certs, errors);
    };
    let mut entries: Vec<_> = entries.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    let now = unix_now();
    for entry in entries {
        let name = entry.file_name().to_string_lossy().into_owned();
        let p = entry.path();
        // `domains/` and `localhost.*` files are leftovers of 0.0.1-alpha.
        if !p.is_dir() || name == "domains" {
            continue;
        }
        if !p.join("fullchain.pem").exists() || !p.join("privkey.pem").exists() {
            continue;
        }
        match load_one(&p, &name) {
            Ok((cert, info)) => {
                if info.not_after_unix_secs < now {
                    tracing::warn!(name = %name, not_after = info.not_after_unix_secs, "Certificate has expired; serving it until it is replaced");
                }
                certs.push(cert);
            }
            Err(e) => errors.push((name, e.to_string())),
        }
    }
    for (name, e) in &errors {
        tracing::warn!(name = %name, error = %e, "Certificate skipped");
    }
    (certs, errors)
}

/// Writes a certificate atomically: a temporary file in the same directory, then rename,
/// key (0600) before chain (0644) (docs/tls.md, "Files").
pub fn write_cert(certs_dir: &Path, entry: &CertEntry) -> std::io::Result<()> {
    let dir = certs_dir.join(&entry.name);
    crate::datadir::ensure_dir(&dir, 0o700, None)?;
    for (file, content, mode) in [
        ("privkey.pem", &entry.key_pem, 0o600),
        ("fullchain.pem", &entry.cert_chain_pem, 0o644),
    ] {
        let tmp = dir.join(format!(".{file}.tmp"));
        // A stale temporary file would keep its old mode: start from nothing.
        match std::fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(content.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, dir.join(file))?;
    }
    // The renames are durable once the directory is.
    std::fs::File::open(&dir)?.sync_all()
}

fn route_host(route: &str) -> &str {
    let host = route.split('/').next().unwrap_or(route);
    host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host)
}

impl Master {
    /// Self-signed certificates for private route hosts without one (deploy step 7).
    /// Returns whether the certificate set changed (and was pushed to the workers).
    pub fn ensure_certificates(&self, routes: &[String]) -> bool {
        let mut certs: BTreeMap<String, CertEntry> = self
            .certs_snapshot()
            .into_iter()
            .map(|c| (c.name.clone(), c))
            .collect();
        let mut changed = false;
        let now = unix_now();
        for r in routes {
            let host = route_host(r);
            // A private wildcard route (`*.app.localhost`) gets a wildcard certificate like
            // any private host: nothing else could ever serve its handshakes.
            let bare = host.strip_prefix("*.").unwrap_or(host);
            let wildcard = bare.len() != host.len();
            if !is_private_host(bare) || (wildcard && bare.parse::<std::net::IpAddr>().is_ok()) {
                continue;
            }
            if let Some(existing) = certs.get(host) {
                // Only an expired self-signed one is replaced; others are the admin's.
                let stale = leaf_info(&existing.cert_chain_pem)
                    .is_some_and(|i| i.self_signed && i.not_after_unix_secs < now);
                if !stale {
                    continue;
                }
            }
            if let Some((_, parent)) = host.split_once('.') {
                if certs.contains_key(&format!("*.{parent}")) {
                    continue;
                }
            }
            match self_signed(host) {
                Ok(entry) => {
                    if let Err(e) = write_cert(&self.data.certs(), &entry) {
                        tracing::warn!(host, error = %e, "cannot write the self-signed certificate; serving it from memory");
                    }
                    tracing::info!(host, "generated a self-signed certificate");
                    certs.insert(host.to_string(), entry);
                    changed = true;
                }
                Err(e) => {
                    tracing::warn!(host, error = %e, "cannot generate a self-signed certificate")
                }
            }
        }
        if changed {
            self.push_certs(certs.into_values().collect());
        }
        changed
    }

    /// One entry per route host, in route order (docs/tls.md, "Status").
    pub fn cert_views(&self, routes: &[String]) -> Vec<CertView> {
        let certs = lock(&self.certs);
        let now = unix_now();
        let mut seen: Vec<String> = Vec::new();
        let mut out = Vec::new();
        for r in routes {
            let host = route_host(r).to_ascii_lowercase();
            if seen.contains(&host) {
                continue;
            }
            seen.push(host.clone());
            let exact = certs.iter().find(|c| c.name == host);
            let wildcard = || {
                let (_, parent) = host.split_once('.')?;
                let name = format!("*.{parent}");
                certs.iter().find(|c| c.name == name)
            };
            let (cert, source) = match (exact, exact.is_none().then(wildcard).flatten()) {
                (Some(c), _) => {
                    let info = leaf_info(&c.cert_chain_pem);
                    let source = if self.data.certs().join(&c.name).join("acme.json").exists() {
                        "acme"
                    } else if info.is_some_and(|i| i.self_signed) {
                        "self_signed"
                    } else {
                        "manual"
                    };
                    (Some(c), source)
                }
                (None, Some(c)) => (Some(c), "wildcard"),
                (None, None) => (None, "none"),
            };
            let not_after = cert
                .and_then(|c| leaf_info(&c.cert_chain_pem))
                .map(|i| i.not_after_unix_secs);
            let mut state = match (cert, not_after) {
                (Some(_), Some(t)) if t < now => "expired",
                (Some(_), _) => "valid",
                // No certificate: a public name would be ordered while ACME is on.
                (None, _)
                    if !self.settings.no_acme
                        && !is_private_host(&host)
                        && !host.starts_with("*.") =>
                {
                    "pending"
                }
                (None, _) => "missing",
            };
            // ACME's word wins while it works on the name or after it failed (docs/tls.md,
            // "Status").
            let mut error = None;
            if let Some((acme_state, acme_error)) = self.acme.view(&host) {
                state = acme_state;
                error = acme_error;
            } else if state == "pending" {
                error = self.acme.account_error();
            }
            out.push(CertView {
                host,
                state,
                source: Some(source),
                not_after_unix_secs: not_after,
                error,
            });
        }
        out
    }
}

/// Just enough DER to read an X.509 leaf's validity and names (RFC 5280 §4.1): the
/// workspace has no X.509 parser, and these two facts do not justify adding one.
mod der {
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

    pub fn leaf_info(cert: &[u8]) -> Result<super::LeafInfo, DerError> {
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
        Ok(super::LeafInfo {
            not_after_unix_secs: time(na_tag, na)?,
            self_signed: issuer == subject,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_hosts() {
        for h in [
            "localhost",
            "a.localhost",
            "intranet",
            "10.0.0.1",
            "x.local",
            "x.test",
            "x.invalid",
            "x.example",
            "x.home.arpa",
        ] {
            assert!(is_private_host(h), "{h}");
        }
        for h in ["example.com", "app.example.com", "example.org"] {
            assert!(!is_private_host(h), "{h}");
        }
    }

    #[test]
    fn self_signed_is_pem() {
        let c = self_signed("app.test").unwrap();
        assert!(c.cert_chain_pem.contains("BEGIN CERTIFICATE"));
        assert!(c.key_pem.contains("PRIVATE KEY"));
    }

    fn write(dir: &Path, name: &str, chain: &str, key: &str) {
        let d = dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("fullchain.pem"), chain).unwrap();
        std::fs::write(d.join("privkey.pem"), key).unwrap();
    }

    #[test]
    fn load_dir_checks_chain_key_match_and_name() {
        let dir = std::env::temp_dir().join(format!("tako-certs-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let good = self_signed("good.test").unwrap();
        let other = self_signed("other.test").unwrap();
        write(&dir, "good.test", &good.cert_chain_pem, &good.key_pem);
        write(&dir, "mismatch.test", &good.cert_chain_pem, &other.key_pem);
        write(
            &dir,
            "badchain.test",
            "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
            &good.key_pem,
        );
        write(&dir, "nochain.test", "nothing here", &good.key_pem);
        write(&dir, "badkey.test", &good.cert_chain_pem, "garbage");
        write(&dir, "Bad_Name", &good.cert_chain_pem, &good.key_pem);
        std::fs::create_dir_all(dir.join("incomplete.test")).unwrap();
        let (certs, errors) = load_dir(&dir);
        let names: Vec<&str> = certs.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, vec!["good.test"]);
        let errors: std::collections::BTreeMap<String, String> = errors.into_iter().collect();
        assert_eq!(
            errors["mismatch.test"],
            "private key does not match certificate"
        );
        assert!(
            errors["badchain.test"].starts_with("certificate chain does not parse"),
            "{errors:?}"
        );
        assert!(
            errors["nochain.test"].starts_with("certificate chain does not parse"),
            "{errors:?}"
        );
        assert!(
            errors["badkey.test"].starts_with("private key does not parse"),
            "{errors:?}"
        );
        assert_eq!(
            errors["Bad_Name"],
            "not a valid host, wildcard or 'default'"
        );
        assert_eq!(errors.len(), 5, "{errors:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn leaf_not_after_and_self_signed() {
        let c = self_signed("app.test").unwrap();
        let info = leaf_info(&c.cert_chain_pem).unwrap();
        assert!(info.self_signed);
        let in_3650_days = unix_now() + 3650 * 86_400;
        assert!(
            info.not_after_unix_secs.abs_diff(in_3650_days) < 120,
            "{info:?}"
        );

        // A leaf signed by a CA: issuer differs from subject; an explicit date is read back.
        let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params =
            rcgen::CertificateParams::new(vec!["web.example.com".to_string()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "web.example.com");
        params.not_after = rcgen::date_time_ymd(2031, 2, 3);
        let leaf = params.clone().signed_by(&key, &ca, &ca_key).unwrap();
        let chain = format!("{}{}", leaf.pem(), ca.pem());
        let entry = CertEntry {
            name: "web.example.com".into(),
            cert_chain_pem: chain,
            key_pem: key.serialize_pem(),
        };
        let info = check_entry(&entry).unwrap();
        assert!(!info.self_signed);
        assert_eq!(
            info.not_after_unix_secs, 1_927_843_200,
            "2031-02-03T00:00:00Z"
        );
        // GeneralizedTime after 2049.
        params.not_after = rcgen::date_time_ymd(2051, 1, 1);
        let late = params.self_signed(&key).unwrap();
        assert_eq!(
            leaf_info(&late.pem()).unwrap().not_after_unix_secs,
            2_556_144_000
        );
    }

    #[test]
    fn write_cert_is_atomic_and_keys_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("tako-certs-write-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let c = self_signed("w.test").unwrap();
        write_cert(&dir, &c).unwrap();
        write_cert(&dir, &c).unwrap();
        let mode = |f: &str| {
            std::fs::metadata(dir.join("w.test").join(f))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode("privkey.pem"), 0o600);
        assert_eq!(mode("fullchain.pem"), 0o644);
        let left: Vec<_> = std::fs::read_dir(dir.join("w.test"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left.len(), 2, "no temporary files left: {left:?}");
        let (certs, errors) = load_dir(&dir);
        assert_eq!((certs.len(), errors.len()), (1, 0));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn names() {
        assert!(valid_cert_name("default"));
        assert!(valid_cert_name("*.example.com"));
        assert!(!valid_cert_name("Bad_Name"));
        assert!(!valid_cert_name("a..b"));
    }
}
