//! [`SqliteSessionStore`]: sessions in a SQLite file shared by the processes of one
//! machine; a session row, a row per message and a row per scoped fence, written on a
//! connection thread of its own and read on a second, read-only one.

use std::path::Path;
use std::time::Duration;

use conc_lock_store::{SqliteWorker, SqliteWorkerError};
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};

use super::{
    Appended, SessionStore, check_id, decode_with_messages, encode_head, encode_message,
    message_rows, stale,
};
use crate::data::{Message, SessionData};
use crate::error::SessionError;

const BACKEND: &str = "sqlite";

fn store_error<E: std::error::Error + Send + Sync + 'static>(e: E) -> SessionError {
    super::driver_error(BACKEND, e)
}

/// Sessions in a SQLite file shared by the processes of one machine (WAL mode, busy
/// timeout), on the lock store's SQLite stack: a connection thread of its own for the
/// writes ([`conc_lock_store::SqliteWorker`]), off the async executor, within a time
/// limit, and a second, read-only one for `load` and `list`, so reads do not queue
/// behind writes.
#[derive(Debug, Clone)]
pub struct SqliteSessionStore {
    writer: SqliteWorker,
    reader: SqliteWorker,
}

/// The time limit of each operation, queueing included.
const OP_TIMEOUT: Duration = Duration::from_secs(10);

fn worker_error(e: SqliteWorkerError) -> SessionError {
    store_error(e)
}

/// A fence as SQLite stores it.
fn fence_value(fence: u64) -> Result<i64, SessionError> {
    i64::try_from(fence).map_err(|_| SessionError::Store {
        backend: BACKEND,
        message: format!("fence {fence} is larger than a stored fence can be"),
        source: None,
    })
}

impl SqliteSessionStore {
    async fn save_checked(
        &self,
        session: &SessionData,
        fence: Option<u64>,
    ) -> Result<SessionData, SessionError> {
        let saved = SessionData {
            version: session.version + 1,
            fence: session.fence.max(fence.unwrap_or(0)),
            ..session.clone()
        };
        let text = encode_head(&saved)?;
        let bodies = message_rows(&saved.messages)?;
        let (id, expected) = (session.id.clone(), session.version as i64);
        let fence_arg = fence.map(fence_value).transpose()?;
        let changed = self
            .call(move |c| {
                // The session's row and its message rows, in one transaction.
                let tx = Transaction::new_unchecked(c, TransactionBehavior::Immediate)
                    .map_err(store_error)?;
                let changed = match fence_arg {
                    None => tx.prepare_cached("UPDATE conc_sessions SET version = version + 1, data = ?3 WHERE id = ?1 AND version = ?2")
                        .and_then(|mut s| s.execute(params![id, expected, text])),
                    Some(f) => tx.prepare_cached("UPDATE conc_sessions SET version = version + 1, data = ?3, fence = ?4 WHERE id = ?1 AND version = ?2 AND fence <= ?4")
                        .and_then(|mut s| s.execute(params![id, expected, text, f])),
                }
                .map_err(store_error)?;
                if changed != 1 {
                    return Ok(changed);
                }
                tx.prepare_cached("DELETE FROM conc_session_messages WHERE session_id = ?1")
                    .and_then(|mut s| s.execute([&id]))
                    .map_err(store_error)?;
                insert_messages(&tx, &id, &bodies)?;
                tx.commit().map_err(store_error)?;
                Ok(changed)
            })
            .await?;
        if changed == 1 {
            return Ok(saved);
        }
        super::conflict_or_missing(self, session, fence).await
    }

