//! The management protocol's wire types (docs/management-protocol.md, "Lines", "Envelope",
//! "Commands"): requests parsed from one JSON line, responses written as one compact JSON line.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `hello.protocol_version` this server speaks.
pub const PROTOCOL_VERSION: u32 = 3;

/// Capabilities announced by `hello`, in the spec's order.
pub const CAPABILITIES: [&str; 10] = [
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

/// The line cap, newline included.
pub const MAX_LINE_LEN: usize = 1_048_576;

/// The answer to a line above [`MAX_LINE_LEN`].
pub const LINE_TOO_LONG: &str = "Invalid command: json line exceeds max length (1048576 bytes)";

/// Fields of `deploy`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployRequest {
    pub app: String,
    pub version: String,
    pub path: String,
    pub routes: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// u8 so that 256+ or a negative number is a type error; 33-255 is rejected by validation.
    pub instances: u8,
    /// Seconds.
    pub idle_timeout: u32,
}

// Env values may be secrets: Debug shows key names only.
impl fmt::Debug for DeployRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeployRequest")
            .field("app", &self.app)
            .field("version", &self.version)
            .field("path", &self.path)
            .field("routes", &self.routes)
            .field("env_keys", &self.env.keys().collect::<Vec<_>>())
            .field("instances", &self.instances)
            .field("idle_timeout", &self.idle_timeout)
            .finish()
    }
}

/// One request line. The variant order is the order serde lists in its `unknown variant`
/// message, which must start with `hello` (the CLI matches on it). Unknown fields are ignored.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Request {
    Hello {
        protocol_version: u32,
    },
    ServerInfo,
    EnterUpgrading {
        owner: String,
    },
    ExitUpgrading {
        owner: String,
    },
    Deploy(DeployRequest),
    Rollback {
        app: String,
        version: String,
    },
    Reload {
        app: String,
    },
    Stop {
        app: String,
    },
    Delete {
        app: String,
    },
    UpdateSecrets {
        app: String,
        secrets: BTreeMap<String, String>,
    },
    Status {
        app: String,
    },
    List,
    Routes,
    ListReleases {
        app: String,
    },
    RestartWorkers,
    Processes,
    ReloadCerts,
    /// In-place re-exec of the binary with the listeners kept (docs/architecture.md,
    /// "Restarts and upgrades").
    Upgrade,
}

impl fmt::Debug for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Request::Deploy(d) => d.fmt(f),
            Request::UpdateSecrets { app, secrets } => f
                .debug_struct("UpdateSecrets")
                .field("app", app)
                .field("secret_keys", &secrets.keys().collect::<Vec<_>>())
                .finish(),
            Request::Hello { protocol_version } => f
                .debug_struct("Hello")
                .field("protocol_version", protocol_version)
                .finish(),
            Request::EnterUpgrading { owner } | Request::ExitUpgrading { owner } => {
                f.debug_struct(self.name()).field("owner", owner).finish()
            }
            other => {
                let mut s = f.debug_struct(other.name());
                if let Some(app) = other.app() {
                    s.field("app", &app);
                }
                if let Some(version) = other.version() {
                    s.field("version", &version);
                }
                s.finish()
            }
        }
    }
}

impl Request {
    /// The `command` string.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Hello { .. } => "hello",
            Request::ServerInfo => "server_info",
            Request::EnterUpgrading { .. } => "enter_upgrading",
            Request::ExitUpgrading { .. } => "exit_upgrading",
            Request::Deploy(_) => "deploy",
            Request::Rollback { .. } => "rollback",
            Request::Reload { .. } => "reload",
            Request::Stop { .. } => "stop",
            Request::Delete { .. } => "delete",
            Request::UpdateSecrets { .. } => "update_secrets",
            Request::Status { .. } => "status",
            Request::List => "list",
            Request::Routes => "routes",
            Request::ListReleases { .. } => "list_releases",
            Request::RestartWorkers => "restart_workers",
            Request::Processes => "processes",
            Request::ReloadCerts => "reload_certs",
            Request::Upgrade => "upgrade",
        }
    }

    /// Commands audited at `info` (docs/management-protocol.md, "Audit log").
    pub fn is_mutating(&self) -> bool {
        matches!(
            self,
            Request::Deploy(_)
                | Request::Rollback { .. }
                | Request::Reload { .. }
                | Request::Stop { .. }
                | Request::Delete { .. }
                | Request::UpdateSecrets { .. }
                | Request::EnterUpgrading { .. }
                | Request::ExitUpgrading { .. }
                | Request::RestartWorkers
                | Request::ReloadCerts
                | Request::Upgrade
        )
    }

    /// The `app` field, for commands that have one.
    pub fn app(&self) -> Option<&str> {
        match self {
            Request::Deploy(d) => Some(&d.app),
            Request::Rollback { app, .. }
            | Request::Reload { app }
            | Request::Stop { app }
            | Request::Delete { app }
            | Request::UpdateSecrets { app, .. }
            | Request::Status { app }
            | Request::ListReleases { app } => Some(app),
            _ => None,
        }
    }

    /// The release `version` of `deploy` and `rollback`.
    pub fn version(&self) -> Option<&str> {
        match self {
            Request::Deploy(d) => Some(&d.version),
            Request::Rollback { version, .. } => Some(version),
            _ => None,
        }
    }

    /// For a command refused while the server is upgrading (docs/management-protocol.md,
    /// "Commands refused during an upgrade"), its name as the refusal shows it; `None` for
    /// commands that are always allowed.
    pub fn upgrade_gated_name(&self) -> Option<&'static str> {
        // `update-secrets` keeps the hyphen of tako-server 0.0.1-alpha.
        match self {
            Request::Deploy(_) => Some("deploy"),
            Request::Stop { .. } => Some("stop"),
            Request::Delete { .. } => Some("delete"),
            Request::Rollback { .. } => Some("rollback"),
            Request::Reload { .. } => Some("reload"),
            Request::UpdateSecrets { .. } => Some("update-secrets"),
            _ => None,
        }
    }
}

