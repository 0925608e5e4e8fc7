//! [`SessionStore`]: where sessions live, with optimistic versioning; memory, SQLite and
//! PostgreSQL backends.

use std::collections::{HashMap, HashSet};
use std::fmt;

use crate::data::{Message, SessionData};
use crate::error::SessionError;

/// What [`SessionStore::append`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Appended {
    /// Whether the message was added; `false` when a message with its id was there
    /// already (nothing changed).
    pub added: bool,
    /// The session's version after the call.
    pub version: u64,
    /// The session's recorded fence after the call.
    pub fence: u64,
}

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

    /// As [`advance_fence`](Self::advance_fence), for one of several generations that may
    /// run on a session at once (comparison mode): each `scope` (the permit the generation
    /// holds) keeps a highest fence of its own, so the generations do not fence each other
    /// off, while a newer generation on the same permit, or a stop, fences off the older
    /// one. The empty scope is the session's own fence. Stores that keep one fence per
    /// session refuse a scope with [`SessionError::Store`].
    ///
    /// # Cancel safety
    ///
    /// As [`advance_fence`](Self::advance_fence).
    async fn advance_scoped_fence(
        &self,
        id: &str,
        scope: &str,
        fence: u64,
    ) -> Result<u64, SessionError> {
        if scope.is_empty() {
            return self.advance_fence(id, fence).await;
        }
        Err(no_scopes())
    }

    /// As [`append`](Self::append) with `fence`, checked against (and recorded as) the
    /// highest fence of `scope` (see [`advance_scoped_fence`](Self::advance_scoped_fence)).
    ///
    /// # Cancel safety
    ///
    /// As [`append`](Self::append).
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
        Err(no_scopes())
    }

    /// Appends `message` to session `id`, unless a message with its id is there already
    /// (then nothing changes: a retried append is applied once). The session's version
    /// rises by one, so a concurrent [`save`](Self::save) of an older copy is a conflict,
    /// never an overwrite. With `fence`: refused with [`SessionError::StaleFence`]
    /// (nothing written) when the session has recorded a newer fence; otherwise `fence` is
    /// recorded, atomically with the append.
    ///
    /// Costs O(1) in the conversation's length on every backend of this crate: a message
    /// is one row (SQLite, PostgreSQL) or one entry (memory), and the session's own row is
    /// not rewritten. The default, for other stores, reads and saves the whole session.
    ///
    /// # Cancel safety
    ///
    /// A dropped call may or may not have appended; appending again is harmless.
    async fn append(
        &self,
        id: &str,
        message: &Message,
        fence: Option<u64>,
    ) -> Result<Appended, SessionError> {
        loop {
            let mut session = self
                .load(id)
                .await?
                .ok_or_else(|| SessionError::NotFound(id.to_owned()))?;
            if let Some(fence) = fence
                && session.fence > fence
            {
                return Err(stale(id, fence, session.fence));
            }
            if session.has_message(&message.id) {
                return Ok(Appended {
                    added: false,
                    version: session.version,
                    fence: session.fence,
                });
            }
            session.messages.push(message.clone());
            let saved = match fence {
                Some(fence) => self.save_fenced(&session, fence).await,
                None => self.save(&session).await,
            };
            match saved {
                Ok(saved) => {
                    return Ok(Appended {
                        added: true,
                        version: saved.version,
                        fence: saved.fence,
                    });
                }
                Err(SessionError::Conflict { .. }) => continue,
                Err(other) => return Err(other),
            }
        }
    }
}

/// The refusal of a store that keeps one fence per session.
fn no_scopes() -> SessionError {
    SessionError::Store {
        backend: "session store",
        message: "this store keeps one fence per session, so it cannot fence several generations of one conversation apart (comparison mode); use the memory, SQLite or PostgreSQL store".into(),
        source: None,
    }
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
        source: None,
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
    sessions: parking_lot::Mutex<HashMap<String, Stored>>,
}

/// A session, the ids of its messages (so an append checks for its id in O(1)) and the
/// fences of its scopes.
#[derive(Debug)]
struct Stored {
    data: SessionData,
    ids: HashSet<String>,
    scopes: HashMap<String, u64>,
}

impl Stored {
    fn new(data: SessionData) -> Self {
        let ids = data.messages.iter().map(|m| m.id.clone()).collect();
        Self {
            data,
            ids,
            scopes: HashMap::new(),
        }
    }

