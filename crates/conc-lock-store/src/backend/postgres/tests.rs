//! What a retry after a lost connection sends: the same acquire (same token) and the
//! release's retry statement.

use std::time::Duration;

use tokio_postgres::NoTls;
use tokio_postgres::types::{ToSql, Type};

use super::{PostgresConfig, PostgresLockStore};
use crate::request::LockRequest;
use crate::store::LockStore;

#[tokio::test]
async fn a_retried_acquire_and_release_see_their_first_try() {
    let Ok(url) = std::env::var("CONC_TEST_POSTGRES_URL") else {
        println!(
            "skipped: CONC_TEST_POSTGRES_URL is not set, so PostgreSQL retries are not tested"
        );
        return;
    };
    let schema = format!("conc_retry_{}", std::process::id());
    let config = PostgresConfig::default().with_schema(schema.clone());
    let store = PostgresLockStore::connect(&url, config).await.unwrap();
    let token = crate::util::random::shared_token();
    let (key, owner, metadata, ttl) =
        ("k".to_owned(), "owner".to_owned(), "{}".to_owned(), 5000i64);
    let params: [(&(dyn ToSql + Sync), Type); 5] = [
        (&key, Type::TEXT),
        (&owner, Type::TEXT),
        (&token, Type::TEXT),
        (&metadata, Type::TEXT),
        (&ttl, Type::INT8),
    ];
    let pair: [(&(dyn ToSql + Sync), Type); 2] = [(&key, Type::TEXT), (&token, Type::TEXT)];
    let first = store
        .rows("acquire", &store.sql.acquire, &params)
        .await
        .unwrap();
    let again = store
        .rows("acquire", &store.sql.acquire, &params)
        .await
        .unwrap();
    assert_eq!(
        (first.len(), again.len()),
        (1, 1),
        "the retry takes its own lease"
    );
    let other = LockRequest::new("k", "other", Duration::from_secs(5));
    assert!(store.try_acquire(&other).await.unwrap().is_none());
    let released = store
        .rows("release", &store.sql.release, &pair)
        .await
        .unwrap();
    assert_eq!(released.len(), 1);
    let plain = store
        .rows("release", &store.sql.release, &pair)
        .await
        .unwrap();
    assert!(plain.is_empty(), "a second release is refused");
    let retried = store
        .rows("release", &store.sql.release_retry, &pair)
        .await
        .unwrap();
    assert_eq!(retried.len(), 1, "a retried release reports its first try");
    assert!(store.try_acquire(&other).await.unwrap().is_some());
    let (admin, connection) = tokio_postgres::connect(&url, NoTls).await.unwrap();
    tokio::spawn(connection);
    admin
        .batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
        .await
        .unwrap();
}

async fn setting(store: &PostgresLockStore) -> String {
    let rows = store
        .rows("show", "SELECT current_setting('synchronous_commit')", &[])
        .await
        .unwrap();
    rows[0].try_get::<_, String>(0).unwrap()
}

/// A release commits asynchronously for its own transaction only: on the same (pooled)
/// connection the next statement, the next acquire, still waits for its commit to reach
/// the disk.
#[tokio::test]
async fn a_release_turns_synchronous_commit_off_for_its_own_transaction_only() {
    let Ok(url) = std::env::var("CONC_TEST_POSTGRES_URL") else {
        println!(
            "skipped: CONC_TEST_POSTGRES_URL is not set, so the release's commit mode is not tested"
        );
        return;
    };
    let schema = format!("conc_async_release_{}", std::process::id());
    let config = PostgresConfig::default()
        .with_schema(schema.clone())
        .with_pool_size(1);
    let store = PostgresLockStore::connect(&url, config).await.unwrap();
    assert!(
        store
            .sql
            .release
            .contains("set_config('synchronous_commit', 'off', true)")
    );
    let before = setting(&store).await;
    let lease = store
        .try_acquire(&LockRequest::new("k", "owner", Duration::from_secs(5)))
        .await
        .unwrap()
        .unwrap();
    assert!(store.release(&lease).await.unwrap());
    assert_eq!(
        setting(&store).await,
        before,
        "the connection's own setting is left as it was"
    );
    let (admin, connection) = tokio_postgres::connect(&url, NoTls).await.unwrap();
    tokio::spawn(connection);
    admin
        .batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
        .await
        .unwrap();
}
