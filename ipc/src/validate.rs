//! Checks of what a child sends against what the master knows. A child is not trusted: a
//! proxy worker parses the internet's bytes and may be compromised. Everything the master
//! keeps from a child, sums and renders (into `/metrics`, the status page and the messages it
//! fans out to the other workers) must be bounded by what the master itself validated: app
//! names it registered, instance ids it allocated, epochs it sent. A frame that breaks a rule
//! is a [`Violation`]; the master ends that child for it (and replaces it, as after a crash),
//! it never stores any part of it.

use std::collections::{HashMap, HashSet, VecDeque};

use crate::messages::{
    AppHttpStats, CacheInvalidation, CacheStats, EdgeStats, InstallResult, InstanceCounters,
    InstanceEvent, LauncherToMaster, RemovedInstance, RouteTable, WorkerToMaster,
};

/// Largest value of any counter or gauge a child reports. Far above any real count (2^50
/// requests is 35 years at a million a second) and low enough that summing over every
/// worker cannot overflow a `u64`.
pub const MAX_COUNTER: u64 = 1 << 50;
/// Largest duration sum, in seconds (about 35 years per request at the counter bound).
pub const MAX_DURATION_SUM_SECS: f64 = 1e15;
/// Most targets one invalidation frame may carry; a worker splits larger sets.
pub const MAX_INVALIDATION_TARGETS: usize = 256;
/// Most bytes of targets one invalidation frame may carry; a worker splits larger sets.
pub const MAX_INVALIDATION_BYTES: usize = 160 * 1024;
/// Longest host in an invalidation (a DNS name is at most 253 bytes, plus a port).
pub const MAX_HOST_LEN: usize = 1024;
/// Longest error, reason or output text in a launcher event.
pub const MAX_EVENT_TEXT: usize = 64 * 1024;
/// Highest pid Linux can hand out (`PID_MAX_LIMIT`).
pub const MAX_PID: u32 = 1 << 22;
/// Most instances one table acknowledgement may list as removed: far above what one table
/// takes out, and what bounds the master's work on one frame.
pub const MAX_REMOVED_PER_ACK: usize = 16 * 1024;
/// How many route tables back the master remembers which instances each one removed. An
/// acknowledgement whose previous table is older cannot be checked and is refused: a worker
/// that far behind is not keeping up anyway.
pub const TABLE_HISTORY: u64 = 1024;

/// What the master knows about the apps it published to workers.
pub trait KnownApps {
    /// The app was registered and published by this master (a name may outlive the app in
    /// a worker's totals, so names are remembered for the master's life).
    fn app_known(&self, name: &str) -> bool;
    /// The highest instance id of `app` the master published, `None` for an unknown app.
    fn max_instance(&self, app: &str) -> Option<u32>;
    /// The newest route-table epoch sent to this worker.
    fn latest_epoch(&self) -> u64;
    /// Whether a table of an epoch in `after+1..=upto` took the instance out of rotation;
    /// `None` when those tables are older than what the master remembers.
    fn removed_between(&self, after: u64, upto: u64, app: &str, instance_id: u32) -> Option<bool> {
        let _ = (after, upto, app, instance_id);
        None
    }
}

/// What the master knows about the launcher's work.
pub trait KnownInstances {
    /// The master ordered this instance started and has not seen its end.
    fn instance_live(&self, app: &str, instance_id: u32) -> bool;
    /// The master asked for this install and has not had its result.
    fn install_pending(&self, request_id: u64) -> bool;
}

/// Everything a worker reported last: counters are totals, so each report must not go below
/// the previous one.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WorkerReports {
    pub counters: Vec<InstanceCounters>,
    pub cache: CacheStats,
    pub http: Vec<AppHttpStats>,
    pub edge: EdgeStats,
    /// The epoch of the last table this worker acknowledged, `None` before its first: what
    /// the next acknowledgement's removals are checked against.
    pub acked_epoch: Option<u64>,
}

/// A name as it may appear in a log line: never more than 64 characters of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shown(String);

impl Shown {
    pub fn new(name: &str) -> Self {
        const KEEP: usize = 64;
        if name.chars().count() <= KEEP {
            return Shown(name.to_string());
        }
        let head: String = name.chars().take(KEEP).collect();
        Shown(format!("{head}… ({} bytes)", name.len()))
    }
}

