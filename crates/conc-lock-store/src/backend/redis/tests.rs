//! What a retry after a lost connection sends: the same acquire (same token) and the
//! release's retry variant. Run on a private server.

use std::time::Duration;

use super::{RedisConfig, RedisLockStore};
use crate::lease::Lease;
use crate::request::LockRequest;
use crate::store::LockStore;
use crate::testing::servers::PrivateRedis;

#[tokio::test]
async fn a_retried_acquire_and_release_see_their_first_try() {
    let Some(server) = PrivateRedis::start(&[]).unwrap() else {
        return;
    };
    let store = RedisLockStore::connect(&server.url(), RedisConfig::default())
        .await
        .unwrap();
    let request = LockRequest::new("k", "owner", Duration::from_secs(5));
    let token = crate::util::random::shared_token();
    let acquire = || {
        let mut invocation = store.scripts.acquire.prepare_invoke();
        store.guard_args(0, &mut invocation);
        invocation
            .key(store.lock_key("k"))
            .arg("k")
            .arg("owner")
            .arg(&token)
            .arg(0)
            .arg(5000)
            .arg(1000)
            .arg("0")
            .arg(store.events_channel());
        invocation
    };
    let first: Vec<redis::Value> = store.run("acquire", &acquire()).await.unwrap();
    let again: Vec<redis::Value> = store.run("acquire", &acquire()).await.unwrap();
    let status =
        |reply: &[redis::Value]| -> i64 { redis::from_redis_value_ref(&reply[0]).unwrap() };
    assert_eq!(
        (status(&first), status(&again)),
        (1, 1),
        "the retry takes its own lease"
    );
    // Someone else is still locked out.
    assert!(store.try_acquire(&request).await.unwrap().is_none());
    let lease = Lease {
        key: "k".into(),
        owner: "owner".into(),
        token: token.clone(),
        fence: 0,
        acquired_at: std::time::SystemTime::now(),
        expires_at: std::time::SystemTime::now(),
        ttl: Duration::from_secs(5),
        requested_at: tokio::time::Instant::now(),
    };
    assert!(store.release(&lease).await.unwrap());
    // A plain second release is refused; a retry of the first one reports the truth.
    assert!(!store.release(&lease).await.unwrap());
    let mut retry = store.scripts.release.prepare_invoke();
    retry
        .key(store.lock_key("k"))
        .arg("k")
        .arg(&token)
        .arg(1000)
        .arg(store.events_channel())
        .arg("1");
    let released: i64 = store.run("release", &retry).await.unwrap();
    assert_eq!(released, 1);
    assert!(store.try_acquire(&request).await.unwrap().is_some());
}
