//! [`Semaphore`]: up to N holders of one name at once, each with a lease and a fence of its
//! own, on any [`LockStore`].
//!
//! A semaphore of N permits on `key` is N locks, `<key>#permit:0` to `<key>#permit:<N-1>`,
//! as the SQL Server semaphore of madelson's DistributedLock is N application locks. Taking
//! a permit takes the first free one of them, starting at a random one so that takers
//! spread out. So every guarantee of a lock holds for each permit, on every backend and
//! under every fault the lock survives: a permit is leased (renew it, or let a
//! [`LockGuard`] do it), it has its own fence, which strictly increases per permit, a
//! take-over or forced release of a permit reaches its holder at once, and never more than
//! N holders are live. The fences of different permits are not ordered with each other:
//! a resource that N holders write at once checks each holder's fence against that
//! permit's own last one ([`Lease::key`] names the permit).

use std::sync::Arc;
use std::time::Duration;

use crate::error::LockError;
use crate::lease::{Lease, LockInfo};
use crate::recipe::guard::LockGuard;
use crate::request::{LockRequest, MAX_KEY_BYTES, validate_key};
use crate::store::LockStore;

/// The most permits a semaphore may have.
pub const MAX_PERMITS: u32 = 1024;

/// A semaphore of `permits` on a [`LockStore`]: N permits on a name are N locks,
/// `<key>#permit:0` to `<key>#permit:<N-1>`; every guarantee of a lock holds for each
/// permit (a lease, a fence of its own, take-over, watch), on every backend.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use conc_lock_store::{LockRequest, LockStore, MemoryLockStore, Semaphore};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), conc_lock_store::LockError> {
/// let store: Arc<dyn LockStore> = Arc::new(MemoryLockStore::new());
/// // Two generations of one conversation may run at once (comparison mode).
/// let semaphore = Semaphore::new(store.clone(), 2)?;
/// let ttl = Duration::from_secs(30);
/// let a = semaphore.try_acquire(&LockRequest::new("conversation:7", "a", ttl)).await?.unwrap();
/// let b = semaphore.try_acquire(&LockRequest::new("conversation:7", "b", ttl)).await?.unwrap();
/// assert_ne!(a.key, b.key); // two permits, two leases, two fences
/// assert!(semaphore.try_acquire(&LockRequest::new("conversation:7", "c", ttl)).await?.is_none());
/// store.release(&a).await?;
/// assert!(semaphore.try_acquire(&LockRequest::new("conversation:7", "c", ttl)).await?.is_some());
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Semaphore {
    store: Arc<dyn LockStore>,
    permits: u32,
}

/// The key of permit `permit` of the semaphore on `key`: `<key>#permit:<permit>`.
pub fn permit_key(key: &str, permit: u32) -> String {
    format!("{key}#permit:{permit}")
}

impl Semaphore {
    /// A semaphore of `permits` (1 to [`MAX_PERMITS`]) on `store`. Every semaphore on one
    /// name must use the same number of permits.
    pub fn new(store: Arc<dyn LockStore>, permits: u32) -> Result<Self, LockError> {
        if permits == 0 || permits > MAX_PERMITS {
            return Err(LockError::InvalidPermits {
                permits,
                max: MAX_PERMITS,
            });
        }
        Ok(Self { store, permits })
    }

    /// How many holders it admits at once.
    pub fn permits(&self) -> u32 {
        self.permits
    }

    /// The store it takes its permits in.
    pub fn store(&self) -> &Arc<dyn LockStore> {
        &self.store
    }

    /// Checks the semaphore's name: a valid key, short enough for its permits' keys.
    pub(crate) fn validate(&self, key: &str) -> Result<(), LockError> {
        validate_key(key)?;
        let longest = permit_key(key, self.permits - 1);
        if longest.len() > MAX_KEY_BYTES {
            return Err(LockError::InvalidKey {
                reason: format!(
                    "a semaphore's permits are named `<key>#permit:<n>`, and `{}…` is longer than {MAX_KEY_BYTES} bytes (hash long names)",
                    &key[..key.len().min(32)]
                ),
            });
        }
        Ok(())
    }

