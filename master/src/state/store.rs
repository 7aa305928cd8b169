//! The SQLite connection: open with pragmas and migrations, then typed reads and writes.
//! Every write is one `BEGIN IMMEDIATE` transaction: a change is on disk before it takes
//! effect in memory, or the command fails (docs/architecture.md, "State").

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions, Permissions};
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{
    params, Connection, DatabaseName, OpenFlags, OptionalExtension, Transaction,
    TransactionBehavior,
};

use super::error::StateError;
use super::schema;
use super::types::{
    EnterOutcome, ExitOutcome, ReleaseKind, ReleaseResult, ReleaseRow, ServerMode, StoredApp,
};

/// File name of the state database inside the data dir.
pub const STATE_FILE: &str = "runtime-state.sqlite3";

/// Release rows kept per app; the oldest go first.
pub const MAX_RELEASES_PER_APP: i64 = 100;

/// Written into `apps.max_instances` for layout compatibility with 0.0.1-alpha; never read.
const STORED_MAX_INSTANCES: i64 = 32;

const BUSY_TIMEOUT: Duration = Duration::from_millis(5000);

/// The one connection to the state file. Not `Sync`: the master keeps it on its own thread
/// (see [`super::StateHandle`]).
pub struct Store {
    conn: Connection,
    file: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("file", &self.file).finish()
    }
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

impl Store {
    /// Opens (creating when missing) `<data_dir>/runtime-state.sqlite3`, applies the pragmas,
    /// runs `quick_check` and brings the schema to version 2. Errors carry the startup texts
    /// (docs/operations.md, "Troubleshooting").
    pub fn open(data_dir: &Path, binary_version: &str) -> Result<Store, StateError> {
        let file = data_dir.join(STATE_FILE);
        ensure_data_dir(data_dir).map_err(|e| StateError::CannotOpen {
            file: file.clone(),
            err: e.to_string(),
            permission_denied: e.kind() == ErrorKind::PermissionDenied,
        })?;
        prepare_file(&file)?;

        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut conn =
            Connection::open_with_flags(&file, flags).map_err(|e| StateError::at_open(&file, e))?;
        configure(&conn).map_err(|e| StateError::at_open(&file, e))?;
        quick_check(&conn, &file)?;

        let version: i64 = conn
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(|e| StateError::at_open(&file, e))?;
        match version {
            0 => {
                schema::create_v2(&mut conn, binary_version)
                    .map_err(|e| StateError::at_open(&file, e))?;
                tracing::info!(file = %file.display(), "created state database (schema 2)");
            }
            1 => {
                let backup = backup_before_migration(&conn, &file, version)?;
                schema::migrate_v1_to_v2(&mut conn, binary_version)
                    .map_err(|e| StateError::at_open(&file, e))?;
                tracing::info!(
                    file = %file.display(),
                    backup = %backup.display(),
                    "migrated state database from schema 1 to 2"
                );
            }
            schema::SCHEMA_VERSION => {
                let min =
                    schema::min_binary_version(&conn).map_err(|e| StateError::at_open(&file, e))?;
                if let Some(min) = min {
                    if schema::version_is_newer(&min, binary_version) {
                        return Err(StateError::NewerBinary {
                            file,
                            min_binary_version: min,
                            binary_version: binary_version.to_string(),
                        });
                    }
                }
                schema::check_v2(&mut conn).map_err(|e| StateError::at_open(&file, e))?;
            }
            n if n > schema::SCHEMA_VERSION => {
                return Err(StateError::NewerSchema { file, version: n });
            }
            n => {
                return Err(StateError::Corrupt {
                    file,
                    detail: format!("invalid schema version {n}"),
                });
            }
        }
        Ok(Store { conn, file })
    }

