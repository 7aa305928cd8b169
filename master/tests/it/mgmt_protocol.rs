//! Issue 3: the management socket. Framing, envelope, authorization, the upgrade gate, every
//! validation rule with its text, every command's success and error shapes, and
//! `tako-server ctl`. Documented in docs/management-protocol.md and docs/cli.md,
//! "tako-server ctl".

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::common::users::{self, DEPLOY_USER};
use crate::common::{wait_for, Mgmt, Server, ServerOpts, BIN};
use serde_json::{json, Value};

const CAPABILITIES: [&str; 10] = [
    "deploy_instances_idle_timeout",
    "on_demand_cold_start",
    "idle_scale_to_zero",
    "upgrade_mode_control",
    "server_runtime_info",
    "release_history",
    "rollback",
    "restart_workers",
    "processes",
    "reload_certs",
];

/// A refused command must leave no app and no route behind.
fn assert_no_apps(server: &Server, after: &str) {
    let list = server.ok(&json!({"command":"list"}));
    assert_eq!(list, json!({"apps": []}), "after {after}: list");
    let routes = server.ok(&json!({"command":"routes"}));
    assert_eq!(routes, json!({"routes": []}), "after {after}: routes");
}

fn deploy_raw(
    app: &str,
    version: &str,
    path: &str,
    routes: Value,
    instances: Value,
    env: Value,
) -> Value {
    json!({"command":"deploy","app":app,"version":version,"path":path,"routes":routes,
           "env":env,"instances":instances,"idle_timeout":300})
}

/// Sends each deploy and expects its exact error text, then that nothing changed.
fn expect_deploy_errors(server: &Server, cases: &[(Value, String)]) {
    let mut m = server.mgmt();
    let mut wrong = Vec::new();
    for (cmd, expected) in cases {
        let resp = m.request(cmd);
        let got = resp["message"].as_str().unwrap_or("");
        if resp["status"] != "error" || got != expected {
            wrong.push(format!("{cmd}\n    expected: {expected}\n    got: {resp}"));
        }
    }
    assert!(wrong.is_empty(), "wrong answers:\n{}", wrong.join("\n"));
    assert_no_apps(server, "refused deploys");
}

#[test]
fn hello_answers_capabilities_and_versions() {
    let server = Server::start_default();
    let data = server.ok(&json!({"command":"hello","protocol_version":3}));
    assert_eq!(
        data,
        json!({"capabilities": CAPABILITIES, "protocol_version": 3, "server_version": "0.1.0"})
    );
}

#[test]
fn hello_protocol_mismatch() {
    let server = Server::start_default();
    let mut m = server.mgmt();
    for v in [2, 4] {
        let msg = m.err(&json!({"command":"hello","protocol_version":v}));
        assert_eq!(
            msg,
            format!("Protocol version mismatch: client={v} server=3")
        );
    }
    // The connection stays usable and hello is optional.
    m.ok(&json!({"command":"list"}));
}

#[test]
fn server_info_reports_effective_settings() {
    let server = Server::start_default();
    let info = server.ok(&json!({"command":"server_info"}));
    let root = users::is_root();
    let expect = [
        ("acme_email", Value::Null),
        ("acme_staging", json!(false)),
        ("data_dir", json!(server.data_dir.display().to_string())),
        ("http_port", json!(server.http_port)),
        ("https_port", json!(server.tls_port)),
        ("instance_port_offset", json!(server.offset)),
        ("listen", json!(["127.0.0.1"])),
        ("mode", json!("normal")),
        ("no_acme", json!(true)),
        ("privilege_separation", json!(root)),
        ("renewal_interval_hours", json!(12)),
        ("role", json!("primary")),
        ("server_version", json!("0.1.0")),
        ("socket", json!(server.socket.display().to_string())),
        ("trusted_proxies", json!(["127.0.0.0/8", "::1/128"])),
        ("upgrade_owner", Value::Null),
        ("workers", json!(2)),
        ("proxy_user", json!("tako-proxy")),
        ("app_user", json!("tako-app")),
        ("deploy_user", json!("tako")),
    ];
    for (k, v) in expect {
        assert_eq!(info[k], v, "server_info.{k} in {info}");
    }
    assert!(info["acme_directory"].is_string(), "{info}");
}

