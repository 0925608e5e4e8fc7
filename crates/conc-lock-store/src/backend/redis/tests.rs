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

/// A release writes two fields and leaves the hash's expiry as its grant set it (the
/// lease's end plus the grace period), unless that is more than two grace periods away:
/// then the released hash goes after the grace period, as before.
#[tokio::test]
async fn a_released_hash_stays_for_the_grace_period_and_not_much_longer() {
    let Some(server) = PrivateRedis::start(&[]).unwrap() else {
        return;
    };
    let grace = Duration::from_secs(10);
    let store = RedisLockStore::connect(&server.url(), RedisConfig::default().with_grace(grace))
        .await
        .unwrap();
    let pttl = |key: &str| {
        let mut command = redis::cmd("PTTL");
        command.arg(store.lock_key(key));
        store.query::<i64>("pttl", command, None)
    };
    // A short lease: its hash keeps the expiry its grant gave it.
    let short = store
        .try_acquire(&LockRequest::new("short", "owner", Duration::from_secs(5)))
        .await
        .unwrap()
        .unwrap();
    assert!(store.release(&short).await.unwrap());
    let left = pttl("short").await.unwrap();
    assert!(
        (10_000..=15_000).contains(&left),
        "the short lease's hash lives to its end plus the grace period: {left} ms"
    );
    // A long lease: its released hash goes after the grace period.
    let long = store
        .try_acquire(&LockRequest::new(
            "long",
            "owner",
            Duration::from_secs(3600),
        ))
        .await
        .unwrap()
        .unwrap();
    assert!(pttl("long").await.unwrap() > 3_600_000);
    assert!(store.release(&long).await.unwrap());
    let left = pttl("long").await.unwrap();
    assert!(
        (0..=10_000).contains(&left),
        "the long lease's released hash goes after the grace period: {left} ms"
    );
    // Within the grace period a retried release still sees its own, and the next fence
    // goes on from the last.
    let again = store
        .try_acquire(&LockRequest::new("short", "owner", Duration::from_secs(5)))
        .await
        .unwrap()
        .unwrap();
    assert!(again.fence > short.fence);
}