    /// Path of the database file.
    #[cfg(test)]
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// Runs `f` in one `BEGIN IMMEDIATE` transaction and commits it. A SQLite error names
    /// `op` and the file, so the message says what was being saved where.
    fn write<T>(
        &mut self,
        op: &'static str,
        f: impl FnOnce(&Transaction<'_>) -> rusqlite::Result<T>,
    ) -> Result<T, StateError> {
        let run = || {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            let value = f(&tx)?;
            tx.commit()?;
            Ok(value)
        };
        run().map_err(|source| StateError::db(op, &self.file, source))
    }

    /// Runs the read `f` outside a transaction; errors as in [`Store::write`].
    fn read<T>(
        &self,
        op: &'static str,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StateError> {
        f(&self.conn).map_err(|source| StateError::db(op, &self.file, source))
    }

    /// Every app ordered by name, each with its routes by position, then route. A row whose
    /// stored JSON or numbers do not decode is skipped with an error log and left in the file.
    pub fn load_apps(&mut self) -> Result<Vec<StoredApp>, StateError> {
        // One read transaction so apps and routes come from the same snapshot.
        let mut run = || {
            let tx = self.conn.transaction()?;
            let mut apps = Vec::new();
            {
                let mut stmt = tx.prepare(
                    "SELECT name, version, path, cwd, command_json, env_json, min_instances,
                            base_port, idle_timeout_secs, stopped, app_uid
                     FROM apps ORDER BY name",
                )?;
                let mut routes_stmt = tx.prepare(
                    "SELECT route FROM app_routes WHERE app_name = ?1 ORDER BY position, route",
                )?;
                let mut rows = stmt.query([])?;
                while let Some(row) = rows.next()? {
                    let name: String = row.get(0)?;
                    match decode_app(row) {
                        Ok(mut app) => {
                            let routes = routes_stmt
                                .query_map([&name], |r| r.get::<_, String>(0))?
                                .collect::<Result<Vec<_>, _>>()?;
                            app.routes = routes;
                            apps.push(app);
                        }
                        Err(reason) => {
                            tracing::error!(app = %name, %reason, "skipping stored app that does not decode");
                        }
                    }
                }
            }
            tx.commit()?;
            Ok(apps)
        };
        run().map_err(|source| StateError::db("load the apps", &self.file, source))
    }

    /// The deploy or rollback switch: upsert the app (`stopped = 0`), replace its routes in
    /// the given order, record a successful release, trim the history.
    pub fn commit_deploy(
        &mut self,
        app: &StoredApp,
        kind: ReleaseKind,
        now_unix_secs: u64,
    ) -> Result<(), StateError> {
        let command_json =
            serde_json::to_string(&app.command).map_err(|e| StateError::Decode(e.to_string()))?;
        let env_json =
            serde_json::to_string(&app.env).map_err(|e| StateError::Decode(e.to_string()))?;
        let now = to_i64(now_unix_secs);
        self.write("save the deploy", |tx| {
            tx.execute(
                "INSERT INTO apps (name, version, path, cwd, command_json, env_json, min_instances,
                                   max_instances, base_port, idle_timeout_secs, stopped,
                                   updated_at_unix_secs, app_uid)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 0, ?11, ?12)
                 ON CONFLICT(name) DO UPDATE SET
                   version = excluded.version, path = excluded.path, cwd = excluded.cwd,
                   command_json = excluded.command_json, env_json = excluded.env_json,
                   min_instances = excluded.min_instances, max_instances = excluded.max_instances,
                   base_port = excluded.base_port, idle_timeout_secs = excluded.idle_timeout_secs,
                   stopped = 0, updated_at_unix_secs = excluded.updated_at_unix_secs,
                   app_uid = COALESCE(excluded.app_uid, apps.app_uid)",
                params![
                    app.name,
                    app.version,
                    app.path,
                    app.cwd,
                    command_json,
                    env_json,
                    app.min_instances,
                    STORED_MAX_INSTANCES,
                    app.base_port,
                    app.idle_timeout_secs,
                    now,
                    app.uid
                ],
            )?;
            tx.execute("DELETE FROM app_routes WHERE app_name = ?1", [&app.name])?;
            {
                // OR IGNORE: a repeated route keeps its first position instead of failing the
                // deploy.
                let mut insert = tx.prepare(
                    "INSERT OR IGNORE INTO app_routes (app_name, route, position) VALUES (?1, ?2, ?3)",
                )?;
                for (position, route) in app.routes.iter().enumerate() {
                    insert.execute(params![app.name, route, to_i64(position as u64)])?;
                }
            }
            insert_release(
                tx,
                &app.name,
                &app.version,
                &app.path,
                kind,
                now,
                ReleaseResult::Success,
                None,
            )
        })
    }

    /// Records a failed deploy or rollback. Nothing else changes.
    pub fn record_release_failure(
        &mut self,
        app: &str,
        version: &str,
        path: &str,
        kind: ReleaseKind,
        error: &str,
        now_unix_secs: u64,
    ) -> Result<(), StateError> {
        self.write("record the failed release", |tx| {
            insert_release(
                tx,
                app,
                version,
                path,
                kind,
                to_i64(now_unix_secs),
                ReleaseResult::Failed,
                Some(error),
            )
        })
    }

    /// Sets or clears the durable stop flag. Returns whether the app exists.
    pub fn set_stopped(&mut self, app: &str, stopped: bool) -> Result<bool, StateError> {
        self.write("save the stop flag", |tx| {
            let n = tx.execute(
                "UPDATE apps SET stopped = ?2, updated_at_unix_secs = ?3 WHERE name = ?1",
                params![app, stopped, to_i64(super::unix_now())],
            )?;
            Ok(n > 0)
        })
    }

    /// Replaces the stored env (the caller has already merged the secrets). Returns whether
    /// the app exists.
    pub fn update_env(
        &mut self,
        app: &str,
        env: &BTreeMap<String, String>,
    ) -> Result<bool, StateError> {
        let env_json = serde_json::to_string(env).map_err(|e| StateError::Decode(e.to_string()))?;
        self.write("save the env", |tx| {
            let n = tx.execute(
                "UPDATE apps SET env_json = ?2, updated_at_unix_secs = ?3 WHERE name = ?1",
                params![app, env_json, to_i64(super::unix_now())],
            )?;
            Ok(n > 0)
        })
    }

    /// Deletes the app row, its routes and its release history. Returns whether it existed.
    pub fn delete_app(&mut self, app: &str) -> Result<bool, StateError> {
        self.write("delete the app", |tx| {
            // Routes cascade with foreign_keys=ON; deleting them explicitly also cleans a file
            // written by a connection that had the pragma off.
            tx.execute("DELETE FROM app_routes WHERE app_name = ?1", [app])?;
            let n = tx.execute("DELETE FROM apps WHERE name = ?1", [app])?;
            tx.execute("DELETE FROM releases WHERE app_name = ?1", [app])?;
            Ok(n > 0)
        })
    }

    /// Stores the uid allocated to an app that had none (a row of an older binary), or a
    /// replacement for one outside the configured range. Returns whether the app exists.
    pub fn set_app_uid(&mut self, app: &str, uid: u32) -> Result<bool, StateError> {
        self.write("save the app's uid", |tx| {
            let n = tx.execute(
                "UPDATE apps SET app_uid = ?2, updated_at_unix_secs = ?3 WHERE name = ?1",
                params![app, uid, to_i64(super::unix_now())],
            )?;
            Ok(n > 0)
        })
    }

    /// Stores a corrected port base found during restore. Returns whether the app exists.
    pub fn set_base_port(&mut self, app: &str, base_port: u16) -> Result<bool, StateError> {
        self.write("save the app's port block", |tx| {
            let n = tx.execute(
                "UPDATE apps SET base_port = ?2, updated_at_unix_secs = ?3 WHERE name = ?1",
                params![app, base_port, to_i64(super::unix_now())],
            )?;
            Ok(n > 0)
        })
    }

    /// The app's release history, newest first (by time, then insertion order).
    pub fn releases(&mut self, app: &str) -> Result<Vec<ReleaseRow>, StateError> {
        self.read("read the release history", |conn| {
            let mut stmt = conn.prepare(
                "SELECT id, app_name, version, path, kind, deployed_at_unix_secs, result, error
                 FROM releases WHERE app_name = ?1
                 ORDER BY deployed_at_unix_secs DESC, id DESC",
            )?;
            let mut rows = stmt.query([app])?;
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                let id: i64 = row.get(0)?;
                let kind: String = row.get(4)?;
                let result: String = row.get(6)?;
                let (Some(kind), Some(result)) =
                    (ReleaseKind::from_db(&kind), ReleaseResult::from_db(&result))
                else {
                    tracing::warn!(
                        app,
                        id,
                        kind,
                        result,
                        "skipping release row with unknown kind or result"
                    );
                    continue;
                };
                out.push(ReleaseRow {
                    id,
                    app_name: row.get(1)?,
                    version: row.get(2)?,
                    path: row.get(3)?,
                    kind,
                    deployed_at_unix_secs: to_u64(row.get(5)?),
                    result,
                    error: row.get(7)?,
                });
            }
            Ok(out)
        })
    }

    /// The durable server mode. An unknown stored value reads as `normal`, with a warning.
    pub fn server_mode(&mut self) -> Result<ServerMode, StateError> {
        let mode: Option<String> = self.read("read the server mode", |conn| {
            conn.query_row(
                "SELECT server_mode FROM server_state WHERE id = 1",
                [],
                |r| r.get(0),
            )
            .optional()
        })?;
        Ok(match mode.as_deref() {
            Some("upgrading") => ServerMode::Upgrading,
            Some("normal") | None => ServerMode::Normal,
            Some(other) => {
                tracing::warn!(
                    value = other,
                    "unknown server_mode in state; treating as normal"
                );
                ServerMode::Normal
            }
        })
    }

    /// The upgrade lock holder, if any. An unreadable owner reads as `unknown`.
    pub fn upgrade_owner(&mut self) -> Result<Option<String>, StateError> {
        self.read("read the upgrade owner", read_owner)
    }

    /// When the primary finished its boot restore (`primary_ready_at_unix_secs`).
    pub fn primary_ready_at(&mut self) -> Result<Option<u64>, StateError> {
        let v: Option<Option<i64>> = self.read("read the primary's ready time", |conn| {
            conn.query_row(
                "SELECT primary_ready_at_unix_secs FROM server_state WHERE id = 1",
                [],
                |r| r.get(0),
            )
            .optional()
        })?;
        Ok(v.flatten().map(|t| t.max(0) as u64))
    }

    /// The primary's effective settings (`server_state.settings_json`), for a candidate.
    pub fn primary_settings_json(&mut self) -> Result<Option<String>, StateError> {
        let v: Option<Option<String>> = self.read("read the primary's settings", |conn| {
            conn.query_row(
                "SELECT settings_json FROM server_state WHERE id = 1",
                [],
                |r| r.get(0),
            )
            .optional()
        })?;
        Ok(v.flatten())
    }

    /// Takes the single-owner upgrade lock and sets `upgrading`, in one transaction
    /// (docs/management-protocol.md, "`enter_upgrading`, `exit_upgrading`"). Idempotent for
    /// the same owner.
    pub fn enter_upgrading(&mut self, owner: &str) -> Result<EnterOutcome, StateError> {
        self.write("take the upgrade lock", |tx| {
            let outcome = match read_owner(tx)? {
                None => {
                    tx.execute(
                        "INSERT INTO upgrade_lock (id, owner, acquired_at_unix_secs) VALUES (1, ?1, ?2)",
                        params![owner, to_i64(super::unix_now())],
                    )?;
                    EnterOutcome::Acquired
                }
                Some(holder) if holder == owner => EnterOutcome::AlreadyHeld,
                // Nothing was written: committing the empty transaction changes nothing.
                Some(holder) => return Ok(EnterOutcome::HeldBy(holder)),
            };
            set_mode(tx, ServerMode::Upgrading)?;
            Ok(outcome)
        })
    }

    /// The holder releases the upgrade lock and the mode returns to `normal`. Anyone else,
    /// or no lock at all, is refused.
    pub fn exit_upgrading(&mut self, owner: &str) -> Result<ExitOutcome, StateError> {
        self.write("release the upgrade lock", |tx| match read_owner(tx)? {
            Some(holder) if holder == owner => {
                tx.execute("DELETE FROM upgrade_lock WHERE id = 1", [])?;
                set_mode(tx, ServerMode::Normal)?;
                Ok(ExitOutcome::Released)
            }
            _ => Ok(ExitOutcome::NotHolder),
        })
    }

    /// Primary boot: its settings, pid and start time. Clears the ready time of the previous
    /// boot.
    pub fn write_primary_boot(
        &mut self,
        settings_json: &str,
        pid: u32,
        started_at_unix_secs: u64,
    ) -> Result<(), StateError> {
        self.write("record the primary's start", |tx| {
            tx.execute(
                "INSERT OR IGNORE INTO server_state (id, server_mode) VALUES (1, 'normal')",
                [],
            )?;
            tx.execute(
                "UPDATE server_state SET settings_json = ?1, primary_pid = ?2,
                   primary_started_at_unix_secs = ?3, primary_ready_at_unix_secs = NULL
                 WHERE id = 1",
                params![settings_json, pid, to_i64(started_at_unix_secs)],
            )?;
            Ok(())
        })
    }

    /// Restore has finished (docs/architecture.md, "State").
    pub fn write_primary_ready(&mut self, at_unix_secs: u64) -> Result<(), StateError> {
        self.write("record the end of restore", |tx| {
            tx.execute(
                "UPDATE server_state SET primary_ready_at_unix_secs = ?1 WHERE id = 1",
                params![to_i64(at_unix_secs)],
            )?;
            Ok(())
        })
    }

    #[cfg(test)]
    pub(crate) fn conn(&self) -> &Connection {
        &self.conn
    }
}

