//! Fault tests on Redis (`CONC_TEST_REDIS_URL`): killed connections and FLUSHALL. In their
//! own test binary, because they disturb every client of the server, and cargo runs test
//! binaries one at a time.

#![cfg(all(feature = "redis", feature = "conformance"))]

use std::sync::Arc;
use std::time::Duration;

use conc_lock_store::{LockGuard, LockRequest, LockStore, RedisConfig, RedisLockStore};

fn url() -> Option<String> {
    match std::env::var("CONC_TEST_REDIS_URL") {
        Ok(url) => Some(url),
        Err(_) => {
            println!(
                "skipped: CONC_TEST_REDIS_URL is not set, so the Redis lock store is not tested"
            );
            None
        }
    }
}

fn prefix(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("conc-test:{name}:{}:{nanos}:", std::process::id())
}

async fn admin(url: &str) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(url).unwrap();
    tokio::time::timeout(
        Duration::from_secs(10),
        client.get_multiplexed_async_connection(),
    )
    .await
    .expect("Redis answers within 10 s (CONC_TEST_REDIS_URL is set, so it must)")
    .expect("connect to Redis")
}

async fn store(url: &str, prefix: &str) -> RedisLockStore {
    let config = RedisConfig {
        prefix: prefix.to_owned(),
        ..RedisConfig::default()
    };
    RedisLockStore::connect(url, config)
        .await
        .expect("connect the store")
}

/// Deletes every key under `prefix`.
async fn scrub(admin: &mut redis::aio::MultiplexedConnection, prefix: &str) {
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(admin)
        .await
        .unwrap();
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL")
            .arg(keys)
            .query_async(admin)
            .await
            .unwrap();
    }
}

/// `CLIENT KILL` of the store's connection in the middle of renewals: it reconnects and the
/// leases survive; then `FLUSHALL` wipes them, and every guard's `lost()` fires at its next
/// renewal. (One test, so that the kills and the flush hit nobody else in this binary.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_connections_recover_and_flushall_is_noticed() {
    let Some(url) = url() else { return };
    let prefix = prefix("faults");
    let mut admin = admin(&url).await;
    let store: Arc<dyn LockStore> = Arc::new(store(&url, &prefix).await);
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
        let _: redis::Value = redis::cmd("CLIENT")
            .arg(&["KILL", "TYPE", "normal", "SKIPME", "yes"])
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
    let _: () = redis::cmd("FLUSHALL")
        .query_async(&mut admin)
        .await
        .unwrap();
    for guard in &guards {
        let fired = tokio::time::timeout(Duration::from_secs(2), guard.lost().aborted()).await;
        assert!(fired.is_ok(), "lost() fired after FLUSHALL");
    }
    for guard in guards {
        assert!(!guard.release().await.unwrap());
    }
    scrub(&mut admin, &prefix).await;
}
