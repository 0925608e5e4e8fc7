//! Conversions between conc-core's [`AbortSignal`] and tokio-util's [`CancellationToken`].
//!
//! Each conversion spawns one small bridge task on the current tokio runtime; it ends as
//! soon as either side fires.

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
    /// A token cancelled when this signal aborts (at once if it already has).
    fn to_cancellation_token(&self) -> Result<CancellationToken, NoRuntime>;
}

impl AbortSignalExt for AbortSignal {
    fn to_cancellation_token(&self) -> Result<CancellationToken, NoRuntime> {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| NoRuntime)?;
        let token = CancellationToken::new();
        if self.is_aborted() {
            token.cancel();
            return Ok(token);
        }
        let (signal, bridge) = (self.clone(), token.clone());
        handle.spawn(async move {
            tokio::select! {
                _ = signal.aborted() => bridge.cancel(),
                () = bridge.cancelled() => {}
            }
        });
        Ok(token)
    }
}

/// `CancellationToken` → `AbortSignal`.
pub trait CancellationTokenExt {
    /// A signal aborted (with `reason`) when this token is cancelled.
    fn to_abort_signal(&self, reason: AbortReason) -> Result<AbortSignal, NoRuntime>;
}

impl CancellationTokenExt for CancellationToken {
    fn to_abort_signal(&self, reason: AbortReason) -> Result<AbortSignal, NoRuntime> {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| NoRuntime)?;
        let controller = AbortController::new();
        let signal = controller.signal();
        if self.is_cancelled() {
            controller.abort(reason);
            return Ok(signal);
        }
        let token = self.clone();
        let watched = signal.clone();
        handle.spawn(async move {
            tokio::select! {
                () = token.cancelled() => { controller.abort(reason); }
                _ = watched.aborted() => {}
            }
        });
        Ok(signal)
    }
}
