//! The server's flags and settings (docs/cli.md, "Flags", "Config file"): the flags, the
//! optional config file, and the [`Settings`] they resolve to. A leaf: every other module
//! reads the settings, this one reads none of them. The subcommands (`ctl`, the sandbox
//! self-test) hang off the command line in `main.rs`.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use clap::Args;
use serde::Deserialize;
use tako_ipc::cidr::Cidr;

pub const DEFAULT_SOCKET: &str = "/var/run/tako/tako.sock";
pub const LETS_ENCRYPT_PRODUCTION: &str = "https://acme-v02.api.letsencrypt.org/directory";
pub const LETS_ENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";

fn parse_workers(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=256).contains(&n) => Ok(n),
        _ => Err("must be a whole number from 1 to 256".into()),
    }
}

fn parse_h2_timeouts(s: &str) -> Result<tako_ipc::H2Timeouts, String> {
    let ms: Vec<u64> = s
        .split(',')
        .map(|p| {
            p.trim()
                .parse::<u64>()
                .ok()
                .filter(|n| (1..=3_600_000).contains(n))
        })
        .collect::<Option<_>>()
        .ok_or("must be three millisecond counts from 1 to 3600000, comma-separated")?;
    match ms[..] {
        [preface_ms, idle_ms, body_idle_ms] => Ok(tako_ipc::H2Timeouts {
            preface_ms,
            idle_ms,
            body_idle_ms,
        }),
        _ => Err("must be three millisecond counts: PREFACE,IDLE,BODY".into()),
    }
}

/// The default `--app-uid-range`: systemd's range for dynamic users, which no package or
/// `useradd` hands out.
pub const DEFAULT_APP_UID_RANGE: (u32, u32) = (61184, 65519);
/// Default per-app limits (docs/isolation.md): processes of the app's uid, open files per
/// process.
pub const DEFAULT_APP_MAX_PROCESSES: u64 = 4096;
pub const DEFAULT_APP_MAX_OPEN_FILES: u64 = 65536;

fn parse_uid_range(s: &str) -> Result<(u32, u32), String> {
    let err = || "must be FIRST-LAST, two uids from 1 to 4294967294 with FIRST <= LAST".to_string();
    let (a, b) = s.split_once('-').ok_or_else(err)?;
    let first: u32 = a.trim().parse().map_err(|_| err())?;
    let last: u32 = b.trim().parse().map_err(|_| err())?;
    // 0 is root; u32::MAX is (uid_t)-1, "no change" to the kernel.
    if first == 0 || last == u32::MAX || first > last {
        return Err(err());
    }
    Ok((first, last))
}

/// The `--sandbox` word of a mode, as the flag takes it.
pub fn sandbox_name(mode: tako_ipc::SandboxMode) -> &'static str {
    match mode {
        tako_ipc::SandboxMode::Strict => "strict",
        tako_ipc::SandboxMode::BestEffort => "best-effort",
        tako_ipc::SandboxMode::Off => "off",
    }
}

pub fn parse_sandbox(s: &str) -> Result<tako_ipc::SandboxMode, String> {
    match s {
        "strict" => Ok(tako_ipc::SandboxMode::Strict),
        "best-effort" => Ok(tako_ipc::SandboxMode::BestEffort),
        "off" => Ok(tako_ipc::SandboxMode::Off),
        _ => Err("must be strict, best-effort or off".into()),
    }
}

fn parse_port(s: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err("must be a port number from 1 to 65535".into()),
    }
}

/// A `--proxy-protocol` value (docs/http.md, "PROXY protocol").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyListener {
    /// Every listener.
    All,
    /// The listener bound to this address and port.
    Addr(SocketAddr),
}

fn parse_proxy_listener(s: &str) -> Result<ProxyListener, String> {
    if s == "all" {
        return Ok(ProxyListener::All);
    }
    s.parse::<SocketAddr>()
        .map(ProxyListener::Addr)
        .map_err(|_| "must be a listener's IP:PORT ([IPv6]:PORT) or `all`".into())
}

