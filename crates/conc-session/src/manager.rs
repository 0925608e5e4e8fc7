//! [`SessionManager`]: atomic session updates, the processing lock and the
//! per-conversation generation lock.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use conc_async::Supervisor;
use conc_core::{AbortController, AbortReason, AbortSignal, Mutex as AsyncMutex, OwnedMutexGuard};
use conc_lock_store::{
    LockError, LockGuard, LockInfo, LockRequest, LockStore, Semaphore, default_drift_margin,
};

use crate::data::{Message, SessionData};
use crate::error::{GenerationError, SessionError};
use crate::store::{Appended, SessionStore, check_id};

/// Settings of a [`SessionManager`].
#[derive(Debug, Clone)]
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

    /// Takes the processing lock for `expected_session`: while the guard lives,
    /// [`switch_session`](Self::switch_session) is refused.
    ///
    /// Errors instead of hangs: [`SessionError::ProcessingTimeout`] after the configured
    /// wait, [`SessionError::CircularWait`] when the task holding it asks again, and
    /// [`SessionError::SessionSwitched`] when the current session changed while waiting.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a dropped call gives up its place in the queue.
    pub async fn begin_processing(
        &self,
        expected_session: &str,
    ) -> Result<ProcessingGuard, SessionError> {
        let me = Flow::current();
        if *self.inner.processing_task.lock() == Some(me) {
            return Err(SessionError::CircularWait);
        }
        let limit = self.inner.context.config.processing_timeout;
        let lock = self.inner.processing.clone().lock_owned();
        let mut guard = tokio::time::timeout(limit, lock)
            .await
            .map_err(|_| SessionError::ProcessingTimeout(limit))?;
        let current = self.inner.current.lock().clone().unwrap_or_default();
        if current != expected_session {
            return Err(SessionError::SessionSwitched {
                expected: expected_session.to_owned(),
                actual: current,
            });
        }
        *guard = Some(expected_session.to_owned());
        *self.inner.processing_task.lock() = Some(me);
        Ok(ProcessingGuard {
            manager: self.clone(),
            guard: Some(guard),
        })
    }

    /// Whether a session is being processed now.
    pub fn is_processing(&self) -> bool {
        self.inner.processing.is_locked()
    }

    fn lock_key(&self, conversation: &str) -> String {
        format!("{}{conversation}", self.inner.context.config.lock_prefix)
    }

    /// Starts a generation in `conversation` for `user`'s message `message_id`:
    /// one at a time per conversation, across every process that shares the lock store.
    ///
    /// # Cancel safety
    ///
    /// A dropped call leaves at most a lease nobody holds, which expires after its TTL.
    pub async fn start_generation(
        &self,
        conversation: &str,
        user: &str,
        message_id: &str,
        mode: GenerationMode,
    ) -> Result<GenerationGuard, GenerationError> {
        let config = &self.inner.context.config;
        let request = LockRequest::new(
            self.lock_key(conversation),
            format!("{}/{user}", config.instance),
            config.generation_ttl,
        )
        .with_metadata("user_id", user)
        .with_metadata("message_id", message_id);
        let locks = self.inner.context.locks.clone();
        let counters = &self.inner.counters;
        let semaphore = self.semaphore()?;
        let first = match &semaphore {
            None => LockGuard::try_acquire(locks.clone(), request.clone()).await?,
            Some(semaphore) => semaphore
                .try_acquire(&request)
                .await?
                .map(|lease| LockGuard::with_margin(locks.clone(), lease, margin(&request))),
        };
        let guard = match first {
            Some(guard) => guard,
            None => {
                count(
                    &counters.concurrent_attempts,
                    "conc_session_concurrent_attempts",
                    1,
                );
                match mode {
                    GenerationMode::Reject => {
                        count(&counters.rejected, "conc_session_rejected", 1);
                        return Err(self.in_progress(conversation).await);
                    }
                    GenerationMode::Queue { max_wait } => {
                        count(&counters.queued, "conc_session_queued", 1);
                        let started = tokio::time::Instant::now();
                        let outcome = match &semaphore {
                            None => LockGuard::acquire(locks, request, max_wait).await,
                            Some(semaphore) => semaphore.acquire_guard(request, max_wait).await,
                        };
                        count(
                            &counters.waited_ms,
                            "conc_session_waited_ms",
                            started.elapsed().as_millis() as u64,
                        );
                        match outcome {
                            Ok(guard) => guard,
                            Err(LockError::Timeout { holder, .. }) => {
                                return Err(match holder {
                                    Some(h) => GenerationError::InProgress {
                                        holder: h.owner,
                                        started_at: h.acquired_at,
                                    },
                                    None => self.in_progress(conversation).await,
                                });
                            }
                            Err(other) => return Err(other.into()),
                        }
                    }
                }
            }
        };
        // The permit's own fence scope in comparison mode (`#permit:<n>`), none otherwise.
        let scope = guard
            .lease()
            .key
            .strip_prefix(&self.lock_key(conversation))
            .unwrap_or_default()
            .to_owned();
        // Before anything else, the session records the new fence: from now on it refuses
        // every write of an older generation, whatever the lock store's timing.
        match self
            .inner
            .context
            .sessions
            .advance_scoped_fence(conversation, &scope, guard.fence())
            .await
        {
            // No session: nothing to fence (every write to it fails anyway).
            Ok(_) | Err(SessionError::NotFound(_)) => {}
            Err(error) => {
                let _ = guard.release().await;
                return Err(error.into());
            }
        }
        count(
            &counters.generations_started,
            "conc_session_generations_started",
            1,
        );
        let controller = Arc::new(guard.lost().child());
        let id = self.inner.next_generation.fetch_add(1, Ordering::Relaxed);
        self.inner
            .running
            .lock()
            .entry(conversation.to_owned())
            .or_default()
            .push((id, controller.clone()));
        Ok(GenerationGuard {
            manager: self.clone(),
            conversation: conversation.to_owned(),
            id,
            controller,
            lock: Some(guard),
            scope,
        })
    }

    /// The semaphore of comparison mode (more than one generation per conversation), or
    /// `None` for one at a time.
    fn semaphore(&self) -> Result<Option<Semaphore>, GenerationError> {
        let permits = self.inner.context.config.generations_per_conversation;
        if permits <= 1 {
            return Ok(None);
        }
        Ok(Some(Semaphore::new(
            self.inner.context.locks.clone(),
            permits,
        )?))
    }

    /// The leases of the generations running in `conversation`, in any process.
    async fn holders(&self, conversation: &str) -> Result<Vec<LockInfo>, GenerationError> {
        let key = self.lock_key(conversation);
        Ok(match self.semaphore()? {
            Some(semaphore) => semaphore.holders(&key).await?,
            None => self
                .inner
                .context
                .locks
                .inspect(&key)
                .await?
                .into_iter()
                .collect(),
        })
    }

    async fn in_progress(&self, conversation: &str) -> GenerationError {
        match self.holders(conversation).await {
            Ok(holders) => match holders.into_iter().next() {
                Some(info) => GenerationError::InProgress {
                    holder: info.owner,
                    started_at: info.acquired_at,
                },
                // It finished in between; still a collision from the caller's point of view.
                None => GenerationError::InProgress {
                    holder: String::from("(just finished)"),
                    started_at: SystemTime::now(),
                },
            },
            Err(e) => e,
        }
    }

    /// Whether a generation runs in `conversation` (in any process), so a UI can disable
    /// its input.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads.
    pub async fn is_generating(&self, conversation: &str) -> Result<bool, GenerationError> {
        Ok(!self.holders(conversation).await?.is_empty())
    }

    /// Stops the generation running in `conversation`, in whichever process runs it, and
    /// frees the conversation at once. Returns whether a generation was running.
    ///
    /// It takes the lock over (a short "stopping" lease with a new fence), records that
    /// fence in the session store, so the session refuses every later write of the stopped
    /// generation, and releases the lock. The generator learns of it at once: in this
    /// process its signal fires directly; in another, the take-over reaches its lock guard
    /// through the lock store's watch (Redis pub/sub, PostgreSQL LISTEN/NOTIFY, SQLite's
    /// data version), and its signal fires. A new generation can start right away.
    ///
    /// # Cancel safety
    ///
    /// A dropped call may or may not have taken the lock over; a stopping lease expires
    /// within `generation_ttl / 3`.
    pub async fn stop_generation(&self, conversation: &str) -> Result<bool, GenerationError> {
        let local: Vec<Arc<AbortController>> = self
            .inner
            .running
            .lock()
            .get(conversation)
            .map(|running| running.iter().map(|(_, c)| c.clone()).collect())
            .unwrap_or_default();
        for controller in &local {
            controller.abort(stop_reason());
        }
        let key = self.lock_key(conversation);
        let held: Vec<String> = self
            .holders(conversation)
            .await?
            .into_iter()
            .map(|info| info.key)
            .collect();
        if local.is_empty() && held.is_empty() {
            return Ok(false);
        }
        // One generation: its lock, held or not (a local generation may be between its
        // lock and its first write). Comparison mode: every permit held now.
        let keys = if self.semaphore()?.is_none() {
            vec![key.clone()]
        } else {
            held
        };
        let locks = &self.inner.context.locks;
        let config = &self.inner.context.config;
        let hold = (config.generation_ttl / 3).max(Duration::from_secs(1));
        for permit in keys {
            let scope = permit.strip_prefix(&key).unwrap_or_default().to_owned();
            let request = LockRequest::new(permit, format!("stopping/{}", config.instance), hold)
                .with_metadata("stopped_by", config.instance.clone());
            let stopping = locks.take_over(&request).await?;
            let recorded = self
                .inner
                .context
                .sessions
                .advance_scoped_fence(conversation, &scope, stopping.fence)
                .await;
            let released = locks.release(&stopping).await;
            match recorded {
                Ok(_) | Err(SessionError::NotFound(_)) => {}
                Err(error) => return Err(error.into()),
            }
            released?;
        }
        Ok(true)
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

/// The processing lock, held; dropping it ends processing.
#[must_use = "if unused the processing lock is released at once"]
pub struct ProcessingGuard {
    manager: SessionManager,
    guard: Option<OwnedMutexGuard<Option<String>>>,
}

impl ProcessingGuard {
    /// The session being processed.
    pub fn session(&self) -> &str {
        self.guard
            .as_ref()
            .and_then(|g| g.as_deref())
            .unwrap_or_default()
    }
}

impl Drop for ProcessingGuard {
    fn drop(&mut self) {
        *self.manager.inner.processing_task.lock() = None;
        if let Some(mut guard) = self.guard.take() {
            *guard = None;
        }
    }
}

impl fmt::Debug for ProcessingGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessingGuard")
            .field("session", &self.session())
            .finish()
    }
}

