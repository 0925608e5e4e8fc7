//! [`FairLock`]: waiters get a lock in the order they arrived, across processes, as with
//! Redisson's fair lock, on any [`LockStore`].
//!
//! A waiter takes a ticket and stands in a queue of leases, then takes the lock only when
//! it is at the head of the queue:
//!
//! - **Ticket.** It takes the queue's dispenser lock (`<key>#queue`); the dispenser's fence,
//!   which strictly increases, is its ticket. Holding the dispenser, it registers its place,
//!   a lease on `<key>#queue:<ticket, 20 digits>`, then releases the dispenser: places are
//!   registered in ticket order, so a place never appears behind a later one.
//! - **Waiting.** A [`LockGuard`] keeps the place alive (a short lease, renewed). The head
//!   of the queue is the first live place in key order ([`LockStore::list`] with limit 1).
//!   A waiter tries the lock only when the head is its own place; it wakes when the lock or
//!   the place ahead of it changes hands (the store's watches), or after a short backoff.
//! - **Leaving.** A waiter that gets the lock, gives up (its wait ran out) or is dropped
//!   releases its place at once; a waiter whose process died loses its place when its
//!   lease expires (`place_ttl`), so the queue never stalls behind it for longer.
//!
//! Fairness holds among [`FairLock`] users: a plain [`LockStore::try_acquire`] on the same
//! key does not queue, as with Redisson.

use std::sync::Arc;
use std::time::Duration;

use crate::error::LockError;
use crate::lease::Lease;
use crate::recipe::guard::LockGuard;
use crate::request::{LockRequest, MAX_KEY_BYTES, validate_key};
use crate::store::LockStore;

/// A lock whose waiters are served in arrival order, across processes, on any
/// [`LockStore`]: each waiter takes a ticket (the fence of a dispenser lock), stands in a
/// queue of renewed leases (`<key>#queue:<ticket>`), and takes the lock only at the head.
/// A waiter that gets the lock, gives up or is dropped leaves the queue at once; one whose
/// process died, when its place expires. Fairness holds among `FairLock` users: a plain
/// [`LockStore::try_acquire`] on the same key does not queue, as with Redisson.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use conc_lock_store::{FairLock, LockRequest, LockStore, MemoryLockStore};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), conc_lock_store::LockError> {
/// let store: Arc<dyn LockStore> = Arc::new(MemoryLockStore::new());
/// let fair = FairLock::new(store.clone());
/// let request = LockRequest::new("conversation:7", "worker-1", Duration::from_secs(30));
/// let lease = fair.acquire(&request, Duration::from_secs(5)).await?;
/// store.release(&lease).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct FairLock {
    store: Arc<dyn LockStore>,
    place_ttl: Duration,
}

/// The dispenser of tickets of the queue on `key`.
fn dispenser_key(key: &str) -> String {
    format!("{key}#queue")
}

/// The place in the queue on `key` of `ticket` (zero-padded, so key order is ticket order).
fn place_key(key: &str, ticket: u64) -> String {
    format!("{key}#queue:{ticket:020}")
}

impl FairLock {
    /// A fair lock on `store`, whose waiters' places expire 5 s after their process stops
    /// renewing them.
    pub fn new(store: Arc<dyn LockStore>) -> Self {
        Self {
            store,
            place_ttl: Duration::from_secs(5),
        }
    }

    /// The store it locks in.
    pub fn store(&self) -> &Arc<dyn LockStore> {
        &self.store
    }

    /// How long a place outlives a waiter whose process died (default 5 s): the queue waits
    /// at most this long behind it.
    pub fn with_place_ttl(mut self, ttl: Duration) -> Self {
        self.place_ttl = ttl;
        self
    }