/// The listener addresses that expect a PROXY header: every entry must name a listener
/// (an `--listen` address with the HTTP or the HTTPS port), so a typo fails at startup instead
/// of leaving a listener that takes the balancer's address for every client's.
fn proxy_listeners(
    specs: &[ProxyListener],
    listen: &[IpAddr],
    ports: [u16; 2],
) -> Result<Vec<SocketAddr>, ConfigError> {
    let all: Vec<SocketAddr> = listen
        .iter()
        .flat_map(|ip| ports.map(|port| SocketAddr::new(*ip, port)))
        .collect();
    if specs.contains(&ProxyListener::All) {
        return Ok(all);
    }
    let mut out = Vec::new();
    for spec in specs {
        let ProxyListener::Addr(addr) = spec else {
            continue;
        };
        if !all.contains(addr) {
            return Err(ConfigError::Usage(format!(
                "--proxy-protocol {addr} names no listener (they are {})",
                all.iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        if !out.contains(addr) {
            out.push(*addr);
        }
    }
    Ok(out)
}

#[derive(Debug, Args, Clone)]
pub struct ServerFlags {
    /// Management socket path
    #[arg(long, value_name = "PATH", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Plain HTTP port [default: 80]
    #[arg(long, value_name = "N", value_parser = parse_port)]
    pub port: Option<u16>,
    /// HTTPS port [default: 443]
    #[arg(long = "tls-port", value_name = "N", value_parser = parse_port)]
    pub tls_port: Option<u16>,
    /// IP address to bind, repeatable; each gets an HTTP and an HTTPS listener [default: 0.0.0.0 and ::]
    #[arg(long, value_name = "ADDR")]
    pub listen: Vec<IpAddr>,
    /// Data root
    #[arg(long = "data-dir", value_name = "PATH", default_value = "/opt/tako")]
    pub data_dir: PathBuf,
    /// Config file [default: <data-dir>/server-config.toml if it exists]
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Proxy worker processes, 1-256 [default: number of usable CPUs]
    #[arg(long, value_name = "N", value_parser = parse_workers)]
    pub workers: Option<usize>,
    /// User of the proxy workers (root only) [default: tako-proxy]
    #[arg(long = "proxy-user", value_name = "USER")]
    pub proxy_user: Option<String>,
    /// Group every app process also carries, the primary group of this user; apps run under uids of their own (root only) [default: tako-app]
    #[arg(long = "app-user", value_name = "USER")]
    pub app_user: Option<String>,
    /// Uids (and gids) given to apps, one each, skipping any that exist in passwd or group (root only) [default: 61184-65519]
    #[arg(long = "app-uid-range", value_name = "FIRST-LAST", value_parser = parse_uid_range)]
    pub app_uid_range: Option<(u32, u32)>,
    /// User the Tako CLI logs in as; its primary group owns the socket (root only) [default: tako]
    #[arg(long = "deploy-user", value_name = "USER")]
    pub deploy_user: Option<String>,
    /// Peer whose forwarded headers are believed, repeatable; replaces the default list [default: 127.0.0.0/8, ::1/128]
    #[arg(long = "trusted-proxy", value_name = "CIDR")]
    pub trusted_proxy: Vec<Cidr>,
    /// Listener (IP:PORT, or `all`) whose connections start with a PROXY protocol v1 or v2 header from a trusted proxy, repeatable; replaces the config file's list [default: none]
    #[arg(long = "proxy-protocol", value_name = "ADDR:PORT|all", value_parser = parse_proxy_listener)]
    pub proxy_protocol: Vec<ProxyListener>,
    /// No ACME account, issuance, renewal or challenge answers
    #[arg(long = "no-acme")]
    pub no_acme: bool,
    /// Use the Let's Encrypt staging directory
    #[arg(long = "acme-staging")]
    pub acme_staging: bool,
    /// Contact for a new ACME account ("mailto:" is added) [default: none]
    #[arg(long = "acme-email", value_name = "EMAIL")]
    pub acme_email: Option<String>,
    /// ACME directory URL; overrides --acme-staging [default: Let's Encrypt production]
    #[arg(long = "acme-directory", value_name = "URL")]
    pub acme_directory: Option<String>,
    /// Extra trusted root for the HTTPS connection to the ACME directory [default: none]
    #[arg(long = "acme-ca-root", value_name = "PEM")]
    pub acme_ca_root: Option<PathBuf>,
    /// Certificate renewal check period in hours, 1-8760
    #[arg(long = "renewal-interval-hours", value_name = "N", default_value_t = 12,
          value_parser = clap::value_parser!(u32).range(1..=8760))]
    pub renewal_interval_hours: u32,
    /// Added to every app instance port, 0-45552
    #[arg(long = "instance-port-offset", value_name = "N", default_value_t = 0,
          value_parser = clap::value_parser!(u16).range(0..=45552))]
    pub instance_port_offset: u16,
    /// Response cache budget in bytes for the whole server, split evenly over the workers; 0 turns the cache off [default: 268435456]
    #[arg(long = "cache-size", value_name = "BYTES")]
    pub cache_size: Option<u64>,
    /// Send every response as the app made it: no brotli or gzip on the fly and no precompressed static files [default: compression on]
    #[arg(long = "no-compression")]
    pub no_compression: bool,
    /// Proxy worker sandbox (Landlock, seccomp, rlimits): strict refuses to start on a kernel
    /// without it, best-effort (the default) warns once and goes on, off applies none
    #[arg(long, value_name = "MODE", value_parser = parse_sandbox)]
    pub sandbox: Option<tako_ipc::SandboxMode>,
    /// Open connections per client address over all workers, 0-1000000, 0 = no cap; a trusted proxy's own connections are not capped [default: 256]
    #[arg(long = "client-max-connections", value_name = "N",
          value_parser = clap::value_parser!(u32).range(0..=MAX_CLIENT_LIMIT as i64))]
    pub client_max_connections: Option<u32>,
    /// Requests in flight per client address over all workers (HTTP/2 streams included), 0-1000000, 0 = no cap [default: 512]
    #[arg(long = "client-max-requests", value_name = "N",
          value_parser = clap::value_parser!(u32).range(0..=MAX_CLIENT_LIMIT as i64))]
    pub client_max_requests: Option<u32>,
    /// Requests per second per client address, on average, 0-1000000; 0 = no rate limit [default: 0]
    #[arg(long = "client-rate", value_name = "N",
          value_parser = clap::value_parser!(u32).range(0..=MAX_CLIENT_LIMIT as i64))]
    pub client_rate: Option<u32>,
    /// Requests a client address may send at once above --client-rate, 1-1000000 [default: 100]
    #[arg(long = "client-rate-burst", value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=MAX_CLIENT_LIMIT as i64))]
    pub client_rate_burst: Option<u32>,
    /// Test only: the HTTP/2 preface, idle and body-idle timers in milliseconds
    /// (`PREFACE,IDLE,BODY`; BODY also bounds how long a response may wait on a shut
    /// flow-control window), so the integration tests need not wait a minute for a limit.
    #[arg(long = "test-h2-timeouts-ms", value_name = "MS,MS,MS", hide = true,
          value_parser = parse_h2_timeouts)]
    pub test_h2_timeouts_ms: Option<tako_ipc::H2Timeouts>,
}

