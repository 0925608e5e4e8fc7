//! Abort signals and the abort manager: superseded work is aborted, and an abort is an
//! outcome, not an error.

use std::time::Duration;

use conc_core::{AbortController, AbortManager, AbortReason, AbortSignal, Aborted, is_abort_error};

#[tokio::test(start_paused = true)]
async fn a_waiter_wakes_on_abort_with_the_reason() {
    let controller = AbortController::new();
    let signal = controller.signal();
    let waiter = tokio::spawn(async move { signal.aborted().await });
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert!(controller.abort(AbortReason::user("stop generating")));
    assert!(
        !controller.abort(AbortReason::Timeout),
        "the first reason stays"
    );
    assert_eq!(waiter.await.unwrap(), AbortReason::user("stop generating"));
}

#[tokio::test(start_paused = true)]
async fn run_until_aborted_stops_work() {
    let controller = AbortController::new();
    let signal = controller.signal();
    let work = tokio::spawn(async move {
        signal
            .run_until_aborted(tokio::time::sleep(Duration::from_secs(60)))
            .await
    });
    tokio::time::sleep(Duration::from_millis(1)).await;
    controller.abort(AbortReason::Timeout);
    let outcome = work.await.unwrap();
    assert_eq!(outcome, Err(Aborted::new(AbortReason::Timeout)));

    let fine = AbortSignal::never().run_until_aborted(async { 5 }).await;
    assert_eq!(fine, Ok(5));
}

#[test]
fn children_inherit_the_abort_but_not_the_other_way() {
    let parent = AbortController::new();
    let child = parent.signal().child();
    let grandchild = child.signal().child();
    let sibling = parent.signal().child();
    sibling.abort(AbortReason::Timeout);
    assert!(!parent.is_aborted());
    parent.abort(AbortReason::Shutdown);
    assert_eq!(
        child.signal().reason(),
        Some(AbortReason::Parent(Box::new(AbortReason::Shutdown)))
    );
    assert_eq!(
        grandchild.signal().reason().unwrap().root(),
        &AbortReason::Shutdown
    );
    // A child of an aborted signal starts aborted.
    assert!(parent.signal().child().is_aborted());
}

#[test]
fn dropped_children_do_not_pile_up() {
    let parent = AbortController::new();
    for _ in 0..10_000 {
        let _child = parent.signal().child();
    }
    // Reaching here without the parent growing unboundedly is covered by the pruning;
    // the parent still aborts cleanly.
    assert!(parent.abort(AbortReason::Shutdown));
}

#[tokio::test(start_paused = true)]
async fn begin_supersedes_the_previous_lease() {
    let manager = AbortManager::new();
    let first = manager.begin();
    assert!(first.is_active());
    let second = manager.begin();
    assert!(!first.is_active());
    assert_eq!(first.signal().reason(), Some(AbortReason::Superseded));
    assert!(!second.signal().is_aborted());
    drop(second);
    assert!(
        manager.active_signal().is_none(),
        "a dropped lease ends without aborting"
    );
    assert!(!manager.abort_active(AbortReason::Shutdown));
}

