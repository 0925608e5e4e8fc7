//! [`SessionStore`]: where sessions live, with optimistic versioning; memory, SQLite and
//! PostgreSQL backends.

use std::collections::HashMap;
use std::fmt;

use crate::data::SessionData;
use crate::error::SessionError;

/// Keeps sessions. `save` compares versions, so a stale write fails with
/// [`SessionError::Conflict`] instead of overwriting a newer one.
///
/// A session is also a fenced resource: it records the highest generation fence it has
/// seen ([`advance_fence`](Self::advance_fence)), and
/// [`save_fenced`](Self::save_fenced) refuses a write whose fence is older, with
/// [`SessionError::StaleFence`], writing nothing. Each check is atomic with its write.
#[async_trait::async_trait]
pub trait SessionStore: Send + Sync + fmt::Debug {
    /// Stores a new session (its version becomes 0).
    ///
    /// # Cancel safety
    ///
    /// A dropped call may or may not have created the session.
    async fn create(&self, session: &SessionData) -> Result<SessionData, SessionError>;

    /// The session with `id`.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads.
    async fn load(&self, id: &str) -> Result<Option<SessionData>, SessionError>;

    /// Writes `session` if the stored version is still `session.version`; returns the saved
    /// copy at the next version.
    ///
    /// # Cancel safety
    ///
    /// A dropped call may or may not have saved; a retried save then sees a conflict and
    /// reloads, so nothing is applied twice by the manager.
    async fn save(&self, session: &SessionData) -> Result<SessionData, SessionError>;

    /// As [`save`](Self::save), for a generation holding `fence`: refused with
    /// [`SessionError::StaleFence`] (nothing written) when the session has recorded a newer
    /// fence; otherwise saved, and `fence` recorded.
    ///
    /// # Cancel safety
    ///
    /// As [`save`](Self::save).
    async fn save_fenced(
        &self,
        session: &SessionData,
        fence: u64,
    ) -> Result<SessionData, SessionError>;

    /// Records `fence` as the session's highest, so every write with an older fence is
    /// refused from now on; [`SessionError::StaleFence`] if the session has recorded a
    /// newer one already (an equal one is fine). Returns the fence now recorded.
    ///
    /// # Cancel safety
    ///
    /// A dropped call may or may not have recorded the fence; recording it again is
    /// harmless.
    async fn advance_fence(&self, id: &str, fence: u64) -> Result<u64, SessionError>;

    /// Session ids, at most `limit`.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads.
    async fn list(&self, limit: usize) -> Result<Vec<String>, SessionError>;
}

fn stale(id: &str, fence: u64, seen: u64) -> SessionError {
    SessionError::StaleFence {
        id: id.to_owned(),
        fence,
        seen,
    }
}

/// Opens the session store `url` names, with the lock store's URL syntax
/// ([`conc_lock_store::parse_url`]): `memory`, `sqlite:PATH`, or `postgres://…` (with
/// `schema=`, and TLS from `sslmode=` and `sslrootcert=`). Sessions do not live in Redis.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let sessions = conc_session::connect("memory").await.unwrap();
/// assert!(conc_session::connect("redis://127.0.0.1:6379").await.is_err());
/// # let _ = sessions;
/// # }
/// ```
///
/// # Cancel safety
///
/// Dropping the future may leave a table created; nothing else.
pub async fn connect(url: &str) -> Result<std::sync::Arc<dyn SessionStore>, SessionError> {
    use conc_lock_store::StoreKind;
    let invalid = |message: String| SessionError::Store {
        backend: "url",
        message,
    };
    let parsed = conc_lock_store::parse_url(url).map_err(|e| invalid(e.to_string()))?;
    match parsed.kind {
        StoreKind::Memory => Ok(std::sync::Arc::new(MemorySessionStore::new())),
        #[cfg(feature = "sqlite")]
        StoreKind::Sqlite => Ok(std::sync::Arc::new(
            SqliteSessionStore::open(&parsed.target).await?,
        )),
        #[cfg(feature = "postgres")]
        StoreKind::Postgres => Ok(std::sync::Arc::new(
            PostgresSessionStore::connect(
                &parsed.target,
                parsed.option("schema").unwrap_or("public"),
            )
            .await?,
        )),
        StoreKind::Redis => Err(invalid(
            "sessions cannot live in Redis: use memory, sqlite:PATH or postgres://…".into(),
        )),
        #[allow(unreachable_patterns)]
        kind => Err(invalid(format!(
            "this build of conc-session has no {kind:?} session store: enable its cargo feature"
        ))),
    }
}