    /// Waits up to `wait` for the lock named `request.key`, served in arrival order among
    /// the waiters of every process; [`LockError::Timeout`] after `wait`, leaving the queue.
    ///
    /// # Cancel safety
    ///
    /// A dropped call leaves the queue (its place is released, best effort, or expires
    /// after `place_ttl`) and leaves at most a lease nobody holds, which expires.
    pub async fn acquire(&self, request: &LockRequest, wait: Duration) -> Result<Lease, LockError> {
        validate_key(&request.key)?;
        if place_key(&request.key, u64::MAX).len() > MAX_KEY_BYTES {
            return Err(LockError::InvalidKey {
                reason: format!(
                    "a fair lock's queue places are named `<key>#queue:<20 digits>`, longer than {MAX_KEY_BYTES} bytes for this key (hash long names)"
                ),
            });
        }
        request.validate(self.store.max_ttl())?;
        let started = tokio::time::Instant::now();
        let place = self.stand_in_line(request, wait).await?;
        let mine = place.lease().key;
        let prefix = format!("{}#queue:", request.key);
        let mut lock_watch = self.store.watch(&request.key);
        let mut pause = Duration::from_millis(2);
        // What this waiter has announced it waits for (see `LockStore::announce_wait`):
        // the lock once it is first in line, and the place ahead of it.
        let mut announced_lock = false;
        let mut announced_ahead: Option<String> = None;
        loop {
            let head = self.store.list(&prefix, 1).await?;
            let ahead = head.first().map(|info| info.key.clone());
            if ahead.as_deref() == Some(mine.as_str())
                && let Some(lease) = self.store.try_acquire(request).await?
            {
                let _ = place.release().await;
                return Ok(lease);
            }
            let waited = started.elapsed();
            if waited >= wait {
                let _ = place.release().await;
                let holder = self.store.inspect(&request.key).await.ok().flatten();
                return Err(LockError::Timeout {
                    key: request.key.clone(),
                    waited,
                    holder: holder.map(Box::new),
                });
            }
            let remaining = wait - waited;
            if ahead.as_deref() == Some(mine.as_str()) {
                if lock_watch.is_some() && !announced_lock {
                    announced_lock = true;
                    if !crate::store::announce(&*self.store, &request.key, remaining).await {
                        continue;
                    }
                }
            } else if let Some(key) = ahead.as_ref()
                && announced_ahead.as_ref() != Some(key)
            {
                announced_ahead = Some(key.clone());
                if !crate::store::announce(&*self.store, key, remaining).await {
                    continue;
                }
            }
            let mut ahead_watch = ahead
                .filter(|key| *key != mine)
                .and_then(|key| self.store.watch(&key));
            let sleep = tokio::time::sleep(pause.min(wait - waited));
            tokio::select! {
                () = sleep => {}
                () = async {
                    match lock_watch.as_mut() {
                        Some(watch) => watch.changed().await,
                        None => std::future::pending().await,
                    }
                } => {}
                () = async {
                    match ahead_watch.as_mut() {
                        Some(watch) => watch.changed().await,
                        None => std::future::pending().await,
                    }
                } => {}
            }
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }

    /// Takes a ticket and registers the place for it, under the dispenser.
    async fn stand_in_line(
        &self,
        request: &LockRequest,
        wait: Duration,
    ) -> Result<LockGuard, LockError> {
        let dispenser = LockRequest::new(
            dispenser_key(&request.key),
            request.owner.clone(),
            self.place_ttl,
        );
        let ticket = self.store.acquire(&dispenser, wait).await?;
        let place = LockRequest::new(
            place_key(&request.key, ticket.fence),
            request.owner.clone(),
            self.place_ttl,
        );
        let registered = self.store.try_acquire(&place).await;
        let _ = self.store.release(&ticket).await;
        match registered? {
            Some(lease) => Ok(LockGuard::from_lease(self.store.clone(), lease)),
            // A fence is never drawn twice, so the place is new; a store that says
            // otherwise is broken.
            None => Err(LockError::Backend {
                backend: "fair lock",
                message: format!("the queue place {} was already taken", place.key),
                source: None,
            }),
        }
    }
}
