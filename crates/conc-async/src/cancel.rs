//! Conversions between conc-core's [`AbortSignal`] and tokio-util's [`CancellationToken`].
//!
//! Neither direction leaves anything behind once both sides are gone:
//!
//! - signal → token registers one callback on the signal ([`AbortSignal::on_abort`]); no
//!   task, no waiter. The callback goes when the signal aborts or its last handle is
//!   dropped.
//! - token → signal needs a task (a token tells only a waiting future), and that task ends
//!   as soon as the token is cancelled or every clone of the returned signal is dropped
//!   ([`AbortController::unobserved`]).

use conc_core::{AbortController, AbortReason, AbortSignal};
use tokio_util::sync::CancellationToken;

/// A conversion was asked for outside a tokio runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "converting between AbortSignal and CancellationToken needs a tokio runtime; call it from inside one"
)]
pub struct NoRuntime;

/// `AbortSignal` → `CancellationToken`.
pub trait AbortSignalExt {
    /// A token cancelled when this signal aborts (at once if it already has). Needs no
    /// runtime (it never fails); the `Result` is kept for the other direction's sake.
    fn to_cancellation_token(&self) -> Result<CancellationToken, NoRuntime>;
}

impl AbortSignalExt for AbortSignal {
    fn to_cancellation_token(&self) -> Result<CancellationToken, NoRuntime> {
        let token = CancellationToken::new();
        let bridge = token.clone();
        self.on_abort(move |_| bridge.cancel()).detach();
        Ok(token)
    }
}

/// `CancellationToken` → `AbortSignal`.
pub trait CancellationTokenExt {
    /// A signal aborted (with `reason`) when this token is cancelled. Spawns one small task
    /// on the current runtime, which ends when the token is cancelled or every clone of the
    /// returned signal is dropped.
    fn to_abort_signal(&self, reason: AbortReason) -> Result<AbortSignal, NoRuntime>;
}

impl CancellationTokenExt for CancellationToken {
    fn to_abort_signal(&self, reason: AbortReason) -> Result<AbortSignal, NoRuntime> {
        let controller = AbortController::new();
        let signal = controller.signal();
        if self.is_cancelled() {
            controller.abort(reason);
            return Ok(signal);
        }
        let handle = tokio::runtime::Handle::try_current().map_err(|_| NoRuntime)?;
        let token = self.clone();
        handle.spawn(async move {
            tokio::select! {
                () = token.cancelled() => { controller.abort(reason); }
                () = controller.unobserved() => {}
            }
        });
        Ok(signal)
    }
}
