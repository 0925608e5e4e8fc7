//! The conformance suite on Redis (`CONC_TEST_REDIS_URL`); the fault tests are in
//! `lock_store_redis_faults.rs`. Each run uses
//! its own key prefix and deletes its keys at the end.

#![cfg(all(feature = "redis", feature = "conformance"))]

use std::sync::Arc;
use std::time::Duration;

use conc_lock_store::{RedisConfig, RedisLockStore, conformance};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_conforms() {
    let Some(url) = url() else { return };
    let prefix = prefix("conform");
    let mut admin = admin(&url).await;
    conformance::run_all(Arc::new(store(&url, &prefix).await), "redis").await;
    scrub(&mut admin, &prefix).await;
}
