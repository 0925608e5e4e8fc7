//! Opening the lock file: the connection's pragmas, the read-only mode, and the schema's
//! creation and migration.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, TransactionBehavior};

use crate::error::LockError;

use super::{BACKEND, SCHEMA_VERSION, SqliteSynchronous, sql_error};

/// Opens an existing lock file for reading only; refuses a file without the lock table.
pub(super) fn open_read_only(path: &Path, busy: Duration) -> Result<Connection, LockError> {
    let connection = Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| LockError::Backend {
        backend: BACKEND,
        message: format!(
            "cannot open `{}` read-only (does the file exist?): {e}",
            path.display()
        ),
        source: Some(Box::new(e)),
    })?;
    connection
        .busy_timeout(busy)
        .map_err(sql_error("busy_timeout"))?;
    let has_table: bool = connection
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'conc_locks'",
            [],
            |row| row.get::<_, i64>(0),
        )
        .map_err(sql_error("read the schema"))?
        > 0;
    if !has_table {
        return Err(LockError::Backend {
            backend: BACKEND,
            message: format!("`{}` holds no conc lock table", path.display()),
            source: None,
        });
    }
    Ok(connection)
}

pub(super) fn open_connection(
    path: &Path,
    busy: Duration,
    synchronous: SqliteSynchronous,
) -> Result<Connection, LockError> {
    let mut connection = Connection::open(path).map_err(sql_error("open"))?;
    connection
        .busy_timeout(busy)
        .map_err(sql_error("busy_timeout"))?;
    if path != Path::new(":memory:") {
        // Switching to WAL needs a moment alone with the file; another process opening it
        // at the same time makes it busy without calling the busy handler, so retry.
        let mut tries = 0;
        while let Err(e) = connection.pragma_update(None, "journal_mode", "WAL") {
            tries += 1;
            if tries > 100 {
                return Err(sql_error("journal_mode")(e));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        connection
            .pragma_update(None, "synchronous", synchronous.pragma())
            .map_err(sql_error("synchronous"))?;
    }
    migrate(&mut connection)?;
    Ok(connection)
}

pub(super) fn migrate(connection: &mut Connection) -> Result<(), LockError> {
    let tx = connection
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sql_error("begin migration"))?;
    let version: i64 = tx
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(sql_error("read schema version"))?;
    if version > SCHEMA_VERSION {
        return Err(LockError::Backend {
            backend: BACKEND,
            message: format!(
                "the lock schema is version {version}, newer than this build's {SCHEMA_VERSION}: upgrade conc"
            ),
            source: None,
        });
    }
    if version < 1 {
        tx.execute_batch(
            "CREATE TABLE IF NOT EXISTS conc_locks (
                 key TEXT PRIMARY KEY,
                 owner TEXT NOT NULL,
                 token TEXT NOT NULL,
                 fence INTEGER NOT NULL,
                 metadata TEXT NOT NULL,
                 acquired_at INTEGER NOT NULL,
                 expires_at INTEGER NOT NULL
             ) WITHOUT ROWID;
             CREATE INDEX IF NOT EXISTS conc_locks_expires_at ON conc_locks (expires_at);
             CREATE TABLE IF NOT EXISTS conc_lock_fence_floor (
                 id INTEGER PRIMARY KEY CHECK (id = 0),
                 value INTEGER NOT NULL
             );
             INSERT OR IGNORE INTO conc_lock_fence_floor (id, value) VALUES (0, 0);",
        )
        .map_err(sql_error("create the lock schema"))?;
    } else if version < 2 {
        // Version 1 moved a store-wide fence counter on every grant (a trigger writing a
        // second table, a page more in the WAL per acquire) and deleted a lease's row on
        // release. Version 2 keeps a released row (its fence with it), so a grant draws
        // its fence from the row; the counter only keeps the fences of deleted rows. The
        // counter's table is renamed, so a process still running version 1's statements
        // fails its grants (an error it reports) rather than draw a fence from a counter
        // that no longer follows every grant.
        tx.execute_batch(
            "DROP TRIGGER IF EXISTS conc_locks_fence_on_insert;
             DROP TRIGGER IF EXISTS conc_locks_fence_on_update;
             ALTER TABLE conc_lock_fence RENAME TO conc_lock_fence_floor;",
        )
        .map_err(sql_error("migrate the lock schema to version 2"))?;
    }
    if version < 2 {
        // A deleted row (cleanup, a forced release, a release by version 1) leaves its
        // fence in the floor, which a grant of a key with no row starts above.
        tx.execute_batch(
            "CREATE TRIGGER IF NOT EXISTS conc_locks_fence_on_delete AFTER DELETE ON conc_locks
             BEGIN UPDATE conc_lock_fence_floor SET value = OLD.fence WHERE id = 0 AND value < OLD.fence; END;
             PRAGMA user_version = 2;",
        )
        .map_err(sql_error("create the lock schema's trigger"))?;
    }
    tx.commit().map_err(sql_error("commit migration"))
}
