//! The deploy user owns everything under `<data-dir>/apps/<app>/`; root must never follow a
//! name there. Each test plants what a hostile deploy user could (a symlink, a FIFO, a huge
//! manifest) and checks that the server refuses with an error naming the path and the
//! reason, changes nothing outside the releases, and keeps serving the current build.
//!
//! The victims are root-owned directories outside the data dir: a server that follows the
//! planted name hands them to the app user and back to the deploy user (the install step's
//! ownership dance) or creates directories in them.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::common::fixture::{self, APP_JSON, APP_PY};
use crate::common::{temp_dir, users, Server};
use serde_json::{json, Value};

/// A manifest with an install step: the step that makes root hand the release directory
/// to the app user and back.
const INSTALL_JSON: &str =
    r#"{"runtime":"node","main":"server.py","start":["python3","{main}"],"install":"true"}"#;

fn require_root(test: &str) -> bool {
    if users::is_root() {
        return true;
    }
    eprintln!(
        "SKIPPED {test}: needs root (the attack is on root's file handling); CI runs as root"
    );
    false
}

/// The common start of an attack: root (or a skip), a victim, a server and the deploy user.
fn setup(test: &str) -> Option<(PathBuf, Server, (u32, u32))> {
    if !require_root(test) {
        return None;
    }
    let victim = victim_dir();
    let server = Server::start_default();
    let tako = server.deploy_owner();
    Some((victim, server, tako))
}

/// The refusal names what it refused and why.
fn assert_refusal(msg: &str, words: &[&str]) {
    for w in words {
        assert!(msg.contains(w), "the refusal should say {w:?}: {msg}");
    }
}

/// A root-owned directory outside every data dir, with a release-looking tree in it.
fn victim_dir() -> PathBuf {
    let d = temp_dir().join("victim");
    fs::create_dir_all(d.join("v9")).expect("victim dir");
    fs::write(d.join("v9/app.json"), INSTALL_JSON).expect("victim manifest");
    fs::write(d.join("v9/server.py"), APP_PY).expect("victim app");
    fs::write(
        d.join("secret.json"),
        r#"{"commit_message":"root-only secret"}"#,
    )
    .expect("victim secret");
    fs::set_permissions(d.join("secret.json"), fs::Permissions::from_mode(0o600))
        .expect("chmod secret");
    d
}

fn owner(p: &Path) -> (u32, u32) {
    let m = fs::symlink_metadata(p).unwrap_or_else(|e| panic!("stat {}: {e}", p.display()));
    (m.uid(), m.gid())
}

/// Every entry under `dir` (not following symlinks) is still owned by root.
fn assert_root_owned_tree(dir: &Path) {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        assert_eq!(owner(&d), (0, 0), "{} changed owner", d.display());
        for e in fs::read_dir(&d).expect("read victim dir").flatten() {
            let ft = e.file_type().expect("file type");
            assert_eq!(
                owner(&e.path()),
                (0, 0),
                "{} changed owner",
                e.path().display()
            );
            if ft.is_dir() {
                stack.push(e.path());
            }
        }
    }
}

/// `ln -s target link`, owned by the deploy user like everything it uploads.
fn plant_symlink(target: &Path, link: &Path, who: (u32, u32)) {
    if let Some(parent) = link.parent() {
        fs::create_dir_all(parent).expect("symlink parent");
    }
    std::os::unix::fs::symlink(target, link).expect("plant symlink");
    std::os::unix::fs::lchown(link, Some(who.0), Some(who.1)).expect("lchown symlink");
}

fn deploy_at(app: &str, version: &str, path: &Path) -> Value {
    json!({
        "command": "deploy", "app": app, "version": version,
        "path": path.display().to_string(), "routes": [format!("{app}.example.com")],
        "env": {}, "instances": 1, "idle_timeout": 300
    })
}

fn serves(server: &Server, host: &str, version: &str) {
    let r = server.app_get(host, "/").expect("request to the app");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["version"], json!(version), "{}", r.text());
}

#[test]
fn symlinked_releases_root_cannot_make_root_chown_outside() {
    let Some((victim, server, tako)) =
        setup("symlinked_releases_root_cannot_make_root_chown_outside")
    else {
        return;
    };
    let app_dir = server.data_dir.join("apps/web");
    fs::create_dir_all(&app_dir).expect("app dir");
    fixture::chown(&app_dir, tako);
    // `releases -> <victim>`: a path "below releases" is then anywhere the link points.
    plant_symlink(&victim, &app_dir.join("releases"), tako);
    let msg = server.err(&deploy_at("web", "v9", &app_dir.join("releases/v9")));
    assert_refusal(&msg, &["symbolic link", "releases"]);
    assert_root_owned_tree(&victim);
    // Nothing was registered.
    let list = server.ok(&json!({"command": "list"}));
    assert_eq!(list["apps"], json!([]), "{list}");
}

#[test]
fn symlinked_release_directory_is_refused() {
    let Some((victim, server, tako)) = setup("symlinked_release_directory_is_refused") else {
        return;
    };
    let releases = server.data_dir.join("apps/web/releases");
    server.release("web", "v1");
    plant_symlink(&victim.join("v9"), &releases.join("v9"), tako);
    let msg = server.err(&deploy_at("web", "v9", &releases.join("v9")));
    assert_refusal(&msg, &["symbolic link", "v9"]);
    assert_root_owned_tree(&victim);
}