/// Which server flags were given on the command line.
#[derive(Debug, Default, Clone, Copy)]
pub struct ExplicitFlags {
    pub listen: bool,
    pub workers: bool,
    pub proxy_user: bool,
    pub app_user: bool,
    pub deploy_user: bool,
    pub trusted_proxy: bool,
    pub acme_directory: bool,
    pub acme_ca_root: bool,
    pub app_uid_range: bool,
    pub sandbox: bool,
    pub proxy_protocol: bool,
    /// Any of the `--client-*` flags.
    pub client_limits: bool,
    pub cache_size: bool,
}

/// The server's response-cache budget: 256 MiB (docs/http.md, "Response cache").
pub const DEFAULT_CACHE_BYTES: u64 = 256 * 1024 * 1024;

/// Per-client limit defaults (docs/limits.md, "Per-client limits").
pub const DEFAULT_CLIENT_LIMITS: tako_ipc::ClientLimits = tako_ipc::ClientLimits::DEFAULT;
/// The largest value any per-client limit takes (the table counts up to 2^24 per field).
pub const MAX_CLIENT_LIMIT: u32 = 1_000_000;

/// The optional TOML config file (docs/cli.md, "Config file"). Unknown keys are errors.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    server: ServerSection,
    #[serde(default)]
    acme: AcmeSection,
    #[serde(default)]
    apps: AppsSection,
}

