//! `tako-server ctl`: the admin client (docs/cli.md, "`tako-server ctl`"; docs/ctl.md).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use tako_protocol::{parse_response, DeployRequest, Request, Response, PROTOCOL_VERSION};

use crate::clock::unix_now;

mod logs;
mod output;

/// The server's default `--data-dir` (a unit test keeps the two equal).
pub const DEFAULT_DATA_DIR: &str = "/opt/tako";

#[derive(Debug, Args)]
#[command(
    about = "Talk to a running server over its management socket",
    long_about = "Talk to a running server over its management socket. Tables and summaries by \
default; --json prints the server's answer line as it came, for scripts. Exit codes: 0 done, \
1 the server answered with an error, 2 usage error, 3 cannot connect."
)]
pub struct CtlArgs {
    /// Management socket of the server (its --socket)
    #[arg(long, value_name = "PATH", default_value = crate::cli::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Data directory of the server (its --data-dir); `logs` reads the app logs below it
    #[arg(long = "data-dir", value_name = "PATH", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// Print the server's answer line as it came (one line of JSON) instead of a table
    #[arg(long)]
    pub json: bool,
    #[command(subcommand)]
    pub command: CtlCommand,
}

#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// One app: state, healthy instances, routes, instances and certificates
    Status {
        /// App name
        app: String,
    },
    /// Every app: version, state, healthy/total instances, routes, uptime
    List,
    /// Every app's routes
    Routes,
    /// The running server's settings, version, role and mode
    ServerInfo,
    /// Deploy a release: start its instances, health-check them, then switch traffic
    Deploy {
        /// App name (letters, digits and -)
        app: String,
        /// Release version, the name of its directory under releases/
        #[arg(long, value_name = "VERSION")]
        version: String,
        /// Release directory: <data-dir>/apps/<app>/releases/<version>, holding app.json
        #[arg(long, value_name = "DIR")]
        path: String,
        /// Route the app serves: a host (web.example.com), host/path/* or *.domain;
        /// repeatable, at least one
        #[arg(long = "route", value_name = "ROUTE", required = true)]
        routes: Vec<String>,
        #[command(flatten)]
        env: EnvSources,
        /// Instances kept running, 0-32; 0 starts one on the first request and stops it
        /// when idle
        #[arg(long, value_name = "N", default_value_t = 1)]
        instances: u8,
        /// Seconds without requests before an on-demand instance (--instances 0) stops
        #[arg(long = "idle-timeout", value_name = "SECS", default_value_t = 300)]
        idle_timeout: u32,
    },
    /// Stop an app's instances; it stays stopped across restarts until reload or deploy
    Stop {
        /// App name
        app: String,
    },
    /// Stop an app and forget it (its release files stay on disk)
    Delete {
        /// App name
        app: String,
    },
    /// Rolling restart of an app's instances (also starts a stopped app and applies secrets)
    Reload {
        /// App name
        app: String,
    },
    /// Deploy an earlier release of an app again
    Rollback {
        /// App name
        app: String,
        /// Version to go back to (see `releases`)
        version: String,
    },
    /// An app's releases, newest first, the running one marked *
    Releases {
        /// App name
        app: String,
    },
    /// Merge secrets into an app's env (values from --secrets-file or --env, never argv);
    /// `reload` applies them
    UpdateSecrets {
        /// App name
        app: String,
        #[command(flatten)]
        secrets: EnvSources,
        /// Refused: KEY=VALUE on the command line is visible in `ps` and shell history.
        /// Kept as an argument so the refusal is ours, one line, and never repeats the value.
        #[arg(hide = true, value_name = "KEY=VALUE")]
        on_command_line: Vec<String>,
    },
    /// Rolling restart of the proxy workers, without dropping a request
    RestartWorkers,
    /// The server's processes (role, pid, user, state) and the app instances
    Processes,
    /// Read <data-dir>/certs/ again
    ReloadCerts,
    /// Show an app's log (its output, from <data-dir>/apps/<app>/shared/logs/)
    Logs {
        /// App name
        app: String,
        /// Keep printing new lines as they are written, across log rotations (Ctrl-C ends)
        #[arg(short = 'f', long)]
        follow: bool,
        /// How many of the last lines to print first
        #[arg(short = 'n', long = "lines", value_name = "N", default_value_t = 10)]
        lines: usize,
    },
    /// Enter upgrade mode: deploys and other changes are refused until exit-upgrading
    EnterUpgrading {
        /// Who holds upgrade mode (any name; exit-upgrading must give the same)
        owner: String,
    },
    /// Leave upgrade mode
    ExitUpgrading {
        /// The name given to enter-upgrading
        owner: String,
    },
    /// Replace the running server in place with the binary at its path, keeping the listeners
    Upgrade,
    /// Send one raw JSON line (no hello) and print the raw response; `-` reads the line
    /// from stdin (for lines that carry secrets)
    Raw {
        /// The request line, or - to read it from stdin
        line: String,
    },
}

