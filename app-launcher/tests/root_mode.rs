//! Root mode, when the tests run as root and the packaged users exist: the launcher thread
//! keeps only CAP_SETUID/CAP_SETGID/CAP_KILL (capabilities are per thread, so the rest of
//! the test process is untouched), instances and installs run as the app user, and log
//! files are written as the deploy user into its 0750 directory.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Duration;

use common::*;
use tako_ipc::privilege::{lookup_user, restrict_to_launcher_caps, running_as_root};
use tako_ipc::{InstallResult, InstanceEvent, LauncherConfig, MasterToLauncher};

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
