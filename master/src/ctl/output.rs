//! What `ctl` prints for people (docs/ctl.md "Output"): aligned tables and short summaries
//! built from the answers' `data`, in the manner of systemctl and kubectl. `--json` bypasses
//! all of this and prints the answer line as it came.

use std::fmt::Write as _;

use serde_json::Value;

/// Columns separated by two spaces, each as wide as its widest cell; no trailing blanks.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            let pad = widths.get(i).copied().unwrap_or(0);
            let _ = write!(line, "{cell:<pad$}");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A duration the way kubectl shows ages: `45s`, `12m`, `3h4m`, `2d5h`.
pub fn duration(secs: u64) -> String {
    let (d, h, m) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60);
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{m}m"),
        3600..=86_399 if m == 0 => format!("{h}h"),
        3600..=86_399 => format!("{h}h{m}m"),
        _ if h == 0 => format!("{d}d"),
        _ => format!("{d}d{h}h"),
    }
}

/// A cell: strings as they are, numbers and booleans printed, null and absent as `-`.
pub fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) if s.is_empty() => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(a) if a.is_empty() => "-".into(),
        Value::Array(a) => a.iter().map(cell).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

fn list_of<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v[key].as_array().map(Vec::as_slice).unwrap_or(&[])
}

/// Instances of an app's status that are `healthy`, and all of them, as `1/2`.
pub fn healthy_of_total(status: &Value) -> String {
    let all = list_of(status, "instances");
    let healthy = all.iter().filter(|i| i["state"] == "healthy").count();
    format!("{healthy}/{}", all.len())
}

/// How long the app has served its current version: the oldest instance of that version.
pub fn app_uptime(status: &Value) -> String {
    let current = &status["version"];
    list_of(status, "builds")
        .iter()
        .find(|b| &b["version"] == current)
        .and_then(|b| {
            list_of(b, "instances")
                .iter()
                .filter_map(|i| i["uptime_secs"].as_u64())
                .max()
        })
        .map_or_else(|| "-".into(), duration)
}

/// `list`, joined with each app's `status` and its routes (`None` when that request
/// failed: the columns then show `-`).
pub fn apps(list: &Value, status_of: &dyn Fn(&str) -> Option<Value>, routes: &Value) -> String {
    let apps = list_of(list, "apps");
    if apps.is_empty() {
        return "No apps.\n".into();
    }
    let rows: Vec<Vec<String>> = apps
        .iter()
        .map(|a| {
            let name = a["name"].as_str().unwrap_or_default();
            let status = status_of(name);
            let app_routes = list_of(routes, "routes")
                .iter()
                .find(|r| r["app"] == name)
                .map_or(Value::Null, |r| r["routes"].clone());
            vec![
                name.to_string(),
                cell(&a["version"]),
                cell(&a["state"]),
                status
                    .as_ref()
                    .map_or_else(|| cell(&a["instances"]), healthy_of_total),
                cell(&app_routes),
                status.as_ref().map_or_else(|| "-".into(), app_uptime),
            ]
        })
        .collect();
    table(
        &["NAME", "VERSION", "STATE", "HEALTHY", "ROUTES", "UPTIME"],
        &rows,
    )
}