pub(crate) fn check_id(id: &str) -> Result<(), SessionError> {
    if id.is_empty() || id.len() > 256 {
        return Err(SessionError::InvalidId(format!(
            "`{id}`: a session id must have 1 to 256 bytes"
        )));
    }
    Ok(())
}

/// Sessions in memory, for one process.
#[derive(Debug, Default)]
pub struct MemorySessionStore {
    sessions: parking_lot::Mutex<HashMap<String, SessionData>>,
}

impl MemorySessionStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn save_checked(
        &self,
        session: &SessionData,
        fence: Option<u64>,
    ) -> Result<SessionData, SessionError> {
        let mut sessions = self.sessions.lock();
        let stored = sessions
            .get_mut(&session.id)
            .ok_or_else(|| SessionError::NotFound(session.id.clone()))?;
        if let Some(fence) = fence
            && stored.fence > fence
        {
            return Err(stale(&session.id, fence, stored.fence));
        }
        if stored.version != session.version {
            return Err(SessionError::Conflict {
                id: session.id.clone(),
                expected: session.version,
            });
        }
        *stored = SessionData {
            version: session.version + 1,
            fence: stored.fence.max(fence.unwrap_or(0)),
            ..session.clone()
        };
        Ok(stored.clone())
    }
}

#[async_trait::async_trait]
impl SessionStore for MemorySessionStore {
    async fn create(&self, session: &SessionData) -> Result<SessionData, SessionError> {
        check_id(&session.id)?;
        let mut sessions = self.sessions.lock();
        if sessions.contains_key(&session.id) {
            return Err(SessionError::AlreadyExists(session.id.clone()));
        }
        let stored = SessionData {
            version: 0,
            ..session.clone()
        };
        sessions.insert(session.id.clone(), stored.clone());
        Ok(stored)
    }

    async fn load(&self, id: &str) -> Result<Option<SessionData>, SessionError> {
        Ok(self.sessions.lock().get(id).cloned())
    }

    async fn save(&self, session: &SessionData) -> Result<SessionData, SessionError> {
        self.save_checked(session, None)
    }

    async fn save_fenced(
        &self,
        session: &SessionData,
        fence: u64,
    ) -> Result<SessionData, SessionError> {
        self.save_checked(session, Some(fence))
    }

    async fn advance_fence(&self, id: &str, fence: u64) -> Result<u64, SessionError> {
        let mut sessions = self.sessions.lock();
        let stored = sessions
            .get_mut(id)
            .ok_or_else(|| SessionError::NotFound(id.to_owned()))?;
        if stored.fence > fence {
            return Err(stale(id, fence, stored.fence));
        }
        stored.fence = fence;
        Ok(fence)
    }

    async fn list(&self, limit: usize) -> Result<Vec<String>, SessionError> {
        let mut ids: Vec<String> = self.sessions.lock().keys().cloned().collect();
        ids.sort();
        ids.truncate(limit);
        Ok(ids)
    }
}

/// A backend failure of `backend`.
fn store_error(backend: &'static str, e: impl fmt::Display) -> SessionError {
    SessionError::Store {
        backend,
        message: e.to_string(),
    }
}

/// Why a versioned (and maybe fenced) write changed nothing: the session is gone, it has
/// seen a newer fence, or a newer version exists. Unless the newer version is exactly this
/// write (a try that committed before its connection dropped, sent again): then it is
/// the saved copy, so a retried save is never applied twice nor reported as a conflict.
async fn conflict_or_missing(
    store: &dyn SessionStore,
    session: &SessionData,
    fence: Option<u64>,
) -> Result<SessionData, SessionError> {
    match store.load(&session.id).await {
        Ok(None) => Err(SessionError::NotFound(session.id.clone())),
        Ok(Some(stored))
            if stored.version == session.version + 1
                && stored.messages == session.messages
                && stored.metadata == session.metadata
                && fence.is_none_or(|f| stored.fence == f.max(session.fence)) =>
        {
            Ok(stored)
        }
        Ok(Some(stored)) if fence.is_some_and(|f| stored.fence > f) => {
            Err(stale(&session.id, fence.unwrap_or(0), stored.fence))
        }
        Ok(Some(_)) => Err(SessionError::Conflict {
            id: session.id.clone(),
            expected: session.version,
        }),
        Err(e) => Err(e),
    }
}

