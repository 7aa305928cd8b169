//! Issue 4, the edge under load and in numbers: slow-header connections do not starve a normal
//! request, `/metrics` is strict Prometheus text 0.0.4 with the TLS handshake and upstream
//! error counters, and HTTP/2 over TLS reaches the app with the right Host. Documented in
//! docs/http.md, "tako.internal", "The upstream exchange", "Limits and timeouts",
//! "Error responses".

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::fixture::APP_PY;
use crate::common::http::http;
use crate::common::{wait_for, Request, Server, ServerOpts};
use serde_json::Value;

const HOST: &str = "app.example.com";

/// The fixture app with one more path: `/drop` closes the connection without an answer,
/// which the proxy sees as a reset (an upstream error of kind `failed`).
fn dropping_app() -> String {
    let anchor = "    def answer(self):\n";
    assert!(
        APP_PY.contains(anchor),
        "fixture changed: update the /drop patch"
    );
    APP_PY.replacen(
        anchor,
        "    def answer(self):\n        if self.path.split(\"?\")[0] == \"/drop\":\n            import socket\n            self.close_connection = True\n            self.connection.shutdown(socket.SHUT_RDWR)\n            return\n",
        1,
    )
}

fn start_with_app() -> Server {
    let server = Server::start(ServerOpts::default().test_certs());
    let cmd = server.deploy_cmd("web", "v1", &[HOST], 1, &[]);
    let release = server.release("web", "v1");
    std::fs::write(release.join("server.py"), dropping_app()).expect("write server.py");
    server.ok(&cmd);
    let r = server.app_get(HOST, "/hello").expect("first request");
    assert_eq!(r.status, 200, "{}", r.text());
    server
}

fn metrics(server: &Server) -> String {
    let r =
        http(server.http_port, &Request::get("tako.internal", "/metrics")).expect("GET /metrics");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    r.text()
}

// ---- A strict reader of the Prometheus text format 0.0.4 ----------------------------------

#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn is_name(s: &str, colon: bool) -> bool {
    let mut chars = s.chars();
    let ok_first = |c: char| c.is_ascii_alphabetic() || c == '_' || (colon && c == ':');
    let ok_rest = |c: char| c.is_ascii_alphanumeric() || c == '_' || (colon && c == ':');
    matches!(chars.next(), Some(c) if ok_first(c)) && chars.all(ok_rest)
}

fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => s
            .parse::<f64>()
            .map_err(|e| format!("bad value {s:?}: {e}")),
    }
}

/// `{a="x",b="y"}` (the braces included) into a map; escapes `\\`, `\"`, `\n`.
fn parse_labels(s: &str) -> Result<BTreeMap<String, String>, String> {
    let inner = s
        .strip_prefix('{')
        .and_then(|s| s.strip_suffix('}'))
        .ok_or_else(|| format!("labels not in braces: {s:?}"))?;
    let mut out = BTreeMap::new();
    let mut rest = inner;
    while !rest.is_empty() {
        let eq = rest
            .find('=')
            .ok_or_else(|| format!("no '=' in {rest:?}"))?;
        let name = &rest[..eq];
        if !is_name(name, false) {
            return Err(format!("bad label name {name:?}"));
        }
        let mut chars = rest[eq + 1..].char_indices();
        if chars.next().map(|(_, c)| c) != Some('"') {
            return Err(format!("label value not quoted in {rest:?}"));
        }
        let mut value = String::new();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    end = Some(eq + 1 + i + 1);
                    break;
                }
                '\\' => match chars.next().map(|(_, c)| c) {
                    Some('\\') => value.push('\\'),
                    Some('"') => value.push('"'),
                    Some('n') => value.push('\n'),
                    other => return Err(format!("bad escape {other:?} in {s:?}")),
                },
                '\n' => return Err("raw newline in a label value".into()),
                c => value.push(c),
            }
        }
        let end = end.ok_or_else(|| format!("unterminated label value in {s:?}"))?;
        if out.insert(name.to_string(), value).is_some() {
            return Err(format!("label {name:?} twice in {s:?}"));
        }
        rest = &rest[end..];
        if let Some(r) = rest.strip_prefix(',') {
            rest = r;
        } else if !rest.is_empty() {
            return Err(format!("junk after a label: {rest:?}"));
        }
    }
    Ok(out)
}