    /// Opens (creating if needed) the session table in the file at `path`.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future may leave the table created; nothing else.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, SessionError> {
        let path = path.as_ref().to_path_buf();
        let writer_path = path.clone();
        let writer = SqliteWorker::start(
            "conc-sqlite-sessions",
            1024,
            OP_TIMEOUT,
            move || -> Result<Connection, SessionError> {
                let path = writer_path;
                let connection = Connection::open(&path).map_err(store_error)?;
                connection
                    .busy_timeout(Duration::from_secs(5))
                    .map_err(store_error)?;
                if path != Path::new(":memory:") {
                    // Another process switching the same new file to WAL makes it busy
                    // without calling the busy handler: retry for a while.
                    let mut tries = 0;
                    while let Err(e) = connection.pragma_update(None, "journal_mode", "WAL") {
                        tries += 1;
                        if tries > 100 {
                            return Err(store_error(e));
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    connection
                        .pragma_update(None, "synchronous", "NORMAL")
                        .map_err(store_error)?;
                }
                connection
                    .execute_batch(
                        "CREATE TABLE IF NOT EXISTS conc_sessions (
                             id TEXT PRIMARY KEY,
                             version INTEGER NOT NULL,
                             data TEXT NOT NULL,
                             fence INTEGER NOT NULL DEFAULT 0
                         ) WITHOUT ROWID;
                         CREATE TABLE IF NOT EXISTS conc_session_fences (
                             session_id TEXT NOT NULL,
                             scope TEXT NOT NULL,
                             fence INTEGER NOT NULL,
                             PRIMARY KEY (session_id, scope)
                         ) WITHOUT ROWID;
                         CREATE TABLE IF NOT EXISTS conc_session_messages (
                             session_id TEXT NOT NULL,
                             seq INTEGER NOT NULL,
                             message_id TEXT NOT NULL,
                             body TEXT NOT NULL,
                             PRIMARY KEY (session_id, seq),
                             UNIQUE (session_id, message_id)
                         ) WITHOUT ROWID;",
                    )
                    .map_err(store_error)?;
                // A table from before fences: add the column (another process may be
                // doing the same, so a duplicate column is fine).
                let has_fence: bool = connection
                    .query_row(
                        "SELECT COUNT(*) FROM pragma_table_info('conc_sessions') WHERE name = 'fence'",
                        [],
                        |r| r.get::<_, i64>(0),
                    )
                    .map_err(store_error)?
                    > 0;
                if !has_fence
                    && let Err(e) = connection.execute_batch(
                        "ALTER TABLE conc_sessions ADD COLUMN fence INTEGER NOT NULL DEFAULT 0",
                    )
                    && !e.to_string().contains("duplicate column")
                {
                    return Err(store_error(e));
                }
                Ok(connection)
            },
        )
        .await
        .map_err(worker_error)??;
        // An in-memory database is one connection's own: reads go to the writer.
        if path == Path::new(":memory:") {
            return Ok(Self {
                reader: writer.clone(),
                writer,
            });
        }
        let reader = SqliteWorker::start(
            "conc-sqlite-sessions-read",
            1024,
            OP_TIMEOUT,
            move || -> Result<Connection, SessionError> {
                let connection = Connection::open_with_flags(
                    &path,
                    rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
                        | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )
                .map_err(store_error)?;
                connection
                    .busy_timeout(Duration::from_secs(5))
                    .map_err(store_error)?;
                Ok(connection)
            },
        )
        .await
        .map_err(worker_error)??;
        Ok(Self { writer, reader })
    }

    /// Runs a write on the writer's thread.
    async fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<R, SessionError> + Send + 'static,
    ) -> Result<R, SessionError> {
        self.writer
            .call(move |c| f(c))
            .await
            .map_err(worker_error)?
    }

    /// Runs a read on the reader's thread.
    async fn read<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<R, SessionError> + Send + 'static,
    ) -> Result<R, SessionError> {
        self.reader
            .call(move |c| f(c))
            .await
            .map_err(worker_error)?
    }
}

/// Writes the message rows of session `id` (ids and JSON bodies, in order), numbered
/// from 0, in the caller's transaction.
fn insert_messages(
    tx: &Transaction<'_>,
    id: &str,
    (ids, bodies): &(Vec<String>, Vec<String>),
) -> Result<(), SessionError> {
    let mut insert = tx
        .prepare_cached("INSERT INTO conc_session_messages (session_id, seq, message_id, body) VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING")
        .map_err(store_error)?;
    for (seq, (message_id, body)) in ids.iter().zip(bodies).enumerate() {
        insert
            .execute(params![id, seq as i64, message_id, body])
            .map_err(store_error)?;
    }
    Ok(())
}

/// Checks `fence` against the highest of `scope` in session `id` and records it, in
/// the caller's transaction.
fn advance_scope(
    tx: &Transaction<'_>,
    id: &str,
    scope: &str,
    fence: i64,
) -> Result<(), SessionError> {
    let recorded: Option<i64> = tx
        .prepare_cached(
            "SELECT fence FROM conc_session_fences WHERE session_id = ?1 AND scope = ?2",
        )
        .and_then(|mut s| s.query_row(params![id, scope], |r| r.get(0)).optional())
        .map_err(store_error)?;
    if let Some(recorded) = recorded
        && recorded > fence
    {
        return Err(stale(id, fence as u64, recorded as u64));
    }
    tx.prepare_cached(
        "INSERT INTO conc_session_fences (session_id, scope, fence) VALUES (?1, ?2, ?3)
             ON CONFLICT (session_id, scope) DO UPDATE SET fence = excluded.fence",
    )
    .and_then(|mut s| s.execute(params![id, scope, fence]))
    .map_err(store_error)?;
    Ok(())
}

