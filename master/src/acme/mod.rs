//! Automatic certificates with ACME HTTP-01 (docs/tls.md, "ACME"): the account, a queue of orders
//! run one at a time, the challenge answers pushed to the workers, retries with backoff, and the
//! per-name state that status reports (docs/tls.md, "Status"). Only a primary runs any of it.

pub mod account;
pub mod cause;
mod order;
mod pinned;
pub mod plan;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tako_ipc::{CertEntry, MasterToWorker};
use tokio::time::Instant;

use crate::certs::acme_progress::Failure;
use crate::clock::unix_now;
use crate::master::Master;
use crate::state::ServerMode;
use plan::Need;

/// Bound on waiting for every worker to apply a new set of challenge answers.
const TOKENS_APPLIED_WAIT: Duration = Duration::from_secs(5);
/// An idle order runner looks at its retries at least this often.
const IDLE_TICK: Duration = Duration::from_secs(60);

/// Sends the current answers to every worker. The worker table is locked first, as when a
/// worker starts, so a new worker never misses a change.
fn push_tokens(master: &Master) {
    let workers = master.workers.lock();
    let set = master.acme.tokens();
    workers.broadcast(&MasterToWorker::AcmeTokens(set));
}

/// The challenge answers of one order.
pub struct Tokens<'a> {
    master: &'a Arc<Master>,
    added: Vec<String>,
}

impl Tokens<'_> {
    /// Adds an answer and returns once every worker has it (bounded): a route-table push
    /// sent after it is acknowledged only after the answers were applied.
    pub async fn add(&mut self, token: String, key_authorization: String) {
        self.master
            .acme
            .state()
            .tokens
            .insert(token.clone(), key_authorization);
        self.added.push(token);
        push_tokens(self.master);
        let epoch = self.master.publish();
        let deadline = Instant::now() + TOKENS_APPLIED_WAIT;
        if !self
            .master
            .wait_until(deadline, |m| m.workers.applied_epoch() >= epoch)
            .await
        {
            tracing::warn!("not every worker confirmed the ACME challenge answer within 5 s");
        }
    }

    /// Removes this order's answers, and only those.
    fn finish(self) {
        if self.added.is_empty() {
            return;
        }
        {
            let mut st = self.master.acme.state();
            for t in &self.added {
                st.tokens.remove(t);
            }
        }
        push_tokens(self.master);
    }
}

/// Starts the account setup and then the order runner, in the background (docs/cli.md,
/// "Startup", step 10). Nothing here blocks startup.
pub fn start(master: &Arc<Master>) {
    if master.settings.no_acme || !master.is_primary() {
        return;
    }
    tokio::spawn(run(master.clone()));
}

/// Queues an order for every route host that needs one (after a deploy or rollback switch,
/// and from the certificate check), and reports public wildcard hosts as failed.
pub fn queue_routes(master: &Master, routes: &[String]) {
    if master.settings.no_acme || !master.is_primary() {
        return;
    }
    let certs = master.certs_snapshot();
    let certs_dir = master.data.certs();
    let now = unix_now();
    let mut decisions: Vec<(String, Need)> = Vec::new();
    for host in routes.iter().map(|r| plan::route_host(r)) {
        if !decisions.iter().any(|(h, _)| *h == host) {
            let need = plan::need(&host, &certs, &certs_dir, now);
            decisions.push((host, need));
        }
    }
    let mut queued = false;
    {
        let mut st = master.acme.state();
        for (host, need) in decisions {
            match need {
                Need::Order => {
                    let waiting = st.queue.contains(&host)
                        || st.running.as_deref() == Some(host.as_str())
                        || st.failures.get(&host).is_some_and(|f| f.retry_at.is_some());
                    if !waiting {
                        st.queue.push_back(host);
                        queued = true;
                    }
                }
                Need::Wildcard => {
                    let error = plan::wildcard_error(&host);
                    if st.failures.get(&host).map(|f| &f.error) != Some(&error) {
                        tracing::warn!(host = %host, "Certificate for {host} failed: {error}");
                        st.failures.insert(
                            host,
                            Failure {
                                error,
                                attempts: 1,
                                retry_at: None,
                            },
                        );
                    }
                }
                // Covered now (a manual or wildcard certificate arrived): nothing to report.
                Need::Skip => {
                    st.failures.remove(&host);
                }
            }
        }
    }
    if queued {
        master.acme.wake();
    }
    master.status_dirty.notify_one();
}

