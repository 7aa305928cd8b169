//! Request validation (docs/management-protocol.md, "Validation"): each rule in the
//! documented order with its exact text. The first failure is the response.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;

use tako_ipc::route::{parse_route, RouteError, RoutePattern};

use crate::request::{DeployRequest, Request};

pub const MAX_APP_NAME_LEN: usize = 63;
pub const MAX_VERSION_LEN: usize = 128;
pub const MAX_INSTANCES: u8 = 32;
pub const MAX_ROUTES: usize = 100;
pub const MAX_OWNER_LEN: usize = 128;

/// A rejected request. `Display` is the response message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    #[error("Invalid app name: must not be empty")]
    AppNameEmpty,
    #[error("Invalid app name: must be at most 63 characters")]
    AppNameTooLong,
    #[error("Invalid app name: must start with a lowercase letter")]
    AppNameStart,
    #[error("Invalid app name: only lowercase letters, digits and '-' are allowed")]
    AppNameChars,
    #[error("Invalid app name: must not end with '-'")]
    AppNameTrailingDash,

    #[error("Invalid release version: must not be empty")]
    VersionEmpty,
    #[error("Invalid release version: must be at most 128 characters")]
    VersionTooLong,
    #[error("Invalid release version: '.' and '..' are not allowed")]
    VersionDots,
    #[error("Invalid release version: only letters, digits, '.', '_' and '-' are allowed")]
    VersionChars,

    #[error("Invalid release path: '{0}' must be absolute")]
    PathNotAbsolute(String),
    #[error("Invalid release path: '{0}' is not a directory")]
    PathNotDirectory(String),
    #[error("Invalid release path: '{path}' must stay under '{root}'")]
    PathOutsideRoot { path: String, root: String },
    /// A symlink or another entry that must not be followed; the text names it and why.
    #[error("Invalid release path: {0}")]
    PathRefused(String),

    #[error("Deploy rejected: instances must be at most 32")]
    TooManyInstances,

    #[error("Deploy rejected: app must define at least one route")]
    NoRoutes,
    #[error("Deploy rejected: routes must be non-empty values")]
    EmptyRoute,
    #[error("Deploy rejected: at most 100 routes per app")]
    TooManyRoutes,
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error("Deploy rejected: route '{route}' is already used by app '{other}'")]
    RouteConflict { route: String, other: String },

    #[error("Invalid environment variable name '{0}'")]
    EnvName(String),
    #[error("Invalid value for environment variable '{0}': contains a NUL byte")]
    EnvValueNul(String),

    #[error("Invalid upgrade owner: must be 1-128 letters, digits, '.', '_' or '-'")]
    UpgradeOwner,
}

/// Routes that passed validation: normalized, deduplicated, in the given order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidRoutes {
    pub patterns: Vec<RoutePattern>,
}

impl ValidRoutes {
    pub fn iter(&self) -> std::slice::Iter<'_, RoutePattern> {
        self.patterns.iter()
    }

    /// The strings stored in `app_routes` and reported by `routes`.
    pub fn normalized(&self) -> Vec<String> {
        self.patterns
            .iter()
            .map(|p| p.normalized().to_string())
            .collect()
    }
}

/// A deploy request that passed every check of "Validation" except the route conflict, which
/// needs the app's lock (see [`check_route_conflicts`]).
#[derive(Clone, PartialEq, Eq)]
pub struct ValidDeploy {
    pub app: String,
    pub version: String,
    /// Release directory strictly below `<data-dir>/apps/<app>/releases`, as reached there.
    pub path: PathBuf,
    pub routes: ValidRoutes,
    pub env: BTreeMap<String, String>,
    pub instances: u8,
    pub idle_timeout_secs: u32,
}

// Env values may be secrets.
impl std::fmt::Debug for ValidDeploy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ValidDeploy")
            .field("app", &self.app)
            .field("version", &self.version)
            .field("path", &self.path)
            .field("routes", &self.routes.normalized())
            .field("env_keys", &self.env.keys().collect::<Vec<_>>())
            .field("instances", &self.instances)
            .field("idle_timeout_secs", &self.idle_timeout_secs)
            .finish()
    }
}

