//! One holder at a time, and fences that only go forward: mutual exclusion, expiry and
//! take-over, foreign releases and late renewals refused, batched renewals, and a dropped
//! acquire that never outlives its TTL.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::error::LockError;
use crate::request::LockRequest;
use crate::store::LockStore;

use super::{coarse_extra, key};

/// Many concurrent acquirers: a shared counter never sees two holders.
///
/// # Cancel safety
///
/// Dropping it midway may leave locks under `prefix` held until their TTLs expire.
pub async fn mutual_exclusion(store: &Arc<dyn LockStore>, prefix: &str) {
    let key = key(prefix, "exclusion");
    let inside = Arc::new(AtomicUsize::new(0));
    let total = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for worker in 0..8 {
        let (store, key, inside, total) =
            (store.clone(), key.clone(), inside.clone(), total.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..10 {
                let request =
                    LockRequest::new(&key, format!("worker-{worker}"), Duration::from_secs(10));
                let lease = store
                    .acquire(&request, Duration::from_secs(30))
                    .await
                    .expect("acquire");
                assert_eq!(
                    inside.fetch_add(1, Ordering::SeqCst),
                    0,
                    "two holders of `{key}` at once"
                );
                tokio::task::yield_now().await;
                tokio::time::sleep(Duration::from_millis(1)).await;
                inside.fetch_sub(1, Ordering::SeqCst);
                total.fetch_add(1, Ordering::SeqCst);
                assert!(
                    store.release(&lease).await.expect("release"),
                    "release of a held lease"
                );
            }
        }));
    }
    for task in tasks {
        task.await.expect("worker");
    }
    assert_eq!(total.load(Ordering::SeqCst), 80);
}

/// A lease that is not renewed can be taken over after its TTL.
///
/// # Cancel safety
///
/// Dropping it midway may leave locks under `prefix` held until their TTLs expire.
pub async fn takeover_after_ttl(store: &Arc<dyn LockStore>, prefix: &str) {
    let key = key(prefix, "takeover");
    let first = store
        .try_acquire(&LockRequest::new(&key, "first", Duration::from_millis(600)))
        .await
        .expect("try_acquire")
        .expect("free");
    let second = LockRequest::new(&key, "second", Duration::from_secs(5));
    assert!(
        store
            .try_acquire(&second)
            .await
            .expect("try_acquire")
            .is_none(),
        "held"
    );
    tokio::time::sleep(
        Duration::from_millis(900) + coarse_extra(&**store, Duration::from_millis(600)),
    )
    .await;
    let taken = store
        .try_acquire(&second)
        .await
        .expect("try_acquire")
        .expect("expired, so free");
    assert!(taken.fence > first.fence);
    assert!(
        !store.release(&first).await.expect("release"),
        "the expired lease cannot release"
    );
    assert!(store.release(&taken).await.expect("release"));
}

/// Fences strictly increase per key across release, expiry and takeover.
///
/// # Cancel safety
///
/// Dropping it midway may leave locks under `prefix` held until their TTLs expire.
pub async fn monotonic_fence(store: &Arc<dyn LockStore>, prefix: &str) {
    let key = key(prefix, "fence");
    let mut last = 0;
    for round in 0..6 {
        let ttl = if round % 2 == 0 {
            Duration::from_secs(5)
        } else {
            Duration::from_millis(50)
        };
        let lease = store
            .acquire(&LockRequest::new(&key, "f", ttl), Duration::from_secs(5))
            .await
            .expect("acquire");
        assert!(lease.fence > last, "fence {} after {last}", lease.fence);
        last = lease.fence;
        if round % 2 == 0 {
            store.release(&lease).await.expect("release");
        } else {
            tokio::time::sleep(Duration::from_millis(120)).await; // let it expire
        }
    }
}

/// A release with another lease's token never frees the lock.
///
/// # Cancel safety
///
/// Dropping it midway may leave locks under `prefix` held until their TTLs expire.
pub async fn foreign_release_refused(store: &Arc<dyn LockStore>, prefix: &str) {
    let key = key(prefix, "foreign");
    let lease = store
        .try_acquire(&LockRequest::new(&key, "holder", Duration::from_secs(5)))
        .await
        .expect("try_acquire")
        .expect("free");
    let mut forged = lease.clone();
    forged.token = "not-the-token".into();
    forged.owner = "intruder".into();
    assert!(
        !store.release(&forged).await.expect("release"),
        "a foreign release succeeded"
    );
    assert!(store.is_locked(&key).await.expect("is_locked"));
    assert!(store.release(&lease).await.expect("release"));
}

