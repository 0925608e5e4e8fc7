//! Helpers shared by the Redis test binaries: the URL (or a `skipped:` line), a per-run key
//! prefix, an admin connection, the store, and a scrub of the run's keys.

use std::time::Duration;

use conc_lock_store::{RedisConfig, RedisLockStore};

/// The test server's URL, or `None` after printing why the test is skipped.
pub(crate) fn url() -> Option<String> {
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

/// A key prefix unique to this run.
pub(crate) fn prefix(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("conc-test:{name}:{}:{nanos}:", std::process::id())
}

/// A plain connection for setting up and injecting faults.
pub(crate) async fn admin(url: &str) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(url).unwrap();
    tokio::time::timeout(
        Duration::from_secs(10),
        client.get_multiplexed_async_connection(),
    )
    .await
    .expect("Redis answers within 10 s (CONC_TEST_REDIS_URL is set, so it must)")
    .expect("connect to Redis")
}

/// The store under test, on `prefix`.
pub(crate) async fn store(url: &str, prefix: &str) -> RedisLockStore {
    let config = RedisConfig::default().with_prefix(prefix.to_owned());
    RedisLockStore::connect(url, config)
        .await
        .expect("connect the store")
}

/// Deletes every key under `prefix`.
pub(crate) async fn scrub(admin: &mut redis::aio::MultiplexedConnection, prefix: &str) {
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
