//! The conformance suite: one async function per property of a [`LockStore`]; every
//! backend runs them all (see [`run_all`]). Built with the `conformance` feature.
//!
//! The functions panic with a description when a property fails, like assertions in a
//! test. Each one uses keys under its own `prefix`, and expects no other user of those
//! keys. [`cleanup_count`] counts everything a store cleans, so [`run_all`] runs the
//! properties one after the other.
//!
//! ```
//! # #[tokio::main]
//! # async fn main() {
//! use std::sync::Arc;
//! use conc_lock_store::{MemoryLockStore, conformance};
//!
//! conformance::run_all(Arc::new(MemoryLockStore::new()), "doc").await;
//! # }
//! ```

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::{FairLock, LockError, LockGuard, LockRequest, LockStore, MAX_KEY_BYTES, Semaphore};

/// Runs every property against `store`, one after the other, under `prefix`.
///
/// # Cancel safety
///
/// Dropping it midway may leave locks under `prefix` held until their TTLs expire.
pub async fn run_all(store: Arc<dyn LockStore>, prefix: &str) {
    mutual_exclusion(&store, prefix).await;
    takeover_after_ttl(&store, prefix).await;
    monotonic_fence(&store, prefix).await;
    foreign_release_refused(&store, prefix).await;
    renew_after_expiry_fails(&store, prefix).await;
    renew_many_answers_per_lease(&store, prefix).await;
    inspect_is_truthful(&store, prefix).await;
    list_by_prefix(&store, prefix).await;
    cleanup_count(&store, prefix).await;
    wait_timeout_names_holder(&store, prefix).await;
    dropped_acquire_never_outlives_ttl(&store, prefix).await;
    bad_input_is_rejected(&store, prefix).await;
    guard_renews_and_reports_loss(&store, prefix).await;
    take_over_fences_off_the_holder(&store, prefix).await;
    take_over_reaches_the_holder_at_once(&store, prefix).await;
    watch_reports_changes_made_right_after_it(&store, &store, prefix).await;
    semaphore_admits_n_holders(&store, prefix).await;
    fair_lock_serves_in_arrival_order(&store, prefix).await;
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
    tokio::time::sleep(Duration::from_millis(150)).await;
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

/// A semaphore of 3 permits: three holders at once, each with its own lease and fence, a
/// fourth refused until one leaves; under contention never more than three; a permit
/// taken over reaches its holder; a bad number of permits is refused.
///
/// # Cancel safety
///
/// Dropping it midway may leave locks under `prefix` held until their TTLs expire.
pub async fn semaphore_admits_n_holders(store: &Arc<dyn LockStore>, prefix: &str) {
    assert!(matches!(
        Semaphore::new(store.clone(), 0),
        Err(LockError::InvalidPermits { .. })
    ));
    let semaphore = Semaphore::new(store.clone(), 3).expect("semaphore");
    let name = key(prefix, "semaphore");
    let ttl = Duration::from_secs(5);
    let request = |owner: &str| LockRequest::new(name.clone(), owner, ttl);
    let mut held = Vec::new();
    for owner in ["a", "b", "c"] {
        held.push(
            semaphore
                .try_acquire(&request(owner))
                .await
                .expect("try_acquire")
                .expect("a permit is free"),
        );
    }
    let mut keys: Vec<_> = held.iter().map(|l| l.key.clone()).collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 3, "three permits, three leases");
    assert!(
        semaphore
            .try_acquire(&request("d"))
            .await
            .expect("try_acquire")
            .is_none(),
        "a fourth holder is refused"
    );
    assert_eq!(semaphore.holders(&name).await.expect("holders").len(), 3);
    let left = held.remove(1);
    assert!(store.release(&left).await.expect("release"));
    let fourth = semaphore
        .acquire(&request("d"), Duration::from_secs(2))
        .await
        .expect("the freed permit");
    assert_eq!(fourth.key, left.key);
    assert!(fourth.fence > left.fence, "each permit's fences go forward");
    held.push(fourth);
    for lease in &held {
        store.release(lease).await.expect("release");
    }

    // Contention: never more than three at once.
    let inside = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let most = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let mut tasks = Vec::new();
    for n in 0..6 {
        let (semaphore, inside, most) = (semaphore.clone(), inside.clone(), most.clone());
        let request = LockRequest::new(name.clone(), format!("t{n}"), ttl);
        tasks.push(tokio::spawn(async move {
            for _ in 0..5 {
                let lease = semaphore
                    .acquire(&request, Duration::from_secs(20))
                    .await
                    .expect("acquire");
                let now = inside.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                most.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
                inside.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                semaphore.store().release(&lease).await.expect("release");
            }
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    let most = most.load(std::sync::atomic::Ordering::SeqCst);
    assert!(most <= 3, "{most} holders at once");

    // A permit taken over reaches its guard.
    let guard = semaphore
        .acquire_guard(request("guarded"), Duration::from_secs(2))
        .await
        .expect("acquire_guard");
    let taken = store
        .take_over(&LockRequest::new(
            guard.lease().key.clone(),
            "operator",
            ttl,
        ))
        .await
        .expect("take_over");
    assert!(taken.fence > guard.fence());
    tokio::time::timeout(Duration::from_secs(5), guard.lost().aborted())
        .await
        .expect("the permit's holder learns of the take-over");
    store.release(&taken).await.expect("release");
}

/// A fair lock serves its waiters in arrival order; a waiter that gives up leaves the
/// queue without holding up the ones behind it; the queue is empty afterwards.
///
/// # Cancel safety
///
/// Dropping it midway may leave locks under `prefix` held until their TTLs expire.
pub async fn fair_lock_serves_in_arrival_order(store: &Arc<dyn LockStore>, prefix: &str) {
    let fair = FairLock::new(store.clone());
    let name = key(prefix, "fair");
    let queue = format!("{name}#queue:");
    let ttl = Duration::from_secs(5);
    let held = store
        .try_acquire(&LockRequest::new(name.clone(), "holder", ttl))
        .await
        .expect("try_acquire")
        .expect("free");
    let order = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    let waiters = ["w1", "w2", "quitter", "w3", "w4"];
    for (n, waiter) in waiters.into_iter().enumerate() {
        let (fair, order) = (fair.clone(), order.clone());
        let request = LockRequest::new(name.clone(), waiter, ttl);
        let wait = if waiter == "quitter" {
            Duration::from_millis(300)
        } else {
            Duration::from_secs(30)
        };
        tasks.push(tokio::spawn(async move {
            match fair.acquire(&request, wait).await {
                Ok(lease) => {
                    order.lock().push(waiter);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    fair_store(&fair).release(&lease).await.expect("release");
                }
                Err(LockError::Timeout { .. }) => order.lock().push("gave up"),
                Err(other) => panic!("{waiter}: {other}"),
            }
        }));
        // Arrival: the next waiter comes after this one stands in the queue.
        for _ in 0..500 {
            if store.list(&queue, 100).await.expect("list").len() > n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    // The quitter gives up while the lock is still held.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(*order.lock(), ["gave up"]);
    assert!(store.release(&held).await.expect("release"));
    for task in tasks {
        task.await.expect("waiter");
    }
    assert_eq!(*order.lock(), ["gave up", "w1", "w2", "w3", "w4"]);
    assert!(
        store.list(&queue, 100).await.expect("list").is_empty(),
        "everyone left the queue"
    );
}

fn fair_store(fair: &FairLock) -> Arc<dyn LockStore> {
    fair.store().clone()
}

fn key(prefix: &str, name: &str) -> String {
    format!("{prefix}:{name}")
}

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
    tokio::time::sleep(Duration::from_millis(900)).await;
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
    tokio::time::sleep(Duration::from_millis(900)).await;
    let error = store
        .renew(&renewed, Duration::from_secs(5))
        .await
        .expect_err("renew after expiry");
    assert!(matches!(error, LockError::Lost { .. }), "{error}");
}

/// `inspect` and `is_locked` tell the truth.
///
/// # Cancel safety
///
/// Dropping it midway may leave locks under `prefix` held until their TTLs expire.
pub async fn inspect_is_truthful(store: &Arc<dyn LockStore>, prefix: &str) {
    let key = key(prefix, "inspect");
    assert!(store.inspect(&key).await.expect("inspect").is_none());
    assert!(!store.is_locked(&key).await.expect("is_locked"));
    let request = LockRequest::new(&key, "owner-1", Duration::from_secs(5))
        .with_metadata("user_id", "u-1")
        .with_metadata("message_id", "m=1\nline");
    let lease = store
        .try_acquire(&request)
        .await
        .expect("try_acquire")
        .expect("free");
    let info = store.inspect(&key).await.expect("inspect").expect("held");
    assert_eq!(info.owner, "owner-1");
    assert_eq!(info.metadata, request.metadata);
    assert_eq!(info.fence, lease.fence);
    assert!(info.expires_at > info.acquired_at);
    assert!(store.is_locked(&key).await.expect("is_locked"));
    assert!(
        store
            .announce_wait(&key, Duration::from_secs(5))
            .await
            .expect("announce_wait"),
        "announcing a wait on a held key reports it held"
    );
    store.release(&lease).await.expect("release");
    assert!(!store.is_locked(&key).await.expect("is_locked"));
    // The next holder's metadata replaces the last one's: no entry is left behind. A
    // holder without metadata after one with it, then another without, then one with
    // again: each sees exactly its own.
    for (owner, entries) in [
        ("owner-2", &[("user_id", "u-2"), ("", "empty name")][..]),
        ("owner-3", &[][..]),
        ("owner-4", &[][..]),
        ("owner-5", &[("note", "n-5")][..]),
        ("owner-6", &[][..]),
    ] {
        let mut request = LockRequest::new(&key, owner, Duration::from_secs(5));
        for (name, value) in entries {
            request = request.with_metadata(*name, *value);
        }
        let lease = store
            .try_acquire(&request)
            .await
            .expect("try_acquire")
            .expect("free");
        let info = store.inspect(&key).await.expect("inspect").expect("held");
        assert_eq!(info.owner, owner);
        assert_eq!(info.metadata, request.metadata, "{owner}'s metadata");
        store.release(&lease).await.expect("release");
    }
}

/// `list` returns live leases under a prefix, in key order, up to the limit.
///
/// # Cancel safety
///
/// Dropping it midway may leave locks under `prefix` held until their TTLs expire.
pub async fn list_by_prefix(store: &Arc<dyn LockStore>, prefix: &str) {
    let base = key(prefix, "list");
    let mut leases = Vec::new();
    for name in ["c", "a", "b"] {
        let request = LockRequest::new(format!("{base}:{name}"), "lister", Duration::from_secs(5));
        leases.push(
            store
                .try_acquire(&request)
                .await
                .expect("try_acquire")
                .expect("free"),
        );
    }
    let listed = store.list(&format!("{base}:"), 10).await.expect("list");
    let keys: Vec<_> = listed.iter().map(|i| i.key.clone()).collect();
    assert_eq!(
        keys,
        [
            format!("{base}:a"),
            format!("{base}:b"),
            format!("{base}:c")
        ]
    );
    assert_eq!(
        store
            .list(&format!("{base}:"), 2)
            .await
            .expect("list")
            .len(),
        2
    );
    for lease in &leases {
        store.release(lease).await.expect("release");
    }
    assert!(
        store
            .list(&format!("{base}:"), 10)
            .await
            .expect("list")
            .is_empty()
    );
}

/// `cleanup_expired` removes exactly the expired leases.
///
/// # Cancel safety
///
/// Dropping it midway may leave locks under `prefix` held until their TTLs expire.
pub async fn cleanup_count(store: &Arc<dyn LockStore>, prefix: &str) {
    store.cleanup_expired().await.expect("cleanup");
    let live = store
        .try_acquire(&LockRequest::new(
            key(prefix, "cleanup:live"),
            "c",
            Duration::from_secs(5),
        ))
        .await
        .expect("try_acquire")
        .expect("free");
    for n in 0..3 {
        let request = LockRequest::new(
            key(prefix, &format!("cleanup:{n}")),
            "c",
            Duration::from_millis(50),
        );
        store
            .try_acquire(&request)
            .await
            .expect("try_acquire")
            .expect("free");
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(store.cleanup_expired().await.expect("cleanup"), 3);
    assert_eq!(store.cleanup_expired().await.expect("cleanup"), 0);
    assert!(store.is_locked(&live.key).await.expect("is_locked"));
    store.release(&live).await.expect("release");
}

/// `acquire` gives up after its wait with an error that names the holder.
///
/// # Cancel safety
///
/// Dropping it midway may leave locks under `prefix` held until their TTLs expire.
pub async fn wait_timeout_names_holder(store: &Arc<dyn LockStore>, prefix: &str) {
    let key = key(prefix, "timeout");
    let held = store
        .try_acquire(&LockRequest::new(
            &key,
            "generator-7",
            Duration::from_secs(5),
        ))
        .await
        .expect("try_acquire")
        .expect("free");
    let error = store
        .acquire(
            &LockRequest::new(&key, "other", Duration::from_secs(5)),
            Duration::from_millis(100),
        )
        .await
        .expect_err("held");
    match &error {
        LockError::Timeout {
            holder: Some(holder),
            ..
        } => assert_eq!(holder.owner, "generator-7"),
        other => panic!("expected a timeout naming the holder, got {other}"),
    }
    assert!(error.to_string().contains("generator-7"), "{error}");
    store.release(&held).await.expect("release");
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
        tokio::time::sleep(ttl + Duration::from_millis(150)).await;
        let next = store
            .try_acquire(&LockRequest::new(&key, "next", Duration::from_secs(5)))
            .await
            .expect("try_acquire")
            .expect("the dropped caller's lease expired");
        store.release(&next).await.expect("release");
    }
}

/// Every bad input gets a typed error and changes nothing.
///
/// # Cancel safety
///
/// Dropping it midway may leave locks under `prefix` held until their TTLs expire.
pub async fn bad_input_is_rejected(store: &Arc<dyn LockStore>, prefix: &str) {
    let ok = Duration::from_secs(1);
    let check = |error: LockError, expected: fn(&LockError) -> bool| {
        assert!(expected(&error), "unexpected error: {error}");
    };
    let empty_key = store
        .try_acquire(&LockRequest::new("", "o", ok))
        .await
        .expect_err("empty key");
    check(empty_key, |e| matches!(e, LockError::InvalidKey { .. }));
    let long = "k".repeat(MAX_KEY_BYTES + 1);
    let long_key = store
        .try_acquire(&LockRequest::new(long, "o", ok))
        .await
        .expect_err("long key");
    check(long_key, |e| matches!(e, LockError::InvalidKey { .. }));
    for bad in ["nul\0key", "   "] {
        let refused = store
            .try_acquire(&LockRequest::new(bad, "o", ok))
            .await
            .expect_err("a NUL byte or a blank key");
        assert!(
            !refused.is_transient(),
            "bad input is not transient: {refused}"
        );
        check(refused, |e| matches!(e, LockError::InvalidKey { .. }));
    }
    let nul_metadata = store
        .try_acquire(&LockRequest::new(key(prefix, "bad"), "o", ok).with_metadata("m", "a\0b"))
        .await
        .expect_err("NUL metadata");
    check(nul_metadata, |e| {
        matches!(e, LockError::InvalidMetadata { .. })
    });
    let empty_owner = store
        .try_acquire(&LockRequest::new(key(prefix, "bad"), "", ok))
        .await
        .expect_err("owner");
    check(empty_owner, |e| matches!(e, LockError::InvalidOwner));
    let short = LockRequest::new(key(prefix, "bad"), "o", Duration::from_micros(10));
    check(store.try_acquire(&short).await.expect_err("ttl"), |e| {
        matches!(e, LockError::InvalidTtl { .. })
    });
    let long_ttl = LockRequest::new(
        key(prefix, "bad"),
        "o",
        store.max_ttl() + Duration::from_secs(1),
    );
    check(store.try_acquire(&long_ttl).await.expect_err("ttl"), |e| {
        matches!(e, LockError::InvalidTtl { .. })
    });
    check(store.inspect("").await.expect_err("inspect"), |e| {
        matches!(e, LockError::InvalidKey { .. })
    });
    assert!(
        !store
            .is_locked(&key(prefix, "bad"))
            .await
            .expect("is_locked"),
        "nothing was locked"
    );
}

/// A [`LockGuard`] keeps a short lease alive past its TTL, and fires `lost` when the lock
/// is taken from it.
///
/// # Cancel safety
///
/// Dropping it midway may leave locks under `prefix` held until their TTLs expire.
pub async fn guard_renews_and_reports_loss(store: &Arc<dyn LockStore>, prefix: &str) {
    let key = key(prefix, "guard");
    // Generous margins: a loaded CI machine may delay a renewal by a few hundred ms.
    let request = LockRequest::new(&key, "guarded", Duration::from_millis(900));
    let guard = LockGuard::acquire(store.clone(), request, Duration::from_secs(1))
        .await
        .expect("acquire");
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert!(!guard.lost().is_aborted(), "renewals keep it");
    assert!(store.is_locked(&key).await.expect("is_locked"));
    assert!(store.force_release(&key).await.expect("force"));
    let reason = tokio::time::timeout(Duration::from_secs(2), guard.lost().aborted()).await;
    assert!(reason.is_ok(), "lost() fired after the lock was taken away");
    assert!(!guard.release().await.expect("release"), "already lost");
}

/// `take_over` takes a held lock with a higher fence; the previous holder can neither
/// renew nor release it any more.
///
/// # Cancel safety
///
/// Dropping it midway may leave locks under `prefix` held until their TTLs expire.
pub async fn take_over_fences_off_the_holder(store: &Arc<dyn LockStore>, prefix: &str) {
    let key = key(prefix, "take-over");
    let holder = store
        .try_acquire(&LockRequest::new(&key, "holder", Duration::from_secs(5)))
        .await
        .expect("try_acquire")
        .expect("free");
    let taker = store
        .take_over(&LockRequest::new(&key, "operator", Duration::from_secs(5)))
        .await
        .expect("take_over");
    assert!(taker.fence > holder.fence);
    assert_eq!(
        store
            .inspect(&key)
            .await
            .expect("inspect")
            .expect("held")
            .owner,
        "operator"
    );
    assert!(matches!(
        store.renew(&holder, Duration::from_secs(5)).await,
        Err(LockError::Lost { .. })
    ));
    assert!(!store.release(&holder).await.expect("release"));
    assert!(store.release(&taker).await.expect("release"));
    let free = store
        .take_over(&LockRequest::new(&key, "operator", Duration::from_secs(5)))
        .await
        .expect("take_over a free key");
    store.release(&free).await.expect("release");
}

/// A resource that remembers the highest fence it accepted and refuses older ones: the
/// storage side of fencing, kept in a file that several processes share.
#[derive(Debug, Clone)]
pub struct FencedFile {
    path: PathBuf,
}

/// The fenced resource refused a write.
#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    /// The fence is older than one already accepted.
    #[error("stale fence {fence}: the resource already accepted {highest}")]
    Stale {
        /// The fence offered.
        fence: u64,
        /// The highest accepted.
        highest: u64,
    },
    /// The file could not be used.
    #[error("fenced file: {0}")]
    Io(#[from] std::io::Error),
}

impl FencedFile {
    /// A fenced resource in `path` (created on first write).
    pub fn new(path: impl AsRef<Path>) -> Self {
        Self {
            path: path.as_ref().to_path_buf(),
        }
    }

    /// Accepts a write with `fence` if it is at least the highest seen, remembering it.
    pub fn write(&self, fence: u64) -> Result<(), FenceError> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&self.path)?;
        file.lock()?;
        let outcome = Self::check_and_store(&mut file, fence);
        file.unlock()?;
        outcome
    }

    fn check_and_store(file: &mut File, fence: u64) -> Result<(), FenceError> {
        let mut text = String::new();
        file.read_to_string(&mut text)?;
        let highest = text.trim().parse::<u64>().unwrap_or(0);
        if fence < highest {
            return Err(FenceError::Stale { fence, highest });
        }
        file.set_len(0)?;
        file.seek(SeekFrom::Start(0))?;
        write!(file, "{fence}")?;
        file.sync_data()?;
        Ok(())
    }

    /// The highest fence accepted so far.
    pub fn highest(&self) -> Result<u64, FenceError> {
        match std::fs::read_to_string(&self.path) {
            Ok(text) => Ok(text.trim().parse().unwrap_or(0)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(e.into()),
        }
    }
}

/// A take-over and a forced release reach the holder's [`LockGuard`] at once, through the
/// store's [`watch`](LockStore::watch), long before its next renewal would have found out.
///
/// # Cancel safety
///
/// Dropping it midway may leave locks under `prefix` held until their TTLs expire.
pub async fn take_over_reaches_the_holder_at_once(store: &Arc<dyn LockStore>, prefix: &str) {
    let key = key(prefix, "reach");
    // Renewals every 20 s: only the watch can tell the holder within the second.
    let long = Duration::from_secs(60);
    let guard = LockGuard::acquire(
        store.clone(),
        LockRequest::new(&key, "holder", long),
        Duration::from_secs(1),
    )
    .await
    .expect("acquire");
    let taker = store
        .take_over(&LockRequest::new(&key, "stopper", Duration::from_secs(5)))
        .await
        .expect("take_over");
    let reached = tokio::time::timeout(Duration::from_secs(1), guard.lost().aborted()).await;
    assert!(reached.is_ok(), "lost() fired within 1 s of the take-over");
    assert!(guard.check().is_err());
    assert!(store.release(&taker).await.expect("release"));
    let second = LockGuard::acquire(
        store.clone(),
        LockRequest::new(&key, "holder", long),
        Duration::from_secs(1),
    )
    .await
    .expect("acquire");
    assert!(store.force_release(&key).await.expect("force"));
    let reached = tokio::time::timeout(Duration::from_secs(1), second.lost().aborted()).await;
    assert!(
        reached.is_ok(),
        "lost() fired within 1 s of the forced release"
    );
}

/// For stores that tell other processes of a release ([`LockStore::announce_wait`] and
/// [`watch`](LockStore::watch)), on two instances of the store, as two processes have: an
/// announcement on a held key says "held" and the holder's release then wakes the waiter's
/// watch; a released key, and a key never held, are reported free. Not in [`run_all`]:
/// the memory store has no other process to tell and keeps the default announcement.
///
/// # Cancel safety
///
/// Dropping it midway may leave a lock under `prefix` held until its TTL expires.
pub async fn announced_wait_is_woken(
    holder: &Arc<dyn LockStore>,
    waiter: &Arc<dyn LockStore>,
    prefix: &str,
) {
    let key = key(prefix, "announce");
    let wait = Duration::from_secs(30);
    let lease = holder
        .try_acquire(&LockRequest::new(&key, "holder", wait))
        .await
        .expect("try_acquire")
        .expect("free");
    let mut watch = waiter.watch(&key).expect("the store watches keys");
    assert!(
        waiter
            .announce_wait(&key, wait)
            .await
            .expect("announce_wait"),
        "held"
    );
    assert!(holder.release(&lease).await.expect("release"));
    tokio::time::timeout(Duration::from_secs(10), watch.changed())
        .await
        .expect("the announced waiter's watch wakes on the other store's release");
    assert!(
        !waiter
            .announce_wait(&key, wait)
            .await
            .expect("announce_wait"),
        "a released key is reported free"
    );
    assert!(
        !waiter
            .announce_wait(&self::key(prefix, "never-held"), wait)
            .await
            .expect("announce_wait"),
        "a key never held is reported free"
    );
}

/// A watch reports every change made after it was created, even one made before a
/// polling store first looks at the key: a release (while the watcher has announced its
/// wait), a take-over and a forced release, each made through `other` at once after
/// `watching` made the watch, wake the watch. `watching` and `other` are two instances of
/// one store, as two processes have (the same instance for a store with no other process).
///
/// # Cancel safety
///
/// Dropping it midway may leave locks under `prefix` held until their TTLs expire.
pub async fn watch_reports_changes_made_right_after_it(
    watching: &Arc<dyn LockStore>,
    other: &Arc<dyn LockStore>,
    prefix: &str,
) {
    let ttl = Duration::from_secs(30);
    let woken = async |watch: &mut crate::LockWatch, what: &str| {
        tokio::time::timeout(Duration::from_secs(10), watch.changed())
            .await
            .unwrap_or_else(|_| panic!("{what} right after the watch was made never woke it"));
    };

    // A release by the holder, seen by a waiter that has announced its wait.
    let key = key(prefix, "watch-release");
    let lease = other
        .try_acquire(&LockRequest::new(&key, "holder", ttl))
        .await
        .expect("try_acquire")
        .expect("free");
    let mut watch = watching.watch(&key).expect("the store watches keys");
    assert!(
        watching
            .announce_wait(&key, ttl)
            .await
            .expect("announce_wait"),
        "held"
    );
    assert!(other.release(&lease).await.expect("release"));
    woken(&mut watch, "a release").await;

    // A take-over and a forced release, seen by the holder.
    for force in [false, true] {
        let key = self::key(prefix, if force { "watch-force" } else { "watch-take" });
        let lease = watching
            .try_acquire(&LockRequest::new(&key, "holder", ttl))
            .await
            .expect("try_acquire")
            .expect("free");
        let mut watch = watching.watch(&key).expect("the store watches keys");
        if force {
            assert!(other.force_release(&key).await.expect("force_release"));
            woken(&mut watch, "a forced release").await;
        } else {
            let taker = other
                .take_over(&LockRequest::new(&key, "taker", ttl))
                .await
                .expect("take_over");
            woken(&mut watch, "a take-over").await;
            assert!(other.release(&taker).await.expect("release"));
        }
        let _ = watching.release(&lease).await;
    }
}
