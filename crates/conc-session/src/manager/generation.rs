//! The generation lock: one generation per conversation (or N side by side, in
//! comparison mode) across every process that shares the lock store, fenced end to end
//! ([`SessionManager::start_generation`], [`SessionManager::stop_generation`],
//! [`GenerationGuard`]).

use super::*;

impl SessionManager {
    fn lock_key(&self, conversation: &str) -> String {
        format!("{}{conversation}", self.inner.context.config.lock_prefix)
    }

    /// Starts a generation in `conversation` for `user`'s message `message_id`:
    /// one at a time per conversation, across every process that shares the lock store.
    /// A stop that lands as it starts makes it fail with an error whose
    /// [`is_superseded`](GenerationError::is_superseded) is true.
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
