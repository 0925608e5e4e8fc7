//! Fan-out / fan-in with a concurrency limit that is never exceeded.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use conc_async::{LimitError, TryMapError, map_concurrent, try_map_concurrent};

#[tokio::test(start_paused = true)]
async fn no_more_than_limit_run_at_once_and_order_is_kept() {
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let out = map_concurrent(0..20u64, 3, |n| {
        let (running, peak) = (running.clone(), peak.clone());
        async move {
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now, Ordering::SeqCst);
            // Later items finish sooner, so completion order differs from input order.
            tokio::time::sleep(Duration::from_millis(100 - n * 3)).await;
            running.fetch_sub(1, Ordering::SeqCst);
            n * 10
        }
    })
    .await
    .unwrap();
    assert_eq!(out, (0..20).map(|n| n * 10).collect::<Vec<_>>());
    assert_eq!(peak.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn the_first_error_stops_the_rest() {
    let started = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(AtomicUsize::new(0));
    let outcome = try_map_concurrent(0..10u64, 2, |n| {
        let (started, finished) = (started.clone(), finished.clone());
        async move {
            started.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(if n == 1 { 5 } else { 50 })).await;
            if n == 1 {
                return Err("item 1 broke");
            }
            finished.fetch_add(1, Ordering::SeqCst);
            Ok(n)
        }
    })
    .await;
    assert_eq!(
        outcome,
        Err(TryMapError::Failed {
            index: 1,
            error: "item 1 broke"
        })
    );
    assert_eq!(
        finished.load(Ordering::SeqCst),
        0,
        "item 0 was aborted, not awaited"
    );
    assert!(started.load(Ordering::SeqCst) <= 3);
}

#[tokio::test]
async fn a_zero_limit_is_an_error() {
    assert_eq!(
        map_concurrent([1], 0, |n| async move { n }).await,
        Err(LimitError)
    );
    assert_eq!(
        try_map_concurrent([1], 0, |n| async move { Ok::<_, ()>(n) }).await,
        Err(TryMapError::Limit(LimitError))
    );
}