#[tokio::test(start_paused = true)]
async fn with_abort_runs_one_shot_work_and_is_superseded_by_newer_work() {
    let manager = AbortManager::new();
    let slow = {
        let manager = manager.clone();
        tokio::spawn(async move {
            manager
                .with_abort(|_signal| tokio::time::sleep(Duration::from_secs(10)))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(1)).await;
    let fast = manager.with_abort(|_signal| async { "fresh" }).await;
    assert_eq!(fast, Ok("fresh"));
    let stale = slow.await.unwrap().unwrap_err();
    assert_eq!(stale.reason(), &AbortReason::Superseded);
    assert!(is_abort_error(&stale));
}

#[test]
fn a_manager_with_a_parent_aborts_its_lease_on_shutdown() {
    let shutdown = AbortController::new();
    let manager = AbortManager::with_parent(shutdown.signal());
    let lease = manager.begin();
    shutdown.abort(AbortReason::Shutdown);
    assert_eq!(
        lease.signal().check().unwrap_err().reason().root(),
        &AbortReason::Shutdown
    );
}

#[test]
fn is_abort_error_walks_the_source_chain() {
    #[derive(Debug, thiserror::Error)]
    #[error("save failed")]
    struct SaveError(#[source] std::io::Error);

    let wrapped = SaveError(std::io::Error::other(Aborted::new(AbortReason::Superseded)));
    assert!(is_abort_error(&wrapped));
    let plain = SaveError(std::io::Error::other("disk full"));
    assert!(!is_abort_error(&plain));
    assert_eq!(
        Aborted::new(AbortReason::Timeout).to_string(),
        "operation aborted: timed out"
    );
}

/// Dropping an intermediate controller (and every signal of it) does not cut its
/// descendants off: an abort of the root still reaches them.
#[test]
fn the_abort_tree_is_transitive_across_a_dropped_middle() {
    let root = AbortController::new();
    let middle = root.signal().child();
    let grandchild = middle.signal().child();
    let great = grandchild.signal().child();
    drop(middle);
    assert!(root.abort(AbortReason::Shutdown));
    assert_eq!(
        grandchild.signal().reason(),
        Some(AbortReason::Parent(Box::new(AbortReason::Shutdown)))
    );
    assert!(great.is_aborted());
}

/// A chain 100 000 deep aborts without recursion (no stack overflow) and each node's
/// reason stays one level deep, whatever its depth.
#[test]
fn a_deep_chain_aborts_without_recursion_or_nested_reasons() {
    let root = AbortController::new();
    let mut chain = Vec::with_capacity(100_000);
    let mut last = root.signal();
    for _ in 0..100_000 {
        let child = last.child();
        last = child.signal();
        chain.push(child);
    }
    root.abort(AbortReason::Timeout);
    assert_eq!(
        last.reason(),
        Some(AbortReason::Parent(Box::new(AbortReason::Timeout)))
    );
    // Dropping the chain is iterative too.
    drop(chain);
    drop(last);
}

/// Children that come and go leave no trace in a long-lived parent, and each one is still
/// reached by the parent's abort while it lives.
#[test]
fn short_lived_children_leave_no_trace() {
    let parent = AbortController::new();
    let keep: Vec<_> = (0..10).map(|_| parent.signal().child()).collect();
    for _ in 0..100_000 {
        let child = parent.signal().child();
        let grandchild = child.signal().child();
        drop(child);
        drop(grandchild);
    }
    parent.abort(AbortReason::Shutdown);
    assert!(keep.iter().all(AbortController::is_aborted));
}

/// `on_abort` runs once with the reason; a dropped registration never runs; a callback on
/// an aborted signal runs at once; `unobserved` completes when every signal is gone.
#[tokio::test]
async fn callbacks_and_unobserved() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let runs = std::sync::Arc::new(AtomicUsize::new(0));
    let controller = AbortController::new();
    let signal = controller.signal();
    let counted = runs.clone();
    signal
        .on_abort(move |reason| {
            assert_eq!(reason, &AbortReason::Timeout);
            counted.fetch_add(1, Ordering::SeqCst);
        })
        .detach();
    let counted = runs.clone();
    drop(signal.on_abort(move |_| {
        counted.fetch_add(100, Ordering::SeqCst);
    }));
    controller.abort(AbortReason::Timeout);
    controller.abort(AbortReason::Shutdown);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    let counted = runs.clone();
    signal
        .on_abort(move |_| {
            counted.fetch_add(10, Ordering::SeqCst);
        })
        .detach();
    assert_eq!(runs.load(Ordering::SeqCst), 11);

    let watched = AbortController::new();
    let a = watched.signal();
    let b = a.clone();
    let waiting = tokio::spawn(async move { watched.unobserved().await });
    drop(a);
    tokio::task::yield_now().await;
    assert!(!waiting.is_finished());
    drop(b);
    waiting.await.unwrap();
}
