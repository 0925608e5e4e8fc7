//! The [`LockStore`] trait, every backend's contract, with its default methods: the
//! waiting `acquire` loop (notified through [`watch`](LockStore::watch), with a jittered
//! backoff that covers expiry) and the announcement of a wait.

use std::fmt;
use std::time::Duration;

use crate::error::LockError;
use crate::lease::{Lease, LockInfo};
use crate::notify::LockWatch;
use crate::request::LockRequest;
use crate::util::random;

/// A store of leased, fenced named locks.
///
/// Every method is cancel safe in the sense that matters for locks: a dropped call never
/// leaves a lock held past its TTL. A dropped `try_acquire` may still take the lock on the
/// backend; nobody holds its lease, so the lock expires after the request's TTL (the
/// backends of this crate also release it by its token in the background).
///
/// # Reading and implementing it
///
/// The trait is written with [`async_trait`](https://docs.rs/async-trait), so that
/// `Arc<dyn LockStore>` works: rustdoc shows each async method as a plain `fn` returning
/// `Pin<Box<dyn Future<Output = …> + Send + 'async_trait>>`. Read
/// `fn try_acquire<'life0, 'life1, 'async_trait>(&'life0 self, request: &'life1 LockRequest)
/// -> Pin<Box<…Result<Option<Lease>, LockError>…>>` as
/// `async fn try_acquire(&self, request: &LockRequest) -> Result<Option<Lease>, LockError>`,
/// and call it so: `store.try_acquire(&request).await`. To implement the trait for a store
/// of your own, put `#[async_trait::async_trait]` on the `impl LockStore for …` block and
/// write the methods as `async fn`s; the methods with a default (`acquire`, `renew_many`,
/// `watch`, `announce_wait`, `is_locked`, …) may be left out. Check it with the
/// `conformance` suite (feature `conformance`), which every backend of this crate passes.
#[async_trait::async_trait]
pub trait LockStore: Send + Sync + fmt::Debug {
    /// Takes the lock if it is free or its lease has expired; `Ok(None)` if someone holds
    /// it.
    ///
    /// # Cancel safety
    ///
    /// See the trait: a dropped call leaves at most a lease nobody holds, which expires.
    async fn try_acquire(&self, request: &LockRequest) -> Result<Option<Lease>, LockError>;

    /// Releases the lock if `lease` still holds it. `Ok(false)` when the lease was already
    /// lost (expired, taken over or released): it never frees a lock someone else holds.
    ///
    /// # Cancel safety
    ///
    /// A dropped call may or may not have released; the lease expires either way.
    async fn release(&self, lease: &Lease) -> Result<bool, LockError>;

    /// Extends the lease to `ttl` from now; [`LockError::Lost`] once it expired or was
    /// taken.
    ///
    /// # Cancel safety
    ///
    /// A dropped call may or may not have renewed; the lease keeps its old or new expiry.
    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Lease, LockError>;

    /// Renews each of `leases` for its own TTL ([`Lease::ttl`]) in as few round trips as
    /// the backend allows: one statement on PostgreSQL, one pipeline on one Redis server
    /// (on a cluster, the requests of each node go out together on its connection), one
    /// transaction on SQLite. The results come in the order of `leases`, each as
    /// [`renew`](Self::renew) would give it. Every [`LockGuard`](crate::LockGuard) of a process renews
    /// through this, batched with the other guards on the same store.
    ///
    /// # Cancel safety
    ///
    /// As [`renew`](Self::renew): a dropped call may have renewed some of the leases.
    async fn renew_many(&self, leases: &[Lease]) -> Vec<Result<Lease, LockError>> {
        let mut out = Vec::with_capacity(leases.len());
        for lease in leases {
            out.push(self.renew(lease, lease.ttl).await);
        }
        out
    }
    /// Whether [`renew_many`](Self::renew_many) sends a whole batch as one request (one
    /// statement, pipeline or transaction), so that [`LockGuard`](crate::LockGuard)s gain by renewing
    /// together. `false` by default (the default `renew_many` renews one lease after the
    /// other), and for a store whose batch fans out to several servers (a Redis Cluster),
    /// where one slow server would hold back every guard's answer: guards then renew
    /// each on its own request.
    fn batches_renewals(&self) -> bool {
        false
    }

    /// The step in which this store counts a lease's time: a lease holds its key for at
    /// least its TTL rounded up to a whole number of steps, and may hold it up to one more
    /// step before it frees. 1 ms by default; 1 s on etcd, whose leases count whole
    /// seconds. The holder stops at its own TTL either way ([`LockGuard`](crate::LockGuard)
    /// measures it locally): a coarse step only makes others wait longer for a holder that
    /// died.
    fn lease_resolution(&self) -> Duration {
        Duration::from_millis(1)
    }

