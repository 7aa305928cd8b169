//! Issue 9: the packaging under packaging/ (packaging/README.md; docs/operations.md,
//! "Install (Debian, Ubuntu)", "Files and directories").
//!
//! - the unit passes `systemd-analyze verify`;
//! - the sysusers.d and tmpfiles.d files create the users and directories with the right
//!   shells, homes, owners and modes (applied to an empty root with `--root`);
//! - `install.sh` lays out the files of a host without the package;
//! - the .deb (cargo-deb; the `dev` build by default, see `profile()`) installs with dpkg,
//!   creates users and directories, runs the unit's ExecStart line and serves `/status`, stops
//!   with exit 0 on SIGTERM, and purges to nothing but the data dir;
//! - every lintian tag on the .deb is explained in packaging/README.md.
//!
//! Tools missing (systemd-analyze, cargo-deb, dpkg, lintian) or not root: the test says so on
//! stderr and passes. `.ci/run` installs the tools, so in CI they run.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::{exit_code, free_ports, wait_for, Request, BIN};

/// The cargo profile of the packaged binary. By default `dev`: no LTO, many codegen units,
/// and already built by `cargo nextest run` before the tests start (CARGO_BIN_EXE), so the
/// package build only strips and archives. An optimized build of the whole workspace in the
/// `deb-fast` profile takes about 4 minutes of a 2-core CI machine and would pass nextest's
/// 180 s kill limit; `TAKO_DEB_PROFILE=deb-fast` (or `release`) selects it by hand.
fn profile() -> String {
    std::env::var("TAKO_DEB_PROFILE").unwrap_or_else(|_| "dev".into())
}
/// Bound of the package build: with `dev` it is a no-op build plus strip.
const BUILD_TIMEOUT: Duration = Duration::from_secs(420);

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("master/ has a parent")
        .to_path_buf()
}

fn packaging(file: &str) -> PathBuf {
    workspace().join("packaging").join(file)
}

fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// The tools this test needs, or the reason it skips (printed on stderr).
fn require(tools: &[&str], root: bool, test: &str) -> bool {
    if root && !is_root() {
        eprintln!("SKIPPED {test}: needs root (it installs a package and creates users); .ci/run runs as root");
        return false;
    }
    for t in tools {
        if !have(t) {
            eprintln!("SKIPPED {test}: `{t}` is not installed; .ci/run installs it");
            return false;
        }
    }
    true
}

/// Runs a command to completion within `timeout`, killing it after.
fn run(cmd: &mut Command, timeout: Duration) -> Output {
    let what = format!("{cmd:?}");
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let pid = child.id();
    // A watchdog thread: wait_with_output has no timeout of its own.
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if rx.recv_timeout(timeout).is_err() {
            crate::common::kill(pid as i32, libc::SIGKILL);
            true
        } else {
            false
        }
    });
    let out = child.wait_with_output().expect("wait for command");
    let _ = tx.send(());
    let killed = watchdog.join().unwrap_or(false);
    assert!(!killed, "{what} did not finish within {timeout:?}");
    out
}

