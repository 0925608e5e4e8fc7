//! Bad input a newcomer writes (a TTL inside the drift margin, a mistyped URL option, a
//! closed port) gets a typed error that says what to do; `purge` empties a namespace, and
//! on the shared Redis (`CONC_TEST_REDIS_URL`) leaves no key of its prefix behind.

use std::sync::Arc;
use std::time::Duration;

use conc_lock_store::{LockError, LockRequest, LockStore, MemoryLockStore};

#[tokio::test]
async fn a_ttl_inside_the_drift_margin_is_refused_with_the_reason() {
    let store = MemoryLockStore::new();
    for ttl in [
        Duration::from_millis(1),
        Duration::from_millis(2),
        Duration::from_millis(6),
    ] {
        let error = store
            .try_acquire(&LockRequest::new("k", "o", ttl))
            .await
            .unwrap_err();
        assert!(
            matches!(error, LockError::TtlWithinMargin { .. }),
            "{ttl:?}: {error}"
        );
        assert!(error.to_string().contains("drift margin"), "{error}");
        assert!(!error.is_transient());
    }
    assert!(!store.is_locked("k").await.unwrap(), "nothing was taken");
    // A margin of its own makes a short TTL usable.
    let lease = store
        .try_acquire(
            &LockRequest::new("k", "o", Duration::from_millis(10))
                .with_drift_margin(Duration::from_millis(1)),
        )
        .await
        .unwrap();
    assert!(lease.is_some());
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn a_bad_postgres_url_is_a_permanent_error_naming_the_option() {
    for url in [
        "postgres://postgres@127.0.0.1:1/test?shcema=x",
        "postgres://postgres@127.0.0.1:1/test?port=notaport",
    ] {
        let error = conc_lock_store::PostgresLockStore::connect(
            url,
            conc_lock_store::PostgresConfig::default(),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(error, LockError::InvalidUrl { .. }),
            "{url}: {error}"
        );
        assert!(!error.is_transient(), "{url}: {error}");
    }
    let error = conc_lock_store::connect("postgres://postgres@127.0.0.1:1/test?shcema=x")
        .await
        .unwrap_err();
    assert!(error.to_string().contains("`shcema`"), "{error}");
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn redis_on_a_closed_port_is_refused_with_advice() {
    let port = conc_lock_store::servers::free_port().unwrap();
    let error = conc_lock_store::connect(&format!("redis://127.0.0.1:{port}?connect_timeout=2"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            LockError::Connect {
                cause: conc_lock_store::ConnectFailure::Refused,
                ..
            }
        ),
        "{error}"
    );
    assert!(
        error.to_string().contains("is the server running"),
        "{error}"
    );
    let error = conc_lock_store::connect("redis://127.0.0.1:6379?prefx=app:")
        .await
        .unwrap_err();
    assert!(error.to_string().contains("`prefx`"), "{error}");
}

/// On Redis, `purge` removes every key of the store's prefix, its restart-guard marker
/// included: a test that used the shared server leaves it as it found it.
#[cfg(feature = "redis")]
#[tokio::test]
async fn purge_leaves_no_key_of_the_prefix_on_redis() {
    let Ok(url) = std::env::var("CONC_TEST_REDIS_URL") else {
        println!("skipped: CONC_TEST_REDIS_URL is not set, so purge on Redis is not tested");
        return;
    };
    let prefix = format!("conc-purge-{}:", std::process::id());
    let separator = if url.contains('?') { '&' } else { '?' };
    let store = conc_lock_store::connect(&format!("{url}{separator}prefix={prefix}"))
        .await
        .unwrap();
    purge_empties_the_store(store.clone()).await;
    store.purge(true).await.unwrap();
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let left: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut connection)
        .await
        .unwrap();
    assert!(left.is_empty(), "keys left behind: {left:?}");
}

/// `purge` refuses while a lease is live, frees it with `force`, and leaves no lease.
async fn purge_empties_the_store(store: Arc<dyn LockStore>) {
    let request = LockRequest::new("purge:1", "o", Duration::from_secs(30));
    let lease = store.try_acquire(&request).await.unwrap().unwrap();
    let error = store.purge(false).await.unwrap_err();
    assert!(matches!(error, LockError::Unsafe { .. }), "{error}");
    assert!(
        store.is_locked("purge:1").await.unwrap(),
        "nothing was removed"
    );
    assert!(store.purge(true).await.unwrap() >= 1);
    assert!(!store.is_locked("purge:1").await.unwrap());
    assert!(store.list("", 10).await.unwrap().is_empty());
    assert!(
        !store.release(&lease).await.unwrap(),
        "the purged lease is gone"
    );
    store.purge(false).await.unwrap();
}

#[tokio::test]
async fn purge_empties_memory_and_sqlite_stores() {
    purge_empties_the_store(Arc::new(MemoryLockStore::new())).await;
    let dir = tempfile::tempdir().unwrap();
    let store = conc_lock_store::SqliteLockStore::open(dir.path().join("locks.db"))
        .await
        .unwrap();
    let store: Arc<dyn LockStore> = Arc::new(store);
    purge_empties_the_store(store.clone()).await;
    // Fences stay forward after a purge.
    let request = LockRequest::new("purge:1", "o", Duration::from_secs(30));
    let first = store.try_acquire(&request).await.unwrap().unwrap();
    store.purge(true).await.unwrap();
    let second = store.try_acquire(&request).await.unwrap().unwrap();
    assert!(second.fence > first.fence);
}
