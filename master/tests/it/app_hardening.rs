//! Issue 17, item 7: what an app and its install step may hold, and where its secrets may
//! show up. App processes and install steps run with an empty capability bounding set and
//! no_new_privs; `ctl` takes env values from a file or stdin, never from its own command
//! line; a failed install or startup does not echo the app's env values into the deploy
//! error or the server's log.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::fixture::{self, APP_PY};
use crate::common::{ctl, procfs, users, wait_for, Server};
use serde_json::{json, Value};

/// A directory any user may write to (sticky, like /tmp): the install step writes there as
/// the app user, whoever owns the release at that moment.
fn drop_box(server: &Server) -> PathBuf {
    let d = server.data_dir.join("dropbox");
    fs::create_dir_all(&d).expect("create the drop box");
    fs::set_permissions(&d, fs::Permissions::from_mode(0o1777)).expect("chmod the drop box");
    d
}

/// A release of the fixture app with an `install` step.
fn release_with_install(server: &Server, app: &str, version: &str, install: &str) -> PathBuf {
    let manifest = json!({
        "runtime": "node", "main": "server.py", "start": ["python3", "{main}"],
        "install": install,
    })
    .to_string();
    fixture::write_release_with(
        &server.data_dir,
        app,
        version,
        server.deploy_owner(),
        APP_PY,
        &manifest,
    )
}

fn deploy_json(path: &Path, app: &str, version: &str, env: &[(&str, &str)]) -> Value {
    let env: serde_json::Map<String, Value> =
        env.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
    json!({
        "command": "deploy", "app": app, "version": version,
        "path": path.display().to_string(), "routes": [format!("{app}.example.com")],
        "env": env, "instances": 1, "idle_timeout": 300
    })
}

/// The app's environment as it answers on `/`.
fn app_env(server: &Server, app: &str) -> Value {
    let r = server
        .app_get(&format!("{app}.example.com"), "/env")
        .expect("request to the app");
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["env"].clone()
}

#[test]
fn app_processes_have_empty_bounding_set() {
    users::require_root("the capability bounding set of app processes");
    let server = Server::start_default();
    server.deploy("web", "v1", &["web.example.com"], 2, &[]);
    let instances = server.instances("web");
    assert_eq!(instances.len(), 2, "{instances:?}");
    for (id, pid, _) in instances {
        let s = procfs::status(pid.expect("pid")).expect("instance status");
        assert_eq!(
            s.cap_bnd, 0,
            "instance {id} CapBnd must be 0000000000000000, is {:016x}",
            s.cap_bnd
        );
        assert_eq!(s.cap_eff | s.cap_prm | s.cap_inh | s.cap_amb, 0, "{s:?}");
        assert_eq!(s.no_new_privs, 1, "instance {id} NoNewPrivs: {s:?}");
    }
    // The launcher itself holds an empty bounding set: nothing it starts can regain one.
    let launcher = server.pids_of("launcher");
    assert_eq!(launcher.len(), 1, "{launcher:?}");
    let l = procfs::status(launcher[0]).expect("launcher status");
    assert_eq!(l.cap_bnd, 0, "launcher CapBnd: {:016x}", l.cap_bnd);
    assert_eq!(
        l.cap_eff,
        procfs::LAUNCHER_CAPS,
        "the launcher keeps what it needs: {l:?}"
    );
}

#[test]
fn install_step_has_empty_bounding_set() {
    users::require_root("the capability bounding set of install steps");
    let server = Server::start_default();
    let out = drop_box(&server).join("install-status");
    let install = format!("cat /proc/self/status > {}", out.display());
    let path = release_with_install(&server, "web", "v1", &install);
    server.ok(&deploy_json(&path, "web", "v1", &[]));
    let text = fs::read_to_string(&out).expect("the install step wrote its status");
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap_or_else(|| panic!("{name} missing from:\n{text}"))
            .to_string()
    };
    assert_eq!(field("CapBnd:"), "0000000000000000", "{text}");
    assert_eq!(field("CapEff:"), "0000000000000000", "{text}");
    assert_eq!(field("NoNewPrivs:"), "1", "{text}");
    // The install runs under the app's own uid, from the server's range.
    let uid: u32 = field("Uid:")
        .split_whitespace()
        .next()
        .and_then(|u| u.parse().ok())
        .unwrap_or_else(|| panic!("Uid missing from:\n{text}"));
    let (first, last) = server.app_uid_range;
    assert!(
        (first..=last).contains(&uid),
        "the install runs as the app's own uid: {text}"
    );
}

