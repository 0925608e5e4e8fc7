//! [`SessionStore`]: where sessions live, with optimistic versioning; memory, SQLite and
//! PostgreSQL backends.
//!
//! This module holds the trait, [`Appended`], [`connect`] and the helpers the backends
//! share (errors, session and message JSON); each backend lives in a module of its own:
//! `memory`, `sqlite` (feature `sqlite`) and `postgres` (feature `postgres`).

use std::fmt;

use crate::data::{Message, SessionData};
use crate::error::SessionError;

mod memory;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;

pub use memory::MemorySessionStore;
#[cfg(feature = "postgres")]
pub use postgres::PostgresSessionStore;
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteSessionStore;

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
            PostgresSessionStore::connect(url, parsed.option("schema").unwrap_or("public")).await?,
        )),
        StoreKind::Redis => Err(invalid(
            "sessions cannot live in Redis: use memory, sqlite:PATH or postgres://…".into(),
        )),
        StoreKind::Etcd => Err(invalid(
            "sessions cannot live in etcd (it is for locks): use memory, sqlite:PATH or postgres://…".into(),
        )),
        #[allow(unreachable_patterns)]
        kind => Err(invalid(format!(
            "this build of conc-session has no {kind:?} session store: enable its cargo feature"
        ))),
    }
}

/// Refuses a session id that is empty or longer than 256 bytes.
pub(crate) fn check_id(id: &str) -> Result<(), SessionError> {
    if id.is_empty() || id.len() > 256 {
        return Err(SessionError::InvalidId(format!(
            "`{id}`: a session id must have 1 to 256 bytes"
        )));
    }
    Ok(())
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
