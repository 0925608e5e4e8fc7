//! One generation per conversation, the please-wait error, release on error and
//! panic, queue mode, stop-generation, recovery after a crash.

use std::sync::Arc;
use std::time::Duration;

use conc_lock_store::{LockRequest, LockStore, MemoryLockStore};
use conc_session::{
    GenerationError, GenerationMode, MemorySessionStore, SessionConfig, SessionContext,
    SessionManager,
};

fn manager_on(locks: Arc<dyn LockStore>, ttl: Duration) -> SessionManager {
    SessionManager::new(SessionContext {
        sessions: Arc::new(MemorySessionStore::new()),
        locks,
        config: SessionConfig::default().with_generation_ttl(ttl),
    })
}

fn manager() -> SessionManager {
    manager_on(Arc::new(MemoryLockStore::new()), Duration::from_secs(30))
}

/// The source app's integration test: rapid sends give one generation and the please-wait error.
#[tokio::test]
async fn rapid_sends_give_one_generation_and_a_please_wait_error() {
    let manager = manager();
    let sends = (0..5).map(|n| {
        let manager = manager.clone();
        async move {
            manager
                .start_generation(
                    "conv-1",
                    "user-1",
                    &format!("m-{n}"),
                    GenerationMode::Reject,
                )
                .await
        }
    });
    let outcomes = futures_join_all(sends).await;
    let started: Vec<_> = outcomes.iter().filter(|o| o.is_ok()).collect();
    assert_eq!(started.len(), 1, "exactly one generation");
    for outcome in outcomes.iter().filter(|o| o.is_err()) {
        let error = outcome.as_ref().unwrap_err();
        assert!(matches!(error, GenerationError::InProgress { .. }));
        assert_eq!(
            error.to_string(),
            "A response is already being generated for this conversation. Please wait for it to finish."
        );
    }
    assert!(manager.is_generating("conv-1").await.unwrap());
    assert_eq!(manager.stats().rejected, 4);
    assert_eq!(manager.stats().concurrent_attempts, 4);
}

/// Spawns every future (so they really race) and collects the outputs in order.
async fn futures_join_all<F>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for handle in handles {
        out.push(handle.await.unwrap());
    }
    out
}