#[test]
fn malformed_lines_get_errors_and_the_connection_stays_usable() {
    let server = Server::start_default();
    let mut m = server.mgmt();
    let err_of = |line: &str| -> String {
        let v = crate::common::mgmt::parse_response(line);
        assert_eq!(v["status"], "error", "expected an error: {line}");
        v["message"].as_str().unwrap_or("").to_string()
    };
    let msg = err_of(&m.raw(b"not json").expect("answer"));
    assert_eq!(msg, "Invalid command: expected ident at line 1 column 2");

    let msg = err_of(&m.raw(b"\n").expect("answer to an empty line"));
    assert!(msg.starts_with("Invalid command: "), "{msg}");

    let msg = err_of(&m.raw(br#"{"command":"xyz"}"#).expect("answer"));
    assert!(
        msg.starts_with("Invalid command: unknown variant `xyz`, expected one of `hello`"),
        "{msg}"
    );
    let msg = err_of(&m.raw(br#"{"command":"status"}"#).expect("answer"));
    assert!(
        msg.starts_with("Invalid command: ") && msg.contains("app"),
        "{msg}"
    );
    let msg = err_of(&m.raw(br#"{"command":"status","app":5}"#).expect("answer"));
    assert!(msg.starts_with("Invalid command: "), "{msg}");
    let msg = err_of(
        &m.raw(b"{\"command\":\"status\",\"app\":\"\xff\"}")
            .expect("answer"),
    );
    assert!(msg.starts_with("Invalid command: "), "invalid UTF-8: {msg}");
    let msg = err_of(&m.raw(b"[1,2]").expect("answer"));
    assert!(msg.starts_with("Invalid command: "), "{msg}");
    let msg = err_of(&m.raw(br#"{"protocol_version":3}"#).expect("answer"));
    assert!(
        msg.starts_with("Invalid command: "),
        "no command tag: {msg}"
    );
    let big = m.err(&json!({
        "command":"deploy","app":"web","version":"v1","path":"/x","routes":["a.com"],
        "instances":256,"idle_timeout":300}));
    assert!(
        big.starts_with("Invalid command: "),
        "instances 256 is a type error: {big}"
    );
    let neg = m.err(&json!({
        "command":"deploy","app":"web","version":"v1","path":"/x","routes":["a.com"],
        "instances":-1,"idle_timeout":300}));
    assert!(
        neg.starts_with("Invalid command: "),
        "instances -1 is a type error: {neg}"
    );

    // Still the same connection: unknown extra fields are ignored.
    let data = m.ok(&json!({"command":"list","extra":true}));
    assert_eq!(data, json!({"apps": []}));
    m.ok(&json!({"command":"hello","protocol_version":3}));
}

#[test]
fn requests_on_one_connection_are_answered_in_order() {
    let server = Server::start_default();
    let mut m = server.mgmt();
    m.write_only(
        b"{\"command\":\"hello\",\"protocol_version\":3}\n{\"command\":\"list\"}\n{\"command\":\"hello\",\"protocol_version\":9}\n",
    )
    .expect("write three requests");
    let a = crate::common::mgmt::parse_response(&m.read_line().expect("first"));
    let b = crate::common::mgmt::parse_response(&m.read_line().expect("second"));
    let c = crate::common::mgmt::parse_response(&m.read_line().expect("third"));
    assert_eq!(a["data"]["protocol_version"], json!(3), "{a}");
    assert_eq!(b["data"], json!({"apps": []}), "{b}");
    assert_eq!(
        c["message"],
        json!("Protocol version mismatch: client=9 server=3"),
        "{c}"
    );
}

#[test]
fn last_line_without_newline_is_answered_at_eof() {
    let server = Server::start_default();
    let mut m = server.mgmt();
    m.write_only(br#"{"command":"list"}"#).expect("write");
    m.shutdown_write().expect("half-close");
    let v = crate::common::mgmt::parse_response(&m.read_line().expect("answer before close"));
    assert_eq!(v["data"], json!({"apps": []}), "{v}");
}

/// A JSON line of exactly `total` bytes including its newline.
fn padded_list_line(total: usize) -> Vec<u8> {
    let head = br#"{"command":"list","pad":""#;
    let tail = b"\"}\n";
    let pad = total - head.len() - tail.len();
    let mut v = Vec::with_capacity(total);
    v.extend_from_slice(head);
    v.resize(head.len() + pad, b'x');
    v.extend_from_slice(tail);
    assert_eq!(v.len(), total);
    v
}

#[test]
fn line_cap_is_1_mib_and_the_connection_survives() {
    const CAP: usize = 1_048_576;
    let server = Server::start_default();
    let mut m = server.mgmt();
    let at_cap = m.raw(&padded_list_line(CAP)).expect("answer at the cap");
    let v = crate::common::mgmt::parse_response(&at_cap);
    assert_eq!(
        v["status"], "ok",
        "a line of exactly 1 MiB with its newline: {at_cap}"
    );

    for total in [CAP + 1, 3 * CAP] {
        let line = m
            .raw(&padded_list_line(total))
            .expect("answer over the cap");
        let v = crate::common::mgmt::parse_response(&line);
        assert_eq!(
            v["message"],
            json!("Invalid command: json line exceeds max length (1048576 bytes)"),
            "line of {total} bytes: {line}"
        );
        // The rest of the oversize line was discarded: the next request is answered.
        let data = m.ok(&json!({"command":"list"}));
        assert_eq!(data, json!({"apps": []}));
    }
}

#[test]
fn unknown_app_errors() {
    let server = Server::start_default();
    let mut m = server.mgmt();
    let g = "ghost";
    let cases = [
        (json!({"command":"status","app":g}), "App not found: ghost"),
        (json!({"command":"reload","app":g}), "App not found: ghost"),
        (
            json!({"command":"stop","app":g}),
            "Stop failed: App not found: ghost",
        ),
        (
            json!({"command":"update_secrets","app":g,"secrets":{"K":"V"}}),
            "App not found: ghost",
        ),
        (
            json!({"command":"rollback","app":g,"version":"v1"}),
            "App not found: ghost",
        ),
        (
            json!({"command":"list_releases","app":g}),
            "App not found: ghost",
        ),
    ];
    for (cmd, expected) in cases {
        assert_eq!(m.err(&cmd), expected, "{cmd}");
    }
    let data = m.ok(&json!({"command":"delete","app":g}));
    assert_eq!(
        data,
        json!({"app":"ghost","existed":false,"status":"deleted"})
    );
    assert_no_apps(&server, "commands on an unknown app");
}

#[test]
fn app_name_rules() {
    let server = Server::start_default();
    let long = "a".repeat(64);
    let cases = [
        ("", "Invalid app name: must not be empty"),
        (
            long.as_str(),
            "Invalid app name: must be at most 63 characters",
        ),
        (
            "1web",
            "Invalid app name: must start with a lowercase letter",
        ),
        (
            "-web",
            "Invalid app name: must start with a lowercase letter",
        ),
        (
            "Web",
            "Invalid app name: must start with a lowercase letter",
        ),
        (
            "web_app",
            "Invalid app name: only lowercase letters, digits and '-' are allowed",
        ),
        (
            "wEb",
            "Invalid app name: only lowercase letters, digits and '-' are allowed",
        ),
        (
            "web.app",
            "Invalid app name: only lowercase letters, digits and '-' are allowed",
        ),
        ("web-", "Invalid app name: must not end with '-'"),
    ];
    let mut m = server.mgmt();
    for (name, expected) in cases {
        for cmd in [
            json!({"command":"status","app":name}),
            json!({"command":"stop","app":name}),
            json!({"command":"delete","app":name}),
            json!({"command":"list_releases","app":name}),
            deploy_raw(
                name,
                "v1",
                "/tmp",
                json!(["a.example.com"]),
                json!(1),
                json!({}),
            ),
        ] {
            let got = m.err(&cmd);
            assert!(
                got == expected || got.ends_with(expected),
                "{cmd}: expected {expected:?}, got {got:?}"
            );
        }
    }
    // 63 characters is fine: the status of such an app is simply not found.
    let ok63 = "a".repeat(63);
    assert_eq!(
        m.err(&json!({"command":"status","app":ok63})),
        format!("App not found: {ok63}")
    );
    assert_no_apps(&server, "invalid app names");
}

#[test]
fn release_version_rules() {
    let server = Server::start_default();
    let path = server.release("web", "v1").display().to_string();
    let long = "v".repeat(129);
    let cases = [
        ("", "Invalid release version: must not be empty"),
        (
            long.as_str(),
            "Invalid release version: must be at most 128 characters",
        ),
        (".", "Invalid release version: '.' and '..' are not allowed"),
        (
            "..",
            "Invalid release version: '.' and '..' are not allowed",
        ),
        (
            "v 1",
            "Invalid release version: only letters, digits, '.', '_' and '-' are allowed",
        ),
        (
            "v/1",
            "Invalid release version: only letters, digits, '.', '_' and '-' are allowed",
        ),
        (
            "v1+x",
            "Invalid release version: only letters, digits, '.', '_' and '-' are allowed",
        ),
    ];
    let cases: Vec<(Value, String)> = cases
        .iter()
        .map(|(v, e)| {
            (
                deploy_raw(
                    "web",
                    v,
                    &path,
                    json!(["web.example.com"]),
                    json!(1),
                    json!({}),
                ),
                e.to_string(),
            )
        })
        .collect();
    expect_deploy_errors(&server, &cases);
}

#[test]
fn release_path_rules() {
    let server = Server::start_default();
    let release = server.release("web", "v1");
    server.release("other", "v1");
    let root = fs::canonicalize(server.data_dir.join("apps/web/releases"))
        .expect("canonical releases root");
    let root_s = root.display().to_string();
    let escape = root.join("escape");
    std::os::unix::fs::symlink("/tmp", &escape).expect("symlink out of the root");
    let p = |x: &Path| x.display().to_string();
    let under = |given: &str| format!("Invalid release path: '{given}' must stay under '{root_s}'");
    let missing = p(&root.join("nope"));
    let file = p(&release.join("app.json"));
    let dotdot = format!("{}/../..", p(&release));
    let other = p(&server.data_dir.join("apps/other/releases/v1"));
    let cases = vec![
        (
            "releases/v1".to_string(),
            "Invalid release path: 'releases/v1' must be absolute".to_string(),
        ),
        (
            missing.clone(),
            format!("Invalid release path: '{missing}' is not a directory"),
        ),
        (
            file.clone(),
            format!("Invalid release path: '{file}' is not a directory"),
        ),
        ("/tmp".to_string(), under("/tmp")),
        (root_s.clone(), under(&root_s)),
        (dotdot.clone(), under(&dotdot)),
        // Root never follows a symlink below the releases root, wherever it points.
        (
            p(&escape),
            format!("Invalid release path: '{}' is a symbolic link", p(&escape)),
        ),
        (other.clone(), under(&other)),
    ];
    let cases: Vec<(Value, String)> = cases
        .into_iter()
        .map(|(path, e)| {
            (
                deploy_raw(
                    "web",
                    "v1",
                    &path,
                    json!(["web.example.com"]),
                    json!(1),
                    json!({}),
                ),
                e,
            )
        })
        .collect();
    expect_deploy_errors(&server, &cases);
}

#[test]
fn instances_limit() {
    let server = Server::start_default();
    let path = server.release("web", "v1").display().to_string();
    let cases: Vec<(Value, String)> = [33, 255]
        .iter()
        .map(|n| {
            (
                deploy_raw(
                    "web",
                    "v1",
                    &path,
                    json!(["web.example.com"]),
                    json!(n),
                    json!({}),
                ),
                "Deploy rejected: instances must be at most 32".to_string(),
            )
        })
        .collect();
    expect_deploy_errors(&server, &cases);
}

#[test]
fn route_rules() {
    let server = Server::start_default();
    let path = server.release("web", "v1").display().to_string();
    let r = |route: &str, msg: &str| -> (Value, String) {
        (
            deploy_raw(
                "web",
                "v1",
                &path,
                json!(["ok.example.com", route]),
                json!(1),
                json!({}),
            ),
            msg.replace("<r>", route),
        )
    };
    let many: Vec<String> = (0..101).map(|i| format!("r{i}.example.com")).collect();
    let long_route = format!("example.com/{}", "a".repeat(1013)); // 1025 bytes
    let long_label = format!("{}.example.com", "a".repeat(64));
    let spaces = "Invalid route '<r>': must be at most 1024 characters without spaces";
    let mut cases = vec![
        (
            deploy_raw("web", "v1", &path, json!([]), json!(1), json!({})),
            "Deploy rejected: app must define at least one route".to_string(),
        ),
        (
            deploy_raw(
                "web",
                "v1",
                &path,
                json!(["ok.example.com", "   "]),
                json!(1),
                json!({}),
            ),
            "Deploy rejected: routes must be non-empty values".to_string(),
        ),
        (
            deploy_raw("web", "v1", &path, json!([""]), json!(1), json!({})),
            "Deploy rejected: routes must be non-empty values".to_string(),
        ),
        (
            deploy_raw("web", "v1", &path, json!(many), json!(1), json!({})),
            "Deploy rejected: at most 100 routes per app".to_string(),
        ),
        r("a b.example.com", spaces),
        r("example.com/a\tb", spaces),
        r(&long_route, spaces),
        r("/api", "Invalid route '<r>': missing host"),
        r(
            "-bad.example.com",
            "Invalid route '<r>': invalid host '-bad.example.com'",
        ),
        r(
            "bad-.example.com",
            "Invalid route '<r>': invalid host 'bad-.example.com'",
        ),
        r(
            "a_b.example.com",
            "Invalid route '<r>': invalid host 'a_b.example.com'",
        ),
        r(
            "a..example.com",
            "Invalid route '<r>': invalid host 'a..example.com'",
        ),
        r(
            &long_label,
            &format!("Invalid route '<r>': invalid host '{long_label}'"),
        ),
        r(
            "a*.example.com",
            "Invalid route '<r>': '*' is only allowed as a leading '*.' label",
        ),
        r(
            "www.*.example.com",
            "Invalid route '<r>': '*' is only allowed as a leading '*.' label",
        ),
        r("example.com:0", "Invalid route '<r>': invalid port"),
        r("example.com:65536", "Invalid route '<r>': invalid port"),
        r(
            "tako.internal",
            "Invalid route '<r>': host 'tako.internal' is reserved",
        ),
        r(
            "tako.internal/x",
            "Invalid route '<r>': host 'tako.internal' is reserved",
        ),
        r(
            "example.com/a?b",
            "Invalid route '<r>': invalid path '/a?b'",
        ),
        r(
            "example.com/a#b",
            "Invalid route '<r>': invalid path '/a#b'",
        ),
        r(
            "example.com/a*/b",
            "Invalid route '<r>': invalid path '/a*/b'",
        ),
    ];
    // A 254-character host (valid labels) is too long.
    let host254 = format!(
        "{}.{}.{}.{}",
        "a".repeat(63),
        "b".repeat(63),
        "c".repeat(63),
        "d".repeat(62)
    );
    assert_eq!(host254.len(), 254);
    cases.push(r(
        &host254,
        &format!("Invalid route '<r>': invalid host '{host254}'"),
    ));
    expect_deploy_errors(&server, &cases);
}

#[test]
fn environment_rules() {
    let server = Server::start_default();
    let path = server.release("web", "v1").display().to_string();
    let d = |env: Value| {
        deploy_raw(
            "web",
            "v1",
            &path,
            json!(["web.example.com"]),
            json!(1),
            env,
        )
    };
    let cases = vec![
        (
            d(json!({"": "x"})),
            "Invalid environment variable name ''".to_string(),
        ),
        (
            d(json!({"A=B": "x"})),
            "Invalid environment variable name 'A=B'".to_string(),
        ),
        (
            d(json!({"A\u{0}B": "x"})),
            "Invalid environment variable name 'A\u{0}B'".to_string(),
        ),
        (
            d(json!({"K": "a\u{0}b"})),
            "Invalid value for environment variable 'K': contains a NUL byte".to_string(),
        ),
    ];
    expect_deploy_errors(&server, &cases);
}

#[test]
fn upgrade_owner_rules() {
    let server = Server::start_default();
    let mut m = server.mgmt();
    let long = "o".repeat(129);
    for owner in ["", "a b", "a/b", "ü", long.as_str()] {
        for command in ["enter_upgrading", "exit_upgrading"] {
            let msg = m.err(&json!({"command":command,"owner":owner}));
            assert_eq!(
                msg, "Invalid upgrade owner: must be 1-128 letters, digits, '.', '_' or '-'",
                "{command} owner {owner:?}"
            );
        }
    }
    let info = m.ok(&json!({"command":"server_info"}));
    assert_eq!(info["mode"], json!("normal"));
    let ok128 = "o".repeat(128);
    let data = m.ok(&json!({"command":"enter_upgrading","owner":ok128}));
    assert_eq!(data, json!({"owner": ok128, "status": "upgrading"}));
    let data = m.ok(&json!({"command":"exit_upgrading","owner":ok128}));
    assert_eq!(data, json!({"owner": ok128, "status": "normal"}));
}

#[test]
fn upgrade_lock_and_gate() {
    let server = Server::start_default();
    let mut m = server.mgmt();
    let data = m.ok(&json!({"command":"enter_upgrading","owner":"ci-1.a_b"}));
    assert_eq!(data, json!({"owner":"ci-1.a_b","status":"upgrading"}));
    // Re-entering by the holder is fine; another owner is refused.
    m.ok(&json!({"command":"enter_upgrading","owner":"ci-1.a_b"}));
    assert_eq!(
        m.err(&json!({"command":"enter_upgrading","owner":"ci-2"})),
        "Server is already upgrading (owner: ci-1.a_b)."
    );
    let info = m.ok(&json!({"command":"server_info"}));
    assert_eq!(info["mode"], json!("upgrading"), "{info}");
    assert_eq!(info["upgrade_owner"], json!("ci-1.a_b"), "{info}");

    // Gated commands are refused before validation: the app name is invalid on purpose.
    let gate = |c: &str| {
        format!("Server is upgrading; '{c}' is temporarily blocked. Please retry shortly.")
    };
    let gated = [
        (
            deploy_raw("BAD", "..", "rel", json!([]), json!(40), json!({})),
            gate("deploy"),
        ),
        (json!({"command":"stop","app":"BAD"}), gate("stop")),
        (json!({"command":"delete","app":"BAD"}), gate("delete")),
        (
            json!({"command":"rollback","app":"BAD","version":".."}),
            gate("rollback"),
        ),
        (json!({"command":"reload","app":"BAD"}), gate("reload")),
        (
            json!({"command":"update_secrets","app":"BAD","secrets":{"":"x"}}),
            gate("update-secrets"),
        ),
    ];
    for (cmd, expected) in &gated {
        assert_eq!(&m.err(cmd), expected, "{cmd}");
    }
    // Everything else still works.
    m.ok(&json!({"command":"hello","protocol_version":3}));
    m.ok(&json!({"command":"list"}));
    m.ok(&json!({"command":"routes"}));
    m.ok(&json!({"command":"processes"}));
    assert_eq!(
        m.err(&json!({"command":"status","app":"ghost"})),
        "App not found: ghost"
    );
    assert_eq!(
        m.err(&json!({"command":"list_releases","app":"ghost"})),
        "App not found: ghost"
    );

    let not_holder = "Failed to exit upgrading mode: owner does not hold the upgrade lock.";
    assert_eq!(
        m.err(&json!({"command":"exit_upgrading","owner":"ci-2"})),
        not_holder
    );
    let data = m.ok(&json!({"command":"exit_upgrading","owner":"ci-1.a_b"}));
    assert_eq!(data, json!({"owner":"ci-1.a_b","status":"normal"}));
    assert_eq!(
        m.err(&json!({"command":"exit_upgrading","owner":"ci-1.a_b"})),
        not_holder
    );
    let info = m.ok(&json!({"command":"server_info"}));
    assert_eq!(info["mode"], json!("normal"), "{info}");
    assert_eq!(info["upgrade_owner"], Value::Null, "{info}");
    // The gate is lifted: validation answers again.
    assert_eq!(
        m.err(&json!({"command":"stop","app":"BAD"})),
        "Invalid app name: must start with a lowercase letter"
    );
    assert_no_apps(&server, "the gate");
}

#[test]
fn upgrade_mode_survives_a_restart() {
    let mut server = Server::start_default();
    server.ok(&json!({"command":"enter_upgrading","owner":"ci"}));
    server.restart();
    let info = server.ok(&json!({"command":"server_info"}));
    assert_eq!(info["mode"], json!("upgrading"), "{info}");
    assert_eq!(info["upgrade_owner"], json!("ci"), "{info}");
    assert_eq!(
        server.err(&json!({"command":"reload","app":"web"})),
        "Server is upgrading; 'reload' is temporarily blocked. Please retry shortly."
    );
    server.ok(&json!({"command":"exit_upgrading","owner":"ci"}));
}

#[test]
fn processes_lists_master_launcher_then_workers() {
    let server = Server::start_default();
    server.wait_processes();
    let procs = server.ok(&json!({"command":"processes"}))["processes"]
        .as_array()
        .cloned()
        .expect("processes array");
    assert_eq!(procs.len(), 4, "{procs:?}");
    let roles: Vec<&str> = procs
        .iter()
        .map(|p| p["role"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        roles,
        ["master", "launcher", "worker", "worker"],
        "{procs:?}"
    );
    assert_eq!(procs[0]["pid"], json!(server.pid));
    assert_eq!(procs[0]["generation"], json!(1));
    assert_eq!(procs[0]["index"], Value::Null);
    assert_eq!(procs[1]["index"], Value::Null);
    assert_eq!(procs[2]["index"], json!(0));
    assert_eq!(procs[3]["index"], json!(1));
    for p in &procs {
        for k in ["generation", "pid", "uid", "uptime_secs"] {
            assert!(p[k].is_u64(), "{k} is a number in {p}");
        }
        let st = p["state"].as_str().unwrap_or("");
        assert!(
            ["starting", "ready", "active", "draining"].contains(&st),
            "state {st} in {p}"
        );
    }
    assert_eq!(procs[2]["generation"], json!(1));
}

#[test]
fn socket_mode_and_owner() {
    let server = Server::start_default();
    let meta = fs::metadata(&server.socket).expect("socket exists");
    let mode = meta.permissions().mode() & 0o7777;
    if users::is_root() {
        let tako = users::user(DEPLOY_USER);
        assert_eq!(mode, 0o660, "socket mode {mode:o}");
        assert_eq!(meta.uid(), 0, "socket owner");
        assert_eq!(
            meta.gid(),
            tako.gid,
            "socket group is the deploy user's primary group"
        );
    } else {
        assert_eq!(mode, 0o600, "socket mode {mode:o}");
        assert_eq!(meta.uid(), server.run_ids.0);
    }
    drop(server);

    let server = Server::start(ServerOpts::default().unprivileged());
    let meta = fs::metadata(&server.socket).expect("socket exists");
    assert_eq!(
        meta.permissions().mode() & 0o7777,
        0o600,
        "non-root socket mode"
    );
    assert_eq!(meta.uid(), server.run_ids.0, "non-root socket owner");
}

/// Connects to `socket` as uid/gid, sends hello, prints the response line and then
/// `EOF` if the server closed the connection.
fn hello_as(socket: &Path, uid: u32, gid: u32) -> String {
    let script = r#"
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(10)
s.connect(sys.argv[1])
try:
    s.sendall(b'{"command":"hello","protocol_version":3}\n')
except OSError:
    pass
buf = b""
while not buf.endswith(b"\n"):
    chunk = s.recv(65536)
    if not chunk:
        break
    buf += chunk
sys.stdout.write(buf.decode().strip() + "\n")
try:
    s.sendall(b'{"command":"list"}\n')
    rest = s.recv(65536)
except OSError:
    rest = b""
sys.stdout.write("EOF\n" if not rest else "OPEN\n")
"#;
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(socket)
        .uid(uid)
        .gid(gid)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "client as {uid}:{gid} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn root_socket_refuses_peers_outside_the_deploy_user_and_group() {
    users::require_root("SO_PEERCRED authorization");
    let server = Server::start_default();
    // The 0660 mode already keeps strangers out; open it up so the server's own check is
    // what is tested.
    fs::set_permissions(&server.socket, fs::Permissions::from_mode(0o666)).expect("chmod");
    let nobody = 65534;
    let out = hello_as(&server.socket, nobody, nobody);
    let mut lines = out.lines();
    let first = lines.next().unwrap_or("");
    let v: Value = serde_json::from_str(first).unwrap_or(Value::Null);
    assert_eq!(
        v,
        json!({"status":"error","message":format!("Permission denied: uid {nobody} may not use the management socket")}),
        "refused peer's answer: {out}"
    );
    assert_eq!(lines.next(), Some("EOF"), "the connection is closed: {out}");
    wait_for(
        Duration::from_secs(5),
        "the audit warning for the refused peer",
        || {
            server
                .stderr_text()
                .lines()
                .any(|l| l.contains("WARN") && l.contains("tako::audit") && l.contains("65534"))
                .then_some(())
        },
    );

    // The deploy user, and any uid whose group is the deploy user's primary group, may.
    let tako = users::user(DEPLOY_USER);
    for (uid, gid) in [(tako.uid, tako.gid), (nobody, tako.gid)] {
        let out = hello_as(&server.socket, uid, gid);
        let first = out.lines().next().unwrap_or("");
        assert!(
            first.contains(r#""status":"ok""#) && out.contains("OPEN"),
            "{uid}:{gid} is allowed: {out}"
        );
    }
}

#[test]
fn missing_or_bad_manifest_is_an_invalid_release() {
    let server = Server::start_default();
    let owner = server.deploy_owner();
    let mk = |v: &str, manifest: Option<&str>| -> String {
        let dir = server.data_dir.join("apps/web/releases").join(v);
        fs::create_dir_all(&dir).expect("mkdir");
        if let Some(m) = manifest {
            fs::write(dir.join("app.json"), m).expect("write manifest");
            crate::common::fixture::chown(&dir.join("app.json"), owner);
        }
        for p in [
            server.data_dir.join("apps/web"),
            server.data_dir.join("apps/web/releases"),
            dir.clone(),
        ] {
            crate::common::fixture::chown(&p, owner);
        }
        dir.display().to_string()
    };
    let none = mk("none", None);
    let bad = mk("bad", Some("{not json"));
    let ruby = mk("ruby", Some(r#"{"runtime":"ruby","main":"x.rb"}"#));
    let blank = mk("blank", Some(r#"{"runtime":"node","main":"  "}"#));
    let empty_rt = mk("emptyrt", Some(r#"{"runtime":"","main":"x.js"}"#));
    let d =
        |v: &str, p: &str| deploy_raw("web", v, p, json!(["web.example.com"]), json!(1), json!({}));
    let mut m = server.mgmt();
    assert_eq!(
        m.err(&d("none", &none)),
        format!("Invalid app release: missing deploy manifest {none}/app.json")
    );
    let msg = m.err(&d("bad", &bad));
    assert!(
        msg.starts_with(&format!(
            "Invalid app release: failed to parse deploy manifest {bad}/app.json: "
        )),
        "{msg}"
    );
    assert_eq!(
        m.err(&d("ruby", &ruby)),
        format!(
            "Invalid app release: unsupported runtime 'ruby' in deploy manifest {ruby}/app.json"
        )
    );
    assert_eq!(
        m.err(&d("blank", &blank)),
        format!("Invalid app release: deploy manifest {blank}/app.json has empty main field")
    );
    assert_eq!(
        m.err(&d("emptyrt", &empty_rt)),
        format!("Invalid app release: deploy manifest {empty_rt}/app.json has empty runtime field")
    );
    assert_no_apps(&server, "invalid releases");
}

#[test]
fn every_command_success_shape_through_an_app_lifecycle() {
    let server = Server::start_default();
    server.wait_http_ready();
    let mut m = server.mgmt();
    let routes = ["Web.Example.COM.", "example.com/api/*", "web.example.com"];
    let cmd = server.deploy_cmd("web", "v1", &routes, 1, &[("GREETING", "hi")]);
    let data = m.ok(&cmd);
    assert_eq!(
        data,
        json!({"app":"web","new_app":true,"on_demand":false,"status":"deployed","version":"v1"})
    );
    assert_eq!(
        m.ok(&json!({"command":"list"})),
        json!({"apps":[{"instances":1,"name":"web","state":"running","version":"v1"}]})
    );
    assert_eq!(
        m.ok(&json!({"command":"routes"})),
        json!({"routes":[{"app":"web","routes":["web.example.com","example.com/api/*"]}]}),
        "routes normalized, duplicates dropped, order kept"
    );

    let st = m.ok(&json!({"command":"status","app":"web"}));
    assert_eq!(st["name"], json!("web"), "{st}");
    assert_eq!(st["version"], json!("v1"), "{st}");
    assert_eq!(st["state"], json!("running"), "{st}");
    assert_eq!(st["last_error"], Value::Null, "{st}");
    assert!(st["certificates"].is_array(), "{st}");
    let inst = st["instances"].as_array().cloned().unwrap_or_default();
    assert_eq!(inst.len(), 1, "{st}");
    let i = &inst[0];
    assert_eq!(i["state"], json!("healthy"), "{st}");
    assert_eq!(
        i["port"],
        json!(10000 + server.offset),
        "first app, slot 0: {st}"
    );
    assert!(i["id"].is_u64() && i["pid"].is_u64(), "{st}");
    assert!(
        i["requests_total"].is_u64() && i["uptime_secs"].is_u64(),
        "{st}"
    );
    assert_eq!(
        st["builds"],
        json!([{"instances": st["instances"], "state":"running", "version":"v1"}]),
        "{st}"
    );
    let r = server
        .app_get("web.example.com", "/hello")
        .expect("reach the app");
    assert_eq!(r.status, 200, "{}", r.text());
    let pid1 = r.json()["pid"].clone();

    let rel = m.ok(&json!({"command":"list_releases","app":"web"}));
    assert_eq!(rel["app"], json!("web"), "{rel}");
    let list = rel["releases"].as_array().cloned().unwrap_or_default();
    assert_eq!(list.len(), 1, "{rel}");
    assert_eq!(list[0]["version"], json!("v1"));
    assert_eq!(list[0]["current"], json!(true));
    assert_eq!(list[0]["commit_message"], Value::Null);
    assert_eq!(list[0]["git_dirty"], Value::Null);
    assert!(list[0]["deployed_at_unix_secs"].is_u64(), "{rel}");

    let data = m.ok(&json!({"command":"update_secrets","app":"web","secrets":{"SECRET_A":"s1"}}));
    assert_eq!(
        data,
        json!({"app":"web","note":"Call reload to apply secrets to running instances","status":"updated"})
    );
    let env = server
        .app_get("web.example.com", "/env")
        .expect("app")
        .json();
    assert!(
        env["env"].get("SECRET_A").is_none(),
        "running instances keep their env"
    );

    let data = m.ok(&json!({"command":"reload","app":"web"}));
    assert_eq!(
        data,
        json!({"app":"web","new_instances":1,"old_instances":1,"rolled_back":false,"status":"reloaded"})
    );
    let env = server
        .app_get("web.example.com", "/env")
        .expect("app")
        .json();
    assert_eq!(
        env["env"]["SECRET_A"],
        json!("s1"),
        "reload applies secrets"
    );
    assert_eq!(env["env"]["GREETING"], json!("hi"), "deploy env kept");
    assert_ne!(env["pid"], pid1, "reload replaced the instance");

    let cmd = server.deploy_cmd("web", "v2", &routes, 1, &[("GREETING", "hi")]);
    let data = m.ok(&cmd);
    assert_eq!(
        data,
        json!({"app":"web","new_instances":1,"old_instances":1,"rolled_back":false,"status":"deployed","version":"v2"})
    );
    let r = server
        .app_get("example.com", "/api/x")
        .expect("app on the path route");
    assert_eq!(r.json()["version"], json!("v2"));
    let rel = m.ok(&json!({"command":"list_releases","app":"web"}));
    let versions: Vec<(Value, Value)> = rel["releases"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|r| (r["version"].clone(), r["current"].clone()))
        .collect();
    assert_eq!(
        versions,
        vec![(json!("v2"), json!(true)), (json!("v1"), json!(false))],
        "{rel}"
    );

    let data = m.ok(&json!({"command":"rollback","app":"web","version":"v1"}));
    assert_eq!(
        data,
        json!({"app":"web","new_instances":1,"old_instances":1,"rolled_back":false,"status":"deployed","version":"v1"})
    );
    let r = server
        .app_get("web.example.com", "/")
        .expect("app after rollback");
    assert_eq!(r.json()["version"], json!("v1"));
    // Rollback reuses the stored env: the v2 deploy's env, which replaced the secrets.
    assert_eq!(
        r.json()["env"]["GREETING"],
        json!("hi"),
        "rollback keeps the stored env"
    );
    assert_eq!(
        m.err(&json!({"command":"rollback","app":"web","version":"v9"})),
        "Release 'v9' not found for app 'web'"
    );

    let data = m.ok(&json!({"command":"stop","app":"web"}));
    assert_eq!(data, json!({"app":"web","status":"stopped"}));
    assert_eq!(
        m.ok(&json!({"command":"list"})),
        json!({"apps":[{"instances":0,"name":"web","state":"stopped","version":"v1"}]})
    );
    let st = m.ok(&json!({"command":"status","app":"web"}));
    assert_eq!(st["state"], json!("stopped"), "{st}");
    assert_eq!(st["instances"], json!([]), "{st}");
    assert_eq!(st["builds"], json!([]), "{st}");
    let r = server
        .app_get("web.example.com", "/")
        .expect("request to a stopped app");
    assert_eq!(
        (r.status, r.text()),
        (503, "No healthy backend".to_string())
    );
    let health = server.internal_status().expect("status host");
    assert_eq!(
        health.status, 200,
        "a stopped app does not make the server unhealthy"
    );
    assert_eq!(
        m.ok(&json!({"command":"routes"})),
        json!({"routes":[{"app":"web","routes":["web.example.com","example.com/api/*"]}]}),
        "routes stay while stopped"
    );

    let data = m.ok(&json!({"command":"reload","app":"web"}));
    assert_eq!(
        data,
        json!({"app":"web","note":"App was not running, started fresh","status":"started"})
    );
    let r = server
        .app_get("web.example.com", "/")
        .expect("app after start");
    assert_eq!(r.status, 200);

    let data = m.ok(&json!({"command":"delete","app":"web"}));
    assert_eq!(data, json!({"app":"web","existed":true,"status":"deleted"}));
    assert_no_apps(&server, "delete");
    assert_eq!(
        m.err(&json!({"command":"status","app":"web"})),
        "App not found: web"
    );
    let r = server
        .app_get("web.example.com", "/")
        .expect("request after delete");
    assert_eq!(r.status, 404);
    let data = m.ok(&json!({"command":"delete","app":"web"}));
    assert_eq!(
        data,
        json!({"app":"web","existed":false,"status":"deleted"})
    );
}

#[test]
fn second_app_claiming_a_route_is_refused() {
    let server = Server::start_default();
    server.deploy(
        "alpha",
        "v1",
        &["shared.example.com", "alpha.example.com", "example.com/api"],
        1,
        &[],
    );
    // A refused deploy of an existing app changes nothing about it.
    let before = server.app_status("alpha");
    for bad in [
        server.deploy_cmd("alpha", "v2", &["tako.internal"], 1, &[]),
        server.deploy_cmd("alpha", "v2", &["alpha.example.com"], 33, &[]),
        server.deploy_cmd("alpha", "v2", &["alpha.example.com"], 1, &[("A=B", "x")]),
    ] {
        server.err(&bad);
        let after = server.app_status("alpha");
        assert_eq!(after["version"], json!("v1"), "{after}");
        assert_eq!(
            after["instances"][0]["pid"], before["instances"][0]["pid"],
            "the instance is untouched: {after}"
        );
        assert_eq!(
            server.ok(&json!({"command":"routes"})),
            json!({"routes":[{"app":"alpha","routes":["shared.example.com","alpha.example.com","example.com/api"]}]}),
        );
    }
    let cases = [
        "shared.example.com",
        "shared.example.com/*",
        "SHARED.example.com.",
        "shared.example.com:8443",
        "example.com/api/",
    ];
    let mut m = server.mgmt();
    for route in cases {
        let cmd = server.deploy_cmd("beta", "v1", &["beta.example.com", route], 1, &[]);
        let msg = m.err(&cmd);
        let normalized = route.to_ascii_lowercase().trim_end_matches('.').to_string();
        assert!(
            msg == format!("Deploy rejected: route '{route}' is already used by app 'alpha'")
                || msg
                    == format!(
                        "Deploy rejected: route '{normalized}' is already used by app 'alpha'"
                    ),
            "{route}: {msg}"
        );
        assert_eq!(
            m.ok(&json!({"command":"routes"})),
            json!({"routes":[{"app":"alpha","routes":["shared.example.com","alpha.example.com","example.com/api"]}]}),
            "after the refused {route}"
        );
        assert_eq!(
            m.err(&json!({"command":"status","app":"beta"})),
            "App not found: beta"
        );
    }
    // Other paths on the same host are not the same pattern.
    let cmd = server.deploy_cmd(
        "beta",
        "v1",
        &["beta.example.com", "example.com/apix"],
        1,
        &[],
    );
    m.ok(&cmd);
    let names: Vec<Value> = m.ok(&json!({"command":"list"}))["apps"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|a| a["name"].clone())
        .collect();
    assert_eq!(names, vec![json!("alpha"), json!("beta")]);
}

#[test]
fn per_app_lock_refuses_concurrent_operations() {
    let server = Server::start_default();
    let delay = server.knob_dir().join("slow");
    fs::write(&delay, "4").expect("write the delay knob");
    let delay_s = delay.display().to_string();
    let cmd = server.deploy_cmd(
        "slow",
        "v1",
        &["slow.example.com"],
        1,
        &[("STARTUP_DELAY_FILE", &delay_s)],
    );
    let socket = server.socket.clone();
    let first = {
        let cmd = cmd.clone();
        std::thread::spawn(move || Mgmt::connect(&socket).expect("connect").request(&cmd))
    };
    std::thread::sleep(Duration::from_millis(700));
    let mut m = server.mgmt();
    assert_eq!(
        m.err(&json!({"command":"status","app":"slow"})),
        "App not found: slow",
        "status during the first deploy"
    );
    let second = m.request(&cmd);
    if second["status"] != "error" {
        let first = first.join().expect("first deploy thread");
        panic!("a second deploy during the first must be refused; got {second}; the first answered {first}");
    }
    assert_eq!(
        second["message"],
        json!("Deploy already in progress for app 'slow'. Please wait and try again.")
    );
    let resp = first.join().expect("first deploy thread");
    assert_eq!(resp["status"], json!("ok"), "{resp}");

    // A slow reload holds the lock for the other operations.
    let socket = server.socket.clone();
    let reload = std::thread::spawn(move || {
        Mgmt::connect(&socket)
            .expect("connect")
            .request(&json!({"command":"reload","app":"slow"}))
    });
    wait_for(Duration::from_secs(10), "the reload's new instance", || {
        let st = server.app_status("slow");
        (st["instances"].as_array().map(|a| a.len()).unwrap_or(0) >= 2).then_some(())
    });
    let busy = "Another operation is in progress for app 'slow'. Please wait and try again.";
    assert_eq!(m.err(&json!({"command":"stop","app":"slow"})), busy);
    assert_eq!(
        m.err(&json!({"command":"update_secrets","app":"slow","secrets":{"A":"b"}})),
        busy
    );
    assert_eq!(
        m.err(&json!({"command":"rollback","app":"slow","version":"v1"})),
        "Deploy already in progress for app 'slow'. Please wait and try again."
    );
    // Another app is not blocked.
    let other = server.deploy_cmd("quick", "v1", &["quick.example.com"], 1, &[]);
    m.ok(&other);
    let resp = reload.join().expect("reload thread");
    assert_eq!(resp["status"], json!("ok"), "{resp}");
    m.ok(&json!({"command":"stop","app":"slow"}));
}

fn ctl(args: &[&str]) -> crate::common::Outcome {
    let out = Command::new(BIN)
        .arg("ctl")
        .args(args)
        .output()
        .expect("run tako-server ctl");
    crate::common::Outcome {
        code: crate::common::exit_code(out.status),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn ctl_client() {
    let server = Server::start_default();
    let sock = server.socket.display().to_string();
    // Tables for people are checked in ctl_output.rs; --json is the answer line.
    let out = ctl(&["--socket", &sock, "--json", "list"]);
    assert_eq!(out.code, 0, "ctl list: {}", out.stderr);
    let v: Value = serde_json::from_str(&out.stdout).expect("ctl --json prints JSON");
    assert_eq!(v, json!({"status": "ok", "data": {"apps": []}}));

    let out = ctl(&["--socket", &sock, "status", "ghost"]);
    assert_eq!(out.code, 1, "error response exits 1");
    assert!(
        out.stderr.contains("App not found: ghost"),
        "{}",
        out.stderr
    );

    let out = ctl(&["--socket", &sock, "raw", r#"{"command":"routes"}"#]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let v: Value = serde_json::from_str(out.stdout.trim()).expect("raw prints the response line");
    assert_eq!(v, json!({"status":"ok","data":{"routes":[]}}));
    let out = ctl(&["--socket", &sock, "raw", r#"{"command":"nope"}"#]);
    assert_eq!(out.code, 1);
    assert!(out.stdout.contains("Invalid command"), "{}", out.stdout);

    let out = ctl(&["--socket", &sock, "--json", "server-info"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let v: Value = serde_json::from_str(&out.stdout).expect("JSON");
    assert_eq!(v["data"]["http_port"], json!(server.http_port));

    let missing = server.data_dir.join("missing.sock").display().to_string();
    let out = ctl(&["--socket", &missing, "list"]);
    assert_eq!(out.code, 3, "cannot connect: {}", out.stderr);
    assert!(
        out.stderr
            .contains(&format!("Cannot connect to {missing}: ")),
        "{}",
        out.stderr
    );

    let out = ctl(&["--socket", &sock, "no-such-subcommand"]);
    assert_eq!(out.code, 2, "usage error: {}", out.stderr);
}
