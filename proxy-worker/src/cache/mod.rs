//! The response cache of one worker (docs/http.md, "Response cache"): explicit freshness only,
//! nothing personal, `Vary` honoured, concurrent misses collapsed, `Age` and `Cache-Status` on
//! the way out. The pipeline calls [`Cache::lookup`] after route match and before backend
//! selection (a hit never touches an instance), then [`Ticket::complete`] with the upstream
//! response.

mod admission;
mod directives;
mod flight;
mod invalidate;
mod key;
mod serve;
mod store;
mod tee;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use http::header::{HeaderMap, AGE, IF_MODIFIED_SINCE, IF_NONE_MATCH, RANGE};
use http::{Method, Response};
use tako_ipc::{CacheInvalidation, CacheStats, RouteTable, WorkerToMaster};

use crate::body::Body;
use crate::compress::Negotiated;
use admission::{admit, content_length, request_eligibility, Eligibility};
use flight::{FlightGuard, Flights, Join};
use key::{normalize_host, primary_key, vary_spec, VaryRecord, VarySpec};
use serve::append_forward_status;
use store::{Entry, Found, Store, Stored};
use tee::{StoreJob, TeeBody};

/// Sends a message to the master.
pub type Sink = Box<dyn Fn(WorkerToMaster) + Send + Sync>;

pub struct Cache {
    /// Budget 0: the cache is off and adds no headers.
    enabled: bool,
    budget: u64,
    store: Mutex<Store>,
    flights: Arc<Flights>,
    hits: AtomicU64,
    misses: AtomicU64,
    bypasses: AtomicU64,
    stores: AtomicU64,
    evictions: AtomicU64,
    invalidations: AtomicU64,
    dirty: AtomicBool,
    /// Release path and stopped flag per app from the last route table, to purge on a
    /// build switch or a stop without waiting for the master.
    seen: Mutex<HashMap<String, (String, bool)>>,
    sink: Sink,
}

/// The outcome of the cache stage.
pub enum Lookup {
    /// Served from the cache: send it, nothing goes upstream.
    Hit(Response<Body>),
    /// Go upstream and hand the response to the ticket.
    Forward(Ticket),
}

impl Cache {
    pub fn new(budget_bytes: u64, sink: Sink) -> Self {
        Self {
            enabled: budget_bytes > 0,
            budget: budget_bytes,
            store: Mutex::new(Store::new(
                usize::try_from(budget_bytes).unwrap_or(usize::MAX),
            )),
            flights: Arc::new(Flights::default()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            bypasses: AtomicU64::new(0),
            stores: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            invalidations: AtomicU64::new(0),
            dirty: AtomicBool::new(false),
            seen: Mutex::new(HashMap::new()),
            sink,
        }
    }

    fn store(&self) -> MutexGuard<'_, Store> {
        // A panic while holding the lock cannot leave the store inconsistent in a way that
        // matters more than losing the cache, so keep serving.
        match self.store.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn count(&self, c: &AtomicU64, n: u64) {
        if n > 0 {
            c.fetch_add(n, Ordering::Relaxed);
            self.dirty.store(true, Ordering::Release);
        }
    }

    /// The cache stage of the pipeline for a routed request. `target` is the origin-form
    /// path and query as received; `host` the request host as received.
    #[allow(clippy::too_many_arguments)]
    pub async fn lookup(
        self: &Arc<Self>,
        method: &Method,
        target: &str,
        headers: &HeaderMap,
        https: bool,
        host: &str,
        app: &str,
    ) -> Lookup {
        if !self.enabled {
            return Lookup::Forward(Ticket { inner: None });
        }
        let host = normalize_host(host);
        let mode = match request_eligibility(method, headers) {
            Eligibility::Method => {
                self.count(&self.bypasses, 1);
                let invalidate =
                    admission::invalidates(method).then(|| (host.into_owned(), target.to_string()));
                return Lookup::Forward(Ticket::new(
                    self,
                    "fwd=method",
                    Mode::Method { invalidate },
                ));
            }
            Eligibility::Bypass => {
                self.count(&self.bypasses, 1);
                return Lookup::Forward(Ticket::new(self, "fwd=bypass", Mode::Bypass));
            }
            Eligibility::Eligible => {
                let key = primary_key(https, &host, target);
                let head = method == Method::HEAD;
                let credentialed = admission::credentialed(headers);
                let mut waited = false;
                loop {
                    let now = Instant::now();
                    let found = self.store().lookup(&key, headers, now);
                    let label = match found {
                        // Made for whoever asked first, maybe for that user alone: a request
                        // with credentials of its own goes upstream (RFC 9211 `fwd=request`).
                        Found::Hit(entry) if credentialed && !entry.public => "fwd=request",
                        Found::Hit(entry) => {
                            self.count(&self.hits, 1);
                            return Lookup::Hit(serve::hit(&entry, headers, head, waited, now));
                        }
                        Found::Miss => "fwd=uri-miss",
                        Found::VaryMiss => "fwd=vary-miss",
                        Found::Stale => "fwd=stale",
                    };
                    // A key known uncacheable is not offered for storing until that memory
                    // expires: no copy of the request headers per miss (flight.rs).
                    let may_store =
                        method == Method::GET && !self.flights.known_uncacheable(&key, now);
                    // Only a plain GET leads: its answer is the one most likely stored. Not
                    // one with credentials: its answer is stored only when `public`.
                    let may_lead = may_store
                        && !waited
                        && !credentialed
                        && ![RANGE, IF_NONE_MATCH, IF_MODIFIED_SINCE]
                            .iter()
                            .any(|h| headers.contains_key(h));
                    let flight = if waited {
                        None
                    } else {
                        match self.flights.join(&key, may_lead) {
                            Join::Leader(guard) => Some(guard),
                            Join::Alone => None,
                            Join::Follower(rx) => {
                                if !flight::wait(rx).await {
                                    tracing::debug!(%key, "Single-flight wait timed out");
                                }
                                waited = true;
                                continue;
                            }
                        }
                    };
                    self.count(&self.misses, 1);
                    break Mode::Miss {
                        label,
                        key,
                        store: may_store.then(|| (headers.clone(), app.to_string())),
                        flight,
                    };
                }
            }
        };
        let label: &'static str = match &mode {
            Mode::Miss { label, .. } => label,
            _ => "fwd=uri-miss",
        };
        Lookup::Forward(Ticket::new(self, label, mode))
    }

