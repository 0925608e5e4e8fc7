//! [`LockGuard`]: a held lease that renews itself and says when it is lost.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use conc_core::{AbortController, AbortReason, AbortSignal};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::LockStore;
use crate::error::LockError;
use crate::request::{Lease, LockRequest};

/// A held lock: renewed every `ttl / 3` by a background task, released by
/// [`release`](Self::release) or, best effort, on drop.
///
/// [`lost`](Self::lost) fires the moment the store says the lease is gone, or when renewals
/// have failed for so long that the lease must have lapsed. Watch it and stop touching the
/// resource; pass [`fence`](Self::fence) with every write so the resource itself can reject
/// a holder that was too slow to notice.
pub struct LockGuard {
    store: Arc<dyn LockStore>,
    lease: Arc<parking_lot::Mutex<Lease>>,
    lost: Arc<AbortController>,
    renewal: Option<JoinHandle<()>>,
}

impl LockGuard {
    /// Waits up to `wait` for the lock, then starts renewing it.
    ///
    /// # Cancel safety
    ///
    /// A dropped call leaves at most a lease nobody holds, which expires after its TTL.
    pub async fn acquire(
        store: Arc<dyn LockStore>,
        request: LockRequest,
        wait: Duration,
    ) -> Result<Self, LockError> {
        let lease = store.acquire(&request, wait).await?;
        Ok(Self::from_lease(store, lease))
    }

    /// Takes the lock if it is free now.
    ///
    /// # Cancel safety
    ///
    /// As [`acquire`](Self::acquire).
    pub async fn try_acquire(
        store: Arc<dyn LockStore>,
        request: LockRequest,
    ) -> Result<Option<Self>, LockError> {
        Ok(store
            .try_acquire(&request)
            .await?
            .map(|lease| Self::from_lease(store, lease)))
    }

    /// Guards a lease acquired by hand; starts renewing it. Must be called inside a tokio
    /// runtime.
    pub fn from_lease(store: Arc<dyn LockStore>, lease: Lease) -> Self {
        let remaining = lease
            .expires_at
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        let valid_until = Instant::now() + remaining;
        let lease = Arc::new(parking_lot::Mutex::new(lease));
        let lost = Arc::new(AbortController::new());
        let renewal = tokio::spawn(renew(
            store.clone(),
            lease.clone(),
            lost.clone(),
            valid_until,
        ));
        Self {
            store,
            lease,
            lost,
            renewal: Some(renewal),
        }
    }

    /// The fencing token to pass to the protected resource.
    pub fn fence(&self) -> u64 {
        self.lease.lock().fence
    }

    /// The lease as last renewed.
    pub fn lease(&self) -> Lease {
        self.lease.lock().clone()
    }

    /// Fires when the lease is lost (taken over, expired, or renewals failed past its expiry).
    pub fn lost(&self) -> AbortSignal {
        self.lost.signal()
    }

    /// Stops renewing and releases the lease. `Ok(false)` if it was already lost.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future stops the renewal; the release may or may not have happened,
    /// and the lease expires after its TTL either way.
    pub async fn release(mut self) -> Result<bool, LockError> {
        if let Some(renewal) = self.renewal.take() {
            renewal.abort();
        }
        let lease = self.lease.lock().clone();
        self.store.release(&lease).await
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        let Some(renewal) = self.renewal.take() else {
            return;
        };
        renewal.abort();
        let lease = self.lease.lock().clone();
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                let store = self.store.clone();
                handle.spawn(async move {
                    match tokio::time::timeout(Duration::from_secs(10), store.release(&lease)).await {
                        Ok(Ok(_)) => debug!(key = %lease.key, "lock released on drop"),
                        Ok(Err(error)) => warn!(key = %lease.key, %error, "releasing a dropped lock guard failed; the lease expires after its ttl"),
                        Err(_) => warn!(key = %lease.key, "releasing a dropped lock guard timed out; the lease expires after its ttl"),
                    }
                });
            }
            Err(_) => {
                warn!(key = %lease.key, "lock guard dropped outside a tokio runtime; the lease expires after its ttl")
            }
        }
    }
}

impl fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lease = self.lease.lock();
        f.debug_struct("LockGuard")
            .field("key", &lease.key)
            .field("fence", &lease.fence)
            .field("lost", &self.lost.is_aborted())
            .finish()
    }
}

/// Renews every `ttl / 3`; after a failed renewal, retries sooner. Fires `lost` when the
/// store says the lease is gone, or when `valid_until` (a local, conservative bound on the
/// lease's expiry) passes without a successful renewal.
async fn renew(
    store: Arc<dyn LockStore>,
    lease: Arc<parking_lot::Mutex<Lease>>,
    lost: Arc<AbortController>,
    mut valid_until: Instant,
) {
    let mut failures = 0u32;
    loop {
        let current = lease.lock().clone();
        let interval = (current.ttl / 3).max(Duration::from_millis(1));
        let pause = if failures == 0 {
            interval
        } else {
            (interval / 3).max(Duration::from_millis(1))
        };
        let wake = (Instant::now() + pause).min(valid_until);
        tokio::time::sleep_until(wake).await;
        if Instant::now() >= valid_until {
            warn!(key = %current.key, fence = current.fence, "lease lapsed: renewals did not succeed in time");
            lost.abort(AbortReason::user(
                "lease lapsed: renewals did not succeed before it expired",
            ));
            return;
        }
        let sent = Instant::now();
        let limit = valid_until
            .saturating_duration_since(sent)
            .max(Duration::from_millis(1));
        match tokio::time::timeout(limit, store.renew(&current, current.ttl)).await {
            Ok(Ok(renewed)) => {
                failures = 0;
                valid_until = sent + renewed.ttl;
                *lease.lock() = renewed;
            }
            Ok(Err(LockError::Lost { key, fence })) => {
                warn!(%key, fence, "lease lost: it expired or was taken over");
                lost.abort(AbortReason::user(
                    "lease lost: it expired or was taken over",
                ));
                return;
            }
            Ok(Err(error)) => {
                failures += 1;
                warn!(key = %current.key, %error, failures, "lease renewal failed; retrying");
            }
            Err(_) => {
                failures += 1;
                warn!(key = %current.key, failures, "lease renewal timed out; retrying");
            }
        }
    }
}