fn run_ok(cmd: &mut Command, timeout: Duration) -> String {
    let what = format!("{cmd:?}");
    let out = run(cmd, timeout);
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn mode(p: &Path) -> u32 {
    fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("{} exists: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

fn owner(p: &Path) -> (u32, u32) {
    let md = fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{} exists: {e}", p.display()));
    (md.uid(), md.gid())
}

/// A passwd entry: (uid, gid, home, shell), from a passwd file's text.
fn passwd_entry(passwd: &str, name: &str) -> Option<(u32, u32, String, String)> {
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() == 7 && f[0] == name {
            Some((
                f[2].parse().ok()?,
                f[3].parse().ok()?,
                f[5].to_string(),
                f[6].to_string(),
            ))
        } else {
            None
        }
    })
}

fn getent(name: &str) -> Option<(u32, u32, String, String)> {
    let out = Command::new("getent")
        .args(["passwd", name])
        .output()
        .ok()?;
    passwd_entry(&String::from_utf8_lossy(&out.stdout), name)
}

fn is_login_shell(shell: &str) -> bool {
    !shell.ends_with("/nologin") && !shell.ends_with("/false") && !shell.is_empty()
}

/// The unit's directives as (key, value) pairs, in order.
fn unit_directives(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn directive<'a>(d: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    d.iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect()
}

#[test]
fn unit_has_the_required_settings() {
    let text = fs::read_to_string(packaging("tako-server.service")).expect("read the unit");
    let d = unit_directives(&text);
    for (key, want) in [
        ("Type", "notify"),
        (
            "ExecStart",
            "/usr/bin/tako-server --socket /var/run/tako/tako.sock --data-dir /opt/tako",
        ),
        ("ExecReload", r#"/bin/sh -c 'kill -HUP "$MAINPID"'"#),
        ("KillMode", "mixed"),
        ("TimeoutStopSec", "60"),
        ("Restart", "always"),
        ("RestartSec", "1"),
        ("RestartPreventExitStatus", "2 3 5"),
        ("FileDescriptorStoreMax", "64"),
    ] {
        assert_eq!(directive(&d, key), vec![want], "{key}= in the unit");
    }
    assert!(
        directive(&d, "RuntimeDirectory").is_empty(),
        "no RuntimeDirectory= (deleted on stop)"
    );
    assert!(directive(&d, "User").is_empty(), "the master runs as root");
    let rw: Vec<&str> = directive(&d, "ReadWritePaths")
        .iter()
        .flat_map(|v| v.split_whitespace())
        .collect();
    for p in ["/opt/tako", "/run/tako"] {
        assert!(rw.contains(&p), "ReadWritePaths has {p}: {rw:?}");
    }
    let caps = directive(&d, "CapabilityBoundingSet").join(" ");
    for cap in [
        "CAP_NET_BIND_SERVICE",
        "CAP_SETUID",
        "CAP_SETGID",
        "CAP_SETPCAP",
        "CAP_CHOWN",
        "CAP_KILL",
    ] {
        assert!(
            caps.split_whitespace().any(|c| c == cap),
            "bounding set keeps {cap}: {caps}"
        );
    }
}

#[test]
fn unit_passes_systemd_analyze_verify() {
    if !require(
        &["systemd-analyze"],
        false,
        "unit_passes_systemd_analyze_verify",
    ) {
        return;
    }
    // verify checks that ExecStart's program exists: point it at the binary under test. The
    // file keeps its name, since verify derives the unit name from it.
    let dir = crate::common::temp_dir();
    let text = fs::read_to_string(packaging("tako-server.service")).expect("read the unit");
    let text = text.replace(
        "ExecStart=/usr/bin/tako-server ",
        &format!("ExecStart={BIN} "),
    );
    assert!(
        text.contains(&format!("ExecStart={BIN} --socket")),
        "ExecStart rewritten"
    );
    let unit = dir.join("tako-server.service");
    fs::write(&unit, text).expect("write the unit copy");
    let out = run(
        Command::new("systemd-analyze").arg("verify").arg(&unit),
        Duration::from_secs(60),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{stdout}{stderr}"
    );
    // verify exits 0 on unknown keys and bad values, warning on stderr: no line may name the
    // unit.
    let about_unit: Vec<&str> = stderr
        .lines()
        .chain(stdout.lines())
        .filter(|l| l.contains("tako-server"))
        .collect();
    assert!(
        about_unit.is_empty(),
        "systemd-analyze verify warns about the unit:\n{}",
        about_unit.join("\n")
    );
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn sysusers_and_tmpfiles_create_users_and_directories() {
    let test = "sysusers_and_tmpfiles_create_users_and_directories";
    if !require(&["systemd-sysusers", "systemd-tmpfiles"], true, test) {
        return;
    }
    // An empty root: on the CI host the users exist already (.ci/run), so only this shows
    // what the package's own files create.
    let root = crate::common::temp_dir();
    fs::create_dir_all(root.join("etc")).expect("mkdir etc");
    run_ok(
        Command::new("systemd-sysusers")
            .arg(format!("--root={}", root.display()))
            .arg(packaging("tako-server.sysusers")),
        Duration::from_secs(30),
    );
    let passwd = fs::read_to_string(root.join("etc/passwd")).expect("sysusers wrote passwd");
    let tako = passwd_entry(&passwd, "tako").expect("user tako");
    let proxy = passwd_entry(&passwd, "tako-proxy").expect("user tako-proxy");
    let app = passwd_entry(&passwd, "tako-app").expect("user tako-app");
    assert!(is_login_shell(&tako.3), "tako has a login shell: {tako:?}");
    assert_eq!(tako.2, "/home/tako", "tako's home");
    assert!(
        !is_login_shell(&proxy.3),
        "tako-proxy has no login shell: {proxy:?}"
    );
    assert!(
        !is_login_shell(&app.3),
        "tako-app has no login shell: {app:?}"
    );
    assert_eq!(app.2, "/var/lib/tako-app", "tako-app's home");
    let uids: BTreeSet<u32> = [tako.0, proxy.0, app.0].into_iter().collect();
    assert_eq!(uids.len(), 3, "three distinct users");
    assert!(
        uids.iter().all(|&u| u > 0 && u < 1000),
        "system uids: {uids:?}"
    );

    run_ok(
        Command::new("systemd-tmpfiles")
            .arg("--create")
            .arg(format!("--root={}", root.display()))
            .arg(packaging("tako-server.tmpfiles")),
        Duration::from_secs(30),
    );
    for (path, want_mode, want_owner) in [
        ("run/tako", 0o1770, (0, tako.1)),
        ("opt/tako", 0o755, (0, 0)),
        ("opt/tako/apps", 0o755, (tako.0, tako.1)),
        ("var/lib/tako-app", 0o700, (app.0, app.1)),
    ] {
        let p = root.join(path);
        assert_eq!(mode(&p), want_mode, "mode of /{path}");
        assert_eq!(owner(&p), want_owner, "owner of /{path}");
    }
    let _ = fs::remove_dir_all(&root);
}

#[test]
fn install_sh_lays_out_the_files() {
    if !require(&["sh", "sed"], false, "install_sh_lays_out_the_files") {
        return;
    }
    let dest = crate::common::temp_dir();
    run_ok(
        Command::new(packaging("install.sh"))
            .arg(BIN)
            .env("DESTDIR", &dest),
        Duration::from_secs(60),
    );
    let bin = dest.join("usr/local/bin/tako-server");
    assert_eq!(mode(&bin), 0o755, "binary mode");
    let unit = fs::read_to_string(dest.join("etc/systemd/system/tako-server.service"))
        .expect("unit installed");
    assert!(
        unit.contains(
            "\nExecStart=/usr/local/bin/tako-server --socket /var/run/tako/tako.sock --data-dir /opt/tako\n"
        ),
        "ExecStart points at /usr/local/bin:\n{unit}"
    );
    assert_eq!(
        mode(&dest.join("etc/sudoers.d/tako-server")),
        0o440,
        "sudoers mode"
    );
    for f in [
        "etc/sysusers.d/tako-server.conf",
        "etc/tmpfiles.d/tako-server.conf",
        "etc/sysctl.d/60-tako-server.conf",
    ] {
        assert_eq!(mode(&dest.join(f)), 0o644, "{f}");
    }
    run_ok(
        Command::new(packaging("install.sh"))
            .arg("--uninstall")
            .env("DESTDIR", &dest),
        Duration::from_secs(60),
    );
    assert!(!bin.exists(), "--uninstall removes the binary");
    let _ = fs::remove_dir_all(&dest);
}

/// An exclusive lock on a file in the target dir, held while the value lives. cargo-deb strips
/// into one fixed temporary path (target/tako-server/tako-server.stripped-0.tmp), so two
/// package builds at once corrupt each other's binary.
struct BuildLock {
    _file: fs::File,
}

impl BuildLock {
    fn take(timeout: Duration) -> BuildLock {
        let target = Path::new(BIN)
            .parent()
            .and_then(Path::parent)
            .expect("the binary lives in target/<profile>/");
        let path = target.join("tako-packaging-deb.lock");
        let file =
            fs::File::create(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
        wait_for(timeout, "the package build lock", || {
            // SAFETY: flock(2) on an fd this function owns; no memory is shared.
            let r = unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) };
            (r == 0).then_some(())
        });
        BuildLock { _file: file }
    }
}

/// Builds the .deb into `out`. With the `dev` profile it packages the very binary the test
/// suite runs (`--no-build`): `cargo deb -p` alone could resolve other features than the
/// workspace build did and recompile.
fn build_deb(out: &Path) {
    let _lock = BuildLock::take(BUILD_TIMEOUT);
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let profile = profile();
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace())
        .args(["deb", "-p", "tako-server", "--profile", &profile]);
    if profile == "dev" {
        assert!(Path::new(BIN).is_file(), "the dev build {BIN} exists");
        cmd.arg("--no-build");
    }
    let started = Instant::now();
    run_ok(cmd.arg("--output").arg(out), BUILD_TIMEOUT);
    eprintln!(
        "cargo deb ({profile}) built {} in {:?}",
        out.display(),
        started.elapsed()
    );
    assert!(out.is_file(), "cargo deb wrote {}", out.display());
    // The package's binary is the one built for this profile, not a stale one.
    let list = run_ok(
        Command::new("dpkg-deb").arg("-c").arg(out),
        Duration::from_secs(60),
    );
    assert!(
        list.lines().any(|l| l.ends_with("./usr/bin/tako-server")),
        "the package holds /usr/bin/tako-server:\n{list}"
    );
}

/// The lintian tags explained in packaging/README.md: lines `- \`<tag>\`` under
/// "## Lintian".
fn explained_lintian_tags() -> BTreeSet<String> {
    let readme = fs::read_to_string(packaging("README.md")).expect("read packaging/README.md");
    let Some((_, section)) = readme.split_once("## Lintian") else {
        return BTreeSet::new();
    };
    section
        .lines()
        .take_while(|l| !l.starts_with("## "))
        .filter_map(|l| l.trim().strip_prefix("- `"))
        .filter_map(|l| l.split('`').next())
        .map(str::to_string)
        .collect()
}

#[test]
fn lintian_findings_are_explained() {
    if !require(
        &["cargo-deb", "lintian"],
        false,
        "lintian_findings_are_explained",
    ) {
        return;
    }
    let dir = crate::common::temp_dir();
    let deb = dir.join("tako-server-lintian.deb");
    build_deb(&deb);
    // lintian exits non-zero when it finds errors; the tags are judged below.
    let out = run(
        Command::new("lintian")
            .args(["--tag-display-limit", "0", "--display-info", "--allow-root"])
            .arg(&deb),
        Duration::from_secs(240),
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("lintian:\n{text}{}", String::from_utf8_lossy(&out.stderr));
    let explained = explained_lintian_tags();
    let mut unexplained = Vec::new();
    for line in text.lines() {
        // "<severity>: tako-server: <tag> [<context>]"
        let mut parts = line.splitn(3, ": ");
        let (Some(sev), Some(_pkg), Some(rest)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if !matches!(sev, "E" | "W" | "I") {
            continue;
        }
        let tag = rest.split_whitespace().next().unwrap_or("");
        if sev == "E" || !explained.contains(tag) {
            unexplained.push(line.to_string());
        }
    }
    assert!(
        unexplained.is_empty(),
        "lintian findings that are errors or not explained under '## Lintian' in packaging/README.md:\n{}",
        unexplained.join("\n")
    );
    let _ = fs::remove_dir_all(&dir);
}

fn dpkg_installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f", "${db:Status-Status}", pkg])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "installed")
        .unwrap_or(false)
}

/// The unit's ExecStart words, as installed.
fn installed_exec_start() -> Vec<String> {
    let unit = fs::read_to_string("/usr/lib/systemd/system/tako-server.service")
        .expect("the package installs the unit");
    let d = unit_directives(&unit);
    let exec = directive(&d, "ExecStart");
    assert_eq!(exec.len(), 1, "one ExecStart");
    exec[0].split_whitespace().map(str::to_string).collect()
}

#[test]
fn deb_installs_serves_and_purges() {
    let test = "deb_installs_serves_and_purges";
    if !require(&["cargo-deb", "dpkg", "dpkg-query"], true, test) {
        return;
    }
    let dir = crate::common::temp_dir();
    let deb = dir.join("tako-server-install.deb");
    build_deb(&deb);

    // --- install ---
    run_ok(
        Command::new("dpkg").arg("-i").arg(&deb),
        Duration::from_secs(120),
    );
    assert!(
        dpkg_installed("tako-server"),
        "dpkg lists tako-server as installed"
    );
    let files: Vec<PathBuf> = run_ok(
        Command::new("dpkg-query").args(["-L", "tako-server"]),
        Duration::from_secs(30),
    )
    .lines()
    .map(PathBuf::from)
    .filter(|p| p.is_file())
    .collect();
    for (path, want) in [
        ("/usr/bin/tako-server", 0o755),
        ("/usr/lib/systemd/system/tako-server.service", 0o644),
        ("/usr/lib/sysusers.d/tako-server.conf", 0o644),
        ("/usr/lib/tmpfiles.d/tako-server.conf", 0o644),
        ("/usr/lib/sysctl.d/60-tako-server.conf", 0o644),
        ("/etc/sudoers.d/tako-server", 0o440),
        ("/usr/share/doc/tako-server/copyright", 0o644),
    ] {
        let p = Path::new(path);
        assert!(files.iter().any(|f| f == p), "the package ships {path}");
        assert_eq!(mode(p), want, "mode of {path}");
        assert_eq!(owner(p), (0, 0), "{path} belongs to root");
    }
    if have("visudo") {
        run_ok(
            Command::new("visudo").args(["-c", "-f", "/etc/sudoers.d/tako-server"]),
            Duration::from_secs(30),
        );
    }

    // Users: CI creates them before the tests (.ci/run) and the package leaves existing users
    // alone, so check what both agree on.
    let tako = getent("tako").expect("user tako exists after install");
    let proxy = getent("tako-proxy").expect("user tako-proxy exists after install");
    let app = getent("tako-app").expect("user tako-app exists after install");
    assert!(is_login_shell(&tako.3), "tako can log in: {tako:?}");
    assert!(Path::new(&tako.2).is_dir(), "tako's home {} exists", tako.2);
    assert_eq!(owner(Path::new(&tako.2)).0, tako.0, "tako owns its home");
    assert!(
        !is_login_shell(&proxy.3),
        "tako-proxy cannot log in: {proxy:?}"
    );
    assert!(!is_login_shell(&app.3), "tako-app cannot log in: {app:?}");
    let uids: BTreeSet<u32> = [tako.0, proxy.0, app.0].into_iter().collect();
    assert_eq!(uids.len(), 3, "three distinct users");
    assert_eq!(app.2, "/var/lib/tako-app", "tako-app's home");
    for (path, want_mode, want_owner) in [
        ("/run/tako", 0o1770, (0, tako.1)),
        ("/opt/tako", 0o755, (0, 0)),
        ("/opt/tako/apps", 0o755, (tako.0, tako.1)),
        ("/var/lib/tako-app", 0o700, (app.0, app.1)),
    ] {
        let p = Path::new(path);
        assert_eq!(mode(p), want_mode, "mode of {path}");
        assert_eq!(owner(p), want_owner, "owner of {path}");
    }
    assert!(
        Path::new("/etc/systemd/system/multi-user.target.wants/tako-server.service").exists(),
        "the unit is enabled for multi-user.target"
    );
    if Path::new("/run/systemd/system").is_dir() {
        // systemd runs as PID 1 here, so postinst started the service on ports 80/443 with
        // /opt/tako: stop it, the run below takes the data dir.
        let _ = run(
            Command::new("systemctl").args(["stop", "tako-server"]),
            Duration::from_secs(90),
        );
    }

    // --- the unit's ExecStart line by hand (systemd is not PID 1 in CI) ---
    // As written it binds 80 and 443 on every address; other tests run beside this one and
    // the host may serve those ports, so free ports are added. The socket moves into the
    // package's /run/tako under another name (the default one may belong to a real server).
    // --no-acme: no Let's Encrypt account from CI. Everything else is the unit's line:
    // root, /opt/tako, the package's users.
    let mut argv = installed_exec_start();
    let sock = format!("/run/tako/packaging-test-{}.sock", std::process::id());
    let i = argv
        .iter()
        .position(|a| a == "--socket")
        .expect("ExecStart has --socket");
    argv[i + 1] = sock.clone();
    let (http_port, tls_port) = free_ports();
    argv.extend(
        [
            "--port",
            &http_port.to_string(),
            "--tls-port",
            &tls_port.to_string(),
            "--workers",
            "1",
            "--no-acme",
        ]
        .map(str::to_string),
    );
    assert_eq!(
        argv[0], "/usr/bin/tako-server",
        "ExecStart runs the packaged binary"
    );
    let log = dir.join("server.log");
    let log_file = fs::File::create(&log).expect("create the server log");
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().expect("dup log"))
        .stderr(log_file)
        .spawn()
        .expect("start /usr/bin/tako-server");
    let pid = child.id() as i32;
    let served = crate::common::poll(Duration::from_secs(30), Duration::from_millis(100), || {
        crate::common::http::http(http_port, &Request::get("tako.internal", "/status")).ok()
    });
    let log_text = || fs::read_to_string(&log).unwrap_or_default();
    let Some(resp) = served else {
        crate::common::kill(pid, libc::SIGKILL);
        let _ = child.wait();
        panic!(
            "no answer to GET /status within 30 s; server log:\n{}",
            log_text()
        );
    };
    assert_eq!(
        resp.status,
        200,
        "GET /status: {}\nlog:\n{}",
        resp.text(),
        log_text()
    );
    assert_eq!(
        resp.json()["healthy"],
        serde_json::json!(true),
        "healthy: {}",
        resp.text()
    );
    let sock_md = fs::metadata(&sock).expect("management socket in /run/tako");
    assert_eq!(sock_md.gid(), tako.1, "the socket's group is tako's");
    // Privilege separation is on: some child runs as tako-proxy.
    let worker = crate::common::procfs::descendants(pid)
        .into_iter()
        .filter_map(crate::common::procfs::status)
        .any(|s| s.uid() == proxy.0);
    assert!(
        worker,
        "a proxy worker runs as tako-proxy; log:\n{}",
        log_text()
    );

    // --- stop: SIGTERM, graceful, exit 0 ---
    assert!(crate::common::kill(pid, libc::SIGTERM), "send SIGTERM");
    let status = wait_for(
        crate::common::STOP_TIMEOUT,
        "the server to exit after SIGTERM",
        || child.try_wait().ok().flatten(),
    );
    assert_eq!(
        exit_code(status),
        0,
        "exit code after SIGTERM; log:\n{}",
        log_text()
    );
    assert!(
        !Path::new(&sock).exists(),
        "the socket is removed on shutdown"
    );

    // --- purge ---
    run_ok(
        Command::new("dpkg").args(["--purge", "tako-server"]),
        Duration::from_secs(120),
    );
    assert!(
        !dpkg_installed("tako-server"),
        "tako-server is gone from dpkg"
    );
    let left: Vec<&PathBuf> = files.iter().filter(|f| f.exists()).collect();
    assert!(
        left.is_empty(),
        "purge removes every packaged file; left: {left:?}"
    );
    for p in [
        "/run/tako",
        "/etc/systemd/system/multi-user.target.wants/tako-server.service",
        "/etc/systemd/system/tako-server.service",
        "/var/lib/systemd/deb-systemd-helper-enabled/tako-server.service.dsh-also",
        "/var/lib/systemd/deb-systemd-helper-masked/tako-server.service",
    ] {
        assert!(!Path::new(p).exists(), "purge leaves nothing at {p}");
    }
    // The data dir stays, with the state the run above wrote.
    assert!(
        Path::new("/opt/tako/apps").is_dir(),
        "purge keeps the data dir /opt/tako"
    );
    assert!(
        Path::new("/opt/tako/runtime-state.sqlite3").is_file(),
        "purge keeps the server state"
    );
    let _ = fs::remove_dir_all(&dir);
}

// --- Issue 17, item 6: who may talk to systemd, and what the deploy user may run as root ---

/// `NotifyAccess=all` let any process of the service's cgroup (an app, a compromised worker)
/// send `MAINPID=`, `FDSTOREREMOVE=1` or `STOPPING=1` for the service. Only the master may.
#[test]
fn unit_accepts_notifications_from_the_main_process_only() {
    let text = fs::read_to_string(packaging("tako-server.service")).expect("read the unit");
    let d = unit_directives(&text);
    assert_eq!(directive(&d, "NotifyAccess"), vec!["main"], "NotifyAccess=");
}

/// The command lines the Tako CLI runs with sudo as the deploy user; each must be allowed.
const CLI_SUDO_LINES: &[&str] = &[
    "/usr/bin/systemctl restart tako-server",
    "/usr/bin/systemctl reload tako-server",
    "/usr/bin/systemctl is-active tako-server",
    "/usr/bin/systemctl status tako-server",
    "/usr/bin/journalctl -u tako-server -f --no-pager -o cat",
    "/usr/bin/journalctl -u tako-server --since '1 days ago' --no-pager -o cat",
    "/usr/bin/journalctl -u tako-server --since '30 days ago' --no-pager -o cat",
];

/// What the old `journalctl -u tako-server *` allowed and must not any more: other units'
/// logs, journal maintenance, another journal directory, extra options after the CLI's own.
const REFUSED_SUDO_LINES: &[&str] = &[
    "/usr/bin/journalctl -u tako-server -u ssh",
    "/usr/bin/journalctl -u tako-server --vacuum-time=1s",
    "/usr/bin/journalctl -u tako-server --rotate",
    "/usr/bin/journalctl -u tako-server -f --no-pager -o cat -u ssh",
    "/usr/bin/journalctl -u tako-server -f --no-pager -o cat -D /",
    "/usr/bin/journalctl -u tako-server --since '2 -u ssh days ago' --no-pager -o cat",
    "/usr/bin/journalctl -u tako-server --since 2 -u ssh days ago --no-pager -o cat",
    "/usr/bin/journalctl -u tako-server --since '2 days ago' --no-pager -o cat --directory=/",
    "/usr/bin/journalctl -u tako-server --since '99999 days ago' --no-pager -o cat",
    "/usr/bin/journalctl -u tako-server --since '2 hours ago' --no-pager -o cat",
    "/usr/bin/journalctl -u tako-server",
    "/usr/bin/journalctl",
    "/usr/bin/systemctl restart tako-server ssh",
    "/usr/bin/systemctl stop tako-server",
    "/usr/bin/systemctl edit tako-server",
];

/// Removes the probe copy of the rules from /etc/sudoers.d however the test ends.
struct SudoersProbe(PathBuf);

impl Drop for SudoersProbe {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// Whether sudo would let `user` run `line` as root: `sudo -l -U <user> <command>` exits 0
/// exactly when a rule allows it. `line` is split like a shell would split the CLI's text:
/// on spaces, with a '…'-quoted part as one word.
fn sudo_allows(user: &str, line: &str) -> bool {
    let mut words: Vec<String> = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '\'' => quoted = !quoted,
            ' ' if !quoted => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    let out = run(
        Command::new("sudo")
            .args(["-n", "-l", "-U", user])
            .args(&words),
        Duration::from_secs(30),
    );
    out.status.success()
}

#[test]
fn sudoers_allows_exactly_the_cli_command_lines() {
    let test = "sudoers_allows_exactly_the_cli_command_lines";
    if !require(&["visudo"], false, test) {
        return;
    }
    let rules = packaging("tako-server.sudoers");
    run_ok(
        Command::new("visudo").args(["-c", "-f"]).arg(&rules),
        Duration::from_secs(30),
    );
    let text = fs::read_to_string(&rules).expect("read the sudoers file");
    // A `*` outside a regular expression matches any further options.
    let globs: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter(|l| l.contains('*') && !l.contains('^'))
        .collect();

    // What sudo itself decides, with the rules live: root, sudo and the user tako needed.
    if !require(&["sudo"], true, test) || getent("tako").is_none() {
        eprintln!("SKIPPED {test} (the sudo checks): needs root, sudo and the user tako");
        assert!(globs.is_empty(), "globs in the rules: {globs:?}");
        return;
    }
    let installed = Path::new("/etc/sudoers.d/tako-server");
    if installed.exists() && fs::read_to_string(installed).ok().as_deref() != Some(&text) {
        eprintln!(
            "SKIPPED {test} (the sudo checks): another /etc/sudoers.d/tako-server is installed"
        );
        assert!(globs.is_empty(), "globs in the rules: {globs:?}");
        return;
    }
    // A copy under its own alias name (sudo refuses a duplicate alias, and the package's file
    // may be installed by the package test meanwhile); a name without a dot, which
    // @includedir would skip.
    let alias = format!("TAKO_SERVICE_PROBE_{}", std::process::id());
    let probe = SudoersProbe(PathBuf::from(format!(
        "/etc/sudoers.d/tako-server-probe-{}",
        std::process::id()
    )));
    let staged = std::env::temp_dir().join(format!("tako-sudoers-{}", std::process::id()));
    fs::write(&staged, text.replace("TAKO_SERVICE", &alias)).expect("write the probe rules");
    run_ok(
        Command::new("visudo").args(["-c", "-f"]).arg(&staged),
        Duration::from_secs(30),
    );
    run_ok(
        Command::new("install")
            .args(["-m", "0440", "-o", "root", "-g", "root"])
            .arg(&staged)
            .arg(&probe.0),
        Duration::from_secs(30),
    );
    let _ = fs::remove_file(&staged);
    let not_allowed: Vec<&&str> = CLI_SUDO_LINES
        .iter()
        .filter(|l| !sudo_allows("tako", l))
        .collect();
    let allowed: Vec<&&str> = REFUSED_SUDO_LINES
        .iter()
        .filter(|l| sudo_allows("tako", l))
        .collect();
    assert!(
        not_allowed.is_empty() && allowed.is_empty() && globs.is_empty(),
        "sudo for tako: CLI lines refused {not_allowed:?}; other lines allowed {allowed:?}; \
         globs in the rules {globs:?}"
    );
}

/// The set `NAME=value` entries of a process's environment.
fn environ(pid: i32) -> Vec<String> {
    fs::read(format!("/proc/{pid}/environ"))
        .map(|b| {
            b.split(|c| *c == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// What each descriptor of a process points at.
fn fd_targets(pid: i32) -> Vec<(String, PathBuf)> {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let e = e.ok()?;
        Some((
            e.file_name().to_string_lossy().into_owned(),
            fs::read_link(e.path()).ok()?,
        ))
    })
    .collect()
}

/// Under systemd every process of the service could use `NOTIFY_SOCKET` to speak for the
/// service; the master alone may (see `unit_accepts_notifications_from_the_main_process_only`).
/// The server starts with `NOTIFY_SOCKET` pointing at a socket of this test, a variable of the
/// master's own, and an extra inheritable descriptor nobody asked it to adopt. The workers,
/// the launcher and an app instance must have none of them; the log filter still reaches the
/// children, and the master still reports ready on the socket.
#[test]
fn children_do_not_inherit_notify_socket() {
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixDatagram;

    let dir = crate::common::temp_dir();
    let notify_path = dir.join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).expect("bind the notify socket");
    notify
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout on the notify socket");
    // A descriptor the server inherits without anyone meaning to hand it over (as a shell or
    // a supervisor may leak one): std opens it close-on-exec, so clear the flag.
    let marker_path = dir.join("stray-descriptor-marker");
    let marker = fs::File::create(&marker_path).expect("create the marker file");
    let marker_fd = marker.as_raw_fd();
    // SAFETY: F_SETFD on a descriptor this test owns.
    assert_eq!(unsafe { libc::fcntl(marker_fd, libc::F_SETFD, 0) }, 0);
    let opts = crate::common::ServerOpts::default()
        .env("NOTIFY_SOCKET", &notify_path.display().to_string())
        .env("TAKO_TEST_MASTER_ONLY", "not-for-children");
    let server = crate::common::Server::start(opts);
    // Only the server was to inherit it.
    // SAFETY: as above.
    unsafe { libc::fcntl(marker_fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    server.deploy("web", "v1", &["web.example.com"], 1, &[]);

    let master_env = environ(server.pid);
    assert!(
        master_env.iter().any(|v| v.starts_with("NOTIFY_SOCKET=")),
        "the master itself keeps NOTIFY_SOCKET: {master_env:?}"
    );
    let mut children: Vec<(String, i32)> = Vec::new();
    for role in ["worker", "launcher"] {
        let pids = server.pids_of(role);
        assert!(!pids.is_empty(), "no {role} running");
        children.extend(pids.into_iter().map(|p| (role.to_string(), p)));
    }
    children.extend(
        server
            .healthy_pids("web")
            .into_iter()
            .map(|p| ("app".to_string(), p)),
    );
    assert!(children.iter().any(|(r, _)| r == "app"), "no app instance");

    let mut leaks = Vec::new();
    for (role, pid) in &children {
        let env = environ(*pid);
        for v in &env {
            if v.starts_with("NOTIFY_SOCKET=") || v.starts_with("TAKO_TEST_MASTER_ONLY=") {
                leaks.push(format!("{role} {pid} has {v}"));
            }
        }
        if role != "app" && !env.iter().any(|v| v == "RUST_LOG=info") {
            leaks.push(format!("{role} {pid} lost RUST_LOG: {env:?}"));
        }
        for (fd, target) in fd_targets(*pid) {
            if target == marker_path {
                leaks.push(format!(
                    "{role} {pid} holds the stray descriptor as fd {fd}"
                ));
            }
        }
    }
    for (fd, target) in fd_targets(server.pid) {
        if target == marker_path {
            leaks.push(format!("the master kept the stray descriptor as fd {fd}"));
        }
    }
    assert!(leaks.is_empty(), "{}", leaks.join("\n"));

    // The master still speaks for the service.
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = notify.recv(&mut buf) {
        got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(
        got.iter().any(|m| m.lines().any(|l| l == "READY=1")),
        "the master sent READY=1: {got:?}"
    );
    drop(server);
    let _ = fs::remove_dir_all(&dir);
}
