//! The conformance suite and fault tests on PostgreSQL (`CONC_TEST_POSTGRES_URL`). Each run
//! uses its own schema and drops it at the end.

// A test may panic on an unexpected row; library code may not (clippy.toml).
#![allow(clippy::disallowed_methods)]
#![cfg(all(feature = "postgres", feature = "conformance"))]

use std::sync::Arc;
use std::time::Duration;

use conc_lock_store::{
    LockGuard, LockRequest, LockStore, PostgresConfig, PostgresLockStore, conformance,
};

fn url() -> Option<String> {
    match std::env::var("CONC_TEST_POSTGRES_URL") {
        Ok(url) => Some(url),
        Err(_) => {
            println!(
                "skipped: CONC_TEST_POSTGRES_URL is not set, so the PostgreSQL lock store is not tested"
            );
            None
        }
    }
}

fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("conc_test_{name}_{}_{nanos}", std::process::id())
}

async fn admin(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_postgres::connect(url, tokio_postgres::NoTls),
    )
    .await
    .expect("PostgreSQL answers within 10 s (CONC_TEST_POSTGRES_URL is set, so it must)")
    .expect("connect to PostgreSQL");
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            eprintln!("admin connection ended: {e}");
        }
    });
    client
}

/// Drops a test's schema, and its lock table with it.
async fn drop_schema(admin: &tokio_postgres::Client, schema: &str) {
    admin
        .batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
        .await
        .unwrap();
}

async fn store(url: &str, schema: &str) -> PostgresLockStore {
    let config = PostgresConfig::default()
        .with_schema(schema.to_owned())
        .with_application_name(schema.to_owned());
    PostgresLockStore::connect(url, config)
        .await
        .expect("connect the store")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_conforms() {
    let Some(url) = url() else { return };
    let schema = unique("conform");
    let admin = admin(&url).await;
    conformance::run_all(Arc::new(store(&url, &schema).await), "pg").await;
    drop_schema(&admin, &schema).await;
}

/// A store over a pool the service already has conforms too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_on_a_shared_pool_conforms() {
    let Some(url) = url() else { return };
    let schema = unique("pool");
    let admin = admin(&url).await;
    let config = conc_lock_store::PostgresConfig::default().with_schema(schema.clone());
    let pool = conc_lock_store::postgres_pool(&url, &config).unwrap();
    let store = conc_lock_store::PostgresLockStore::from_pool(pool, config)
        .await
        .unwrap();
    conformance::run_all(Arc::new(store), "pg-pool").await;
    drop_schema(&admin, &schema).await;
}

/// `pg_terminate_backend` on the store's connections while leases are held and renewing:
/// the store recovers on fresh connections, no second holder appears, and `lost()` does not
/// fire, because no lease really lapsed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_connections_are_replaced_without_losing_leases() {
    let Some(url) = url() else { return };
    let schema = unique("terminate");
    let admin = admin(&url).await;
    let store: Arc<dyn LockStore> = Arc::new(store(&url, &schema).await);
    let mut guards = Vec::new();
    for n in 0..3 {
        let request = LockRequest::new(format!("conv:{n}"), "holder", Duration::from_millis(900));
        guards.push(
            LockGuard::acquire(store.clone(), request, Duration::from_secs(2))
                .await
                .unwrap(),
        );
    }
    for _ in 0..4 {
        let killed: Vec<tokio_postgres::Row> = admin
            .query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
                &[&schema],
            )
            .await
            .unwrap();
        assert!(!killed.is_empty(), "the store had connections to terminate");
        tokio::time::sleep(Duration::from_millis(400)).await;
        let intruder = LockRequest::new("conv:0", "intruder", Duration::from_secs(5));
        assert!(
            store.try_acquire(&intruder).await.unwrap().is_none(),
            "no second holder"
        );
    }
    for guard in &guards {
        assert!(
            !guard.lost().is_aborted(),
            "lost() fired but the lease never lapsed"
        );
    }
    for guard in guards {
        assert!(guard.release().await.unwrap());
    }
    drop_schema(&admin, &schema).await;
}

