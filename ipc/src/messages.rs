//! The message enums, one per direction per pair. The type of a channel is the allowlist:
//! the master decodes a worker's frames only as [`WorkerToMaster`], so a worker cannot send
//! what only the launcher may send. Order-dependent rules (hello first, once) are checked by
//! the receiving side with [`WorkerToMaster::is_hello`] and friends.

use serde::{Deserialize, Serialize};

/// Which listener an inherited socket is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ListenerKind {
    Http,
    Https,
}

/// Settings a worker needs that never change during its life.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerConfig {
    pub index: u32,
    pub generation: u32,
    pub http_port: u16,
    pub https_port: u16,
    /// CIDRs whose forwarded headers are believed, as given on the command line.
    pub trusted_proxies: Vec<String>,
    pub acme_enabled: bool,
    /// Unix seconds when the master started, for `uptime_secs`.
    pub server_started_unix_secs: u64,
    /// This worker's response-cache budget in bytes (the server budget divided by the
    /// number of workers); 0 turns the cache off.
    pub cache_bytes: u64,
    /// HTTP/2 connection timers other than the documented ones; `None` (always, outside the
    /// integration tests) means the documented 10 s / 60 s / 60 s.
    pub h2_timeouts: Option<H2Timeouts>,
    /// How the worker confines itself after the privilege drop (docs/isolation.md).
    pub sandbox: SandboxConfig,
    /// Listener addresses (`ip:port`, as `SocketAddr` prints them) whose connections start
    /// with a PROXY protocol header (docs/http.md, "PROXY protocol"); empty = none.
    pub proxy_protocol: Vec<String>,
    /// Compress eligible responses on the fly and serve precompressed static files
    /// (docs/http.md, "Compression"); false with `--no-compression`.
    pub compression: bool,
    /// Per-client limits (docs/limits.md, "Per-client limits").
    pub client_limits: ClientLimits,
}

/// Per client address, over all workers (docs/limits.md, "Per-client limits"); 0 turns a
/// limit off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ClientLimits {
    /// Open connections.
    pub max_connections: u32,
    /// Requests in flight (HTTP/2 streams included).
    pub max_requests: u32,
    /// Requests per second, on average.
    pub rate: u32,
    /// Requests at once above the rate.
    pub burst: u32,
}

impl ClientLimits {
    /// The defaults (docs/limits.md, "Per-client limits"): far above what a browser opens (6
    /// connections per host over HTTP/1.1, one over HTTP/2, whose 128 streams per connection
    /// bound its requests), so only a client that hoards connections or requests meets them.
    /// The rate is off: what a normal client sends depends on the app.
    pub const DEFAULT: ClientLimits = ClientLimits {
        max_connections: 256,
        max_requests: 512,
        rate: 0,
        burst: 100,
    };

    pub fn any(&self) -> bool {
        self.max_connections > 0 || self.max_requests > 0 || self.rate > 0
    }
}

/// How strictly a worker confines itself (`--sandbox`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum SandboxMode {
    /// Every part of the sandbox or no worker: a kernel without Landlock or seccomp stops it.
    Strict,
    /// What the kernel offers, with one warning line naming what it does not.
    #[default]
    BestEffort,
    /// No sandbox beyond the privilege drop.
    Off,
}

/// What a worker's sandbox lets through.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxConfig {
    pub mode: SandboxMode,
    /// `<data-dir>/apps`: the only place files can be opened, read-only (static files).
    pub apps_dir: String,
    /// The first and last port an app instance can get: the only TCP connect targets.
    pub instance_ports: (u16, u16),
}

impl SandboxConfig {
    /// No sandbox: for a worker run inside a test process, which must not be confined.
    pub fn off() -> SandboxConfig {
        SandboxConfig {
            mode: SandboxMode::Off,
            apps_dir: String::new(),
            instance_ports: (0, 0),
        }
    }
}

/// The HTTP/2 connection timers in milliseconds, set only by the hidden `--test-h2-timeouts-ms`
/// flag so the integration tests need not wait a minute for a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct H2Timeouts {
    /// Client preface and first SETTINGS after the TLS handshake.
    pub preface_ms: u64,
    /// A connection without open streams.
    pub idle_ms: u64,
    /// A request body that brings no bytes.
    pub body_idle_ms: u64,
}

/// One healthy instance a worker may send traffic to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backend {
    pub instance_id: u32,
    pub port: u16,
}

/// Everything a worker needs to route and serve one app.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppRoutes {
    pub name: String,
    /// Normalized route strings, in deploy order.
    pub routes: Vec<String>,
    /// Canonical path of the live release; static files come from its `public/`.
    pub release_path: String,
    pub stopped: bool,
    pub on_demand: bool,
    /// Healthy instances of every live build: the rotation.
    pub backends: Vec<Backend>,
    /// An instance is starting: requests with no backend are held instead of refused.
    pub starting: bool,
}

