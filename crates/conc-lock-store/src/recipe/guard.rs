//! [`LockGuard`]: a held lease that renews itself and says when it is lost.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, LazyLock, Weak};
use std::time::Duration;

use conc_core::{AbortController, AbortReason, AbortSignal};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{Instrument as _, debug, trace, warn};

use crate::error::LockError;
use crate::lease::{Lease, default_drift_margin};
use crate::notify::LockWatch;
use crate::request::LockRequest;
use crate::store::LockStore;

/// A held lock: renewed about every `ttl / 3` by a background task, released by
/// [`release`](Self::release) or, best effort, on drop.
///
/// The renewals of every guard on one store are sent together: each guard's renewal times
/// fall on a grid of a quarter of its renewal interval, and the renewals due at one moment
/// go to the store in one [`renew_many`](LockStore::renew_many) call (up to 2 500 leases a
/// call): one statement, pipeline or transaction. 10 000 held leases cost a handful of
/// round trips per interval, not 10 000.
///
/// Its validity is kept on this process's monotonic clock only: the lease is valid until
/// the moment the acquiring (or last renewing) request was *sent*, plus the TTL, minus a
/// drift margin ([`LockRequest::with_drift_margin`]). The store cannot have expired it
/// before then, whatever either wall clock says, as long as the two clocks' rates differ
/// by less than the margin.
///
/// [`lost`](Self::lost) fires the moment the store says the lease is gone (a take-over or a
/// forced release in any process reaches it through the store's [`watch`](LockStore::watch)),
/// or when that validity runs out without a successful renewal. [`lost`](Self::lost) and
/// [`check`](Self::check) also compare the validity with the clock when called, so a holder
/// that was paused (a stopped process, a stalled VM) past its lease sees the loss on its
/// first look, before any renewal task has had a chance to run. Pass
/// [`fence`](Self::fence) with every write so the resource itself can reject a holder that
/// was too slow to notice.
#[must_use = "if unused the lock is released at once (best effort, on drop)"]
pub struct LockGuard {
    store: Arc<dyn LockStore>,
    state: Arc<Shared>,
    renewal: Option<JoinHandle<()>>,
}

/// What the guard and its renewal task share.
struct Shared {
    lease: parking_lot::Mutex<Lease>,
    lost: AbortController,
    margin: Duration,
}

impl Shared {
    /// Whether the lease is still valid by the local clock; fires `lost` when not.
    fn check_validity(&self) -> bool {
        if self.lost.is_aborted() {
            return false;
        }
        let valid_until = self.lease.lock().valid_until(self.margin);
        if Instant::now() < valid_until {
            return true;
        }
        self.lose("lease lapsed: its validity ran out before a renewal succeeded");
        false
    }

