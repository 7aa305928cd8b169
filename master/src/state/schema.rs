//! Schema version 2 and the numbered migrations that reach it. Before a migration the file
//! is backed up beside itself (docs/architecture.md, "State").

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

/// The schema this binary writes and reads.
pub const SCHEMA_VERSION: i64 = 2;

/// `IF NOT EXISTS` everywhere so the same text creates a new file and checks an existing one.
const SCHEMA_V2: &str = "
CREATE TABLE IF NOT EXISTS schema_meta (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  schema_version INTEGER NOT NULL,
  min_binary_version TEXT NOT NULL,
  created_by TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS apps (
  name TEXT PRIMARY KEY,
  version TEXT NOT NULL,
  path TEXT NOT NULL,
  cwd TEXT NOT NULL,
  command_json TEXT NOT NULL,
  env_json TEXT NOT NULL,
  min_instances INTEGER NOT NULL,
  max_instances INTEGER NOT NULL,
  base_port INTEGER NOT NULL,
  idle_timeout_secs INTEGER NOT NULL,
  stopped INTEGER NOT NULL DEFAULT 0,
  updated_at_unix_secs INTEGER NOT NULL DEFAULT 0,
  app_uid INTEGER
);
CREATE TABLE IF NOT EXISTS app_routes (
  app_name TEXT NOT NULL REFERENCES apps(name) ON DELETE CASCADE,
  route TEXT NOT NULL,
  position INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY (app_name, route)
);
CREATE TABLE IF NOT EXISTS releases (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  app_name TEXT NOT NULL,
  version TEXT NOT NULL,
  path TEXT NOT NULL,
  kind TEXT NOT NULL,
  deployed_at_unix_secs INTEGER NOT NULL,
  result TEXT NOT NULL,
  error TEXT
);
CREATE INDEX IF NOT EXISTS releases_app ON releases (app_name, deployed_at_unix_secs);
CREATE TABLE IF NOT EXISTS server_state (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  server_mode TEXT NOT NULL,
  settings_json TEXT,
  primary_pid INTEGER,
  primary_started_at_unix_secs INTEGER,
  primary_ready_at_unix_secs INTEGER
);
CREATE TABLE IF NOT EXISTS upgrade_lock (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  owner TEXT NOT NULL,
  acquired_at_unix_secs INTEGER NOT NULL
);
";

const DEFAULT_SERVER_STATE: &str =
    "INSERT OR IGNORE INTO server_state (id, server_mode) VALUES (1, 'normal')";

/// Version 0: a new file. Creates everything, the meta row and the default server state.
pub fn create_v2(conn: &mut Connection, binary_version: &str) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute_batch(SCHEMA_V2)?;
    add_app_uid(&tx)?;
    write_meta(&tx, binary_version)?;
    tx.execute(DEFAULT_SERVER_STATE, [])?;
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()
}

/// Version 2: make sure every table exists and add what later binaries of schema 2 added
/// (the app uid); change no row.
pub fn check_v2(conn: &mut Connection) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute_batch(SCHEMA_V2)?;
    add_app_uid(&tx)?;
    tx.execute(DEFAULT_SERVER_STATE, [])?;
    tx.commit()
}

/// `apps.app_uid`: the uid and gid the app's processes run under (root only), allocated by
/// the master and kept for the app's life. NULL until one is allocated: a row written by an
/// older binary gets one at its next restore or deploy. A nullable column added in place
/// keeps the schema at version 2, so an older binary of schema 2 still opens the file (and
/// leaves the column alone). The unique index makes sure no two apps ever share a uid.
fn add_app_uid(tx: &Connection) -> rusqlite::Result<()> {
    add_column(tx, "apps", "app_uid", "INTEGER")?;
    tx.execute_batch("CREATE UNIQUE INDEX IF NOT EXISTS apps_app_uid ON apps (app_uid)")
}

/// Step 1 → 2. Written against the 0.0.1-alpha layout, but each addition first checks that it
/// is missing, so a v1 file that differs slightly from our reconstruction still migrates.
pub fn migrate_v1_to_v2(conn: &mut Connection, binary_version: &str) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    // Tables a v1 file might lack entirely come first, in their v2 shape.
    tx.execute_batch(SCHEMA_V2)?;

    add_column(&tx, "apps", "stopped", "INTEGER NOT NULL DEFAULT 0")?;
    add_column(
        &tx,
        "apps",
        "updated_at_unix_secs",
        "INTEGER NOT NULL DEFAULT 0",
    )?;
    if add_column(&tx, "app_routes", "position", "INTEGER NOT NULL DEFAULT 0")? {
        // v1 kept no order; number each app's routes by route text, as restore used to read them.
        tx.execute(
            "UPDATE app_routes SET position = (
               SELECT COUNT(*) FROM app_routes AS r
               WHERE r.app_name = app_routes.app_name AND r.route < app_routes.route)",
            [],
        )?;
    }
    add_column(&tx, "server_state", "settings_json", "TEXT")?;
    add_column(&tx, "server_state", "primary_pid", "INTEGER")?;
    add_column(
        &tx,
        "server_state",
        "primary_started_at_unix_secs",
        "INTEGER",
    )?;
    add_column(&tx, "server_state", "primary_ready_at_unix_secs", "INTEGER")?;
    add_app_uid(&tx)?;
    tx.execute(DEFAULT_SERVER_STATE, [])?;

    write_meta(&tx, binary_version)?;
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()
}

