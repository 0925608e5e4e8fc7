//! Every external call has a timeout, and its error names the call.

use std::sync::Arc;
use std::time::Duration;

use conc_async::{FutureExt as _, TimeoutError, lock_timeout, timeout, timeout_abort};
use conc_core::{AbortController, AbortReason, Mutex};

#[tokio::test(start_paused = true)]
async fn the_error_names_the_operation_and_the_limit() {
    let error = timeout(
        "provider stream",
        Duration::from_secs(30),
        std::future::pending::<()>(),
    )
    .await
    .unwrap_err();
    assert_eq!(
        error,
        TimeoutError::new("provider stream", Duration::from_secs(30))
    );
    assert_eq!(error.to_string(), "`provider stream` timed out after 30s");
    assert_eq!(
        async { 1 }
            .with_timeout("fast", Duration::from_millis(1))
            .await,
        Ok(1)
    );
}

#[tokio::test(start_paused = true)]
async fn a_timeout_aborts_the_signal_it_was_given() {
    let controller = AbortController::new();
    let signal = controller.signal();
    let work = signal.run_until_aborted(tokio::time::sleep(Duration::from_secs(60)));
    let outcome = timeout_abort("generation", Duration::from_secs(5), &controller, work).await;
    assert!(outcome.is_err());
    assert_eq!(signal.reason(), Some(AbortReason::Timeout));
}

#[tokio::test(start_paused = true)]
async fn lock_timeout_gives_up_its_place() {
    let mutex = Arc::new(Mutex::new(()));
    let held = mutex.lock().await;
    let error = lock_timeout(&mutex, Duration::from_millis(50))
        .await
        .unwrap_err();
    assert_eq!(error.operation(), "mutex lock");
    assert_eq!(mutex.waiters(), 0);
    drop(held);
    assert!(
        lock_timeout(&mutex, Duration::from_millis(50))
            .await
            .is_ok()
    );
}