/// Whether a route host of a registered app needs a certificate from the CA now: at boot,
/// the account is then set up at once, as it always was, so the first check's orders need
/// not wait for it.
fn routes_need_a_ca(master: &Master) -> bool {
    let routes: Vec<String> = {
        let reg = master.apps.lock();
        reg.apps
            .values()
            .filter(|a| a.visible)
            .flat_map(|a| a.config.routes.clone())
            .collect()
    };
    let certs = master.certs_snapshot();
    let certs_dir = master.data.certs();
    let now = unix_now();
    routes
        .iter()
        .any(|r| plan::need(&plan::route_host(r), &certs, &certs_dir, now) == Need::Order)
}

/// Sets up the account once a name needs it, retrying with backoff; `None` at shutdown. A
/// server whose hosts are all private never gets here with work, so it never contacts a CA
/// and logs nothing about ACME.
async fn account_when_needed(
    master: &Arc<Master>,
    cfg: &account::AccountConfig,
) -> Option<instant_acme::Account> {
    let mut needed = routes_need_a_ca(master);
    let mut attempt = 0u32;
    loop {
        if master.is_shutting_down() {
            return None;
        }
        if !needed {
            let wake = master.acme.woken();
            tokio::pin!(wake);
            wake.as_mut().enable();
            if master.acme.state().queue.is_empty() {
                // Shutdown is checked at least once a tick.
                tokio::select! {
                    _ = wake => {}
                    _ = tokio::time::sleep(IDLE_TICK) => {}
                }
                continue;
            }
            needed = true;
        }
        match account::load_or_create(cfg).await {
            Ok(a) => {
                {
                    let mut st = master.acme.state();
                    st.account_ready = true;
                    st.account_error = None;
                }
                master.status_dirty.notify_one();
                return Some(a);
            }
            Err(e) => {
                attempt = attempt.saturating_add(1);
                let wait = plan::account_backoff(attempt);
                let why = cause::describe(&e);
                tracing::warn!(
                    retry_in_secs = wait.as_secs(),
                    directory = %cfg.directory,
                    "Failed to initialize ACME client: {why}"
                );
                master.acme.state().account_error =
                    Some(format!("Failed to initialize ACME client: {why}"));
                master.status_dirty.notify_one();
                tokio::time::sleep(wait).await;
            }
        }
    }
}

async fn run(master: Arc<Master>) {
    let s = &master.settings;
    let cfg = account::AccountConfig {
        directory: s.acme_directory.clone(),
        staging: s.acme_staging,
        email: s.acme_email.clone(),
        ca_root: s.acme_ca_root.clone(),
        dir: master.data.root.join("acme"),
    };
    let Some(acct) = account_when_needed(&master, &cfg).await else {
        return;
    };

    loop {
        if master.is_shutting_down() {
            return;
        }
        let (next, earliest_retry) = {
            let mut st = master.acme.state();
            let now = Instant::now();
            let due: Vec<String> = st
                .failures
                .iter()
                .filter(|(_, f)| f.retry_at.is_some_and(|t| t <= now))
                .map(|(h, _)| h.clone())
                .collect();
            for host in due {
                if let Some(f) = st.failures.get_mut(&host) {
                    f.retry_at = None;
                }
                if !st.queue.contains(&host) {
                    st.queue.push_back(host);
                }
            }
            let next = st.queue.pop_front();
            st.running.clone_from(&next);
            let earliest = st.failures.values().filter_map(|f| f.retry_at).min();
            (next, earliest)
        };
        let Some(host) = next else {
            let tick = Instant::now() + IDLE_TICK;
            let until = earliest_retry.map_or(tick, |t| t.min(tick));
            tokio::select! {
                _ = master.acme.woken() => {}
                _ = tokio::time::sleep_until(until) => {}
            }
            continue;
        };
        run_one(&master, &acct, &host).await;
        master.acme.state().running = None;
        master.status_dirty.notify_one();
    }
}