/// A running generation: holds the conversation's lock (renewed in the background), whose
/// fence the session store has recorded.
///
/// Watch [`signal`](Self::signal): it fires when the generation is stopped (in any process)
/// or the lease is lost. Write the result with [`append_reply`](Self::append_reply) or
/// [`update`](Self::update): the write carries the generation's fence to the session
/// store, which refuses it once a newer generation or a stop has recorded a newer fence,
/// so a generation that was stopped, superseded or paused past its lease never writes.
/// The lock is released by [`finish`](Self::finish), and on drop (error, panic,
/// cancellation) too.
#[must_use = "if unused the generation ends at once: its lock is released on drop"]
pub struct GenerationGuard {
    manager: SessionManager,
    conversation: String,
    id: u64,
    controller: Arc<AbortController>,
    lock: Option<LockGuard>,
    /// The permit's fence scope in comparison mode; empty for one generation at a time.
    scope: String,
}

/// What became of a write a generation asked for ([`GenerationGuard::append_reply`],
/// [`GenerationGuard::update`]). Only `Committed` wrote anything; the others are outcomes,
/// not errors: the generation was stopped or superseded, and its result is dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum GenerationWrite {
    /// Saved: the session as saved (by [`GenerationGuard::update`]).
    Committed(SessionData),
    /// Appended (by [`GenerationGuard::append_reply`]): the session's version and fence
    /// after it. `added` is `false` when the reply was there already.
    Appended(Appended),
    /// Not written: the generation was stopped (in this process or another).
    Stopped,
    /// Not written: the generation's lease ran out or was taken (a take-over, a forced
    /// release, a pause past its TTL), as this process's clock or the lock store told.
    LeaseLost,
    /// Not written: the session store refused the fence, because it has recorded a newer
    /// one (a newer generation started, or a stop came through another process).
    Superseded {
        /// The generation's fence.
        fence: u64,
        /// The newer fence the session has recorded.
        seen: u64,
    },
}