    /// Checks `fence` against the scope's highest and records it.
    fn advance_scope(&mut self, id: &str, scope: &str, fence: u64) -> Result<(), SessionError> {
        let recorded = self.scopes.entry(scope.to_owned()).or_insert(0);
        if *recorded > fence {
            return Err(stale(id, fence, *recorded));
        }
        *recorded = fence;
        Ok(())
    }
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
            && stored.data.fence > fence
        {
            return Err(stale(&session.id, fence, stored.data.fence));
        }
        if stored.data.version != session.version {
            return Err(SessionError::Conflict {
                id: session.id.clone(),
                expected: session.version,
            });
        }
        let scopes = std::mem::take(&mut stored.scopes);
        *stored = Stored::new(SessionData {
            version: session.version + 1,
            fence: stored.data.fence.max(fence.unwrap_or(0)),
            ..session.clone()
        });
        stored.scopes = scopes;
        Ok(stored.data.clone())
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
        sessions.insert(session.id.clone(), Stored::new(stored.clone()));
        Ok(stored)
    }

    async fn load(&self, id: &str) -> Result<Option<SessionData>, SessionError> {
        Ok(self.sessions.lock().get(id).map(|s| s.data.clone()))
    }

    async fn append(
        &self,
        id: &str,
        message: &Message,
        fence: Option<u64>,
    ) -> Result<Appended, SessionError> {
        let mut sessions = self.sessions.lock();
        let stored = sessions
            .get_mut(id)
            .ok_or_else(|| SessionError::NotFound(id.to_owned()))?;
        if let Some(fence) = fence
            && stored.data.fence > fence
        {
            return Err(stale(id, fence, stored.data.fence));
        }
        let added = stored.ids.insert(message.id.clone());
        if added {
            stored.data.messages.push(message.clone());
            stored.data.version += 1;
            stored.data.fence = stored.data.fence.max(fence.unwrap_or(0));
        }
        Ok(Appended {
            added,
            version: stored.data.version,
            fence: stored.data.fence,
        })
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
        if stored.data.fence > fence {
            return Err(stale(id, fence, stored.data.fence));
        }
        stored.data.fence = fence;
        Ok(fence)
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
        let mut sessions = self.sessions.lock();
        let stored = sessions
            .get_mut(id)
            .ok_or_else(|| SessionError::NotFound(id.to_owned()))?;
        stored.advance_scope(id, scope, fence)?;
        Ok(fence)
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
        let mut sessions = self.sessions.lock();
        let stored = sessions
            .get_mut(id)
            .ok_or_else(|| SessionError::NotFound(id.to_owned()))?;
        stored.advance_scope(id, scope, fence)?;
        let added = stored.ids.insert(message.id.clone());
        if added {
            stored.data.messages.push(message.clone());
            stored.data.version += 1;
        }
        Ok(Appended {
            added,
            version: stored.data.version,
            fence: stored.data.fence,
        })
    }

    async fn list(&self, limit: usize) -> Result<Vec<String>, SessionError> {
        let mut ids: Vec<String> = self.sessions.lock().keys().cloned().collect();
        ids.sort();
        ids.truncate(limit);
        Ok(ids)
    }
}

#[cfg(feature = "postgres")]
/// A backend failure of `backend`.
fn store_error(backend: &'static str, e: impl fmt::Display) -> SessionError {
    SessionError::Store {
        backend,
        message: e.to_string(),
        source: None,
    }
}

