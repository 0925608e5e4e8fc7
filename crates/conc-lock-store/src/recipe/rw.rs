//! [`RwLock`]: many readers or one writer, on any [`LockStore`].
//!
//! A reader-writer lock named `name` is two things in the store: the writer's lock,
//! `<name>#writer`, and the readers' permits, a [`Semaphore`] of `max_readers` on
//! `<name>#readers` (so `<name>#readers#permit:<n>`). Every holder has a lease of its own,
//! with its own fence, renewed like any lease.
//!
//! - A reader takes a permit, then looks at the writer's lock: if it is held, the reader
//!   gives its permit back and waits.
//! - A writer takes the writer's lock (so writers queue among themselves as on a lock),
//!   then waits until no reader holds a permit.
//!
//! So a reader and a writer never both proceed: the reader's look at the writer's lock
//! comes after its permit was taken, and the writer's look at the permits after its lock
//! was taken; whichever looked second sees the other. The policy is **writer first**: a
//! writer that waits already holds the writer's lock, and new readers back off from it, so
//! a stream of readers cannot starve a writer (readers can wait behind a stream of writers).
//! A take-over or forced release of the writer's lock or of a permit reaches its holder as
//! for any lock; [`RwLock::force_release`] frees them all.

use std::sync::Arc;
use std::time::Duration;

use crate::error::LockError;
use crate::lease::{Lease, LockInfo};
use crate::recipe::semaphore::Semaphore;
use crate::request::{LockRequest, validate_key};
use crate::store::LockStore;

/// A reader-writer lock on a [`LockStore`]: many readers or one writer, writer first.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use conc_lock_store::{LockRequest, LockStore, MemoryLockStore, RwLock};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), conc_lock_store::LockError> {
/// let store: Arc<dyn LockStore> = Arc::new(MemoryLockStore::new());
/// let lock = RwLock::new(store.clone(), 64)?;
/// let ttl = Duration::from_secs(30);
/// let a = lock.try_read(&LockRequest::new("catalog", "reader-a", ttl)).await?.expect("free");
/// let b = lock.try_read(&LockRequest::new("catalog", "reader-b", ttl)).await?.expect("shared");
/// assert!(lock.try_write(&LockRequest::new("catalog", "writer", ttl)).await?.is_none());
/// lock.release(&a).await?;
/// lock.release(&b).await?;
/// let w = lock.try_write(&LockRequest::new("catalog", "writer", ttl)).await?.expect("no readers left");
/// lock.release(&w).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct RwLock {
    store: Arc<dyn LockStore>,
    readers: Semaphore,
}

/// The key of the writer's lock of the reader-writer lock `name`: `<name>#writer`.
pub fn writer_key(name: &str) -> String {
    format!("{name}#writer")
}

/// The name of the readers' semaphore of the reader-writer lock `name`: `<name>#readers`.
fn readers_name(name: &str) -> String {
    format!("{name}#readers")
}

impl RwLock {
    /// A reader-writer lock on `store` admitting up to `max_readers` readers at once (1 to
    /// [`MAX_PERMITS`](crate::MAX_PERMITS)). Every handle on one name must use the same
    /// `max_readers`.
    pub fn new(store: Arc<dyn LockStore>, max_readers: u32) -> Result<Self, LockError> {
        let readers = Semaphore::new(store.clone(), max_readers)?;
        Ok(Self { store, readers })
    }

    /// The store it lives in.
    pub fn store(&self) -> &Arc<dyn LockStore> {
        &self.store
    }

    /// Checks the name: a valid key, short enough for the readers' permit keys
    /// (`<name>#readers#permit:<n>`, the longest of its keys).
    fn validate(&self, name: &str) -> Result<(), LockError> {
        validate_key(name)?;
        self.readers.validate(&readers_name(name))
    }

    /// Takes a read lease on `request.key` now: `Ok(None)` while a writer holds or waits
    /// for the lock, or when `max_readers` read. The lease's key names the reader's permit.
    ///
    /// # Cancel safety
    ///
    /// A dropped call may leave a permit nobody holds, which expires after its TTL.
    pub async fn try_read(&self, request: &LockRequest) -> Result<Option<Lease>, LockError> {
        self.validate(&request.key)?;
        let writer = writer_key(&request.key);
        if self.store.is_locked(&writer).await? {
            return Ok(None);
        }
        let permit = LockRequest {
            key: readers_name(&request.key),
            ..request.clone()
        };
        let Some(lease) = self.readers.try_acquire(&permit).await? else {
            return Ok(None);
        };
        // The permit is taken: a writer that took its lock before this look is seen here,
        // and one that takes it after sees this permit.
        if self.store.is_locked(&writer).await? {
            self.store.release(&lease).await?;
            return Ok(None);
        }
        Ok(Some(lease))
    }

    /// Takes a write lease on `request.key` now: `Ok(None)` while another writer holds it
    /// or any reader does (the writer's lock is given back then).
    ///
    /// # Cancel safety
    ///
    /// A dropped call may leave the writer's lock held by nobody until its TTL expires.
    pub async fn try_write(&self, request: &LockRequest) -> Result<Option<Lease>, LockError> {
        self.validate(&request.key)?;
        let writer = LockRequest {
            key: writer_key(&request.key),
            ..request.clone()
        };
        let Some(lease) = self.store.try_acquire(&writer).await? else {
            return Ok(None);
        };
        if !self
            .readers
            .holders(&readers_name(&request.key))
            .await?
            .is_empty()
        {
            self.store.release(&lease).await?;
            return Ok(None);
        }
        Ok(Some(lease))
    }