impl GenerationWrite {
    /// The saved session, if an [`update`](GenerationGuard::update) was committed.
    pub fn committed(self) -> Option<SessionData> {
        match self {
            GenerationWrite::Committed(session) => Some(session),
            _ => None,
        }
    }

    /// Whether the write was committed (an update saved or a reply appended).
    pub fn is_committed(&self) -> bool {
        matches!(
            self,
            GenerationWrite::Committed(_) | GenerationWrite::Appended(_)
        )
    }
}

impl GenerationGuard {
    /// Fires when the generation is stopped or its lease is lost (checked against the
    /// lease's validity first, so a generation that was paused past its lease sees it).
    pub fn signal(&self) -> AbortSignal {
        if let Some(lock) = &self.lock {
            lock.is_valid();
        }
        self.controller.signal()
    }

    /// Appends the generation's reply to the session, fenced: the message carries the
    /// generation's fence, and the session store refuses it if a newer generation or a stop
    /// has recorded a newer fence since. Idempotent by message id. Nothing is written
    /// unless the outcome is [`GenerationWrite::Committed`].
    ///
    /// # Cancel safety
    ///
    /// A dropped call either saved the reply or did not; it never saves half of it.
    pub async fn append_reply(
        &self,
        mut message: Message,
    ) -> Result<GenerationWrite, GenerationError> {
        let fence = self.fence();
        message.fence = Some(fence);
        if let Some(refused) = self.refusal() {
            return Ok(refused);
        }
        match self
            .manager
            .inner
            .context
            .sessions
            .append_scoped(&self.conversation, &self.scope, &message, fence)
            .await
        {
            Ok(appended) => Ok(GenerationWrite::Appended(appended)),
            Err(SessionError::StaleFence { fence, seen, .. }) => {
                self.count_dropped();
                Ok(GenerationWrite::Superseded { fence, seen })
            }
            Err(other) => Err(other.into()),
        }
    }

