//! What status shows about the certificates of an app's routes (docs/tls.md, "Status").

use std::path::Path;

use serde::Serialize;
use tako_ipc::CertEntry;

use super::acme_progress::AcmeProgress;
use super::der::leaf_info;
use super::self_signed::{is_private_host, route_host};
use crate::clock::unix_now;

#[derive(Debug, Clone, Serialize)]
pub struct CertView {
    pub host: String,
    pub state: &'static str,
    pub source: Option<&'static str>,
    pub not_after_unix_secs: Option<u64>,
    pub error: Option<String>,
}

/// One entry per route host, in route order: the certificate that serves it, where it came
/// from, and ACME's word while it works on the name or after it failed.
pub fn views(
    certs: &[CertEntry],
    routes: &[String],
    certs_dir: &Path,
    acme_enabled: bool,
    acme: &AcmeProgress,
) -> Vec<CertView> {
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
                let source = if certs_dir.join(&c.name).join("acme.json").exists() {
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
            (None, _) if acme_enabled && !is_private_host(&host) && !host.starts_with("*.") => {
                "pending"
            }
            (None, _) => "missing",
        };
        // ACME's word wins while it works on the name or after it failed (docs/tls.md,
        // "Status").
        let mut error = None;
        if let Some((acme_state, acme_error)) = acme.view(&host) {
            state = acme_state;
            error = acme_error;
        } else if state == "pending" {
            error = acme.account_error();
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