/// Parses and checks the whole exposition; returns the samples.
fn parse_exposition(text: &str) -> Result<Vec<Sample>, String> {
    if !text.is_empty() && !text.ends_with('\n') {
        return Err("the text does not end with a newline".into());
    }
    let mut types: HashMap<String, String> = HashMap::new();
    let mut helps: HashMap<String, ()> = HashMap::new();
    let mut seen_samples: HashMap<String, ()> = HashMap::new();
    let mut families_with_samples: HashMap<String, ()> = HashMap::new();
    let mut samples = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let at = |e: String| format!("line {}: {e}: {line:?}", n + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let words: Vec<&str> = comment.trim_start().splitn(3, ' ').collect();
            match words.as_slice() {
                ["TYPE", name, ty] => {
                    if !is_name(name, true) {
                        return Err(at("bad metric name in TYPE".into()));
                    }
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(ty) {
                        return Err(at(format!("unknown type {ty:?}")));
                    }
                    if families_with_samples.contains_key(*name) {
                        return Err(at("TYPE after the family's samples".into()));
                    }
                    if types.insert(name.to_string(), ty.to_string()).is_some() {
                        return Err(at("second TYPE line".into()));
                    }
                }
                ["HELP", name, ..] => {
                    if !is_name(name, true) {
                        return Err(at("bad metric name in HELP".into()));
                    }
                    if helps.insert(name.to_string(), ()).is_some() {
                        return Err(at("second HELP line".into()));
                    }
                }
                _ => {} // A plain comment.
            }
            continue;
        }
        let (name_labels, rest) = match line.find('{') {
            Some(open) => {
                let close = line
                    .rfind('}')
                    .ok_or_else(|| at("no closing brace".into()))?;
                (
                    (&line[..open], Some(&line[open..=close])),
                    &line[close + 1..],
                )
            }
            None => {
                let sp = line.find(' ').ok_or_else(|| at("no value".into()))?;
                ((&line[..sp], None), &line[sp..])
            }
        };
        let (name, labels) = name_labels;
        if !is_name(name, true) {
            return Err(at("bad metric name".into()));
        }
        let labels = match labels {
            Some(l) => parse_labels(l).map_err(at)?,
            None => BTreeMap::new(),
        };
        let rest = rest
            .strip_prefix(' ')
            .ok_or_else(|| at("no space before the value".into()))?;
        let mut parts = rest.split(' ');
        let value = parse_value(parts.next().unwrap_or("")).map_err(at)?;
        if let Some(ts) = parts.next() {
            ts.parse::<i64>()
                .map_err(|e| at(format!("bad timestamp: {e}")))?;
        }
        if parts.next().is_some() {
            return Err(at("junk after the value".into()));
        }
        // The family: a histogram's series carry a suffix.
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                name.strip_suffix(suffix)
                    .filter(|base| types.get(*base).map(String::as_str) == Some("histogram"))
            })
            .unwrap_or(name);
        let ty = types
            .get(family)
            .ok_or_else(|| at(format!("no TYPE line for {family:?} before its samples")))?;
        if ty == "histogram" && name == family {
            return Err(at("a histogram sample without _bucket/_sum/_count".into()));
        }
        if name.ends_with("_bucket") && !labels.contains_key("le") {
            return Err(at("a bucket without le".into()));
        }
        if ty == "counter" && (value.is_nan() || value < 0.0) {
            return Err(at("a negative or NaN counter".into()));
        }
        let key = format!("{name}{labels:?}");
        if seen_samples.insert(key, ()).is_some() {
            return Err(at("the same series twice".into()));
        }
        families_with_samples.insert(family.to_string(), ());
        samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    check_histograms(&types, &samples)?;
    Ok(samples)
}

