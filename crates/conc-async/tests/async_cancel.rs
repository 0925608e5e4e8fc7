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

#[test]
fn outside_a_runtime_it_is_a_typed_error() {
    assert_eq!(
        AbortSignal::never().to_cancellation_token().unwrap_err(),
        NoRuntime
    );
}