    /// Stores a complete entry (called by the tee body).
    fn store_entry(&self, key: String, entry: Entry, req_headers: &HeaderMap) {
        let (stored, evicted, bytes) = {
            let mut s = self.store();
            let stored = s.insert(key.clone(), entry, req_headers);
            (stored, s.take_evictions(), s.bytes())
        };
        self.count(&self.evictions, evicted);
        match stored {
            Stored::Yes => {
                self.count(&self.stores, 1);
                tracing::debug!(%key, bytes, "Response stored");
            }
            Stored::TooLarge => {
                tracing::debug!(%key, "Response larger than the cache budget; not stored")
            }
        }
    }

    /// Drops every variant of the targets, under both schemes.
    pub fn invalidate(&self, inv: &CacheInvalidation) {
        if !self.enabled {
            return;
        }
        let mut n = 0;
        {
            let mut s = self.store();
            for t in &inv.targets {
                for https in [false, true] {
                    n += s.remove_key(&primary_key(https, &inv.host, t));
                }
            }
        }
        self.count(&self.invalidations, n as u64);
        self.dirty.store(true, Ordering::Release);
    }

    /// Drops every entry stored for `app`.
    pub fn purge_app(&self, app: &str) {
        if !self.enabled {
            return;
        }
        let n = self.store().purge_app(app);
        self.count(&self.invalidations, n as u64);
        self.dirty.store(true, Ordering::Release);
        tracing::info!(%app, entries = n, "Cache purged for the app");
    }

    /// Purges apps whose live release changed, that stopped, or that are gone.
    pub fn routes_changed(&self, table: &RouteTable) {
        if !self.enabled {
            return;
        }
        let purge: Vec<String> = {
            let mut seen = match self.seen.lock() {
                Ok(s) => s,
                Err(poisoned) => poisoned.into_inner(),
            };
            let mut purge = Vec::new();
            let mut next = HashMap::new();
            for app in &table.apps {
                if let Some((release, stopped)) = seen.get(&app.name) {
                    if *release != app.release_path || (app.stopped && !stopped) {
                        purge.push(app.name.clone());
                    }
                }
                next.insert(app.name.clone(), (app.release_path.clone(), app.stopped));
            }
            purge.extend(seen.keys().filter(|k| !next.contains_key(*k)).cloned());
            *seen = next;
            purge
        };
        for app in purge {
            self.purge_app(&app);
        }
    }

    /// The counters, when anything changed since the last call.
    pub fn take_stats_if_dirty(&self) -> Option<CacheStats> {
        if !self.enabled || !self.dirty.swap(false, Ordering::AcqRel) {
            return None;
        }
        let (bytes, entries) = {
            let s = self.store();
            (s.bytes() as u64, s.len() as u64)
        };
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Some(CacheStats {
            hits: get(&self.hits),
            misses: get(&self.misses),
            bypasses: get(&self.bypasses),
            stores: get(&self.stores),
            evictions: get(&self.evictions),
            invalidations: get(&self.invalidations),
            bytes,
            entries,
        })
    }
}

