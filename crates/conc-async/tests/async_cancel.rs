//! Conversions between `AbortSignal` and tokio-util's `CancellationToken`.

use std::time::Duration;

use conc_async::{AbortSignalExt as _, CancellationTokenExt as _, NoRuntime};
use conc_core::{AbortController, AbortReason, AbortSignal};
use tokio_util::sync::CancellationToken;

#[tokio::test(start_paused = true)]
async fn an_abort_cancels_the_token() {
    let controller = AbortController::new();
    let token = controller.signal().to_cancellation_token().unwrap();
    assert!(!token.is_cancelled());
    controller.abort(AbortReason::Shutdown);
    tokio::time::timeout(Duration::from_secs(1), token.cancelled())
        .await
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_token_aborts_the_signal() {
    let token = CancellationToken::new();
    let signal = token.to_abort_signal(AbortReason::Shutdown).unwrap();
    token.cancel();
    let reason = tokio::time::timeout(Duration::from_secs(1), signal.aborted())
        .await
        .unwrap();
    assert_eq!(reason, AbortReason::Shutdown);
}

/// Token -> signal needs a runtime for its bridge task; signal -> token needs none.
#[test]
fn outside_a_runtime_only_the_token_side_is_a_typed_error() {
    assert_eq!(
        CancellationToken::new()
            .to_abort_signal(AbortReason::Shutdown)
            .unwrap_err(),
        NoRuntime
    );
    let controller = AbortController::new();
    let token = controller.signal().to_cancellation_token().unwrap();
    controller.abort(AbortReason::Shutdown);
    assert!(token.is_cancelled());
    assert!(AbortSignal::never().to_cancellation_token().is_ok());
}

/// 10 000 conversions each way leave no task alive once both sides are dropped, and a
/// converted token still follows its signal.
#[tokio::test]
async fn conversions_leave_no_task_behind() {
    let metrics = tokio::runtime::Handle::current().metrics();
    let controller = conc_core::AbortController::new();
    let signal = controller.signal();
    for _ in 0..10_000 {
        drop(signal.to_cancellation_token().unwrap());
    }
    assert_eq!(
        metrics.num_alive_tasks(),
        0,
        "signal -> token spawns nothing"
    );
    let token = tokio_util::sync::CancellationToken::new();
    for _ in 0..10_000 {
        drop(
            token
                .to_abort_signal(conc_core::AbortReason::Shutdown)
                .unwrap(),
        );
    }
    for _ in 0..1000 {
        if metrics.num_alive_tasks() == 0 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(
        metrics.num_alive_tasks(),
        0,
        "every bridge task ended with its signal"
    );
    let converted = signal.to_cancellation_token().unwrap();
    controller.abort(conc_core::AbortReason::Shutdown);
    assert!(converted.is_cancelled());
}