pub fn validate_app_name(name: &str) -> Result<(), ValidationError> {
    let first = name.chars().next().ok_or(ValidationError::AppNameEmpty)?;
    if name.chars().count() > MAX_APP_NAME_LEN {
        return Err(ValidationError::AppNameTooLong);
    }
    if !first.is_ascii_lowercase() {
        return Err(ValidationError::AppNameStart);
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(ValidationError::AppNameChars);
    }
    if name.ends_with('-') {
        return Err(ValidationError::AppNameTrailingDash);
    }
    Ok(())
}

fn is_version_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-'
}

pub fn validate_release_version(version: &str) -> Result<(), ValidationError> {
    if version.is_empty() {
        return Err(ValidationError::VersionEmpty);
    }
    if version.chars().count() > MAX_VERSION_LEN {
        return Err(ValidationError::VersionTooLong);
    }
    if version == "." || version == ".." {
        return Err(ValidationError::VersionDots);
    }
    if !version.bytes().all(is_version_char) {
        return Err(ValidationError::VersionChars);
    }
    Ok(())
}

pub fn validate_instances(instances: u8) -> Result<u8, ValidationError> {
    if instances > MAX_INSTANCES {
        return Err(ValidationError::TooManyInstances);
    }
    Ok(instances)
}

/// The list rules, then each entry, then silent removal of duplicates after normalization
/// (first occurrence kept).
pub fn validate_routes(raw: &[String]) -> Result<ValidRoutes, ValidationError> {
    if raw.is_empty() {
        return Err(ValidationError::NoRoutes);
    }
    if raw.iter().any(|r| r.trim().is_empty()) {
        return Err(ValidationError::EmptyRoute);
    }
    if raw.len() > MAX_ROUTES {
        return Err(ValidationError::TooManyRoutes);
    }
    let mut seen = HashSet::new();
    let mut patterns = Vec::with_capacity(raw.len());
    for entry in raw {
        let pattern = parse_route(entry)?;
        if seen.insert(pattern.normalized().to_string()) {
            patterns.push(pattern);
        }
    }
    Ok(ValidRoutes { patterns })
}

/// The route conflict: a route of `app` identical (by identity key) to a route owned by another
/// app. `others` may include `app`'s own routes; they are skipped.
pub fn check_route_conflicts<'a>(
    app: &str,
    routes: &ValidRoutes,
    others: impl IntoIterator<Item = (&'a str, &'a RoutePattern)>,
) -> Result<(), ValidationError> {
    let taken: Vec<(String, &str)> = others
        .into_iter()
        .filter(|(owner, _)| *owner != app)
        .map(|(owner, p)| (p.identity_key(), owner))
        .collect();
    for pattern in &routes.patterns {
        let key = pattern.identity_key();
        if let Some((_, owner)) = taken.iter().find(|(k, _)| *k == key) {
            return Err(ValidationError::RouteConflict {
                route: pattern.normalized().to_string(),
                other: owner.to_string(),
            });
        }
    }
    Ok(())
}

/// `deploy.env` and `update_secrets.secrets`, in key order.
pub fn validate_env(env: &BTreeMap<String, String>) -> Result<(), ValidationError> {
    for (key, value) in env {
        if key.is_empty() || key.contains('=') || key.contains('\0') {
            return Err(ValidationError::EnvName(key.clone()));
        }
        if value.contains('\0') {
            return Err(ValidationError::EnvValueNul(key.clone()));
        }
    }
    Ok(())
}

pub fn validate_upgrade_owner(owner: &str) -> Result<(), ValidationError> {
    if owner.is_empty() || owner.len() > MAX_OWNER_LEN || !owner.bytes().all(is_version_char) {
        return Err(ValidationError::UpgradeOwner);
    }
    Ok(())
}