/// Renewing after the lease expired fails with `Lost`, even before anyone took it over.
///
/// # Cancel safety
///
/// Dropping it midway may leave locks under `prefix` held until their TTLs expire.
pub async fn renew_after_expiry_fails(store: &Arc<dyn LockStore>, prefix: &str) {
    let key = key(prefix, "renew");
    let lease = store
        .try_acquire(&LockRequest::new(&key, "slow", Duration::from_millis(500)))
        .await
        .expect("try_acquire")
        .expect("free");
    let renewed = store
        .renew(&lease, Duration::from_millis(500))
        .await
        .expect("renew while held");
    assert!(renewed.expires_at >= lease.expires_at);
    tokio::time::sleep(
        Duration::from_millis(900) + coarse_extra(&**store, Duration::from_millis(500)),
    )
    .await;
    let error = store
        .renew(&renewed, Duration::from_secs(5))
        .await
        .expect_err("renew after expiry");
    assert!(matches!(error, LockError::Lost { .. }), "{error}");
}

/// `renew_many` renews the live leases of a batch and refuses, one by one, the released,
/// taken-over and expired ones and a TTL out of range; results in the order given.
///
/// # Cancel safety
///
/// Dropping it midway may leave locks under `prefix` held until their TTLs expire.
pub async fn renew_many_answers_per_lease(store: &Arc<dyn LockStore>, prefix: &str) {
    let acquire = |name: &str, ttl: Duration| {
        let request = LockRequest::new(key(prefix, &format!("many:{name}")), "batch", ttl);
        let store = store.clone();
        async move {
            store
                .try_acquire(&request)
                .await
                .expect("try_acquire")
                .expect("free")
        }
    };
    let live = acquire("live", Duration::from_secs(5)).await;
    let other = acquire("other", Duration::from_secs(5)).await;
    let released = acquire("released", Duration::from_secs(5)).await;
    let taken = acquire("taken", Duration::from_secs(5)).await;
    let expired = acquire("expired", Duration::from_millis(50)).await;
    assert!(store.release(&released).await.expect("release"));
    store
        .take_over(&LockRequest::new(
            taken.key.clone(),
            "operator",
            Duration::from_secs(5),
        ))
        .await
        .expect("take_over");
    let mut too_long = other.clone();
    too_long.ttl = store.max_ttl() + Duration::from_secs(1);
    tokio::time::sleep(
        Duration::from_millis(150) + coarse_extra(&**store, Duration::from_millis(50)),
    )
    .await;
    let batch = [
        live.clone(),
        released.clone(),
        taken.clone(),
        expired.clone(),
        too_long,
        other.clone(),
    ];
    let results = store.renew_many(&batch).await;
    assert_eq!(results.len(), batch.len(), "one result per lease");
    let renewed = results[0].as_ref().expect("the live lease is renewed");
    assert_eq!(renewed.fence, live.fence);
    assert!(renewed.expires_at >= live.expires_at);
    for (n, what) in [(1, "released"), (2, "taken over"), (3, "expired")] {
        assert!(
            matches!(results[n], Err(LockError::Lost { .. })),
            "the {what} lease is lost: {:?}",
            results[n]
        );
    }
    assert!(
        matches!(results[4], Err(LockError::InvalidTtl { .. })),
        "a TTL out of range is refused: {:?}",
        results[4]
    );
    assert!(results[5].is_ok(), "the last live lease is renewed");
    for lease in [live, other] {
        store.release(&lease).await.expect("release");
    }
    let _ = store.force_release(&taken.key).await;
}

/// A dropped `acquire` future never leaves the lock held past its TTL.
///
/// # Cancel safety
///
/// Dropping it midway may leave locks under `prefix` held until their TTLs expire.
pub async fn dropped_acquire_never_outlives_ttl(store: &Arc<dyn LockStore>, prefix: &str) {
    let key = key(prefix, "dropped");
    let ttl = Duration::from_millis(150);
    for cut in [0u64, 1, 3] {
        let request = LockRequest::new(&key, "dropper", ttl);
        // Cut the call at different points of its flight (0: before the first poll ends).
        let _ = tokio::time::timeout(
            Duration::from_millis(cut),
            store.acquire(&request, Duration::from_secs(1)),
        )
        .await;
        tokio::time::sleep(ttl + Duration::from_millis(150) + coarse_extra(&**store, ttl)).await;
        let next = store
            .try_acquire(&LockRequest::new(&key, "next", Duration::from_secs(5)))
            .await
            .expect("try_acquire")
            .expect("the dropped caller's lease expired");
        store.release(&next).await.expect("release");
    }
}