/// Why a stored app row does not decode; the row is skipped at load and left in the file.
#[derive(Debug, thiserror::Error)]
enum RowError {
    #[error("{0}")]
    Column(#[from] rusqlite::Error),
    #[error("{column}: {source}")]
    Json {
        column: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("{column} {value} out of range")]
    OutOfRange { column: &'static str, value: i64 },
}

fn decode_app(row: &rusqlite::Row<'_>) -> Result<StoredApp, RowError> {
    let json = |column: &'static str| move |source| RowError::Json { column, source };
    let range = |column: &'static str, value: i64| RowError::OutOfRange { column, value };
    let command_json: String = row.get(4)?;
    let env_json: String = row.get(5)?;
    let command: Vec<String> = serde_json::from_str(&command_json).map_err(json("command_json"))?;
    let env: BTreeMap<String, String> =
        serde_json::from_str(&env_json).map_err(json("env_json"))?;
    let min_instances: i64 = row.get(6)?;
    let base_port: i64 = row.get(7)?;
    let idle: i64 = row.get(8)?;
    let stopped: i64 = row.get(9)?;
    let uid: Option<i64> = row.get(10)?;
    Ok(StoredApp {
        name: row.get(0)?,
        version: row.get(1)?,
        path: row.get(2)?,
        cwd: row.get(3)?,
        command,
        env,
        min_instances: u8::try_from(min_instances)
            .map_err(|_| range("min_instances", min_instances))?,
        base_port: u16::try_from(base_port).map_err(|_| range("base_port", base_port))?,
        idle_timeout_secs: u32::try_from(idle).map_err(|_| range("idle_timeout_secs", idle))?,
        stopped: stopped != 0,
        routes: Vec::new(),
        // A value that is no uid is dropped: the app gets a fresh one.
        uid: uid.and_then(|u| u32::try_from(u).ok()).filter(|u| *u != 0),
    })
}

#[allow(clippy::too_many_arguments)]
fn insert_release(
    tx: &Transaction<'_>,
    app: &str,
    version: &str,
    path: &str,
    kind: ReleaseKind,
    now: i64,
    result: ReleaseResult,
    error: Option<&str>,
) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO releases (app_name, version, path, kind, deployed_at_unix_secs, result, error)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![app, version, path, kind.as_db(), now, result.as_db(), error],
    )?;
    tx.execute(
        "DELETE FROM releases WHERE app_name = ?1 AND id NOT IN (
           SELECT id FROM releases WHERE app_name = ?1
           ORDER BY deployed_at_unix_secs DESC, id DESC LIMIT ?2)",
        params![app, MAX_RELEASES_PER_APP],
    )?;
    Ok(())
}

