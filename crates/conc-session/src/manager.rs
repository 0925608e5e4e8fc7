//! [`SessionManager`]: atomic session updates, the processing lock and the
//! per-conversation generation lock.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use conc_async::Supervisor;
use conc_core::{AbortController, AbortReason, AbortSignal, Mutex as AsyncMutex};
use conc_lock_store::{
    LockError, LockGuard, LockInfo, LockRequest, LockStore, Semaphore, default_drift_margin,
};

use crate::data::{Message, SessionData};
use crate::error::{GenerationError, SessionError};
use crate::store::{Appended, SessionStore, check_id};

mod generation;
mod processing;

pub use generation::{GenerationGuard, GenerationWrite};
pub use processing::ProcessingGuard;

/// Settings of a [`SessionManager`].
///
/// Start from [`Default`] and change what you need with the `with_*` setters. The struct is
/// `#[non_exhaustive]`: a field added in a later release is not a breaking change, so it
/// cannot be built with a struct literal outside this crate (its fields stay readable).
///
/// ```
/// use std::time::Duration;
/// use conc_session::SessionConfig;
///
/// let config = SessionConfig::default().with_generation_ttl(Duration::from_secs(60));
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SessionConfig {
    /// How many times an update is retried on a version conflict (default 20).
    pub max_update_attempts: u32,
    /// How long `begin_processing` waits (default 5 s).
    pub processing_timeout: Duration,
    /// The generation lock's lease, renewed while the generation runs (default 30 s).
    pub generation_ttl: Duration,
    /// The key prefix of generation locks (default `generation:`).
    pub lock_prefix: String,
    /// Who this process is, in lock owners (default `pid-<pid>`).
    pub instance: String,
    /// How many generations may run at once in one conversation (default 1). Above 1
    /// (comparison mode: two models answering side by side), each generation holds one
    /// permit of a [`Semaphore`] on the conversation and is fenced within its permit: the
    /// session store keeps one fence per permit (memory, SQLite and PostgreSQL do), so the
    /// generations do not fence each other off, while a stop, or a newer generation on the
    /// same permit, fences off the older one. In comparison mode a generation writes with
    /// [`GenerationGuard::append_reply`]; [`GenerationGuard::update`] is refused.
    pub generations_per_conversation: u32,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            max_update_attempts: 20,
            processing_timeout: Duration::from_secs(5),
            generation_ttl: Duration::from_secs(30),
            lock_prefix: "generation:".into(),
            instance: format!("pid-{}", std::process::id()),
            generations_per_conversation: 1,
        }
    }
}

impl SessionConfig {
    /// Sets [`max_update_attempts`](Self::max_update_attempts).
    #[must_use]
    pub fn with_max_update_attempts(mut self, max_update_attempts: u32) -> Self {
        self.max_update_attempts = max_update_attempts;
        self
    }

    /// Sets [`processing_timeout`](Self::processing_timeout).
    #[must_use]
    pub fn with_processing_timeout(mut self, processing_timeout: Duration) -> Self {
        self.processing_timeout = processing_timeout;
        self
    }

    /// Sets [`generation_ttl`](Self::generation_ttl).
    #[must_use]
    pub fn with_generation_ttl(mut self, generation_ttl: Duration) -> Self {
        self.generation_ttl = generation_ttl;
        self
    }

    /// Sets [`lock_prefix`](Self::lock_prefix).
    #[must_use]
    pub fn with_lock_prefix(mut self, lock_prefix: impl Into<String>) -> Self {
        self.lock_prefix = lock_prefix.into();
        self
    }

    /// Sets [`instance`](Self::instance).
    #[must_use]
    pub fn with_instance(mut self, instance: impl Into<String>) -> Self {
        self.instance = instance.into();
        self
    }

    /// Sets [`generations_per_conversation`](Self::generations_per_conversation).
    #[must_use]
    pub fn with_generations_per_conversation(mut self, generations_per_conversation: u32) -> Self {
        self.generations_per_conversation = generations_per_conversation;
        self
    }
}

/// A generation running in this process: its id and its controller.
type Running = (u64, Arc<AbortController>);

/// The drift margin a lock request asks for, or the default for its TTL.
fn margin(request: &LockRequest) -> Duration {
    request
        .drift_margin
        .unwrap_or_else(|| default_drift_margin(request.ttl))
}