impl SqliteSessionStore {
    /// An append whose fence is checked against the session's own (`scope` `None`) or
    /// a scope's (recorded there, not in the session's own).
    async fn append_checked(
        &self,
        id: &str,
        scope: Option<String>,
        message: &Message,
        fence: Option<u64>,
    ) -> Result<Appended, SessionError> {
        let id = id.to_owned();
        let message_id = message.id.clone();
        let body = encode_message(message)?;
        let fence_arg = fence.map(fence_value).transpose()?;
        self.call(move |c| {
            let tx = Transaction::new_unchecked(c, TransactionBehavior::Immediate)
                .map_err(store_error)?;
            let head: Option<(i64, i64)> = tx
                .prepare_cached("SELECT version, fence FROM conc_sessions WHERE id = ?1")
                .and_then(|mut s| s.query_row([&id], |r| Ok((r.get(0)?, r.get(1)?))).optional())
                .map_err(store_error)?;
            let Some((version, stored_fence)) = head else {
                return Err(SessionError::NotFound(id));
            };
            match (&scope, fence_arg) {
                (Some(scope), Some(f)) => advance_scope(&tx, &id, scope, f)?,
                (None, Some(f)) if stored_fence > f => {
                    return Err(stale(&id, f as u64, stored_fence as u64));
                }
                _ => {}
            }
            // Already there: as a row, or in the JSON of a row from before message rows.
            let present: bool = tx
                .prepare_cached(
                    "SELECT EXISTS (SELECT 1 FROM conc_session_messages WHERE session_id = ?1 AND message_id = ?2)
                             OR EXISTS (SELECT 1 FROM conc_sessions, json_each(conc_sessions.data, '$.messages') AS m
                                        WHERE conc_sessions.id = ?1 AND json_extract(m.value, '$.id') = ?2)",
                )
                .and_then(|mut s| s.query_row(params![id, message_id], |r| r.get(0)))
                .map_err(store_error)?;
            if present {
                tx.commit().map_err(store_error)?;
                return Ok(Appended {
                    added: false,
                    version: version as u64,
                    fence: stored_fence as u64,
                });
            }
            tx.prepare_cached(
                "INSERT INTO conc_session_messages (session_id, seq, message_id, body)
                     SELECT ?1, COALESCE(MAX(seq) + 1, 0), ?2, ?3 FROM conc_session_messages WHERE session_id = ?1",
            )
            .and_then(|mut s| s.execute(params![id, message_id, body]))
            .map_err(store_error)?;
            let new_fence = match (&scope, fence_arg) {
                (None, Some(f)) => f.max(stored_fence),
                _ => stored_fence,
            };
            tx.prepare_cached("UPDATE conc_sessions SET version = version + 1, fence = ?2 WHERE id = ?1")
                .and_then(|mut s| s.execute(params![id, new_fence]))
                .map_err(store_error)?;
            tx.commit().map_err(store_error)?;
            Ok(Appended {
                added: true,
                version: version as u64 + 1,
                fence: new_fence as u64,
            })
        })
        .await
    }
}

#[async_trait::async_trait]
impl SessionStore for SqliteSessionStore {
    async fn create(&self, session: &SessionData) -> Result<SessionData, SessionError> {
        check_id(&session.id)?;
        let stored = SessionData {
            version: 0,
            ..session.clone()
        };
        let text = encode_head(&stored)?;
        let bodies = message_rows(&stored.messages)?;
        let id = stored.id.clone();
        let inserted = self
            .call(move |c| {
                let tx = Transaction::new_unchecked(c, TransactionBehavior::Immediate)
                    .map_err(store_error)?;
                let inserted = tx
                    .execute("INSERT OR IGNORE INTO conc_sessions (id, version, data) VALUES (?1, 0, ?2)", params![id, text])
                    .map_err(store_error)?;
                if inserted == 1 {
                    insert_messages(&tx, &id, &bodies)?;
                }
                tx.commit().map_err(store_error)?;
                Ok(inserted)
            })
            .await?;
        if inserted == 0 {
            return Err(SessionError::AlreadyExists(stored.id));
        }
        Ok(stored)
    }