/// One app's `status`, with its routes when known.
pub fn app_status(s: &Value, routes: Option<&Value>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} {} {}",
        cell(&s["name"]),
        cell(&s["version"]),
        cell(&s["state"])
    );
    let _ = writeln!(out, "  instances:  {} healthy", healthy_of_total(s));
    if let Some(r) = routes {
        let _ = writeln!(out, "  routes:     {}", cell(r));
    }
    let _ = writeln!(out, "  uptime:     {}", app_uptime(s));
    let _ = writeln!(out, "  last error: {}", cell(&s["last_error"]));
    let instances = list_of(s, "builds")
        .iter()
        .flat_map(|b| {
            list_of(b, "instances").iter().map(move |i| {
                vec![
                    cell(&i["id"]),
                    cell(&b["version"]),
                    cell(&i["state"]),
                    cell(&i["pid"]),
                    cell(&i["port"]),
                    i["uptime_secs"].as_u64().map_or("-".into(), duration),
                    cell(&i["requests_total"]),
                ]
            })
        })
        .collect::<Vec<_>>();
    if !instances.is_empty() {
        out.push('\n');
        out.push_str(&table(
            &[
                "INSTANCE", "VERSION", "STATE", "PID", "PORT", "UPTIME", "REQUESTS",
            ],
            &instances,
        ));
    }
    let certs: Vec<Vec<String>> = list_of(s, "certificates")
        .iter()
        .map(|c| {
            vec![
                cell(&c["host"]),
                cell(&c["state"]),
                cell(&c["source"]),
                c["not_after_unix_secs"]
                    .as_u64()
                    .map_or("-".into(), date_of),
                cell(&c["error"]),
            ]
        })
        .collect();
    if !certs.is_empty() {
        out.push('\n');
        out.push_str(&table(
            &["CERTIFICATE", "STATE", "SOURCE", "EXPIRES", "ERROR"],
            &certs,
        ));
    }
    out
}

/// `routes`: one row per route.
pub fn routes(v: &Value) -> String {
    let rows: Vec<Vec<String>> = list_of(v, "routes")
        .iter()
        .flat_map(|a| {
            list_of(a, "routes")
                .iter()
                .map(move |r| vec![cell(&a["app"]), cell(r)])
        })
        .collect();
    if rows.is_empty() {
        return "No routes.\n".into();
    }
    table(&["APP", "ROUTE"], &rows)
}

/// A Unix time as a UTC date and time.
fn date_of(unix: u64) -> String {
    let Ok(t) = time::OffsetDateTime::from_unix_timestamp(unix as i64) else {
        return unix.to_string();
    };
    let fmt = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute] UTC");
    t.format(&fmt).unwrap_or_else(|_| unix.to_string())
}

/// `list_releases`: newest first, the running one marked.
pub fn releases(v: &Value, now_unix: u64) -> String {
    let rows: Vec<Vec<String>> = list_of(v, "releases")
        .iter()
        .map(|r| {
            let age = r["deployed_at_unix_secs"]
                .as_u64()
                .map_or("-".into(), |t| duration(now_unix.saturating_sub(t)));
            let mut message = cell(&r["commit_message"]);
            if r["git_dirty"] == Value::Bool(true) {
                message.push_str(" (dirty)");
            }
            vec![
                if r["current"] == Value::Bool(true) {
                    "*".into()
                } else {
                    String::new()
                },
                cell(&r["version"]),
                age,
                message,
            ]
        })
        .collect();
    if rows.is_empty() {
        return format!("No releases of {}.\n", cell(&v["app"]));
    }
    table(&["", "VERSION", "AGE", "MESSAGE"], &rows)
}

/// A uid as its user name when the host knows one.
fn user_of(uid: &Value) -> String {
    match uid.as_u64().and_then(|u| u32::try_from(u).ok()) {
        Some(u) => nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(u))
            .ok()
            .flatten()
            .map_or_else(|| u.to_string(), |user| user.name),
        None => cell(uid),
    }
}

/// `processes`: the server's processes, then the app instances.
pub fn processes(v: &Value) -> String {
    let rows: Vec<Vec<String>> = list_of(v, "processes")
        .iter()
        .map(|p| {
            let role = match p["index"].as_u64() {
                Some(i) => format!("{}/{i}", cell(&p["role"])),
                None => cell(&p["role"]),
            };
            vec![
                role,
                cell(&p["pid"]),
                user_of(&p["uid"]),
                cell(&p["state"]),
                cell(&p["generation"]),
                p["uptime_secs"].as_u64().map_or("-".into(), duration),
            ]
        })
        .collect();
    let mut out = table(
        &["ROLE", "PID", "USER", "STATE", "GENERATION", "UPTIME"],
        &rows,
    );
    let instances: Vec<Vec<String>> = list_of(v, "instances")
        .iter()
        .map(|i| {
            vec![
                cell(&i["app"]),
                cell(&i["instance"]),
                cell(&i["version"]),
                cell(&i["pid"]),
                user_of(&i["uid"]),
                cell(&i["state"]),
                cell(&i["port"]),
                i["uptime_secs"].as_u64().map_or("-".into(), duration),
            ]
        })
        .collect();
    if !instances.is_empty() {
        out.push('\n');
        out.push_str(&table(
            &[
                "APP", "INSTANCE", "VERSION", "PID", "USER", "STATE", "PORT", "UPTIME",
            ],
            &instances,
        ));
    }
    out
}