/// Everything the manager needs, in one bundle.
#[derive(Debug, Clone)]
pub struct SessionContext {
    /// Where sessions live.
    pub sessions: Arc<dyn SessionStore>,
    /// Where generation locks live.
    pub locks: Arc<dyn LockStore>,
    /// Settings.
    pub config: SessionConfig,
}

/// What `start_generation` does when a generation already runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum GenerationMode {
    /// Fail at once with [`GenerationError::InProgress`].
    Reject,
    /// Wait up to `max_wait` for it to finish, then fail the same way.
    Queue {
        /// The longest wait.
        max_wait: Duration,
    },
}

/// Counters since the manager started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionStats {
    /// Starts that found a generation already running.
    pub concurrent_attempts: u64,
    /// Of those, rejected.
    pub rejected: u64,
    /// Of those, queued (waited).
    pub queued: u64,
    /// Total time queued starts waited, in milliseconds.
    pub waited_ms: u64,
    /// Generations whose lease was lost while running (a take-over, a forced release, a
    /// stop from another process, renewals that failed, a pause past the lease).
    pub leases_lost: u64,
    /// Results dropped because the generation had been stopped or had lost its lease.
    pub stale_results_dropped: u64,
    /// Update attempts retried after a version conflict.
    pub conflicts_retried: u64,
    /// Generations started.
    pub generations_started: u64,
}

/// Adds `n` to a counter, and to the `metrics` facade under `name` with the `metrics`
/// feature.
fn count(counter: &AtomicU64, name: &'static str, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
    #[cfg(feature = "metrics")]
    metrics::counter!(name).increment(n);
    #[cfg(not(feature = "metrics"))]
    let _ = name;
}

#[derive(Default)]
struct Counters {
    concurrent_attempts: AtomicU64,
    rejected: AtomicU64,
    queued: AtomicU64,
    waited_ms: AtomicU64,
    leases_lost: AtomicU64,
    stale_results_dropped: AtomicU64,
    conflicts_retried: AtomicU64,
    generations_started: AtomicU64,
}

/// Why a generation stopped in this process was aborted.
fn stop_reason() -> AbortReason {
    AbortReason::user("generation stopped by the user")
}

/// A flow of control: the tokio task it runs in, or the thread for code outside a task
/// (a `block_on`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Task(tokio::task::Id),
    Thread(std::thread::ThreadId),
}

impl Flow {
    fn current() -> Self {
        match tokio::task::try_id() {
            Some(id) => Flow::Task(id),
            None => Flow::Thread(std::thread::current().id()),
        }
    }
}

struct Inner {
    context: SessionContext,
    current: parking_lot::Mutex<Option<String>>,
    /// Per-session locks for updates in this process (the store's version check covers
    /// other processes).
    update_locks: parking_lot::Mutex<HashMap<String, Arc<AsyncMutex<()>>>>,
    processing: Arc<AsyncMutex<Option<String>>>,
    /// The flow that holds the processing lock, to refuse a circular wait.
    processing_task: parking_lot::Mutex<Option<Flow>>,
    /// Generations running in this process, to stop them at once.
    running: parking_lot::Mutex<HashMap<String, Vec<Running>>>,
    next_generation: AtomicU64,
    counters: Counters,
}

/// The session manager. Cheap to clone; clones share everything.
///
/// ```
/// use std::sync::Arc;
/// use conc_lock_store::MemoryLockStore;
/// use conc_session::{GenerationMode, Message, MemorySessionStore, Role, SessionConfig, SessionContext, SessionManager};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let manager = SessionManager::new(SessionContext {
///     sessions: Arc::new(MemorySessionStore::new()),
///     locks: Arc::new(MemoryLockStore::new()),
///     config: SessionConfig::default(),
/// });
/// let session = manager.create_session("conv-1").await.unwrap();
/// let generation = manager
///     .start_generation(&session.id, "user-1", "m-1", GenerationMode::Reject)
///     .await
///     .unwrap();
/// // A second send while it runs gets the please-wait error.
/// let busy = manager.start_generation(&session.id, "user-1", "m-2", GenerationMode::Reject).await;
/// assert!(busy.unwrap_err().to_string().contains("Please wait"));
/// // The reply is written with the generation's fence, which the session store checks.
/// let written = generation
///     .append_reply(Message::new("m-1-reply", Role::Assistant, "Hello!"))
///     .await
///     .unwrap();
/// assert!(written.is_committed());
/// generation.finish().await.unwrap();
/// // A stop, from this process or another, fences the stopped generation out.
/// let next = manager.start_generation(&session.id, "user-1", "m-2", GenerationMode::Reject).await.unwrap();
/// assert!(manager.stop_generation(&session.id).await.unwrap());
/// let refused = next.append_reply(Message::new("m-2-reply", Role::Assistant, "late")).await.unwrap();
/// assert!(!refused.is_committed());
/// assert!(!manager.is_generating(&session.id).await.unwrap());
/// assert!(!manager.is_generating(&session.id).await.unwrap());
/// # }
/// ```
#[derive(Clone)]
pub struct SessionManager {
    inner: Arc<Inner>,
}

