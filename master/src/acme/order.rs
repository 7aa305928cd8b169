//! One ACME order for one name (docs/tls.md, "ACME", Orders): HTTP-01 challenges answered by the
//! workers, polling up to 300 s, finalization with a fresh P-256 key, the chain download.

use std::time::Duration;

use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, Identifier, NewOrder, OrderStatus, RetryPolicy,
};
use tako_ipc::CertEntry;

use super::Tokens;

/// How long the order is polled, until ready and again until the certificate is issued.
pub const POLL_LIMIT: Duration = Duration::from_secs(300);

/// Bound on a whole order, network stalls included: the polls plus the requests around them.
pub const ORDER_LIMIT: Duration = Duration::from_secs(POLL_LIMIT.as_secs() + 60);

#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    #[error("No HTTP-01 challenge offered for {0}")]
    NoHttp01(String),
    #[error("the authorization for {host} is {status}")]
    Authorization { host: String, status: String },
    /// The CA's own words about why validation failed.
    #[error("{0}")]
    Ca(String),
    #[error("the order became invalid")]
    Invalid,
    #[error("the order did not complete within {} s", POLL_LIMIT.as_secs())]
    Timeout,
    #[error("{0}")]
    Acme(#[from] instant_acme::Error),
    #[error("the issued certificate does not load: {0}")]
    BadCertificate(#[from] crate::certs::CertLoadError),
}

fn poll_policy() -> RetryPolicy {
    RetryPolicy::new()
        .initial_delay(Duration::from_millis(250))
        .backoff(1.5)
        .timeout(POLL_LIMIT)
}

/// Maps instant-acme's poll timeout to ours; keeps every other error.
fn timeout_is_ours(e: instant_acme::Error) -> OrderError {
    match e {
        instant_acme::Error::Timeout(_) => OrderError::Timeout,
        other => OrderError::Acme(other),
    }
}

/// Runs the order for `host`. Challenge answers go through `tokens`, which reaches every
/// worker before the CA is told to validate; the caller removes them when this returns.
pub async fn issue(
    account: &Account,
    host: &str,
    tokens: &mut Tokens<'_>,
) -> Result<CertEntry, OrderError> {
    let identifiers = [Identifier::Dns(host.to_string())];
    let mut order = account.new_order(&NewOrder::new(&identifiers)).await?;

    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let mut authz = authz?;
        match authz.status {
            AuthorizationStatus::Pending => {}
            // Still valid from an earlier order of this account: nothing to prove.
            AuthorizationStatus::Valid => continue,
            other => {
                return Err(OrderError::Authorization {
                    host: host.to_string(),
                    status: format!("{other:?}").to_ascii_lowercase(),
                })
            }
        }
        let mut challenge = authz
            .challenge(ChallengeType::Http01)
            .ok_or_else(|| OrderError::NoHttp01(host.to_string()))?;
        let key_authorization = challenge.key_authorization();
        tokens
            .add(
                challenge.token.clone(),
                key_authorization.as_str().to_string(),
            )
            .await;
        challenge.set_ready().await?;
    }

    let status = match order.poll_ready(&poll_policy()).await {
        Ok(status) => status,
        Err(instant_acme::Error::Api(problem)) => {
            return Err(validation_error(&mut order)
                .await
                .unwrap_or_else(|| OrderError::Ca(problem.to_string())))
        }
        Err(e) => return Err(timeout_is_ours(e)),
    };
    if status != OrderStatus::Ready {
        return Err(validation_error(&mut order)
            .await
            .unwrap_or(OrderError::Invalid));
    }
    let key_pem = order.finalize().await?;
    let chain = order
        .poll_certificate(&poll_policy())
        .await
        .map_err(timeout_is_ours)?;
    let entry = CertEntry {
        name: host.to_string(),
        cert_chain_pem: chain,
        key_pem,
    };
    crate::certs::check_entry(&entry)?;
    Ok(entry)
}

/// The error the CA recorded on a challenge, read fresh from the authorizations.
async fn validation_error(order: &mut instant_acme::Order) -> Option<OrderError> {
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let Ok(mut authz) = authz else { continue };
        let Ok(state) = authz.refresh().await else {
            continue;
        };
        if let Some(problem) = state.challenges.iter().find_map(|c| c.error.as_ref()) {
            return Some(OrderError::Ca(problem.to_string()));
        }
    }
    None
}
