//! [`MultiLock`]: several locks taken all or none, on any [`LockStore`].
//!
//! The keys are taken one by one in one canonical order (sorted, duplicates dropped), as
//! Redisson's `RedissonMultiLock` and Curator's `InterProcessMultiLock` do: two callers
//! whose sets overlap take their common keys in the same order, so neither can hold one
//! while waiting for one the other holds, and they cannot deadlock. When a key cannot be
//! taken (held, the wait ran out, or the store failed), the keys already taken are
//! released before the call returns, so a failure never leaves part of the set held. Each
//! key keeps its own lease and fence: a resource that guards one key checks that key's.

use std::sync::Arc;
use std::time::Duration;

use crate::error::LockError;
use crate::lease::Lease;
use crate::recipe::guard::LockGuard;
use crate::request::{LockRequest, validate_key};
use crate::store::LockStore;

/// Several locks of one store, taken all or none in a canonical order.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use conc_lock_store::{LockRequest, LockStore, MemoryLockStore, MultiLock};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), conc_lock_store::LockError> {
/// let store: Arc<dyn LockStore> = Arc::new(MemoryLockStore::new());
/// let multi = MultiLock::new(store.clone());
/// let template = LockRequest::new("", "transfer-7", Duration::from_secs(30));
/// // A transfer between two accounts holds both, whichever order they are named in.
/// let held = multi.try_acquire(&["account:9", "account:2"], &template).await?.expect("free");
/// assert_eq!(held.keys(), ["account:2", "account:9"]);
/// let fence = held.fence("account:9").expect("held"); // send it with the write to account 9
/// # let _ = fence;
/// multi.release(&held).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct MultiLock {
    store: Arc<dyn LockStore>,
}

/// The leases of a set of keys held together, one per key, in the canonical order.
#[derive(Debug, Clone)]
pub struct MultiLease {
    leases: Vec<Lease>,
}

impl MultiLease {
    /// The leases, in the canonical (sorted) order of their keys.
    pub fn leases(&self) -> &[Lease] {
        &self.leases
    }

    /// The keys held, sorted.
    pub fn keys(&self) -> Vec<&str> {
        self.leases.iter().map(|l| l.key.as_str()).collect()
    }

    /// The fence of `key`'s lease, if `key` is in the set.
    pub fn fence(&self, key: &str) -> Option<u64> {
        self.leases.iter().find(|l| l.key == key).map(|l| l.fence)
    }

    /// Guards every lease (renewed in the background, each with its own
    /// [`LockGuard::lost`]). Must be called inside a tokio runtime.
    pub fn into_guards(self, store: &Arc<dyn LockStore>) -> Vec<LockGuard> {
        self.leases
            .into_iter()
            .map(|lease| LockGuard::from_lease(store.clone(), lease))
            .collect()
    }
}

impl MultiLock {
    /// Multi-locks on `store`.
    pub fn new(store: Arc<dyn LockStore>) -> Self {
        Self { store }
    }

    /// The store the locks live in.
    pub fn store(&self) -> &Arc<dyn LockStore> {
        &self.store
    }

    /// The canonical order of `keys`: each checked, sorted, without duplicates; at least
    /// one.
    fn canonical(keys: &[impl AsRef<str>]) -> Result<Vec<String>, LockError> {
        let mut sorted = Vec::with_capacity(keys.len());
        for key in keys {
            validate_key(key.as_ref())?;
            sorted.push(key.as_ref().to_owned());
        }
        if sorted.is_empty() {
            return Err(LockError::InvalidKey {
                reason: "a multi-lock needs at least one key".into(),
            });
        }
        sorted.sort_unstable();
        sorted.dedup();
        Ok(sorted)
    }

    /// Releases what was taken, newest first, after a failure part-way; a release that
    /// fails is logged (the lease then ends with its TTL).
    async fn undo(&self, taken: Vec<Lease>) {
        for lease in taken.into_iter().rev() {
            if let Err(error) = self.store.release(&lease).await {
                tracing::warn!(key = %lease.key, fence = lease.fence, %error, "could not release a multi-lock's key after a failure; it expires with its TTL");
            }
        }
    }

    /// Takes every key in `keys` now, each with `template`'s owner, TTL and metadata (its
    /// key is ignored), or none: `Ok(None)` when any is held (the ones taken before it are
    /// released first).
    ///
    /// # Cancel safety
    ///
    /// A dropped call may leave some keys taken, with leases nobody holds: they expire
    /// after the TTL.
    pub async fn try_acquire(
        &self,
        keys: &[impl AsRef<str>],
        template: &LockRequest,
    ) -> Result<Option<MultiLease>, LockError> {
        let keys = Self::canonical(keys)?;
        template.validate_without_key(self.store.max_ttl())?;
        let mut taken = Vec::with_capacity(keys.len());
        for key in keys {
            let request = LockRequest {
                key,
                ..template.clone()
            };
            match self.store.try_acquire(&request).await {
                Ok(Some(lease)) => taken.push(lease),
                Ok(None) => {
                    self.undo(taken).await;
                    return Ok(None);
                }
                Err(error) => {
                    self.undo(taken).await;
                    return Err(error);
                }
            }
        }
        Ok(Some(MultiLease { leases: taken }))
    }

    /// Waits up to `wait` in all for every key in `keys`, taking them one by one in the
    /// canonical order (each wait notified by the store's watches, as
    /// [`LockStore::acquire`]); on a timeout or an error the keys taken so far are released
    /// and the error names the key that could not be taken (and its holder, if known).
    ///
    /// # Cancel safety
    ///
    /// As [`try_acquire`](Self::try_acquire).
    pub async fn acquire(
        &self,
        keys: &[impl AsRef<str>],
        template: &LockRequest,
        wait: Duration,
    ) -> Result<MultiLease, LockError> {
        let keys = Self::canonical(keys)?;
        template.validate_without_key(self.store.max_ttl())?;
        let started = tokio::time::Instant::now();
        let mut taken = Vec::with_capacity(keys.len());
        for key in keys {
            let request = LockRequest {
                key,
                ..template.clone()
            };
            let left = wait.saturating_sub(started.elapsed());
            match self.store.acquire(&request, left).await {
                Ok(lease) => taken.push(lease),
                Err(error) => {
                    self.undo(taken).await;
                    return Err(error);
                }
            }
        }
        Ok(MultiLease { leases: taken })
    }

    /// Releases every lease of `held`; `Ok(true)` if each was still held.
    ///
    /// # Cancel safety
    ///
    /// A dropped call may leave some keys held until their TTLs expire.
    pub async fn release(&self, held: &MultiLease) -> Result<bool, LockError> {
        let mut all = true;
        for lease in held.leases.iter().rev() {
            all &= self.store.release(lease).await?;
        }
        Ok(all)
    }
}