impl SessionManager {
    /// A manager over `context`.
    pub fn new(context: SessionContext) -> Self {
        Self {
            inner: Arc::new(Inner {
                context,
                current: parking_lot::Mutex::new(None),
                update_locks: parking_lot::Mutex::new(HashMap::new()),
                processing: Arc::new(AsyncMutex::new(None)),
                processing_task: parking_lot::Mutex::new(None),
                running: parking_lot::Mutex::new(HashMap::new()),
                next_generation: AtomicU64::new(0),
                counters: Counters::default(),
            }),
        }
    }

    /// The context bundle.
    pub fn context(&self) -> &SessionContext {
        &self.inner.context
    }

    /// Creates a session and makes it current.
    ///
    /// # Cancel safety
    ///
    /// A dropped call may or may not have created the session.
    pub async fn create_session(&self, id: &str) -> Result<SessionData, SessionError> {
        let created = self
            .inner
            .context
            .sessions
            .create(&SessionData::new(id))
            .await?;
        *self.inner.current.lock() = Some(created.id.clone());
        Ok(created)
    }

    /// A copy of the current session, if one is set.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads.
    pub async fn current_session(&self) -> Result<Option<SessionData>, SessionError> {
        let current = self.inner.current.lock().clone();
        match current {
            Some(id) => self.inner.context.sessions.load(&id).await,
            None => Ok(None),
        }
    }

    /// The current session's id.
    pub fn current_session_id(&self) -> Option<String> {
        self.inner.current.lock().clone()
    }

    /// Makes `id` current; refused with [`SessionError::Busy`] while a session is being
    /// processed.
    pub fn switch_session(&self, id: &str) -> Result<(), SessionError> {
        check_id(id)?;
        if let Ok(guard) = self.inner.processing.try_lock() {
            *self.inner.current.lock() = Some(id.to_owned());
            drop(guard);
            return Ok(());
        }
        let session = self.inner.current.lock().clone().unwrap_or_default();
        Err(SessionError::Busy { session })
    }

    /// A copy of the session `id`.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads.
    pub async fn session(&self, id: &str) -> Result<SessionData, SessionError> {
        self.inner
            .context
            .sessions
            .load(id)
            .await?
            .ok_or_else(|| SessionError::NotFound(id.to_owned()))
    }

    /// Applies `update` to session `id` atomically and returns the saved copy.
    ///
    /// Updates of one session in this process queue on a per-session lock; against other
    /// processes, the store's version check refuses a stale save, and the update is applied
    /// again to a fresh copy (up to `max_update_attempts`). `update` may therefore run more
    /// than once; it gets a copy, so the manager's state can never be changed behind its back.
    ///
    /// # Cancel safety
    ///
    /// A dropped call either saved its update or did not; it never saves half of one.
    pub async fn update_session(
        &self,
        id: &str,
        update: impl FnMut(&mut SessionData) + Send,
    ) -> Result<SessionData, SessionError> {
        self.update_inner(id, None, update).await
    }

