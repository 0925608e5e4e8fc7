//! The conformance suite on Redis (`CONC_TEST_REDIS_URL`); the fault tests are in
//! `lock_store_redis_faults.rs`. Each run uses
//! its own key prefix and deletes its keys at the end.

#![cfg(all(feature = "redis", feature = "conformance"))]

use conc_lock_store::conformance;
use std::sync::Arc;

mod redis_common;

use redis_common::{admin, prefix, scrub, store, url};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_conforms() {
    let Some(url) = url() else { return };
    let prefix = prefix("conform");
    let mut admin = admin(&url).await;
    conformance::run_all(Arc::new(store(&url, &prefix).await), "redis").await;
    scrub(&mut admin, &prefix).await;
}

/// Metadata is one hash field per entry (`m:<name>`), so `HGET` reads one; a hash written
/// by an earlier version, with its metadata as one JSON `metadata` field, still reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_is_one_hash_field_per_entry_and_old_hashes_read() {
    use std::time::Duration;

    use conc_lock_store::{LockRequest, LockStore};

    let Some(url) = url() else { return };
    let prefix = prefix("meta");
    let mut admin = admin(&url).await;
    let store = store(&url, &prefix).await;
    let request = LockRequest::new("conv", "owner", Duration::from_secs(30))
        .with_metadata("user_id", "u-1")
        .with_metadata("note", "a=b\nc");
    let lease = store.try_acquire(&request).await.unwrap().expect("free");
    let hash = format!("{prefix}lock:{{conv}}");
    let user: Option<String> = redis::cmd("HGET")
        .arg(&hash)
        .arg("m:user_id")
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(user.as_deref(), Some("u-1"));
    // As an earlier version wrote it: the JSON in one field, no `m:` fields.
    let _: () = redis::cmd("HDEL")
        .arg(&hash)
        .arg("m:user_id")
        .arg("m:note")
        .query_async(&mut admin)
        .await
        .unwrap();
    let _: () = redis::cmd("HSET")
        .arg(&hash)
        .arg("metadata")
        .arg(r#"{"user_id":"u-0"}"#)
        .query_async(&mut admin)
        .await
        .unwrap();
    let info = store.inspect("conv").await.unwrap().expect("held");
    assert_eq!(
        info.metadata,
        [("user_id".to_owned(), "u-0".to_owned())].into()
    );
    store.release(&lease).await.unwrap();
    scrub(&mut admin, &prefix).await;
}

/// A release is published only when a process has announced a wait (the shared check, on
/// two store instances, each with its own subscription); and the announcement survives the
/// key changing hands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_wakes_a_process_that_announced_its_wait() {
    use std::time::Duration;

    use conc_lock_store::{LockRequest, LockStore};

    let Some(url) = url() else { return };
    let prefix = prefix("announce");
    let mut admin = admin(&url).await;
    let holder: Arc<dyn LockStore> = Arc::new(store(&url, &prefix).await);
    let waiter: Arc<dyn LockStore> = Arc::new(store(&url, &prefix).await);
    conformance::announced_wait_is_woken(&holder, &waiter, "redis").await;
    conformance::watch_reports_changes_made_right_after_it(&waiter, &holder, "redis").await;
    let request = LockRequest::new("conv", "holder", Duration::from_secs(30));
    let lease = holder.try_acquire(&request).await.unwrap().expect("free");
    let mut watch = waiter.watch("conv").expect("Redis watches");
    assert!(
        waiter
            .announce_wait("conv", Duration::from_secs(30))
            .await
            .unwrap()
    );
    // The key changes hands by a take-over; the announced wait carries over to the new
    // holder's lease, whose release wakes the waiter too.
    let taken = holder
        .take_over(&LockRequest::new("conv", "second", Duration::from_secs(30)))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), watch.changed())
        .await
        .expect("a take-over always wakes the watchers");
    assert!(holder.release(&taken).await.unwrap());
    tokio::time::timeout(Duration::from_secs(10), watch.changed())
        .await
        .expect("the announced waiter's watch wakes on the other store's release");
    assert!(
        !waiter
            .announce_wait("conv", Duration::from_secs(30))
            .await
            .unwrap(),
        "a released key is reported free"
    );
    let _ = lease;
    scrub(&mut admin, &prefix).await;
}
