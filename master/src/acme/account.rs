//! The ACME account (docs/tls.md, "ACME", Account): credentials in `<data-dir>/acme/`, reused while
//! the directory stays the same, and the HTTPS client that talks to the directory.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use instant_acme::{Account, AccountCredentials, HttpClient, NewAccount};
use serde::{Deserialize, Serialize};

use crate::cli::{LETS_ENCRYPT_PRODUCTION, LETS_ENCRYPT_STAGING};

/// Bound on one account setup (directory fetch, account lookup or creation).
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("cannot read the ACME root {}: {source}", path.display())]
    ReadRoot {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no usable certificate in the ACME root {}: {reason}", path.display())]
    BadRoot { path: PathBuf, reason: String },
    #[error("cannot set up TLS for the ACME directory: {0}")]
    Tls(#[from] rustls::Error),
    #[error("{0}")]
    Acme(#[from] instant_acme::Error),
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot encode the account files: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("the ACME directory did not answer within {} s", SETUP_TIMEOUT.as_secs())]
    Timeout,
}

/// What the account needs from the settings.
#[derive(Debug, Clone)]
pub struct AccountConfig {
    pub directory: String,
    pub staging: bool,
    pub email: Option<String>,
    pub ca_root: Option<PathBuf>,
    /// `<data-dir>/acme`
    pub dir: PathBuf,
}

/// `<data-dir>/acme/account.json`.
#[derive(Debug, Serialize, Deserialize)]
struct AccountFile {
    created_timestamp: u64,
    #[serde(default)]
    directory: Option<String>,
    email: Option<String>,
    id: String,
    staging: bool,
}

impl AccountFile {
    /// The directory the credentials belong to; older files only say whether it was staging.
    fn directory(&self) -> &str {
        match &self.directory {
            Some(d) => d,
            None if self.staging => LETS_ENCRYPT_STAGING,
            None => LETS_ENCRYPT_PRODUCTION,
        }
    }
}

/// The HTTPS client for the directory: the platform's roots, plus `--acme-ca-root` as roots
/// and as pinned certificates ([`super::pinned`]).
fn http_client(ca_root: Option<&Path>) -> Result<Box<dyn HttpClient>, AccountError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;

    let mut extra = Vec::new();
    if let Some(path) = ca_root {
        let pem = std::fs::read(path).map_err(|source| AccountError::ReadRoot {
            path: path.to_path_buf(),
            source,
        })?;
        extra = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| AccountError::BadRoot {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        if extra.is_empty() {
            return Err(AccountError::BadRoot {
                path: path.to_path_buf(),
                reason: "no PEM certificate in the file".into(),
            });
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = super::pinned::PinnedOrPlatform::new(extra, provider.clone())?;
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .enable_http2()
        .build();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build::<_, instant_acme::BodyWrapper<bytes::Bytes>>(https);
    Ok(Box::new(client))
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<T> {
    let bytes = std::fs::read(path).ok()?;
    match serde_json::from_slice(&bytes) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "ignoring an unreadable ACME account file");
            None
        }
    }
}

/// Writes a private file atomically (temporary file, fsync, rename).
pub fn write_private(path: &Path, content: &[u8]) -> Result<(), AccountError> {
    let write = || -> std::io::Result<()> {
        let dir = path.parent().unwrap_or(Path::new("."));
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        let tmp = dir.join(format!(".{}.tmp", name.unwrap_or_default()));
        match std::fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(content)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    };
    write().map_err(|source| AccountError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// Loads the stored account when it belongs to the configured directory, otherwise creates
/// one (agreeing to the terms of service) and replaces both files.
pub async fn load_or_create(cfg: &AccountConfig) -> Result<Account, AccountError> {
    let work = async {
        let credentials_path = cfg.dir.join("credentials.json");
        let account_path = cfg.dir.join("account.json");
        let stored = read_json::<AccountFile>(&account_path)
            .filter(|a| a.directory() == cfg.directory)
            .and_then(|_| read_json::<AccountCredentials>(&credentials_path));
        if let Some(credentials) = stored {
            let account = Account::builder_with_http(http_client(cfg.ca_root.as_deref())?)
                .from_credentials(credentials)
                .await?;
            tracing::info!(directory = %cfg.directory, "ACME account loaded");
            return Ok(account);
        }
        let contact = cfg.email.as_ref().map(|e| format!("mailto:{e}"));
        let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
        let (account, credentials) =
            Account::builder_with_http(http_client(cfg.ca_root.as_deref())?)
                .create(
                    &NewAccount {
                        contact: &contacts,
                        terms_of_service_agreed: true,
                        only_return_existing: false,
                    },
                    cfg.directory.clone(),
                    None,
                )
                .await?;
        let file = AccountFile {
            created_timestamp: crate::clock::unix_now(),
            directory: Some(cfg.directory.clone()),
            email: cfg.email.clone(),
            id: account.id().to_string(),
            staging: cfg.staging,
        };
        write_private(&credentials_path, &serde_json::to_vec(&credentials)?)?;
        write_private(&account_path, &serde_json::to_vec(&file)?)?;
        tracing::info!(directory = %cfg.directory, id = %file.id, "ACME account created");
        Ok(account)
    };
    tokio::time::timeout(SETUP_TIMEOUT, work)
        .await
        .unwrap_or(Err(AccountError::Timeout))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_follows_staging_without_the_key() {
        let f: AccountFile =
            serde_json::from_str(r#"{"created_timestamp":1,"email":null,"id":"x","staging":true}"#)
                .unwrap();
        assert_eq!(f.directory(), LETS_ENCRYPT_STAGING);
        let f: AccountFile = serde_json::from_str(
            r#"{"created_timestamp":1,"directory":"https://ca/dir","email":null,"id":"x","staging":true}"#,
        )
        .unwrap();
        assert_eq!(f.directory(), "https://ca/dir");
    }

    #[test]
    fn private_files_are_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("tako-acme-acct-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("credentials.json");
        write_private(&p, b"{}").unwrap();
        write_private(&p, b"{\"a\":1}").unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(std::fs::read(&p).unwrap(), b"{\"a\":1}");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bad_root_is_an_error() {
        let dir = std::env::temp_dir().join(format!("tako-acme-root-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("ca.pem");
        std::fs::write(&p, "not a pem").unwrap();
        assert!(matches!(
            http_client(Some(&p)),
            Err(AccountError::BadRoot { .. })
        ));
        assert!(matches!(
            http_client(Some(&dir.join("missing.pem"))),
            Err(AccountError::ReadRoot { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