    /// Whether the store deletes a lease by itself when it expires (etcd), so that
    /// [`cleanup_expired`](Self::cleanup_expired) never finds one to remove. `false` by
    /// default.
    fn removes_expired_leases(&self) -> bool {
        false
    }
    /// The live lease on `key`, if any.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads.
    async fn inspect(&self, key: &str) -> Result<Option<LockInfo>, LockError>;

    /// Live leases whose key starts with `prefix`, in key order, at most `limit`.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads.
    async fn list(&self, prefix: &str, limit: usize) -> Result<Vec<LockInfo>, LockError>;

    /// Removes expired leases; returns how many it removed.
    ///
    /// # Cancel safety
    ///
    /// A dropped call may have removed some; expired leases are dead either way.
    async fn cleanup_expired(&self) -> Result<u64, LockError>;

    /// Frees `key` whoever holds it (for operators: `conc locks release KEY --force`).
    /// Returns whether a live lease was removed. Its holder learns at once, through
    /// [`watch`](Self::watch).
    ///
    /// # Cancel safety
    ///
    /// A dropped call may or may not have released.
    async fn force_release(&self, key: &str) -> Result<bool, LockError>;

    /// Removes what this store keeps, for a namespace that is done with (a test, a trial,
    /// a retired service): every lease, and what the backend keeps besides (on Redis, every
    /// key under the store's prefix, the restart guard's marker included). Refuses
    /// ([`LockError::Unsafe`]) while a lease is live, unless `force`, which frees live
    /// leases too (their holders learn through [`watch`](Self::watch), and fences stay
    /// forward: they are drawn from the store's clock and its floors). Returns how many
    /// records it removed.
    ///
    /// The default frees every live lease (with `force`) and removes expired ones
    /// ([`cleanup_expired`](Self::cleanup_expired)).
    ///
    /// # Cancel safety
    ///
    /// A dropped call may have removed part of it; run it again.
    async fn purge(&self, force: bool) -> Result<u64, LockError> {
        let mut removed = 0;
        loop {
            let live = self.list("", 1000).await?;
            if live.is_empty() {
                break;
            }
            if !force {
                return Err(live_leases(live.len()));
            }
            for info in &live {
                removed += u64::from(self.force_release(&info.key).await?);
            }
        }
        Ok(removed + self.cleanup_expired().await?)
    }

    /// Takes the lock whoever holds it, with a new fence: the previous holder's lease is
    /// lost (its renewals fail, its release returns `false`). For operators and for
    /// stopping a holder in another process without letting a third party in meanwhile.
    ///
    /// # Cancel safety
    ///
    /// A dropped call may or may not have taken the lock; a lease nobody holds expires.
    async fn take_over(&self, request: &LockRequest) -> Result<Lease, LockError>;

    /// The longest TTL this store accepts.
    fn max_ttl(&self) -> Duration;

    /// A watch that wakes when `key` may have changed hands in any process sharing the
    /// store: a release, a take-over, a forced release. Every backend of this crate has
    /// one (memory in-process, Redis by pub/sub, PostgreSQL by LISTEN/NOTIFY, SQLite by a
    /// short check of the file's data version); `None` means the store cannot tell, and
    /// callers fall back to polling.
    ///
    /// A store may tell other processes of a release only when one of them has announced
    /// that it waits for the key ([`announce_wait`](Self::announce_wait)): PostgreSQL and
    /// Redis do, so that a release nobody waits for sends no notification. Take-overs and
    /// forced releases always wake the watchers, and so does a release made through this
    /// same store value. A caller that waits on a watch for another process's release calls
    /// `announce_wait` first, as [`acquire`](Self::acquire), [`FairLock`](crate::FairLock) and
    /// [`Semaphore`](crate::Semaphore) do.
    fn watch(&self, key: &str) -> Option<LockWatch> {
        let _ = key;
        None
    }

    /// Announces that this process waits up to `wait` for `key`, so that a release of it
    /// in any process wakes this process's [`watch`](Self::watch)es. Returns whether `key`
    /// is still held: `false` means it was released (or expired) before the announcement
    /// was recorded, so its notification may have gone out before anyone asked for it:
    /// try again at once rather than wait for it.
    ///
    /// The default, for stores that tell every release, records nothing and returns
    /// `Ok(true)`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use conc_lock_store::{LockRequest, LockStore, MemoryLockStore};
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let store = MemoryLockStore::new();
    /// let lease = store
    ///     .try_acquire(&LockRequest::new("conv:1", "a", Duration::from_secs(30)))
    ///     .await?
    ///     .expect("free");
    /// let mut watch = store.watch("conv:1").expect("the memory store watches");
    /// if store.announce_wait("conv:1", Duration::from_secs(5)).await? {
    ///     // Still held: a release will wake the watch.
    ///     store.release(&lease).await?;
    ///     watch.changed().await;
    /// }
    /// # Ok::<(), conc_lock_store::LockError>(())
    /// # }).unwrap();
    /// ```
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a dropped call may leave the wait recorded, which only costs a
    /// notification per release of `key` until `wait` has passed.
    async fn announce_wait(&self, key: &str, wait: Duration) -> Result<bool, LockError> {
        let _ = (key, wait);
        Ok(true)
    }