#[tokio::test]
async fn bad_names_and_urls_are_clear_errors() {
    let error = PostgresLockStore::connect("not a url", PostgresConfig::default())
        .await
        .unwrap_err();
    assert!(error.to_string().contains("bad PostgreSQL URL"), "{error}");
    let config = PostgresConfig::default().with_table("Robert'); DROP TABLE students;--");
    let error = PostgresLockStore::connect("postgres://u@127.0.0.1/x", config)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("invalid table name"), "{error}");
}

/// A lock table made by an earlier version keeps metadata as TEXT: JSON, older
/// `name=value` lines, or text neither can read. Connecting converts the column to JSONB
/// with every row rewritten as a JSON object (nothing dropped), the live leases read back
/// the same, and the metadata can be queried with PostgreSQL's JSON operators.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_metadata_from_earlier_versions_becomes_jsonb() {
    let Some(url) = url() else { return };
    let schema = unique("jsonb");
    let admin = admin(&url).await;
    admin
        .batch_execute(&format!(
            "CREATE SCHEMA \"{schema}\";
             CREATE TABLE \"{schema}\".conc_locks (
                 key TEXT PRIMARY KEY, owner TEXT NOT NULL, token TEXT NOT NULL,
                 fence BIGINT NOT NULL, acquired_at TIMESTAMPTZ NOT NULL,
                 expires_at TIMESTAMPTZ NOT NULL, metadata TEXT NOT NULL DEFAULT '');
             INSERT INTO \"{schema}\".conc_locks VALUES
                 ('json', 'a', 't1', 1, now(), now() + interval '1 hour', '{{\"user\":\"u-1\"}}'),
                 ('lines', 'b', 't2', 2, now(), now() + interval '1 hour', E'user=u-2\\nnote=a\\\\=b\\n'),
                 ('empty', 'c', 't3', 3, now(), now() + interval '1 hour', ''),
                 ('broken', 'd', 't4', 4, now(), now() + interval '1 hour', '{{not json');"
        ))
        .await
        .unwrap();
    let store = store(&url, &schema).await;
    let column: String = admin
        .query_one(
            &format!(
                "SELECT data_type FROM information_schema.columns
                 WHERE table_schema = '{schema}' AND table_name = 'conc_locks' AND column_name = 'metadata'"
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(column, "jsonb");
    let read = |key: &'static str| {
        let store = &store;
        async move { store.inspect(key).await.unwrap().expect("live").metadata }
    };
    assert_eq!(
        read("json").await.get("user").map(String::as_str),
        Some("u-1")
    );
    let lines = read("lines").await;
    assert_eq!(lines.get("user").map(String::as_str), Some("u-2"));
    assert_eq!(lines.get("note").map(String::as_str), Some("a=b"));
    assert!(read("empty").await.is_empty());
    assert_eq!(
        read("broken").await.get("_unreadable").map(String::as_str),
        Some("{not json")
    );
    // New leases write JSON that PostgreSQL can query.
    let request =
        LockRequest::new("fresh", "e", Duration::from_secs(60)).with_metadata("user", "u-3");
    let _lease = store.try_acquire(&request).await.unwrap().expect("free");
    let users: Vec<String> = admin
        .query(
            &format!(
                "SELECT metadata->>'user' FROM \"{schema}\".conc_locks
                 WHERE metadata ? 'user' ORDER BY key"
            ),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(users, ["u-3", "u-1", "u-2"]);
    // A second connect finds JSONB and leaves it alone.
    drop(store);
    let again = self::store(&url, &schema).await;
    assert_eq!(
        again.inspect("lines").await.unwrap().unwrap().metadata,
        lines
    );
    drop_schema(&admin, &schema).await;
}

/// A release notifies other processes only when one of them has announced a wait (the
/// shared check, on two stores as two processes have); and `acquire` through the other
/// store, which announces before it waits, gets the lock when it is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_wakes_a_process_that_announced_its_wait() {
    let Some(url) = url() else { return };
    let schema = unique("announce");
    let admin = admin(&url).await;
    let holder: Arc<dyn LockStore> = Arc::new(store(&url, &schema).await);
    let waiter: Arc<dyn LockStore> = Arc::new(store(&url, &schema).await);
    conformance::announced_wait_is_woken(&holder, &waiter, "pg").await;
    conformance::watch_reports_changes_made_right_after_it(&waiter, &holder, "pg").await;
    let request = LockRequest::new("conv", "holder", Duration::from_secs(30));
    let lease = holder.try_acquire(&request).await.unwrap().expect("free");
    let waiting = tokio::spawn(async move {
        waiter
            .acquire(
                &LockRequest::new("conv", "waiter", Duration::from_secs(30)),
                Duration::from_secs(20),
            )
            .await
    });
    tokio::task::yield_now().await;
    assert!(holder.release(&lease).await.unwrap());
    let taken = waiting.await.unwrap().unwrap();
    assert_eq!(taken.owner, "waiter");
    drop_schema(&admin, &schema).await;
}

