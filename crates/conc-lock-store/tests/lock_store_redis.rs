//! The conformance suite on Redis (`CONC_TEST_REDIS_URL`); the fault tests are in
//! `lock_store_redis_faults.rs`. Each run uses
//! its own key prefix and deletes its keys at the end.

#![cfg(all(feature = "redis", feature = "conformance"))]

use conc_lock_store::conformance;
use std::sync::Arc;

mod redis_common;

use redis_common::{admin, prefix, scrub, store, url};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_conforms() {
    let Some(url) = url() else { return };
    let prefix = prefix("conform");
    let mut admin = admin(&url).await;
    conformance::run_all(Arc::new(store(&url, &prefix).await), "redis").await;
    scrub(&mut admin, &prefix).await;
}