/// Where the env values of `deploy` and `update-secrets` come from. Never the command line:
/// argv is readable by every local user (`ps`, `/proc/<pid>/cmdline`) and lands in shell
/// history.
#[derive(Debug, Args)]
pub struct EnvSources {
    /// Read KEY=VALUE lines from a file (`-`: stdin); `#` comments and blank lines are
    /// skipped. Repeatable; later files win.
    #[arg(long = "env-file", visible_alias = "secrets-file", value_name = "PATH")]
    files: Vec<PathBuf>,
    /// Take KEY's value from ctl's own environment variable of that name. Repeatable;
    /// wins over the files. `--env KEY=VALUE` is refused.
    #[arg(long = "env", value_name = "KEY")]
    names: Vec<String>,
}

/// Why env values could not be gathered. No variant carries a value: the message may end up
/// in a terminal log or a CI transcript.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    #[error("refusing {flag} {key}=...: a value on the command line is visible to every local user (ps) and kept in shell history; put it in a file and pass --env-file PATH (or --env-file - for stdin)")]
    ValueOnCommandLine { flag: &'static str, key: String },
    #[error("refusing a KEY=VALUE argument: a value on the command line is visible to every local user (ps) and kept in shell history; put it in a file and pass --secrets-file PATH (or --secrets-file - for stdin)")]
    PositionalSecret,
    #[error("update-secrets needs --secrets-file PATH (- for stdin) or --env KEY")]
    NoSecrets,
    #[error("--env {0}: not a variable name (letters, digits and _, not starting with a digit)")]
    BadName(String),
    #[error("--env {0}: no such variable in this environment")]
    Unset(String),
    #[error("--env {0}: the variable's value is not UTF-8")]
    NotUnicode(String),
    #[error("stdin can be read once only; pass `-` to one --env-file")]
    StdinTwice,
    #[error("cannot read {name}: {source}")]
    Read {
        name: String,
        source: std::io::Error,
    },
    #[error("{name}: larger than {} bytes", MAX_ENV_FILE_BYTES)]
    TooLarge { name: String },
    #[error("{name}: not UTF-8 text")]
    NotText { name: String },
    #[error("{name}:{line}: {reason}")]
    Syntax {
        name: String,
        line: usize,
        reason: SyntaxError,
    },
}

/// What is wrong with one line of an env file. Says nothing of the line's content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SyntaxError {
    #[error("expected KEY=VALUE")]
    NoEquals,
    #[error("the name is not a variable name (letters, digits and _, not starting with a digit)")]
    BadName,
    #[error("the value contains a NUL byte")]
    Nul,
}

/// A request line is at most 1 MiB (docs/management-protocol.md, "Lines"), so a larger file
/// cannot be sent.
const MAX_ENV_FILE_BYTES: u64 = 1024 * 1024;

fn is_env_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes
        .next()
        .is_some_and(|b| b == b'_' || b.is_ascii_alphabetic())
        && bytes.all(|b| b == b'_' || b.is_ascii_alphanumeric())
}

