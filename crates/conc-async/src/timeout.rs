//! Named timeouts: every external call gets one, and its error says which call ran late.
//!
//! The error names the operation and the limit, so a log line says what hung. Where an
//! [`AbortController`] is passed, the timeout also aborts it with [`AbortReason::Timeout`],
//! so the work it fed a signal to stops too.

use std::borrow::Cow;
use std::future::Future;
use std::time::Duration;

use conc_core::{AbortController, AbortReason, Mutex, MutexGuard};

/// An operation ran past its time limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{operation}` timed out after {limit:?}")]
pub struct TimeoutError {
    operation: Cow<'static, str>,
    limit: Duration,
}

impl TimeoutError {
    /// A timeout error for `operation` and `limit`.
    pub fn new(operation: impl Into<Cow<'static, str>>, limit: Duration) -> Self {
        Self {
            operation: operation.into(),
            limit,
        }
    }

    /// The operation's name.
    pub fn operation(&self) -> &str {
        &self.operation
    }

    /// The limit it ran past.
    pub fn limit(&self) -> Duration {
        self.limit
    }
}

/// Runs `future` for at most `limit`; the error names `operation`.
///
/// ```
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let slow = conc_async::timeout("fetch profile", Duration::from_secs(2), std::future::pending::<()>());
/// let error = slow.await.unwrap_err();
/// assert_eq!(error.to_string(), "`fetch profile` timed out after 2s");
/// # }
/// ```
///
/// # Cancel safety
///
/// Cancel safe as far as this function goes: dropping it drops `future`.
pub async fn timeout<F: Future>(
    operation: impl Into<Cow<'static, str>>,
    limit: Duration,
    future: F,
) -> Result<F::Output, TimeoutError> {
    tokio::time::timeout(limit, future)
        .await
        .map_err(|_| TimeoutError::new(operation, limit))
}

/// Like [`timeout`], and on expiry also aborts `controller` with [`AbortReason::Timeout`].
///
/// # Cancel safety
///
/// Cancel safe as far as this function goes: dropping it drops `future` and aborts nothing.
pub async fn timeout_abort<F: Future>(
    operation: impl Into<Cow<'static, str>>,
    limit: Duration,
    controller: &AbortController,
    future: F,
) -> Result<F::Output, TimeoutError> {
    let outcome = timeout(operation, limit, future).await;
    if outcome.is_err() {
        controller.abort(AbortReason::Timeout);
    }
    outcome
}

/// Waits at most `limit` for a conc-core [`Mutex`].
///
/// # Cancel safety
///
/// Cancel safe: a waiter that times out or is dropped gives up its place in the queue and
/// passes on a hand-off it had been granted.
pub async fn lock_timeout<'a, T>(
    mutex: &'a Mutex<T>,
    limit: Duration,
) -> Result<MutexGuard<'a, T>, TimeoutError> {
    timeout("mutex lock", limit, mutex.lock()).await
}

/// `.with_timeout(name, limit)` on any future.
pub trait FutureExt: Future + Sized {
    /// Runs this future for at most `limit`; the error names `operation`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use conc_async::FutureExt as _;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let answer = async { 42 }.with_timeout("answer", Duration::from_secs(1)).await;
    /// assert_eq!(answer, Ok(42));
    /// # }
    /// ```
    ///
    /// # Cancel safety
    ///
    /// Cancel safe as far as this method goes: dropping it drops the future.
    fn with_timeout(
        self,
        operation: impl Into<Cow<'static, str>>,
        limit: Duration,
    ) -> impl Future<Output = Result<Self::Output, TimeoutError>> {
        timeout(operation, limit, self)
    }
}

impl<F: Future> FutureExt for F {}
