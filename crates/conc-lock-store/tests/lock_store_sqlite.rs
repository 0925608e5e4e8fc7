//! The conformance suite on the SQLite backend, in a file and in memory; schema checks.

use std::sync::Arc;

use conc_lock_store::{LockError, LockRequest, LockStore, SqliteLockStore, conformance};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_file_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteLockStore::open(dir.path().join("locks.db"))
        .await
        .unwrap();
    conformance::run_all(Arc::new(store), "sqlite-file").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_memory_store_conforms() {
    let store = SqliteLockStore::open(":memory:").await.unwrap();
    conformance::run_all(Arc::new(store), "sqlite-memory").await;
}

/// Two stores on one file see each other's locks, and fences keep rising across them.
#[tokio::test]
async fn two_stores_on_one_file_share_locks_and_fences() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.db");
    let a = SqliteLockStore::open(&path).await.unwrap();
    let b = SqliteLockStore::open(&path).await.unwrap();
    let ttl = std::time::Duration::from_secs(5);
    let lease = a
        .try_acquire(&LockRequest::new("k", "a", ttl))
        .await
        .unwrap()
        .unwrap();
    assert!(
        b.try_acquire(&LockRequest::new("k", "b", ttl))
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(b.inspect("k").await.unwrap().unwrap().owner, "a");
    assert!(a.release(&lease).await.unwrap());
    let next = b
        .try_acquire(&LockRequest::new("k", "b", ttl))
        .await
        .unwrap()
        .unwrap();
    assert!(next.fence > lease.fence);
}

#[tokio::test]
async fn an_unopenable_path_is_a_clear_error() {
    let error = SqliteLockStore::open("/nonexistent-dir/for/sure/locks.db")
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            LockError::Backend {
                backend: "sqlite",
                ..
            }
        ),
        "{error}"
    );
    assert!(error.to_string().contains("sqlite lock store failed"));
}
