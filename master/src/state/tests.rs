use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use rusqlite::Connection;

use super::lock::LOCK_FILE;
use super::*;

const BIN: &str = "0.1.0";

/// A fresh directory under the system temp dir, removed on drop.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let p = std::env::temp_dir().join(format!(
            "tako-state-{tag}-{}-{n}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777
}

fn app(name: &str, version: &str, routes: &[&str]) -> StoredApp {
    let path = format!("/opt/tako/apps/{name}/releases/{version}");
    StoredApp {
        name: name.to_string(),
        version: version.to_string(),
        path: path.clone(),
        cwd: path,
        command: vec!["bun".into(), "run".into(), "server.ts".into()],
        env: BTreeMap::from([("TAKO_ENV".to_string(), "production".to_string())]),
        min_instances: 2,
        base_port: 10_000,
        idle_timeout_secs: 300,
        stopped: false,
        routes: routes.iter().map(|r| r.to_string()).collect(),
        uid: None,
    }
}

fn tables(conn: &Connection) -> Vec<String> {
    let mut stmt = conn
        .prepare("SELECT name FROM sqlite_master WHERE type IN ('table','index') AND name NOT LIKE 'sqlite_%' ORDER BY name")
        .expect("prepare");
    stmt.query_map([], |r| r.get(0))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
}

fn columns(conn: &Connection, table: &str) -> Vec<String> {
    let mut stmt = conn
        .prepare("SELECT name FROM pragma_table_info(?1) ORDER BY cid")
        .expect("prepare");
    stmt.query_map([table], |r| r.get(0))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
}

