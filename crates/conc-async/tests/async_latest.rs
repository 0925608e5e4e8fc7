//! A stream runner's pattern as one type: the latest run wins.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use conc_async::{Latest, LatestOutcome};
use conc_core::AbortReason;

#[tokio::test(start_paused = true)]
async fn rapid_reruns_commit_only_the_last() {
    let latest = Arc::new(Latest::<u32>::new("chat-stream").unwrap());
    let mut runs = Vec::new();
    for i in 0..5u32 {
        let latest = latest.clone();
        runs.push(tokio::spawn(async move {
            latest
                .run(["conv-1", &i.to_string()], |signal| async move {
                    let _ = signal
                        .run_until_aborted(tokio::time::sleep(Duration::from_millis(50)))
                        .await;
                    i
                })
                .await
        }));
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let mut outcomes = Vec::new();
    for run in runs {
        outcomes.push(run.await.unwrap());
    }
    assert_eq!(outcomes[4], LatestOutcome::Committed(4));
    for outcome in &outcomes[..4] {
        assert_eq!(outcome, &LatestOutcome::Aborted(AbortReason::Superseded));
    }
    assert_eq!(latest.value(), Some(4));
}

#[tokio::test(start_paused = true)]
async fn an_identical_run_in_flight_is_coalesced() {
    let latest = Latest::<u32>::new("title-generation").unwrap();
    let calls = AtomicUsize::new(0);
    let work = |_signal| async {
        calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(10)).await;
        7
    };
    let (first, second) = tokio::join!(latest.run(["conv-1"], work), latest.run(["conv-1"], work));
    assert_eq!(first, LatestOutcome::Committed(7));
    assert_eq!(second, LatestOutcome::Coalesced);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn work_that_ignores_its_signal_is_still_not_committed() {
    let latest = Arc::new(Latest::<&'static str>::new("search").unwrap());
    let stubborn = {
        let latest = latest.clone();
        tokio::spawn(async move {
            latest
                .run(["old"], |_signal| async {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    "old"
                })
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(1)).await;
    latest.cancel(AbortReason::user("unmount"));
    assert!(matches!(
        stubborn.await.unwrap(),
        LatestOutcome::Aborted(_) | LatestOutcome::Stale
    ));
    assert_eq!(latest.value(), None);
    assert!(Latest::<u8>::new("").is_err());
}

/// Stop, then the same query again: the new run is not coalesced onto the cancelled one,
/// and it commits.
#[tokio::test(start_paused = true)]
async fn cancel_then_run_with_the_same_key_commits() {
    let latest = std::sync::Arc::new(Latest::<String>::new("search").unwrap());
    let first = {
        let latest = latest.clone();
        tokio::spawn(async move {
            latest
                .run(["rust"], |signal| async move {
                    signal
                        .run_until_aborted(tokio::time::sleep(Duration::from_secs(10)))
                        .await
                        .ok();
                    "first".to_owned()
                })
                .await
        })
    };
    tokio::task::yield_now().await;
    latest.cancel(AbortReason::user("stop"));
    let again = latest.run(["rust"], |_| async { "again".to_owned() }).await;
    assert_eq!(again, LatestOutcome::Committed("again".to_owned()));
    assert_eq!(latest.value().as_deref(), Some("again"));
    assert!(matches!(first.await.unwrap(), LatestOutcome::Aborted(_)));
}
