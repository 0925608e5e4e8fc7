//! Batched renewal: the guards of one process on one store renew together, in a few
//! `renew_many` calls per interval, and `lost()` fires for exactly the leases that were
//! lost. Paused tokio time: deterministic.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use conc_lock_store::{
    Lease, LockError, LockGuard, LockInfo, LockRequest, LockStore, MemoryLockStore,
};

/// A memory store that counts `renew_many` calls (round trips, on a remote backend) and
/// hides its wake-ups, so that a loss is found by a renewal.
#[derive(Debug, Default)]
struct Counting {
    inner: MemoryLockStore,
    batches: AtomicUsize,
    renewed: AtomicUsize,
    single: AtomicUsize,
}

#[async_trait::async_trait]
impl LockStore for Counting {
    async fn try_acquire(&self, request: &LockRequest) -> Result<Option<Lease>, LockError> {
        self.inner.try_acquire(request).await
    }
    async fn release(&self, lease: &Lease) -> Result<bool, LockError> {
        self.inner.release(lease).await
    }
    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Lease, LockError> {
        self.single.fetch_add(1, Ordering::Relaxed);
        self.inner.renew(lease, ttl).await
    }
    async fn renew_many(&self, leases: &[Lease]) -> Vec<Result<Lease, LockError>> {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.renewed.fetch_add(leases.len(), Ordering::Relaxed);
        self.inner.renew_many(leases).await
    }
    async fn inspect(&self, key: &str) -> Result<Option<LockInfo>, LockError> {
        self.inner.inspect(key).await
    }
    async fn list(&self, prefix: &str, limit: usize) -> Result<Vec<LockInfo>, LockError> {
        self.inner.list(prefix, limit).await
    }
    async fn cleanup_expired(&self) -> Result<u64, LockError> {
        self.inner.cleanup_expired().await
    }
    async fn force_release(&self, key: &str) -> Result<bool, LockError> {
        self.inner.force_release(key).await
    }
    async fn take_over(&self, request: &LockRequest) -> Result<Lease, LockError> {
        self.inner.take_over(request).await
    }
    fn max_ttl(&self) -> Duration {
        self.inner.max_ttl()
    }
    fn batches_renewals(&self) -> bool {
        true
    }
}

#[tokio::test(start_paused = true)]
async fn ten_thousand_leases_renew_in_a_few_round_trips_and_losses_are_exact() {
    const LEASES: usize = 10_000;
    let counting = Arc::new(Counting::default());
    let store: Arc<dyn LockStore> = counting.clone();
    let ttl = Duration::from_secs(3);
    let mut guards = Vec::with_capacity(LEASES);
    for n in 0..LEASES {
        let request = LockRequest::new(format!("conv:{n}"), "holder", ttl);
        guards.push(
            LockGuard::try_acquire(store.clone(), request)
                .await
                .unwrap()
                .unwrap(),
        );
    }
    // Three renewal intervals (ttl / 3 each), offset from the renewal moments.
    tokio::time::sleep(ttl / 6).await;
    for interval in 0..3 {
        let (batches, renewed) = (
            counting.batches.load(Ordering::Relaxed),
            counting.renewed.load(Ordering::Relaxed),
        );
        tokio::time::sleep(ttl / 3).await;
        let batches = counting.batches.load(Ordering::Relaxed) - batches;
        let renewed = counting.renewed.load(Ordering::Relaxed) - renewed;
        println!("interval {interval}: {batches} renew_many calls for {renewed} leases");
        assert!(
            batches <= 10,
            "interval {interval}: {batches} round trips for {LEASES} leases"
        );
        assert_eq!(
            renewed, LEASES,
            "interval {interval}: every lease renewed once"
        );
    }
    assert_eq!(
        counting.single.load(Ordering::Relaxed),
        0,
        "no lease renewed on its own"
    );
    // Another process takes over every hundredth key; the next renewal finds out.
    let taken: Vec<usize> = (0..LEASES).step_by(100).collect();
    for n in &taken {
        counting
            .inner
            .take_over(&LockRequest::new(format!("conv:{n}"), "other", ttl))
            .await
            .unwrap();
    }
    tokio::time::sleep(ttl / 2).await;
    for (n, guard) in guards.iter().enumerate() {
        assert_eq!(
            guard.lost().is_aborted(),
            taken.contains(&n),
            "conv:{n}: lost() must fire exactly for the leases taken over"
        );
    }
}