/// Buckets cumulative with increasing `le`, the last one `+Inf`, and `_count` equal to it.
fn check_histograms(types: &HashMap<String, String>, samples: &[Sample]) -> Result<(), String> {
    for (family, _) in types.iter().filter(|(_, t)| *t == "histogram") {
        let bucket_name = format!("{family}_bucket");
        let mut series: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        for s in samples.iter().filter(|s| s.name == bucket_name) {
            let mut rest = s.labels.clone();
            let le = rest.remove("le").unwrap_or_default();
            let le = parse_value(&le)?;
            series
                .entry(format!("{rest:?}"))
                .or_default()
                .push((le, s.value));
        }
        for (labels, buckets) in &series {
            let what = format!("{family}{labels}");
            for w in buckets.windows(2) {
                if w[1].0.partial_cmp(&w[0].0) != Some(std::cmp::Ordering::Greater) {
                    return Err(format!("{what}: le not increasing: {buckets:?}"));
                }
                if w[1].1 < w[0].1 {
                    return Err(format!("{what}: buckets not cumulative: {buckets:?}"));
                }
            }
            let last = buckets.last().ok_or_else(|| format!("{what}: no bucket"))?;
            if last.0 != f64::INFINITY {
                return Err(format!("{what}: the last bucket is not +Inf"));
            }
            let count_name = format!("{family}_count");
            let count = samples
                .iter()
                .find(|s| s.name == count_name && format!("{:?}", s.labels) == *labels)
                .ok_or_else(|| format!("{what}: no _count"))?;
            if count.value != last.1 {
                return Err(format!(
                    "{what}: _count {} is not the +Inf bucket {}",
                    count.value, last.1
                ));
            }
            let sum_name = format!("{family}_sum");
            if !samples
                .iter()
                .any(|s| s.name == sum_name && format!("{:?}", s.labels) == *labels)
            {
                return Err(format!("{what}: no _sum"));
            }
        }
    }
    Ok(())
}

fn value_of(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && s.labels.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}

#[test]
fn the_strict_parser_refuses_what_prometheus_refuses() {
    let ok = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\"} 3\n\
              # TYPE h histogram\nh_bucket{le=\"0.5\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 0.7\nh_count 2\n";
    assert!(parse_exposition(ok).is_ok(), "{:?}", parse_exposition(ok));
    for bad in [
        "a 1\n",                           // no TYPE
        "# TYPE a counter\na{x=1} 1\n",    // unquoted label
        "# TYPE a counter\na 1\na 2\n",    // series twice
        "# TYPE a counter\na{x=\"1\"}1\n", // no space
        "# TYPE a counter\na 1",           // no final newline
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
        "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n",
        "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 1\n",
    ] {
        assert!(parse_exposition(bad).is_err(), "accepted: {bad:?}");
    }
}

// ---- Black-box tests -------------------------------------------------------------------------

#[test]
fn slow_header_connections_do_not_stop_a_normal_request() {
    let server = start_with_app();
    let mut stalled = Vec::new();
    for _ in 0..50 {
        let mut s = TcpStream::connect(("127.0.0.1", server.http_port)).expect("connect");
        s.write_all(b"GET /slow HTTP/1.1\r\nHo")
            .expect("partial head");
        stalled.push(s);
    }
    // Give the workers time to accept them all before the real request competes.
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..3 {
        let started = Instant::now();
        let r = server.app_get(HOST, "/hello").expect("normal request");
        let took = started.elapsed();
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(
            took < Duration::from_secs(2),
            "a normal request took {took:?} beside 50 stalled heads"
        );
    }
    // The stalled ones are still open (10 s header timeout), not refused.
    for s in &mut stalled {
        s.set_read_timeout(Some(Duration::from_millis(1)))
            .expect("timeout");
        let mut b = [0u8; 1];
        match s.read(&mut b) {
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            other => panic!("a stalled connection ended early: {other:?}"),
        }
    }
}

