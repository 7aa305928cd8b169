//! Plays the master against a launcher running on a thread of this process, with small
//! python3 apps (tests/app.py) as instances.
//!
//! The tests take a lock: a launcher reaps every child of the process (`waitpid(-1)`), so
//! two launchers at once would steal each other's exit statuses.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tako_app_launcher::{run_with_limits, Limits};
use tako_ipc::frame::encode_frame;
use tako_ipc::{
    ExitStatus, InstallResult, InstanceEvent, LauncherConfig, MasterToLauncher, IPC_VERSION,
};

#[test]
fn instances_installs_and_shutdown() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let world = World::new("main");
    let mut m = start(test_limits());
    let fail_file = world.dir.join("sick-fails");
    let fail_file_s = fail_file.display().to_string();

    // Everything slow starts at once; the checks below pick their events.
    let basic = world.spec("basic", 1, "ok", &[]);
    let specs = vec![
        basic.clone(),
        world.spec("crash", 1, "crash", &[]),
        world.spec("silent", 1, "silent", &[]),
        world.spec("sick", 1, "ok", &[("FAIL_FILE", &fail_file_s)]),
        world.spec("spam", 1, "spam", &[]),
        world.spec("stubborn", 1, "stubborn", &[]),
        world.spec("killme", 1, "ok", &[]),
        world.spec("tree", 1, "child", &[]),
        world.spec("last", 2, "ok", &[]),
    ];
    let ports: HashMap<String, u16> = specs.iter().map(|s| (s.app.clone(), s.port)).collect();
    let spawn_times = Instant::now();
    for spec in &specs {
        m.send(MasterToLauncher::Spawn(spec.clone()));
    }
    m.send(MasterToLauncher::Install(world.install(
        1,
        "echo hello; echo note >&2",
        10_000,
    )));
    m.send(MasterToLauncher::Install(world.install(
        2,
        "echo some output; echo '  bad thing happened  ' >&2; exit 4",
        10_000,
    )));
    m.send(MasterToLauncher::Install(world.install(
        3,
        "sleep 100",
        300,
    )));
    let mut no_program = world.install(4, "", 1000);
    no_program.argv = vec!["/nonexistent/tako-install".into()];
    m.send(MasterToLauncher::Install(no_program));
    let mut missing = world.spec("missing", 1, "ok", &[]);
    missing.argv = vec!["no-such-program-for-tako".into()];
    m.send(MasterToLauncher::Spawn(missing));

    let mut pids: HashMap<String, i32> = HashMap::new();
    for spec in &specs {
        let pid = spawned_pid(m.event(&spec.app, spec.instance_id, Duration::from_secs(5)));
        pids.insert(spec.app.clone(), pid);
    }

    // A program not found in PATH.
    match m.event("missing", 1, Duration::from_secs(5)) {
        InstanceEvent::SpawnFailed { error } => {
            assert!(error.contains("No such file or directory"), "{error}")
        }
        other => panic!("expected SpawnFailed, got {other:?}"),
    }

    // Spawned → Ready, with exactly the environment that was sent.
    assert_ready(&mut m, "basic", 1);
    let environ = std::fs::read(format!("/proc/{}/environ", pids["basic"])).unwrap();
    let mut got: Vec<String> = environ
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    got.sort();
    let mut sent: Vec<String> = basic.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    sent.sort();
    assert_eq!(got, sent);
    // The app echoed its env to stdout: one app.log line in the documented format.
    let basic_log = world.log_dir("basic");
    wait_until("the env line in app.log", Duration::from_secs(5), || {
        read_logs(&basic_log).contains(" v1/1 out env {")
    });
    let logs = read_logs(&basic_log);
    let line = logs.lines().find(|l| l.contains(" out env {")).unwrap();
    let (stamp, rest) = line.split_once(' ').unwrap();
    assert_eq!(stamp.len(), "2024-01-01T00:00:00.000Z".len(), "{line}");
    assert!(
        stamp.ends_with('Z') && stamp.as_bytes()[19] == b'.',
        "{line}"
    );
    assert!(rest.starts_with("v1/1 out env {"), "{line}");
    assert!(
        rest.contains(&format!("\"PORT\": \"{}\"", basic.port)),
        "{line}"
    );

    // kill -9 of the instance → Exited{Signal(9)} at once, not through probes.
    kill(Pid::from_raw(pids["basic"]), Signal::SIGKILL).unwrap();
    let killed_at = Instant::now();
    assert_eq!(
        m.event("basic", 1, Duration::from_secs(2)),
        InstanceEvent::Exited {
            status: ExitStatus::Signal(9),
            during_startup: false,
            output: String::new()
        }
    );
    assert!(killed_at.elapsed() < Duration::from_millis(900));

    // Exit during startup carries the startup output.
    assert_eq!(
        m.event("crash", 1, Duration::from_secs(5)),
        InstanceEvent::Exited {
            status: ExitStatus::Code(3),
            during_startup: true,
            output: "boom".into()
        }
    );

    // Installs: ok, failed, timed out, not startable.
    assert_eq!(
        m.install_done(1, Duration::from_secs(10)),
        InstallResult::Ok
    );
    let install_log =
        std::fs::read_to_string(world.log_dir("install1").join("install.log")).unwrap();
    assert!(
        install_log.contains("hello\n") && install_log.contains("note\n"),
        "{install_log}"
    );
    assert_eq!(
        m.install_done(2, Duration::from_secs(10)),
        InstallResult::Failed {
            status: ExitStatus::Code(4),
            output: "bad thing happened".into()
        }
    );
    assert_eq!(
        m.install_done(3, Duration::from_secs(10)),
        InstallResult::TimedOut
    );
    match m.install_done(4, Duration::from_secs(5)) {
        InstallResult::SpawnError { error } => {
            assert!(error.contains("No such file or directory"), "{error}")
        }
        other => panic!("expected SpawnError, got {other:?}"),
    }

    // A process that never listens → StartupTimeout after the startup limit; it is gone.
    assert_eq!(
        m.event("silent", 1, Duration::from_secs(10)),
        InstanceEvent::StartupTimeout
    );
    let elapsed = spawn_times.elapsed();
    assert!(elapsed >= Duration::from_secs(3), "{elapsed:?}");
    assert!(!alive(pids["silent"]));

    // A status endpoint that fails → Unhealthy; back → Recovered; failing on → Dead.
    assert_ready(&mut m, "sick", 1);
    std::fs::write(&fail_file, "").unwrap();
    match m.event("sick", 1, Duration::from_secs(6)) {
        InstanceEvent::Unhealthy { reason } => assert!(reason.contains("500"), "{reason}"),
        other => panic!("expected Unhealthy, got {other:?}"),
    }
    std::fs::remove_file(&fail_file).unwrap();
    assert_eq!(
        m.event("sick", 1, Duration::from_secs(4)),
        InstanceEvent::Recovered
    );
    std::fs::write(&fail_file, "").unwrap();
    assert!(matches!(
        m.event("sick", 1, Duration::from_secs(6)),
        InstanceEvent::Unhealthy { .. }
    ));
    assert_eq!(
        m.event("sick", 1, Duration::from_secs(6)),
        InstanceEvent::Dead
    );
    // Stop → SIGTERM → Exited.
    m.send(MasterToLauncher::Stop {
        app: "sick".into(),
        instance_id: 1,
        grace_ms: 5000,
    });
    assert_eq!(
        m.event("sick", 1, Duration::from_secs(3)),
        InstanceEvent::Exited {
            status: ExitStatus::Signal(15),
            during_startup: false,
            output: String::new()
        }
    );

    // 10 MB of output: the app keeps answering and app.log (rotated once) holds every line.
    assert_ready(&mut m, "spam", 1);
    let spam_log = world.log_dir("spam");
    wait_until("spam-done in app.log", Duration::from_secs(60), || {
        read_logs(&spam_log).contains(" out spam-done\n")
    });
    assert!(
        status_ok(ports["spam"]),
        "the spamming app must still answer"
    );
    let all = read_logs(&spam_log);
    let spam_lines = all
        .lines()
        .filter(|l| l.contains(" v1/1 out spam "))
        .count();
    assert_eq!(spam_lines, 100_000);
    assert!(
        spam_log.join("app.log.1").exists(),
        "app.log passed 10 MiB and was rotated"
    );
    assert!(std::fs::metadata(spam_log.join("app.log.1")).unwrap().len() > 10 * 1024 * 1024);

    // An app ignoring SIGTERM is killed after the grace.
    assert_ready(&mut m, "stubborn", 1);
    let stop_at = Instant::now();
    m.send(MasterToLauncher::Stop {
        app: "stubborn".into(),
        instance_id: 1,
        grace_ms: 500,
    });
    assert_eq!(
        m.event("stubborn", 1, Duration::from_secs(3)),
        InstanceEvent::Exited {
            status: ExitStatus::Signal(9),
            during_startup: false,
            output: String::new()
        }
    );
    assert!(stop_at.elapsed() >= Duration::from_millis(500));

    // Kill → SIGKILL at once.
    assert_ready(&mut m, "killme", 1);
    m.send(MasterToLauncher::Kill {
        app: "killme".into(),
        instance_id: 1,
    });
    assert!(matches!(
        m.event("killme", 1, Duration::from_secs(2)),
        InstanceEvent::Exited {
            status: ExitStatus::Signal(9),
            ..
        }
    ));

    // Shutdown: every remaining instance (one with a grandchild) is stopped and reported.
    assert_ready(&mut m, "tree", 1);
    assert_ready(&mut m, "last", 2);
    let groups: Vec<i32> = pids.values().copied().collect();
    assert!(
        group_members(&[pids["tree"]]).len() >= 2,
        "the tree app runs a child in its group"
    );
    m.send(MasterToLauncher::Shutdown { grace_ms: 2000 });
    for (app, id) in [("tree", 1), ("last", 2), ("spam", 1)] {
        assert!(matches!(
            m.event(app, id, Duration::from_secs(5)),
            InstanceEvent::Exited { .. }
        ));
    }
    assert_eq!(m.join(Duration::from_secs(5)), 0);
    // Orphans killed with their group come to this process (the launcher made it a
    // subreaper); reap them before looking.
    wait_until(
        "every instance process to be gone",
        Duration::from_secs(3),
        || {
            while let Ok(
                nix::sys::wait::WaitStatus::Exited(..) | nix::sys::wait::WaitStatus::Signaled(..),
            ) =
                nix::sys::wait::waitpid(None::<Pid>, Some(nix::sys::wait::WaitPidFlag::WNOHANG))
            {
            }
            group_members(&groups).is_empty()
        },
    );
}