    /// Takes a free permit of the semaphore named `request.key`, with the request's owner,
    /// TTL and metadata; `Ok(None)` when all are held. The lease's key names the permit
    /// ([`permit_key`]); release, renew or guard it as any lease.
    ///
    /// # Cancel safety
    ///
    /// As [`LockStore::try_acquire`]: a dropped call leaves at most a permit nobody holds,
    /// which expires after its TTL.
    pub async fn try_acquire(&self, request: &LockRequest) -> Result<Option<Lease>, LockError> {
        self.validate(&request.key)?;
        request.validate(self.store.max_ttl())?;
        let start = crate::util::random::below(u64::from(self.permits)) as u32;
        for step in 0..self.permits {
            let permit = (start + step) % self.permits;
            let slot = LockRequest {
                key: permit_key(&request.key, permit),
                ..request.clone()
            };
            if let Some(lease) = self.store.try_acquire(&slot).await? {
                return Ok(Some(lease));
            }
        }
        Ok(None)
    }

    /// Waits up to `wait` for a permit: it tries again when any permit is released, taken
    /// over or force-released (the store's watches), and otherwise after a backoff of up to
    /// 100 ms, which covers expiry; then [`LockError::Timeout`].
    ///
    /// # Cancel safety
    ///
    /// As [`try_acquire`](Self::try_acquire).
    pub async fn acquire(&self, request: &LockRequest, wait: Duration) -> Result<Lease, LockError> {
        self.validate(&request.key)?;
        let started = tokio::time::Instant::now();
        let mut watches: Vec<_> = (0..self.permits)
            .filter_map(|permit| self.store.watch(&permit_key(&request.key, permit)))
            .collect();
        let mut pause = Duration::from_millis(2);
        let mut announced = false;
        loop {
            if let Some(lease) = self.try_acquire(request).await? {
                return Ok(lease);
            }
            let waited = started.elapsed();
            if waited >= wait {
                return Err(LockError::Timeout {
                    key: request.key.clone(),
                    waited,
                    holder: None,
                });
            }
            if !watches.is_empty() && !announced {
                // Every permit was taken: ask to be told when any is released.
                announced = true;
                let keys: Vec<String> = (0..self.permits)
                    .map(|permit| permit_key(&request.key, permit))
                    .collect();
                let held = futures_util::future::join_all(
                    keys.iter()
                        .map(|key| crate::store::announce(&*self.store, key, wait - waited)),
                )
                .await;
                if !held.into_iter().all(|held| held) {
                    continue;
                }
            }
            let jitter = crate::util::random::unit();
            let sleep = tokio::time::sleep(
                pause
                    .mul_f64(jitter)
                    .max(Duration::from_millis(1))
                    .min(wait - waited),
            );
            if watches.is_empty() {
                sleep.await;
            } else {
                let changed = futures_util::future::select_all(
                    watches.iter_mut().map(|watch| Box::pin(watch.changed())),
                );
                tokio::select! {
                    () = sleep => {}
                    _ = changed => {}
                }
            }
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }

    /// As [`acquire`](Self::acquire), then guards the permit: renewed in the background,
    /// with [`LockGuard::lost`] and [`LockGuard::fence`] for the permit.
    ///
    /// # Cancel safety
    ///
    /// As [`acquire`](Self::acquire).
    pub async fn acquire_guard(
        &self,
        request: LockRequest,
        wait: Duration,
    ) -> Result<LockGuard, LockError> {
        let margin = request
            .drift_margin
            .unwrap_or_else(|| crate::lease::default_drift_margin(request.ttl));
        let lease = self.acquire(&request, wait).await?;
        Ok(LockGuard::with_margin(self.store.clone(), lease, margin))
    }

    /// The live holders of the semaphore named `key`, one per held permit.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads.
    pub async fn holders(&self, key: &str) -> Result<Vec<LockInfo>, LockError> {
        self.validate(key)?;
        let prefix = format!("{key}#permit:");
        let listed = self.store.list(&prefix, self.permits as usize).await?;
        // Only this semaphore's permits (not `<key>#permit:<n>…` of a longer name).
        Ok(listed
            .into_iter()
            .filter(|info| {
                info.key[prefix.len()..]
                    .parse::<u32>()
                    .is_ok_and(|n| n < self.permits)
            })
            .collect())
    }
}