enum Mode {
    Bypass,
    /// A method other than GET/HEAD; `invalidate` = (host, target) for unsafe ones.
    Method {
        invalidate: Option<(String, String)>,
    },
    Miss {
        label: &'static str,
        key: String,
        /// GET only: the request headers (for `Vary`) and the app, to store the answer.
        store: Option<(HeaderMap, String)>,
        flight: Option<FlightGuard>,
    },
}

/// What the cache needs to see the upstream response of a forwarded request. Dropping it
/// unused (an error the server generated) releases any waiting followers.
pub struct Ticket {
    inner: Option<(Arc<Cache>, &'static str, Mode)>,
}

impl Ticket {
    fn new(cache: &Arc<Cache>, label: &'static str, mode: Mode) -> Self {
        Ticket {
            inner: Some((Arc::clone(cache), label, mode)),
        }
    }

    /// The access log's `cache` field.
    pub fn log_label(&self) -> &'static str {
        match &self.inner {
            None => "-",
            Some((_, _, Mode::Miss { .. })) => "miss",
            Some(_) => "bypass",
        }
    }

    /// Takes the upstream response: adds `Cache-Status`, invalidates after a successful
    /// unsafe request, and tees a storable body into the cache. `sent_at` is when the
    /// request went upstream.
    pub fn complete(self, resp: Response<Body>, sent_at: Instant) -> Response<Body> {
        let Some((cache, label, mode)) = self.inner else {
            return resp;
        };
        let (mut parts, body) = resp.into_parts();
        match mode {
            Mode::Bypass => {
                append_forward_status(&mut parts.headers, label, false);
                Response::from_parts(parts, body)
            }
            Mode::Method { invalidate } => {
                let ok = parts.status.is_success() || parts.status.is_redirection();
                if let (true, Some((host, target))) = (ok, invalidate) {
                    let targets = invalidate::targets(&host, &target, &parts.headers);
                    let inv = CacheInvalidation { host, targets };
                    cache.invalidate(&inv);
                    tracing::debug!(host = %inv.host, targets = ?inv.targets, "Cache invalidated by an unsafe request");
                    (cache.sink)(WorkerToMaster::CacheInvalidate(inv));
                }
                append_forward_status(&mut parts.headers, label, false);
                Response::from_parts(parts, body)
            }
            Mode::Miss {
                key,
                store: None,
                flight,
                ..
            } => {
                drop(flight);
                tracing::trace!(%key, "HEAD miss forwarded");
                append_forward_status(&mut parts.headers, label, false);
                Response::from_parts(parts, body)
            }
            Mode::Miss {
                key,
                store: Some((req_headers, app)),
                flight,
                ..
            } => {
                let now = Instant::now();
                let now_unix = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() as i64);
                let admitted = admit(&req_headers, parts.status, &parts.headers, now_unix)
                    .and_then(|f| {
                        // Rule 9, when the length is known: the entry must fit the budget.
                        let head_bytes: u64 = parts
                            .headers
                            .iter()
                            .map(|(k, v)| (k.as_str().len() + v.len()) as u64)
                            .sum();
                        let known = content_length(&parts.headers).unwrap_or(0);
                        if key.len() as u64 + head_bytes + known > cache.budget {
                            Err(admission::Refusal::TooLarge)
                        } else {
                            Ok(f)
                        }
                    });
                match admitted {
                    Err(why) => {
                        tracing::debug!(%key, %why, "Response not stored");
                        // A personal answer says nothing about the URL: the next anonymous
                        // request may still lead and store.
                        if why != admission::Refusal::Credentials {
                            cache.flights.mark_uncacheable(&key);
                        }
                        drop(flight);
                        append_forward_status(&mut parts.headers, label, false);
                        Response::from_parts(parts, body)
                    }
                    Ok(fresh) => {
                        let names = match vary_spec(&parts.headers) {
                            VarySpec::Names(n) => n,
                            VarySpec::Uncacheable => Vec::new(),
                        };
                        let mut stored_headers = parts.headers.clone();
                        stored_headers.remove(AGE);
                        let entry = Entry {
                            app,
                            status: parts.status,
                            headers: stored_headers,
                            body: bytes::Bytes::new(),
                            vary: VaryRecord::record(
                                &names,
                                &req_headers,
                                parts.extensions.get::<Negotiated>().map(|n| n.0),
                            ),
                            stored_at: now,
                            initial_age: fresh.upstream_age
                                + now.saturating_duration_since(sent_at),
                            lifetime: fresh.lifetime,
                            public: fresh.public,
                        };
                        cache.flights.clear_uncacheable(&key);
                        append_forward_status(&mut parts.headers, label, true);
                        let job = StoreJob {
                            cache,
                            key,
                            req_headers,
                            entry,
                            _flight: flight,
                        };
                        Response::from_parts(parts, TeeBody::wrap(body, job))
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