/// `[apps]`: limits every app process gets (root only).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AppsSection {
    /// `RLIMIT_NPROC`: processes and threads of the app's uid.
    max_processes: Option<u64>,
    /// `RLIMIT_NOFILE`: open files per process.
    max_open_files: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerSection {
    http_port: Option<u16>,
    https_port: Option<u16>,
    /// Listeners that expect a PROXY protocol header, as `--proxy-protocol` takes them.
    proxy_protocol: Option<Vec<String>>,
    /// `false` turns response compression off, like `--no-compression`.
    compression: Option<bool>,
    /// Per-client limits, as the `--client-*` flags take them.
    client_max_connections: Option<u32>,
    client_max_requests: Option<u32>,
    client_rate: Option<u32>,
    client_rate_burst: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AcmeSection {
    staging: Option<bool>,
    email: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("Invalid config file {path}: {detail}")]
    Invalid { path: String, detail: String },
    #[error("{0}")]
    Usage(String),
}

/// Effective settings after defaults, the config file and flags.
#[derive(Debug, Clone)]
pub struct Settings {
    pub socket: PathBuf,
    pub http_port: u16,
    pub https_port: u16,
    pub listen: Vec<IpAddr>,
    pub listen_given: bool,
    pub data_dir: PathBuf,
    pub workers: usize,
    pub proxy_user: String,
    pub app_user: String,
    /// `--app-uid-range`: the uids (and gids) apps get, inclusive.
    pub app_uid_range: (u32, u32),
    /// `[apps]` limits of every app process.
    pub app_limits: tako_ipc::AppLimits,
    pub deploy_user: String,
    /// User flags given explicitly, for the non-root warning.
    pub explicit_user_flags: Vec<&'static str>,
    pub trusted_proxies: Vec<Cidr>,
    /// Listeners whose connections start with a PROXY protocol header (docs/http.md,
    /// "PROXY protocol").
    pub proxy_protocol: Vec<SocketAddr>,
    pub no_acme: bool,
    pub acme_staging: bool,
    pub acme_email: Option<String>,
    pub acme_directory: String,
    pub acme_ca_root: Option<PathBuf>,
    pub renewal_interval_hours: u32,
    pub instance_port_offset: u16,
    /// Response cache budget for the whole server; 0 = off.
    pub cache_bytes: u64,
    /// Response compression (docs/http.md, "Compression"): on unless `--no-compression` or
    /// `[server] compression = false`.
    pub compression: bool,
    /// The flag or the config file said whether to compress (an upgrade candidate that was
    /// not told takes the primary's choice).
    pub compression_given: bool,
    /// HTTP/2 timers from the hidden test flag; `None` = the documented limits.
    pub h2_timeouts: Option<tako_ipc::H2Timeouts>,
    /// `--sandbox`: how the proxy workers confine themselves.
    pub sandbox: tako_ipc::SandboxMode,
    /// Per client address (docs/limits.md, "Per-client limits").
    pub client_limits: tako_ipc::ClientLimits,
}

impl Settings {
    /// What each proxy worker's sandbox lets through: `<data-dir>/apps` to read, and the
    /// instance ports (docs/apps.md, "Ports", moved by `--instance-port-offset`) to connect to.
    pub fn worker_sandbox(&self) -> tako_ipc::SandboxConfig {
        use crate::ports::{BLOCK, BLOCKS, FIRST_BASE};
        let first = FIRST_BASE.saturating_add(self.instance_port_offset);
        let last = (FIRST_BASE + BLOCK * BLOCKS - 1).saturating_add(self.instance_port_offset);
        tako_ipc::SandboxConfig {
            mode: self.sandbox,
            apps_dir: self.data_dir.join("apps").display().to_string(),
            instance_ports: (first, last),
        }
    }
}

