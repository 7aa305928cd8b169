//! The certificate files under `certs/` (docs/tls.md, "Files", "Loading and reloading"):
//! loading and checking them, and writing one atomically.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use tako_ipc::CertEntry;

use super::der::{parse_leaf, LeafInfo};
use crate::clock::unix_now;

pub(super) fn valid_cert_name(name: &str) -> bool {
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

/// Parses the chain and the key, checks that the key belongs to the leaf, and reads the
/// leaf's notAfter and issuer/subject.
pub fn check_entry(entry: &CertEntry) -> Result<LeafInfo, CertLoadError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};

    let chain = CertificateDer::pem_slice_iter(entry.cert_chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertLoadError::Chain(e.to_string()))?;
    let leaf = chain.first().ok_or(CertLoadError::EmptyChain)?;
    let info = parse_leaf(leaf.as_ref()).map_err(|e| CertLoadError::Chain(e.to_string()))?;
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