/// Parses dotenv-style text: one `KEY=VALUE` per line, optionally after `export `; blank
/// lines and lines starting with `#` are skipped. The value is everything after the first
/// `=`, exactly, except that one pair of matching quotes around all of it is removed. No
/// escapes, no interpolation, no inline comments: a `#` inside a value is part of it.
pub fn parse_env_text(text: &str) -> Result<Vec<(String, String)>, (usize, SyntaxError)> {
    let mut out = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fail = |e| (index + 1, e);
        let line = line.strip_prefix("export ").unwrap_or(line);
        let (key, value) = line.split_once('=').ok_or(fail(SyntaxError::NoEquals))?;
        let key = key.trim();
        if !is_env_name(key) {
            return Err(fail(SyntaxError::BadName));
        }
        let value = unquote(value);
        if value.contains('\0') {
            return Err(fail(SyntaxError::Nul));
        }
        out.push((key.to_string(), value.to_string()));
    }
    Ok(out)
}

fn unquote(v: &str) -> &str {
    for q in ['"', '\''] {
        if v.len() >= 2 && v.starts_with(q) && v.ends_with(q) {
            return &v[1..v.len() - 1];
        }
    }
    v
}

fn read_env_file(path: &Path, stdin_used: &mut bool) -> Result<Vec<(String, String)>, EnvError> {
    let (name, reader): (String, Box<dyn Read>) = if path == Path::new("-") {
        if std::mem::replace(stdin_used, true) {
            return Err(EnvError::StdinTwice);
        }
        ("stdin".into(), Box::new(std::io::stdin()))
    } else {
        let name = path.display().to_string();
        match std::fs::File::open(path) {
            Ok(f) => (name, Box::new(f)),
            Err(source) => return Err(EnvError::Read { name, source }),
        }
    };
    let mut bytes = Vec::new();
    reader
        .take(MAX_ENV_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| EnvError::Read {
            name: name.clone(),
            source,
        })?;
    if bytes.len() as u64 > MAX_ENV_FILE_BYTES {
        return Err(EnvError::TooLarge { name });
    }
    let Ok(text) = String::from_utf8(bytes) else {
        return Err(EnvError::NotText { name });
    };
    parse_env_text(&text).map_err(|(line, reason)| EnvError::Syntax { name, line, reason })
}

impl EnvSources {
    /// The files in order, then the named variables: later sources win.
    fn gather(&self) -> Result<BTreeMap<String, String>, EnvError> {
        // Checked first, so a refused value is never followed by a file being read.
        for name in &self.names {
            if let Some((key, _)) = name.split_once('=') {
                return Err(EnvError::ValueOnCommandLine {
                    flag: "--env",
                    key: key.to_string(),
                });
            }
            if !is_env_name(name) {
                return Err(EnvError::BadName(name.clone()));
            }
        }
        let mut env = BTreeMap::new();
        let mut stdin_used = false;
        for path in &self.files {
            env.extend(read_env_file(path, &mut stdin_used)?);
        }
        for name in &self.names {
            let value = match std::env::var(name) {
                Ok(v) => v,
                Err(std::env::VarError::NotPresent) => return Err(EnvError::Unset(name.clone())),
                Err(std::env::VarError::NotUnicode(_)) => {
                    return Err(EnvError::NotUnicode(name.clone()))
                }
            };
            env.insert(name.clone(), value);
        }
        Ok(env)
    }

    fn is_empty(&self) -> bool {
        self.files.is_empty() && self.names.is_empty()
    }
}

