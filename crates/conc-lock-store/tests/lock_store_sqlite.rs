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

/// A change made through another store on the file (another process) right after a watch
/// was made, before the watcher's first poll, wakes the watch. The poll interval is long
/// here, so every change lands before the first poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_before_the_first_poll_wakes_the_watch() {
    use conc_lock_store::SqliteConfig;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("watch.db");
    let config =
        || SqliteConfig::default().with_watch_interval(std::time::Duration::from_millis(300));
    let watching: Arc<dyn LockStore> =
        Arc::new(SqliteLockStore::open_with(&path, config()).await.unwrap());
    let other: Arc<dyn LockStore> =
        Arc::new(SqliteLockStore::open_with(&path, config()).await.unwrap());
    for round in 0..3 {
        conformance::watch_reports_changes_made_right_after_it(
            &watching,
            &other,
            &format!("sqlite-watch-{round}"),
        )
        .await;
    }
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

/// A read-only store (what `conc locks list` opens) sees the leases, writes nothing, and
/// never creates a file.
#[tokio::test]
async fn a_read_only_store_looks_without_writing() {
    use conc_lock_store::{LockRequest, LockStore, SqliteConfig, SqliteLockStore};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("locks.db");
    let read_only = || SqliteConfig::default().with_read_only(true);
    assert!(
        SqliteLockStore::open_with(&path, read_only())
            .await
            .is_err()
    );
    assert!(!path.exists(), "a read-only open creates nothing");
    let writer = SqliteLockStore::open(&path).await.unwrap();
    let request = LockRequest::new("k", "holder", std::time::Duration::from_secs(30));
    let lease = writer.try_acquire(&request).await.unwrap().unwrap();
    let looker = SqliteLockStore::open_with(&path, read_only())
        .await
        .unwrap();
    assert_eq!(
        looker.inspect("k").await.unwrap().unwrap().fence,
        lease.fence
    );
    assert_eq!(looker.list("", 10).await.unwrap().len(), 1);
    let other = LockRequest::new("k2", "o", std::time::Duration::from_secs(30));
    assert!(
        looker.try_acquire(&other).await.is_err(),
        "it writes nothing"
    );
    let empty = dir.path().join("empty.db");
    rusqlite::Connection::open(&empty)
        .unwrap()
        .execute_batch("CREATE TABLE unrelated (x INTEGER)")
        .unwrap();
    let error = SqliteLockStore::open_with(&empty, read_only())
        .await
        .unwrap_err();
    assert!(error.to_string().contains("no conc lock table"), "{error}");
}

/// Every durability level opens and works.
#[tokio::test]
async fn every_synchronous_level_works() {
    use conc_lock_store::{SqliteConfig, SqliteSynchronous};
    let dir = tempfile::tempdir().unwrap();
    for (n, level) in [
        SqliteSynchronous::Off,
        SqliteSynchronous::Normal,
        SqliteSynchronous::Full,
        SqliteSynchronous::Extra,
    ]
    .into_iter()
    .enumerate()
    {
        let config = SqliteConfig::default().with_synchronous(level);
        let store = SqliteLockStore::open_with(dir.path().join(format!("{n}.db")), config)
            .await
            .unwrap();
        let request = LockRequest::new("k", "o", std::time::Duration::from_secs(5));
        let lease = store.try_acquire(&request).await.unwrap().unwrap();
        assert!(store.release(&lease).await.unwrap());
    }
}