/// An immutable routing snapshot. `epoch` grows with every push so that the master knows
/// when every worker has applied a change (a ready instance becomes healthy then).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteTable {
    pub epoch: u64,
    pub apps: Vec<AppRoutes>,
}

/// A certificate for the SNI resolver. `name` is a host, `*.domain` or `default`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CertEntry {
    pub name: String,
    pub cert_chain_pem: String,
    pub key_pem: String,
}

/// Why a cold start ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WakeOutcome {
    Ready,
    Failed,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum MasterToWorker {
    Hello {
        version: u32,
        config: WorkerConfig,
    },
    /// The per-client table (ipc/src/client_table.rs), one descriptor, and the column this
    /// worker process writes to. Sent before the listeners.
    ClientTable {
        geometry: crate::client_table::Geometry,
        column: u16,
    },
    /// The listening sockets, one descriptor per entry, in this order.
    Listeners {
        kinds: Vec<ListenerKind>,
    },
    Routes(RouteTable),
    Certs(Vec<CertEntry>),
    /// The rendered bodies of `tako.internal/status` and its health bit: `body` for loopback
    /// and trusted peers, `public_body` (health and each app's name and state) for the rest.
    StatusPage {
        body: String,
        public_body: String,
        healthy: bool,
    },
    /// The rendered body of `tako.internal/metrics`.
    MetricsPage {
        body: String,
    },
    WakeResult {
        app: String,
        outcome: WakeOutcome,
    },
    /// Stop accepting, finish in-flight work within the deadline, then exit.
    Drain {
        deadline_ms: u64,
    },
    /// Drop every cached response stored for the app (its build switched, it stopped or was
    /// deleted).
    PurgeApp {
        app: String,
    },
    /// Another worker saw a successful unsafe request: drop these cached targets.
    CacheInvalidate(CacheInvalidation),
    /// The complete set of ACME HTTP-01 answers, `(token, key authorization)`: it replaces the
    /// previous set (docs/tls.md, "HTTP-01 challenge answers").
    AcmeTokens(Vec<(String, String)>),
}

/// Targets whose cached responses (every variant, both schemes) must go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheInvalidation {
    /// The request host as received, lower-cased, trailing dot removed, port kept.
    pub host: String,
    /// Request-targets in origin-form (path and query).
    pub targets: Vec<String>,
}

/// One worker's cache counters: totals since the worker started, plus its current size.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheStats {
    /// Lookups served from the cache (collapsed waits included).
    pub hits: u64,
    /// Eligible lookups that went upstream.
    pub misses: u64,
    /// Requests that skipped the cache (`no-store` request, `Upgrade`, other methods).
    pub bypasses: u64,
    /// Responses stored.
    pub stores: u64,
    /// Entries dropped to make room (LRU or the per-key variant limit).
    pub evictions: u64,
    /// Entries dropped by invalidation or purge.
    pub invalidations: u64,
    /// Bytes held now (key + headers + body of every entry).
    pub bytes: u64,
    /// Entries held now.
    pub entries: u64,
}

/// Upper bounds (seconds) of the request-duration histogram buckets (docs/operations.md,
/// "Metrics"); a last, implicit bucket is +Inf.
pub const DURATION_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// One worker's finished requests for one app (empty name: not routed), totals since the
/// worker started.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AppHttpStats {
    pub app: String,
    /// Responses by class: index 0 is 1xx … index 4 is 5xx.
    pub classes: [u64; 5],
    /// Non-cumulative counts per bucket of [`DURATION_BUCKETS`], then +Inf.
    pub buckets: [u64; 12],
    pub duration_sum_secs: f64,
}

/// One worker's upstream failures for one app, totals since the worker started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppUpstreamErrors {
    pub app: String,
    /// The connection to the instance could not be made (refused, reset or connect timeout).
    pub connect: u64,
    /// No response headers within the upstream response timeout.
    pub timeout: u64,
    /// The connection was reset or the response was invalid after the request was sent.
    pub failed: u64,
}

/// One worker's edge counters (TLS handshakes, upstream failures), totals since it started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeStats {
    pub tls_handshakes_ok: u64,
    /// Refused, broken off or timed out.
    pub tls_handshakes_failed: u64,
    pub upstream_errors: Vec<AppUpstreamErrors>,
    /// What the per-client limits refused.
    pub client_limits: ClientLimitStats,
}