    /// As [`update_session`](Self::update_session); with a fence, each save is a fenced
    /// save that the store refuses with [`SessionError::StaleFence`] once a newer fence is
    /// recorded.
    async fn update_inner(
        &self,
        id: &str,
        fence: Option<u64>,
        mut update: impl FnMut(&mut SessionData) + Send,
    ) -> Result<SessionData, SessionError> {
        let lock = {
            let mut locks = self.inner.update_locks.lock();
            locks.entry(id.to_owned()).or_default().clone()
        };
        let guard = lock.lock().await;
        let sessions = &self.inner.context.sessions;
        let attempts = self.inner.context.config.max_update_attempts.max(1);
        let mut outcome = Err(SessionError::TooManyConflicts {
            id: id.to_owned(),
            attempts,
        });
        for attempt in 1..=attempts {
            let mut copy = sessions
                .load(id)
                .await?
                .ok_or_else(|| SessionError::NotFound(id.to_owned()))?;
            if let Some(fence) = fence
                && copy.fence > fence
            {
                outcome = Err(SessionError::StaleFence {
                    id: id.to_owned(),
                    fence,
                    seen: copy.fence,
                });
                break;
            }
            update(&mut copy);
            let saved = match fence {
                Some(fence) => sessions.save_fenced(&copy, fence).await,
                None => sessions.save(&copy).await,
            };
            match saved {
                Ok(saved) => {
                    outcome = Ok(saved);
                    break;
                }
                Err(SessionError::Conflict { .. }) => {
                    count(
                        &self.inner.counters.conflicts_retried,
                        "conc_session_update_conflicts_retried",
                        1,
                    );
                    // Another process wrote in between: back off a little and reapply.
                    let pause = Duration::from_micros(200 * u64::from(attempt.min(20)));
                    tokio::time::sleep(pause).await;
                }
                Err(other) => {
                    outcome = Err(other);
                    break;
                }
            }
        }
        drop(guard);
        self.forget_update_lock(id, &lock);
        outcome
    }

    /// Drops the per-session lock from the map when nobody else holds or waits for it.
    fn forget_update_lock(&self, id: &str, lock: &Arc<AsyncMutex<()>>) {
        let mut locks = self.inner.update_locks.lock();
        // Ours and the map's: no one else has a clone.
        if Arc::strong_count(lock) == 2 && !lock.is_locked() {
            locks.remove(id);
        }
    }

    /// Appends `message` unless a message with its id is already there (idempotent), in
    /// one atomic store operation whose cost does not grow with the conversation
    /// ([`SessionStore::append`]).
    ///
    /// # Cancel safety
    ///
    /// As [`update_session`](Self::update_session).
    pub async fn append_message(
        &self,
        id: &str,
        message: Message,
    ) -> Result<Appended, SessionError> {
        self.inner.context.sessions.append(id, &message, None).await
    }

    /// Starts a supervised task that removes expired locks every `every`, so a crashed
    /// generator's lock disappears from listings after its TTL.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future while it waits for a slot spawns nothing.
    pub async fn spawn_lock_cleanup(
        &self,
        supervisor: &Supervisor,
        every: Duration,
    ) -> Result<(), conc_async::SpawnError> {
        let locks = self.inner.context.locks.clone();
        supervisor
            .spawn(
                "session-lock-cleanup",
                move |signal: AbortSignal| async move {
                    loop {
                        if signal
                            .run_until_aborted(tokio::time::sleep(every))
                            .await
                            .is_err()
                        {
                            return Ok::<(), LockError>(());
                        }
                        // A failure (a dropped connection, a restarting server) is logged
                        // and the loop goes on: the next round tries again.
                        match locks.cleanup_expired().await {
                            Ok(0) => {}
                            Ok(removed) => {
                                tracing::debug!(removed, "expired generation locks removed");
                            }
                            Err(error) => {
                                tracing::warn!(%error, "removing expired generation locks failed; trying again next round");
                            }
                        }
                    }
                },
            )
            .await
    }

    /// The counters so far.
    pub fn stats(&self) -> SessionStats {
        let c = &self.inner.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        SessionStats {
            concurrent_attempts: load(&c.concurrent_attempts),
            rejected: load(&c.rejected),
            queued: load(&c.queued),
            waited_ms: load(&c.waited_ms),
            leases_lost: load(&c.leases_lost),
            stale_results_dropped: load(&c.stale_results_dropped),
            conflicts_retried: load(&c.conflicts_retried),
            generations_started: load(&c.generations_started),
        }
    }
}

impl fmt::Debug for SessionManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionManager")
            .field("current", &self.current_session_id())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}
