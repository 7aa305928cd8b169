//! Root mode, when the tests run as root and the packaged users exist: the launcher thread
//! keeps only CAP_SETUID/CAP_SETGID/CAP_KILL (capabilities are per thread, so the rest of
//! the test process is untouched), instances and installs run as the app user, and log
//! files are written as the deploy user into its 0750 directory.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Duration;

use common::*;
use tako_ipc::privilege::{lookup_user, restrict_to_launcher_caps, running_as_root};
use tako_ipc::{
    AppIds, AppLimits, ExitStatus, InstallResult, InstanceEvent, LauncherConfig, MasterToLauncher,
};

fn status_field(pid: i32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_default()
        .trim()
        .to_string()
}

#[test]
fn instances_run_as_the_app_user_and_logs_belong_to_the_deploy_user() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (Ok(Some(app_user)), Ok(Some(deploy))) = (lookup_user("tako-app"), lookup_user("tako"))
    else {
        eprintln!("skipped: users tako-app and tako are needed");
        return;
    };
    if !running_as_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let world = World::new("root");
    std::fs::set_permissions(&world.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    // The deploy user's shared dir, as the master leaves it: 0750, not writable by uid 0
    // without CAP_DAC_OVERRIDE. The launcher creates `logs` below it.
    let shared = world.dir.join("apps/app/shared");
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::set_permissions(
        world.dir.join("apps/app"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::fs::set_permissions(
        world.dir.join("apps"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::os::unix::fs::chown(&shared, Some(deploy.uid), Some(deploy.gid)).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o750)).unwrap();

    let config = LauncherConfig {
        app_user: Some(app_user.clone()),
        log_owner: Some(deploy.clone()),
    };
    let mut m = Master::start_with(test_limits(), config, || {
        // As the launcher role does it: the bounding set first, while CAP_SETPCAP is held.
        tako_app_launcher::empty_bounding_set().expect("empty the bounding set");
        restrict_to_launcher_caps().expect("restrict the launcher thread's capabilities")
    });

    let spec = world.spec("app", 1, "ok", &[]);
    m.send(MasterToLauncher::Spawn(spec));
    let pid = spawned_pid(m.event("app", 1, Duration::from_secs(5)));
    assert_ready(&mut m, "app", 1);
    let uids = status_field(pid, "Uid");
    assert!(
        uids.split_whitespace()
            .all(|u| u == app_user.uid.to_string()),
        "{uids}"
    );
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    assert_eq!(status_field(pid, "Umask"), "0022");
    assert_eq!(status_field(pid, "CapEff"), "0000000000000000");
    assert_eq!(status_field(pid, "CapBnd"), "0000000000000000");

    let logs = world.dir.join("apps/app/shared/logs");
    wait_until("app.log", Duration::from_secs(5), || {
        read_logs(&logs).contains(" out env {")
    });
    let dir_md = std::fs::metadata(&logs).unwrap();
    assert_eq!((dir_md.uid(), dir_md.mode() & 0o777), (deploy.uid, 0o750));
    let file_md = std::fs::metadata(logs.join("app.log")).unwrap();
    assert_eq!((file_md.uid(), file_md.mode() & 0o777), (deploy.uid, 0o640));

    let mut install = world.install(1, "id -u", 10_000);
    install.log_dir = logs.display().to_string();
    m.send(MasterToLauncher::Install(install));
    assert_eq!(
        m.install_done(1, Duration::from_secs(10)),
        InstallResult::Ok
    );
    let install_log = std::fs::read_to_string(logs.join("install.log")).unwrap();
    assert_eq!(install_log.trim(), app_user.uid.to_string());
    assert_eq!(
        std::fs::metadata(logs.join("install.log")).unwrap().uid(),
        deploy.uid
    );

    m.send(MasterToLauncher::Shutdown { grace_ms: 2000 });
    assert!(matches!(
        m.event("app", 1, Duration::from_secs(5)),
        InstanceEvent::Exited { .. }
    ));
    assert_eq!(m.join(Duration::from_secs(5)), 0);
}

/// An app with ids of its own: it runs as exactly those, with the shared group and its
/// limits; a uid outside the range the master sent is refused; a sweep ends every process
/// of the uid.
#[test]
fn apps_run_under_their_own_ids_within_the_range_and_are_swept() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (Ok(Some(app_user)), Ok(Some(deploy))) = (lookup_user("tako-app"), lookup_user("tako"))
    else {
        eprintln!("skipped: users tako-app and tako are needed");
        return;
    };
    if !running_as_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let world = World::new("ids");
    std::fs::set_permissions(&world.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = LauncherConfig {
        app_user: Some(app_user.clone()),
        log_owner: Some(deploy.clone()),
    };
    let mut m = Master::start_with(test_limits(), config, || {
        tako_app_launcher::empty_bounding_set().expect("empty the bounding set");
        restrict_to_launcher_caps().expect("restrict the launcher thread's capabilities")
    });
    // No uid another test process could hold.
    let first = 3_000_000_000 + (std::process::id() % 1_000_000) * 16;
    let ids = |uid: u32| AppIds {
        uid,
        gid: uid,
        groups: vec![app_user.gid],
        limits: AppLimits {
            nproc: 100,
            nofile: 256,
        },
    };
    let mut spec = world.spec("own", 1, "ok", &[]);
    spec.ids = Some(ids(first));
    m.send(MasterToLauncher::Spawn(spec));
    match m.event("own", 1, Duration::from_secs(5)) {
        InstanceEvent::SpawnFailed { error } => assert!(error.contains("no uid range"), "{error}"),
        other => panic!("a uid without a range must be refused, got {other:?}"),
    }

    m.send(MasterToLauncher::AppIdRange {
        first,
        last: first + 15,
    });
    let mut spec = world.spec("own", 2, "ok", &[]);
    spec.ids = Some(ids(first));
    m.send(MasterToLauncher::Spawn(spec));
    let pid = spawned_pid(m.event("own", 2, Duration::from_secs(5)));
    assert_ready(&mut m, "own", 2);
    for field in ["Uid", "Gid"] {
        let ids = status_field(pid, field);
        assert!(
            ids.split_whitespace().all(|u| u == first.to_string()),
            "{field}: {ids}"
        );
    }
    let groups = status_field(pid, "Groups");
    assert!(
        groups
            .split_whitespace()
            .any(|g| g == app_user.gid.to_string()),
        "{groups}"
    );
    assert_eq!(status_field(pid, "CapBnd"), "0000000000000000");
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let limit = |name: &str| {
        limits
            .lines()
            .find(|l| l.starts_with(name))
            .map(|l| l.split_whitespace().rev().nth(1).unwrap_or("").to_string())
            .unwrap_or_default()
    };
    assert_eq!(
        (
            limit("Max processes").as_str(),
            limit("Max open files").as_str()
        ),
        ("100", "256"),
        "{limits}"
    );

    for bad in [0, 1000, first + 16] {
        let mut spec = world.spec("other", bad, "ok", &[]);
        spec.ids = Some(ids(bad));
        m.send(MasterToLauncher::Spawn(spec));
        match m.event("other", bad, Duration::from_secs(5)) {
            InstanceEvent::SpawnFailed { error } => {
                assert!(error.contains("outside the app uid range"), "{error}")
            }
            other => panic!("uid {bad} must be refused, got {other:?}"),
        }
    }

    m.send(MasterToLauncher::Sweep {
        app: "own".into(),
        uid: first,
    });
    match m.event("own", 2, Duration::from_secs(5)) {
        InstanceEvent::Exited { status, .. } => {
            assert_eq!(status, ExitStatus::Signal(libc::SIGKILL))
        }
        other => panic!("the sweep ends the instance, got {other:?}"),
    }
    m.send(MasterToLauncher::Shutdown { grace_ms: 2000 });
    assert_eq!(m.join(Duration::from_secs(5)), 0);
}
