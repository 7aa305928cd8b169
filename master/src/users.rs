//! Who each role runs as (docs/cli.md, "Users and privileges"). Checked once at startup.

use tako_ipc::{privilege, RunAs};

use crate::cli::Settings;

/// The resolved accounts when running as root. `None` means privilege separation is off.
#[derive(Debug, Clone)]
pub struct Users {
    pub proxy: RunAs,
    pub app: RunAs,
    pub deploy: RunAs,
}

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("User '{user}' for {flag} does not exist; create it with 'systemd-sysusers tako-server.conf' (shipped by the package) or pass {flag} <existing user>")]
    Missing { user: String, flag: &'static str },
    #[error("{0}")]
    Rule(&'static str),
    #[error("{0}")]
    Lookup(#[from] privilege::PrivilegeError),
}

fn find(name: &str, flag: &'static str) -> Result<RunAs, UserError> {
    privilege::lookup_user(name)?.ok_or_else(|| UserError::Missing {
        user: name.to_string(),
        flag,
    })
}

pub fn resolve(settings: &Settings) -> Result<Option<Users>, UserError> {
    if !privilege::running_as_root() {
        return Ok(None);
    }
    let proxy = find(&settings.proxy_user, "--proxy-user")?;
    let app = find(&settings.app_user, "--app-user")?;
    let deploy = find(&settings.deploy_user, "--deploy-user")?;
    if proxy.uid == 0 {
        return Err(UserError::Rule("--proxy-user must not be root"));
    }
    if app.uid == 0 {
        return Err(UserError::Rule("--app-user must not be root"));
    }
    if proxy.uid == app.uid || proxy.uid == deploy.uid {
        return Err(UserError::Rule(
            "--proxy-user must differ from --app-user and --deploy-user",
        ));
    }
    if app.uid == deploy.uid {
        tracing::warn!(user = %app.name, "--app-user equals --deploy-user: apps could use the management socket");
    }
    Ok(Some(Users { proxy, app, deploy }))
}