/// Every check of a deploy, in the documented order: app name, version, path, instances,
/// routes, env. The path check needs the file system, so the server passes it in: it gets
/// the raw path and answers with the directory to use.
pub fn validate_deploy_with(
    req: &DeployRequest,
    check_path: impl FnOnce(&str) -> Result<PathBuf, ValidationError>,
) -> Result<ValidDeploy, ValidationError> {
    validate_app_name(&req.app)?;
    validate_release_version(&req.version)?;
    let path = check_path(&req.path)?;
    let instances = validate_instances(req.instances)?;
    let routes = validate_routes(&req.routes)?;
    validate_env(&req.env)?;
    Ok(ValidDeploy {
        app: req.app.clone(),
        version: req.version.clone(),
        path,
        routes,
        env: req.env.clone(),
        instances,
        idle_timeout_secs: req.idle_timeout,
    })
}

/// The field checks of every command that need no file system: app name, rollback version,
/// secrets, upgrade owner. For `deploy` only its name and version are checked here; use
/// [`validate_deploy`] for the rest.
pub fn validate_fields(req: &Request) -> Result<(), ValidationError> {
    if let Some(app) = req.app() {
        validate_app_name(app)?;
    }
    if let Some(version) = req.version() {
        validate_release_version(version)?;
    }
    match req {
        Request::UpdateSecrets { secrets, .. } => validate_env(secrets),
        Request::EnterUpgrading { owner } | Request::ExitUpgrading { owner } => {
            validate_upgrade_owner(owner)
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::parse_request;

    fn msg<T: std::fmt::Debug>(r: Result<T, ValidationError>) -> String {
        r.expect_err("must fail").to_string()
    }

    #[test]
    fn app_name_rules_in_order() {
        for ok in ["a", "web", "a1-b2", &"a".repeat(63)] {
            assert_eq!(validate_app_name(ok), Ok(()), "{ok}");
        }
        let cases = [
            ("", "Invalid app name: must not be empty"),
            (
                &*"a".repeat(64),
                "Invalid app name: must be at most 63 characters",
            ),
            (
                "1abc",
                "Invalid app name: must start with a lowercase letter",
            ),
            (
                "-abc",
                "Invalid app name: must start with a lowercase letter",
            ),
            (
                "Web",
                "Invalid app name: must start with a lowercase letter",
            ),
            ("é", "Invalid app name: must start with a lowercase letter"),
            (
                "web_app",
                "Invalid app name: only lowercase letters, digits and '-' are allowed",
            ),
            (
                "weB",
                "Invalid app name: only lowercase letters, digits and '-' are allowed",
            ),
            (
                "a/../b",
                "Invalid app name: only lowercase letters, digits and '-' are allowed",
            ),
            ("web-", "Invalid app name: must not end with '-'"),
        ];
        for (name, want) in cases {
            assert_eq!(msg(validate_app_name(name)), want, "{name:?}");
        }
    }

    #[test]
    fn version_rules_in_order() {
        for ok in ["abc1234", "v1.2.3_rc-1", "...", &"V".repeat(128)] {
            assert_eq!(validate_release_version(ok), Ok(()), "{ok}");
        }
        let cases = [
            ("", "Invalid release version: must not be empty"),
            (
                &*"v".repeat(129),
                "Invalid release version: must be at most 128 characters",
            ),
            (".", "Invalid release version: '.' and '..' are not allowed"),
            (
                "..",
                "Invalid release version: '.' and '..' are not allowed",
            ),
            (
                "a/b",
                "Invalid release version: only letters, digits, '.', '_' and '-' are allowed",
            ),
            (
                "a b",
                "Invalid release version: only letters, digits, '.', '_' and '-' are allowed",
            ),
        ];
        for (v, want) in cases {
            assert_eq!(msg(validate_release_version(v)), want, "{v:?}");
        }
    }

    #[test]
    fn instances_cap() {
        assert_eq!(validate_instances(0), Ok(0));
        assert_eq!(validate_instances(32), Ok(32));
        for n in [33, 255] {
            assert_eq!(
                msg(validate_instances(n)),
                "Deploy rejected: instances must be at most 32"
            );
        }
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn route_list_rules_in_order() {
        assert_eq!(
            msg(validate_routes(&[])),
            "Deploy rejected: app must define at least one route"
        );
        assert_eq!(
            msg(validate_routes(&strings(&["a.com", "  "]))),
            "Deploy rejected: routes must be non-empty values"
        );
        assert_eq!(
            msg(validate_routes(&strings(&["a.com", ""]))),
            "Deploy rejected: routes must be non-empty values"
        );
        let many: Vec<String> = (0..101).map(|i| format!("h{i}.example.com")).collect();
        assert_eq!(
            msg(validate_routes(&many)),
            "Deploy rejected: at most 100 routes per app"
        );
        // An empty entry wins over the count; the count wins over a bad entry.
        let mut many_with_empty = many.clone();
        many_with_empty.push(String::new());
        assert_eq!(
            msg(validate_routes(&many_with_empty)),
            "Deploy rejected: routes must be non-empty values"
        );
        let mut many_bad = many.clone();
        many_bad[0] = "/nohost".into();
        assert_eq!(
            msg(validate_routes(&many_bad)),
            "Deploy rejected: at most 100 routes per app"
        );
        assert!(validate_routes(&many[..100]).is_ok());
    }

    #[test]
    fn route_entries_use_the_route_parser_texts() {
        let cases = [
            (
                "a b.com",
                "Invalid route 'a b.com': must be at most 1024 characters without spaces",
            ),
            ("/api", "Invalid route '/api': missing host"),
            (
                "exa_mple.com",
                "Invalid route 'exa_mple.com': invalid host 'exa_mple.com'",
            ),
            (
                "a.*.com",
                "Invalid route 'a.*.com': '*' is only allowed as a leading '*.' label",
            ),
            ("a.com:0", "Invalid route 'a.com:0': invalid port"),
            (
                "tako.internal",
                "Invalid route 'tako.internal': host 'tako.internal' is reserved",
            ),
            (
                "a.com/x?y",
                "Invalid route 'a.com/x?y': invalid path '/x?y'",
            ),
        ];
        for (r, want) in cases {
            assert_eq!(msg(validate_routes(&strings(&["ok.com", r]))), want, "{r}");
        }
        let long = format!("{}.com", "a".repeat(1021));
        assert_eq!(
            msg(validate_routes(std::slice::from_ref(&long))),
            format!("Invalid route '{long}': must be at most 1024 characters without spaces")
        );
    }

    #[test]
    fn routes_are_normalized_and_deduplicated_in_order() {
        let v = validate_routes(&strings(&[
            "Web.Example.COM.",
            "example.com/api/*",
            "web.example.com",
            "b.example.com:8443",
        ]))
        .expect("valid");
        assert_eq!(
            v.normalized(),
            ["web.example.com", "example.com/api/*", "b.example.com:8443"]
        );
    }

    #[test]
    fn route_conflicts_use_identity_and_skip_own_routes() {
        let mine = validate_routes(&strings(&["a.com/api/", "b.com"])).expect("mine");
        let other = validate_routes(&strings(&["a.com:8080/api", "c.com"])).expect("other");
        let own = validate_routes(&strings(&["b.com/*"])).expect("own");
        let existing: Vec<(&str, &RoutePattern)> = other
            .patterns
            .iter()
            .map(|p| ("shop", p))
            .chain(own.patterns.iter().map(|p| ("web", p)))
            .collect();
        assert_eq!(
            msg(check_route_conflicts(
                "web",
                &mine,
                existing.iter().copied()
            )),
            "Deploy rejected: route 'a.com/api/' is already used by app 'shop'"
        );
        let free = validate_routes(&strings(&["d.com", "b.com"])).expect("free");
        assert_eq!(
            check_route_conflicts("web", &free, existing.iter().copied()),
            Ok(())
        );
    }

    #[test]
    fn env_rules() {
        let env = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(validate_env(&env(&[("A", "x=y"), ("B_2", "")])), Ok(()));
        assert_eq!(
            msg(validate_env(&env(&[("", "v")]))),
            "Invalid environment variable name ''"
        );
        assert_eq!(
            msg(validate_env(&env(&[("A=B", "v")]))),
            "Invalid environment variable name 'A=B'"
        );
        assert_eq!(
            msg(validate_env(&env(&[("A\0", "v")]))),
            "Invalid environment variable name 'A\0'"
        );
        assert_eq!(
            msg(validate_env(&env(&[("K", "a\0b")]))),
            "Invalid value for environment variable 'K': contains a NUL byte"
        );
    }

    #[test]
    fn upgrade_owner_rules() {
        assert_eq!(validate_upgrade_owner("ci-run_42.x"), Ok(()));
        assert_eq!(validate_upgrade_owner(&"o".repeat(128)), Ok(()));
        for bad in ["", &*"o".repeat(129), "a b", "a/b", "ü"] {
            assert_eq!(
                msg(validate_upgrade_owner(bad)),
                "Invalid upgrade owner: must be 1-128 letters, digits, '.', '_' or '-'",
                "{bad:?}"
            );
        }
    }

    fn deploy(
        app: &str,
        version: &str,
        path: &str,
        routes: &[&str],
        instances: u8,
    ) -> DeployRequest {
        DeployRequest {
            app: app.into(),
            version: version.into(),
            path: path.into(),
            routes: strings(routes),
            env: BTreeMap::from([("K".to_string(), "v".to_string())]),
            instances,
            idle_timeout: 0,
        }
    }

    #[test]
    fn deploy_checks_run_in_the_documented_order() {
        // The path check is the server's; here it accepts one path.
        let check = |p: &str| {
            if p == "/srv/v1" {
                Ok(PathBuf::from(p))
            } else {
                Err(ValidationError::PathNotAbsolute(p.to_string()))
            }
        };
        let ok = validate_deploy_with(
            &deploy("web", "v1", "/srv/v1", &["Web.com", "web.com"], 0),
            check,
        )
        .expect("valid");
        assert_eq!(ok.path, PathBuf::from("/srv/v1"));
        assert_eq!(ok.routes.normalized(), ["web.com"]);
        assert_eq!(ok.instances, 0);

        // Everything wrong at once: the app name is reported first, then the next rule, ...
        let mut req = deploy("Bad", "..", "rel", &[], 40);
        req.env.insert("=".into(), "v".into());
        assert!(msg(validate_deploy_with(&req, check)).starts_with("Invalid app name"));
        req.app = "web".into();
        assert!(msg(validate_deploy_with(&req, check)).starts_with("Invalid release version"));
        req.version = "v1".into();
        assert!(msg(validate_deploy_with(&req, check)).starts_with("Invalid release path"));
        req.path = "/srv/v1".into();
        assert_eq!(
            msg(validate_deploy_with(&req, check)),
            "Deploy rejected: instances must be at most 32"
        );
        req.instances = 1;
        assert_eq!(
            msg(validate_deploy_with(&req, check)),
            "Deploy rejected: app must define at least one route"
        );
        req.routes = strings(&["web.com"]);
        assert_eq!(
            msg(validate_deploy_with(&req, check)),
            "Invalid environment variable name '='"
        );
        req.env.remove("=");
        assert!(validate_deploy_with(&req, check).is_ok());
        assert!(!format!("{:?}", validate_deploy_with(&req, check)).contains("\"v\""));
    }

    #[test]
    fn field_checks_of_other_commands() {
        let parse = |s: &str| parse_request(s.as_bytes()).expect("parse");
        assert_eq!(
            msg(validate_fields(&parse(r#"{"command":"stop","app":"Web"}"#))),
            "Invalid app name: must start with a lowercase letter"
        );
        assert_eq!(
            msg(validate_fields(&parse(
                r#"{"command":"rollback","app":"web","version":".."}"#
            ))),
            "Invalid release version: '.' and '..' are not allowed"
        );
        assert_eq!(
            msg(validate_fields(&parse(
                r#"{"command":"update_secrets","app":"web","secrets":{"A=B":"1"}}"#
            ))),
            "Invalid environment variable name 'A=B'"
        );
        assert_eq!(
            msg(validate_fields(&parse(
                r#"{"command":"enter_upgrading","owner":""}"#
            ))),
            "Invalid upgrade owner: must be 1-128 letters, digits, '.', '_' or '-'"
        );
        assert_eq!(
            validate_fields(&parse(r#"{"command":"status","app":"web"}"#)),
            Ok(())
        );
        assert_eq!(validate_fields(&parse(r#"{"command":"list"}"#)), Ok(()));
    }
}