/// Refusals of the per-client limits, totals since the worker started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientLimitStats {
    /// Connections closed at once: the address had its open connections.
    pub connections_refused: u64,
    /// Requests answered 429: the address had its requests in flight.
    pub requests_refused: u64,
    /// Requests answered 429: the address was over its rate.
    pub requests_rate_limited: u64,
    /// Connections or requests that found no room in the table, so went unlimited.
    pub table_full: u64,
}

/// Per-instance counters from one worker: totals since the worker started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceCounters {
    pub app: String,
    pub instance_id: u32,
    pub requests_total: u64,
    pub in_flight: u32,
}

/// In-flight requests of one worker to an instance that a route table took out of its
/// rotation, counted after the worker stopped picking it: see [`WorkerToMaster::TableApplied`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemovedInstance {
    pub app: String,
    pub instance_id: u32,
    pub in_flight: u32,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum WorkerToMaster {
    Hello {
        version: u32,
        pid: u32,
    },
    /// Listeners are being served and the first route table is applied.
    Ready,
    /// The route table of `epoch` is applied. Workers send [`WorkerToMaster::TableApplied`]
    /// instead; the master still takes this as an acknowledgement that counts nothing.
    RoutesApplied {
        epoch: u64,
    },
    /// A request for an on-demand app found no instance: start one.
    Wake {
        app: String,
    },
    Counters(Vec<InstanceCounters>),
    /// This worker's cache counters, at most once a second and only when they changed.
    CacheStats(CacheStats),
    /// Request counts and durations per app, at most once a second when they changed.
    HttpStats(Vec<AppHttpStats>),
    /// A successful unsafe request invalidated these targets here; fan them out to the other
    /// workers as [`MasterToWorker::CacheInvalidate`].
    CacheInvalidate(CacheInvalidation),
    /// TLS handshake and upstream failure counts, at most once a second when they changed.
    /// Added last so that existing variant indexes stay the same.
    EdgeStats(EdgeStats),
    /// The route table of `epoch` is applied: what [`WorkerToMaster::RoutesApplied`] says,
    /// plus the in-flight count of every instance that this table removed relative to the
    /// one before it (zeros included), read after no request can pick those instances any
    /// more. A request counts itself when it picks an instance, so a zero here is final: the
    /// master may stop an idle instance as soon as every worker said so, without waiting for
    /// a counter report. Later `Counters` frames carry the counts down to zero. Added last so
    /// that existing variant indexes stay the same.
    TableApplied {
        epoch: u64,
        removed: Vec<RemovedInstance>,
    },
}

impl WorkerToMaster {
    pub fn is_hello(&self) -> bool {
        matches!(self, WorkerToMaster::Hello { .. })
    }
}

/// Identity and paths the launcher needs for every instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LauncherConfig {
    /// `Some` when running as root: instances switch to this user.
    pub app_user: Option<RunAs>,
    /// Owner of log files (the deploy user) when running as root.
    pub log_owner: Option<RunAs>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunAs {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
}

/// The identity an app's processes run under when the server runs as root: a uid and gid
/// of the app's own (allocated by the master from `--app-uid-range`), the supplementary
/// groups (the `--app-user` group), and the app's resource limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppIds {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub limits: AppLimits,
}

/// Per-app resource limits, set as both soft and hard limit on every app process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppLimits {
    /// `RLIMIT_NPROC`: processes (threads included) of the app's uid.
    pub nproc: u64,
    /// `RLIMIT_NOFILE`: open descriptors per process.
    pub nofile: u64,
}

/// Everything needed to start one instance. The environment is complete: the launcher
/// adds nothing and inherits nothing. Its values may be app secrets: Debug names the keys.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct SpawnSpec {
    pub app: String,
    pub instance_id: u32,
    pub version: String,
    pub argv: Vec<String>,
    pub cwd: String,
    pub env: Vec<(String, String)>,
    pub port: u16,
    /// `<data-dir>/apps/<app>/shared/logs`
    pub log_dir: String,
    /// The app's own ids (root); `None` runs it as [`LauncherConfig::app_user`], if any.
    pub ids: Option<AppIds>,
}

/// An install command's run; Debug names the env keys, as for [`SpawnSpec`].
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct InstallSpec {
    pub request_id: u64,
    pub app: String,
    /// The shell command (`sh -lc`), or the argv to run directly.
    pub argv: Vec<String>,
    pub cwd: String,
    pub env: Vec<(String, String)>,
    pub log_dir: String,
    pub timeout_ms: u64,
    /// The app's own ids, as for its instances.
    pub ids: Option<AppIds>,
}

/// The keys of an environment, for Debug output that must not show the values.
struct EnvKeys<'a>(&'a [(String, String)]);

impl std::fmt::Debug for EnvKeys<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(k, _)| k))
            .finish()
    }
}

