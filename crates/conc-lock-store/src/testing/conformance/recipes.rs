//! The recipes on the store: [`Semaphore`] admits n holders, [`FairLock`] serves in
//! arrival order.

use std::sync::Arc;
use std::time::Duration;

use crate::error::LockError;
use crate::recipe::{FairLock, Semaphore};
use crate::request::LockRequest;
use crate::store::LockStore;

use super::key;

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