    /// Fires `lost` once, logging the loss (warn, with `key`, `fence` and `owner`) and
    /// counting it (`conc_lock_leases_lost_total`, with the `metrics` feature).
    fn lose(&self, why: &'static str) {
        if !self.lost.abort(AbortReason::user(why)) {
            return;
        }
        let lease = self.lease.lock().clone();
        warn!(key = %lease.key, fence = lease.fence, owner = %lease.owner, "{why}");
        #[cfg(feature = "metrics")]
        metrics::counter!("conc_lock_leases_lost_total").increment(1);
    }
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
        let started = Instant::now();
        let span = tracing::debug_span!("lock.acquire", key = %request.key, owner = %request.owner);
        let lease = match store.acquire(&request, wait).instrument(span).await {
            Ok(lease) => lease,
            Err(error) => {
                debug!(key = %request.key, owner = %request.owner, %error, "lease not acquired");
                #[cfg(feature = "metrics")]
                if matches!(error, LockError::Timeout { .. }) {
                    metrics::counter!("conc_lock_acquire_timeouts_total").increment(1);
                }
                return Err(error);
            }
        };
        #[cfg(feature = "metrics")]
        {
            metrics::histogram!("conc_lock_wait_seconds").record(started.elapsed().as_secs_f64());
            metrics::counter!("conc_lock_acquired_total").increment(1);
        }
        debug!(
            key = %lease.key,
            fence = lease.fence,
            owner = %lease.owner,
            waited_ms = started.elapsed().as_millis() as u64,
            "lease acquired"
        );
        Ok(Self::with_margin(store, lease, margin_of(&request)))
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
        let margin = margin_of(&request);
        let lease = store.try_acquire(&request).await?;
        #[cfg(feature = "metrics")]
        if lease.is_some() {
            metrics::counter!("conc_lock_acquired_total").increment(1);
        }
        Ok(lease.map(|lease| Self::with_margin(store, lease, margin)))
    }

    /// Guards a lease acquired by hand, with the default drift margin; starts renewing it.
    /// Must be called inside a tokio runtime.
    pub fn from_lease(store: Arc<dyn LockStore>, lease: Lease) -> Self {
        let margin = default_drift_margin(lease.ttl);
        Self::with_margin(store, lease, margin)
    }

    /// Guards a lease acquired by hand, treating it as lost `margin` before its TTL (counted
    /// from [`Lease::requested_at`]) runs out; starts renewing it. Must be called inside a
    /// tokio runtime.
    pub fn with_margin(store: Arc<dyn LockStore>, lease: Lease, margin: Duration) -> Self {
        let watch = store.watch(&lease.key);
        let state = Arc::new(Shared {
            lease: parking_lot::Mutex::new(lease),
            lost: AbortController::new(),
            margin,
        });
        let renewal = tokio::spawn(renew(batcher_for(&store), state.clone(), watch));
        Self {
            store,
            state,
            renewal: Some(renewal),
        }
    }

    /// The fencing token to pass to the protected resource.
    pub fn fence(&self) -> u64 {
        self.state.lease.lock().fence
    }

    /// The lease as last renewed.
    pub fn lease(&self) -> Lease {
        self.state.lease.lock().clone()
    }

    /// Fires when the lease is lost: taken over or released by force (in any process), its
    /// validity run out, or renewals failed past it. Checks the validity against the clock
    /// first, so it has fired already when a paused holder looks at it on waking.
    pub fn lost(&self) -> AbortSignal {
        self.state.check_validity();
        self.state.lost.signal()
    }

    /// Whether the lease is still valid by the local clock, and not known lost.
    pub fn is_valid(&self) -> bool {
        self.state.check_validity()
    }

    /// The fence to write with, if the lease is still valid by the local clock;
    /// [`LockError::Lost`] (and [`lost`](Self::lost) fires) if not. Call it right before
    /// each write, and send the fence with the write.
    pub fn check(&self) -> Result<u64, LockError> {
        if self.state.check_validity() {
            return Ok(self.fence());
        }
        let lease = self.state.lease.lock();
        Err(LockError::Lost {
            key: lease.key.clone(),
            fence: lease.fence,
        })
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
        let lease = self.state.lease.lock().clone();
        let released = self.store.release(&lease).await?;
        debug!(key = %lease.key, fence = lease.fence, released, "lease released");
        Ok(released)
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        let Some(renewal) = self.renewal.take() else {
            return;
        };
        renewal.abort();
        let lease = self.state.lease.lock().clone();
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
        let lease = self.state.lease.lock();
        f.debug_struct("LockGuard")
            .field("key", &lease.key)
            .field("fence", &lease.fence)
            .field("lost", &self.state.lost.is_aborted())
            .finish()
    }
}

fn margin_of(request: &LockRequest) -> Duration {
    request
        .drift_margin
        .unwrap_or_else(|| default_drift_margin(request.ttl))
}

/// The most leases one batched renewal carries.
const MAX_BATCH: usize = 2500;

/// How long a batch waits for more renewals while they keep arriving.
const GATHER_LIMIT: Duration = Duration::from_millis(20);