impl std::fmt::Debug for SpawnSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpawnSpec")
            .field("app", &self.app)
            .field("instance_id", &self.instance_id)
            .field("version", &self.version)
            .field("argv", &self.argv)
            .field("cwd", &self.cwd)
            .field("env_keys", &EnvKeys(&self.env))
            .field("port", &self.port)
            .field("log_dir", &self.log_dir)
            .field("ids", &self.ids)
            .finish()
    }
}

impl std::fmt::Debug for InstallSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstallSpec")
            .field("request_id", &self.request_id)
            .field("app", &self.app)
            .field("argv", &self.argv)
            .field("cwd", &self.cwd)
            .field("env_keys", &EnvKeys(&self.env))
            .field("log_dir", &self.log_dir)
            .field("timeout_ms", &self.timeout_ms)
            .field("ids", &self.ids)
            .finish()
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub enum MasterToLauncher {
    Hello {
        version: u32,
        config: LauncherConfig,
    },
    Spawn(SpawnSpec),
    /// SIGTERM the instance's process group, SIGKILL after `grace_ms`. The master has
    /// already drained it.
    Stop {
        app: String,
        instance_id: u32,
        grace_ms: u64,
    },
    /// SIGKILL the process group at once.
    Kill {
        app: String,
        instance_id: u32,
    },
    Install(InstallSpec),
    /// Stop every instance (SIGTERM, SIGKILL after `grace_ms`) and exit.
    Shutdown {
        grace_ms: u64,
    },
    /// The range app uids come from. Sent right after the hello when apps run under ids of
    /// their own: until then, and outside it, the launcher refuses every app uid.
    AppIdRange {
        first: u32,
        last: u32,
    },
    /// End every process of the app's uid now (helpers that left the instance's session
    /// included): a child takes the uid and calls `kill(-1, SIGKILL)`. Sent after the app's
    /// instances were stopped, never while another instance of the app should live.
    Sweep {
        app: String,
        uid: u32,
    },
    /// `Shutdown`, then a [`MasterToLauncher::Sweep`] of every app uid this launcher ran.
    /// Sent instead of `Shutdown` when no other server runs the same apps (no successor of
    /// a re-exec, no upgrade candidate).
    ShutdownAndSweep {
        grace_ms: u64,
    },
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum InstanceEvent {
    Spawned {
        pid: u32,
    },
    /// The spawn itself failed (exec error, bad user).
    SpawnFailed {
        error: String,
    },
    /// The startup probe got a 2xx.
    Ready,
    /// No 2xx within the startup limit; the process group was killed.
    StartupTimeout,
    /// Two consecutive probe failures.
    Unhealthy {
        reason: String,
    },
    /// A probe succeeded again after `Unhealthy`.
    Recovered,
    /// Five consecutive probe failures; the master stops and replaces it.
    Dead,
    /// The process exited. `during_startup` carries the first output for the error text.
    Exited {
        status: ExitStatus,
        during_startup: bool,
        output: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum InstallResult {
    Ok,
    Failed { status: ExitStatus, output: String },
    TimedOut,
    SpawnError { error: String },
}

#[derive(Debug, Serialize, Deserialize)]
pub enum LauncherToMaster {
    Hello {
        version: u32,
        pid: u32,
    },
    Instance {
        app: String,
        instance_id: u32,
        event: InstanceEvent,
    },
    InstallDone {
        request_id: u64,
        result: InstallResult,
    },
}

impl LauncherToMaster {
    pub fn is_hello(&self) -> bool {
        matches!(self, LauncherToMaster::Hello { .. })
    }
}

#[cfg(test)]
mod debug_tests {
    use super::*;

    #[test]
    fn debug_names_env_keys_not_values() {
        let env = vec![("TOKEN".to_string(), "hunter2".to_string())];
        let spawn = SpawnSpec {
            app: "web".into(),
            instance_id: 1,
            version: "v1".into(),
            argv: vec!["python3".into()],
            cwd: "/srv".into(),
            env: env.clone(),
            port: 3000,
            log_dir: "/logs".into(),
            ids: None,
        };
        let install = InstallSpec {
            request_id: 1,
            app: "web".into(),
            argv: vec!["true".into()],
            cwd: "/srv".into(),
            env,
            log_dir: "/logs".into(),
            timeout_ms: 1,
            ids: None,
        };
        for shown in [
            format!("{:?}", MasterToLauncher::Spawn(spawn)),
            format!("{:?}", MasterToLauncher::Install(install)),
        ] {
            assert!(
                shown.contains("TOKEN") && !shown.contains("hunter2"),
                "{shown}"
            );
        }
    }
}