#[test]
fn rollback_to_symlinked_release_is_refused_and_keeps_serving() {
    let Some((victim, server, tako)) =
        setup("rollback_to_symlinked_release_is_refused_and_keeps_serving")
    else {
        return;
    };
    server.deploy("web", "v1", &["web.example.com"], 1, &[]);
    let releases = server.data_dir.join("apps/web/releases");
    plant_symlink(&victim.join("v9"), &releases.join("v9"), tako);
    let msg = server.err(&json!({"command": "rollback", "app": "web", "version": "v9"}));
    assert_refusal(&msg, &["symbolic link", "v9"]);
    assert_root_owned_tree(&victim);
    serves(&server, "web.example.com", "v1");
    let status = server.app_status("web");
    assert_eq!(status["version"], json!("v1"), "{status}");
}

#[test]
fn fifo_manifest_is_refused_without_blocking() {
    if !require_root("fifo_manifest_is_refused_without_blocking") {
        return;
    }
    let server = Server::start_default();
    let dir = server.release("web", "v1");
    fs::remove_file(dir.join("app.json")).expect("remove manifest");
    nix::unistd::mkfifo(
        &dir.join("app.json"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .expect("mkfifo");
    fixture::chown(&dir.join("app.json"), server.deploy_owner());
    // A reader of the FIFO would block until a writer comes; the answer must come first.
    let msg = server.err(&deploy_at("web", "v1", &dir));
    assert_refusal(&msg, &["app.json", "not a regular file"]);
    // The server is not stuck: another command answers.
    server.ok(&json!({"command": "list"}));
}

#[test]
fn symlinked_manifest_is_not_followed() {
    let Some((victim, server, tako)) = setup("symlinked_manifest_is_not_followed") else {
        return;
    };
    server.deploy("web", "v1", &["web.example.com"], 1, &[]);
    // A second release whose app.json points at a root-only file: neither deploy nor the
    // release listing may read it.
    let v2 = server.release("web", "v2");
    fs::remove_file(v2.join("app.json")).expect("remove manifest");
    plant_symlink(&victim.join("secret.json"), &v2.join("app.json"), tako);
    let msg = server.err(&deploy_at("web", "v2", &v2));
    assert_refusal(&msg, &["app.json", "symbolic link"]);
    let list = server.ok(&json!({"command": "list_releases", "app": "web"}));
    assert!(
        !list.to_string().contains("root-only secret"),
        "a release listing read a root-only file through a symlink: {list}"
    );
    serves(&server, "web.example.com", "v1");
}

#[test]
fn oversized_manifest_is_refused() {
    if !require_root("oversized_manifest_is_refused") {
        return;
    }
    let server = Server::start_default();
    let pad = " ".repeat(2 << 20);
    let json = format!("{}{pad}", APP_JSON);
    let dir = fixture::write_release_with(
        &server.data_dir,
        "web",
        "v1",
        server.deploy_owner(),
        APP_PY,
        &json,
    );
    let msg = server.err(&deploy_at("web", "v1", &dir));
    assert_refusal(&msg, &["app.json", "1 MiB"]);
}

#[test]
fn releases_listing_does_not_follow_a_symlinked_root() {
    let Some((victim, server, tako)) = setup("releases_listing_does_not_follow_a_symlinked_root")
    else {
        return;
    };
    server.deploy("web", "v1", &["web.example.com"], 1, &[]);
    let releases = server.data_dir.join("apps/web/releases");
    // Swap the releases directory for a symlink to the victim after the deploy.
    fs::rename(&releases, server.data_dir.join("apps/web/releases-old")).expect("move");
    plant_symlink(&victim, &releases, tako);
    let resp = server.request(&json!({"command": "list_releases", "app": "web"}));
    assert!(
        !resp.to_string().contains("\"v9\""),
        "the listing showed a directory outside the data dir: {resp}"
    );
    let msg = resp["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("symbolic link"),
        "the listing answers with the reason: {resp}"
    );
}

#[test]
fn symlinked_shared_dir_cannot_make_root_create_or_chown_outside() {
    if !require_root("symlinked_shared_dir_cannot_make_root_create_or_chown_outside") {
        return;
    }
    let victim = temp_dir().join("victim-shared");
    fs::create_dir_all(&victim).expect("victim dir");
    let server = Server::start_default();
    let tako = server.deploy_owner();
    let dir = server.release("web", "v1");
    // `shared -> <victim>`: the server makes `shared/logs` on every spawn.
    plant_symlink(&victim, &server.data_dir.join("apps/web/shared"), tako);
    let msg = server.err(&deploy_at("web", "v1", &dir));
    assert_refusal(&msg, &["shared", "symbolic link"]);
    assert!(
        fs::read_dir(&victim).expect("victim").next().is_none(),
        "the server created something in a directory outside the data dir"
    );
    assert_root_owned_tree(&victim);
}

#[test]
fn install_step_cannot_hand_a_hardlinked_or_foreign_file_to_the_deploy_user() {
    if !require_root("install_step_cannot_hand_a_hardlinked_or_foreign_file_to_the_deploy_user") {
        return;
    }
    // The install step runs as the app user in the release directory; what it creates is
    // given back to the deploy user afterwards. Only what the app user owns and made there
    // may change hands, and a symlink it plants is not followed.
    let victim = victim_dir();
    let server = Server::start_default();
    let script = format!(
        "ln -s {victim} link && mkdir -p made/deep && touch made/deep/file",
        victim = victim.display()
    );
    let manifest = format!(
        r#"{{"runtime":"node","main":"server.py","start":["python3","{{main}}"],"install":"{script}"}}"#
    );
    let dir = fixture::write_release_with(
        &server.data_dir,
        "web",
        "v1",
        server.deploy_owner(),
        APP_PY,
        &manifest,
    );
    server.ok(&deploy_at("web", "v1", &dir));
    let tako = server.deploy_owner();
    assert_eq!(owner(&dir), tako, "release directory given back");
    assert_eq!(
        owner(&dir.join("made/deep/file")),
        tako,
        "install output given back"
    );
    assert_root_owned_tree(&victim);
}
