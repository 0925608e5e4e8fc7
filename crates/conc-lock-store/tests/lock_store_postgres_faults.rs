//! A PostgreSQL acquirer that stalls mid-statement (a trigger that sleeps, on a table in a
//! schema of the test's own) cannot win with an old fence; a NUL byte is a typed error.

#![cfg(all(feature = "conformance", feature = "postgres"))]

use std::sync::Arc;
use std::time::Duration;

use conc_lock_store::conformance::FencedFile;
use conc_lock_store::{LockError, LockRequest, LockStore};

mod postgres_faults {
    use super::*;
    use conc_lock_store::{PostgresConfig, PostgresLockStore};

    fn url() -> Option<String> {
        match std::env::var("CONC_TEST_POSTGRES_URL") {
            Ok(url) => Some(url),
            Err(_) => {
                println!(
                    "skipped: CONC_TEST_POSTGRES_URL is not set, so the PostgreSQL stall is not tested"
                );
                None
            }
        }
    }

    /// An acquirer that stalls mid-statement (a trigger that sleeps, on the test's own
    /// table) while another process takes the lock, writes and releases it: when the
    /// stalled one wins at last, its fence is newer than the one already written.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stalled_acquirer_cannot_win_with_an_old_fence() {
        let Some(url) = url() else { return };
        let schema = format!("conc_stall_{}", std::process::id());
        let config = PostgresConfig::default().with_schema(schema.clone());
        let store: Arc<dyn LockStore> =
            Arc::new(PostgresLockStore::connect(&url, config).await.unwrap());
        let (admin, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        admin
            .batch_execute(&format!(
                "CREATE FUNCTION \"{schema}\".stall() RETURNS trigger AS $$
                 BEGIN IF NEW.owner = 'staller' THEN PERFORM pg_sleep(1.5); END IF; RETURN NEW; END
                 $$ LANGUAGE plpgsql;
                 CREATE TRIGGER stall BEFORE INSERT OR UPDATE ON \"{schema}\".conc_locks
                 FOR EACH ROW EXECUTE FUNCTION \"{schema}\".stall();"
            ))
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let resource = FencedFile::new(dir.path().join("resource"));
        for first_time in [true, false] {
            let key = if first_time { "fresh" } else { "used" };
            if !first_time {
                let lease = store
                    .try_acquire(&LockRequest::new(key, "earlier", Duration::from_secs(5)))
                    .await
                    .unwrap()
                    .unwrap();
                store.release(&lease).await.unwrap();
            }
            let stalled = {
                let store = store.clone();
                tokio::spawn(async move {
                    store
                        .try_acquire(&LockRequest::new(key, "staller", Duration::from_secs(5)))
                        .await
                })
            };
            tokio::time::sleep(Duration::from_millis(300)).await;
            // Meanwhile another acquirer gets in (or queues behind the stalled row).
            let quick = store
                .acquire(
                    &LockRequest::new(key, "quick", Duration::from_secs(5)),
                    Duration::from_secs(4),
                )
                .await
                .unwrap();
            resource.write(quick.fence).unwrap();
            store.release(&quick).await.unwrap();
            let late = stalled.await.unwrap().unwrap();
            if let Some(late) = late {
                assert!(
                    late.fence > quick.fence,
                    "stalled acquirer won with {} after {}",
                    late.fence,
                    quick.fence
                );
                resource.write(late.fence).unwrap();
                store.release(&late).await.unwrap();
            }
        }
        admin
            .batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_nul_byte_is_a_typed_error_that_is_not_transient() {
        let Some(url) = url() else { return };
        let schema = format!("conc_nul_{}", std::process::id());
        let config = PostgresConfig::default()
            .with_schema(schema.clone())
            .with_max_ttl(Duration::MAX);
        let store = PostgresLockStore::connect(&url, config).await.unwrap();
        let error = store
            .try_acquire(&LockRequest::new("a\0b", "o", Duration::from_secs(1)))
            .await
            .unwrap_err();
        assert!(
            matches!(error, LockError::InvalidKey { .. }) && !error.is_transient(),
            "{error}"
        );
        let error = store
            .try_acquire(&LockRequest::new("k", "o", Duration::MAX))
            .await
            .unwrap_err();
        assert!(matches!(error, LockError::InvalidTtl { .. }), "{error}");
        let (admin, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        admin
            .batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
            .await
            .unwrap();
    }
}
