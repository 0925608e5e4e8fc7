//! Fault tests: what an operations team does to a lock store's server. Each Redis fault
//! runs on a `redis-server` of the test's own (restarted, flushed, reconfigured, its
//! clients killed), never on the shared server. Fences must strictly increase across
//! every fault, and a store that lost its state must not admit a second holder while the
//! first lease could still be live. (The PostgreSQL stall is in
//! `lock_store_postgres_faults.rs`.)

#![cfg(feature = "conformance")]

use std::sync::Arc;
use std::time::Duration;

use conc_lock_store::conformance::{FenceError, FencedFile};
use conc_lock_store::{LockError, LockGuard, LockRequest, LockStore, MemoryLockStore};

#[tokio::test]
async fn a_ttl_of_duration_max_is_a_typed_error_not_a_panic() {
    let store = MemoryLockStore::with_max_ttl(Duration::MAX);
    let request = LockRequest::new("k", "o", Duration::MAX);
    let error = store.try_acquire(&request).await.unwrap_err();
    assert!(matches!(error, LockError::InvalidTtl { .. }), "{error}");
    assert!(!store.is_locked("k").await.unwrap());
}

#[tokio::test]
async fn nul_bytes_and_blank_keys_are_refused() {
    let store = MemoryLockStore::new();
    for key in ["a\0b", "   ", "\t\n"] {
        let error = store
            .try_acquire(&LockRequest::new(key, "o", Duration::from_secs(1)))
            .await
            .unwrap_err();
        assert!(matches!(error, LockError::InvalidKey { .. }), "{error}");
        assert!(!error.is_transient());
    }
    let error = store
        .try_acquire(&LockRequest::new("k", "o\0", Duration::from_secs(1)))
        .await
        .unwrap_err();
    assert!(matches!(error, LockError::InvalidOwner), "{error}");
    let error = store
        .try_acquire(&LockRequest::new("k", "o", Duration::from_secs(1)).with_metadata("m", "a\0"))
        .await
        .unwrap_err();
    assert!(
        matches!(error, LockError::InvalidMetadata { .. }),
        "{error}"
    );
}

#[cfg(feature = "redis")]
mod redis_faults {
    use super::*;
    use conc_lock_store::servers::PrivateRedis;
    use conc_lock_store::{RedisConfig, RedisLockStore};

    fn config() -> RedisConfig {
        RedisConfig::default()
            .with_prefix("faults:")
            .with_op_timeout(Duration::from_secs(2))
    }