fn read_owner(conn: &Connection) -> rusqlite::Result<Option<String>> {
    let v: Option<rusqlite::types::Value> = conn
        .query_row("SELECT owner FROM upgrade_lock WHERE id = 1", [], |r| {
            r.get(0)
        })
        .optional()?;
    Ok(v.map(|v| match v {
        rusqlite::types::Value::Text(s) => s,
        _ => "unknown".to_string(),
    }))
}

fn set_mode(conn: &Connection, mode: ServerMode) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO server_state (id, server_mode) VALUES (1, ?1)
         ON CONFLICT(id) DO UPDATE SET server_mode = excluded.server_mode",
        [mode.as_str()],
    )?;
    Ok(())
}

/// Creates the data dir (0755) when missing. An existing directory keeps its mode.
fn ensure_data_dir(dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
}

/// Creates the file with mode 0600 before SQLite does (SQLite would use 0644), narrows a
/// wider mode, and tells a permission problem apart from other open failures.
fn prepare_file(file: &Path) -> Result<(), StateError> {
    let existed = file.exists();
    let handle = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(file)
        .map_err(|e| StateError::CannotOpen {
            file: file.to_path_buf(),
            err: e.to_string(),
            permission_denied: e.kind() == ErrorKind::PermissionDenied,
        })?;
    let mode = handle.metadata().map(|m| m.permissions().mode() & 0o777);
    match mode {
        Ok(0o600) => {}
        Ok(m) => {
            if existed {
                tracing::warn!(file = %file.display(), mode = format!("{m:o}"), "state file mode was not 0600; narrowing it");
            }
            if let Err(e) = handle.set_permissions(Permissions::from_mode(0o600)) {
                tracing::warn!(file = %file.display(), error = %e, "could not set the state file mode to 0600");
            }
        }
        Err(e) => {
            tracing::warn!(file = %file.display(), error = %e, "could not read the state file mode");
        }
    }
    Ok(())
}

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    // The busy timeout comes first so the pragmas below already wait for a busy file.
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String =
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(journal_mode = %mode, "state database did not switch to WAL");
    }
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.pragma_update(None, "trusted_schema", "OFF")?;
    conn.pragma_update(None, "wal_autocheckpoint", 1000)?;
    conn.pragma_update(None, "journal_size_limit", 67_108_864)?;
    Ok(())
}