    /// `Stopped` or `LeaseLost` (counted as a dropped result) when the generation may not
    /// write any more, as this process knows; `None` when it may try.
    fn refusal(&self) -> Option<GenerationWrite> {
        let stopped_here = self
            .controller
            .signal()
            .reason()
            .is_some_and(|reason| *reason.root() == stop_reason());
        let lease_valid = self.lock.as_ref().is_some_and(LockGuard::is_valid);
        if stopped_here || (lease_valid && self.controller.is_aborted()) {
            self.count_dropped();
            return Some(GenerationWrite::Stopped);
        }
        if !lease_valid {
            self.count_dropped();
            return Some(GenerationWrite::LeaseLost);
        }
        None
    }

    /// Applies `update` to the conversation's session, fenced: refused, with nothing
    /// written, once the generation was stopped, lost its lease, or a newer fence was
    /// recorded in the session store. The fence travels with the write to the store, which
    /// checks it atomically with the write; the checks here only save a round trip.
    ///
    /// # Cancel safety
    ///
    /// As [`SessionManager::update_session`].
    pub async fn update(
        &self,
        update: impl FnMut(&mut SessionData) + Send,
    ) -> Result<GenerationWrite, GenerationError> {
        let fence = self.fence();
        if !self.scope.is_empty() {
            return Err(SessionError::Store {
                backend: "session",
                message: "in comparison mode (generations_per_conversation > 1) a generation writes with append_reply, which the store fences per permit; a whole-session update cannot be".into(),
                source: None,
            }
            .into());
        }
        if let Some(refused) = self.refusal() {
            return Ok(refused);
        }
        match self
            .manager
            .update_inner(&self.conversation, Some(fence), update)
            .await
        {
            Ok(saved) => Ok(GenerationWrite::Committed(saved)),
            Err(SessionError::StaleFence { fence, seen, .. }) => {
                self.count_dropped();
                Ok(GenerationWrite::Superseded { fence, seen })
            }
            Err(other) => Err(other.into()),
        }
    }

