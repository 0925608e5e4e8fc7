//! What a store tells about its locks, and what it refuses: `inspect`, `list`,
//! `cleanup_expired`, the holder named in a wait's timeout, and bad input.

use std::sync::Arc;
use std::time::Duration;

use crate::error::LockError;
use crate::request::{LockRequest, MAX_KEY_BYTES};
use crate::store::LockStore;

use super::{coarse_extra, key};

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
    tokio::time::sleep(
        Duration::from_millis(150) + coarse_extra(&**store, Duration::from_millis(50)),
    )
    .await;
    if store.removes_expired_leases() {
        // The store removed them itself, at their expiry.
        for n in 0..3 {
            let key = key(prefix, &format!("cleanup:{n}"));
            assert!(
                !store.is_locked(&key).await.expect("is_locked"),
                "{key} expired"
            );
        }
    } else {
        assert_eq!(store.cleanup_expired().await.expect("cleanup"), 3);
    }
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
