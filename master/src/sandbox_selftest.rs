//! `tako-server sandbox-selftest` (hidden): applies the proxy worker's sandbox to this
//! process with [`tako_proxy_worker::sandbox::apply`], the function a worker calls, then tries
//! what a compromised worker would try and prints one JSON line with each outcome. The tests
//! in `master/tests/it/worker_sandbox.rs` assert on it; an operator can run it to see what the
//! kernel enforces. Nothing is dropped first: run as root, every refusal is the sandbox's.

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};

use clap::Args;
use serde_json::{json, Map, Value};
use tako_ipc::{SandboxConfig, SandboxMode};
use tako_proxy_worker::sandbox::{self, LandlockLevel};

#[derive(Debug, Args)]
pub struct SelftestArgs {
    /// Data root whose `apps/` the sandbox leaves readable
    #[arg(long = "data-dir", value_name = "PATH")]
    pub data_dir: PathBuf,
    /// Instance port range the sandbox lets the process connect to
    #[arg(long = "port-range", value_name = "FIRST-LAST", value_parser = parse_range)]
    pub port_range: (u16, u16),
    /// A file beneath `<data-dir>/apps` to read, as a worker reads a static file
    #[arg(long, value_name = "PATH")]
    pub read: Option<PathBuf>,
    /// Try a TCP connect to 127.0.0.1:PORT, repeatable
    #[arg(long, value_name = "PORT")]
    pub connect: Vec<u16>,
    /// After the report, execve /bin/true (the sandbox kills the process)
    #[arg(long)]
    pub exec: bool,
}

fn parse_range(s: &str) -> Result<(u16, u16), String> {
    let (a, b) = s
        .split_once('-')
        .ok_or("must be FIRST-LAST, e.g. 10000-19983")?;
    let first: u16 = a
        .trim()
        .parse()
        .map_err(|_| "FIRST must be a port number")?;
    let last: u16 = b.trim().parse().map_err(|_| "LAST must be a port number")?;
    if first == 0 || first > last {
        return Err("must be FIRST-LAST with 1 <= FIRST <= LAST".into());
    }
    Ok((first, last))
}

fn outcome<T>(r: std::io::Result<T>) -> Value {
    match r {
        Ok(_) => json!({"ok": true}),
        Err(e) => json!({"ok": false, "error": e.to_string()}),
    }
}

fn read_file(p: &Path) -> std::io::Result<usize> {
    let mut s = Vec::new();
    fs::File::open(p)?.read_to_end(&mut s)
}

fn create(p: &Path) -> std::io::Result<()> {
    fs::File::create_new(p)?.write_all(b"x")
}

pub fn run(args: SelftestArgs) -> i32 {
    let apps = args.data_dir.join("apps");
    let config = SandboxConfig {
        mode: SandboxMode::BestEffort,
        apps_dir: apps.display().to_string(),
        instance_ports: args.port_range,
    };
    let applied = match sandbox::apply(&config) {
        Ok(Some(a)) => a,
        Ok(None) => {
            // Only `SandboxMode::Off` applies nothing.
            eprintln!("tako-server sandbox-selftest: the sandbox was not applied");
            return 1;
        }
        Err(e) => {
            eprintln!("tako-server sandbox-selftest: {e}");
            return 1;
        }
    };
    let mut probes = Map::new();
    let mut probe = |name: &str, v: Value| {
        probes.insert(name.to_string(), v);
    };
    probe(
        "read_etc_passwd",
        outcome(read_file(Path::new("/etc/passwd"))),
    );
    probe(
        "read_proc_self_environ",
        outcome(read_file(Path::new("/proc/self/environ"))),
    );
    if let Some(p) = &args.read {
        probe("read_static_file", outcome(read_file(p)));
    }
    probe(
        "write_data_dir",
        outcome(create(&args.data_dir.join("sandbox-probe"))),
    );
    probe(
        "write_apps_dir",
        outcome(create(&apps.join("sandbox-probe"))),
    );
    probe(
        "write_tmp",
        outcome(create(Path::new(&format!(
            "/tmp/tako-sandbox-probe-{}",
            std::process::id()
        )))),
    );
    for port in &args.connect {
        // A blocking connect, as the worker's is non-blocking with epoll: no poll(2), which
        // the worker never calls and the filter refuses.
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, *port));
        probe(
            &format!("connect_{port}"),
            outcome(TcpStream::connect(addr)),
        );
    }
    probe(
        "bind_tcp",
        outcome(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))),
    );
    probe(
        "udp_socket",
        outcome(UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))),
    );
    probe(
        "spawn_thread",
        outcome(
            std::thread::Builder::new()
                .name("probe".into())
                .spawn(|| 7)
                .and_then(|h| {
                    h.join()
                        .map_err(|_| std::io::Error::other("the thread panicked"))
                }),
        ),
    );
    let report = json!({
        "sandbox": {
            "landlock": match applied.landlock {
                LandlockLevel::Full => "full",
                LandlockLevel::Partial => "partial",
                LandlockLevel::None => "none",
            },
            "seccomp": applied.seccomp,
            "nofile": applied.nofile,
        },
        "probes": probes,
    });
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{report}");
    let _ = out.flush();
    if args.exec {
        // Only reached when execve returned, i.e. the sandbox did not kill the process.
        let err = nix::unistd::execv(c"/bin/true", &[c"/bin/true"]).err();
        let _ = writeln!(
            out,
            "{}",
            json!({"exec": {"ok": err.is_none(), "error": err.map(|e| e.to_string())}})
        );
    }
    0
}
