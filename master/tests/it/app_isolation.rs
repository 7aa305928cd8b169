//! Issue 18, apps: every app under a uid and gid of its own, allocated from
//! `--app-uid-range`, with a private HOME; one app can neither read another's environment
//! nor signal it; every process of an app, detached helpers included, ends with `delete`,
//! with server shutdown and with a failed install. Root only: the harness runs the server
//! as root so that privilege separation is on.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::time::Duration;

use crate::common::fixture;
use crate::common::{procfs, users, wait_for, Server, ServerOpts};
use crate::python_app;
use serde_json::{json, Value};

/// A process must be gone within this long of the order that ends it.
const GONE_WITHIN: Duration = Duration::from_secs(20);

/// The isolation probe: `/id` (who am I, HOME), `/read?path=` (read a file), `/write?path=`
/// (create a file), `/kill?pid=&sig=` (signal a process), `/helper` (start a helper in a
/// session of its own, which outlives the request and the instance's process group).
const PROBE_PY: &str = python_app!(
    r#"import http.server, json, os, socketserver, subprocess, urllib.parse

def attempt(f):
    try:
        return {"ok": True, "value": f()}
    except Exception as e:
        return {"ok": False, "error": type(e).__name__ + ": " + str(e)}

def read(path):
    with open(path, "rb") as f:
        return f.read(4096).decode("utf-8", "replace")

def write(path):
    with open(path, "w") as f:
        f.write("written by uid %d\n" % os.getuid())
    return path

def helper():
    p = subprocess.Popen(["sleep", "1000"], start_new_session=True,
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    return p.pid

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_GET(self):
        url = urllib.parse.urlparse(self.path)
        q = dict(urllib.parse.parse_qsl(url.query))
        if url.path == "/status":
            out = "ok"
        elif url.path == "/id":
            out = {"pid": os.getpid(), "uid": os.getuid(), "gid": os.getgid(),
                   "groups": os.getgroups(), "home": os.environ.get("HOME"),
                   "cache": os.environ.get("XDG_CACHE_HOME")}
        elif url.path == "/read":
            out = attempt(lambda: read(q["path"]))
        elif url.path == "/write":
            out = attempt(lambda: write(q["path"]))
        elif url.path == "/kill":
            out = attempt(lambda: os.kill(int(q["pid"]), int(q.get("sig", "0"))))
        elif url.path == "/helper":
            out = attempt(helper)
        else:
            out = {"error": "unknown path"}
        body = (out if isinstance(out, str) else json.dumps(out)).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

"#
);

const PROBE_JSON: &str = r#"{"runtime":"node","main":"server.py","start":["python3","{main}"]}"#;

fn root_server() -> Server {
    users::require_root("app isolation");
    Server::start(ServerOpts::default())
}

fn host(app: &str) -> String {
    format!("{app}.example.com")
}

/// Deploys the probe as `app` with `env`, one instance.
fn deploy_probe(server: &Server, app: &str, version: &str, env: &[(&str, &str)]) -> Value {
    let path = fixture::write_release_with(
        &server.data_dir,
        app,
        version,
        server.deploy_owner(),
        PROBE_PY,
        PROBE_JSON,
    );
    let env: serde_json::Map<String, Value> =
        env.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
    server.ok(&json!({
        "command": "deploy", "app": app, "version": version,
        "path": path.display().to_string(), "routes": [host(app)],
        "env": env, "instances": 1, "idle_timeout": 300
    }))
}

/// `GET <path>` on the app, as JSON.
fn ask(server: &Server, app: &str, path: &str) -> Value {
    let resp = server
        .app_get(&host(app), path)
        .unwrap_or_else(|e| panic!("GET {path} on {app}: {e}"));
    assert_eq!(resp.status, 200, "GET {path} on {app}: {}", resp.text());
    resp.json()
}

fn id_of(server: &Server, app: &str) -> Value {
    ask(server, app, "/id")
}

fn uid_of(server: &Server, app: &str) -> u32 {
    id_of(server, app)["uid"].as_u64().expect("uid") as u32
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'/' | b'-' | b'_' | b'.' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Whether the process is gone (or a zombie about to be reaped).
fn gone(pid: i32) -> bool {
    procfs::status(pid).is_none_or(|st| st.state == 'Z')
}

fn wait_gone(pid: i32, what: &str) {
    wait_for(GONE_WITHIN, what, || gone(pid).then_some(()));
}

/// Starts a detached helper in the app and returns its pid, checked alive and of the app.
fn start_helper(server: &Server, app: &str) -> i32 {
    let out = ask(server, app, "/helper");
    assert_eq!(out["ok"], json!(true), "helper did not start: {out}");
    let pid = out["value"].as_i64().expect("helper pid") as i32;
    let st = procfs::status(pid).expect("the helper runs");
    assert_eq!(st.uid(), uid_of(server, app), "the helper runs as the app");
    pid
}

#[test]
fn apps_run_under_distinct_uids() {
    let mut server = root_server();
    deploy_probe(&server, "alpha", "v1", &[]);
    deploy_probe(&server, "beta", "v1", &[]);
    let app_user = users::user(users::APP_USER);
    let (first, last) = server.app_uid_range;
    let range = first..=last;
    let (a, b) = (id_of(&server, "alpha"), id_of(&server, "beta"));
    let (ua, ub) = (
        a["uid"].as_u64().unwrap() as u32,
        b["uid"].as_u64().unwrap() as u32,
    );
    assert_ne!(ua, ub, "two apps share a uid: {a} {b}");
    for (id, uid) in [(&a, ua), (&b, ub)] {
        assert!(range.contains(&uid), "uid {uid} outside {range:?}: {id}");
        assert_eq!(id["gid"].as_u64(), Some(uid as u64), "gid equals uid: {id}");
        assert!(
            nix::unistd::User::from_uid(uid.into())
                .ok()
                .flatten()
                .is_none(),
            "uid {uid} belongs to an account on the host"
        );
        let groups: Vec<u64> = serde_json::from_value(id["groups"].clone()).unwrap();
        assert!(
            groups.contains(&(app_user.gid as u64)),
            "every app carries the --app-user group {}: {id}",
            app_user.gid
        );
    }

    server.restart();
    let a2 = wait_for(Duration::from_secs(30), "alpha back after restart", || {
        server
            .app_get(&host("alpha"), "/id")
            .ok()
            .filter(|r| r.status == 200)
    })
    .json();
    assert_eq!(
        a2["uid"].as_u64(),
        Some(ua as u64),
        "uid stable across a restart"
    );
    wait_for(Duration::from_secs(30), "beta back after restart", || {
        server
            .app_get(&host("beta"), "/id")
            .ok()
            .filter(|r| r.status == 200)
    });
    assert_eq!(uid_of(&server, "beta"), ub, "uid stable across a restart");

    deploy_probe(&server, "alpha", "v2", &[]);
    assert_eq!(uid_of(&server, "alpha"), ua, "uid stable across a redeploy");
}

#[test]
fn app_cannot_read_another_apps_environ() {
    let server = root_server();
    deploy_probe(
        &server,
        "alpha",
        "v1",
        &[("SECRET_TOKEN", "s3cr3t-alpha-value")],
    );
    deploy_probe(&server, "beta", "v1", &[]);
    let pid = id_of(&server, "alpha")["pid"].as_i64().unwrap();
    // The app itself can read its own.
    let own = ask(&server, "alpha", &format!("/read?path=/proc/{pid}/environ"));
    assert!(own.to_string().contains("s3cr3t-alpha-value"), "{own}");
    let out = ask(&server, "beta", &format!("/read?path=/proc/{pid}/environ"));
    assert_eq!(out["ok"], json!(false), "beta read alpha's environ: {out}");
    assert!(!out.to_string().contains("s3cr3t-alpha-value"));
}

#[test]
fn app_cannot_signal_another_app() {
    let server = root_server();
    deploy_probe(&server, "alpha", "v1", &[]);
    deploy_probe(&server, "beta", "v1", &[]);
    let pid = id_of(&server, "alpha")["pid"].as_i64().unwrap();
    for sig in [0, libc::SIGTERM] {
        let out = ask(&server, "beta", &format!("/kill?pid={pid}&sig={sig}"));
        assert_eq!(
            out["ok"],
            json!(false),
            "beta signalled alpha ({sig}): {out}"
        );
        assert!(
            out["error"]
                .as_str()
                .unwrap_or("")
                .contains("PermissionError"),
            "{out}"
        );
    }
    assert!(!gone(pid as i32), "alpha still runs");
}

#[test]
fn detached_helper_dies_with_delete() {
    let server = root_server();
    deploy_probe(&server, "alpha", "v1", &[]);
    deploy_probe(&server, "beta", "v1", &[]);
    let helper = start_helper(&server, "alpha");
    let other = start_helper(&server, "beta");
    server.ok(&json!({"command": "delete", "app": "alpha"}));
    wait_gone(helper, "alpha's detached helper to die with delete");
    assert!(!gone(other), "beta's helper is not alpha's to end");
    let beta = server
        .app_get(&host("beta"), "/status")
        .expect("beta answers");
    assert_eq!(
        (beta.status, beta.text()),
        (200, "ok".to_string()),
        "beta still serves"
    );
}

#[test]
fn detached_helper_dies_with_stop() {
    let server = root_server();
    deploy_probe(&server, "alpha", "v1", &[]);
    let helper = start_helper(&server, "alpha");
    server.ok(&json!({"command": "stop", "app": "alpha"}));
    wait_gone(helper, "alpha's detached helper to die with stop");
}

#[test]
fn detached_helper_dies_with_server_shutdown() {
    let mut server = root_server();
    deploy_probe(&server, "alpha", "v1", &[]);
    let helper = start_helper(&server, "alpha");
    let st = server.stop();
    assert_eq!(crate::common::exit_code(st), 0, "{}", server.stderr_text());
    wait_gone(helper, "alpha's detached helper to die with the server");
}

#[test]
fn failed_install_leaves_no_process() {
    let server = root_server();
    let drop_box = server.data_dir.join("dropbox");
    fs::create_dir_all(&drop_box).unwrap();
    fs::set_permissions(&drop_box, fs::Permissions::from_mode(0o1777)).unwrap();
    let pid_file = drop_box.join("helper.pid");
    let install = format!(
        "setsid sh -c 'echo $$ > {}; exec sleep 1000' </dev/null >/dev/null 2>&1 & \
         for i in $(seq 100); do [ -s {} ] && break; sleep 0.05; done; exit 3",
        pid_file.display(),
        pid_file.display()
    );
    let manifest = json!({
        "runtime": "node", "main": "server.py", "start": ["python3", "{main}"],
        "install": install,
    })
    .to_string();
    let path = fixture::write_release_with(
        &server.data_dir,
        "alpha",
        "v1",
        server.deploy_owner(),
        PROBE_PY,
        &manifest,
    );
    let err = server.err(&json!({
        "command": "deploy", "app": "alpha", "version": "v1",
        "path": path.display().to_string(), "routes": [host("alpha")],
        "env": {}, "instances": 1, "idle_timeout": 300
    }));
    assert!(err.contains("failed"), "{err}");
    let pid: i32 = fs::read_to_string(&pid_file)
        .expect("the install wrote its helper's pid")
        .trim()
        .parse()
        .expect("a pid");
    wait_gone(pid, "the failed install's detached helper to die");
}

#[test]
fn each_app_has_its_own_private_home() {
    let server = root_server();
    deploy_probe(&server, "alpha", "v1", &[]);
    deploy_probe(&server, "beta", "v1", &[]);
    let (a, b) = (id_of(&server, "alpha"), id_of(&server, "beta"));
    let homes = server.data_dir.join("app-homes");
    let md = fs::metadata(&homes).expect("app-homes exists");
    assert_eq!(
        (md.uid(), md.mode() & 0o7777),
        (0, 0o755),
        "app-homes is root's, 0755"
    );
    for (app, id) in [("alpha", &a), ("beta", &b)] {
        let home = PathBuf::from(id["home"].as_str().expect("HOME"));
        assert_eq!(home, homes.join(app), "{app}'s HOME");
        let md = fs::symlink_metadata(&home).expect("the home exists");
        assert!(md.is_dir());
        assert_eq!(
            md.uid() as u64,
            id["uid"].as_u64().unwrap(),
            "{app} owns its home"
        );
        assert_eq!(md.mode() & 0o7777, 0o700, "{app}'s home is private");
        let cache = PathBuf::from(id["cache"].as_str().expect("XDG_CACHE_HOME"));
        assert!(
            cache.starts_with(&home),
            "{app}'s cache is in its home: {id}"
        );
    }
    let a_home = homes.join("alpha");
    let secret = a_home.join("secret.txt");
    let w = ask(
        &server,
        "alpha",
        &format!("/write?path={}", encode(&secret.display().to_string())),
    );
    assert_eq!(w["ok"], json!(true), "alpha writes its home: {w}");
    let r = ask(
        &server,
        "beta",
        &format!("/read?path={}", encode(&secret.display().to_string())),
    );
    assert_eq!(r["ok"], json!(false), "beta read alpha's home: {r}");
    let planted = a_home.join("planted.txt");
    let w = ask(
        &server,
        "beta",
        &format!("/write?path={}", encode(&planted.display().to_string())),
    );
    assert_eq!(w["ok"], json!(false), "beta wrote into alpha's home: {w}");
    // Neither may write the release, the deploy user's.
    let rel = server.data_dir.join("apps/alpha/releases/v1/x");
    let w = ask(
        &server,
        "alpha",
        &format!("/write?path={}", encode(&rel.display().to_string())),
    );
    assert_eq!(w["ok"], json!(false), "alpha wrote into its release: {w}");

    server.ok(&json!({"command": "delete", "app": "alpha"}));
    wait_for(
        Duration::from_secs(10),
        "alpha's home removed with delete",
        || (!a_home.exists()).then_some(()),
    );
}