/// A table made by an earlier version (with an index on `expires_at`) loses that index on
/// connect, so acquire and release update rows in place; `cleanup_expired` then walks the
/// table batch by batch through the key's index, and finds every expired lease and every
/// old tombstone however many batches the table takes (12 001 rows here: three batches).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_walks_every_batch_without_the_old_expiry_index() {
    let Some(url) = url() else { return };
    let schema = unique("cleanup");
    let admin = admin(&url).await;
    admin
        .batch_execute(&format!(
            "CREATE SCHEMA \"{schema}\";
             CREATE TABLE \"{schema}\".conc_locks (
                 key TEXT PRIMARY KEY, owner TEXT NOT NULL, token TEXT NOT NULL,
                 fence BIGINT NOT NULL, acquired_at TIMESTAMPTZ NOT NULL,
                 expires_at TIMESTAMPTZ NOT NULL);
             CREATE INDEX conc_locks_expires_at ON \"{schema}\".conc_locks (expires_at);
             -- 4 000 live leases, 4 000 expired ones, 4 000 tombstones an hour old.
             INSERT INTO \"{schema}\".conc_locks
                 SELECT 'k' || lpad(g::text, 6, '0'), 'o', 't' || g, g,
                     now() - interval '2 hours',
                     CASE g % 3 WHEN 0 THEN now() + interval '1 hour'
                                WHEN 1 THEN now() - interval '1 second'
                                ELSE now() - interval '1 hour' END
                 FROM generate_series(1, 12000) g;
             UPDATE \"{schema}\".conc_locks SET token = '' WHERE fence % 3 = 2;"
        ))
        .await
        .unwrap();
    let store = store(&url, &schema).await;
    let indexes: Vec<String> = admin
        .query(
            "SELECT indexname FROM pg_indexes WHERE schemaname = $1 ORDER BY indexname",
            &[&schema],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(indexes, ["conc_locks_pkey"]);
    // One more expired lease, past the last batch's first key.
    admin
        .execute(
            &format!(
                "INSERT INTO \"{schema}\".conc_locks (key, owner, token, fence, acquired_at, expires_at)
                 VALUES ('zz', 'o', 'tz', 1, now(), now() - interval '1 second')"
            ),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(store.cleanup_expired().await.unwrap(), 4_001);
    let count = |condition: &'static str| {
        let admin = &admin;
        let schema = &schema;
        async move {
            admin
                .query_one(
                    &format!("SELECT count(*) FROM \"{schema}\".conc_locks WHERE {condition}"),
                    &[],
                )
                .await
                .unwrap()
                .get::<_, i64>(0)
        }
    };
    // The hour-old tombstones are gone; the fresh ones stay (for their fences).
    assert_eq!(count("true").await, 8_001);
    assert_eq!(count("token = ''").await, 4_001);
    assert_eq!(store.cleanup_expired().await.unwrap(), 0);
    // Acquire and release on such a table: fences go on from the rows' own.
    let request = LockRequest::new("k000001", "a", Duration::from_secs(30));
    let lease = store
        .try_acquire(&request)
        .await
        .unwrap()
        .expect("expired, so free");
    assert!(lease.fence > 1);
    assert!(store.release(&lease).await.unwrap());
    drop_schema(&admin, &schema).await;
}