#[test]
fn metrics_parse_as_prometheus_text_after_traffic() {
    let server = start_with_app();
    let r = server.app_get("nobody.example.com", "/x").expect("404");
    assert_eq!(r.status, 404);
    let r = server.app_get(HOST, "/hello").expect("200");
    assert_eq!(r.status, 200);
    // A reset from the instance: 502, counted as an upstream error of kind `failed`.
    let r = server.app_get(HOST, "/drop").expect("502");
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.text(), "Bad Gateway");
    // TLS: one good handshake and one that is not TLS at all.
    let r = server.tls_get(HOST, "/hello").expect("HTTPS");
    assert_eq!(r.status, 200);
    {
        let mut s = TcpStream::connect(("127.0.0.1", server.tls_port)).expect("connect");
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("write");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
    }

    // Counters are at most 1 s old: poll until the traffic shows.
    let samples = wait_for(Duration::from_secs(10), "the traffic in /metrics", || {
        let text = metrics(&server);
        let samples = parse_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let get = |name: &str, labels: &[(&str, &str)]| value_of(&samples, name, labels);
        let ready = get("tako_http_requests_total", &[("app", ""), ("class", "4xx")])? >= 1.0
            && get(
                "tako_http_requests_total",
                &[("app", "web"), ("class", "2xx")],
            )? >= 2.0
            && get(
                "tako_http_requests_total",
                &[("app", "web"), ("class", "5xx")],
            )? >= 1.0
            && get(
                "tako_upstream_errors_total",
                &[("app", "web"), ("kind", "failed")],
            )? >= 1.0
            && get("tako_tls_handshakes_total", &[("result", "ok")])? >= 1.0
            && get("tako_tls_handshakes_total", &[("result", "failed")])? >= 1.0;
        ready.then_some(samples)
    });
    for kind in ["connect", "timeout"] {
        assert_eq!(
            value_of(
                &samples,
                "tako_upstream_errors_total",
                &[("app", "web"), ("kind", kind)]
            ),
            Some(0.0),
            "{kind}"
        );
    }
    for name in [
        "tako_http_request_duration_seconds_count",
        "tako_http_request_duration_seconds_sum",
    ] {
        assert!(
            value_of(&samples, name, &[("app", "web")]).is_some(),
            "{name} for web"
        );
    }
    assert!(value_of(&samples, "tako_uptime_seconds", &[]).is_some());
}

#[test]
fn http2_over_tls_reaches_the_app_with_the_right_host() {
    let has_h2_curl = Command::new("curl")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("HTTP2"))
        .unwrap_or(false);
    if !has_h2_curl {
        eprintln!("SKIPPED: this test needs curl with HTTP/2 support (nghttp2) on PATH");
        return;
    }
    let server = start_with_app();
    let url = format!("https://{HOST}:{}/h2?q=1", server.tls_port);
    let out = Command::new("curl")
        .args(["--http2", "-k", "-sS", "--max-time", "10"])
        .arg("--resolve")
        .arg(format!("{HOST}:{}:127.0.0.1", server.tls_port))
        .args(["-w", "\n%{http_version} %{http_code}"])
        .arg(&url)
        .output()
        .expect("run curl");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "curl failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (body, trailer) = stdout.rsplit_once('\n').expect("curl -w line");
    assert_eq!(trailer, "2 200", "HTTP version and status: {stdout}");
    let echoed: Value = serde_json::from_str(body).expect("the app's JSON");
    assert_eq!(echoed["path"], "/h2?q=1");
    assert_eq!(
        echoed["headers"]["host"],
        format!("{HOST}:{}", server.tls_port),
        "the :authority becomes the Host: {echoed}"
    );
    assert_eq!(echoed["headers"]["x-forwarded-proto"], "https");
}

/// A worker that replaced a killed one has the metrics page from its first request: before,
/// it answered an empty `200` until the master's next push, up to a second later, which a
/// scraper reads as every series gone.
#[test]
fn a_replaced_worker_serves_metrics_from_its_first_request() {
    let server = Server::start(ServerOpts::default());
    // A first scrape: the page is there and counts the uptime.
    assert!(metrics(&server).contains("tako_uptime_seconds "));
    let old = server.pids_of("worker");
    assert!(!old.is_empty(), "no workers listed");
    for pid in &old {
        // SAFETY: plain kill(2) of a pid the server just listed as its worker.
        unsafe { libc::kill(*pid, libc::SIGKILL) };
    }
    wait_for(Duration::from_secs(20), "replacement workers", || {
        let now = server.pids_of("worker");
        (now.len() == old.len() && now.iter().all(|p| !old.contains(p))).then_some(())
    });
    // The first request that reaches a new worker: a connection waits in the listener's
    // backlog until a worker accepts it.
    let text = metrics(&server);
    assert!(
        text.contains("tako_uptime_seconds "),
        "a new worker's first /metrics answer lacks the page:\n{text}"
    );
}