/// Parses one line (without its `\n`). The error is the whole response message:
/// `Invalid command: <parser message>`.
pub fn parse_request(line: &[u8]) -> Result<Request, String> {
    let text = std::str::from_utf8(line).map_err(|e| format!("Invalid command: {e}"))?;
    serde_json::from_str(text).map_err(|e| format!("Invalid command: {}", without_values(&e)))
}

/// What serde calls a value it did not expect, in the words it starts its description with.
const VALUE_KINDS: [&str; 10] = [
    "string",
    "integer",
    "floating point",
    "boolean",
    "character",
    "byte array",
    "unit value",
    "null",
    "sequence",
    "map",
];

/// The parser's message without the input it quotes. serde describes a value of the wrong
/// type or range with the value itself (``invalid type: string "hunter2", expected a map``);
/// that value may be an app secret, and the message goes back to `ctl`, into its output and
/// whatever logs that. Only the value's kind, the expectation and the position are kept.
fn without_values(e: &serde_json::Error) -> String {
    let text = e.to_string();
    for prefix in ["invalid type: ", "invalid value: "] {
        let Some(rest) = text.strip_prefix(prefix) else {
            continue;
        };
        let kind = VALUE_KINDS
            .iter()
            .find(|k| rest.starts_with(*k))
            .copied()
            .unwrap_or("value");
        // The expectation names our types and comes after the value, so the last one is it.
        return match rest.rfind(", expected ") {
            Some(i) => format!("{prefix}{kind}{}", &rest[i..]),
            None if e.line() > 0 => {
                format!("{prefix}{kind} at line {} column {}", e.line(), e.column())
            }
            None => format!("{prefix}{kind}"),
        };
    }
    text
}

/// One answer line: `{"status":"ok","data":…}` or `{"status":"error","message":…}`. The
/// server writes it with [`ok`] and [`error`]; a client reads it with [`parse_response`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Response {
    Ok {
        #[serde(default)]
        data: Value,
    },
    Error {
        message: String,
    },
}

impl Response {
    /// The line, `\n` included. Object keys inside `data` come out sorted because
    /// serde_json's map is a BTreeMap (the `preserve_order` feature stays off).
    pub fn to_line(&self) -> String {
        // Serializing a Value cannot fail: its keys are always strings.
        let body = serde_json::to_string(self).unwrap_or_else(|_| match self {
            Response::Ok { .. } => r#"{"status":"ok","data":{}}"#.to_string(),
            Response::Error { .. } => {
                r#"{"status":"error","message":"internal error"}"#.to_string()
            }
        });
        body + "\n"
    }
}

/// `{"status":"ok","data":<data>}` plus `\n`.
pub fn ok(data: Value) -> String {
    Response::Ok { data }.to_line()
}

/// `{"status":"error","message":<msg>}` plus `\n`.
pub fn error(msg: &str) -> String {
    Response::Error {
        message: msg.to_string(),
    }
    .to_line()
}