/// A failure of `backend`'s driver, kept as the error's source.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
fn driver_error<E: std::error::Error + Send + Sync + 'static>(
    backend: &'static str,
    e: E,
) -> SessionError {
    SessionError::Store {
        backend,
        message: e.to_string(),
        source: Some(Box::new(e)),
    }
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
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

#[cfg(any(feature = "sqlite", feature = "postgres"))]
/// Why recording a fence changed nothing: the session is gone, or it has a newer fence.
async fn missing_or_stale(store: &dyn SessionStore, id: &str, fence: u64) -> SessionError {
    match store.load(id).await {
        Ok(None) => SessionError::NotFound(id.to_owned()),
        Ok(Some(stored)) => stale(id, fence, stored.fence),
        Err(e) => e,
    }
}

/// A session or message that could not be encoded or read as JSON, `what` saying which.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
fn json_error(backend: &'static str, what: String, e: serde_json::Error) -> SessionError {
    SessionError::Store {
        backend,
        message: format!("{what}: {e}"),
        source: Some(Box::new(e)),
    }
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
fn encode(session: &SessionData) -> Result<String, SessionError> {
    serde_json::to_string(session).map_err(|e| {
        json_error(
            "json",
            format!("could not encode session `{}`", session.id),
            e,
        )
    })
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
fn decode(
    backend: &'static str,
    text: &str,
    version: u64,
    fence: u64,
) -> Result<SessionData, SessionError> {
    let mut data: SessionData = serde_json::from_str(text)
        .map_err(|e| json_error(backend, "a stored session is not valid".to_owned(), e))?;
    data.version = version;
    data.fence = fence;
    Ok(data)
}

/// The session's own row: its JSON without the messages, which are rows of their own.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
fn encode_head(session: &SessionData) -> Result<String, SessionError> {
    encode(&SessionData {
        messages: Vec::new(),
        id: session.id.clone(),
        metadata: session.metadata.clone(),
        version: session.version,
        fence: session.fence,
    })
}

/// One message as its row stores it.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
fn encode_message(message: &Message) -> Result<String, SessionError> {
    serde_json::to_string(message).map_err(|e| {
        json_error(
            "json",
            format!("could not encode message `{}`", message.id),
            e,
        )
    })
}

/// The ids and JSON bodies of `messages`, as the message rows store them.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
fn message_rows(messages: &[Message]) -> Result<(Vec<String>, Vec<String>), SessionError> {
    let mut ids = Vec::with_capacity(messages.len());
    let mut bodies = Vec::with_capacity(messages.len());
    for message in messages {
        ids.push(message.id.clone());
        bodies.push(encode_message(message)?);
    }
    Ok((ids, bodies))
}

/// A session from its row and its message rows, in order. A row written before messages
/// had rows of their own keeps them in its JSON: those come first.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
fn decode_with_messages(
    backend: &'static str,
    text: &str,
    version: u64,
    fence: u64,
    messages: &[String],
) -> Result<SessionData, SessionError> {
    let mut data = decode(backend, text, version, fence)?;
    data.messages.reserve(messages.len());
    for body in messages {
        data.messages.push(
            serde_json::from_str(body)
                .map_err(|e| json_error(backend, "a stored message is not valid".to_owned(), e))?,
        );
    }
    Ok(data)
}

#[cfg(feature = "sqlite")]
mod sqlite {
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
                        .prepare_cached("SELECT body FROM conc_session_messages WHERE session_id = ?1 ORDER BY seq")
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
}

#[cfg(feature = "sqlite")]
pub use sqlite::SqliteSessionStore;

#[cfg(feature = "postgres")]
mod postgres {
    use std::time::Duration;

    use deadpool_postgres::Pool;
    use tokio_postgres::Row;
    use tokio_postgres::types::ToSql;

    use super::{
        Appended, SessionStore, check_id, decode_with_messages, encode_head, encode_message,
        message_rows, stale,
    };
    use crate::data::{Message, SessionData};
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
        /// `"schema".conc_session_messages`: one row per message.
        messages: String,
        /// `"schema".`, for the store's functions.
        schema: String,
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
            let text = encode_head(&saved)?;
            let version = session.version as i64;
            let (ids, bodies) = message_rows(&saved.messages)?;
            let fence_arg = fence.map(fence_value).transpose()?;
            let sql = format!(
                "SELECT {}conc_session_save($1, $2, $3, $4, $5, $6)",
                self.schema
            );
            let changed = self
                .rows(
                    &sql,
                    &[&session.id, &version, &text, &fence_arg, &ids, &bodies],
                )
                .await?
                .first()
                .map_or(0, |row| row.get::<_, i32>(0));
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
            let config =
                conc_lock_store::PostgresConfig::default().with_application_name("conc-session");
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
                messages: format!("\"{schema}\".conc_session_messages"),
                schema: format!("\"{schema}\"."),
                op_timeout: Duration::from_secs(5),
            };
            let client = store.client().await?;
            let (t, m, s) = (&store.table, &store.messages, &store.schema);
            let fences = format!("{s}conc_session_fences");
            // Messages are rows of their own, so an append costs the same at any length. The
            // two functions run their statements in order, after locking the session's row:
            // each sees what committed before it, so concurrent writers serialize per session.
            let create = format!(
                "CREATE SCHEMA IF NOT EXISTS \"{schema}\";
                 CREATE TABLE IF NOT EXISTS {t} (id TEXT PRIMARY KEY, version BIGINT NOT NULL, data TEXT NOT NULL);
                 ALTER TABLE {t} ADD COLUMN IF NOT EXISTS fence BIGINT NOT NULL DEFAULT 0;
                 ALTER TABLE {t} ADD COLUMN IF NOT EXISTS next_seq BIGINT NOT NULL DEFAULT 0;
                 CREATE TABLE IF NOT EXISTS {m} (
                     session_id TEXT NOT NULL, seq BIGINT NOT NULL, message_id TEXT NOT NULL, body TEXT NOT NULL,
                     PRIMARY KEY (session_id, seq), UNIQUE (session_id, message_id));
                 CREATE TABLE IF NOT EXISTS {fences} (
                     session_id TEXT NOT NULL, scope TEXT NOT NULL, fence BIGINT NOT NULL,
                     PRIMARY KEY (session_id, scope));
                 CREATE OR REPLACE FUNCTION {s}conc_session_advance_scope(p_id text, p_scope text, p_fence bigint)
                 RETURNS TABLE (status int, recorded bigint) LANGUAGE plpgsql AS $f$
                 DECLARE sf bigint;
                 BEGIN
                   PERFORM 1 FROM {t} x WHERE x.id = p_id FOR UPDATE;
                   IF NOT FOUND THEN RETURN QUERY SELECT 0, 0::bigint; RETURN; END IF;
                   SELECT z.fence INTO sf FROM {fences} z WHERE z.session_id = p_id AND z.scope = p_scope;
                   IF FOUND AND sf > p_fence THEN RETURN QUERY SELECT 1, sf; RETURN; END IF;
                   INSERT INTO {fences} (session_id, scope, fence) VALUES (p_id, p_scope, p_fence)
                     ON CONFLICT (session_id, scope) DO UPDATE SET fence = EXCLUDED.fence;
                   RETURN QUERY SELECT 2, p_fence;
                 END $f$;
                 CREATE OR REPLACE FUNCTION {s}conc_session_append(p_id text, p_scope text, p_message_id text, p_body text, p_fence bigint)
                 RETURNS TABLE (status int, out_version bigint, out_fence bigint) LANGUAGE plpgsql AS $f$
                 DECLARE v bigint; f bigint; n bigint; d text; sf bigint;
                 BEGIN
                   SELECT x.version, x.fence, x.next_seq, x.data INTO v, f, n, d FROM {t} x WHERE x.id = p_id FOR UPDATE;
                   IF NOT FOUND THEN RETURN QUERY SELECT 0, 0::bigint, 0::bigint; RETURN; END IF;
                   IF p_scope = '' THEN
                     IF p_fence IS NOT NULL AND f > p_fence THEN RETURN QUERY SELECT 1, v, f; RETURN; END IF;
                   ELSE
                     SELECT z.fence INTO sf FROM {fences} z WHERE z.session_id = p_id AND z.scope = p_scope;
                     IF FOUND AND sf > p_fence THEN RETURN QUERY SELECT 1, v, sf; RETURN; END IF;
                     INSERT INTO {fences} (session_id, scope, fence) VALUES (p_id, p_scope, p_fence)
                       ON CONFLICT (session_id, scope) DO UPDATE SET fence = EXCLUDED.fence;
                   END IF;
                   IF EXISTS (SELECT 1 FROM {m} y WHERE y.session_id = p_id AND y.message_id = p_message_id)
                      OR COALESCE((d::jsonb -> 'messages') @> jsonb_build_array(jsonb_build_object('id', p_message_id)), false) THEN
                     RETURN QUERY SELECT 2, v, f; RETURN;
                   END IF;
                   INSERT INTO {m} (session_id, seq, message_id, body) VALUES (p_id, n, p_message_id, p_body);
                   UPDATE {t} x SET version = x.version + 1, next_seq = x.next_seq + 1,
                     fence = CASE WHEN p_scope = '' THEN GREATEST(x.fence, COALESCE(p_fence, 0)) ELSE x.fence END
                     WHERE x.id = p_id RETURNING x.version, x.fence INTO v, f;
                   RETURN QUERY SELECT 3, v, f;
                 END $f$;
                 CREATE OR REPLACE FUNCTION {s}conc_session_save(p_id text, p_version bigint, p_data text, p_fence bigint, p_ids text[], p_bodies text[])
                 RETURNS int LANGUAGE plpgsql AS $f$
                 DECLARE v bigint; f bigint;
                 BEGIN
                   SELECT x.version, x.fence INTO v, f FROM {t} x WHERE x.id = p_id FOR UPDATE;
                   IF NOT FOUND OR v <> p_version OR (p_fence IS NOT NULL AND f > p_fence) THEN RETURN 0; END IF;
                   DELETE FROM {m} WHERE session_id = p_id;
                   INSERT INTO {m} (session_id, seq, message_id, body)
                     SELECT p_id, u.o - 1, u.mid, u.body FROM unnest(p_ids, p_bodies) WITH ORDINALITY AS u(mid, body, o)
                     ON CONFLICT DO NOTHING;
                   UPDATE {t} x SET version = x.version + 1, data = p_data, next_seq = cardinality(p_ids),
                     fence = GREATEST(x.fence, COALESCE(p_fence, 0)) WHERE x.id = p_id;
                   RETURN 1;
                 END $f$;"
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
                .map_err(|e| super::driver_error(BACKEND, e))?;
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
                        Err(e) => Err(super::driver_error(BACKEND, e)),
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

    impl PostgresSessionStore {
        /// An append whose fence is checked against the session's own (`scope` empty) or
        /// a scope's (recorded there, not in the session's own), in one function call.
        async fn append_checked(
            &self,
            id: &str,
            scope: &str,
            message: &Message,
            fence: Option<u64>,
        ) -> Result<Appended, SessionError> {
            let body = encode_message(message)?;
            let fence_arg = fence.map(fence_value).transpose()?;
            let sql = format!(
                "SELECT status, out_version, out_fence FROM {}conc_session_append($1, $2, $3, $4, $5)",
                self.schema
            );
            let rows = self
                .rows(&sql, &[&id, &scope, &message.id, &body, &fence_arg])
                .await?;
            let row = rows
                .first()
                .ok_or_else(|| store_error("the append function returned no row"))?;
            let (status, version, stored_fence) = (
                row.get::<_, i32>(0),
                row.get::<_, i64>(1) as u64,
                row.get::<_, i64>(2) as u64,
            );
            match status {
                0 => Err(SessionError::NotFound(id.to_owned())),
                1 => Err(stale(id, fence.unwrap_or(0), stored_fence)),
                added => Ok(Appended {
                    added: added == 3,
                    version,
                    fence: stored_fence,
                }),
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
            let text = encode_head(&stored)?;
            let (ids, bodies) = message_rows(&stored.messages)?;
            let sql = format!(
                "WITH s AS (INSERT INTO {} (id, version, data, next_seq) VALUES ($1, 0, $2, cardinality($3::text[]))
                     ON CONFLICT (id) DO NOTHING RETURNING id),
                 m AS (INSERT INTO {} (session_id, seq, message_id, body)
                     SELECT s.id, u.o - 1, u.mid, u.body FROM s, unnest($3::text[], $4::text[]) WITH ORDINALITY AS u(mid, body, o)
                     ON CONFLICT DO NOTHING)
                 SELECT 1 FROM s",
                self.table, self.messages
            );
            let inserted = self
                .rows(&sql, &[&stored.id, &text, &ids, &bodies])
                .await?
                .len();
            if inserted == 0 {
                return Err(SessionError::AlreadyExists(stored.id));
            }
            Ok(stored)
        }

        async fn load(&self, id: &str) -> Result<Option<SessionData>, SessionError> {
            // One statement: the row and its messages from one snapshot.
            let sql = format!(
                "SELECT s.version, s.data, s.fence,
                        ARRAY(SELECT m.body FROM {} m WHERE m.session_id = s.id ORDER BY m.seq)
                 FROM {} s WHERE s.id = $1",
                self.messages, self.table
            );
            let rows = self.rows(&sql, &[&id]).await?;
            rows.first()
                .map(|r| {
                    decode_with_messages(
                        BACKEND,
                        r.get::<_, &str>(1),
                        r.get::<_, i64>(0) as u64,
                        r.get::<_, i64>(2) as u64,
                        &r.get::<_, Vec<String>>(3),
                    )
                })
                .transpose()
        }

        async fn append(
            &self,
            id: &str,
            message: &Message,
            fence: Option<u64>,
        ) -> Result<Appended, SessionError> {
            self.append_checked(id, "", message, fence).await
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
            let value = fence_value(fence)?;
            let sql = format!(
                "SELECT status, recorded FROM {}conc_session_advance_scope($1, $2, $3)",
                self.schema
            );
            let rows = self.rows(&sql, &[&id, &scope, &value]).await?;
            let row = rows
                .first()
                .ok_or_else(|| store_error("the fence function returned no row"))?;
            match row.get::<_, i32>(0) {
                0 => Err(SessionError::NotFound(id.to_owned())),
                1 => Err(stale(id, fence, row.get::<_, i64>(1) as u64)),
                _ => Ok(fence),
            }
        }

        async fn append_scoped(
            &self,
            id: &str,
            scope: &str,
            message: &Message,
            fence: u64,
        ) -> Result<Appended, SessionError> {
            self.append_checked(id, scope, message, Some(fence)).await
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
