//! `tako-server ctl`: the admin client (cli.md §9).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use serde_json::{json, Value};

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

/// The request line of `cmd`, with env values read from their files and variables.
fn request(cmd: &CtlCommand) -> Result<Value, EnvError> {
    Ok(match cmd {
        CtlCommand::Deploy {
            app,
            version,
            path,
            routes,
            env,
            instances,
            idle_timeout,
        } => json!({
            "command": "deploy", "app": app, "version": version, "path": path, "routes": routes,
            "env": env.gather()?, "instances": instances, "idle_timeout": idle_timeout}),
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
            json!({"command": "update_secrets", "app": app, "secrets": secrets.gather()?})
        }
        other => plain_request(other),
    })
}

/// The request line of a command that carries no env values.
fn plain_request(cmd: &CtlCommand) -> Value {
    match cmd {
        CtlCommand::Status { app } => json!({"command": "status", "app": app}),
        CtlCommand::List => json!({"command": "list"}),
        CtlCommand::Routes => json!({"command": "routes"}),
        CtlCommand::ServerInfo => json!({"command": "server_info"}),
        CtlCommand::Stop { app } => json!({"command": "stop", "app": app}),
        CtlCommand::Delete { app } => json!({"command": "delete", "app": app}),
        CtlCommand::Reload { app } => json!({"command": "reload", "app": app}),
        CtlCommand::Rollback { app, version } => {
            json!({"command": "rollback", "app": app, "version": version})
        }
        CtlCommand::Releases { app } => json!({"command": "list_releases", "app": app}),
        CtlCommand::RestartWorkers => json!({"command": "restart_workers"}),
        CtlCommand::Processes => json!({"command": "processes"}),
        CtlCommand::ReloadCerts => json!({"command": "reload_certs"}),
        CtlCommand::EnterUpgrading { owner } => {
            json!({"command": "enter_upgrading", "owner": owner})
        }
        CtlCommand::ExitUpgrading { owner } => json!({"command": "exit_upgrading", "owner": owner}),
        CtlCommand::Upgrade => json!({"command": "upgrade"}),
        // Built by `request`, or sent as given.
        CtlCommand::Deploy { .. } | CtlCommand::UpdateSecrets { .. } | CtlCommand::Raw { .. } => {
            Value::Null
        }
    }
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
            Ok(v) => v.to_string(),
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
                let ok = serde_json::from_str::<Value>(&resp)
                    .ok()
                    .is_some_and(|v| v["status"] == "ok");
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
    let hello = json!({"command": "hello", "protocol_version": 3}).to_string();
    match conn
        .exchange(&hello)
        .map(|r| serde_json::from_str::<Value>(&r))
    {
        Ok(Ok(v)) if v["status"] == "ok" => {}
        Ok(Ok(v)) => {
            eprintln!("{}", v["message"].as_str().unwrap_or("hello failed"));
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
    let v: Value = match serde_json::from_str(&resp) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("Cannot connect to {shown}: invalid response line: {e}");
            return 3;
        }
    };
    if v["status"] == "ok" {
        if args.json {
            println!("{resp}");
        } else {
            println!(
                "{}",
                serde_json::to_string_pretty(&v["data"]).unwrap_or_default()
            );
        }
        0
    } else {
        if args.json {
            println!("{resp}");
        }
        eprintln!("{}", v["message"].as_str().unwrap_or("error"));
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn env_text_skips_comments_and_blank_lines() {
        let text = "# secrets\n\n  # indented comment\nA=1\r\nexport B=two words \n   \nC=\n";
        assert_eq!(
            parse_env_text(text),
            Ok(pairs(&[("A", "1"), ("B", "two words "), ("C", "")]))
        );
        assert_eq!(parse_env_text(""), Ok(Vec::new()));
    }

    #[test]
    fn env_values_are_taken_verbatim_after_the_first_equals() {
        let text = "URL=postgres://u:p@h/db?x=1#frag\nQ=\"quoted value\"\nS='single'\nHALF=\"open\nONE=\"\n";
        assert_eq!(
            parse_env_text(text),
            Ok(pairs(&[
                ("URL", "postgres://u:p@h/db?x=1#frag"),
                ("Q", "quoted value"),
                ("S", "single"),
                ("HALF", "\"open"),
                ("ONE", "\""),
            ]))
        );
    }

    #[test]
    fn env_text_errors_name_the_line_only() {
        assert_eq!(
            parse_env_text("A=1\nno equals here\n"),
            Err((2, SyntaxError::NoEquals))
        );
        assert_eq!(parse_env_text("1A=x"), Err((1, SyntaxError::BadName)));
        assert_eq!(parse_env_text("MY KEY=x"), Err((1, SyntaxError::BadName)));
        assert_eq!(parse_env_text("=x"), Err((1, SyntaxError::BadName)));
        assert_eq!(parse_env_text("A=x\0y"), Err((1, SyntaxError::Nul)));
        let err = EnvError::Syntax {
            name: "prod.env".into(),
            line: 2,
            reason: SyntaxError::NoEquals,
        };
        assert_eq!(err.to_string(), "prod.env:2: expected KEY=VALUE");
    }

    #[test]
    fn a_value_on_the_command_line_is_refused_without_echoing_it() {
        let sources = EnvSources {
            files: Vec::new(),
            names: vec!["OK_NAME".into(), "DB_PASSWORD=hunter2".into()],
        };
        let err = sources.gather().expect_err("refused");
        let text = err.to_string();
        assert!(matches!(err, EnvError::ValueOnCommandLine { .. }), "{text}");
        assert!(
            text.contains("--env-file") && text.contains("DB_PASSWORD"),
            "{text}"
        );
        assert!(!text.contains("hunter2") && !text.contains('\n'), "{text}");
    }

    #[test]
    fn names_come_from_the_environment_and_win_over_files() {
        let dir = std::env::temp_dir().join(format!("tako-ctl-env-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("a.env");
        std::fs::write(&file, "PATH=from-file\nONLY_FILE=x\n").expect("write");
        let sources = EnvSources {
            files: vec![file],
            names: vec!["PATH".into()],
        };
        let env = sources.gather().expect("gathered");
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(env.get("ONLY_FILE").map(String::as_str), Some("x"));
        assert_eq!(env.get("PATH"), std::env::var("PATH").ok().as_ref());
        let unset = EnvSources {
            files: Vec::new(),
            names: vec!["TAKO_CTL_TEST_SURELY_UNSET_VARIABLE".into()],
        };
        assert!(matches!(unset.gather(), Err(EnvError::Unset(_))));
        // A second `-` is refused before reading anything.
        assert!(matches!(
            read_env_file(Path::new("-"), &mut true),
            Err(EnvError::StdinTwice)
        ));
    }
}