/// Reads one answer line (without or with its `\n`).
pub fn parse_response(line: &str) -> Result<Response, serde_json::Error> {
    serde_json::from_str(line.trim_end_matches('\n'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(s: &str) -> Result<Request, String> {
        parse_request(s.as_bytes())
    }

    #[test]
    fn requests_and_responses_round_trip() {
        let lines = [
            r#"{"command":"hello","protocol_version":3}"#,
            r#"{"command":"list"}"#,
            r#"{"app":"web","command":"rollback","version":"v1"}"#,
            r#"{"app":"web","command":"update_secrets","secrets":{"K":"v"}}"#,
            r#"{"app":"web","command":"deploy","env":{},"idle_timeout":300,"instances":1,"path":"/p","routes":["a.com"],"version":"v1"}"#,
        ];
        for line in lines {
            let req = parse(line).expect(line);
            let back = serde_json::to_value(&req).expect("serialize");
            let want: Value = serde_json::from_str(line).expect("json");
            assert_eq!(back, want, "{line}");
        }
        let answers = [ok(json!({"a": 1})), error("App not found: web")];
        for a in answers {
            let r = parse_response(&a).expect("parse");
            assert_eq!(r.to_line(), a);
        }
        assert_eq!(
            parse_response(r#"{"status":"ok"}"#).expect("no data"),
            Response::Ok { data: Value::Null }
        );
    }

    #[test]
    fn spec_examples_verbatim() {
        assert_eq!(
            parse("not json").unwrap_err(),
            "Invalid command: expected ident at line 1 column 2"
        );
        let err = parse(r#"{"command":"xyz"}"#).unwrap_err();
        assert!(
            err.starts_with("Invalid command: unknown variant `xyz`, expected one of `hello`"),
            "{err}"
        );
        for name in [
            "server_info",
            "restart_workers",
            "processes",
            "reload_certs",
        ] {
            assert!(err.contains(&format!("`{name}`")), "{err}");
        }
    }

    #[test]
    fn bad_lines_are_invalid_commands() {
        let empty = parse("").unwrap_err();
        assert!(
            empty.starts_with("Invalid command: EOF while parsing"),
            "{empty}"
        );
        let utf8 = parse_request(b"{\"command\":\"list\xff\"}").unwrap_err();
        assert!(utf8.starts_with("Invalid command: invalid utf-8"), "{utf8}");
        let missing = parse(r#"{"command":"stop"}"#).unwrap_err();
        assert!(
            missing.starts_with("Invalid command: missing field `app`"),
            "{missing}"
        );
        let no_tag = parse(r#"{"app":"web"}"#).unwrap_err();
        assert!(
            no_tag.starts_with("Invalid command: missing field `command`"),
            "{no_tag}"
        );
        let wrong = parse(r#"{"command":"stop","app":5}"#).unwrap_err();
        assert!(
            wrong.starts_with("Invalid command: invalid type"),
            "{wrong}"
        );
        let array = parse("[1]").unwrap_err();
        // Values of the wrong type are named by kind, never quoted: they may be secrets.
        for (line, want) in [
            (
                r#"{"command":"update_secrets","app":"web","secrets":"hunter2"}"#,
                "Invalid command: invalid type: string, expected a map",
            ),
            (
                r#"{"command":"update_secrets","app":"web","secrets":{"K":7654321}}"#,
                "Invalid command: invalid type: integer, expected a string",
            ),
            (
                r#"{"command":"update_secrets","app":"web","secrets":"hunter2, expected x"}"#,
                "Invalid command: invalid type: string, expected a map",
            ),
        ] {
            let err = parse(line).unwrap_err();
            for secret in ["hunter2", "7654321", "expected x"] {
                assert!(!err.contains(secret), "{line}: {err}");
            }
            assert_eq!(err, want, "{line}");
        }
        assert!(array.starts_with("Invalid command: "), "{array}");
        let trailing = parse(r#"{"command":"list"} x"#).unwrap_err();
        assert!(
            trailing.starts_with("Invalid command: trailing characters"),
            "{trailing}"
        );
    }

    fn deploy_line(instances: &str, extra: &str) -> String {
        format!(
            r#"{{"command":"deploy","app":"web","version":"v1","path":"/p","routes":["a.com"],"instances":{instances},"idle_timeout":300{extra}}}"#
        )
    }

    #[test]
    fn deploy_fields_and_types() {
        let r = parse(&deploy_line("1", "")).expect("deploy");
        let Request::Deploy(d) = &r else {
            panic!("not deploy: {r:?}")
        };
        assert_eq!(d.instances, 1);
        assert_eq!(d.idle_timeout, 300);
        assert!(d.env.is_empty(), "env defaults to {{}}");
        assert_eq!(r.name(), "deploy");
        assert_eq!(r.app(), Some("web"));
        assert_eq!(r.version(), Some("v1"));
        assert!(r.is_mutating());

        assert_eq!(
            parse(&deploy_line("255", "")).map(|r| r.name()),
            Ok("deploy"),
            "33-255 parse; validation rejects them"
        );
        for bad in ["256", "-1", "1.5", "\"1\""] {
            let e = parse(&deploy_line(bad, "")).unwrap_err();
            assert!(e.starts_with("Invalid command: invalid "), "{bad}: {e}");
        }
        let e = parse(
            r#"{"command":"deploy","app":"w","version":"v","path":"/p","routes":[],"instances":1,"idle_timeout":4294967296}"#,
        )
        .unwrap_err();
        assert!(e.contains("expected u32"), "{e}");

        let with_env = parse(&deploy_line("0", r#","env":{"K":"V"},"future":true"#)).expect("env");
        let Request::Deploy(d) = with_env else {
            panic!("not deploy")
        };
        assert_eq!(d.env.get("K").map(String::as_str), Some("V"));
        let e = parse(&deploy_line("0", r#","env":{"K":1}"#)).unwrap_err();
        assert!(e.starts_with("Invalid command: invalid type"), "{e}");
    }

    #[test]
    fn every_command_parses_and_extra_fields_are_ignored() {
        let cases: &[(&str, &str, bool)] = &[
            (
                r#"{"command":"hello","protocol_version":3}"#,
                "hello",
                false,
            ),
            (r#"{"command":"server_info","x":1}"#, "server_info", false),
            (
                r#"{"command":"enter_upgrading","owner":"o"}"#,
                "enter_upgrading",
                true,
            ),
            (
                r#"{"command":"exit_upgrading","owner":"o"}"#,
                "exit_upgrading",
                true,
            ),
            (
                r#"{"command":"rollback","app":"a","version":"v"}"#,
                "rollback",
                true,
            ),
            (r#"{"command":"reload","app":"a"}"#, "reload", true),
            (r#"{"command":"stop","app":"a","force":true}"#, "stop", true),
            (r#"{"command":"delete","app":"a"}"#, "delete", true),
            (
                r#"{"command":"update_secrets","app":"a","secrets":{"K":"V"}}"#,
                "update_secrets",
                true,
            ),
            (r#"{"command":"status","app":"a"}"#, "status", false),
            (r#"{"command":"list"}"#, "list", false),
            (r#"{"command":"routes","extra":[1,2]}"#, "routes", false),
            (
                r#"{"command":"list_releases","app":"a"}"#,
                "list_releases",
                false,
            ),
            (r#"{"command":"restart_workers"}"#, "restart_workers", true),
            (r#"{"command":"processes"}"#, "processes", false),
            (r#"{"command":"reload_certs"}"#, "reload_certs", true),
        ];
        for (line, name, mutating) in cases {
            let r = parse(line).unwrap_or_else(|e| panic!("{line}: {e}"));
            assert_eq!(r.name(), *name);
            assert_eq!(r.is_mutating(), *mutating, "{name}");
        }
        let neg = parse(r#"{"command":"hello","protocol_version":-3}"#).unwrap_err();
        assert!(neg.starts_with("Invalid command: invalid value"), "{neg}");
    }

    #[test]
    fn gated_names() {
        let stop = parse(r#"{"command":"stop","app":"a"}"#).expect("stop");
        assert_eq!(stop.upgrade_gated_name(), Some("stop"));
        let secrets =
            parse(r#"{"command":"update_secrets","app":"a","secrets":{}}"#).expect("secrets");
        assert_eq!(secrets.upgrade_gated_name(), Some("update-secrets"));
        let enter = parse(r#"{"command":"enter_upgrading","owner":"o"}"#).expect("enter");
        assert_eq!(enter.upgrade_gated_name(), None);
    }

    #[test]
    fn debug_never_shows_secret_values() {
        let r = parse(r#"{"command":"update_secrets","app":"a","secrets":{"KEY":"hunter2"}}"#)
            .expect("secrets");
        let shown = format!("{r:?}");
        assert!(
            shown.contains("KEY") && !shown.contains("hunter2"),
            "{shown}"
        );
        let d = parse(&deploy_line("1", r#","env":{"TOKEN":"s3cr3t"}"#)).expect("deploy");
        let shown = format!("{d:?}");
        assert!(
            shown.contains("TOKEN") && !shown.contains("s3cr3t"),
            "{shown}"
        );
    }

    #[test]
    fn envelopes_are_one_compact_line_with_sorted_data_keys() {
        assert_eq!(
            ok(json!({"version": "v", "app": "web", "status": "deployed"})),
            "{\"status\":\"ok\",\"data\":{\"app\":\"web\",\"status\":\"deployed\",\"version\":\"v\"}}\n"
        );
        assert_eq!(ok(json!({})), "{\"status\":\"ok\",\"data\":{}}\n");
        assert_eq!(
            error("line one\nline \"two\""),
            "{\"status\":\"error\",\"message\":\"line one\\nline \\\"two\\\"\"}\n"
        );
        assert_eq!(
            error(LINE_TOO_LONG),
            "{\"status\":\"error\",\"message\":\"Invalid command: json line exceeds max length (1048576 bytes)\"}\n"
        );
    }
}