/// `key: value` lines, nested keys joined with dots, keys aligned.
pub fn key_values(v: &Value) -> String {
    fn flatten(prefix: &str, v: &Value, out: &mut Vec<(String, String)>) {
        match v {
            Value::Object(map) if !map.is_empty() => {
                for (k, x) in map {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    flatten(&key, x, out);
                }
            }
            other => out.push((prefix.to_string(), cell(other))),
        }
    }
    let mut pairs = Vec::new();
    flatten("", v, &mut pairs);
    let width = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    let mut out = String::new();
    for (k, val) in pairs {
        let _ = writeln!(out, "{:<width$} {val}", format!("{k}:"));
    }
    out
}

/// The answer of a command that changes something: one line (`web: deployed v2`), then
/// the answer's other facts as `key: value` lines.
pub fn summary(v: &Value) -> String {
    let Some(map) = v.as_object() else {
        return format!("{}\n", cell(v));
    };
    let mut head: Vec<String> = Vec::new();
    if let Some(a) = map.get("app") {
        head.push(format!("{}:", cell(a)));
    }
    head.push(map.get("status").map_or_else(|| "ok".into(), cell));
    if let Some(ver) = map.get("version") {
        head.push(cell(ver));
    }
    let mut rest = serde_json::Map::new();
    for (k, x) in map {
        if !matches!(k.as_str(), "app" | "status" | "version") {
            rest.insert(k.clone(), x.clone());
        }
    }
    let mut out = head.join(" ");
    out.push('\n');
    if !rest.is_empty() {
        for line in key_values(&Value::Object(rest)).lines() {
            let _ = writeln!(out, "  {line}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_align_without_trailing_blanks() {
        let t = table(
            &["NAME", "STATE"],
            &[
                vec!["web".into(), "running".into()],
                vec!["api-long".into(), String::new()],
            ],
        );
        assert_eq!(t, "NAME      STATE\nweb       running\napi-long\n");
    }

    #[test]
    fn durations_read_like_kubectl() {
        assert_eq!(duration(5), "5s");
        assert_eq!(duration(125), "2m");
        assert_eq!(duration(3600), "1h");
        assert_eq!(duration(3 * 3600 + 240), "3h4m");
        assert_eq!(duration(2 * 86_400), "2d");
        assert_eq!(duration(2 * 86_400 + 5 * 3600 + 7), "2d5h");
    }

    #[test]
    fn summaries_lead_with_app_status_and_version() {
        let s = summary(&json!({"app":"web","new_app":true,"on_demand":false,
                                 "status":"deployed","version":"v2"}));
        assert_eq!(
            s,
            "web: deployed v2\n  new_app:   true\n  on_demand: false\n"
        );
    }

    #[test]
    fn processes_show_users_and_instances() {
        let v = json!({"processes":[{"generation":1,"index":null,"pid":10,"role":"master",
            "state":"active","uid":0,"uptime_secs":61}],
            "instances":[{"app":"web","instance":3,"pid":20,"port":10000,"state":"healthy",
            "uid":4294967000u64,"uptime_secs":5,"version":"v1"}]});
        let out = processes(&v);
        assert!(out.starts_with("ROLE    PID  USER  STATE   GENERATION  UPTIME\nmaster  10   root  active  1           1m\n"), "{out}");
        assert!(out.contains("\nAPP  INSTANCE  VERSION  PID  USER        STATE    PORT   UPTIME\nweb  3         v1       20   4294967000  healthy  10000  5s\n"), "{out}");
    }
}