/// One queued name: checks that it still needs an order, runs it, installs or records.
async fn run_one(master: &Arc<Master>, acct: &instant_acme::Account, host: &str) {
    if let Ok(ServerMode::Upgrading) = master.store.server_mode().await {
        tracing::info!(
            host,
            "An upgrade is running: the certificate order waits for the next check"
        );
        return;
    }
    // A manual or wildcard certificate may have arrived while it waited.
    let certs = master.certs_snapshot();
    if plan::need(host, &certs, &master.data.certs(), unix_now()) != Need::Order {
        return;
    }
    tracing::info!(host, "Ordering a certificate");
    let mut tokens = Tokens {
        master,
        added: Vec::new(),
    };
    let result = tokio::time::timeout(order::ORDER_LIMIT, order::issue(acct, host, &mut tokens))
        .await
        .unwrap_or(Err(order::OrderError::Timeout));
    tokens.finish();
    match result {
        Ok(entry) => install(master, entry),
        Err(e) => record_failure(master, host, cause::describe(&e)),
    }
}

/// Writes the certificate with `acme.json` (docs/tls.md, "Files") and makes it live in every
/// worker.
fn install(master: &Master, entry: CertEntry) {
    let host = entry.name.clone();
    let not_after =
        crate::certs::leaf_info(&entry.cert_chain_pem).map_or(0, |i| i.not_after_unix_secs);
    if let Err(e) = write_files(master, &entry, not_after) {
        tracing::warn!(host = %host, error = %e, "cannot write the issued certificate; serving it from memory");
    }
    let mut certs = master.certs_snapshot();
    certs.retain(|c| c.name != host);
    certs.push(entry);
    master.push_certs(certs);
    master.acme.state().failures.remove(&host);
    tracing::info!(host = %host, not_after, "Certificate for {host} issued");
}

/// Why an issued certificate could not be written; it serves from memory meanwhile.
#[derive(Debug, thiserror::Error)]
enum WriteError {
    #[error("cannot create {}: {source}", dir.display())]
    Dir {
        dir: PathBuf,
        source: std::io::Error,
    },
    /// Names the file itself.
    #[error("{0}")]
    Meta(#[source] account::AccountError),
    #[error("cannot write the certificate files under {}: {source}", dir.display())]
    Pem {
        dir: PathBuf,
        source: std::io::Error,
    },
}

fn write_files(master: &Master, entry: &CertEntry, not_after: u64) -> Result<(), WriteError> {
    let certs_dir = master.data.certs();
    let dir = certs_dir.join(&entry.name);
    crate::datadir::ensure_dir(&dir, 0o700, None).map_err(|source| WriteError::Dir {
        dir: dir.clone(),
        source,
    })?;
    let meta = serde_json::json!({
        "directory": master.settings.acme_directory,
        "issued_at_unix_secs": unix_now(),
        "not_after_unix_secs": not_after,
    });
    // acme.json first: a crash before the PEM files leaves an ACME-marked directory that the
    // next check renews, never an issued certificate taken for a manual one.
    account::write_private(&dir.join("acme.json"), meta.to_string().as_bytes())
        .map_err(WriteError::Meta)?;
    crate::certs::write_cert(&certs_dir, entry).map_err(|source| WriteError::Pem { dir, source })
}

fn record_failure(master: &Master, host: &str, error: String) {
    tracing::warn!(host, "Certificate for {host} failed: {error}");
    let mut st = master.acme.state();
    let f = st.failures.entry(host.to_string()).or_insert(Failure {
        error: String::new(),
        attempts: 0,
        retry_at: None,
    });
    f.attempts += 1;
    f.error = error;
    f.retry_at = plan::retry_delay(f.attempts).map(|d| Instant::now() + d);
}