fn usable_cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .max(1)
}

impl ServerFlags {
    /// Which flags a candidate must not take from the primary's settings.
    pub fn explicit(&self) -> ExplicitFlags {
        ExplicitFlags {
            listen: !self.listen.is_empty(),
            workers: self.workers.is_some(),
            proxy_user: self.proxy_user.is_some(),
            app_user: self.app_user.is_some(),
            deploy_user: self.deploy_user.is_some(),
            trusted_proxy: !self.trusted_proxy.is_empty(),
            acme_directory: self.acme_directory.is_some(),
            acme_ca_root: self.acme_ca_root.is_some(),
            app_uid_range: self.app_uid_range.is_some(),
            sandbox: self.sandbox.is_some(),
            proxy_protocol: !self.proxy_protocol.is_empty(),
            client_limits: self.client_max_connections.is_some()
                || self.client_max_requests.is_some()
                || self.client_rate.is_some()
                || self.client_rate_burst.is_some(),
            cache_size: self.cache_size.is_some(),
        }
    }

    pub fn resolve(self) -> Result<Settings, ConfigError> {
        let file = self.load_config_file()?;
        let http_port = self.port.or(file.server.http_port).unwrap_or(80);
        let https_port = self.tls_port.or(file.server.https_port).unwrap_or(443);
        for (name, port) in [("http_port", http_port), ("https_port", https_port)] {
            if port == 0 {
                return Err(ConfigError::Usage(format!("{name} must be 1-65535")));
            }
        }
        let sandbox = self.sandbox.unwrap_or_default();
        if sandbox == tako_ipc::SandboxMode::Strict {
            let missing = tako_proxy_worker::sandbox::kernel_missing();
            if !missing.is_empty() {
                return Err(ConfigError::Usage(format!(
                    "--sandbox strict: this kernel lacks {}; the proxy workers cannot be \
                     confined (use --sandbox best-effort to run without it)",
                    missing.join(" and ")
                )));
            }
        }
        if http_port == https_port {
            return Err(ConfigError::Usage(format!(
                "--port and --tls-port must differ (both are {http_port})"
            )));
        }
        let acme_staging = self.acme_staging || file.acme.staging.unwrap_or(false);
        let acme_email = self.acme_email.clone().or(file.acme.email);
        let acme_directory = match &self.acme_directory {
            Some(url) => {
                if acme_staging {
                    tracing::warn!("--acme-directory overrides --acme-staging");
                }
                url.clone()
            }
            None if acme_staging => LETS_ENCRYPT_STAGING.to_string(),
            None => LETS_ENCRYPT_PRODUCTION.to_string(),
        };
        let mut explicit = Vec::new();
        if self.proxy_user.is_some() {
            explicit.push("--proxy-user");
        }
        if self.app_user.is_some() {
            explicit.push("--app-user");
        }
        if self.deploy_user.is_some() {
            explicit.push("--deploy-user");
        }
        let app_limits = tako_ipc::AppLimits {
            nproc: file.apps.max_processes.unwrap_or(DEFAULT_APP_MAX_PROCESSES),
            nofile: file
                .apps
                .max_open_files
                .unwrap_or(DEFAULT_APP_MAX_OPEN_FILES),
        };
        // A limit of 0 would stop the app from starting at all.
        if app_limits.nproc == 0 || app_limits.nofile < 16 {
            return Err(ConfigError::Usage(
                "[apps] max_processes must be at least 1 and max_open_files at least 16".into(),
            ));
        }
        let listen_given = !self.listen.is_empty();
        let listen = if listen_given {
            self.listen.clone()
        } else {
            vec![
                "0.0.0.0".parse().expect("literal"),
                "::".parse().expect("literal"),
            ]
        };
        let trusted_proxies = if self.trusted_proxy.is_empty() {
            vec![
                "127.0.0.0/8".parse().expect("literal"),
                "::1/128".parse().expect("literal"),
            ]
        } else {
            self.trusted_proxy.clone()
        };
        let proxy_specs = if self.proxy_protocol.is_empty() {
            let mut specs = Vec::new();
            for raw in file.server.proxy_protocol.iter().flatten() {
                specs.push(parse_proxy_listener(raw).map_err(|e| {
                    ConfigError::Usage(format!("[server] proxy_protocol {raw:?}: {e}"))
                })?);
            }
            specs
        } else {
            self.proxy_protocol.clone()
        };
        let proxy_protocol = proxy_listeners(&proxy_specs, &listen, [http_port, https_port])?;
        let client_limits = client_limits(&self, &file.server)?;
        Ok(Settings {
            socket: self.socket,
            http_port,
            https_port,
            listen,
            listen_given,
            data_dir: self.data_dir,
            workers: self.workers.unwrap_or_else(usable_cpus),
            proxy_user: self.proxy_user.unwrap_or_else(|| "tako-proxy".into()),
            app_user: self.app_user.unwrap_or_else(|| "tako-app".into()),
            app_uid_range: self.app_uid_range.unwrap_or(DEFAULT_APP_UID_RANGE),
            app_limits,
            deploy_user: self.deploy_user.unwrap_or_else(|| "tako".into()),
            explicit_user_flags: explicit,
            trusted_proxies,
            proxy_protocol,
            no_acme: self.no_acme,
            acme_staging,
            acme_email,
            acme_directory,
            acme_ca_root: self.acme_ca_root,
            renewal_interval_hours: self.renewal_interval_hours,
            instance_port_offset: self.instance_port_offset,
            cache_bytes: self.cache_size.unwrap_or(DEFAULT_CACHE_BYTES),
            compression: !self.no_compression && file.server.compression.unwrap_or(true),
            compression_given: self.no_compression || file.server.compression.is_some(),
            h2_timeouts: self.test_h2_timeouts_ms,
            sandbox,
            client_limits,
        })
    }

