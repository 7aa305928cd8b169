//! Which route hosts need an ACME order (docs/tls.md, "ACME", Which names are ordered), and when a
//! failed one is tried again. Pure decisions, so they are tested without a CA.

use std::path::Path;
use std::time::Duration;

use tako_ipc::CertEntry;

use crate::certs::{is_private_host, leaf_info};

/// ACME certificates are renewed this long before they expire.
pub const RENEW_BEFORE_SECS: u64 = 30 * 86_400;

/// Delays before the retries of a failed name; after the last one it waits for the next
/// certificate check.
pub const RETRY_DELAYS: [Duration; 3] = [
    Duration::from_secs(10 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(60 * 60),
];

/// First and longest wait between attempts to set up the account.
pub const ACCOUNT_RETRY_FIRST: Duration = Duration::from_secs(60);
pub const ACCOUNT_RETRY_MAX: Duration = Duration::from_secs(3600);

/// What to do about one route host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Need {
    /// Order (or renew) a certificate.
    Order,
    /// A public wildcard host without a wildcard certificate: HTTP-01 cannot issue it.
    Wildcard,
    /// Private, manual, covered by a wildcard, or an ACME certificate with time left.
    Skip,
}

/// The status text of a wildcard host (`certs/*.<domain>/` names the directory to fill).
pub fn wildcard_error(host: &str) -> String {
    format!(
        "Wildcard certificates need DNS-01, which is not supported; install one in certs/{host}/"
    )
}

/// The host of a route (`host[:port][/path]`), lower-cased, without port.
pub fn route_host(route: &str) -> String {
    let host = route.split('/').next().unwrap_or(route);
    let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// Decides for one host, given the loaded certificates and the `certs/` directory (where
/// `acme.json` marks the certificates this server issued).
pub fn need(host: &str, certs: &[CertEntry], certs_dir: &Path, now: u64) -> Need {
    let bare = host.strip_prefix("*.").unwrap_or(host);
    if is_private_host(bare) {
        return Need::Skip;
    }
    if host.starts_with("*.") {
        return if certs.iter().any(|c| c.name == host) {
            Need::Skip
        } else {
            Need::Wildcard
        };
    }
    if let Some(cert) = certs.iter().find(|c| c.name == host) {
        // Manual certificates are never replaced.
        if !certs_dir.join(host).join("acme.json").exists() {
            return Need::Skip;
        }
        return match leaf_info(&cert.cert_chain_pem) {
            Some(info) if info.not_after_unix_secs > now.saturating_add(RENEW_BEFORE_SECS) => {
                Need::Skip
            }
            _ => Need::Order,
        };
    }
    if let Some((_, parent)) = host.split_once('.') {
        let wildcard = format!("*.{parent}");
        if certs.iter().any(|c| c.name == wildcard) {
            return Need::Skip;
        }
    }
    Need::Order
}

/// The delay before retry number `failures` (1 after the first failure); `None` once the
/// scheduled retries are used up.
pub fn retry_delay(failures: usize) -> Option<Duration> {
    failures
        .checked_sub(1)
        .and_then(|i| RETRY_DELAYS.get(i).copied())
}

/// The wait after `attempt` failed account setups (1 after the first): 1 min, doubling, at
/// most 1 h.
pub fn account_backoff(attempt: u32) -> Duration {
    crate::backoff::doubling(
        ACCOUNT_RETRY_FIRST,
        ACCOUNT_RETRY_MAX,
        attempt.saturating_sub(1),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signed(name: &str, days: i64) -> CertEntry {
        let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name.push(rcgen::DnType::CommonName, "CA");
        let ca = ca.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
        p.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(days);
        let leaf = p.signed_by(&key, &ca, &ca_key).unwrap();
        CertEntry {
            name: name.into(),
            cert_chain_pem: leaf.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    #[test]
    fn which_names_are_ordered() {
        let dir = std::env::temp_dir().join(format!("tako-acme-plan-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for name in ["old.example.com", "fresh.example.com"] {
            std::fs::create_dir_all(dir.join(name)).unwrap();
            std::fs::write(dir.join(name).join("acme.json"), "{}").unwrap();
        }
        let certs = vec![
            signed("manual.example.com", 5),
            signed("old.example.com", 10),
            signed("fresh.example.com", 60),
            signed("*.wild.example.com", 60),
        ];
        let now = crate::clock::unix_now();
        let n = |h: &str| need(h, &certs, &dir, now);
        assert_eq!(n("new.example.com"), Need::Order);
        assert_eq!(
            n("manual.example.com"),
            Need::Skip,
            "manual is never replaced"
        );
        assert_eq!(n("old.example.com"), Need::Order, "renewal within 30 days");
        assert_eq!(n("fresh.example.com"), Need::Skip);
        assert_eq!(n("a.wild.example.com"), Need::Skip, "covered by a wildcard");
        assert_eq!(n("*.wild.example.com"), Need::Skip);
        assert_eq!(n("*.other.example.com"), Need::Wildcard);
        assert_eq!(n("app.test"), Need::Skip, "private");
        assert_eq!(n("*.app.localhost"), Need::Skip, "private wildcard");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn hosts_of_routes() {
        assert_eq!(route_host("App.Example.com:8443/api"), "app.example.com");
        assert_eq!(route_host("*.example.com"), "*.example.com");
        assert_eq!(route_host("example.com./x"), "example.com");
    }

    #[test]
    fn backoffs() {
        let m = |s: u64| Some(Duration::from_secs(s * 60));
        assert_eq!(retry_delay(1), m(10));
        assert_eq!(retry_delay(2), m(30));
        assert_eq!(retry_delay(3), m(60));
        assert_eq!(retry_delay(4), None);
        assert_eq!(retry_delay(0), None);
        let mins: Vec<u64> = (1..=9).map(|a| account_backoff(a).as_secs() / 60).collect();
        assert_eq!(mins, vec![1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(account_backoff(100), ACCOUNT_RETRY_MAX);
    }

    #[test]
    fn wildcard_text() {
        assert_eq!(
            wildcard_error("*.example.com"),
            "Wildcard certificates need DNS-01, which is not supported; install one in certs/*.example.com/"
        );
    }
}
