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

/// The watcher looks when the file changes, not only at its poll: with a poll interval of
/// ten minutes, a watch still sees another store's (another process's) acquire, and then
/// its release, within seconds, through the operating system's notification.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_to_the_file_wakes_the_watch_before_the_poll() {
    use conc_lock_store::{LockRequest, SqliteConfig};
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.db");
    let config = || SqliteConfig::default().with_watch_interval(Duration::from_secs(600));
    let watching: Arc<dyn LockStore> =
        Arc::new(SqliteLockStore::open_with(&path, config()).await.unwrap());
    let other: Arc<dyn LockStore> =
        Arc::new(SqliteLockStore::open_with(&path, config()).await.unwrap());
    let mut watch = watching
        .watch("notified")
        .expect("SQLite stores watch keys");
    let lease = other
        .try_acquire(&LockRequest::new(
            "notified",
            "other",
            Duration::from_secs(60),
        ))
        .await
        .unwrap()
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), watch.changed())
        .await
        .expect("the acquire in another store wakes the watch long before the 10-minute poll");
    assert!(other.release(&lease).await.unwrap());
    tokio::time::timeout(Duration::from_secs(10), watch.changed())
        .await
        .expect("the release in another store wakes the watch long before the 10-minute poll");
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

/// Fences go forward without the clock's help: a released row keeps its fence for the key's
/// next grant, and a deleted row (cleanup, a forced release) leaves its fence in the floor
/// that a grant of a key with no row starts above. Fences far above the clock prove it.
#[tokio::test]
async fn fences_go_forward_from_the_row_and_the_floor_not_the_clock() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fences.db");
    let store = SqliteLockStore::open(&path).await.unwrap();
    let raw = rusqlite::Connection::open(&path).unwrap();
    raw.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
    let request = LockRequest::new("k", "owner", std::time::Duration::from_secs(5));
    let first = store.try_acquire(&request).await.unwrap().unwrap();
    assert!(store.release(&first).await.unwrap());
    let high: i64 = 9_000_000_000_000_000;
    raw.execute("UPDATE conc_locks SET fence = ?1 WHERE key = 'k'", [high])
        .unwrap();
    let from_row = store.try_acquire(&request).await.unwrap().unwrap();
    assert_eq!(from_row.fence, high as u64 + 1, "one more than the row's");
    assert!(store.release(&from_row).await.unwrap());
    raw.execute("DELETE FROM conc_locks WHERE key = 'k'", [])
        .unwrap();
    let from_floor = store.try_acquire(&request).await.unwrap().unwrap();
    assert_eq!(
        from_floor.fence,
        high as u64 + 2,
        "one more than the floor's"
    );
    // A released row is no lease: not inspected, not counted by cleanup, and gone after it.
    assert!(store.release(&from_floor).await.unwrap());
    assert!(store.inspect("k").await.unwrap().is_none());
    assert_eq!(store.cleanup_expired().await.unwrap(), 0);
    let rows: i64 = raw
        .query_row("SELECT count(*) FROM conc_locks", [], |row| row.get(0))
        .unwrap();
    assert_eq!(rows, 0);
}

/// A file of schema version 1 (a store-wide counter moved by triggers on every grant) is
/// migrated on open: fences go on above its counter, and version 1's grant statement (in a
/// process still running it) fails rather than draw a fence from a counter that no longer
/// follows every grant.
#[tokio::test]
async fn a_version_1_file_is_migrated_and_its_fences_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v1.db");
    let raw = rusqlite::Connection::open(&path).unwrap();
    raw.execute_batch(
        "PRAGMA journal_mode = WAL;
         CREATE TABLE conc_locks (
             key TEXT PRIMARY KEY, owner TEXT NOT NULL, token TEXT NOT NULL,
             fence INTEGER NOT NULL, metadata TEXT NOT NULL,
             acquired_at INTEGER NOT NULL, expires_at INTEGER NOT NULL
         ) WITHOUT ROWID;
         CREATE INDEX conc_locks_expires_at ON conc_locks (expires_at);
         CREATE TABLE conc_lock_fence (id INTEGER PRIMARY KEY CHECK (id = 0), value INTEGER NOT NULL);
         INSERT INTO conc_lock_fence (id, value) VALUES (0, 8000000000000000);
         CREATE TRIGGER conc_locks_fence_on_insert AFTER INSERT ON conc_locks
         BEGIN UPDATE conc_lock_fence SET value = NEW.fence WHERE id = 0 AND value < NEW.fence; END;
         CREATE TRIGGER conc_locks_fence_on_update AFTER UPDATE OF fence ON conc_locks
         BEGIN UPDATE conc_lock_fence SET value = NEW.fence WHERE id = 0 AND value < NEW.fence; END;
         PRAGMA user_version = 1;",
    )
    .unwrap();
    let store = SqliteLockStore::open(&path).await.unwrap();
    let version: i64 = raw
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .unwrap();
    assert_eq!(version, 2);
    let lease = store
        .try_acquire(&LockRequest::new(
            "new",
            "owner",
            std::time::Duration::from_secs(5),
        ))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(lease.fence, 8_000_000_000_000_001);
    let old_grant = raw.execute(
        "INSERT INTO conc_locks (key, owner, token, fence, metadata, acquired_at, expires_at)
         VALUES ('old', 'o', 't', MAX((SELECT value + 1 FROM conc_lock_fence WHERE id = 0), 1), '', 0, 1)",
        [],
    );
    assert!(
        old_grant.is_err(),
        "version 1's grant fails after the migration"
    );
}
