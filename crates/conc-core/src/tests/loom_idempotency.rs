//! Loom: the registry's leader and follower, a leader dropped mid-flight, and a settle
//! racing a new run.

use std::sync::Arc;

use loom::future::block_on;
use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::thread;

use super::poll_then_drop;
use crate::{IdempotencyKey, IdempotencyRegistry};

fn key() -> IdempotencyKey {
    IdempotencyKey::new("loom", ["k"]).unwrap()
}

/// Two concurrent callers: both get the value; the task runs once or twice, never at once,
/// and the key is released at the end.
#[test]
fn leader_and_follower() {
    loom::model(|| {
        let registry = Arc::new(IdempotencyRegistry::<usize>::new());
        let running = Arc::new(AtomicUsize::new(0));
        let call = |registry: Arc<IdempotencyRegistry<usize>>, running: Arc<AtomicUsize>| {
            block_on(registry.run(key(), || async move {
                assert_eq!(
                    running.fetch_add(1, Ordering::SeqCst),
                    0,
                    "two executions at once"
                );
                running.fetch_sub(1, Ordering::SeqCst);
                7
            }))
        };
        let other = {
            let (registry, running) = (registry.clone(), running.clone());
            thread::spawn(move || call(registry, running))
        };
        let mine = call(registry.clone(), running);
        assert_eq!(mine, Ok(7));
        assert_eq!(other.join().unwrap(), Ok(7));
        assert_eq!(registry.in_flight(), 0);
    });
}

/// The leader's future is dropped mid-flight while a follower waits: the follower takes
/// over and finishes; nothing hangs and the key is released.
#[test]
fn leader_dropped_mid_flight() {
    loom::model(|| {
        let registry = Arc::new(IdempotencyRegistry::<usize>::new());
        let leader = {
            let registry = registry.clone();
            thread::spawn(move || {
                // Leads (or follows) for one poll, then gives up.
                let _ = poll_then_drop(registry.run(key(), std::future::pending::<usize>));
            })
        };
        let value = block_on(registry.run(key(), || async { 3 }));
        leader.join().unwrap();
        assert_eq!(value, Ok(3));
        assert_eq!(registry.in_flight(), 0);
    });
}

/// A settle racing a new call: the new call either joins and gets the result, or runs
/// afresh; it never waits for ever.
#[test]
fn settle_against_a_new_run() {
    loom::model(|| {
        let registry = Arc::new(IdempotencyRegistry::<usize>::new());
        let other = {
            let registry = registry.clone();
            thread::spawn(move || block_on(registry.run(key(), || async { 1 })))
        };
        let mine = block_on(registry.run(key(), || async { 2 })).unwrap();
        let theirs = other.join().unwrap().unwrap();
        // Either one shared execution or two separate ones.
        assert!(mine == theirs || (mine, theirs) == (2, 1));
        assert_eq!(registry.in_flight(), 0);
    });
}

/// The leader gives up while two followers wait: one follower re-registers as the leader
/// and runs; the other gets its value (or runs afresh after the release). Nobody hangs,
/// the task never runs twice at once, and the key is released.
#[test]
fn re_registration_with_two_followers() {
    loom::model(|| {
        let registry = Arc::new(IdempotencyRegistry::<usize>::new());
        let running = Arc::new(AtomicUsize::new(0));
        let leader = {
            let registry = registry.clone();
            thread::spawn(move || {
                let _ = poll_then_drop(registry.run(key(), std::future::pending::<usize>));
            })
        };
        let call = |registry: Arc<IdempotencyRegistry<usize>>, running: Arc<AtomicUsize>| {
            block_on(registry.run(key(), || async move {
                assert_eq!(running.fetch_add(1, Ordering::SeqCst), 0, "two at once");
                running.fetch_sub(1, Ordering::SeqCst);
                5
            }))
        };
        let follower = {
            let (registry, running) = (registry.clone(), running.clone());
            thread::spawn(move || call(registry, running))
        };
        assert_eq!(call(registry.clone(), running), Ok(5));
        leader.join().unwrap();
        assert_eq!(follower.join().unwrap(), Ok(5));
        assert_eq!(registry.in_flight(), 0);
    });
}

/// A follower gives up while it waits: the leader finishes unharmed and the key is
/// released.
#[test]
fn a_follower_dropped_while_it_waits() {
    loom::model(|| {
        let registry = Arc::new(IdempotencyRegistry::<usize>::new());
        let follower = {
            let registry = registry.clone();
            thread::spawn(move || {
                let _ = poll_then_drop(registry.run(key(), || async { 1 }));
            })
        };
        let value = block_on(registry.run(key(), || async {
            loom::thread::yield_now();
            2
        }));
        follower.join().unwrap();
        assert!(matches!(value, Ok(2) | Ok(1)));
        assert_eq!(registry.in_flight(), 0);
    });
}

/// The leader's task panics while a follower waits: the follower gets the typed error (or,
/// arriving after the release, runs afresh); the key is released either way.
#[test]
fn the_leader_panicking() {
    loom::model(|| {
        let registry = Arc::new(IdempotencyRegistry::<usize>::new());
        let leader = {
            let registry = registry.clone();
            thread::spawn(move || {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    block_on(registry.run(key(), || async { panic!("the task failed") }))
                }))
                .is_err()
            })
        };
        let follower = block_on(registry.run(key(), || async { 9 }));
        let leader_panicked = leader.join().unwrap();
        match follower {
            Ok(9) => {}
            Err(crate::IdempotencyError::Panicked { .. }) => assert!(leader_panicked),
            other => panic!("unexpected outcome {other:?}"),
        }
        assert_eq!(registry.in_flight(), 0);
    });
}