/// Why recording a fence changed nothing: the session is gone, or it has a newer fence.
async fn missing_or_stale(store: &dyn SessionStore, id: &str, fence: u64) -> SessionError {
    match store.load(id).await {
        Ok(None) => SessionError::NotFound(id.to_owned()),
        Ok(Some(stored)) => stale(id, fence, stored.fence),
        Err(e) => e,
    }
}

fn encode(session: &SessionData) -> Result<String, SessionError> {
    serde_json::to_string(session).map_err(|e| SessionError::Store {
        backend: "json",
        message: format!("could not encode session `{}`: {e}", session.id),
    })
}

fn decode(
    backend: &'static str,
    text: &str,
    version: u64,
    fence: u64,
) -> Result<SessionData, SessionError> {
    let mut data: SessionData = serde_json::from_str(text).map_err(|e| SessionError::Store {
        backend,
        message: format!("a stored session is not valid: {e}"),
    })?;
    data.version = version;
    data.fence = fence;
    Ok(data)
}

#[cfg(feature = "sqlite")]
mod sqlite {
    use std::path::Path;
    use std::time::Duration;

    use conc_lock_store::{SqliteWorker, SqliteWorkerError};
    use rusqlite::{Connection, OptionalExtension, params};

    use super::{SessionStore, check_id, decode, encode};
    use crate::data::SessionData;
    use crate::error::SessionError;

    const BACKEND: &str = "sqlite";