    fn count_dropped(&self) {
        let counters = &self.manager.inner.counters;
        count(
            &counters.stale_results_dropped,
            "conc_session_stale_results_dropped",
            1,
        );
    }

    /// Counts a lost lease once, when the generation ends.
    fn count_lost_lease(&self, lock: &LockGuard) {
        if lock.lost().is_aborted() {
            let counters = &self.manager.inner.counters;
            count(&counters.leases_lost, "conc_session_leases_lost", 1);
        }
    }

    /// The lease's fence, for every write the generation makes.
    pub fn fence(&self) -> u64 {
        self.lock.as_ref().map_or(0, LockGuard::fence)
    }

    /// The conversation.
    pub fn conversation(&self) -> &str {
        &self.conversation
    }

    /// Runs `commit` if the generation was neither stopped nor lost its lease; otherwise
    /// counts a dropped stale result and returns `None`.
    ///
    /// This check is local: it cannot stop a write that happens after it. For writes to the
    /// session use [`append_reply`](Self::append_reply) or [`update`](Self::update), whose
    /// fence the store checks with the write; for another resource, send
    /// [`fence`](Self::fence) with the write and have the resource check it.
    pub fn commit<R>(&self, commit: impl FnOnce() -> R) -> Option<R> {
        if let Some(lock) = &self.lock {
            lock.is_valid();
        }
        if self.controller.is_aborted() {
            self.count_dropped();
            return None;
        }
        Some(commit())
    }

    /// Ends the generation and releases the lock. `Ok(false)` if the lease had been lost.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future still releases the lock, best effort, or lets it expire.
    pub async fn finish(mut self) -> Result<bool, GenerationError> {
        self.unregister();
        match self.lock.take() {
            Some(lock) => {
                self.count_lost_lease(&lock);
                Ok(lock.release().await?)
            }
            None => Ok(false),
        }
    }

    fn unregister(&self) {
        let mut running = self.manager.inner.running.lock();
        if let Some(list) = running.get_mut(&self.conversation) {
            list.retain(|(id, _)| *id != self.id);
            if list.is_empty() {
                running.remove(&self.conversation);
            }
        }
    }
}

impl Drop for GenerationGuard {
    fn drop(&mut self) {
        self.unregister();
        if let Some(lock) = &self.lock {
            self.count_lost_lease(lock);
        }
        // The LockGuard's own drop releases the lease, best effort.
    }
}

impl fmt::Debug for GenerationGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GenerationGuard")
            .field("conversation", &self.conversation)
            .field("stopped", &self.controller.is_aborted())
            .finish()
    }
}