#[test]
fn master_gone_stops_instances() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let world = World::new("gone");
    let mut m = start(test_limits());
    m.send(MasterToLauncher::Spawn(world.spec("app", 1, "ok", &[])));
    let pid = spawned_pid(m.event("app", 1, Duration::from_secs(5)));
    assert_ready(&mut m, "app", 1);
    m.sock.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(m.join(Duration::from_secs(8)), 0);
    assert!(!alive(pid));
}

#[test]
fn hello_version_mismatch_exits_1() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (mut ours, theirs) = UnixStream::pair().unwrap();
    let launcher = std::thread::spawn(move || run_with_limits(theirs, Limits::default()));
    let hello = MasterToLauncher::Hello {
        version: IPC_VERSION + 100,
        config: LauncherConfig {
            app_user: None,
            log_owner: None,
        },
    };
    ours.write_all(&encode_frame(&hello, 0).unwrap()).unwrap();
    assert_eq!(launcher.join().unwrap(), 1);
    // Both sides send their hello at once, so the launcher's own may or may not have left
    // before it read ours and gave up; nothing else may follow it.
    let mut rest = Vec::new();
    ours.read_to_end(&mut rest).unwrap();
    let frames: Vec<tako_ipc::LauncherToMaster> =
        tako_ipc::frame::decode_stream(&rest).expect("whole frames from the launcher");
    assert!(
        frames.len() <= 1
            && frames
                .iter()
                .all(|f| matches!(f, tako_ipc::LauncherToMaster::Hello { .. })),
        "at most the launcher's own hello on a version mismatch: {frames:?}"
    );
}

/// Starts a launcher on a thread, without an app user, and exchanges hellos.
fn start(limits: Limits) -> Master {
    Master::start_with(
        limits,
        LauncherConfig {
            app_user: None,
            log_owner: None,
        },
        || {},
    )
}

pub fn alive(pid: i32) -> bool {
    kill(Pid::from_raw(pid), None).is_ok()
}

/// Live (non-zombie) processes whose process group is one of `groups`.
pub fn group_members(groups: &[i32]) -> Vec<i32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // Fields after the parenthesised command: state ppid pgrp ...
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.len() > 2 && fields[0] != "Z" {
            if let Ok(pgrp) = fields[2].parse::<i32>() {
                if groups.contains(&pgrp) {
                    found.push(pid);
                }
            }
        }
    }
    found
}

pub fn status_ok(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ =
        s.write_all(b"GET /status HTTP/1.1\r\nHost: tako.internal\r\nConnection: close\r\n\r\n");
    let mut buf = [0u8; 12];
    s.read_exact(&mut buf).is_ok() && &buf == b"HTTP/1.1 200"
}
