//! App secrets stay out of every answer and log: deploy and update-secrets with a
//! recognisable value, in valid and malformed forms, over the socket and through `ctl`; the
//! value then appears in none of the socket's answers, `ctl`'s output, the server's log, the
//! `list`/`status` answers and the state database's error columns.

use crate::common::{ctl, Server};
use serde_json::json;

/// Recognisable, and not a substring of anything the server writes by itself.
const SECRET: &str = "Zq7-s3cr3t-Vx9k";

fn assert_clean(what: &str, text: &str) {
    assert!(
        !text.contains(SECRET) && !text.contains("7654321"),
        "{what} shows the secret:\n{text}"
    );
}

#[test]
fn secrets_reach_no_answer_log_or_error_column() {
    let server = Server::start_default();
    let path = server.release("web", "v1");
    let path_s = path.display().to_string();
    let deploy = |env: serde_json::Value| {
        json!({
            "command": "deploy", "app": "web", "version": "v1", "path": path_s,
            "routes": ["web.example.com"], "env": env, "instances": 1, "idle_timeout": 300
        })
        .to_string()
    };
    let nul = format!("{SECRET}\u{0}");
    let mut lines = vec![
        // Valid: the value is stored and given to the app, nowhere else.
        deploy(json!({ "TOKEN": SECRET })),
        json!({"command": "update_secrets", "app": "web", "secrets": {"TOKEN": SECRET}})
            .to_string(),
        // Malformed: a value of the wrong type, a NUL byte, a bad name beside the value.
        deploy(json!(SECRET)),
        deploy(json!({ "TOKEN": nul })),
        deploy(json!({ "BAD=NAME": SECRET })),
        json!({"command": "update_secrets", "app": "web", "secrets": SECRET}).to_string(),
        json!({"command": "update_secrets", "app": "web", "secrets": {"TOKEN": 7654321}})
            .to_string(),
        json!({"command": "update_secrets", "app": "web", "secrets": {"TOKEN": nul}}).to_string(),
        json!({"command": "update_secrets", "app": "nope", "secrets": {"TOKEN": SECRET}})
            .to_string(),
    ];
    // Not JSON at all, the value inside the broken text.
    lines.push(format!(
        r#"{{"command":"update_secrets","app":"web","secrets":{{"TOKEN":"{SECRET}"}}"#
    ));
    let mut mgmt = server.mgmt();
    for (n, line) in lines.iter().enumerate() {
        let answer = mgmt.raw(line.as_bytes()).expect("an answer");
        assert_clean(&format!("the answer to {line}"), &answer);
        // The first two are valid, the rest refused.
        let ok = answer.starts_with(r#"{"status":"ok""#);
        assert_eq!(ok, n < 2, "the answer to {line}: {answer}");
    }

    // ctl: a file with a malformed line holding the value, one with a NUL, stdin, --json.
    let bad = server.data_dir.join("bad.env");
    std::fs::write(&bad, format!("OK=1\n{SECRET}\n")).expect("write bad.env");
    let bad_name = server.data_dir.join("bad-name.env");
    std::fs::write(&bad_name, format!("NOT A NAME={SECRET}\n")).expect("write");
    let bad_nul = server.data_dir.join("bad-nul.env");
    std::fs::write(&bad_nul, format!("TOKEN={SECRET}\0\n")).expect("write");
    for (args, stdin) in [
        (
            vec!["update-secrets", "web", "--secrets-file", "-"],
            format!("TOKEN={SECRET}\n"),
        ),
        (
            vec!["--json", "update-secrets", "web", "--secrets-file", "-"],
            format!("TOKEN={SECRET}\n"),
        ),
        (
            vec!["update-secrets", "web", "--secrets-file", "-"],
            format!("{SECRET}\n"),
        ),
        (
            vec![
                "update-secrets",
                "web",
                "--secrets-file",
                bad.to_str().unwrap(),
            ],
            String::new(),
        ),
        (
            vec![
                "update-secrets",
                "web",
                "--secrets-file",
                bad_name.to_str().unwrap(),
            ],
            String::new(),
        ),
        (
            vec![
                "update-secrets",
                "web",
                "--secrets-file",
                bad_nul.to_str().unwrap(),
            ],
            String::new(),
        ),
        (
            vec!["update-secrets", "nope", "--secrets-file", "-"],
            format!("TOKEN={SECRET}\n"),
        ),
        (vec!["raw", "-"], lines[5].clone()),
        (vec!["reload", "web"], String::new()),
        (vec!["list"], String::new()),
        (vec!["status", "web"], String::new()),
        (vec!["--json", "status", "web"], String::new()),
    ] {
        let out = ctl(&server, &args, &stdin, &[]);
        assert_clean(&format!("ctl {args:?} stdout"), &out.stdout);
        assert_clean(&format!("ctl {args:?} stderr"), &out.stderr);
    }

    for cmd in [
        json!({"command": "list"}),
        json!({"command": "status", "app": "web"}),
        json!({"command": "list_releases", "app": "web"}),
    ] {
        let answer = mgmt.raw(cmd.to_string().as_bytes()).expect("an answer");
        assert_clean(&format!("the answer to {cmd}"), &answer);
    }
    assert_clean("the server's log", &server.stderr_text());

    let db = rusqlite::Connection::open_with_flags(
        server.data_dir.join("runtime-state.sqlite3"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open the state database");
    db.busy_timeout(std::time::Duration::from_secs(5))
        .expect("busy timeout");
    let errors: Vec<String> = db
        .prepare("SELECT COALESCE(error, '') || ' ' || result FROM releases")
        .expect("prepare")
        .query_map([], |r| r.get(0))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    assert!(!errors.is_empty(), "the deploys left release rows");
    for e in errors {
        assert_clean("a release's error column", &e);
    }
    // The value was stored for the app all the same.
    let env: String = db
        .query_row("SELECT env_json FROM apps WHERE name = 'web'", [], |r| {
            r.get(0)
        })
        .expect("the app's row");
    assert!(env.contains(SECRET), "the secret is the app's env: {env}");
}
