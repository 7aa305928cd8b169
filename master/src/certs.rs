//! Certificates in the master: loading `certs/`, the in-memory `default`, and self-signed
//! certificates for private hosts (tls.md §2-§5). Workers get them over IPC only.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use tako_ipc::CertEntry;

use crate::core::{lock, Master};
use crate::status::CertView;

/// A name is private when it never gets a public certificate (routing-and-proxy.md §5).
pub fn is_private_host(host: &str) -> bool {
    let h = host.trim_end_matches('.').to_ascii_lowercase();
    h == "localhost"
        || h.ends_with(".localhost")
        || !h.contains('.')
        || h.parse::<std::net::Ipv4Addr>().is_ok()
        || [".local", ".test", ".invalid", ".example", ".home.arpa"].iter().any(|s| h.ends_with(s))
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
    Ok(CertEntry { name: host.to_string(), cert_chain_pem: cert.pem(), key_pem: key.serialize_pem() })
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
                && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

/// Reads every `certs/<name>/{fullchain,privkey}.pem`. Problems are warnings.
pub fn load_dir(dir: &Path) -> (Vec<CertEntry>, Vec<(String, String)>) {
    let mut certs = Vec::new();
    let mut errors = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return (certs, errors) };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let p = entry.path();
        if !p.is_dir() || name == "domains" {
            continue;
        }
        let (chain, key) = (p.join("fullchain.pem"), p.join("privkey.pem"));
        if !chain.exists() || !key.exists() {
            continue;
        }
        if !valid_cert_name(&name) {
            errors.push((name, "not a valid host, wildcard or 'default'".into()));
            continue;
        }
        match (std::fs::read_to_string(&chain), std::fs::read_to_string(&key)) {
            (Ok(c), Ok(k)) if c.contains("BEGIN CERTIFICATE") && k.contains("PRIVATE KEY") => {
                certs.push(CertEntry { name, cert_chain_pem: c, key_pem: k })
            }
            (Ok(_), Ok(_)) => errors.push((name, "certificate or key does not parse".into())),
            (Err(e), _) | (_, Err(e)) => errors.push((name, e.to_string())),
        }
    }
    for (name, e) in &errors {
        tracing::warn!(name = %name, error = %e, "skipping certificate");
    }
    (certs, errors)
}

/// Writes a certificate atomically: key before chain (tls.md §2).
pub fn write_cert(certs_dir: &Path, entry: &CertEntry) -> std::io::Result<()> {
    let dir = certs_dir.join(&entry.name);
    crate::datadir::ensure_dir(&dir, 0o700, None)?;
    for (file, content, mode) in [("privkey.pem", &entry.key_pem, 0o600), ("fullchain.pem", &entry.cert_chain_pem, 0o644)] {
        let tmp = dir.join(format!(".{file}.tmp"));
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp)?;
        f.write_all(content.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, dir.join(file))?;
    }
    Ok(())
}

fn route_host(route: &str) -> &str {
    let host = route.split('/').next().unwrap_or(route);
    host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host)
}

impl Master {
    /// Self-signed certificates for private route hosts without one (deploy step 7).
    pub fn ensure_certificates(&self, routes: &[String]) {
        let mut certs: BTreeMap<String, CertEntry> =
            self.certs_snapshot().into_iter().map(|c| (c.name.clone(), c)).collect();
        let mut changed = false;
        for r in routes {
            let host = route_host(r);
            if host.starts_with("*.") || !is_private_host(host) || certs.contains_key(host) {
                continue;
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
                Err(e) => tracing::warn!(host, error = %e, "cannot generate a self-signed certificate"),
            }
        }
        if changed {
            self.push_certs(certs.into_values().collect());
        }
    }

    pub fn cert_views(&self, routes: &[String]) -> Vec<CertView> {
        let certs = lock(&self.certs);
        let mut seen = Vec::new();
        let mut out = Vec::new();
        for r in routes {
            let host = route_host(r).to_string();
            if seen.contains(&host) {
                continue;
            }
            seen.push(host.clone());
            let exact = certs.iter().any(|c| c.name == host);
            let wildcard = host
                .split_once('.')
                .is_some_and(|(_, parent)| certs.iter().any(|c| c.name == format!("*.{parent}")));
            let (state, source) = match (exact, wildcard, is_private_host(&host)) {
                (true, _, true) => ("valid", "self_signed"),
                (true, _, false) => ("valid", "manual"),
                (false, true, _) => ("valid", "wildcard"),
                (false, false, _) => ("missing", "none"),
            };
            out.push(CertView { host, state, source: Some(source), not_after_unix_secs: None, error: None });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_hosts() {
        for h in ["localhost", "a.localhost", "intranet", "10.0.0.1", "x.local", "x.test", "x.invalid", "x.example", "x.home.arpa"] {
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

    #[test]
    fn names() {
        assert!(valid_cert_name("default"));
        assert!(valid_cert_name("*.example.com"));
        assert!(!valid_cert_name("Bad_Name"));
        assert!(!valid_cert_name("a..b"));
    }
}
