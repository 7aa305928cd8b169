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
mod core;
mod ctl;
mod datadir;
mod gen_docs;
mod listeners;
mod logging;
mod mgmt;
mod reexec;
mod role;
mod sandbox_selftest;
mod server_role;
mod state;
mod status;
mod supervisor;
mod upgrade;
mod users;

use clap::Parser;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(role::ROLE_ARG) {
        std::process::exit(role::run_child(&args[2..]));
    }
    if args.get(1).map(String::as_str) == Some(gen_docs::ARG) {
        std::process::exit(gen_docs::run(&args[2..]));
    }
    let cli = cli::Cli::parse();
    let code = match cli.command {
        Some(cli::Command::Ctl(a)) => ctl::run(a),
        Some(cli::Command::SandboxSelftest(a)) => sandbox_selftest::run(a),
        None => boot::run(cli.server),
    };
    std::process::exit(code);
}