    fn load_config_file(&self) -> Result<ConfigFile, ConfigError> {
        let (path, required) = match &self.config {
            Some(p) => (p.clone(), true),
            None => (self.data_dir.join("server-config.toml"), false),
        };
        read_config(&path, required)
    }
}

/// The per-client limits: each flag, else the config file's entry, else the default.
fn client_limits(
    flags: &ServerFlags,
    file: &ServerSection,
) -> Result<tako_ipc::ClientLimits, ConfigError> {
    let d = DEFAULT_CLIENT_LIMITS;
    let pick = |flag: Option<u32>, entry: Option<u32>, key: &str, min: u32, default: u32| match flag
        .or(entry)
    {
        Some(n) if n < min || n > MAX_CLIENT_LIMIT => Err(ConfigError::Usage(format!(
            "[server] {key} must be {min}-{MAX_CLIENT_LIMIT} (it is {n})"
        ))),
        Some(n) => Ok(n),
        None => Ok(default),
    };
    Ok(tako_ipc::ClientLimits {
        max_connections: pick(
            flags.client_max_connections,
            file.client_max_connections,
            "client_max_connections",
            0,
            d.max_connections,
        )?,
        max_requests: pick(
            flags.client_max_requests,
            file.client_max_requests,
            "client_max_requests",
            0,
            d.max_requests,
        )?,
        rate: pick(
            flags.client_rate,
            file.client_rate,
            "client_rate",
            0,
            d.rate,
        )?,
        burst: pick(
            flags.client_rate_burst,
            file.client_rate_burst,
            "client_rate_burst",
            1,
            d.burst,
        )?,
    })
}

