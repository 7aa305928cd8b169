//! Status views: the AppStatus of `status` and of `tako.internal/status`, the page itself,
//! and the Prometheus page (docs/management-protocol.md, "Status objects"; docs/status-page.md;
//! docs/operations.md, "Metrics").

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use serde::Serialize;

use crate::apps::registry::{App, InstState};
use crate::certs::CertView;

/// Field order is the page's key order; the management socket re-sorts keys.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceView {
    pub id: u32,
    pub state: &'static str,
    pub port: u16,
    pub pid: Option<u32>,
    pub uptime_secs: u64,
    pub requests_total: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct BuildView {
    pub version: String,
    pub state: &'static str,
    pub instances: Vec<InstanceView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AppStatus {
    pub name: String,
    pub version: String,
    pub instances: Vec<InstanceView>,
    pub builds: Vec<BuildView>,
    pub state: &'static str,
    pub last_error: Option<String>,
    pub certificates: Vec<CertView>,
}

#[derive(Serialize)]
struct StatusPage<'a> {
    healthy: bool,
    apps: &'a [AppStatus],
    uptime_secs: u64,
}

/// What a peer that is neither loopback nor trusted may learn about one app: its name and
/// state. `last_error` holds app output (startup stderr can carry secrets), and pids, ports,
/// versions and instances describe the host, so none of them is here.
#[derive(Serialize)]
struct PublicApp<'a> {
    name: &'a str,
    state: &'static str,
}

#[derive(Serialize)]
struct PublicStatusPage<'a> {
    healthy: bool,
    apps: Vec<PublicApp<'a>>,
}

/// Both bodies of `tako.internal/status`, rendered together from one registry snapshot so
/// that they never disagree on health (docs/status-page.md, "How it is built").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedStatus {
    /// The whole page: loopback and trusted peers.
    pub body: String,
    /// Health and each app's name and state only: every other peer.
    pub public_body: String,
    pub healthy: bool,
}

/// Renders the full and the public page. Pretty-printed with two-space indents, like the
/// page always was, so a human reading either with curl gets the same shape.
pub fn render_pages(apps: &[AppStatus], healthy: bool, uptime_secs: u64) -> RenderedStatus {
    let page = StatusPage {
        healthy,
        apps,
        uptime_secs,
    };
    let public = PublicStatusPage {
        healthy,
        apps: apps
            .iter()
            .map(|a| PublicApp {
                name: &a.name,
                state: a.state,
            })
            .collect(),
    };
    // Serialising these plain structs cannot fail (string keys, no maps of other keys); the
    // fallbacks only keep a broken page from ever carrying more than the health bit.
    let fallback = || format!("{{\n  \"healthy\": {healthy},\n  \"apps\": []\n}}");
    RenderedStatus {
        body: serde_json::to_string_pretty(&page).unwrap_or_else(|_| fallback()),
        public_body: serde_json::to_string_pretty(&public).unwrap_or_else(|_| fallback()),
        healthy,
    }
}

fn build_state(instances: &[&crate::apps::registry::Instance]) -> &'static str {
    if instances.iter().any(|i| i.state.serves()) {
        "running"
    } else if instances
        .iter()
        .any(|i| matches!(i.state, InstState::Starting | InstState::Draining))
    {
        "deploying"
    } else if instances.iter().any(|i| i.state == InstState::Unhealthy) {
        "error"
    } else {
        "stopped"
    }
}

pub fn app_status(
    a: &App,
    totals: &HashMap<(String, u32), (u64, u32)>,
    certs: Vec<CertView>,
    now: Instant,
) -> AppStatus {
    let view = |i: &crate::apps::registry::Instance| InstanceView {
        id: i.id,
        state: i.state.as_str(),
        port: i.port,
        pid: i.pid,
        uptime_secs: now.duration_since(i.spawned).as_secs(),
        requests_total: totals
            .get(&(a.name.clone(), i.id))
            .map(|t| t.0)
            .unwrap_or(0),
    };
    let instances: Vec<InstanceView> = a.instances.values().map(view).collect();
    let mut by_version: BTreeMap<&str, Vec<&crate::apps::registry::Instance>> = BTreeMap::new();
    for i in a.instances.values() {
        by_version
            .entry(i.build.version.as_str())
            .or_default()
            .push(i);
    }
    let mut builds: Vec<BuildView> = Vec::new();
    if let Some(cur) = by_version.remove(a.config.version.as_str()) {
        builds.push(BuildView {
            version: a.config.version.clone(),
            state: build_state(&cur),
            instances: cur.iter().map(|i| view(i)).collect(),
        });
    }
    for (v, list) in by_version {
        builds.push(BuildView {
            version: v.to_string(),
            state: build_state(&list),
            instances: list.iter().map(|i| view(i)).collect(),
        });
    }
    AppStatus {
        name: a.name.clone(),
        version: a.config.version.clone(),
        instances,
        builds,
        state: a.state(),
        last_error: a.last_error.clone(),
        certificates: certs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(name: &str, state: &'static str, last_error: Option<&str>) -> AppStatus {
        AppStatus {
            name: name.into(),
            version: "v7".into(),
            instances: vec![InstanceView {
                id: 3,
                state: "healthy",
                port: 47123,
                pid: Some(4242),
                uptime_secs: 9,
                requests_total: 5,
            }],
            builds: Vec::new(),
            state,
            last_error: last_error.map(str::to_string),
            certificates: Vec::new(),
        }
    }

    #[test]
    fn public_page_holds_health_and_app_states_only() {
        let apps = [
            app(
                "web",
                "error",
                Some("boom DATABASE_URL=postgres://u:pw@db/x"),
            ),
            app("api", "running", None),
        ];
        let r = render_pages(&apps, false, 12);
        assert!(!r.healthy);
        assert_eq!(
            r.public_body,
            "{\n  \"healthy\": false,\n  \"apps\": [\n    {\n      \"name\": \"web\",\n      \"state\": \"error\"\n    },\n    {\n      \"name\": \"api\",\n      \"state\": \"running\"\n    }\n  ]\n}"
        );
        // The full page still carries everything, for loopback and trusted peers.
        let full: serde_json::Value = serde_json::from_str(&r.body).expect("the full page is JSON");
        assert_eq!(
            full["apps"][0]["last_error"],
            "boom DATABASE_URL=postgres://u:pw@db/x"
        );
        assert_eq!(full["apps"][0]["instances"][0]["pid"], 4242);
        assert_eq!(full["uptime_secs"], 12);
    }
}
