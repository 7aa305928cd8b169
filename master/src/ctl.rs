//! `tako-server ctl`: the admin client (cli.md §9).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use tako_protocol::{parse_response, DeployRequest, Request, Response, PROTOCOL_VERSION};

#[derive(Debug, Args)]
pub struct CtlArgs {
    /// Management socket path
    #[arg(long, value_name = "PATH", default_value = crate::cli::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Print the raw response line instead of pretty data
    #[arg(long)]
    pub json: bool,
    #[command(subcommand)]
    pub command: CtlCommand,
}

#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// Status of one app
    Status { app: String },
    /// Every app
    List,
    /// Every app's routes
    Routes,
    /// Effective server settings
    ServerInfo,
    /// Deploy a release
    Deploy {
        app: String,
        #[arg(long)]
        version: String,
        #[arg(long)]
        path: String,
        #[arg(long = "route", required = true)]
        routes: Vec<String>,
        #[command(flatten)]
        env: EnvSources,
        #[arg(long, default_value_t = 1)]
        instances: u8,
        #[arg(long = "idle-timeout", default_value_t = 300)]
        idle_timeout: u32,
    },
    /// Stop an app (durable)
    Stop { app: String },
    /// Delete an app
    Delete { app: String },
    /// Rolling restart of an app
    Reload { app: String },
    /// Roll back to a release
    Rollback { app: String, version: String },
    /// An app's releases
    Releases { app: String },
    /// Merge secrets into an app's env (values from --secrets-file or --env, never argv)
    UpdateSecrets {
        app: String,
        #[command(flatten)]
        secrets: EnvSources,
        /// Refused: KEY=VALUE on the command line is visible in `ps` and shell history.
        /// Kept as an argument so the refusal is ours, one line, and never repeats the value.
        #[arg(hide = true, value_name = "KEY=VALUE")]
        on_command_line: Vec<String>,
    },
    /// Rolling restart of the proxy workers
    RestartWorkers,
    /// The server's processes
    Processes,
    /// Re-scan the certificate directory
    ReloadCerts,
    /// Enter upgrade mode
    EnterUpgrading { owner: String },
    /// Leave upgrade mode
    ExitUpgrading { owner: String },
    /// Replace the running server in place with the binary at its path, keeping the listeners
    Upgrade,
    /// Send one raw JSON line (no hello) and print the raw response; `-` reads the line
    /// from stdin (for lines that carry secrets)
    Raw { line: String },
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

/// A request line is at most 1 MiB (management-protocol.md), so a larger file cannot be sent.
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
        CtlCommand::Raw { .. } => return Ok(None),
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

struct Conn {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Conn {
    fn exchange(&mut self, line: &str) -> Result<String, String> {
        self.writer
            .write_all(format!("{}\n", line.trim_end_matches('\n')).as_bytes())
            .map_err(|e| e.to_string())?;
        let mut resp = String::new();
        match self.reader.read_line(&mut resp) {
            Ok(0) => Err("no response line".into()),
            Ok(_) => Ok(resp.trim_end().to_string()),
            Err(e) => Err(e.to_string()),
        }
    }
}

pub fn run(args: CtlArgs) -> i32 {
    let shown = args.socket.display().to_string();
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
    let stream = match UnixStream::connect(&args.socket) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("Cannot connect to {shown}: {e}");
            return 3;
        }
    };
    let Ok(writer) = stream.try_clone() else {
        eprintln!("Cannot connect to {shown}: cannot clone the socket");
        return 3;
    };
    let mut conn = Conn {
        reader: BufReader::new(stream),
        writer,
    };
    if let CtlCommand::Raw { .. } = &args.command {
        return match conn.exchange(&line) {
            Ok(resp) => {
                println!("{resp}");
                let ok = matches!(parse_response(&resp), Ok(Response::Ok { .. }));
                if ok {
                    0
                } else {
                    1
                }
            }
            Err(e) => {
                eprintln!("Cannot connect to {shown}: {e}");
                3
            }
        };
    }
    let hello = line_of(&Request::Hello {
        protocol_version: PROTOCOL_VERSION,
    });
    match conn.exchange(&hello).map(|r| parse_response(&r)) {
        Ok(Ok(Response::Ok { .. })) => {}
        Ok(Ok(Response::Error { message })) => {
            eprintln!("{message}");
            return 1;
        }
        Ok(Err(e)) => {
            eprintln!("Cannot connect to {shown}: invalid response line: {e}");
            return 3;
        }
        Err(e) => {
            eprintln!("Cannot connect to {shown}: {e}");
            return 3;
        }
    }
    let resp = match conn.exchange(&line) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("Cannot connect to {shown}: {e}");
            return 3;
        }
    };
    match parse_response(&resp) {
        Ok(Response::Ok { data }) => {
            if args.json {
                println!("{resp}");
            } else {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&data).unwrap_or_default()
                );
            }
            0
        }
        Ok(Response::Error { message }) => {
            if args.json {
                println!("{resp}");
            }
            eprintln!("{message}");
            1
        }
        Err(e) => {
            eprintln!("Cannot connect to {shown}: invalid response line: {e}");
            3
        }
    }
}