fn quick_check(conn: &Connection, file: &Path) -> Result<(), StateError> {
    let rows: Vec<String> = (|| {
        let mut stmt = conn.prepare("PRAGMA quick_check")?;
        let rows = stmt
            .query_map([], |r| r.get::<_, String>(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    })()
    .map_err(|e| StateError::at_open(file, e))?;
    if rows.len() == 1 && rows[0] == "ok" {
        return Ok(());
    }
    // quick_check rows may span lines; the exit message stays on one line.
    let mut detail = rows
        .iter()
        .take(5)
        .map(|r| r.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join("; ");
    if rows.len() > 5 {
        detail.push_str(&format!("; … ({} problems)", rows.len()));
    }
    if detail.is_empty() {
        detail = "quick_check returned nothing".to_string();
    }
    Err(StateError::Corrupt {
        file: file.to_path_buf(),
        detail,
    })
}

/// Copies the file with the backup API to `<file>.bak-v<old>` (0600), replacing an older
/// backup of the same name.
fn backup_before_migration(
    conn: &Connection,
    file: &Path,
    old_version: i64,
) -> Result<PathBuf, StateError> {
    let mut name = file.as_os_str().to_owned();
    name.push(format!(".bak-v{old_version}"));
    let backup = PathBuf::from(name);
    let fail = |err: String| StateError::CannotOpen {
        file: file.to_path_buf(),
        err: format!("backup to {} failed: {err}", backup.display()),
        permission_denied: false,
    };
    for suffix in ["", "-journal", "-wal", "-shm"] {
        let mut p = backup.as_os_str().to_owned();
        p.push(suffix);
        match fs::remove_file(PathBuf::from(p)) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(fail(e.to_string())),
        }
    }
    // An empty file is a valid empty database; creating it first fixes its mode at 0600.
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&backup)
        .map_err(|e| fail(e.to_string()))?;
    conn.backup(DatabaseName::Main, &backup, None)
        .map_err(|e| fail(e.to_string()))?;
    fs::set_permissions(&backup, Permissions::from_mode(0o600)).map_err(|e| fail(e.to_string()))?;
    Ok(backup)
}
