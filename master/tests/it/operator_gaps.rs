//! Gaps a new operator hits (issue 21): a private wildcard route gets a self-signed wildcard
//! certificate; `tako.internal/status` shows a change as soon as the command that made it is
//! answered; a server with only private hosts never contacts an ACME CA; `processes` lists
//! the app instances.

use std::time::Duration;

use crate::common::{Server, ServerOpts};
use serde_json::{json, Value};

/// The full status page (loopback peer) as JSON.
fn status_page(server: &Server) -> Value {
    let r = server.internal_status().expect("GET tako.internal/status");
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

fn page_app(page: &Value, name: &str) -> Value {
    page["apps"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["name"] == name).cloned())
        .unwrap_or(Value::Null)
}

#[test]
fn private_wildcard_route_gets_a_self_signed_wildcard_certificate() {
    let server = Server::start_default();
    server.deploy("web", "v1", &["*.app.localhost"], 1, &[]);

    // The deploy answers once every worker serves the certificate: no waiting here.
    let r = server
        .tls_get("a.app.localhost", "/")
        .expect("TLS handshake for a.app.localhost");
    assert_eq!(r.status, 200, "{}", r.text());
    let r = server
        .tls_get("b.app.localhost", "/")
        .expect("TLS handshake for b.app.localhost");
    assert_eq!(r.status, 200, "{}", r.text());

    let certs = server.app_status("web")["certificates"].clone();
    let entry = certs
        .as_array()
        .and_then(|c| c.iter().find(|e| e["host"] == "*.app.localhost").cloned())
        .unwrap_or(Value::Null);
    assert_eq!(entry["state"], "valid", "{certs}");
    assert_eq!(entry["source"], "self_signed", "{certs}");
    let dir = server.data_dir.join("certs").join("*.app.localhost");
    assert!(dir.join("fullchain.pem").is_file(), "{}", dir.display());
    assert!(!dir.join("acme.json").exists());
}

#[test]
fn status_page_shows_a_change_as_soon_as_it_is_answered() {
    let server = Server::start_default();
    server.wait_http_ready();
    // Several rounds: a page pushed after the answer is a race the test must not win by
    // luck.
    for (i, version) in ["v1", "v2", "v3"].iter().enumerate() {
        server.deploy("web", version, &["web.localhost"], 1, &[]);
        let page = status_page(&server);
        let app = page_app(&page, "web");
        assert_eq!(app["version"], *version, "round {i}: {page}");
        assert_eq!(app["state"], "running", "round {i}: {page}");
        let first = &app["builds"][0];
        assert_eq!(first["version"], *version, "round {i}: {page}");
        assert_eq!(first["state"], "running", "round {i}: {page}");
    }
    server.ok(&json!({"command": "stop", "app": "web"}));
    let page = status_page(&server);
    assert_eq!(page_app(&page, "web")["state"], "stopped", "{page}");

    server.deploy("api", "v1", &["api.localhost"], 1, &[]);
    let page = status_page(&server);
    assert_eq!(page_app(&page, "api")["state"], "running", "{page}");
    server.ok(&json!({"command": "delete", "app": "api"}));
    let page = status_page(&server);
    assert_eq!(page_app(&page, "api"), Value::Null, "{page}");
}

#[test]
fn private_hosts_never_contact_an_acme_ca() {
    // ACME on, pointed at a port where nothing listens: any attempt to reach the CA would
    // fail at once and log it.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let opts = ServerOpts {
        acme: true,
        ..ServerOpts::default()
    }
    .arg("--acme-directory")
    .arg(&format!("https://127.0.0.1:{closed}/dir"));
    let server = Server::start(opts);
    server.deploy(
        "web",
        "v1",
        &["web.localhost", "*.w.localhost", "box"],
        1,
        &[],
    );
    let certs = server.app_status("web")["certificates"].clone();
    for e in certs.as_array().expect("certificates") {
        assert_eq!(e["state"], "valid", "{certs}");
        assert_eq!(e["error"], Value::Null, "{certs}");
    }
    // An attempt is made within milliseconds of the start when it is made at all; two
    // seconds is a wide margin. Absence of a log line cannot be awaited as an event.
    std::thread::sleep(Duration::from_secs(2));
    let acme_lines: Vec<String> = server
        .stderr_text()
        .lines()
        .filter(|l| l.contains("ACME") || l.contains("acme"))
        .map(str::to_string)
        .collect();
    assert!(
        acme_lines.is_empty(),
        "a server with only private hosts logged about ACME:\n{}",
        acme_lines.join("\n")
    );
    assert!(!server.data_dir.join("acme").join("account.json").exists());
}

#[test]
fn processes_lists_app_instances() {
    let server = Server::start_default();
    server.deploy("web", "v1", &["web.localhost"], 2, &[]);
    let answer = server.ok(&json!({"command": "processes"}));
    // Still the server's own processes, as before.
    let roles: Vec<&str> = answer["processes"]
        .as_array()
        .expect("processes")
        .iter()
        .filter_map(|p| p["role"].as_str())
        .collect();
    assert_eq!(roles.first(), Some(&"master"), "{answer}");
    let instances = answer["instances"].as_array().cloned().unwrap_or_default();
    let healthy = server.healthy_pids("web");
    assert_eq!(healthy.len(), 2);
    assert_eq!(instances.len(), 2, "{answer}");
    for i in &instances {
        assert_eq!(i["app"], "web", "{answer}");
        assert_eq!(i["version"], "v1", "{answer}");
        assert_eq!(i["state"], "healthy", "{answer}");
        assert!(i["instance"].as_u64().is_some(), "{answer}");
        let pid = i["pid"].as_i64().expect("pid") as i32;
        assert!(healthy.contains(&pid), "{answer}");
        let real_uid = crate::common::procfs::status(pid).map(|s| u64::from(s.uid()));
        assert_eq!(i["uid"].as_u64(), real_uid, "{answer}");
    }
}