    fn store_error(e: impl std::fmt::Display) -> SessionError {
        super::store_error(BACKEND, e)
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
            let text = encode(&saved)?;
            let (id, expected) = (session.id.clone(), session.version as i64);
            let fence_arg = fence.map(fence_value).transpose()?;
            let changed = self
                .call(move |c| {
                    match fence_arg {
                        None => c.prepare_cached("UPDATE conc_sessions SET version = version + 1, data = ?3 WHERE id = ?1 AND version = ?2")
                            .and_then(|mut s| s.execute(params![id, expected, text])),
                        Some(f) => c.prepare_cached("UPDATE conc_sessions SET version = version + 1, data = ?3, fence = ?4 WHERE id = ?1 AND version = ?2 AND fence <= ?4")
                            .and_then(|mut s| s.execute(params![id, expected, text, f])),
                    }
                    .map_err(store_error)
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

    #[async_trait::async_trait]
    impl SessionStore for SqliteSessionStore {
        async fn create(&self, session: &SessionData) -> Result<SessionData, SessionError> {
            check_id(&session.id)?;
            let stored = SessionData {
                version: 0,
                ..session.clone()
            };
            let text = encode(&stored)?;
            let id = stored.id.clone();
            let inserted = self
                .call(move |c| {
                    c.execute("INSERT OR IGNORE INTO conc_sessions (id, version, data) VALUES (?1, 0, ?2)", params![id, text])
                        .map_err(store_error)
                })
                .await?;
            if inserted == 0 {
                return Err(SessionError::AlreadyExists(stored.id));
            }
            Ok(stored)
        }

        async fn load(&self, id: &str) -> Result<Option<SessionData>, SessionError> {
            let id = id.to_owned();
            let row: Option<(i64, String, i64)> = self
                .read(move |c| {
                    c.prepare_cached("SELECT version, data, fence FROM conc_sessions WHERE id = ?1")
                        .and_then(|mut s| {
                            s.query_row([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                                .optional()
                        })
                        .map_err(store_error)
                })
                .await?;
            row.map(|(version, text, fence)| decode(BACKEND, &text, version as u64, fence as u64))
                .transpose()
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
}

#[cfg(feature = "sqlite")]
pub use sqlite::SqliteSessionStore;

#[cfg(feature = "postgres")]
mod postgres {
    use std::time::Duration;

    use deadpool_postgres::Pool;
    use tokio_postgres::Row;
    use tokio_postgres::types::ToSql;

    use super::{SessionStore, check_id, decode, encode};
    use crate::data::SessionData;
    use crate::error::SessionError;

    const BACKEND: &str = "postgres";

    fn store_error(e: impl std::fmt::Display) -> SessionError {
        super::store_error(BACKEND, e)
    }

    /// Sessions in PostgreSQL (a pooled client, a timeout on every call), shared by every
    /// machine of a service.
    #[derive(Debug, Clone)]
    pub struct PostgresSessionStore {
        pool: Pool,
        table: String,
        op_timeout: Duration,
    }

    /// A fence as PostgreSQL stores it.
    fn fence_value(fence: u64) -> Result<i64, SessionError> {
        i64::try_from(fence).map_err(|_| {
            store_error(format!(
                "fence {fence} is larger than a stored fence can be"
            ))
        })
    }

    impl PostgresSessionStore {
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
            let text = encode(&saved)?;
            let version = session.version as i64;
            let changed = match fence.map(fence_value).transpose()? {
                None => {
                    let sql = format!(
                        "UPDATE {} SET version = version + 1, data = $3 WHERE id = $1 AND version = $2 RETURNING 1",
                        self.table
                    );
                    self.rows(&sql, &[&session.id, &version, &text])
                        .await?
                        .len()
                }
                Some(f) => {
                    let sql = format!(
                        "UPDATE {} SET version = version + 1, data = $3, fence = $4
                         WHERE id = $1 AND version = $2 AND fence <= $4 RETURNING 1",
                        self.table
                    );
                    self.rows(&sql, &[&session.id, &version, &text, &f])
                        .await?
                        .len()
                }
            };
            if changed == 1 {
                return Ok(saved);
            }
            super::conflict_or_missing(self, session, fence).await
        }

        /// Connects to `url` and creates `schema.conc_sessions` if needed. `schema` must be
        /// lowercase letters, digits and `_`.
        ///
        /// # Cancel safety
        ///
        /// Dropping the future may leave the table created; nothing else.
        pub async fn connect(url: &str, schema: &str) -> Result<Self, SessionError> {
            let valid = !schema.is_empty()
                && schema
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                && !schema.starts_with(|c: char| c.is_ascii_digit());
            if !valid {
                return Err(store_error(format!("invalid schema name `{schema}`")));
            }
            // The lock store's pool builder: TLS from the URL (`sslmode`, `sslrootcert`),
            // statement and connect timeouts, errors that name their cause.
            let config = conc_lock_store::PostgresConfig {
                application_name: "conc-session".into(),
                ..Default::default()
            };
            let pool = conc_lock_store::postgres_pool(url, &config).map_err(store_error)?;
            Self::from_pool(pool, schema).await
        }

        /// A store over a pool the service already has (see
        /// [`conc_lock_store::postgres_pool`] for one with TLS from a URL); creates
        /// `schema.conc_sessions` if needed.
        ///
        /// # Cancel safety
        ///
        /// Dropping the future may leave the table created; nothing else.
        pub async fn from_pool(pool: Pool, schema: &str) -> Result<Self, SessionError> {
            let valid = !schema.is_empty()
                && schema
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                && !schema.starts_with(|c: char| c.is_ascii_digit());
            if !valid {
                return Err(store_error(format!("invalid schema name `{schema}`")));
            }
            let store = Self {
                pool,
                table: format!("\"{schema}\".conc_sessions"),
                op_timeout: Duration::from_secs(5),
            };
            let client = store.client().await?;
            let create = format!(
                "CREATE SCHEMA IF NOT EXISTS \"{schema}\";
                 CREATE TABLE IF NOT EXISTS {0} (id TEXT PRIMARY KEY, version BIGINT NOT NULL, data TEXT NOT NULL);
                 ALTER TABLE {0} ADD COLUMN IF NOT EXISTS fence BIGINT NOT NULL DEFAULT 0;",
                store.table
            );
            let tx_work = async {
                client
                    .batch_execute("SELECT pg_advisory_lock(hashtext('conc_session_migrate'))")
                    .await?;
                let outcome = client.batch_execute(&create).await;
                client
                    .batch_execute("SELECT pg_advisory_unlock(hashtext('conc_session_migrate'))")
                    .await?;
                outcome
            };
            tokio::time::timeout(store.op_timeout * 2, tx_work)
                .await
                .map_err(|_| store_error("creating the session table timed out"))?
                .map_err(store_error)?;
            Ok(store)
        }

        async fn client(&self) -> Result<deadpool_postgres::Object, SessionError> {
            self.pool
                .get()
                .await
                .map_err(|e| store_error(conc_lock_store::postgres_pool_error(e)))
        }

        /// Runs `sql`, retrying on a fresh connection when the connection was lost (a
        /// `pg_terminate_backend`, a failover), each try within the operation timeout.
        async fn rows(
            &self,
            sql: &str,
            params: &[&(dyn ToSql + Sync)],
        ) -> Result<Vec<Row>, SessionError> {
            let mut tries = 0;
            loop {
                tries += 1;
                let attempt = async {
                    let client = self.client().await?;
                    match client.query(sql, params).await {
                        Ok(rows) => Ok(Ok(rows)),
                        Err(e) if conc_lock_store::is_connection_lost(&e) => {
                            let _ = deadpool_postgres::Object::take(client);
                            Ok(Err(e))
                        }
                        Err(e) => Err(store_error(e)),
                    }
                };
                match tokio::time::timeout(self.op_timeout, attempt).await {
                    Err(_) => {
                        return Err(store_error(format!(
                            "the operation took longer than {:?}",
                            self.op_timeout
                        )));
                    }
                    Ok(Err(e)) => return Err(e),
                    Ok(Ok(Ok(rows))) => return Ok(rows),
                    Ok(Ok(Err(e))) if tries < 3 => {
                        tracing::debug!(error = %e, tries, "postgres session store lost its connection; retrying on a fresh one");
                    }
                    Ok(Ok(Err(e))) => {
                        return Err(store_error(format!("the connection was lost: {e}")));
                    }
                }
            }
        }
    }

    #[async_trait::async_trait]
    impl SessionStore for PostgresSessionStore {
        async fn create(&self, session: &SessionData) -> Result<SessionData, SessionError> {
            check_id(&session.id)?;
            let stored = SessionData {
                version: 0,
                ..session.clone()
            };
            let text = encode(&stored)?;
            let sql = format!(
                "INSERT INTO {} (id, version, data) VALUES ($1, 0, $2) ON CONFLICT (id) DO NOTHING RETURNING 1",
                self.table
            );
            let inserted = self.rows(&sql, &[&stored.id, &text]).await?.len();
            if inserted == 0 {
                return Err(SessionError::AlreadyExists(stored.id));
            }
            Ok(stored)
        }

        async fn load(&self, id: &str) -> Result<Option<SessionData>, SessionError> {
            let sql = format!(
                "SELECT version, data, fence FROM {} WHERE id = $1",
                self.table
            );
            let rows = self.rows(&sql, &[&id]).await?;
            rows.first()
                .map(|r| {
                    decode(
                        BACKEND,
                        r.get::<_, &str>(1),
                        r.get::<_, i64>(0) as u64,
                        r.get::<_, i64>(2) as u64,
                    )
                })
                .transpose()
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
            let value = fence_value(fence)?;
            let sql = format!(
                "UPDATE {} SET fence = $2 WHERE id = $1 AND fence <= $2 RETURNING 1",
                self.table
            );
            let changed = self.rows(&sql, &[&id, &value]).await?.len();
            if changed == 1 {
                return Ok(fence);
            }
            Err(super::missing_or_stale(self, id, fence).await)
        }

        async fn list(&self, limit: usize) -> Result<Vec<String>, SessionError> {
            let sql = format!("SELECT id FROM {} ORDER BY id LIMIT $1", self.table);
            let rows = self.rows(&sql, &[&(limit as i64)]).await?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        }
    }
}

#[cfg(feature = "postgres")]
pub use postgres::PostgresSessionStore;