/// Where a batched renewal answers one guard.
type RenewReply = tokio::sync::oneshot::Sender<Result<Lease, LockError>>;

/// The renewals of every guard on one store, sent together.
struct Batcher {
    store: Arc<dyn LockStore>,
    /// The origin of the renewal grid.
    epoch: Instant,
    queue: parking_lot::Mutex<Vec<(Lease, RenewReply)>>,
}

/// The batcher of `store`, shared by every guard on it (the same `Arc`) in this process.
fn batcher_for(store: &Arc<dyn LockStore>) -> Arc<Batcher> {
    static BATCHERS: LazyLock<parking_lot::Mutex<HashMap<usize, Weak<Batcher>>>> =
        LazyLock::new(Default::default);
    // A batcher holds its store, so no other store can have this address while it lives.
    let id = Arc::as_ptr(store).cast::<()>() as usize;
    let mut batchers = BATCHERS.lock();
    if let Some(batcher) = batchers.get(&id).and_then(Weak::upgrade) {
        return batcher;
    }
    batchers.retain(|_, batcher| batcher.strong_count() > 0);
    let batcher = Arc::new(Batcher {
        store: store.clone(),
        epoch: Instant::now(),
        queue: parking_lot::Mutex::default(),
    });
    batchers.insert(id, Arc::downgrade(&batcher));
    batcher
}

impl Batcher {
    /// Renews `lease` for its TTL with the other renewals due now (or on its own request,
    /// when the store does not batch: see [`LockStore::batches_renewals`]).
    async fn renew(self: &Arc<Self>, lease: Lease) -> Result<Lease, LockError> {
        if !self.store.batches_renewals() {
            return self.store.renew(&lease, lease.ttl).await;
        }
        let (reply, answer) = tokio::sync::oneshot::channel();
        let first = {
            let mut queue = self.queue.lock();
            queue.push((lease, reply));
            queue.len() == 1
        };
        if first {
            let batcher = self.clone();
            tokio::spawn(async move { batcher.flush().await });
        }
        answer.await.unwrap_or_else(|_| {
            Err(LockError::Backend {
                backend: "lock store",
                message: "the batched renewal stopped before it answered".into(),
                source: None,
            })
        })
    }

    /// Waits while renewals keep arriving (the guards due at one moment wake one after the
    /// other), up to [`GATHER_LIMIT`], then sends them in batches of [`MAX_BATCH`].
    async fn flush(&self) {
        let started = Instant::now();
        let mut seen = 0;
        loop {
            tokio::time::sleep(Duration::from_millis(1)).await;
            let queued = self.queue.lock().len();
            if queued == seen || queued >= MAX_BATCH || started.elapsed() >= GATHER_LIMIT {
                break;
            }
            seen = queued;
        }
        let mut queued = std::mem::take(&mut *self.queue.lock());
        let mut batches = Vec::new();
        while !queued.is_empty() {
            let rest = queued.split_off(queued.len().min(MAX_BATCH));
            batches.push(std::mem::replace(&mut queued, rest));
        }
        let sends = batches.into_iter().map(|batch| async move {
            let (leases, replies): (Vec<Lease>, Vec<_>) = batch.into_iter().unzip();
            let mut results = self.store.renew_many(&leases).await.into_iter();
            trace!(leases = leases.len(), "leases renewed in one batch");
            for reply in replies {
                let result = results.next().unwrap_or_else(|| {
                    Err(LockError::Backend {
                        backend: "lock store",
                        message: "renew_many returned fewer results than leases".into(),
                        source: None,
                    })
                });
                // A guard that gave up waiting has dropped its receiver.
                let _ = reply.send(result);
            }
        });
        futures_util::future::join_all(sends).await;
    }

