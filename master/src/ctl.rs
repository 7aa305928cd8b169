//! `tako-server ctl`: the admin client (cli.md §9).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

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

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected KEY=VALUE, got '{s}'"))
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
        #[arg(long = "env", value_parser = parse_kv)]
        env: Vec<(String, String)>,
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
    /// Merge secrets into an app's env
    UpdateSecrets {
        app: String,
        #[arg(value_parser = parse_kv, required = true)]
        secrets: Vec<(String, String)>,
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
    /// Send one raw JSON line (no hello) and print the raw response
    Raw { line: String },
}

fn request(cmd: &CtlCommand) -> Value {
    match cmd {
        CtlCommand::Status { app } => json!({"command": "status", "app": app}),
        CtlCommand::List => json!({"command": "list"}),
        CtlCommand::Routes => json!({"command": "routes"}),
        CtlCommand::ServerInfo => json!({"command": "server_info"}),
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
            "env": env.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
            "instances": instances, "idle_timeout": idle_timeout}),
        CtlCommand::Stop { app } => json!({"command": "stop", "app": app}),
        CtlCommand::Delete { app } => json!({"command": "delete", "app": app}),
        CtlCommand::Reload { app } => json!({"command": "reload", "app": app}),
        CtlCommand::Rollback { app, version } => {
            json!({"command": "rollback", "app": app, "version": version})
        }
        CtlCommand::Releases { app } => json!({"command": "list_releases", "app": app}),
        CtlCommand::UpdateSecrets { app, secrets } => {
            json!({"command": "update_secrets", "app": app,
            "secrets": secrets.iter().cloned().collect::<std::collections::BTreeMap<_, _>>()})
        }
        CtlCommand::RestartWorkers => json!({"command": "restart_workers"}),
        CtlCommand::Processes => json!({"command": "processes"}),
        CtlCommand::ReloadCerts => json!({"command": "reload_certs"}),
        CtlCommand::EnterUpgrading { owner } => {
            json!({"command": "enter_upgrading", "owner": owner})
        }
        CtlCommand::ExitUpgrading { owner } => json!({"command": "exit_upgrading", "owner": owner}),
        CtlCommand::Upgrade => json!({"command": "upgrade"}),
        CtlCommand::Raw { .. } => Value::Null,
    }
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
    if let CtlCommand::Raw { line } = &args.command {
        return match conn.exchange(line) {
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
    let resp = match conn.exchange(&request(&args.command).to_string()) {
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