impl std::fmt::Display for Shown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// Why a child's frame was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Violation {
    #[error("{what} names app {app}, which this master never registered")]
    UnknownApp { what: &'static str, app: Shown },
    #[error("{what} lists app {app} twice")]
    Duplicate { what: &'static str, app: Shown },
    #[error("{what} carries {count} entries, more than the {max} the master allows")]
    TooMany {
        what: &'static str,
        count: usize,
        max: usize,
    },
    #[error("{what} of app {app} went backwards from {was} to {now}")]
    Backwards {
        what: &'static str,
        app: Shown,
        was: u64,
        now: u64,
    },
    #[error("{what} of app {app} is {value}, above the bound {MAX_COUNTER}")]
    OutOfRange {
        what: &'static str,
        app: Shown,
        value: u64,
    },
    #[error("{what} of app {app} dropped out of the report (totals never disappear)")]
    Disappeared { what: &'static str, app: Shown },
    #[error("request stats of app {app} count {by_class} requests by class but {by_bucket} by duration bucket")]
    HistogramMismatch {
        app: Shown,
        by_class: u64,
        by_bucket: u64,
    },
    #[error("request duration sum of app {app} is {value} s (not finite, negative, below the previous {was} s or above {MAX_DURATION_SUM_SECS} s)")]
    BadDurationSum { app: Shown, value: f64, was: f64 },
    #[error("instance {instance_id} of app {app} was never published by this master")]
    UnknownInstance { app: Shown, instance_id: u32 },
    #[error("routes applied for epoch {epoch}, but the newest epoch sent is {latest}")]
    FutureEpoch { epoch: u64, latest: u64 },
    #[error("routes applied for epoch {epoch} after epoch {acked} (tables are applied in order)")]
    EpochBackwards { epoch: u64, acked: u64 },
    #[error("table {epoch} acknowledged after table {acked}, older than the master remembers")]
    AckTooOld { epoch: u64, acked: u64 },
    #[error("table {epoch} is said to remove instance {instance_id} of app {app}, which it did not remove")]
    NotRemoved {
        app: Shown,
        instance_id: u32,
        epoch: u64,
    },
    #[error("cache invalidation {0}")]
    Invalidation(&'static str),
    #[error("event for instance {instance_id} of app {app}, which the master did not start or which already ended")]
    NotLive { app: Shown, instance_id: u32 },
    #[error("install result for request {0}, which the master did not ask for or already has")]
    UnknownInstall(u64),
    #[error("instance {instance_id} of app {app} reported pid {pid}, outside 2..={MAX_PID}")]
    BadPid {
        app: Shown,
        instance_id: u32,
        pid: u32,
    },
    #[error("{what} is {len} bytes, more than {MAX_EVENT_TEXT}")]
    TextTooLong { what: &'static str, len: usize },
    #[error(
        "instance {instance_id} of app {app} reported pid {pid}, which is not the app's: {why}"
    )]
    ForeignPid {
        app: Shown,
        instance_id: u32,
        pid: u32,
        why: &'static str,
    },
}

fn bounded(what: &'static str, app: &str, value: u64) -> Result<(), Violation> {
    if value > MAX_COUNTER {
        return Err(Violation::OutOfRange {
            what,
            app: Shown::new(app),
            value,
        });
    }
    Ok(())
}

fn monotone(what: &'static str, app: &str, was: u64, now: u64) -> Result<(), Violation> {
    bounded(what, app, now)?;
    if now < was {
        return Err(Violation::Backwards {
            what,
            app: Shown::new(app),
            was,
            now,
        });
    }
    Ok(())
}

/// Checks one frame from a proxy worker. `prev` is what this worker reported before.
/// The hello is the channel's business ([`crate::channel`]) and passes here.
pub fn check_worker_frame(
    msg: &WorkerToMaster,
    known: &dyn KnownApps,
    prev: &WorkerReports,
) -> Result<(), Violation> {
    match msg {
        WorkerToMaster::Hello { .. } | WorkerToMaster::Ready => Ok(()),
        WorkerToMaster::RoutesApplied { epoch } => {
            let latest = known.latest_epoch();
            if *epoch > latest {
                return Err(Violation::FutureEpoch {
                    epoch: *epoch,
                    latest,
                });
            }
            // An old-style acknowledgement carries no counts: it still may not go backwards.
            if let Some(acked) = prev.acked_epoch.filter(|a| a > epoch) {
                return Err(Violation::EpochBackwards {
                    epoch: *epoch,
                    acked,
                });
            }
            Ok(())
        }
        WorkerToMaster::TableApplied { epoch, removed } => {
            check_table_ack(*epoch, removed, known, prev.acked_epoch)
        }
        WorkerToMaster::Wake { app } => {
            if !known.app_known(app) {
                return Err(Violation::UnknownApp {
                    what: "wake request",
                    app: Shown::new(app),
                });
            }
            Ok(())
        }
        WorkerToMaster::Counters(counters) => check_counters(counters, known, &prev.counters),
        WorkerToMaster::CacheStats(stats) => check_cache(stats, &prev.cache),
        WorkerToMaster::HttpStats(stats) => check_http(stats, known, &prev.http),
        WorkerToMaster::CacheInvalidate(inv) => check_invalidation(inv),
        WorkerToMaster::EdgeStats(stats) => check_edge(stats, known, &prev.edge),
    }
}

/// An acknowledgement's counts are what lets the master stop an instance, so each must be
/// for an instance that a table after the worker's previous one really took out of rotation:
/// a count for anything else is refused, not ignored. (A worker that lies about its own
/// requests only breaks those; what the checks keep out is anything beyond them.)
fn check_table_ack(
    epoch: u64,
    removed: &[RemovedInstance],
    known: &dyn KnownApps,
    acked: Option<u64>,
) -> Result<(), Violation> {
    let latest = known.latest_epoch();
    if epoch > latest {
        return Err(Violation::FutureEpoch { epoch, latest });
    }
    if let Some(acked) = acked.filter(|a| *a > epoch) {
        return Err(Violation::EpochBackwards { epoch, acked });
    }
    if removed.len() > MAX_REMOVED_PER_ACK {
        return Err(Violation::TooMany {
            what: "table acknowledgement",
            count: removed.len(),
            max: MAX_REMOVED_PER_ACK,
        });
    }
    let mut seen = HashSet::new();
    for r in removed {
        match known.max_instance(&r.app) {
            None => {
                return Err(Violation::UnknownApp {
                    what: "table acknowledgement",
                    app: Shown::new(&r.app),
                })
            }
            Some(max) if r.instance_id > max => {
                return Err(Violation::UnknownInstance {
                    app: Shown::new(&r.app),
                    instance_id: r.instance_id,
                })
            }
            Some(_) => {}
        }
        bounded("in-flight count", &r.app, u64::from(r.in_flight))?;
        if !seen.insert((r.app.as_str(), r.instance_id)) {
            return Err(Violation::Duplicate {
                what: "table acknowledgement",
                app: Shown::new(&r.app),
            });
        }
        // A worker's first table followed an empty one: it removed nothing.
        let removed_here = match acked {
            None => Some(false),
            Some(after) => known.removed_between(after, epoch, &r.app, r.instance_id),
        };
        match removed_here {
            Some(true) => {}
            Some(false) => {
                return Err(Violation::NotRemoved {
                    app: Shown::new(&r.app),
                    instance_id: r.instance_id,
                    epoch,
                })
            }
            None => {
                return Err(Violation::AckTooOld {
                    epoch,
                    acked: acked.unwrap_or(0),
                })
            }
        }
    }
    Ok(())
}

fn check_counters(
    counters: &[InstanceCounters],
    known: &dyn KnownApps,
    prev: &[InstanceCounters],
) -> Result<(), Violation> {
    let mut seen: HashMap<(&str, u32), &InstanceCounters> = HashMap::new();
    for c in counters {
        match known.max_instance(&c.app) {
            None => {
                return Err(Violation::UnknownApp {
                    what: "instance counters",
                    app: Shown::new(&c.app),
                })
            }
            Some(max) if c.instance_id > max => {
                return Err(Violation::UnknownInstance {
                    app: Shown::new(&c.app),
                    instance_id: c.instance_id,
                })
            }
            Some(_) => {}
        }
        bounded("in-flight count", &c.app, u64::from(c.in_flight))?;
        bounded("request total", &c.app, c.requests_total)?;
        if seen.insert((c.app.as_str(), c.instance_id), c).is_some() {
            return Err(Violation::Duplicate {
                what: "instance counters",
                app: Shown::new(&c.app),
            });
        }
    }
    for p in prev {
        match seen.get(&(p.app.as_str(), p.instance_id)) {
            Some(now) => monotone(
                "request total",
                &p.app,
                p.requests_total,
                now.requests_total,
            )?,
            None => {
                return Err(Violation::Disappeared {
                    what: "instance counters",
                    app: Shown::new(&p.app),
                })
            }
        }
    }
    Ok(())
}

fn check_cache(now: &CacheStats, was: &CacheStats) -> Result<(), Violation> {
    for (what, w, n) in [
        ("cache hits", was.hits, now.hits),
        ("cache misses", was.misses, now.misses),
        ("cache bypasses", was.bypasses, now.bypasses),
        ("cache stores", was.stores, now.stores),
        ("cache evictions", was.evictions, now.evictions),
        ("cache invalidations", was.invalidations, now.invalidations),
    ] {
        monotone(what, "", w, n)?;
    }
    bounded("cache bytes", "", now.bytes)?;
    bounded("cache entries", "", now.entries)
}

fn check_http(
    stats: &[AppHttpStats],
    known: &dyn KnownApps,
    prev: &[AppHttpStats],
) -> Result<(), Violation> {
    let mut seen: HashMap<&str, &AppHttpStats> = HashMap::new();
    for s in stats {
        // The empty name counts requests that matched no app.
        if !s.app.is_empty() && !known.app_known(&s.app) {
            return Err(Violation::UnknownApp {
                what: "request stats",
                app: Shown::new(&s.app),
            });
        }
        if seen.insert(s.app.as_str(), s).is_some() {
            return Err(Violation::Duplicate {
                what: "request stats",
                app: Shown::new(&s.app),
            });
        }
        let mut by_class = 0u64;
        for n in s.classes {
            bounded("request count", &s.app, n)?;
            by_class += n;
        }
        let mut by_bucket = 0u64;
        for n in s.buckets {
            bounded("duration bucket", &s.app, n)?;
            by_bucket += n;
        }
        // Every counted request lands in one class and one bucket.
        if by_class != by_bucket {
            return Err(Violation::HistogramMismatch {
                app: Shown::new(&s.app),
                by_class,
                by_bucket,
            });
        }
        let d = s.duration_sum_secs;
        if !d.is_finite() || !(0.0..=MAX_DURATION_SUM_SECS).contains(&d) {
            return Err(Violation::BadDurationSum {
                app: Shown::new(&s.app),
                value: d,
                was: 0.0,
            });
        }
    }
    for p in prev {
        let Some(now) = seen.get(p.app.as_str()) else {
            return Err(Violation::Disappeared {
                what: "request stats",
                app: Shown::new(&p.app),
            });
        };
        for (w, n) in p.classes.iter().zip(now.classes.iter()) {
            monotone("request count", &p.app, *w, *n)?;
        }
        for (w, n) in p.buckets.iter().zip(now.buckets.iter()) {
            monotone("duration bucket", &p.app, *w, *n)?;
        }
        // Adding non-negative durations never makes a float sum smaller.
        if now.duration_sum_secs < p.duration_sum_secs {
            return Err(Violation::BadDurationSum {
                app: Shown::new(&p.app),
                value: now.duration_sum_secs,
                was: p.duration_sum_secs,
            });
        }
    }
    Ok(())
}

fn check_edge(now: &EdgeStats, known: &dyn KnownApps, was: &EdgeStats) -> Result<(), Violation> {
    monotone(
        "TLS handshakes ok",
        "",
        was.tls_handshakes_ok,
        now.tls_handshakes_ok,
    )?;
    monotone(
        "TLS handshakes failed",
        "",
        was.tls_handshakes_failed,
        now.tls_handshakes_failed,
    )?;
    let (c, p) = (&now.client_limits, &was.client_limits);
    for (what, was, now) in [
        (
            "connections refused",
            p.connections_refused,
            c.connections_refused,
        ),
        ("requests refused", p.requests_refused, c.requests_refused),
        (
            "requests rate-limited",
            p.requests_rate_limited,
            c.requests_rate_limited,
        ),
        ("client table full", p.table_full, c.table_full),
    ] {
        monotone(what, "", was, now)?;
    }
    let mut seen = HashMap::new();
    for e in &now.upstream_errors {
        if !known.app_known(&e.app) {
            return Err(Violation::UnknownApp {
                what: "upstream errors",
                app: Shown::new(&e.app),
            });
        }
        for n in [e.connect, e.timeout, e.failed] {
            bounded("upstream errors", &e.app, n)?;
        }
        if seen.insert(e.app.as_str(), e).is_some() {
            return Err(Violation::Duplicate {
                what: "upstream errors",
                app: Shown::new(&e.app),
            });
        }
    }
    for p in &was.upstream_errors {
        let Some(n) = seen.get(p.app.as_str()) else {
            return Err(Violation::Disappeared {
                what: "upstream errors",
                app: Shown::new(&p.app),
            });
        };
        monotone("upstream connect errors", &p.app, p.connect, n.connect)?;
        monotone("upstream timeouts", &p.app, p.timeout, n.timeout)?;
        monotone("upstream failures", &p.app, p.failed, n.failed)?;
    }
    Ok(())
}

/// The bounds of one invalidation frame (the master fans each one out to every worker).
pub fn check_invalidation(inv: &CacheInvalidation) -> Result<(), Violation> {
    if inv.host.is_empty() || inv.host.len() > MAX_HOST_LEN {
        return Err(Violation::Invalidation("has an empty or overlong host"));
    }
    if inv.targets.is_empty() {
        return Err(Violation::Invalidation("has no target"));
    }
    if inv.targets.len() > MAX_INVALIDATION_TARGETS {
        return Err(Violation::TooMany {
            what: "cache invalidation",
            count: inv.targets.len(),
            max: MAX_INVALIDATION_TARGETS,
        });
    }
    let bytes: usize = inv.targets.iter().map(String::len).sum();
    if bytes > MAX_INVALIDATION_BYTES {
        return Err(Violation::Invalidation(
            "carries more target bytes than allowed",
        ));
    }
    Ok(())
}

/// Splits an invalidation into pieces that each pass [`check_invalidation`], for the
/// worker that sends them: a response with thousands of `Location` values is the app's
/// choice, and must not make an honest worker look hostile. A target or host that no frame
/// could carry is dropped (no request can have one: heads are at most 64 KiB).
pub fn split_invalidation(inv: CacheInvalidation) -> Vec<CacheInvalidation> {
    if inv.host.is_empty() || inv.host.len() > MAX_HOST_LEN {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut chunk: Vec<String> = Vec::new();
    let mut bytes = 0usize;
    for t in inv.targets {
        if t.len() > MAX_INVALIDATION_BYTES {
            continue;
        }
        if chunk.len() == MAX_INVALIDATION_TARGETS || bytes + t.len() > MAX_INVALIDATION_BYTES {
            out.push(CacheInvalidation {
                host: inv.host.clone(),
                targets: std::mem::take(&mut chunk),
            });
            bytes = 0;
        }
        bytes += t.len();
        chunk.push(t);
    }
    if !chunk.is_empty() {
        out.push(CacheInvalidation {
            host: inv.host,
            targets: chunk,
        });
    }
    out
}

fn text(what: &'static str, s: &str) -> Result<(), Violation> {
    if s.len() > MAX_EVENT_TEXT {
        return Err(Violation::TextTooLong { what, len: s.len() });
    }
    Ok(())
}

/// Checks one frame from the app launcher.
pub fn check_launcher_frame(
    msg: &LauncherToMaster,
    known: &dyn KnownInstances,
) -> Result<(), Violation> {
    match msg {
        LauncherToMaster::Hello { .. } => Ok(()),
        LauncherToMaster::Instance {
            app,
            instance_id,
            event,
        } => {
            if !known.instance_live(app, *instance_id) {
                return Err(Violation::NotLive {
                    app: Shown::new(app),
                    instance_id: *instance_id,
                });
            }
            match event {
                InstanceEvent::Spawned { pid } if !(2..=MAX_PID).contains(pid) => {
                    Err(Violation::BadPid {
                        app: Shown::new(app),
                        instance_id: *instance_id,
                        pid: *pid,
                    })
                }
                InstanceEvent::SpawnFailed { error } => text("spawn error", error),
                InstanceEvent::Unhealthy { reason } => text("unhealthy reason", reason),
                InstanceEvent::Exited { output, .. } => text("startup output", output),
                _ => Ok(()),
            }
        }
        LauncherToMaster::InstallDone { request_id, result } => {
            if !known.install_pending(*request_id) {
                return Err(Violation::UnknownInstall(*request_id));
            }
            match result {
                InstallResult::Failed { output, .. } => text("install output", output),
                InstallResult::SpawnError { error } => text("install error", error),
                InstallResult::Ok | InstallResult::TimedOut => Ok(()),
            }
        }
    }
}

/// Whether an event ends an instance in the launcher: nothing may follow it.
pub fn ends_instance(event: &InstanceEvent) -> bool {
    matches!(
        event,
        InstanceEvent::Exited { .. } | InstanceEvent::SpawnFailed { .. }
    )
}

/// A plain model of [`KnownApps`]: names with their highest instance id, and an epoch.
/// The master keeps one; tests and the fuzz target use it too.
#[derive(Debug, Clone, Default)]
pub struct AppBook {
    apps: HashMap<String, u32>,
    epoch: u64,
    /// The instances in rotation in the newest table learnt.
    rotation: HashSet<(String, u32)>,
    /// Per epoch, the instances that table took out of rotation (epochs that removed
    /// nothing are not stored), for the last [`TABLE_HISTORY`] epochs.
    removals: VecDeque<(u64, Vec<(String, u32)>)>,
    /// Removals are known for every epoch above this one.
    history_from: u64,
    learnt_any: bool,
}

impl AppBook {
    /// Records an app (and its highest instance id) that the master publishes.
    pub fn publish(&mut self, app: &str, max_instance: u32) {
        let e = self.apps.entry(app.to_string()).or_insert(0);
        *e = (*e).max(max_instance);
    }

    pub fn set_epoch(&mut self, epoch: u64) {
        self.epoch = self.epoch.max(epoch);
    }

    /// Records a route table about to be sent: its apps and instances, its epoch, and which
    /// instances it took out of rotation relative to the newest table before it. A table
    /// not newer than what the book holds (the snapshot a new worker gets) changes nothing.
    pub fn learn_table(&mut self, table: &RouteTable) {
        for a in &table.apps {
            let max = a.backends.iter().map(|b| b.instance_id).max().unwrap_or(0);
            self.publish(&a.name, max);
        }
        if self.learnt_any && table.epoch <= self.epoch {
            return;
        }
        self.learnt_any = true;
        let rotation: HashSet<(String, u32)> = table
            .apps
            .iter()
            .flat_map(|a| a.backends.iter().map(|b| (a.name.clone(), b.instance_id)))
            .collect();
        let gone: Vec<(String, u32)> = self.rotation.difference(&rotation).cloned().collect();
        if !gone.is_empty() {
            self.removals.push_back((table.epoch, gone));
        }
        self.rotation = rotation;
        self.set_epoch(table.epoch);
        let floor = self.epoch.saturating_sub(TABLE_HISTORY);
        self.history_from = self.history_from.max(floor);
        while self.removals.front().is_some_and(|(e, _)| *e <= floor) {
            self.removals.pop_front();
        }
    }

    pub fn len(&self) -> usize {
        self.apps.len()
    }

    pub fn is_empty(&self) -> bool {
        self.apps.is_empty()
    }
}

impl KnownApps for AppBook {
    fn app_known(&self, name: &str) -> bool {
        self.apps.contains_key(name)
    }

    fn max_instance(&self, app: &str) -> Option<u32> {
        self.apps.get(app).copied()
    }

    fn latest_epoch(&self) -> u64 {
        self.epoch
    }

    fn removed_between(&self, after: u64, upto: u64, app: &str, instance_id: u32) -> Option<bool> {
        if after < self.history_from {
            return None;
        }
        Some(
            self.removals
                .iter()
                .filter(|(e, _)| *e > after && *e <= upto)
                .any(|(_, gone)| gone.iter().any(|(a, i)| a == app && *i == instance_id)),
        )
    }
}

/// A plain model of [`KnownInstances`].
#[derive(Debug, Clone, Default)]
pub struct InstanceBook {
    pub live: HashSet<(String, u32)>,
    pub installs: HashSet<u64>,
}

impl KnownInstances for InstanceBook {
    fn instance_live(&self, app: &str, instance_id: u32) -> bool {
        self.live.contains(&(app.to_string(), instance_id))
    }

    fn install_pending(&self, request_id: u64) -> bool {
        self.installs.contains(&request_id)
    }
}

impl WorkerReports {
    /// Stores an accepted frame's report as the baseline for the next one.
    pub fn record(&mut self, msg: &WorkerToMaster) {
        match msg {
            WorkerToMaster::Counters(c) => self.counters = c.clone(),
            WorkerToMaster::CacheStats(c) => self.cache = c.clone(),
            WorkerToMaster::HttpStats(h) => self.http = h.clone(),
            WorkerToMaster::EdgeStats(e) => self.edge = e.clone(),
            WorkerToMaster::RoutesApplied { epoch }
            | WorkerToMaster::TableApplied { epoch, .. } => {
                self.acked_epoch = Some(self.acked_epoch.map_or(*epoch, |a| a.max(*epoch)));
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::AppUpstreamErrors;

    fn book() -> AppBook {
        let mut b = AppBook::default();
        b.publish("web", 3);
        b.set_epoch(7);
        b
    }

    fn stats(app: &str, ok: u64) -> AppHttpStats {
        let mut s = AppHttpStats {
            app: app.into(),
            ..Default::default()
        };
        s.classes[1] = ok;
        s.buckets[2] = ok;
        s.duration_sum_secs = ok as f64 * 0.02;
        s
    }

    #[test]
    fn honest_reports_pass() {
        let prev = WorkerReports::default();
        let msg = WorkerToMaster::HttpStats(vec![stats("web", 3), stats("", 1)]);
        assert_eq!(check_worker_frame(&msg, &book(), &prev), Ok(()));
        let mut prev = WorkerReports::default();
        prev.record(&msg);
        let next = WorkerToMaster::HttpStats(vec![stats("web", 4), stats("", 1)]);
        assert_eq!(check_worker_frame(&next, &book(), &prev), Ok(()));
        let c = WorkerToMaster::Counters(vec![InstanceCounters {
            app: "web".into(),
            instance_id: 3,
            requests_total: 9,
            in_flight: 1,
        }]);
        assert_eq!(check_worker_frame(&c, &book(), &prev), Ok(()));
        let e = WorkerToMaster::EdgeStats(EdgeStats {
            tls_handshakes_ok: 1,
            tls_handshakes_failed: 0,
            upstream_errors: vec![AppUpstreamErrors {
                app: "web".into(),
                connect: 1,
                ..Default::default()
            }],
            client_limits: Default::default(),
        });
        assert_eq!(check_worker_frame(&e, &book(), &prev), Ok(()));
        // Refusal counts are totals: they never go back.
        let mut later = WorkerReports::default();
        later.record(&WorkerToMaster::EdgeStats(EdgeStats {
            client_limits: tako_limits(5),
            ..Default::default()
        }));
        let back = WorkerToMaster::EdgeStats(EdgeStats {
            client_limits: tako_limits(4),
            ..Default::default()
        });
        assert!(check_worker_frame(&back, &book(), &later).is_err());
        assert_eq!(
            check_worker_frame(&WorkerToMaster::RoutesApplied { epoch: 7 }, &book(), &prev),
            Ok(())
        );
    }

    fn tako_limits(n: u64) -> crate::ClientLimitStats {
        crate::ClientLimitStats {
            requests_rate_limited: n,
            ..Default::default()
        }
    }

    #[test]
    fn unknown_names_and_instances_are_violations() {
        let prev = WorkerReports::default();
        let huge = "x".repeat(1 << 20);
        let err = check_worker_frame(
            &WorkerToMaster::HttpStats(vec![stats(&huge, 1)]),
            &book(),
            &prev,
        )
        .unwrap_err();
        assert!(matches!(err, Violation::UnknownApp { .. }));
        assert!(err.to_string().len() < 300, "a log line stays short");
        let c = WorkerToMaster::Counters(vec![InstanceCounters {
            app: "web".into(),
            instance_id: 4,
            requests_total: 1,
            in_flight: 0,
        }]);
        assert!(matches!(
            check_worker_frame(&c, &book(), &prev),
            Err(Violation::UnknownInstance { .. })
        ));
        assert!(matches!(
            check_worker_frame(&WorkerToMaster::Wake { app: "nope".into() }, &book(), &prev),
            Err(Violation::UnknownApp { .. })
        ));
        assert!(matches!(
            check_worker_frame(&WorkerToMaster::RoutesApplied { epoch: 8 }, &book(), &prev),
            Err(Violation::FutureEpoch { .. })
        ));
    }

    #[test]
    fn counters_may_not_go_back_vanish_double_or_overflow() {
        let mut prev = WorkerReports::default();
        prev.record(&WorkerToMaster::HttpStats(vec![stats("web", 5)]));
        let b = book();
        let back = WorkerToMaster::HttpStats(vec![stats("web", 4)]);
        assert!(matches!(
            check_worker_frame(&back, &b, &prev),
            Err(Violation::Backwards { .. })
        ));
        let gone = WorkerToMaster::HttpStats(vec![]);
        assert!(matches!(
            check_worker_frame(&gone, &b, &prev),
            Err(Violation::Disappeared { .. })
        ));
        let twice = WorkerToMaster::HttpStats(vec![stats("web", 6), stats("web", 6)]);
        assert!(matches!(
            check_worker_frame(&twice, &b, &prev),
            Err(Violation::Duplicate { .. })
        ));
        let huge = WorkerToMaster::HttpStats(vec![stats("web", u64::MAX)]);
        assert!(matches!(
            check_worker_frame(&huge, &b, &prev),
            Err(Violation::OutOfRange { .. })
        ));
        let mut skew = stats("web", 6);
        skew.buckets[0] = 1;
        assert!(matches!(
            check_worker_frame(&WorkerToMaster::HttpStats(vec![skew]), &b, &prev),
            Err(Violation::HistogramMismatch { .. })
        ));
        let mut nan = stats("web", 6);
        nan.duration_sum_secs = f64::NAN;
        assert!(matches!(
            check_worker_frame(&WorkerToMaster::HttpStats(vec![nan]), &b, &prev),
            Err(Violation::BadDurationSum { .. })
        ));
    }

    #[test]
    fn invalidations_are_bounded_and_split_to_fit() {
        let inv = CacheInvalidation {
            host: "a.example".into(),
            targets: (0..1000)
                .map(|i| format!("/{}{i}", "p".repeat(500)))
                .collect(),
        };
        assert!(check_invalidation(&inv).is_err());
        let parts = split_invalidation(inv.clone());
        assert!(parts.len() > 1);
        let mut all = Vec::new();
        for p in &parts {
            assert_eq!(check_invalidation(p), Ok(()));
            all.extend(p.targets.iter().cloned());
        }
        assert_eq!(all, inv.targets, "nothing lost, order kept");
        assert!(split_invalidation(CacheInvalidation {
            host: String::new(),
            targets: vec!["/".into()]
        })
        .is_empty());
    }

    #[test]
    fn launcher_events_only_for_live_instances_and_pending_installs() {
        let mut known = InstanceBook::default();
        known.live.insert(("web".into(), 1));
        known.installs.insert(5);
        let ev = |id, event| LauncherToMaster::Instance {
            app: "web".into(),
            instance_id: id,
            event,
        };
        assert_eq!(
            check_launcher_frame(&ev(1, InstanceEvent::Spawned { pid: 4242 }), &known),
            Ok(())
        );
        assert!(matches!(
            check_launcher_frame(&ev(2, InstanceEvent::Ready), &known),
            Err(Violation::NotLive { .. })
        ));
        assert!(matches!(
            check_launcher_frame(&ev(1, InstanceEvent::Spawned { pid: 1 }), &known),
            Err(Violation::BadPid { .. })
        ));
        assert!(matches!(
            check_launcher_frame(
                &ev(
                    1,
                    InstanceEvent::Unhealthy {
                        reason: "r".repeat(MAX_EVENT_TEXT + 1)
                    }
                ),
                &known
            ),
            Err(Violation::TextTooLong { .. })
        ));
        let done = |id| LauncherToMaster::InstallDone {
            request_id: id,
            result: InstallResult::Ok,
        };
        assert_eq!(check_launcher_frame(&done(5), &known), Ok(()));
        assert!(matches!(
            check_launcher_frame(&done(6), &known),
            Err(Violation::UnknownInstall(6))
        ));
    }

    fn table(epoch: u64, ids: &[u32]) -> RouteTable {
        RouteTable {
            epoch,
            apps: vec![crate::messages::AppRoutes {
                name: "web".into(),
                routes: vec!["a.com".into()],
                release_path: "/r".into(),
                stopped: false,
                on_demand: false,
                backends: ids
                    .iter()
                    .map(|id| crate::messages::Backend {
                        instance_id: *id,
                        port: 3000 + *id as u16,
                    })
                    .collect(),
                starting: false,
            }],
        }
    }

    fn ack(epoch: u64, removed: &[(&str, u32, u32)]) -> WorkerToMaster {
        WorkerToMaster::TableApplied {
            epoch,
            removed: removed
                .iter()
                .map(|(app, id, n)| RemovedInstance {
                    app: (*app).into(),
                    instance_id: *id,
                    in_flight: *n,
                })
                .collect(),
        }
    }

    /// Counts are accepted only for instances a table after the worker's previous one took
    /// out of rotation; acknowledgements go forward, and none carries more than the bound.
    #[test]
    fn table_acks_name_only_removed_instances() {
        let mut b = AppBook::default();
        b.learn_table(&table(1, &[1, 2]));
        b.learn_table(&table(2, &[2, 3]));
        b.learn_table(&table(3, &[3]));
        // The snapshot a new worker gets is learnt again: no removal of its own.
        b.learn_table(&table(3, &[3]));
        let mut prev = WorkerReports::default();
        // A first table removes nothing.
        assert!(matches!(
            check_worker_frame(&ack(1, &[("web", 1, 0)]), &b, &prev),
            Err(Violation::NotRemoved { .. })
        ));
        assert_eq!(check_worker_frame(&ack(1, &[]), &b, &prev), Ok(()));
        prev.record(&ack(1, &[]));
        assert_eq!(prev.acked_epoch, Some(1));
        // Table 2 removed instance 1, not 2 or 3.
        assert_eq!(
            check_worker_frame(&ack(2, &[("web", 1, 4)]), &b, &prev),
            Ok(())
        );
        for bogus in [2, 3] {
            assert!(matches!(
                check_worker_frame(&ack(2, &[("web", bogus, 0)]), &b, &prev),
                Err(Violation::NotRemoved { .. })
            ));
        }
        // A worker that skipped to table 3 may name both removals.
        assert_eq!(
            check_worker_frame(&ack(3, &[("web", 1, 0), ("web", 2, 1)]), &b, &prev),
            Ok(())
        );
        assert!(matches!(
            check_worker_frame(&ack(3, &[("web", 2, 0), ("web", 2, 0)]), &b, &prev),
            Err(Violation::Duplicate { .. })
        ));
        assert!(matches!(
            check_worker_frame(&ack(4, &[]), &b, &prev),
            Err(Violation::FutureEpoch { .. })
        ));
        assert!(matches!(
            check_worker_frame(&ack(2, &[("nope", 1, 0)]), &b, &prev),
            Err(Violation::UnknownApp { .. })
        ));
        assert!(matches!(
            check_worker_frame(&ack(2, &[("web", 9, 0)]), &b, &prev),
            Err(Violation::UnknownInstance { .. })
        ));
        prev.record(&ack(3, &[]));
        assert!(matches!(
            check_worker_frame(&ack(2, &[]), &b, &prev),
            Err(Violation::EpochBackwards { .. })
        ));
        assert!(matches!(
            check_worker_frame(&WorkerToMaster::RoutesApplied { epoch: 2 }, &b, &prev),
            Err(Violation::EpochBackwards { .. })
        ));
        let many: Vec<(&str, u32, u32)> = (0..=MAX_REMOVED_PER_ACK as u32)
            .map(|i| ("web", i, 0))
            .collect();
        assert!(matches!(
            check_worker_frame(&ack(3, &many), &b, &prev),
            Err(Violation::TooMany { .. })
        ));
    }

    /// Removals older than the history cannot be checked: such an acknowledgement is
    /// refused rather than trusted.
    #[test]
    fn table_acks_beyond_the_history_are_refused() {
        let mut b = AppBook::default();
        b.learn_table(&table(1, &[1, 2]));
        b.learn_table(&table(2, &[2]));
        for e in 3..(TABLE_HISTORY + 10) {
            b.learn_table(&table(e, &[2]));
        }
        let mut prev = WorkerReports::default();
        prev.record(&ack(1, &[]));
        assert!(matches!(
            check_worker_frame(&ack(TABLE_HISTORY + 9, &[("web", 1, 0)]), &b, &prev),
            Err(Violation::AckTooOld { .. })
        ));
        // With nothing to check, an acknowledgement that lists nothing is fine.
        assert_eq!(
            check_worker_frame(&ack(TABLE_HISTORY + 9, &[]), &b, &prev),
            Ok(())
        );
    }
}
