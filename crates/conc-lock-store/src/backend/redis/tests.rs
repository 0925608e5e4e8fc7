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
            .arg("owner")
            .arg(&token)
            .arg(0)
            .arg(5000)
            .arg(6000)
            .arg("0")
            // The longest lease the marker records, as the client knows it after the
            // first try (which recorded this one).
            .arg(5000);
        invocation
    };
    let first: Vec<redis::Value> = store.run("acquire", &acquire()).await.unwrap();
    let again: Vec<redis::Value> = store.run("acquire", &acquire()).await.unwrap();
    let status =
        |reply: &[redis::Value]| -> i64 { redis::from_redis_value_ref(&reply[0]).unwrap() };
    // The first try reads the guard (the key had no hash); the retry finds the hash and
    // the marker's record long enough, and does not.
    assert_eq!(
        (status(&first), status(&again)),
        (1, 4),
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
        .arg(&token)
        .arg(1000)
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

/// The restart guard is read by an acquire of a key with no lock hash, or of a lease
/// longer than the marker records; a key whose hash exists is granted from its own history
/// without it. Once a wipe is found and published, every instance reads it again on every
/// grant until the wait is over. Counted with `INFO commandstats` (`HMGET`: one for the
/// lock, one for the marker) on a private server.
#[tokio::test]
async fn the_guard_is_read_where_a_key_s_state_could_have_been_lost() {
    let Some(server) = PrivateRedis::start(&[]).unwrap() else {
        return;
    };
    let store = RedisLockStore::connect(&server.url(), RedisConfig::default())
        .await
        .unwrap();
    let stat = |command: redis::Cmd| store.query::<redis::Value>("stats", command, None);
    let hmgets = || async {
        let info: String = redis::from_redis_value(
            stat(redis::cmd("INFO").arg("commandstats").clone())
                .await
                .unwrap(),
        )
        .unwrap();
        info.lines()
            .find_map(|line| line.strip_prefix("cmdstat_hmget:calls="))
            .and_then(|rest| rest.split(',').next())
            .map_or(0, |calls| calls.parse::<u64>().unwrap())
    };
    let longest = || async {
        let mut command = redis::cmd("HGET");
        command.arg(store.marker_key(0)).arg("longest");
        redis::from_redis_value::<u64>(stat(command).await.unwrap()).unwrap()
    };
    let pair = |key: &'static str, ttl: u64| {
        let store = store.clone();
        async move {
            let request = LockRequest::new(key, "owner", Duration::from_secs(ttl));
            let lease = store.try_acquire(&request).await.unwrap().expect("free");
            assert!(store.release(&lease).await.unwrap());
            lease.fence
        }
    };
    // A new key: the lock and the marker (the release reads the lock's hash too).
    let before = hmgets().await;
    let first = pair("k", 5).await;
    assert_eq!(hmgets().await - before, 3);
    assert_eq!(longest().await, 5000);
    // Its hash exists and the marker records a lease as long: the lock's hash alone.
    let before = hmgets().await;
    let second = pair("k", 5).await;
    assert_eq!(hmgets().await - before, 2, "no marker read");
    assert!(second > first);
    // A longer lease than the marker records reads it, and records the new length.
    let before = hmgets().await;
    let third = pair("k", 60).await;
    assert_eq!(hmgets().await - before, 3);
    assert_eq!(longest().await, 60_000);
    assert!(third > second);
    // The marker lost (the lock's hash kept): another instance that knew it finds it
    // gone on a key with no hash, waits, and says so; this instance hears it and reads
    // the guard again, so it grants nothing either, not even on a key with a hash.
    let other = RedisLockStore::connect(&server.url(), RedisConfig::default())
        .await
        .unwrap();
    let mut delete = redis::cmd("DEL");
    delete.arg(store.marker_key(0));
    stat(delete).await.unwrap();
    let request = LockRequest::new("new-key", "owner", Duration::from_secs(5));
    assert!(other.try_acquire(&request).await.unwrap().is_none());
    assert!(other.recovering_until().is_some());
    tokio::time::timeout(Duration::from_secs(5), async {
        while store.recovering_until().is_none() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the wipe was published");
    let request = LockRequest::new("k", "owner", Duration::from_secs(5));
    assert!(
        store.try_acquire(&request).await.unwrap().is_none(),
        "no grant while the store recovers"
    );
}