/// Waits (up to 5 s) for the lock of `conversation` to be released.
async fn released(manager: &SessionManager, conversation: &str) {
    for _ in 0..500 {
        if !manager.is_generating(conversation).await.unwrap() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// An error (or a panic) releases the lock, and the next generation succeeds.
#[tokio::test]
async fn an_error_or_a_panic_releases_the_lock() {
    let manager = manager();
    let failing = async {
        let _generation = manager
            .start_generation("conv-1", "u", "m-1", GenerationMode::Reject)
            .await?;
        Err::<(), GenerationError>(GenerationError::InProgress {
            holder: "provider 500".into(),
            started_at: std::time::SystemTime::now(),
        })
    };
    assert!(failing.await.is_err());
    released(&manager, "conv-1").await; // the drop's release runs in the background
    assert!(
        !manager.is_generating("conv-1").await.unwrap(),
        "released on error"
    );

    let panicking = {
        let manager = manager.clone();
        tokio::spawn(async move {
            let _generation = manager
                .start_generation("conv-1", "u", "m-2", GenerationMode::Reject)
                .await
                .unwrap();
            panic!("generator bug");
        })
    };
    assert!(panicking.await.unwrap_err().is_panic());
    released(&manager, "conv-1").await;
    assert!(
        !manager.is_generating("conv-1").await.unwrap(),
        "released on panic"
    );

    let next = manager
        .start_generation("conv-1", "u", "m-3", GenerationMode::Reject)
        .await
        .unwrap();
    assert!(next.commit(|| "saved").is_some());
    assert!(next.finish().await.unwrap());
}

#[tokio::test]
async fn queue_mode_waits_for_the_running_generation() {
    let manager = manager();
    let first = manager
        .start_generation("conv-1", "u", "m-1", GenerationMode::Reject)
        .await
        .unwrap();
    let waiter = {
        let manager = manager.clone();
        tokio::spawn(async move {
            manager
                .start_generation(
                    "conv-1",
                    "u",
                    "m-2",
                    GenerationMode::Queue {
                        max_wait: Duration::from_secs(5),
                    },
                )
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    first.finish().await.unwrap();
    let second = waiter
        .await
        .unwrap()
        .expect("the queued start got the lock");
    second.finish().await.unwrap();
    let stats = manager.stats();
    assert_eq!((stats.queued, stats.generations_started), (1, 2));

    let _held = manager
        .start_generation("conv-2", "u", "m-1", GenerationMode::Reject)
        .await
        .unwrap();
    let late = manager
        .start_generation(
            "conv-2",
            "u",
            "m-2",
            GenerationMode::Queue {
                max_wait: Duration::from_millis(100),
            },
        )
        .await;
    assert!(matches!(late, Err(GenerationError::InProgress { .. })));
}

#[tokio::test]
async fn stop_generation_aborts_the_signal_here_and_in_another_process() {
    let locks: Arc<dyn LockStore> = Arc::new(MemoryLockStore::new());
    let here = manager_on(locks.clone(), Duration::from_millis(300));
    let generation = here
        .start_generation("conv-1", "u", "m-1", GenerationMode::Reject)
        .await
        .unwrap();
    assert!(here.stop_generation("conv-1").await.unwrap());
    assert!(
        generation.signal().is_aborted(),
        "stopped at once in this process"
    );
    assert!(
        generation.commit(|| ()).is_none(),
        "a stopped generation commits nothing"
    );
    assert_eq!(here.stats().stale_results_dropped, 1);
    drop(generation);

    // Another manager on the same store stands for another process.
    let there = manager_on(locks, Duration::from_millis(300));
    let remote = here
        .start_generation("conv-2", "u", "m-1", GenerationMode::Reject)
        .await
        .unwrap();
    assert!(there.stop_generation("conv-2").await.unwrap());
    let fired = tokio::time::timeout(Duration::from_secs(2), remote.signal().aborted()).await;
    assert!(fired.is_ok(), "the holder learns at its next renewal");
}

/// A crashed generator (a lease nobody renews or releases) is recovered after its TTL.
#[tokio::test]
async fn a_crashed_generators_lock_is_recovered_after_its_ttl() {
    let locks: Arc<dyn LockStore> = Arc::new(MemoryLockStore::new());
    let manager = manager_on(locks.clone(), Duration::from_secs(30));
    locks
        .try_acquire(&LockRequest::new(
            "generation:conv-1",
            "crashed",
            Duration::from_millis(200),
        ))
        .await
        .unwrap()
        .unwrap();
    assert!(
        manager
            .start_generation("conv-1", "u", "m", GenerationMode::Reject)
            .await
            .is_err()
    );
    let supervisor = conc_async::Supervisor::new("cleanup");
    manager
        .spawn_lock_cleanup(&supervisor, Duration::from_millis(50))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let generation = manager
        .start_generation("conv-1", "u", "m", GenerationMode::Reject)
        .await
        .unwrap();
    generation.finish().await.unwrap();
    supervisor.shutdown(Duration::from_secs(1)).await;
}

/// A lock store whose `cleanup_expired` fails the first `failures` times.
#[derive(Debug)]
struct FlakyCleanup {
    inner: MemoryLockStore,
    calls: std::sync::atomic::AtomicUsize,
    failures: usize,
}

#[async_trait::async_trait]
impl LockStore for FlakyCleanup {
    async fn try_acquire(
        &self,
        request: &LockRequest,
    ) -> Result<Option<conc_lock_store::Lease>, conc_lock_store::LockError> {
        self.inner.try_acquire(request).await
    }
    async fn release(
        &self,
        lease: &conc_lock_store::Lease,
    ) -> Result<bool, conc_lock_store::LockError> {
        self.inner.release(lease).await
    }
    async fn renew(
        &self,
        lease: &conc_lock_store::Lease,
        ttl: Duration,
    ) -> Result<conc_lock_store::Lease, conc_lock_store::LockError> {
        self.inner.renew(lease, ttl).await
    }
    async fn inspect(
        &self,
        key: &str,
    ) -> Result<Option<conc_lock_store::LockInfo>, conc_lock_store::LockError> {
        self.inner.inspect(key).await
    }
    async fn list(
        &self,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<conc_lock_store::LockInfo>, conc_lock_store::LockError> {
        self.inner.list(prefix, limit).await
    }
    async fn cleanup_expired(&self) -> Result<u64, conc_lock_store::LockError> {
        let n = self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if n < self.failures {
            return Err(conc_lock_store::LockError::backend(
                "flaky",
                "the connection dropped",
                std::io::Error::other("reset"),
            ));
        }
        self.inner.cleanup_expired().await
    }
    async fn force_release(&self, key: &str) -> Result<bool, conc_lock_store::LockError> {
        self.inner.force_release(key).await
    }
    async fn take_over(
        &self,
        request: &LockRequest,
    ) -> Result<conc_lock_store::Lease, conc_lock_store::LockError> {
        self.inner.take_over(request).await
    }
    fn max_ttl(&self) -> Duration {
        self.inner.max_ttl()
    }
}

/// The lock-cleanup task keeps going through store failures (a dropped connection): it
/// logs them and tries again next round.
#[tokio::test(start_paused = true)]
async fn the_cleanup_task_survives_store_failures() {
    let locks = Arc::new(FlakyCleanup {
        inner: MemoryLockStore::new(),
        calls: std::sync::atomic::AtomicUsize::new(0),
        failures: 2,
    });
    let manager = manager_on(locks.clone(), Duration::from_secs(30));
    let supervisor = conc_async::Supervisor::new("cleanup");
    manager
        .spawn_lock_cleanup(&supervisor, Duration::from_millis(10))
        .await
        .unwrap();
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        locks.calls.load(std::sync::atomic::Ordering::SeqCst) > 3,
        "the loop went on after its failures"
    );
    assert_eq!(supervisor.running(), 1);
    supervisor.shutdown(Duration::from_secs(1)).await;
}