#[test]
fn new_file_gets_schema_v2_with_pragmas_and_mode_0600() {
    let dir = TempDir::new("new");
    let data_dir = dir.path().join("data");
    let mut store = Store::open(&data_dir, BIN).expect("open");
    let file = data_dir.join(STATE_FILE);
    assert_eq!(store.file(), file);
    assert_eq!(mode(&file), 0o600);
    assert_eq!(mode(&data_dir), 0o755);

    let conn = store.conn();
    let uv: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .expect("user_version");
    assert_eq!(uv, 2);
    let jm: String = conn
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .expect("journal_mode");
    assert_eq!(jm, "wal");
    let fk: i64 = conn
        .pragma_query_value(None, "foreign_keys", |r| r.get(0))
        .expect("fk");
    assert_eq!(fk, 1);
    let sync: i64 = conn
        .pragma_query_value(None, "synchronous", |r| r.get(0))
        .expect("sync");
    assert_eq!(sync, 1, "NORMAL");
    let limit: i64 = conn
        .pragma_query_value(None, "journal_size_limit", |r| r.get(0))
        .expect("limit");
    assert_eq!(limit, 67_108_864);
    assert_eq!(
        tables(conn),
        [
            "app_routes",
            "apps",
            "apps_app_uid",
            "releases",
            "releases_app",
            "schema_meta",
            "server_state",
            "upgrade_lock"
        ]
    );
    let meta: (i64, i64, String, String) = conn
        .query_row("SELECT * FROM schema_meta", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .expect("meta");
    assert_eq!(meta, (1, 2, BIN.to_string(), "tako-server".to_string()));
    assert_eq!(store.server_mode().expect("mode"), ServerMode::Normal);
    assert_eq!(store.upgrade_owner().expect("owner"), None);

    // A write creates the WAL beside the file, with the file's mode.
    store.set_stopped("nope", true).expect("write");
    let wal = data_dir.join(format!("{STATE_FILE}-wal"));
    assert!(wal.exists());
    assert_eq!(mode(&wal), 0o600);
}

#[test]
fn reopen_of_v2_changes_nothing_and_keeps_data() {
    let dir = TempDir::new("reopen");
    {
        let mut s = Store::open(dir.path(), "0.0.9").expect("open");
        s.commit_deploy(
            &app("web", "v1", &["web.example.com"]),
            ReleaseKind::Deploy,
            10,
        )
        .expect("commit");
    }
    let mut s = Store::open(dir.path(), BIN).expect("reopen");
    let min: String = s
        .conn()
        .query_row("SELECT min_binary_version FROM schema_meta", [], |r| {
            r.get(0)
        })
        .expect("meta");
    assert_eq!(min, "0.0.9", "a v2 open updates nothing");
    assert_eq!(s.load_apps().expect("load").len(), 1);
}

#[test]
fn existing_file_mode_is_narrowed_to_0600() {
    let dir = TempDir::new("narrow");
    drop(Store::open(dir.path(), BIN).expect("open"));
    let file = dir.path().join(STATE_FILE);
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    drop(Store::open(dir.path(), BIN).expect("reopen"));
    assert_eq!(mode(&file), 0o600);
}

#[test]
fn deploy_round_trip_keeps_route_order_and_clears_stopped() {
    let dir = TempDir::new("deploy");
    let mut s = Store::open(dir.path(), BIN).expect("open");
    let web = app("web", "v1", &["z.example.com", "a.example.com/api/*"]);
    s.commit_deploy(&web, ReleaseKind::Deploy, 100)
        .expect("commit");
    s.commit_deploy(
        &app("api", "v7", &["api.example.com"]),
        ReleaseKind::Deploy,
        101,
    )
    .expect("commit");

    let apps = s.load_apps().expect("load");
    assert_eq!(
        apps.iter().map(|a| a.name.as_str()).collect::<Vec<_>>(),
        ["api", "web"]
    );
    assert_eq!(apps[1], web);
    let max: i64 = s
        .conn()
        .query_row("SELECT max_instances FROM apps WHERE name='web'", [], |r| {
            r.get(0)
        })
        .expect("max");
    assert_eq!(max, 32);

    assert!(s.set_stopped("web", true).expect("stop"));
    assert!(s.load_apps().expect("load")[1].stopped);

    // A new deploy replaces routes, updates the row and clears the stop flag.
    let mut web2 = app("web", "v2", &["new.example.com", "b.example.com"]);
    web2.stopped = true; // ignored: the switch always writes stopped = 0
    web2.min_instances = 0;
    s.commit_deploy(&web2, ReleaseKind::Rollback, 200)
        .expect("commit");
    let got = &s.load_apps().expect("load")[1];
    assert!(!got.stopped);
    assert_eq!(got.version, "v2");
    assert_eq!(got.min_instances, 0);
    assert_eq!(got.routes, ["new.example.com", "b.example.com"]);

    let rel = s.releases("web").expect("releases");
    assert_eq!(rel.len(), 2);
    assert_eq!(rel[0].version, "v2");
    assert_eq!(rel[0].kind, ReleaseKind::Rollback);
    assert_eq!(rel[0].result, ReleaseResult::Success);
    assert_eq!(rel[0].deployed_at_unix_secs, 200);
    assert_eq!(rel[0].error, None);
    assert_eq!(rel[1].version, "v1");
}

#[test]
fn release_failures_are_recorded_and_history_is_trimmed_to_100() {
    let dir = TempDir::new("trim");
    let mut s = Store::open(dir.path(), BIN).expect("open");
    s.record_release_failure("web", "bad", "/p/bad", ReleaseKind::Deploy, "boom", 1)
        .expect("fail");
    assert!(
        s.load_apps().expect("load").is_empty(),
        "failure writes releases only"
    );
    let rel = s.releases("web").expect("releases");
    assert_eq!(rel[0].result, ReleaseResult::Failed);
    assert_eq!(rel[0].error.as_deref(), Some("boom"));

    for i in 0..120u64 {
        s.commit_deploy(
            &app("web", &format!("v{i}"), &["w.example.com"]),
            ReleaseKind::Deploy,
            10 + i,
        )
        .expect("commit");
    }
    s.record_release_failure("other", "x", "/p/x", ReleaseKind::Deploy, "e", 5)
        .expect("fail");
    let rel = s.releases("web").expect("releases");
    assert_eq!(rel.len(), 100);
    assert_eq!(rel[0].version, "v119");
    assert_eq!(rel[99].version, "v20");
    assert_eq!(s.releases("other").expect("other").len(), 1);
}

#[test]
fn env_stop_base_port_and_delete() {
    let dir = TempDir::new("misc");
    let mut s = Store::open(dir.path(), BIN).expect("open");
    s.commit_deploy(
        &app("web", "v1", &["w.example.com"]),
        ReleaseKind::Deploy,
        1,
    )
    .expect("commit");

    let env = BTreeMap::from([
        ("A".to_string(), "1".to_string()),
        ("SECRET".to_string(), "s=3".to_string()),
    ]);
    assert!(s.update_env("web", &env).expect("env"));
    assert!(!s.update_env("ghost", &env).expect("env"));
    assert!(s.set_base_port("web", 12_000).expect("port"));
    assert!(!s.set_stopped("ghost", true).expect("stop"));
    let got = &s.load_apps().expect("load")[0];
    assert_eq!(got.env, env);
    assert_eq!(got.base_port, 12_000);

    assert!(s.delete_app("web").expect("delete"));
    assert!(!s.delete_app("web").expect("delete again"));
    assert!(s.load_apps().expect("load").is_empty());
    assert!(s.releases("web").expect("releases").is_empty());
    let routes: i64 = s
        .conn()
        .query_row("SELECT COUNT(*) FROM app_routes", [], |r| r.get(0))
        .expect("count");
    assert_eq!(routes, 0);
}

#[test]
fn undecodable_app_rows_are_skipped_and_left_in_place() {
    let dir = TempDir::new("skip");
    let mut s = Store::open(dir.path(), BIN).expect("open");
    s.commit_deploy(
        &app("good", "v1", &["g.example.com"]),
        ReleaseKind::Deploy,
        1,
    )
    .expect("commit");
    s.commit_deploy(
        &app("bad", "v1", &["b.example.com"]),
        ReleaseKind::Deploy,
        1,
    )
    .expect("commit");
    s.conn()
        .execute(
            "UPDATE apps SET command_json = 'not json' WHERE name = 'bad'",
            [],
        )
        .expect("break");
    let apps = s.load_apps().expect("load");
    assert_eq!(apps.len(), 1);
    assert_eq!(apps[0].name, "good");
    let n: i64 = s
        .conn()
        .query_row("SELECT COUNT(*) FROM apps", [], |r| r.get(0))
        .expect("count");
    assert_eq!(n, 2);
}

#[test]
fn upgrade_lock_has_a_single_owner() {
    let dir = TempDir::new("upgrade");
    let mut s = Store::open(dir.path(), BIN).expect("open");
    assert_eq!(s.exit_upgrading("a").expect("exit"), ExitOutcome::NotHolder);
    assert_eq!(
        s.enter_upgrading("a").expect("enter"),
        EnterOutcome::Acquired
    );
    assert_eq!(s.server_mode().expect("mode"), ServerMode::Upgrading);
    assert_eq!(s.upgrade_owner().expect("owner").as_deref(), Some("a"));
    assert_eq!(
        s.enter_upgrading("a").expect("again"),
        EnterOutcome::AlreadyHeld
    );
    assert_eq!(
        s.enter_upgrading("b").expect("other"),
        EnterOutcome::HeldBy("a".to_string())
    );
    assert_eq!(
        s.exit_upgrading("b").expect("exit b"),
        ExitOutcome::NotHolder
    );
    assert_eq!(s.server_mode().expect("mode"), ServerMode::Upgrading);

    // Another connection (a candidate) sees the same durable mode.
    let mut other = Store::open(dir.path(), BIN).expect("second connection");
    assert_eq!(other.server_mode().expect("mode"), ServerMode::Upgrading);
    assert_eq!(
        other.exit_upgrading("a").expect("exit"),
        ExitOutcome::Released
    );
    assert_eq!(s.server_mode().expect("mode"), ServerMode::Normal);
    assert_eq!(s.upgrade_owner().expect("owner"), None);

    // An owner stored with a non-text type reads as `unknown`.
    s.conn()
        .execute("INSERT INTO upgrade_lock VALUES (1, x'00ff', 0)", [])
        .expect("insert blob");
    assert_eq!(
        s.enter_upgrading("c").expect("enter"),
        EnterOutcome::HeldBy("unknown".to_string())
    );
}

#[test]
fn primary_boot_and_ready_columns() {
    let dir = TempDir::new("boot");
    let mut s = Store::open(dir.path(), BIN).expect("open");
    s.write_primary_ready(5).expect("ready");
    s.write_primary_boot(r#"{"workers":4}"#, 4242, 1000)
        .expect("boot");
    let row: (Option<String>, Option<i64>, Option<i64>, Option<i64>) = s
        .conn()
        .query_row(
            "SELECT settings_json, primary_pid, primary_started_at_unix_secs, primary_ready_at_unix_secs FROM server_state",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .expect("row");
    assert_eq!(
        row,
        (
            Some(r#"{"workers":4}"#.into()),
            Some(4242),
            Some(1000),
            None
        )
    );
    s.write_primary_ready(1010).expect("ready");
    let ready: i64 = s
        .conn()
        .query_row(
            "SELECT primary_ready_at_unix_secs FROM server_state",
            [],
            |r| r.get(0),
        )
        .expect("ready");
    assert_eq!(ready, 1010);
    assert_eq!(
        s.primary_settings_json().expect("settings").as_deref(),
        Some(r#"{"workers":4}"#)
    );
}

#[test]
fn newer_schema_is_refused_with_the_documented_text() {
    let dir = TempDir::new("newer");
    drop(Store::open(dir.path(), BIN).expect("open"));
    let file = dir.path().join(STATE_FILE);
    Connection::open(&file)
        .and_then(|c| c.pragma_update(None, "user_version", 3))
        .expect("bump");
    let err = Store::open(dir.path(), BIN).expect_err("must refuse");
    assert_eq!(
        err.to_string(),
        format!(
            "State database {} has schema version 3; this tako-server supports up to 2. Install a newer tako-server or restore a backup.",
            file.display()
        )
    );
}

#[test]
fn newer_min_binary_version_is_refused() {
    let dir = TempDir::new("newerbin");
    drop(Store::open(dir.path(), "0.3.0").expect("open"));
    let err = Store::open(dir.path(), BIN).expect_err("must refuse");
    assert!(matches!(err, StateError::NewerBinary { .. }), "{err}");
    assert!(err.to_string().contains("0.3.0"), "{err}");
}

#[test]
fn garbage_file_is_reported_corrupt_and_left_alone() {
    let dir = TempDir::new("corrupt");
    let file = dir.path().join(STATE_FILE);
    let garbage = vec![0x5a_u8; 8192];
    std::fs::write(&file, &garbage).expect("write");
    let err = Store::open(dir.path(), BIN).expect_err("corrupt");
    let f = file.display();
    assert_eq!(
        err.to_string(),
        format!("State database {f} is corrupt: file is not a database. Restore a backup ({f}.bak-*) or move the file away to start with an empty state.")
    );
    assert_eq!(
        std::fs::read(&file).expect("read"),
        garbage,
        "never recreated"
    );
}

#[test]
fn damaged_pages_are_reported_corrupt() {
    let dir = TempDir::new("damaged");
    {
        let mut s = Store::open(dir.path(), BIN).expect("open");
        for i in 0..200 {
            s.commit_deploy(
                &app(&format!("app{i}"), "v1", &["a.example.com"]),
                ReleaseKind::Deploy,
                1,
            )
            .expect("commit");
        }
    }
    // Closing the last connection checkpointed the WAL into the file; now break a page in
    // the middle of the file, past the header page.
    let file = dir.path().join(STATE_FILE);
    let mut bytes = std::fs::read(&file).expect("read");
    assert!(bytes.len() > 8 * 4096, "file has pages to damage");
    let start = bytes.len() / 2 / 4096 * 4096;
    for b in &mut bytes[start..start + 4096] {
        *b = 0xa5;
    }
    std::fs::write(&file, &bytes).expect("write");
    let err = Store::open(dir.path(), BIN).expect_err("corrupt");
    assert!(matches!(err, StateError::Corrupt { .. }), "{err}");
    assert!(!err.to_string().contains('\n'), "{err}");
    assert!(
        err.to_string()
            .starts_with(&format!("State database {} is corrupt: ", file.display())),
        "{err}"
    );
}

#[test]
fn data_dir_that_is_a_file_cannot_be_opened() {
    let dir = TempDir::new("notdir");
    let data_dir = dir.path().join("data");
    std::fs::write(&data_dir, b"x").expect("write");
    let err = Store::open(&data_dir, BIN).expect_err("cannot open");
    assert!(
        err.to_string().starts_with(&format!(
            "Cannot open state database {}: ",
            data_dir.join(STATE_FILE).display()
        )),
        "{err}"
    );
    assert!(!err.is_permission_denied());
}

#[test]
fn busy_file_at_startup_is_locked_after_the_busy_timeout() {
    let dir = TempDir::new("locked");
    drop(Store::open(dir.path(), BIN).expect("open"));
    let holder = Connection::open(dir.path().join(STATE_FILE)).expect("holder");
    holder
        .execute_batch("BEGIN IMMEDIATE")
        .expect("hold write lock");
    let start = std::time::Instant::now();
    let err = Store::open(dir.path(), BIN).expect_err("locked");
    assert!(start.elapsed() >= std::time::Duration::from_secs(4));
    assert!(
        err.to_string().starts_with(&format!(
            "State database {} is locked: ",
            dir.path().join(STATE_FILE).display()
        )),
        "{err}"
    );
    holder.execute_batch("ROLLBACK").expect("release");
}

/// Our reconstruction of the 0.0.1-alpha layout: the v2 tables without the columns and tables
/// that v2 added.
const V1_FIXTURE: &str = "
CREATE TABLE schema_meta (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  schema_version INTEGER NOT NULL,
  min_binary_version TEXT NOT NULL,
  created_by TEXT NOT NULL
);
CREATE TABLE apps (
  name TEXT PRIMARY KEY,
  version TEXT NOT NULL,
  path TEXT NOT NULL,
  cwd TEXT NOT NULL,
  command_json TEXT NOT NULL,
  env_json TEXT NOT NULL,
  min_instances INTEGER NOT NULL,
  max_instances INTEGER NOT NULL,
  base_port INTEGER NOT NULL,
  idle_timeout_secs INTEGER NOT NULL
);
CREATE TABLE app_routes (
  app_name TEXT NOT NULL REFERENCES apps(name) ON DELETE CASCADE,
  route TEXT NOT NULL,
  PRIMARY KEY (app_name, route)
);
CREATE TABLE server_state (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  server_mode TEXT NOT NULL
);
CREATE TABLE upgrade_lock (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  owner TEXT NOT NULL,
  acquired_at_unix_secs INTEGER NOT NULL
);
INSERT INTO schema_meta VALUES (1, 1, '0.0.1-alpha', 'tako-server');
INSERT INTO server_state VALUES (1, 'upgrading');
INSERT INTO upgrade_lock VALUES (1, 'ci-42', 1700000000);
INSERT INTO apps VALUES ('web', 'abc', '/opt/tako/apps/web/releases/abc', '/opt/tako/apps/web/releases/abc',
  '[\"bun\",\"run\",\"index.ts\"]', '{\"K\":\"V\"}', 1, 32, 10000, 300);
INSERT INTO apps VALUES ('api', 'def', '/opt/tako/apps/api/releases/def', '/opt/tako/apps/api/releases/def',
  '[\"node\",\"main.js\"]', '{}', 0, 32, 10100, 60);
INSERT INTO app_routes VALUES ('web', 'z.example.com');
INSERT INTO app_routes VALUES ('web', 'a.example.com/api/*');
INSERT INTO app_routes VALUES ('web', 'm.example.com');
INSERT INTO app_routes VALUES ('api', 'api.example.com');
PRAGMA user_version = 1;
";

fn write_v1_fixture(dir: &Path) -> PathBuf {
    let file = dir.join(STATE_FILE);
    let c = Connection::open(&file).expect("fixture");
    c.execute_batch(V1_FIXTURE).expect("fixture schema");
    file
}

#[test]
fn v1_file_is_backed_up_then_migrated_to_v2() {
    let dir = TempDir::new("v1");
    let file = write_v1_fixture(dir.path());
    let backup = dir.path().join(format!("{STATE_FILE}.bak-v1"));
    // An older backup of the same name is overwritten.
    std::fs::write(&backup, b"stale").expect("stale backup");

    let mut s = Store::open(dir.path(), BIN).expect("migrate");
    assert_eq!(mode(&file), 0o600);

    let conn = s.conn();
    let uv: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .expect("uv");
    assert_eq!(uv, 2);
    assert!(tables(conn).contains(&"releases".to_string()));
    assert!(tables(conn).contains(&"releases_app".to_string()));
    assert_eq!(
        columns(conn, "apps")[10..],
        [
            "stopped".to_string(),
            "updated_at_unix_secs".to_string(),
            "app_uid".to_string()
        ]
    );
    assert_eq!(
        columns(conn, "app_routes"),
        ["app_name", "route", "position"]
    );
    assert_eq!(
        columns(conn, "server_state"),
        [
            "id",
            "server_mode",
            "settings_json",
            "primary_pid",
            "primary_started_at_unix_secs",
            "primary_ready_at_unix_secs"
        ]
    );
    let meta: (i64, String) = conn
        .query_row(
            "SELECT schema_version, min_binary_version FROM schema_meta",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("meta");
    assert_eq!(meta, (2, BIN.to_string()));

    // Data survives; v1 routes are numbered by route order.
    let apps = s.load_apps().expect("load");
    assert_eq!(apps.len(), 2);
    assert_eq!(apps[0].name, "api");
    assert_eq!(
        apps[1].routes,
        ["a.example.com/api/*", "m.example.com", "z.example.com"]
    );
    assert_eq!(apps[1].command, ["bun", "run", "index.ts"]);
    assert!(!apps[1].stopped);
    assert_eq!(s.server_mode().expect("mode"), ServerMode::Upgrading);
    assert_eq!(s.upgrade_owner().expect("owner").as_deref(), Some("ci-42"));

    // The backup is the untouched v1 file, mode 0600.
    assert_eq!(mode(&backup), 0o600);
    let b = Connection::open(&backup).expect("open backup");
    let buv: i64 = b
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .expect("uv");
    assert_eq!(buv, 1);
    assert_eq!(columns(&b, "app_routes"), ["app_name", "route"]);
    let n: i64 = b
        .query_row("SELECT COUNT(*) FROM apps", [], |r| r.get(0))
        .expect("count");
    assert_eq!(n, 2);

    // A second open is a plain v2 open.
    drop(s);
    let mut again = Store::open(dir.path(), BIN).expect("reopen");
    assert_eq!(again.load_apps().expect("load").len(), 2);
}

#[test]
fn data_dir_lock_is_exclusive_and_names_the_holder() {
    let dir = TempDir::new("lock");
    let lock = DataDirLock::acquire(dir.path()).expect("first");
    let file = dir.path().join(LOCK_FILE);
    assert_eq!(mode(&file), 0o644);
    assert_eq!(
        std::fs::read_to_string(&file).expect("read").trim(),
        std::process::id().to_string()
    );
    let err = DataDirLock::acquire(dir.path()).expect_err("held");
    assert_eq!(
        err.to_string(),
        format!(
            "Another tako-server (pid {}) is already running with data dir {}",
            std::process::id(),
            dir.path().display()
        )
    );
    drop(lock);
    let again = DataDirLock::acquire(dir.path()).expect("after release");
    drop(again);
}

#[tokio::test]
async fn handle_runs_calls_on_the_state_thread() {
    let dir = TempDir::new("handle");
    let store = Store::open(dir.path(), BIN).expect("open");
    let h = StateHandle::spawn(store).expect("spawn");
    let h2 = h.clone();
    h.commit_deploy(app("web", "v1", &["w.example.com"]), ReleaseKind::Deploy, 7)
        .await
        .expect("commit");
    let apps = h2.load_apps().await.expect("load");
    assert_eq!(apps.len(), 1);
    assert_eq!(
        h.enter_upgrading("o".into()).await.expect("enter"),
        EnterOutcome::Acquired
    );
    assert_eq!(h2.server_mode().await.expect("mode"), ServerMode::Upgrading);
    let thread = h
        .call(|_| Ok(std::thread::current().name().map(str::to_string)))
        .await
        .expect("call");
    assert_eq!(thread.as_deref(), Some("tako-state"));
    assert!(h.delete_app("web".into()).await.expect("delete"));
}

/// A schema-2 file written before apps had uids of their own: it gains the column in place,
/// its apps load without a uid (one is allocated at restore), and a uid once stored stays
/// through later deploys that do not name one.
#[test]
fn app_uid_column_is_added_in_place_and_kept() {
    let dir = TempDir::new("uid");
    {
        let mut s = Store::open(dir.path(), BIN).expect("create");
        s.commit_deploy(
            &app("web", "v1", &["web.example.com"]),
            ReleaseKind::Deploy,
            1,
        )
        .expect("deploy");
        // What a binary before the column left behind.
        s.conn()
            .execute_batch("DROP INDEX apps_app_uid; ALTER TABLE apps DROP COLUMN app_uid;")
            .expect("drop the column");
    }
    let mut s = Store::open(dir.path(), BIN).expect("reopen");
    assert!(columns(s.conn(), "apps").contains(&"app_uid".to_string()));
    assert_eq!(s.load_apps().expect("load")[0].uid, None);
    assert!(s.set_app_uid("web", 61184).expect("set"));
    s.commit_deploy(
        &app("web", "v2", &["web.example.com"]),
        ReleaseKind::Deploy,
        2,
    )
    .expect("redeploy");
    assert_eq!(s.load_apps().expect("load")[0].uid, Some(61184));
    let mut other = app("api", "v1", &["api.example.com"]);
    other.uid = Some(61184);
    assert!(
        s.commit_deploy(&other, ReleaseKind::Deploy, 3).is_err(),
        "two apps never share a uid"
    );
    s.delete_app("web").expect("delete");
    s.commit_deploy(&other, ReleaseKind::Deploy, 4)
        .expect("a deleted app's uid is free again");
}
