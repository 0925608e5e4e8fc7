//! Idempotency keys and the single-flight registry: a duplicate request runs once.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use conc_core::{IdempotencyError, IdempotencyKey, IdempotencyRegistry, KeyError};

fn key(parts: &[&str]) -> IdempotencyKey {
    IdempotencyKey::new("db-save-message", parts).unwrap()
}

#[test]
fn keys_are_deterministic_and_escaped() {
    assert_eq!(key(&["c1", "m1"]), key(&["c1", "m1"]));
    assert_eq!(
        key(&["c1", "m1"]).stable_hash(),
        key(&["c1", "m1"]).stable_hash()
    );
    assert_ne!(key(&["a:b"]), key(&["a", "b"]));
    assert_ne!(key(&["a\\", "b"]), key(&["a", "\\b"]));
    assert_ne!(key(&[]), key(&[""]));
    assert_eq!(key(&["a:b"]).as_str(), "db-save-message:a\\:b");
    assert_eq!(key(&["x"]).scope(), "db-save-message");
    assert_eq!(
        IdempotencyKey::new("", ["x"]).unwrap_err(),
        KeyError::EmptyScope
    );
    // The documented hash: 64-bit FNV-1a of the text.
    assert_eq!(
        IdempotencyKey::new("a", None::<u8>).unwrap().stable_hash(),
        0xaf63_dc4c_8601_ec8c
    );
    assert_eq!(key(&["x"]).shard(0), 0);
    let mixed =
        IdempotencyKey::new("chat-stream", [&"conv" as &dyn std::fmt::Display, &42u64]).unwrap();
    assert_eq!(mixed.as_str(), "chat-stream:conv:42");
}

/// 100 concurrent callers with one key: one execution, one shared result.
#[tokio::test(start_paused = true)]
async fn concurrent_callers_share_one_execution() {
    let registry = Arc::new(IdempotencyRegistry::<u64>::new());
    let runs = Arc::new(AtomicUsize::new(0));
    let callers: Vec<_> = (0..100)
        .map(|_| {
            let (registry, runs) = (registry.clone(), runs.clone());
            tokio::spawn(async move {
                registry
                    .run(key(&["c1", "m1"]), || async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        99
                    })
                    .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(registry.in_flight(), 1);
    assert!(registry.contains(&key(&["c1", "m1"])));
    for caller in callers {
        assert_eq!(caller.await.unwrap(), Ok(99));
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(registry.in_flight(), 0);
    // Released on settle: a later call runs afresh.
    let again = registry.run(key(&["c1", "m1"]), || async { 100 }).await;
    assert_eq!(again, Ok(100));
}

/// The leader's future is dropped; a waiting follower takes over with its own task.
#[tokio::test(start_paused = true)]
async fn a_follower_takes_over_from_a_dropped_leader() {
    let registry = Arc::new(IdempotencyRegistry::<&'static str>::new());
    let leader = {
        let registry = registry.clone();
        tokio::spawn(async move {
            registry
                .run(key(&["k"]), || async {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    "leader"
                })
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(1)).await;
    let follower = {
        let registry = registry.clone();
        tokio::spawn(async move { registry.run(key(&["k"]), || async { "follower" }).await })
    };
    tokio::time::sleep(Duration::from_millis(1)).await;
    leader.abort();
    assert!(leader.await.unwrap_err().is_cancelled());
    assert_eq!(follower.await.unwrap(), Ok("follower"));
    assert_eq!(registry.in_flight(), 0);
}

/// A panicking task: followers get a typed error, the leader's caller gets the panic, and
/// the key is released.
#[tokio::test(start_paused = true)]
async fn a_panic_gives_followers_a_typed_error_and_releases_the_key() {
    let registry = Arc::new(IdempotencyRegistry::<u8>::new());
    let leader = {
        let registry = registry.clone();
        tokio::spawn(async move {
            registry
                .run(key(&["boom"]), || async {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    panic!("task bug")
                })
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(1)).await;
    let follower = registry.run(key(&["boom"]), || async { 1 }).await;
    assert!(
        matches!(follower, Err(IdempotencyError::Panicked { ref key }) if key.ends_with("boom"))
    );
    assert!(leader.await.unwrap_err().is_panic());
    assert_eq!(registry.in_flight(), 0);
    assert_eq!(registry.run(key(&["boom"]), || async { 2 }).await, Ok(2));
}

/// A dropped follower withdraws without disturbing the leader.
#[tokio::test(start_paused = true)]
async fn a_dropped_follower_leaves_the_leader_alone() {
    let registry = Arc::new(IdempotencyRegistry::<u8>::new());
    let leader = {
        let registry = registry.clone();
        tokio::spawn(async move {
            registry
                .run(key(&["k"]), || async {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    7
                })
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(1)).await;
    let impatient = tokio::time::timeout(
        Duration::from_millis(5),
        registry.run(key(&["k"]), || async { 0 }),
    )
    .await;
    assert!(impatient.is_err());
    assert_eq!(leader.await.unwrap(), Ok(7));
    assert_eq!(registry.in_flight(), 0);
}

/// A value whose `Clone` panics.
#[derive(Debug)]
struct Brittle;

impl Clone for Brittle {
    fn clone(&self) -> Self {
        panic!("this value cannot be cloned");
    }
}

/// A panicking `Clone` strands nobody: the leader gets its value, the followers a typed
/// error, and the key is released.
#[tokio::test(start_paused = true)]
async fn a_panicking_clone_strands_no_follower() {
    let registry = Arc::new(IdempotencyRegistry::<Brittle>::new());
    let k = key(&["brittle"]);
    let leader = {
        let (registry, k) = (registry.clone(), k.clone());
        tokio::spawn(async move {
            registry
                .run(k, || async {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    Brittle
                })
                .await
                .is_ok()
        })
    };
    tokio::task::yield_now().await;
    let followers: Vec<_> = (0..2)
        .map(|_| {
            let (registry, k) = (registry.clone(), k.clone());
            tokio::spawn(async move { registry.run(k, || async { Brittle }).await })
        })
        .collect();
    assert!(leader.await.unwrap(), "the leader keeps its own value");
    for follower in followers {
        let outcome = tokio::time::timeout(Duration::from_secs(5), follower)
            .await
            .expect("the follower is not stranded")
            .unwrap();
        assert!(
            matches!(outcome, Err(IdempotencyError::ClonePanicked { .. })),
            "{outcome:?}"
        );
    }
    assert_eq!(registry.in_flight(), 0);
}
