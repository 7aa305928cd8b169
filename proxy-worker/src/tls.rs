//! TLS: certificates pushed by the master, the SNI resolver (docs/tls.md,
//! "Which certificate a handshake gets") and the server config (docs/tls.md,
//! "The TLS listener").

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tako_ipc::CertEntry;

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("certificate chain does not parse: {0}")]
    Chain(String),
    #[error("certificate chain is empty")]
    EmptyChain,
    #[error("private key does not parse: {0}")]
    Key(String),
    #[error("private key type is not supported: {0}")]
    KeyType(String),
    #[error("private key does not match certificate")]
    Mismatch,
}

/// Builds a signing certificate from PEM text.
pub fn load_entry(entry: &CertEntry) -> Result<Arc<CertifiedKey>, CertError> {
    let chain = CertificateDer::pem_slice_iter(entry.cert_chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::Chain(e.to_string()))?;
    if chain.is_empty() {
        return Err(CertError::EmptyChain);
    }
    let key = PrivateKeyDer::from_pem_slice(entry.key_pem.as_bytes())
        .map_err(|e| CertError::Key(e.to_string()))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| CertError::KeyType(e.to_string()))?;
    let ck = CertifiedKey::new(chain, signing);
    // `keys_match` cannot decide for every key type; only a definite mismatch is refused.
    if let Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) =
        ck.keys_match()
    {
        return Err(CertError::Mismatch);
    }
    Ok(Arc::new(ck))
}

/// Picks the certificate for an SNI name: exact, then one-level wildcard; no SNI → `default`.
/// Unknown names get nothing (the handshake is refused).
pub fn lookup<V: Clone>(certs: &HashMap<String, V>, sni: Option<&str>) -> Option<V> {
    let Some(sni) = sni else {
        return certs.get("default").cloned();
    };
    let lowered = sni.to_ascii_lowercase();
    let name = lowered.strip_suffix('.').unwrap_or(&lowered);
    if let Some(v) = certs.get(name) {
        return Some(v.clone());
    }
    let (_, parent) = name.split_once('.')?;
    if parent.is_empty() {
        return None;
    }
    certs.get(&format!("*.{parent}")).cloned()
}

/// The current certificate set; replaced whole on every `Certs` message.
#[derive(Default)]
pub struct CertStore {
    certs: ArcSwap<HashMap<String, Arc<CertifiedKey>>>,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let certs = self.certs.load();
        let mut names: Vec<&String> = certs.keys().collect();
        names.sort();
        f.debug_struct("CertStore").field("names", &names).finish()
    }
}

impl CertStore {
    /// Loads every entry; bad ones are logged and skipped. Returns how many are in use.
    pub fn replace(&self, entries: &[CertEntry]) -> usize {
        let mut map = HashMap::new();
        for entry in entries {
            match load_entry(entry) {
                Ok(ck) => {
                    map.insert(entry.name.to_ascii_lowercase(), ck);
                }
                Err(error) => {
                    tracing::warn!(name = %entry.name, %error, "Certificate skipped");
                }
            }
        }
        let n = map.len();
        self.certs.store(Arc::new(map));
        n
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let found = lookup(&self.certs.load(), hello.server_name());
        if found.is_none() {
            tracing::debug!(sni = ?hello.server_name(), "No certificate for TLS handshake");
        }
        found
    }
}

/// TLS 1.2 and 1.3 with ring's default suites, ALPN `h2` then `http/1.1`, no client auth.
pub fn server_config(store: Arc<CertStore>) -> Result<Arc<ServerConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(store);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> HashMap<String, String> {
        names
            .iter()
            .map(|n| (n.to_string(), n.to_string()))
            .collect()
    }

    #[test]
    fn exact_then_one_level_wildcard() {
        let s = set(&[
            "api.example.com",
            "*.example.com",
            "*.b.example.com",
            "default",
        ]);
        assert_eq!(
            lookup(&s, Some("api.example.com")).as_deref(),
            Some("api.example.com")
        );
        assert_eq!(
            lookup(&s, Some("API.Example.com.")).as_deref(),
            Some("api.example.com")
        );
        assert_eq!(
            lookup(&s, Some("www.example.com")).as_deref(),
            Some("*.example.com")
        );
        assert_eq!(
            lookup(&s, Some("a.b.example.com")).as_deref(),
            Some("*.b.example.com")
        );
        // One level only: `*.example.com` does not cover a.c.example.com.
        assert_eq!(lookup(&s, Some("a.c.example.com")), None);
        // The apex is not covered by its wildcard, and unknown names never fall back.
        assert_eq!(lookup(&s, Some("example.com")), None);
        assert_eq!(lookup(&s, Some("other.org")), None);
        assert_eq!(lookup(&s, Some("localhost")), None);
    }

    #[test]
    fn no_sni_uses_default_only() {
        assert_eq!(
            lookup(&set(&["default", "a.com"]), None).as_deref(),
            Some("default")
        );
        assert_eq!(lookup(&set(&["a.com"]), None), None);
    }

    #[test]
    fn bad_pem_is_an_error_not_a_panic() {
        let e = CertEntry {
            name: "x".into(),
            cert_chain_pem: "garbage".into(),
            key_pem: "garbage".into(),
        };
        assert!(load_entry(&e).is_err());
    }
}
