//! `tako-server ctl` for people (docs/ctl.md): tables and summaries by default, the raw
//! answer line with `--json`, `logs -n` and `logs -f` across a rotation, and one-line errors
//! that say what to do.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::common::{Server, BIN};
use serde_json::Value;

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn ctl(server: &Server, args: &[&str]) -> Out {
    let out = Command::new(BIN)
        .arg("ctl")
        .args(["--socket", &server.socket.display().to_string()])
        .args(["--data-dir", &server.data_dir.display().to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run tako-server ctl");
    Out {
        code: crate::common::exit_code(out.status),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn ok(server: &Server, args: &[&str]) -> String {
    let out = ctl(server, args);
    assert_eq!(
        out.code, 0,
        "ctl {args:?}\nstdout:\n{}\nstderr:\n{}",
        out.stdout, out.stderr
    );
    out.stdout
}

/// The cells of a table's rows, split on runs of two or more spaces.
fn rows(table: &str) -> Vec<Vec<String>> {
    table
        .lines()
        .take_while(|l| !l.is_empty())
        .map(|l| {
            l.split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_string)
                .collect()
        })
        .collect()
}

/// Every line of a table has its columns at the same offsets as the header.
fn assert_aligned(table: &str) {
    let lines: Vec<&str> = table.lines().take_while(|l| !l.is_empty()).collect();
    let header = lines[0];
    let starts: Vec<usize> = header
        .match_indices(char::is_alphabetic)
        .filter(|(i, _)| *i == 0 || header.as_bytes()[i - 1] == b' ')
        .map(|(i, _)| i)
        .collect();
    for line in &lines[1..] {
        for &s in &starts[1..] {
            assert!(
                line.len() <= s || line.as_bytes()[s - 1] == b' ',
                "column at {s} not aligned in:\n{table}"
            );
        }
        assert_eq!(line.trim_end(), *line, "no trailing blanks:\n{table}");
    }
}

#[test]
fn tables_by_default_and_the_raw_line_with_json() {
    let server = Server::start_default();
    assert_eq!(ok(&server, &["list"]), "No apps.\n");

    server.deploy(
        "web",
        "v1",
        &["web.localhost", "www.web.localhost/api/*"],
        2,
        &[],
    );
    server.deploy("api", "v3", &["api.localhost"], 1, &[]);

    let list = ok(&server, &["list"]);
    assert_aligned(&list);
    let r = rows(&list);
    assert_eq!(
        r[0],
        ["NAME", "VERSION", "STATE", "HEALTHY", "ROUTES", "UPTIME"]
    );
    assert_eq!(r[1][..5], ["api", "v3", "running", "1/1", "api.localhost"]);
    assert_eq!(
        r[2][..5],
        [
            "web",
            "v1",
            "running",
            "2/2",
            "web.localhost,www.web.localhost/api/*"
        ]
    );
    assert!(r[2][5].ends_with('s') || r[2][5].ends_with('m'), "{list}");

    // --json: the answer line exactly as the socket gives it.
    let json = ok(&server, &["--json", "list"]);
    assert_eq!(json.lines().count(), 1, "{json}");
    let v: Value = serde_json::from_str(&json).expect("--json prints JSON");
    assert_eq!(v["status"], "ok");
    assert_eq!(v["data"]["apps"][1]["name"], "web");
    assert_eq!(
        v,
        server
            .mgmt()
            .request(&serde_json::json!({"command":"list"}))
    );

    let status = ok(&server, &["status", "web"]);
    let mut lines = status.lines();
    assert_eq!(lines.next(), Some("web v1 running"), "{status}");
    assert!(status.contains("  instances:  2/2 healthy\n"), "{status}");
    assert!(
        status.contains("  routes:     web.localhost,www.web.localhost/api/*\n"),
        "{status}"
    );
    assert!(status.contains("  last error: -\n"), "{status}");
    let instances = status
        .split("\n\n")
        .find(|b| b.starts_with("INSTANCE"))
        .expect("an instance table");
    assert_aligned(instances);
    let r = rows(instances);
    assert_eq!(
        r[0],
        ["INSTANCE", "VERSION", "STATE", "PID", "PORT", "UPTIME", "REQUESTS"]
    );
    assert_eq!(r.len(), 3, "{status}");
    let pids = server.healthy_pids("web");
    for row in &r[1..] {
        assert_eq!(row[1..3], ["v1", "healthy"], "{status}");
        assert!(
            pids.contains(&row[3].parse::<i32>().expect("pid")),
            "{status}"
        );
    }
    let certs = status
        .split("\n\n")
        .find(|b| b.starts_with("CERTIFICATE"))
        .expect("a certificate table");
    let r = rows(certs);
    assert_eq!(r[0], ["CERTIFICATE", "STATE", "SOURCE", "EXPIRES", "ERROR"]);
    assert_eq!(r[1][..3], ["web.localhost", "valid", "self_signed"]);

    let routes = ok(&server, &["routes"]);
    assert_aligned(&routes);
    assert_eq!(
        rows(&routes),
        [
            vec!["APP", "ROUTE"],
            vec!["api", "api.localhost"],
            vec!["web", "web.localhost"],
            vec!["web", "www.web.localhost/api/*"],
        ]
    );

    server.deploy("web", "v2", &["web.localhost"], 1, &[]);
    let releases = ok(&server, &["releases", "web"]);
    let r = rows(&releases);
    assert_eq!(r[0], ["VERSION", "AGE", "MESSAGE"], "{releases}");
    assert!(
        releases.lines().any(|l| l.starts_with("*  v2")),
        "{releases}"
    );
    assert!(
        releases.lines().any(|l| l.starts_with("   v1")),
        "{releases}"
    );

    let procs = ok(&server, &["processes"]);
    let mut blocks = procs.split("\n\n");
    let own = blocks.next().expect("process table");
    assert_aligned(own);
    let r = rows(own);
    assert_eq!(
        r[0],
        ["ROLE", "PID", "USER", "STATE", "GENERATION", "UPTIME"]
    );
    assert_eq!(r[1][0], "master");
    assert_eq!(r[2][0], "launcher");
    assert!(r[3][0].starts_with("worker/"), "{procs}");
    if crate::common::users::is_root() {
        assert_eq!(r[1][2], "root", "{procs}");
        assert_eq!(r[3][2], "tako-proxy", "{procs}");
    }
    let apps = blocks.next().expect("instance table");
    assert_aligned(apps);
    let r = rows(apps);
    assert_eq!(
        r[0],
        ["APP", "INSTANCE", "VERSION", "PID", "USER", "STATE", "PORT", "UPTIME"]
    );
    // api's one instance and web v2's; web v1's two are drained or on their way out.
    assert!(
        r[1..].iter().any(|x| x[0] == "api" && x[2] == "v3"),
        "{procs}"
    );
    assert!(
        r[1..].iter().any(|x| x[0] == "web" && x[2] == "v2"),
        "{procs}"
    );

    let info = ok(&server, &["server-info"]);
    assert!(
        info.lines()
            .any(|l| l.starts_with("http_port:") && l.ends_with(&format!(" {}", server.http_port))),
        "{info}"
    );

    // Commands that change something: one summary line.
    let stop = ok(&server, &["stop", "api"]);
    assert_eq!(stop, "api: stopped\n");
    let reload = ok(&server, &["reload", "api"]);
    assert_eq!(
        reload, "api: started\n  note: App was not running, started fresh\n",
        "{reload}"
    );

    // An error answer: its message on stderr, exit 1; with --json the line on stdout too.
    let out = ctl(&server, &["status", "ghost"]);
    assert_eq!((out.code, out.stdout.as_str()), (1, ""));
    assert_eq!(out.stderr, "App not found: ghost\n");
    let out = ctl(&server, &["--json", "status", "ghost"]);
    assert_eq!(out.code, 1);
    let v: Value = serde_json::from_str(&out.stdout).expect("JSON");
    assert_eq!(v["status"], "error");
}

#[test]
fn connection_errors_are_one_line_that_says_what_to_do() {
    let dir = crate::common::temp_dir();
    let missing = dir.join("none.sock");
    let out = Command::new(BIN)
        .args(["ctl", "--socket", &missing.display().to_string(), "list"])
        .output()
        .expect("run ctl");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(crate::common::exit_code(out.status), 3);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "Cannot connect to {}: no server is listening there",
            missing.display()
        )),
        "{stderr}"
    );
    assert!(stderr.contains("--socket"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn logs_prints_the_last_lines_and_follows_rotation() {
    let server = Server::start_default();
    server.deploy("web", "v1", &["web.localhost"], 1, &[]);
    let logs = crate::common::app_log_dir(&server.data_dir, "web");
    // The fixture app's first line is in app.log once the deploy is answered.
    let out = ok(&server, &["logs", "web", "-n", "1"]);
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.contains("listening on 127.0.0.1:"), "{out}");

    // Lines of our own, after a rotation the way the launcher does it: app.log.1 holds the
    // older lines, app.log the newer ones.
    let owner = std::fs::metadata(logs.join("app.log")).expect("app.log");
    let ids = {
        use std::os::unix::fs::MetadataExt;
        (owner.uid(), owner.gid())
    };
    std::fs::rename(logs.join("app.log"), logs.join("app.log.1")).expect("rotate");
    std::fs::write(logs.join("app.log"), "one\ntwo\nthree\n").expect("write app.log");
    crate::common::fixture::chown(&logs.join("app.log"), ids);
    assert_eq!(ok(&server, &["logs", "web", "-n", "2"]), "two\nthree\n");
    assert_eq!(
        ok(&server, &["logs", "web", "--lines", "3"]),
        "one\ntwo\nthree\n"
    );
    let four = ok(&server, &["logs", "web", "-n", "4"]);
    assert!(four.ends_with("\none\ntwo\nthree\n"), "{four}");
    assert!(four.contains("listening on"), "{four}");

    let out = ctl(&server, &["logs", "ghost"]);
    assert_eq!(out.code, 1);
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(out.stderr.contains("--data-dir"), "{}", out.stderr);

    // -f: what is appended, then across a rotation, without a line lost.
    let mut child = Command::new(BIN)
        .arg("ctl")
        .args(["--data-dir", &server.data_dir.display().to_string()])
        .args(["logs", "web", "-f", "-n", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("start ctl logs -f");
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let next = |what: &str| {
        rx.recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("ctl logs -f did not print {what} within 10 s"))
    };
    assert_eq!(next("the last line"), "three");
    let append = |text: &str| {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(logs.join("app.log"))
            .expect("open app.log");
        f.write_all(text.as_bytes()).expect("append");
    };
    append("four\n");
    assert_eq!(next("an appended line"), "four");
    // Rotation: a last line lands in the old file just before it is renamed.
    append("five\n");
    std::fs::rename(logs.join("app.log"), logs.join("app.log.1")).expect("rotate");
    std::fs::write(logs.join("app.log"), "six\n").expect("new app.log");
    assert_eq!(next("the old file's last line"), "five");
    assert_eq!(next("the new file's first line"), "six");
    crate::common::kill(child.id() as i32, libc::SIGINT);
    let _ = child.wait();
    let _ = reader.join();
}
