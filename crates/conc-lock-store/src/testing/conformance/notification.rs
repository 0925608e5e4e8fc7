//! Waking other processes: an announced wait is woken by a release, and a watch reports
//! every change made after it was created.

use std::sync::Arc;
use std::time::Duration;

use crate::request::LockRequest;
use crate::store::LockStore;

use super::key;

/// For stores that tell other processes of a release ([`LockStore::announce_wait`] and
/// [`watch`](LockStore::watch)), on two instances of the store, as two processes have: an
/// announcement on a held key says "held" and the holder's release then wakes the waiter's
/// watch; a released key, and a key never held, are reported free. Not in [`run_all`](super::run_all):
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
    let woken = async |watch: &mut crate::notify::LockWatch, what: &str| {
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
