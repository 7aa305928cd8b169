//! tako-server: the master binary. The same binary runs the proxy workers and the app
//! launcher when re-executed with the hidden role argument.

mod acme;
mod apps;
mod backoff;
mod beneath;
mod boot;
mod certs;
mod child_env;
mod cli;
mod clock;
mod ctl;
mod datadir;
mod gen_docs;
mod handover;
mod launcher_link;
mod lifecycle;
mod listeners;
mod logging;
mod master;
mod mgmt;
mod ports;
mod reexec;
mod role;
mod sandbox_selftest;
mod server_role;
mod spawned_pid;
mod state;
mod status;
mod supervisor;
mod sync;
mod upgrade;
mod users;
mod workers;

use clap::{Parser, Subcommand};

/// The command line (docs/cli.md): the server's flags ([`cli::ServerFlags`]) or a
/// subcommand.
#[derive(Debug, Parser)]
#[command(
    name = "tako-server",
    version,
    about = "Tako Server - Application runtime and proxy",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(flatten)]
    pub server: cli::ServerFlags,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Talk to a running server over its management socket
    Ctl(crate::ctl::CtlArgs),
    /// Apply the proxy worker's sandbox to this process, try what it must refuse and print
    /// the outcomes as JSON (tests and diagnosis)
    #[command(name = "sandbox-selftest", hide = true)]
    SandboxSelftest(crate::sandbox_selftest::SelftestArgs),
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(role::ROLE_ARG) {
        std::process::exit(role::run_child(&args[2..]));
    }
    if args.get(1).map(String::as_str) == Some(gen_docs::ARG) {
        std::process::exit(gen_docs::run(&args[2..]));
    }
    let cli = Cli::parse();
    let code = match cli.command {
        Some(Command::Ctl(a)) => ctl::run(a),
        Some(Command::SandboxSelftest(a)) => sandbox_selftest::run(a),
        None => boot::run(cli.server),
    };
    std::process::exit(code);
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::ctl::DEFAULT_DATA_DIR;
    use clap::CommandFactory;

    #[test]
    fn data_dir_default_is_the_servers() {
        let cmd = Cli::command();
        let server = cmd
            .get_arguments()
            .find(|a| a.get_id() == "data_dir")
            .expect("the server's --data-dir");
        let defaults: Vec<String> = server
            .get_default_values()
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        assert_eq!(defaults, [DEFAULT_DATA_DIR]);
    }

    #[test]
    fn every_ctl_option_and_subcommand_has_help() {
        let cli = Cli::command();
        let ctl = cli.find_subcommand("ctl").expect("ctl");
        let mut missing = Vec::new();
        for a in ctl.get_arguments() {
            if a.get_help().is_none() && !a.is_hide_set() {
                missing.push(format!("ctl --{}", a.get_id()));
            }
        }
        for sub in ctl.get_subcommands() {
            if sub.get_about().is_none() {
                missing.push(format!("ctl {}", sub.get_name()));
            }
            for a in sub.get_arguments() {
                if a.get_help().is_none() && !a.is_hide_set() && a.get_id() != "help" {
                    missing.push(format!("ctl {} {}", sub.get_name(), a.get_id()));
                }
            }
        }
        assert!(missing.is_empty(), "without help text: {missing:?}");
    }
}