    async fn admin(url: &str) -> redis::aio::MultiplexedConnection {
        redis::Client::open(url)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    /// Waits until `request` is granted, counting the refusals.
    async fn acquire_eventually(
        store: &Arc<dyn LockStore>,
        request: &LockRequest,
    ) -> (conc_lock_store::Lease, usize) {
        let mut refused = 0;
        for _ in 0..1000 {
            match store.try_acquire(request).await {
                Ok(Some(lease)) => return (lease, refused),
                Ok(None) | Err(_) => refused += 1,
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("never granted");
    }

    /// The wipe of a private server (a restart without persistence, or FLUSHALL): fences
    /// keep going forward, the holder learns of the loss, and nobody else gets the lock
    /// while the holder's lease could still be live.
    async fn wipe(restart: bool) {
        let Some(mut server) = PrivateRedis::start(&[]).unwrap() else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let resource = FencedFile::new(dir.path().join("resource"));
        let store: Arc<dyn LockStore> = Arc::new(
            RedisLockStore::connect(&server.url(), config())
                .await
                .unwrap(),
        );
        let other: Arc<dyn LockStore> = Arc::new(
            RedisLockStore::connect(&server.url(), config())
                .await
                .unwrap(),
        );
        let ttl = Duration::from_millis(1500);
        // Some history first, so a counter that restarted would show.
        for _ in 0..5 {
            let lease = store
                .try_acquire(&LockRequest::new("conv", "warm-up", ttl))
                .await
                .unwrap()
                .unwrap();
            resource.write(lease.fence).unwrap();
            assert!(store.release(&lease).await.unwrap());
        }
        let holder = LockGuard::acquire(
            store.clone(),
            LockRequest::new("conv", "holder", ttl),
            Duration::from_secs(1),
        )
        .await
        .unwrap();
        resource.write(holder.fence()).unwrap();
        let wiped_at = tokio::time::Instant::now();
        if restart {
            server.restart().unwrap();
        } else {
            let _: () = redis::cmd("FLUSHALL")
                .query_async(&mut admin(&server.url()).await)
                .await
                .unwrap();
        }
        // The holder learns of it within its renewal interval.
        tokio::time::timeout(Duration::from_secs(3), holder.lost().aborted())
            .await
            .expect("lost() fired after the wipe");
        // Nobody, through either instance, is let in while the holder's lease could live.
        let request = LockRequest::new("conv", "next", ttl);
        assert!(
            other.try_acquire(&request).await.unwrap().is_none(),
            "no second holder right after the wipe"
        );
        let (next, refused) = acquire_eventually(&other, &request).await;
        assert!(refused > 0);
        assert!(
            wiped_at.elapsed() >= ttl - Duration::from_millis(300),
            "granted {:?} after the wipe, within the holder's lease of {ttl:?}",
            wiped_at.elapsed()
        );
        assert!(
            next.fence > holder.fence(),
            "fence {} after {}",
            next.fence,
            holder.fence()
        );
        resource.write(next.fence).unwrap();
        let stale = resource.write(holder.fence()).unwrap_err();
        assert!(matches!(stale, FenceError::Stale { .. }));
        // And on from there, strictly increasing.
        assert!(other.release(&next).await.unwrap());
        let after = store.try_acquire(&request).await.unwrap().unwrap();
        assert!(after.fence > next.fence);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restart_without_persistence_keeps_fences_forward() {
        wipe(true).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn flushall_keeps_fences_forward() {
        wipe(false).await;
    }

    #[tokio::test]
    async fn an_evicting_policy_is_refused_unless_allowed() {
        let Some(server) = PrivateRedis::start(&["--maxmemory-policy", "volatile-ttl"]).unwrap()
        else {
            return;
        };
        let error = RedisLockStore::connect(&server.url(), config())
            .await
            .unwrap_err();
        assert!(matches!(error, LockError::Unsafe { .. }), "{error}");
        assert!(error.to_string().contains("volatile-ttl"), "{error}");
        let allowed = config().with_allow_eviction(true);
        RedisLockStore::connect(&server.url(), allowed)
            .await
            .unwrap();
    }

    /// A service's own `redis::Client` is enough to build a store.
    #[tokio::test]
    async fn a_store_on_the_service_s_own_client() {
        let Some(server) = PrivateRedis::start(&[]).unwrap() else {
            return;
        };
        let client = redis::Client::open(server.url()).unwrap();
        let store = RedisLockStore::from_client(client, config()).await.unwrap();
        let lease = store
            .try_acquire(&LockRequest::new("k", "o", Duration::from_secs(5)))
            .await
            .unwrap()
            .unwrap();
        assert!(store.release(&lease).await.unwrap());
    }

    #[tokio::test]
    async fn a_disabled_config_command_is_named_in_the_error() {
        let Some(server) = PrivateRedis::start(&["--rename-command", "CONFIG", ""]).unwrap() else {
            return;
        };
        let error = RedisLockStore::connect(&server.url(), config())
            .await
            .unwrap_err();
        assert!(matches!(error, LockError::Unsafe { .. }), "{error}");
        assert!(error.to_string().contains("CONFIG"), "{error}");
    }

    /// A batched renewal after the server forgot its scripts (`SCRIPT FLUSH`, as after a
    /// restart) loads the script and renews every lease of the batch.
    #[tokio::test]
    async fn a_batched_renewal_survives_a_script_flush() {
        let Some(server) = PrivateRedis::start(&[]).unwrap() else {
            return;
        };
        let store = RedisLockStore::connect(&server.url(), config())
            .await
            .unwrap();
        let mut leases = Vec::new();
        for n in 0..50 {
            let request = LockRequest::new(format!("k{n}"), "o", Duration::from_secs(5));
            leases.push(store.try_acquire(&request).await.unwrap().unwrap());
        }
        let _: () = redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query_async(&mut admin(&server.url()).await)
            .await
            .unwrap();
        let results = store.renew_many(&leases).await;
        assert_eq!(results.len(), 50);
        for (lease, result) in leases.iter().zip(&results) {
            let renewed = result.as_ref().expect("renewed");
            assert_eq!(renewed.fence, lease.fence);
        }
        // And a lost one in the middle of a batch is refused alone.
        assert!(store.release(&leases[7]).await.unwrap());
        let results = store.renew_many(&leases).await;
        assert!(matches!(results[7], Err(LockError::Lost { .. })));
        assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 49);
    }

    #[tokio::test]
    async fn a_ttl_of_duration_max_writes_nothing() {
        let Some(server) = PrivateRedis::start(&[]).unwrap() else {
            return;
        };
        let config = config().with_max_ttl(Duration::MAX);
        let store = RedisLockStore::connect(&server.url(), config)
            .await
            .unwrap();
        let error = store
            .try_acquire(&LockRequest::new("k", "o", Duration::MAX))
            .await
            .unwrap_err();
        assert!(matches!(error, LockError::InvalidTtl { .. }), "{error}");
        assert!(store.inspect("k").await.unwrap().is_none());
        let lease = store
            .try_acquire(&LockRequest::new("k", "o", Duration::from_secs(1)))
            .await
            .unwrap()
            .unwrap();
        assert!(store.release(&lease).await.unwrap());
    }

    /// `CLIENT KILL` of the store's connections in the middle of renewals: it reconnects
    /// and the leases survive.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn killed_connections_are_replaced_without_losing_leases() {
        let Some(server) = PrivateRedis::start(&[]).unwrap() else {
            return;
        };
        let mut admin = admin(&server.url()).await;
        let store: Arc<dyn LockStore> = Arc::new(
            RedisLockStore::connect(&server.url(), config())
                .await
                .unwrap(),
        );
        let mut guards = Vec::new();
        for n in 0..3 {
            let request =
                LockRequest::new(format!("conv:{n}"), "holder", Duration::from_millis(900));
            guards.push(
                LockGuard::acquire(store.clone(), request, Duration::from_secs(2))
                    .await
                    .unwrap(),
            );
        }
        for _ in 0..4 {
            let _: redis::Value = redis::cmd("CLIENT")
                .arg(&["KILL", "TYPE", "normal", "SKIPME", "yes"])
                .query_async(&mut admin)
                .await
                .unwrap();
            let _: redis::Value = redis::cmd("CLIENT")
                .arg(&["KILL", "TYPE", "pubsub"])
                .query_async(&mut admin)
                .await
                .unwrap();
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
        // The event subscription came back too: a take-over reaches the holder at once.
        let taken = store
            .take_over(&LockRequest::new(
                "conv:1",
                "operator",
                Duration::from_secs(5),
            ))
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(1), guards[1].lost().aborted())
            .await
            .expect("the holder learned of the take-over");
        assert!(taken.fence > guards[1].fence());
    }
}