/// The request of `cmd`, with env values read from their files and variables. `None` for
/// `raw`, which is sent as given.
fn request(cmd: &CtlCommand) -> Result<Option<Request>, EnvError> {
    Ok(Some(match cmd {
        CtlCommand::Deploy {
            app,
            version,
            path,
            routes,
            env,
            instances,
            idle_timeout,
        } => Request::Deploy(DeployRequest {
            app: app.clone(),
            version: version.clone(),
            path: path.clone(),
            routes: routes.clone(),
            env: env.gather()?,
            instances: *instances,
            idle_timeout: *idle_timeout,
        }),
        CtlCommand::UpdateSecrets {
            app,
            secrets,
            on_command_line,
        } => {
            if !on_command_line.is_empty() {
                return Err(EnvError::PositionalSecret);
            }
            if secrets.is_empty() {
                return Err(EnvError::NoSecrets);
            }
            Request::UpdateSecrets {
                app: app.clone(),
                secrets: secrets.gather()?,
            }
        }
        CtlCommand::Status { app: a } => Request::Status { app: a.clone() },
        CtlCommand::List => Request::List,
        CtlCommand::Routes => Request::Routes,
        CtlCommand::ServerInfo => Request::ServerInfo,
        CtlCommand::Stop { app: a } => Request::Stop { app: a.clone() },
        CtlCommand::Delete { app: a } => Request::Delete { app: a.clone() },
        CtlCommand::Reload { app: a } => Request::Reload { app: a.clone() },
        CtlCommand::Rollback { app: a, version } => Request::Rollback {
            app: a.clone(),
            version: version.clone(),
        },
        CtlCommand::Releases { app: a } => Request::ListReleases { app: a.clone() },
        CtlCommand::RestartWorkers => Request::RestartWorkers,
        CtlCommand::Processes => Request::Processes,
        CtlCommand::ReloadCerts => Request::ReloadCerts,
        CtlCommand::EnterUpgrading { owner } => Request::EnterUpgrading {
            owner: owner.clone(),
        },
        CtlCommand::ExitUpgrading { owner } => Request::ExitUpgrading {
            owner: owner.clone(),
        },
        CtlCommand::Upgrade => Request::Upgrade,
        CtlCommand::Raw { .. } | CtlCommand::Logs { .. } => return Ok(None),
    }))
}

/// One request as its line.
fn line_of(req: &Request) -> String {
    // A request holds strings, numbers and string maps only: it always serializes.
    serde_json::to_string(req).unwrap_or_default()
}

/// The `raw -` line: the first line of stdin.
fn read_raw_line() -> Result<String, EnvError> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .take(MAX_ENV_FILE_BYTES + 1)
        .read_line(&mut line)
        .map_err(|source| EnvError::Read {
            name: "stdin".into(),
            source,
        })?;
    Ok(line)
}

/// Why ctl could not talk to the server: one line that says what to try.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("Cannot connect to {path}: no server is listening there ({source}); start tako-server, or pass the socket it uses with --socket")]
    NotRunning {
        path: String,
        source: std::io::Error,
    },
    #[error("Cannot connect to {path}: permission denied; run as root or as a member of the deploy user's group (tako), or pass another socket with --socket")]
    Denied { path: String },
    #[error("Cannot connect to {path}: {source}; check that tako-server runs and that --socket names its socket")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("Cannot connect to {path}: {reason}; is that a tako-server management socket?")]
    Protocol { path: String, reason: String },
}

impl ConnectError {
    fn io(path: &str, source: std::io::Error) -> ConnectError {
        use std::io::ErrorKind as K;
        let path = path.to_string();
        match source.kind() {
            K::NotFound | K::ConnectionRefused => ConnectError::NotRunning { path, source },
            K::PermissionDenied => ConnectError::Denied { path },
            _ => ConnectError::Io { path, source },
        }
    }
}

struct Conn {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    shown: String,
}

impl Conn {
    fn open(socket: &Path) -> Result<Conn, ConnectError> {
        let shown = socket.display().to_string();
        let stream = UnixStream::connect(socket).map_err(|e| ConnectError::io(&shown, e))?;
        let writer = stream
            .try_clone()
            .map_err(|e| ConnectError::io(&shown, e))?;
        Ok(Conn {
            reader: BufReader::new(stream),
            writer,
            shown,
        })
    }

    fn exchange(&mut self, line: &str) -> Result<String, ConnectError> {
        let io = |e| ConnectError::io(&self.shown, e);
        self.writer
            .write_all(format!("{}\n", line.trim_end_matches('\n')).as_bytes())
            .map_err(io)?;
        let mut resp = String::new();
        match self.reader.read_line(&mut resp) {
            Ok(0) => Err(ConnectError::Protocol {
                path: self.shown.clone(),
                reason: "the server closed the connection without an answer".into(),
            }),
            Ok(_) => Ok(resp.trim_end().to_string()),
            Err(e) => Err(ConnectError::io(&self.shown, e)),
        }
    }

    /// Sends a request and parses the answer.
    fn ask(&mut self, req: &Request) -> Result<(String, Response), ConnectError> {
        let line = self.exchange(&line_of(req))?;
        let resp = parse_response(&line).map_err(|e| ConnectError::Protocol {
            path: self.shown.clone(),
            reason: format!("invalid answer line: {e}"),
        })?;
        Ok((line, resp))
    }