#[test]
fn secrets_never_on_ctl_command_line() {
    let server = Server::start_default();
    let path = server.release("web", "v1");
    let path_s = path.display().to_string();
    let secret = format!("pa ss=word#{}", std::process::id());
    let env_file = server.data_dir.join("web.env");
    fs::write(
        &env_file,
        format!("# the app's secrets\n\nDB_PASSWORD={secret}\nQUOTED=\"two words\"\r\n"),
    )
    .expect("write the env file");
    fs::set_permissions(&env_file, fs::Permissions::from_mode(0o600)).expect("chmod env file");
    let env_file_s = env_file.display().to_string();
    let deploy_args = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = [
            "deploy",
            "web",
            "--version",
            "v1",
            "--path",
            &path_s,
            "--route",
            "web.example.com",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };

    // A value on the command line is refused before anything is sent, without echoing it.
    let args = deploy_args(&["--env", "DB_PASSWORD=hunter2-on-argv"]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = ctl(&server, &refs, "", &[]);
    assert_ne!(out.code, 0, "--env KEY=VALUE must be refused: {out:?}");
    assert!(out.stderr.contains("--env-file"), "{out:?}");
    assert!(
        !out.stderr.contains("hunter2"),
        "the value is not echoed: {out:?}"
    );
    assert_eq!(
        out.stderr.trim().lines().count(),
        1,
        "one line: {:?}",
        out.stderr
    );
    assert_eq!(
        server.ok(&json!({"command":"list"})),
        json!({"apps": []}),
        "nothing was deployed"
    );

    // From a file, plus `--env KEY` taken from ctl's own environment.
    let args = deploy_args(&["--env-file", &env_file_s, "--env", "FROM_ENV"]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = ctl(&server, &refs, "", &[("FROM_ENV", "inherited-value")]);
    assert_eq!(out.code, 0, "ctl deploy --env-file: {out:?}");
    let env = app_env(&server, "web");
    assert_eq!(env["DB_PASSWORD"], json!(secret), "{env}");
    assert_eq!(env["QUOTED"], json!("two words"), "{env}");
    assert_eq!(env["FROM_ENV"], json!("inherited-value"), "{env}");

    // update-secrets from stdin, applied by a reload.
    let out = ctl(
        &server,
        &["update-secrets", "web", "--secrets-file", "-"],
        "API_KEY=from-stdin-42\n# comment\nDB_PASSWORD=rotated\n",
        &[],
    );
    assert_eq!(out.code, 0, "update-secrets from stdin: {out:?}");
    let out = ctl(&server, &["reload", "web"], "", &[]);
    assert_eq!(out.code, 0, "reload: {out:?}");
    let env = wait_for(
        Duration::from_secs(20),
        "the new secrets in the app",
        || {
            let env = app_env(&server, "web");
            (env["API_KEY"] == json!("from-stdin-42")).then_some(env)
        },
    );
    assert_eq!(env["DB_PASSWORD"], json!("rotated"), "{env}");
    assert_eq!(env["QUOTED"], json!("two words"), "kept: {env}");

    // The positional KEY=VALUE form of update-secrets is refused too.
    let out = ctl(
        &server,
        &["update-secrets", "web", "API_KEY=on-argv-77"],
        "",
        &[],
    );
    assert_ne!(
        out.code, 0,
        "update-secrets KEY=VALUE must be refused: {out:?}"
    );
    assert!(out.stderr.contains("--secrets-file"), "{out:?}");
    assert!(!out.stderr.contains("on-argv-77"), "{out:?}");

    // A malformed file is refused with its line number, never its content.
    let bad = server.data_dir.join("bad.env");
    fs::write(&bad, "GOOD=1\nthis line has no equals sign sekrit\n").expect("write bad env");
    let bad_s = bad.display().to_string();
    let out = ctl(
        &server,
        &["update-secrets", "web", "--secrets-file", &bad_s],
        "",
        &[],
    );
    assert_ne!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains(":2:"), "names the line: {out:?}");
    assert!(!out.stderr.contains("sekrit"), "{out:?}");
}

#[test]
fn failed_install_output_does_not_echo_secret_values() {
    let server = Server::start_default();
    let secret = format!("s3cr3t-token-{}", std::process::id());
    let path = release_with_install(
        &server,
        "web",
        "v1",
        "echo \"connecting with $API_TOKEN to $APP_MODE\" >&2; exit 3",
    );
    let msg = server.err(&deploy_json(
        &path,
        "web",
        "v1",
        &[("API_TOKEN", &secret), ("APP_MODE", "x")],
    ));
    assert!(
        msg.starts_with("Invalid app release: Release dependency install failed"),
        "{msg}"
    );
    assert!(
        !msg.contains(&secret),
        "the deploy error echoes the secret: {msg}"
    );
    assert!(
        msg.contains("connecting with"),
        "the rest of the output stays: {msg}"
    );
    // A value of one character is not worth hiding and would mangle the output.
    assert!(msg.contains(" to x"), "{msg}");
    // The server's own log (the journal under systemd) does not carry it either.
    wait_for(Duration::from_secs(5), "the install's log line", || {
        server
            .stderr_text()
            .contains("install finished")
            .then_some(())
    });
    let log = server.stderr_text();
    assert!(
        !log.contains(&secret),
        "the server log echoes the secret:\n{log}"
    );

    // The same for an app that prints its env and dies during startup.
    let printing_app =
        "import os, sys\nsys.stderr.write('token=' + os.environ['API_TOKEN'] + '\\n')\nsys.exit(4)\n";
    let path = fixture::write_release_with(
        &server.data_dir,
        "api",
        "v1",
        server.deploy_owner(),
        printing_app,
        fixture::APP_JSON,
    );
    let msg = server.err(&deploy_json(&path, "api", "v1", &[("API_TOKEN", &secret)]));
    assert!(msg.contains("token="), "{msg}");
    assert!(
        !msg.contains(&secret),
        "the startup error echoes the secret: {msg}"
    );
    let log = server.stderr_text();
    assert!(
        !log.contains(&secret),
        "the server log echoes the secret:\n{log}"
    );
}