fn write_meta(conn: &Connection, binary_version: &str) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO schema_meta (id, schema_version, min_binary_version, created_by)
         VALUES (1, ?1, ?2, 'tako-server')
         ON CONFLICT(id) DO UPDATE SET schema_version = excluded.schema_version,
           min_binary_version = excluded.min_binary_version",
        params![SCHEMA_VERSION, binary_version],
    )?;
    Ok(())
}

/// Adds a column unless the table already has it. Returns whether it was added.
fn add_column(conn: &Connection, table: &str, column: &str, decl: &str) -> rusqlite::Result<bool> {
    let exists: Option<i64> = conn
        .query_row(
            "SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2",
            params![table, column],
            |row| row.get(0),
        )
        .optional()?;
    if exists.is_some() {
        return Ok(false);
    }
    // Table and column names are our own constants, never input.
    conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {decl}"))?;
    Ok(true)
}

/// `schema_meta.min_binary_version`, when the row exists.
pub fn min_binary_version(conn: &Connection) -> rusqlite::Result<Option<String>> {
    conn.query_row(
        "SELECT min_binary_version FROM schema_meta WHERE id = 1",
        [],
        |row| row.get(0),
    )
    .optional()
}

/// Whether release `a` is newer than release `b`, for versions like `0.1.0` or
/// `0.0.1-alpha`. A version we cannot read is never called newer: refusing to start over a
/// string we do not understand would strand the operator.
pub fn version_is_newer(a: &str, b: &str) -> bool {
    match (parse_version(a), parse_version(b)) {
        (Some(a), Some(b)) => compare_versions(&a, &b) == std::cmp::Ordering::Greater,
        _ => false,
    }
}

struct Version<'a> {
    core: [u64; 3],
    pre: Option<&'a str>,
}

fn parse_version(v: &str) -> Option<Version<'_>> {
    let v = v.split('+').next().unwrap_or(v);
    let (core, pre) = match v.split_once('-') {
        Some((c, p)) => (c, Some(p)),
        None => (v, None),
    };
    let mut parts = core.split('.');
    let mut out = [0u64; 3];
    for slot in &mut out {
        *slot = parts.next()?.parse().ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(Version { core: out, pre })
}

fn compare_versions(a: &Version<'_>, b: &Version<'_>) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    a.core.cmp(&b.core).then_with(|| match (a.pre, b.pre) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Greater,
        (Some(_), None) => Ordering::Less,
        (Some(x), Some(y)) => {
            let mut xs = x.split('.');
            let mut ys = y.split('.');
            loop {
                match (xs.next(), ys.next()) {
                    (None, None) => return Ordering::Equal,
                    (None, Some(_)) => return Ordering::Less,
                    (Some(_), None) => return Ordering::Greater,
                    (Some(p), Some(q)) => {
                        let ord = match (p.parse::<u64>(), q.parse::<u64>()) {
                            (Ok(m), Ok(n)) => m.cmp(&n),
                            (Ok(_), Err(_)) => Ordering::Less,
                            (Err(_), Ok(_)) => Ordering::Greater,
                            (Err(_), Err(_)) => p.cmp(q),
                        };
                        if ord != Ordering::Equal {
                            return ord;
                        }
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::version_is_newer;

    #[test]
    fn versions_compare_like_semver() {
        assert!(version_is_newer("0.2.0", "0.1.0"));
        assert!(version_is_newer("0.1.0", "0.0.1-alpha"));
        assert!(version_is_newer("0.1.0", "0.1.0-rc.1"));
        assert!(version_is_newer("0.1.0-rc.2", "0.1.0-rc.1"));
        assert!(!version_is_newer("0.1.0", "0.1.0"));
        assert!(!version_is_newer("0.0.1-alpha", "0.1.0"));
        assert!(!version_is_newer("garbage", "0.1.0"));
        assert!(!version_is_newer("1.0.0", "garbage"));
    }
}
