//! [`SessionError`] and [`GenerationError`].

use std::time::{Duration, SystemTime};

use conc_lock_store::LockError;

/// A session operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// No session with this id.
    #[error("no session `{0}`")]
    NotFound(String),
    /// A session with this id exists already.
    #[error("session `{0}` already exists")]
    AlreadyExists(String),
    /// The session changed since it was read (a stale write was refused).
    #[error("session `{id}` changed since version {expected}: reload and apply the update again")]
    Conflict {
        /// The session.
        id: String,
        /// The version the write expected.
        expected: u64,
    },
    /// The update kept conflicting with other writers.
    #[error("session `{id}` kept changing under {attempts} update attempts; try again")]
    TooManyConflicts {
        /// The session.
        id: String,
        /// Attempts made.
        attempts: u32,
    },
    /// A session is being processed; switching now would lose its work.
    #[error("session `{session}` is being processed; wait for it to finish before switching")]
    Busy {
        /// The session in process.
        session: String,
    },
    /// Waiting for the processing lock took too long.
    #[error("waited {0:?} for the processing lock; another request is still processing")]
    ProcessingTimeout(Duration),
    /// The flow that holds the processing lock asked for it again (it would wait for itself).
    #[error("this flow already holds the processing lock; asking again would wait for ever")]
    CircularWait,
    /// The current session changed while waiting for the processing lock.
    #[error("the session changed from `{expected}` to `{actual}` while waiting to process it")]
    SessionSwitched {
        /// The session the caller meant to process.
        expected: String,
        /// The current session now.
        actual: String,
    },
    /// A write for a generation carried an older fence than the session has recorded: a
    /// newer generation started, or the generation was stopped. Nothing was written.
    #[error(
        "session `{id}` refused a write with fence {fence}: it has seen fence {seen}, so that generation was stopped or superseded"
    )]
    StaleFence {
        /// The session.
        id: String,
        /// The fence the write carried.
        fence: u64,
        /// The highest fence the session has recorded.
        seen: u64,
    },
    /// An empty or oversized id.
    #[error("invalid session id: {0}")]
    InvalidId(String),
    /// The store failed.
    #[error("{backend} session store failed: {message}")]
    Store {
        /// Which backend.
        backend: &'static str,
        /// What happened.
        message: String,
        /// The driver's error (rusqlite, tokio-postgres, the lock store), where there is one,
        /// for [`std::error::Error::source`] and downcasting.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

/// Starting or running a generation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GenerationError {
    /// Another generation runs in this conversation (`Reject` mode, or `Queue` past its wait).
    #[error(
        "A response is already being generated for this conversation. Please wait for it to finish."
    )]
    InProgress {
        /// Who started it.
        holder: String,
        /// When it started.
        started_at: SystemTime,
    },
    /// The lock store failed.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// The session store failed, or refused the generation's fence.
    #[error(transparent)]
    Session(#[from] SessionError),
}

impl GenerationError {
    /// Whether the generation was superseded as it started: a stop, or a newer generation,
    /// recorded a newer fence between this one's grant and the record of its own, so the
    /// session refused it. Nothing ran and nothing was saved, and starting again is safe:
    /// an outcome to report to the user, not a failure of the stores.
    ///
    /// ```
    /// use conc_session::{GenerationError, SessionError};
    ///
    /// let refused = GenerationError::Session(SessionError::StaleFence {
    ///     id: "conversation-1".into(),
    ///     fence: 7,
    ///     seen: 9,
    /// });
    /// assert!(refused.is_superseded());
    /// assert!(!GenerationError::Session(SessionError::NotFound("c".into())).is_superseded());
    /// ```
    pub fn is_superseded(&self) -> bool {
        matches!(self, Self::Session(SessionError::StaleFence { .. }))
    }
}
