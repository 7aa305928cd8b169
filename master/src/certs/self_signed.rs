//! Self-signed certificates for private hosts (docs/tls.md, "Self-signed certificates"): which
//! names are private, making one, and which route hosts still need one.

use std::collections::BTreeMap;
use std::path::Path;

use tako_ipc::CertEntry;

use super::der::leaf_info;
use super::files::write_cert;
use crate::clock::unix_now;

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

/// The host of a route (`host[:port][/path]`).
pub fn route_host(route: &str) -> &str {
    let host = route.split('/').next().unwrap_or(route);
    host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host)
}

/// Adds a self-signed certificate for every private route host without one (deploy step 7),
/// written under `certs_dir` and kept in memory when that fails. Returns whether `certs`
/// changed.
pub fn add_missing(
    certs: &mut BTreeMap<String, CertEntry>,
    routes: &[String],
    certs_dir: &Path,
) -> bool {
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
                if let Err(e) = write_cert(certs_dir, &entry) {
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
    changed
}