fn read_config(path: &Path, required: bool) -> Result<ConfigFile, ConfigError> {
    let invalid = |detail: String| ConfigError::Invalid {
        path: path.display().to_string(),
        detail,
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
            return Ok(ConfigFile::default())
        }
        Err(e) => return Err(invalid(e.to_string())),
    };
    toml::from_str(&text).map_err(|e| invalid(e.to_string().trim().replace('\n', " ")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// The server's flags alone, as the command line parses them.
    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        server: ServerFlags,
    }

    fn flags(args: &[&str]) -> ServerFlags {
        let mut v = vec!["tako-server"];
        v.extend_from_slice(args);
        Cli::try_parse_from(v).unwrap().server
    }

    #[test]
    fn defaults() {
        let dir = std::env::temp_dir().join("tako-cli-test-none");
        let s = flags(&["--data-dir", dir.to_str().unwrap()])
            .resolve()
            .unwrap();
        assert_eq!((s.http_port, s.https_port), (80, 443));
        assert_eq!(s.listen.len(), 2);
        assert_eq!(s.trusted_proxies.len(), 2);
        assert_eq!(s.acme_directory, LETS_ENCRYPT_PRODUCTION);
    }

    #[test]
    fn equal_ports_are_a_usage_error() {
        let r = flags(&[
            "--port",
            "8080",
            "--tls-port",
            "8080",
            "--data-dir",
            "/nonexistent-tako",
        ])
        .resolve();
        assert!(matches!(r, Err(ConfigError::Usage(_))));
    }

    #[test]
    fn app_uid_range() {
        let dir = std::env::temp_dir().join("tako-cli-test-none");
        let d = dir.to_str().unwrap();
        let s = flags(&["--data-dir", d]).resolve().unwrap();
        assert_eq!(s.app_uid_range, DEFAULT_APP_UID_RANGE);
        assert_eq!((s.app_limits.nproc, s.app_limits.nofile), (4096, 65536));
        let s = flags(&["--data-dir", d, "--app-uid-range", "70000-70009"])
            .resolve()
            .unwrap();
        assert_eq!(s.app_uid_range, (70000, 70009));
        for bad in ["0-10", "10-5", "x-3", "5", "1-4294967295"] {
            assert!(
                Cli::try_parse_from(["tako-server", "--app-uid-range", bad]).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn proxy_protocol_names_listeners() {
        let s = flags(&[
            "--listen",
            "127.0.0.1",
            "--port",
            "8080",
            "--tls-port",
            "8443",
        ])
        .resolve()
        .unwrap();
        assert!(s.proxy_protocol.is_empty(), "off by default");
        let s = flags(&[
            "--listen",
            "127.0.0.1",
            "--listen",
            "::1",
            "--port",
            "8080",
            "--proxy-protocol",
            "[::1]:8080",
            "--proxy-protocol",
            "[::1]:8080",
        ])
        .resolve()
        .unwrap();
        assert_eq!(s.proxy_protocol, vec!["[::1]:8080".parse().unwrap()]);
        let s = flags(&["--listen", "127.0.0.1", "--proxy-protocol", "all"])
            .resolve()
            .unwrap();
        assert_eq!(s.proxy_protocol.len(), 2, "{:?}", s.proxy_protocol);
        let e = flags(&["--listen", "127.0.0.1", "--proxy-protocol", "127.0.0.1:81"])
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(e.contains("names no listener"), "{e}");
        assert!(Cli::try_parse_from(["tako-server", "--proxy-protocol", "127.0.0.1"]).is_err());

        let dir = std::env::temp_dir().join(format!("tako-cli-pp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = dir.join("c.toml");
        std::fs::write(&cfg, "[server]\nproxy_protocol = [\"127.0.0.1:443\"]\n").unwrap();
        let config = cfg.to_str().unwrap();
        let s = flags(&["--config", config, "--listen", "127.0.0.1"])
            .resolve()
            .unwrap();
        assert_eq!(s.proxy_protocol, vec!["127.0.0.1:443".parse().unwrap()]);
        let s = flags(&[
            "--config",
            config,
            "--listen",
            "127.0.0.1",
            "--proxy-protocol",
            "127.0.0.1:80",
        ])
        .resolve()
        .unwrap();
        assert_eq!(
            s.proxy_protocol,
            vec!["127.0.0.1:80".parse().unwrap()],
            "the flag replaces the key"
        );
        std::fs::write(&cfg, "[server]\nproxy_protocol = [\"x\"]\n").unwrap();
        assert!(flags(&["--config", config]).resolve().is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn compression_is_on_unless_the_flag_or_the_config_says_off() {
        assert!(flags(&[]).resolve().unwrap().compression);
        assert!(!flags(&["--no-compression"]).resolve().unwrap().compression);
        let dir = std::env::temp_dir().join(format!("tako-cli-gz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = dir.join("c.toml");
        let config = cfg.to_str().unwrap();
        std::fs::write(&cfg, "[server]\ncompression = false\n").unwrap();
        assert!(!flags(&["--config", config]).resolve().unwrap().compression);
        std::fs::write(&cfg, "[server]\ncompression = true\n").unwrap();
        assert!(flags(&["--config", config]).resolve().unwrap().compression);
        let off = flags(&["--config", config, "--no-compression"]);
        assert!(!off.resolve().unwrap().compression, "the flag wins");
        std::fs::write(&cfg, "[server]\ncompression = \"off\"\n").unwrap();
        assert!(flags(&["--config", config]).resolve().is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn client_limits_come_from_flags_then_the_file_then_defaults() {
        let dir = std::env::temp_dir().join(format!("tako-cli-cl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = dir.join("c.toml");
        let config = cfg.to_str().unwrap();
        std::fs::write(&cfg, "").unwrap();
        let s = flags(&["--config", config]).resolve().unwrap();
        assert_eq!(s.client_limits, DEFAULT_CLIENT_LIMITS);
        std::fs::write(
            &cfg,
            "[server]\nclient_max_connections = 10\nclient_rate = 5\n",
        )
        .unwrap();
        let s = flags(&["--config", config, "--client-max-connections", "0"])
            .resolve()
            .unwrap();
        assert_eq!(s.client_limits.max_connections, 0, "the flag wins, 0 = off");
        assert_eq!(s.client_limits.rate, 5, "from the file");
        assert_eq!(s.client_limits.burst, 100, "the default");
        std::fs::write(&cfg, "[server]\nclient_rate_burst = 0\n").unwrap();
        let e = flags(&["--config", config])
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(e.contains("client_rate_burst must be 1-1000000"), "{e}");
        assert!(Cli::try_parse_from(["tako-server", "--client-rate", "1000001"]).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bad_cidr_names_the_flag() {
        let e = Cli::try_parse_from(["tako-server", "--trusted-proxy", "nope"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("invalid value 'nope' for '--trusted-proxy <CIDR>'"),
            "{e}"
        );
    }

    #[test]
    fn config_file_rules() {
        let dir = std::env::temp_dir().join(format!("tako-cli-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = dir.join("c.toml");
        std::fs::write(&cfg, "[server]\nhttp_port = 8081\n[acme]\nstaging = true\n").unwrap();
        let s = flags(&["--config", cfg.to_str().unwrap(), "--tls-port", "8443"])
            .resolve()
            .unwrap();
        assert_eq!((s.http_port, s.https_port), (8081, 8443));
        assert_eq!(s.acme_directory, LETS_ENCRYPT_STAGING);
        let s = flags(&["--config", cfg.to_str().unwrap(), "--port", "9000"])
            .resolve()
            .unwrap();
        assert_eq!(s.http_port, 9000, "flags win over the file");
        std::fs::write(&cfg, "[apps]\nmax_processes = 100\nmax_open_files = 1024\n").unwrap();
        let s = flags(&["--config", cfg.to_str().unwrap()])
            .resolve()
            .unwrap();
        assert_eq!((s.app_limits.nproc, s.app_limits.nofile), (100, 1024));
        std::fs::write(&cfg, "[apps]\nmax_processes = 0\n").unwrap();
        assert!(flags(&["--config", cfg.to_str().unwrap()])
            .resolve()
            .is_err());
        std::fs::write(&cfg, "[server]\nbogus = 1\n").unwrap();
        let e = flags(&["--config", cfg.to_str().unwrap()])
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!("Invalid config file {}: ", cfg.display())),
            "{e}"
        );
        let e = flags(&["--config", dir.join("missing.toml").to_str().unwrap()])
            .resolve()
            .unwrap_err();
        assert!(matches!(e, ConfigError::Invalid { .. }));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