    /// Waits up to `wait` for a read lease: it tries again whenever the writer's lock or a
    /// permit changes hands (the store's watches), and otherwise after a backoff of up to
    /// 100 ms; then [`LockError::Timeout`] naming the writer, if one holds the lock.
    ///
    /// # Cancel safety
    ///
    /// As [`try_read`](Self::try_read).
    pub async fn read(&self, request: &LockRequest, wait: Duration) -> Result<Lease, LockError> {
        self.validate(&request.key)?;
        let writer = writer_key(&request.key);
        let mut watch = self.store.watch(&writer);
        let started = tokio::time::Instant::now();
        let mut pause = Duration::from_millis(2);
        loop {
            if let Some(lease) = self.try_read(request).await? {
                return Ok(lease);
            }
            let waited = started.elapsed();
            if waited >= wait {
                return Err(LockError::Timeout {
                    key: request.key.clone(),
                    waited,
                    holder: self.store.inspect(&writer).await?.map(Box::new),
                });
            }
            if watch.is_some()
                && !crate::store::announce(&*self.store, &writer, wait - waited).await
            {
                // No writer now: it was the readers' limit, or the writer just left; try
                // again soon.
                pause = Duration::from_millis(2);
            }
            pause = backoff(&mut watch, pause, wait - waited).await;
        }
    }

    /// Waits up to `wait` for the write lease: first the writer's lock (queued behind
    /// other writers, notified), then until every reader has gone (new readers back off
    /// meanwhile). The writer's lock is renewed while it waits for readers. On a timeout
    /// the writer's lock is given back and [`LockError::Timeout`] names the holder it
    /// waited for.
    ///
    /// # Cancel safety
    ///
    /// A dropped call may leave the writer's lock held by nobody until its TTL expires,
    /// holding readers off until then.
    pub async fn write(&self, request: &LockRequest, wait: Duration) -> Result<Lease, LockError> {
        self.validate(&request.key)?;
        let started = tokio::time::Instant::now();
        let writer = LockRequest {
            key: writer_key(&request.key),
            ..request.clone()
        };
        let mut lease = self.store.acquire(&writer, wait).await?;
        let mut renewed_at = tokio::time::Instant::now();
        let readers = readers_name(&request.key);
        let mut pause = Duration::from_millis(2);
        loop {
            let holders = self.readers.holders(&readers).await?;
            let Some(first) = holders.first() else {
                return Ok(lease);
            };
            let waited = started.elapsed();
            if waited >= wait {
                let holder = Box::new(first.clone());
                self.store.release(&lease).await?;
                return Err(LockError::Timeout {
                    key: request.key.clone(),
                    waited,
                    holder: Some(holder),
                });
            }
            if renewed_at.elapsed() >= lease.ttl / 3 {
                lease = self.store.renew(&lease, lease.ttl).await?;
                renewed_at = tokio::time::Instant::now();
            }
            let mut watch = self.watch_any(&holders).await;
            pause = backoff(&mut watch, pause, (wait - waited).min(lease.ttl / 3)).await;
        }
    }

    /// One watch that fires when any of `holders` changes hands: the first's (a reader's
    /// release announces itself to the writer through it).
    async fn watch_any(&self, holders: &[LockInfo]) -> Option<crate::notify::LockWatch> {
        let first = holders.first()?;
        let watch = self.store.watch(&first.key)?;
        crate::store::announce(
            &*self.store,
            &first.key,
            first
                .expires_at
                .duration_since(std::time::SystemTime::now())
                .unwrap_or_default(),
        )
        .await;
        Some(watch)
    }

    /// Releases a read or write lease; `Ok(false)` if it was no longer held.
    ///
    /// # Cancel safety
    ///
    /// As [`LockStore::release`].
    pub async fn release(&self, lease: &Lease) -> Result<bool, LockError> {
        self.store.release(lease).await
    }

    /// The live readers of `name`.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads.
    pub async fn readers(&self, name: &str) -> Result<Vec<LockInfo>, LockError> {
        self.validate(name)?;
        self.readers.holders(&readers_name(name)).await
    }

    /// The writer of `name`, holding or waiting for the readers to go.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads.
    pub async fn writer(&self, name: &str) -> Result<Option<LockInfo>, LockError> {
        self.validate(name)?;
        self.store.inspect(&writer_key(name)).await
    }

    /// Frees `name` whoever holds it (an operator's tool): the writer's lock and every
    /// reader's permit are released by force, and each holder learns it at once. Returns
    /// how many leases were freed.
    ///
    /// # Cancel safety
    ///
    /// A dropped call may have freed some of them.
    pub async fn force_release(&self, name: &str) -> Result<u64, LockError> {
        self.validate(name)?;
        let mut freed = u64::from(self.store.force_release(&writer_key(name)).await?);
        for reader in self.readers(name).await? {
            freed += u64::from(self.store.force_release(&reader.key).await?);
        }
        Ok(freed)
    }
}

/// Waits for `watch` to fire or a jittered `pause` (at most `cap`), and returns the next
/// pause (doubled, up to 100 ms).
async fn backoff(
    watch: &mut Option<crate::notify::LockWatch>,
    pause: Duration,
    cap: Duration,
) -> Duration {
    let sleep = tokio::time::sleep(
        pause
            .mul_f64(crate::util::random::unit())
            .max(Duration::from_millis(1))
            .min(cap.max(Duration::from_millis(1))),
    );
    match watch {
        Some(watch) => {
            tokio::select! {
                () = sleep => {}
                () = watch.changed() => {}
            }
        }
        None => sleep.await,
    }
    (pause * 2).min(Duration::from_millis(100))
}
