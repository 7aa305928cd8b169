//! The instance environment, built from scratch (docs/apps.md, "Environment").

use std::collections::BTreeMap;

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What an instance or install step gets. `instance` is `(port, id)` for an instance and
/// `None` for an install step (no PORT, HOST or TAKO_INSTANCE). `cache` is the app's
/// `XDG_CACHE_HOME` when it has a home of its own; the deploy env may override both.
pub fn build_env(
    deploy_env: &BTreeMap<String, String>,
    version: &str,
    home: &str,
    cache: Option<&str>,
    instance: Option<(u16, u32)>,
) -> Vec<(String, String)> {
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    env.insert(
        "PATH".into(),
        std::env::var("PATH").unwrap_or_else(|_| DEFAULT_PATH.into()),
    );
    env.insert("HOME".into(), home.to_string());
    if let Some(cache) = cache {
        env.insert("XDG_CACHE_HOME".into(), cache.to_string());
    }
    env.insert(
        "LANG".into(),
        std::env::var("LANG").unwrap_or_else(|_| "C.UTF-8".into()),
    );
    for (k, v) in deploy_env {
        env.insert(k.clone(), v.clone());
    }
    env.entry("NODE_ENV".into())
        .or_insert_with(|| "production".into());
    env.entry("TAKO_BUILD".into())
        .or_insert_with(|| version.to_string());
    if let Some((port, id)) = instance {
        env.insert("PORT".into(), port.to_string());
        env.insert("HOST".into(), "127.0.0.1".into());
        env.insert("TAKO_INSTANCE".into(), id.to_string());
    }
    env.insert("TAKO_VERSION".into(), version.to_string());
    env.remove("TAKO_APP_SOCKET");
    env.remove("TAKO_SOCKET");
    env.into_iter().collect()
}

/// HOME of apps without a home of their own: the server's, as the server runs them as
/// itself. (As root every app has its own, see [`super::identity`].)
pub fn home_of(users: Option<&crate::users::Users>) -> String {
    match users {
        Some(u) => u.app.home.clone(),
        None => std::env::var("HOME").unwrap_or_else(|_| "/".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_variables_win_and_defaults_yield() {
        let mut deploy = BTreeMap::new();
        deploy.insert("PORT".to_string(), "1".to_string());
        deploy.insert("NODE_ENV".to_string(), "staging".to_string());
        deploy.insert("TAKO_APP_SOCKET".to_string(), "/x".to_string());
        let env: BTreeMap<_, _> = build_env(
            &deploy,
            "v1",
            "/home/app",
            Some("/home/app/.cache"),
            Some((10001, 3)),
        )
        .into_iter()
        .collect();
        assert_eq!(env["PORT"], "10001");
        assert_eq!(env["NODE_ENV"], "staging");
        assert_eq!(env["TAKO_BUILD"], "v1");
        assert_eq!(env["TAKO_INSTANCE"], "3");
        assert_eq!(env["HOST"], "127.0.0.1");
        assert_eq!(env["XDG_CACHE_HOME"], "/home/app/.cache");
        assert!(!env.contains_key("TAKO_APP_SOCKET"));
        let install: BTreeMap<_, _> = build_env(&deploy, "v1", "/h", None, None)
            .into_iter()
            .collect();
        assert!(!install.contains_key("HOST") && !install.contains_key("TAKO_INSTANCE"));
    }
}