    /// `at`, moved back onto the renewal grid of `interval` (a quarter of it), so that the
    /// guards due about the same time renew at the same moment, in one batch.
    fn on_grid(&self, at: Instant, interval: Duration) -> Instant {
        let grain = interval / 4;
        if grain < Duration::from_millis(1) || at <= self.epoch {
            return at;
        }
        let since = at.duration_since(self.epoch);
        let steps = since.as_nanos() / grain.as_nanos();
        let back = since.as_nanos() - steps * grain.as_nanos();
        at - Duration::from_nanos(u64::try_from(back).unwrap_or(0))
    }
}

/// Renews about every `ttl / 3`, in the store's batch; after a failed renewal, retries
/// sooner. Fires `lost` when the store says the lease is gone (a renewal refused, or a
/// watched change that shows another fence or none), or when the lease's local validity
/// passes without a successful renewal.
async fn renew(batcher: Arc<Batcher>, state: Arc<Shared>, mut watch: Option<LockWatch>) {
    let store = batcher.store.clone();
    let mut failures = 0u32;
    // The first renewal is timed from when the acquiring request was sent, as the lease's
    // validity is: over a slow link its answer comes late, and renewing a third of the TTL
    // after that would leave less than two thirds of it for the renewal.
    let (first, taken) = {
        let lease = state.lease.lock();
        (
            (lease.ttl / 3).max(Duration::from_millis(1)),
            lease.requested_at,
        )
    };
    let mut next_renewal = batcher.on_grid(taken + first, first);
    loop {
        let current = state.lease.lock().clone();
        let valid_until = current.valid_until(state.margin);
        let wake = next_renewal.min(valid_until);
        let changed = match watch.as_mut() {
            Some(watch) => tokio::select! {
                () = tokio::time::sleep_until(wake) => false,
                () = watch.changed() => true,
            },
            None => {
                tokio::time::sleep_until(wake).await;
                false
            }
        };
        if !state.check_validity() {
            return;
        }
        if changed {
            // Someone released, took over or force-released the key: is it still ours?
            match tokio::time::timeout(
                valid_until.saturating_duration_since(Instant::now()),
                store.inspect(&current.key),
            )
            .await
            {
                Ok(Ok(Some(info))) if info.fence == current.fence => continue,
                Ok(Ok(_)) => {
                    state.lose("lease lost: it was taken over or released by force");
                    return;
                }
                // The renewal below finds out.
                Ok(Err(_)) | Err(_) => {}
            }
        }
        if Instant::now() < next_renewal {
            continue;
        }
        let sent = Instant::now();
        let interval = (current.ttl / 3).max(Duration::from_millis(1));
        next_renewal = batcher.on_grid(sent + interval, interval);
        let limit = valid_until
            .saturating_duration_since(sent)
            .max(Duration::from_millis(1));
        match tokio::time::timeout(limit, batcher.renew(current.clone())).await {
            Ok(Ok(renewed)) => {
                failures = 0;
                trace!(key = %renewed.key, fence = renewed.fence, "lease renewed");
                *state.lease.lock() = Lease {
                    requested_at: sent,
                    ..renewed
                };
            }
            Ok(Err(LockError::Lost { .. })) => {
                state.lose("lease lost: it expired or was taken over");
                return;
            }
            Ok(Err(LockError::LateReply { .. })) => {
                state.lose("lease lost: the renewal's answer came after the lease's validity");
                return;
            }
            Ok(Err(error)) => {
                failures += 1;
                next_renewal = Instant::now() + (interval / 3).max(Duration::from_millis(1));
                warn!(key = %current.key, fence = current.fence, %error, failures, "lease renewal failed; retrying");
                #[cfg(feature = "metrics")]
                metrics::counter!("conc_lock_renew_failures_total").increment(1);
            }
            Err(_) => {
                failures += 1;
                next_renewal = Instant::now() + (interval / 3).max(Duration::from_millis(1));
                warn!(key = %current.key, fence = current.fence, failures, "lease renewal timed out; retrying");
                #[cfg(feature = "metrics")]
                metrics::counter!("conc_lock_renew_failures_total").increment(1);
            }
        }
    }
}