    /// The `data` of a follow-up request, or `None` when it failed: the table shows `-`.
    fn data_of(&mut self, req: &Request) -> Option<serde_json::Value> {
        match self.ask(req) {
            Ok((_, Response::Ok { data })) => Some(data),
            _ => None,
        }
    }
}

/// The text people see for a successful answer to `cmd`. Some tables take more from the
/// server on the same connection (each app's status and routes for `list`).
fn render(cmd: &CtlCommand, data: &serde_json::Value, conn: &mut Conn) -> String {
    match cmd {
        CtlCommand::List => {
            let routes = conn.data_of(&Request::Routes).unwrap_or_default();
            let conn = std::cell::RefCell::new(conn);
            let status_of = |app: &str| {
                conn.borrow_mut()
                    .data_of(&Request::Status { app: app.into() })
            };
            output::apps(data, &status_of, &routes)
        }
        CtlCommand::Status { app } => {
            let routes = conn.data_of(&Request::Routes).and_then(|r| {
                r["routes"]
                    .as_array()
                    .and_then(|l| l.iter().find(|x| x["app"] == app.as_str()))
                    .map(|x| x["routes"].clone())
            });
            output::app_status(data, routes.as_ref())
        }
        CtlCommand::Routes => output::routes(data),
        CtlCommand::Releases { .. } => output::releases(data, unix_now()),
        CtlCommand::Processes => output::processes(data),
        CtlCommand::ServerInfo => output::key_values(data),
        _ => output::summary(data),
    }
}

pub fn run(args: CtlArgs) -> i32 {
    if let CtlCommand::Logs { app, follow, lines } = &args.command {
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        return match logs::run(&args.data_dir, app, *lines, *follow, &mut out) {
            Ok(()) => 0,
            // A reader that went away (`| head`) is not an error.
            Err(logs::LogsError::Read { path, source })
                if path == Path::new("stdout")
                    && source.kind() == std::io::ErrorKind::BrokenPipe =>
            {
                0
            }
            Err(e @ logs::LogsError::BadName(..)) => {
                eprintln!("{e}");
                2
            }
            Err(e) => {
                eprintln!("{e}");
                1
            }
        };
    }
    // Local input first: a refused or unreadable secret must not cost a connection, and a
    // `raw -` line is read before anything is sent.
    let line = match &args.command {
        CtlCommand::Raw { line } if line == "-" => match read_raw_line() {
            Ok(l) => l,
            Err(e) => {
                eprintln!("{e}");
                return 2;
            }
        },
        CtlCommand::Raw { line } => line.clone(),
        cmd => match request(cmd) {
            Ok(Some(req)) => line_of(&req),
            Ok(None) => String::new(),
            Err(e) => {
                eprintln!("{e}");
                return 2;
            }
        },
    };
    match talk(&args, &line) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{e}");
            3
        }
    }
}

/// Connects, says hello (except for `raw`), sends the line and prints the answer. Returns
/// the exit code of an answer; a connection problem is the error.
fn talk(args: &CtlArgs, line: &str) -> Result<i32, ConnectError> {
    let mut conn = Conn::open(&args.socket)?;
    if let CtlCommand::Raw { .. } = &args.command {
        let resp = conn.exchange(line)?;
        println!("{resp}");
        let ok = matches!(parse_response(&resp), Ok(Response::Ok { .. }));
        return Ok(if ok { 0 } else { 1 });
    }
    let hello = Request::Hello {
        protocol_version: PROTOCOL_VERSION,
    };
    if let (_, Response::Error { message }) = conn.ask(&hello)? {
        eprintln!("{message}");
        return Ok(1);
    }
    let resp = conn.exchange(line)?;
    let parsed = parse_response(&resp).map_err(|e| ConnectError::Protocol {
        path: conn.shown.clone(),
        reason: format!("invalid answer line: {e}"),
    })?;
    match parsed {
        Response::Ok { data } => {
            if args.json {
                println!("{resp}");
            } else {
                print!("{}", render(&args.command, &data, &mut conn));
            }
            Ok(0)
        }
        Response::Error { message } => {
            if args.json {
                println!("{resp}");
            }
            eprintln!("{message}");
            Ok(1)
        }
    }
}
