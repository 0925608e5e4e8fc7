//! The recipes that coordinate more than one holder: leader election, the reader-writer
//! lock and several locks at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use conc_core::AbortController;

use crate::recipe::{Election, ElectionConfig, MultiLock, RwLock};
use crate::request::LockRequest;
use crate::store::LockStore;

use super::key;

/// Waits up to `limit` for `check` to hold, looking every 10 ms.
async fn eventually<F: AsyncFn() -> bool>(limit: Duration, what: &str, check: F) {
    let started = tokio::time::Instant::now();
    while !check().await {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One leader at a time: of two candidates one leads and the other waits; when the leader
/// resigns the other leads at once (told, not polled: well within the retry period), with
/// a higher fence; a forced release of the election's lock fires the leader's `lost`;
/// `observe` reports each change; `run` works while leading and resigns on shutdown.
///
/// # Cancel safety
///
/// Dropping it midway may leave the election's lock held until its lease runs out.
pub async fn election_has_one_leader(store: &Arc<dyn LockStore>, prefix: &str) {
    let config = ElectionConfig::new(
        Duration::from_secs(6),
        Duration::from_secs(4),
        Duration::from_secs(2),
    );
    let election = Election::new(store.clone(), key(prefix, "election"), config).expect("config");
    let mut observer = election.observe();
    assert_eq!(
        observer.next().await.expect("observe"),
        None,
        "nobody leads yet"
    );

    let a = election.campaign("a").await.expect("a leads");
    let first = observer.next().await.expect("observe").expect("a leads");
    assert_eq!((first.identity.as_str(), first.fence), ("a", a.fence()));
    assert!(
        election.try_campaign("b").await.expect("try").is_none(),
        "one leader at a time"
    );
    let candidate = {
        let election = election.clone();
        tokio::spawn(async move { election.campaign("b").await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!candidate.is_finished(), "b waits while a leads");
    let resigned = tokio::time::Instant::now();
    assert!(a.resign().await.expect("resign"));
    let b = tokio::time::timeout(Duration::from_secs(2), candidate)
        .await
        .expect("b leads once a resigned")
        .expect("task")
        .expect("campaign");
    assert!(
        resigned.elapsed() < Duration::from_millis(1500),
        "b was told of the resignation, it did not wait for its retry period: {:?}",
        resigned.elapsed()
    );
    assert!(
        b.fence() > first.fence,
        "each leadership has a higher fence"
    );
    let second = observer.next().await.expect("observe").expect("b leads");
    assert_eq!((second.identity.as_str(), second.fence), ("b", b.fence()));

    // An operator frees the lock: the leader learns at once.
    assert!(store.force_release(&election.key()).await.expect("force"));
    tokio::time::timeout(Duration::from_secs(2), b.lost().aborted())
        .await
        .expect("the deposed leader's lost() fired");
    assert!(!b.resign().await.expect("resign"), "already lost");

    // `run`: works while leading, resigns on shutdown.
    let shutdown = AbortController::new();
    let worked = Arc::new(AtomicU32::new(0));
    let runner = {
        let (election, signal, worked) = (election.clone(), shutdown.signal(), worked.clone());
        tokio::spawn(async move {
            election
                .run("c", &signal, |fence, _lost| {
                    let worked = worked.clone();
                    async move {
                        assert!(fence > 0);
                        worked.fetch_add(1, Ordering::SeqCst);
                        std::future::pending::<()>().await;
                    }
                })
                .await
        })
    };
    eventually(Duration::from_secs(5), "c leads", async || {
        election
            .leader()
            .await
            .expect("leader")
            .is_some_and(|l| l.identity == "c")
    })
    .await;
    eventually(
        Duration::from_secs(5),
        "c works while leading",
        async || worked.load(Ordering::SeqCst) == 1,
    )
    .await;
    shutdown.abort(conc_core::AbortReason::user("shutdown"));
    tokio::time::timeout(Duration::from_secs(5), runner)
        .await
        .expect("run returned on shutdown")
        .expect("task")
        .expect("run");
    assert!(
        election.leader().await.expect("leader").is_none(),
        "resigned on shutdown"
    );
}

/// Many readers or one writer, writer first: two readers share the lock; a writer waits
/// for them, and while it waits no new reader gets in; once the readers leave the writer
/// holds it alone; a forced release frees every holder.
///
/// # Cancel safety
///
/// Dropping it midway may leave its keys held until their TTLs expire.
pub async fn rw_lock_shares_reads_and_serves_writers_first(
    store: &Arc<dyn LockStore>,
    prefix: &str,
) {
    let lock = RwLock::new(store.clone(), 8).expect("rw lock");
    let name = key(prefix, "rw");
    let ttl = Duration::from_secs(10);
    let request = |owner: &str| LockRequest::new(name.as_str(), owner, ttl);
    let r1 = lock
        .try_read(&request("r1"))
        .await
        .expect("read")
        .expect("free");
    let r2 = lock
        .try_read(&request("r2"))
        .await
        .expect("read")
        .expect("shared");
    assert_eq!(lock.readers(&name).await.expect("readers").len(), 2);
    assert!(
        lock.try_write(&request("w"))
            .await
            .expect("write")
            .is_none(),
        "no writer while readers read"
    );
    assert!(
        lock.writer(&name).await.expect("writer").is_none(),
        "a failed try leaves nothing"
    );

    let writer = {
        let (lock, request) = (lock.clone(), request("w"));
        tokio::spawn(async move { lock.write(&request, Duration::from_secs(10)).await })
    };
    eventually(Duration::from_secs(5), "the writer waits", async || {
        lock.writer(&name).await.expect("writer").is_some()
    })
    .await;
    assert!(
        lock.try_read(&request("r3")).await.expect("read").is_none(),
        "a waiting writer holds new readers off"
    );
    assert!(lock.release(&r1).await.expect("release"));
    assert!(lock.release(&r2).await.expect("release"));
    let w = tokio::time::timeout(Duration::from_secs(5), writer)
        .await
        .expect("the writer got the lock once the readers left")
        .expect("task")
        .expect("write");
    assert!(lock.readers(&name).await.expect("readers").is_empty());
    assert!(lock.try_read(&request("r4")).await.expect("read").is_none());
    assert!(
        lock.try_write(&request("w2"))
            .await
            .expect("write")
            .is_none()
    );
    assert!(lock.release(&w).await.expect("release"));

    let r = lock
        .try_read(&request("r5"))
        .await
        .expect("read")
        .expect("free again");
    assert_eq!(lock.force_release(&name).await.expect("force"), 1);
    assert!(!lock.release(&r).await.expect("release"), "freed by force");
}

/// Several locks all or none, in one canonical order: a set is held together with a fence
/// per key; a set with one held key takes none (what it took first is released); two
/// callers taking overlapping sets in opposite orders never deadlock.
///
/// # Cancel safety
///
/// Dropping it midway may leave its keys held until their TTLs expire.
pub async fn multi_lock_takes_all_or_none(store: &Arc<dyn LockStore>, prefix: &str) {
    let multi = MultiLock::new(store.clone());
    let template = LockRequest::new("", "multi", Duration::from_secs(10));
    let [k1, k2, k3, k4] = ["m1", "m2", "m3", "m4"].map(|n| key(prefix, n));
    let held = multi
        .try_acquire(&[&k3, &k1, &k2, &k1], &template)
        .await
        .expect("try")
        .expect("free");
    assert_eq!(held.keys(), [k1.as_str(), k2.as_str(), k3.as_str()]);
    for k in [&k1, &k2, &k3] {
        assert!(held.fence(k).is_some_and(|f| f > 0));
        assert!(store.is_locked(k).await.expect("is_locked"));
    }
    assert!(
        multi
            .try_acquire(&[&k4, &k3], &template)
            .await
            .expect("try")
            .is_none(),
        "one key held: none taken"
    );
    assert!(
        !store.is_locked(&k4).await.expect("is_locked"),
        "what it took before the held key was released"
    );
    let error = multi
        .acquire(&[&k4, &k2], &template, Duration::from_millis(200))
        .await
        .expect_err("k2 is held");
    assert!(error.to_string().contains(&k2), "{error}");
    assert!(!store.is_locked(&k4).await.expect("is_locked"));
    assert!(multi.release(&held).await.expect("release"));

    // Opposite orders, overlapping sets, contended: both finish.
    let rounds = 10;
    let tasks: Vec<_> = [vec![k1.clone(), k2.clone()], vec![k2.clone(), k1.clone()]]
        .into_iter()
        .map(|keys| {
            let (multi, template) = (multi.clone(), template.clone());
            tokio::spawn(async move {
                for _ in 0..rounds {
                    let held = multi
                        .acquire(&keys, &template, Duration::from_secs(10))
                        .await
                        .expect("acquire");
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    multi.release(&held).await.expect("release");
                }
            })
        })
        .collect();
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("no deadlock")
            .expect("task");
    }
    assert!(
        MultiLock::new(store.clone())
            .try_acquire(&[] as &[&str], &template)
            .await
            .is_err()
    );
}
