//! Cancellable, composable tasks.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use std::time::Duration;

use conc_async::{EmptyRace, Task, TaskError, TimeoutError};
use conc_core::{AbortReason, AbortSignal};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
enum FetchError {
    #[error("fetch failed: {0}")]
    Failed(&'static str),
    #[error(transparent)]
    Timeout(#[from] TimeoutError),
}

fn fetch(value: u32, after: Duration) -> Task<u32, FetchError> {
    Task::new(move |signal: AbortSignal| async move {
        signal
            .run_until_aborted(tokio::time::sleep(after))
            .await
            .map_err(|_| FetchError::Failed("aborted"))?;
        Ok(value)
    })
}

#[tokio::test(start_paused = true)]
async fn map_and_then_and_map_err_compose() {
    let task = fetch(2, Duration::from_millis(5))
        .map(|n| n * 10)
        .and_then(|n| fetch(n + 1, Duration::from_millis(5)))
        .map_err(|e| e.to_string());
    assert_eq!(task.run(AbortSignal::never()).await, Ok(21));
    let failing =
        Task::<u32, FetchError>::err(FetchError::Failed("503")).map_err(|e| e.to_string());
    assert_eq!(
        failing.spawn().await,
        Err(TaskError::Failed("fetch failed: 503".into()))
    );
}

#[tokio::test(start_paused = true)]
async fn timeout_fails_and_aborts_the_task_signal() {
    let seen = Arc::new(parking_lot::Mutex::new(None::<AbortSignal>));
    let keep = seen.clone();
    let task = Task::<u32, FetchError>::new(move |signal| async move {
        *keep.lock() = Some(signal.clone());
        signal.aborted().await;
        Ok(1)
    })
    .timeout("slow fetch", Duration::from_millis(10));
    let outcome = task.run(AbortSignal::never()).await;
    assert_eq!(
        outcome,
        Err(FetchError::Timeout(TimeoutError::new(
            "slow fetch",
            Duration::from_millis(10)
        )))
    );
    let signal = seen.lock().clone().expect("the task ran");
    assert_eq!(signal.reason(), Some(AbortReason::Timeout));
}

#[tokio::test(start_paused = true)]
async fn all_fails_fast_and_cancels_the_siblings() {
    let sibling_aborted = Arc::new(AtomicBool::new(false));
    let flag = sibling_aborted.clone();
    let slow_sibling = Task::new(move |signal: AbortSignal| async move {
        signal.aborted().await;
        flag.store(true, Ordering::SeqCst);
        Ok(0)
    });
    let failing = Task::new(|_| async {
        tokio::time::sleep(Duration::from_millis(5)).await;
        Err(FetchError::Failed("boom"))
    });
    let started = tokio::time::Instant::now();
    let outcome = Task::all([fetch(1, Duration::from_millis(1)), slow_sibling, failing])
        .spawn()
        .await;
    assert_eq!(outcome, Err(TaskError::Failed(FetchError::Failed("boom"))));
    assert!(started.elapsed() < Duration::from_millis(50));
    let ok = Task::all([
        fetch(1, Duration::from_millis(9)),
        fetch(2, Duration::from_millis(1)),
    ]);
    assert_eq!(ok.run(AbortSignal::never()).await, Ok(vec![1, 2]));
}

#[tokio::test(start_paused = true)]
async fn all_settled_returns_every_outcome() {
    let outcome = Task::all_settled([
        fetch(1, Duration::from_millis(3)),
        Task::err(FetchError::Failed("x")),
    ])
    .run(AbortSignal::never())
    .await
    .unwrap();
    assert_eq!(outcome, vec![Ok(1), Err(FetchError::Failed("x"))]);
}

#[tokio::test(start_paused = true)]
async fn race_takes_the_first_to_settle() {
    let race = Task::race([
        fetch(1, Duration::from_millis(30)),
        fetch(2, Duration::from_millis(10)),
    ])
    .unwrap();
    assert_eq!(race.run(AbortSignal::never()).await, Ok(2));
    assert_eq!(Task::<u32, FetchError>::race([]).unwrap_err(), EmptyRace);
}

#[tokio::test(start_paused = true)]
async fn a_spawned_task_tells_cancelled_from_failed_and_panicked() {
    let handle = fetch(1, Duration::from_secs(60)).spawn();
    assert!(!handle.is_cancelled());
    assert!(handle.cancel(AbortReason::user("stop")));
    assert!(handle.is_cancelled());
    assert_eq!(
        handle.await,
        Err(TaskError::Cancelled(AbortReason::user("stop")))
    );

    let panics = Task::<u32, FetchError>::new(|_| async { panic!("task bug") }).spawn();
    assert_eq!(panics.await, Err(TaskError::Panicked("task bug".into())));
}