    /// Whether `key` has a live lease.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads.
    async fn is_locked(&self, key: &str) -> Result<bool, LockError> {
        Ok(self.inspect(key).await?.is_some())
    }

    /// Waits up to `wait` for the lock (queue mode): it tries again when the store reports
    /// a release, a take-over or a forced release of `key` (see [`watch`](Self::watch)),
    /// and otherwise after a jittered backoff of up to 100 ms, which covers expiry; then it
    /// fails with [`LockError::Timeout`] naming the holder.
    ///
    /// Every request it sends is bounded by the wait as well as by the store's request
    /// timeout (it sets the request's [`deadline`](LockRequest::deadline)), so it returns
    /// within `wait` plus about one round trip even when the store does not answer. A
    /// grant whose answer came too late to use ([`LockError::LateReply`]) is tried again
    /// while the wait lasts.
    ///
    /// # Cancel safety
    ///
    /// As [`try_acquire`](Self::try_acquire).
    async fn acquire(&self, request: &LockRequest, wait: Duration) -> Result<Lease, LockError> {
        request.validate(self.max_ttl())?;
        let started = tokio::time::Instant::now();
        // Every request of every try is answered by the end of the wait (and a round
        // trip's grace, so the last try can be answered), or given up.
        let end = started + wait + LAST_TRY_GRACE;
        let bounded;
        let request = match request.deadline {
            Some(deadline) if deadline <= end => request,
            _ => {
                bounded = request.clone().with_deadline(end);
                &bounded
            }
        };
        let mut pause = Duration::from_millis(2);
        let mut watch = self.watch(&request.key);
        let mut announced = false;
        let mut answered = false;
        loop {
            match self.try_acquire(request).await {
                Ok(Some(lease)) => return Ok(lease),
                Ok(None) => answered = true,
                // Granted, but answered too late to use (and being released): try again
                // while the wait lasts.
                Err(error @ LockError::LateReply { .. }) => {
                    if started.elapsed() >= wait {
                        return Err(error);
                    }
                    answered = true;
                    tracing::debug!(%error, "a grant came back too late to use; trying again");
                    continue;
                }
                // The store answered before; its last try ran out with the wait: a wait
                // for a held key that timed out.
                Err(error) if answered && error.is_transient() && started.elapsed() >= wait => {
                    tracing::debug!(%error, "the last try of a wait went unanswered");
                }
                Err(error) => return Err(error),
            }
            let waited = started.elapsed();
            if watch.is_some() && !announced && waited < wait {
                announced = true;
                if !announce(self, &request.key, wait - waited).await {
                    continue;
                }
            }
            if waited >= wait {
                // Who holds it, if the store says so within a round trip's grace: the
                // wait is over, and a store that does not answer must not stretch it.
                let holder = tokio::time::timeout(HOLDER_LOOKUP, self.inspect(&request.key))
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .flatten();
                return Err(LockError::Timeout {
                    key: request.key.clone(),
                    waited,
                    holder: holder.map(Box::new),
                });
            }
            // Full jitter over a pause that doubles up to 100 ms, never past the deadline.
            let jittered = pause.mul_f64(random::unit());
            let pause_for = jittered.max(Duration::from_millis(1)).min(wait - waited);
            match watch.as_mut() {
                Some(watch) => {
                    tokio::select! {
                        () = tokio::time::sleep(pause_for) => {}
                        () = watch.changed() => {}
                    }
                }
                None => tokio::time::sleep(pause_for).await,
            }
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }
}

/// [`LockStore::purge`]'s refusal while `count` leases (or more) are live.
pub(crate) fn live_leases(count: usize) -> LockError {
    LockError::Unsafe {
        backend: "lock store",
        reason: format!(
            "{count} lease(s) are live; purging would free locks their holders still use: stop the holders (`conc locks list` shows them), or purge with force"
        ),
    }
}

/// How long past its wait the last try of a [`LockStore::acquire`] may wait for its answer.
const LAST_TRY_GRACE: Duration = Duration::from_millis(250);

/// How long a timed-out [`LockStore::acquire`] waits to learn who holds the key.
const HOLDER_LOOKUP: Duration = Duration::from_millis(500);

/// [`LockStore::announce_wait`] for a waiting loop: whether the key is still held. A failed
/// announcement is logged and treated as "held": the waiter then relies on its backoff,
/// which covers a release it is not told of.
pub(crate) async fn announce<S: LockStore + ?Sized>(store: &S, key: &str, wait: Duration) -> bool {
    match store.announce_wait(key, wait).await {
        Ok(held) => held,
        Err(error) => {
            tracing::debug!(%error, key, "announcing a wait failed; polling instead");
            true
        }
    }
}