    async fn load(&self, id: &str) -> Result<Option<SessionData>, SessionError> {
        let id = id.to_owned();
        type Row = (i64, String, i64, Vec<String>);
        let row: Option<Row> = self
            .read(move |c| {
                // One read transaction: the row and its messages from one snapshot.
                let tx = Transaction::new_unchecked(c, TransactionBehavior::Deferred)
                    .map_err(store_error)?;
                let head: Option<(i64, String, i64)> = tx
                    .prepare_cached("SELECT version, data, fence FROM conc_sessions WHERE id = ?1")
                    .and_then(|mut s| {
                        s.query_row([&id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                            .optional()
                    })
                    .map_err(store_error)?;
                let Some((version, data, fence)) = head else {
                    return Ok(None);
                };
                let messages = tx
                    .prepare_cached(
                        "SELECT body FROM conc_session_messages WHERE session_id = ?1 ORDER BY seq",
                    )
                    .and_then(|mut s| {
                        s.query_map([&id], |r| r.get(0))?
                            .collect::<Result<Vec<String>, _>>()
                    })
                    .map_err(store_error)?;
                tx.finish().map_err(store_error)?;
                Ok(Some((version, data, fence, messages)))
            })
            .await?;
        row.map(|(version, text, fence, messages)| {
            decode_with_messages(BACKEND, &text, version as u64, fence as u64, &messages)
        })
        .transpose()
    }

    async fn append(
        &self,
        id: &str,
        message: &Message,
        fence: Option<u64>,
    ) -> Result<Appended, SessionError> {
        self.append_checked(id, None, message, fence).await
    }

    async fn advance_scoped_fence(
        &self,
        id: &str,
        scope: &str,
        fence: u64,
    ) -> Result<u64, SessionError> {
        if scope.is_empty() {
            return self.advance_fence(id, fence).await;
        }
        let (id, scope, value) = (id.to_owned(), scope.to_owned(), fence_value(fence)?);
        self.call(move |c| {
            let tx = Transaction::new_unchecked(c, TransactionBehavior::Immediate)
                .map_err(store_error)?;
            let exists: bool = tx
                .prepare_cached("SELECT EXISTS (SELECT 1 FROM conc_sessions WHERE id = ?1)")
                .and_then(|mut s| s.query_row([&id], |r| r.get(0)))
                .map_err(store_error)?;
            if !exists {
                return Err(SessionError::NotFound(id));
            }
            advance_scope(&tx, &id, &scope, value)?;
            tx.commit().map_err(store_error)?;
            Ok(fence)
        })
        .await
    }

    async fn append_scoped(
        &self,
        id: &str,
        scope: &str,
        message: &Message,
        fence: u64,
    ) -> Result<Appended, SessionError> {
        if scope.is_empty() {
            return self.append(id, message, Some(fence)).await;
        }
        self.append_checked(id, Some(scope.to_owned()), message, Some(fence))
            .await
    }

    async fn save(&self, session: &SessionData) -> Result<SessionData, SessionError> {
        self.save_checked(session, None).await
    }

    async fn save_fenced(
        &self,
        session: &SessionData,
        fence: u64,
    ) -> Result<SessionData, SessionError> {
        self.save_checked(session, Some(fence)).await
    }

    async fn advance_fence(&self, id: &str, fence: u64) -> Result<u64, SessionError> {
        let (key, value) = (id.to_owned(), fence_value(fence)?);
        let changed = self
            .call(move |c| {
                c.prepare_cached(
                    "UPDATE conc_sessions SET fence = ?2 WHERE id = ?1 AND fence <= ?2",
                )
                .and_then(|mut s| s.execute(params![key, value]))
                .map_err(store_error)
            })
            .await?;
        if changed == 1 {
            return Ok(fence);
        }
        Err(super::missing_or_stale(self, id, fence).await)
    }

    async fn list(&self, limit: usize) -> Result<Vec<String>, SessionError> {
        let limit = limit as i64;
        self.read(move |c| {
            let mut statement = c
                .prepare_cached("SELECT id FROM conc_sessions ORDER BY id LIMIT ?1")
                .map_err(store_error)?;
            let rows = statement
                .query_map([limit], |r| r.get(0))
                .map_err(store_error)?;
            rows.collect::<Result<Vec<String>, _>>()
                .map_err(store_error)
        })
        .await
    }
}
