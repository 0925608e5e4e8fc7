//! [`AbortController`]: the side that aborts, and [`Unobserved`], the future that completes
//! once none of its signals is left.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use super::reason::AbortReason;
use super::signal::AbortSignal;
use super::tree::{Handle, Inner, UNOBSERVED_WANTED};
use crate::loom::Ordering;

/// Aborts the work that watches its [`AbortSignal`]s.
///
/// Dropping the controller does not abort; the signals then simply never fire (unless a
/// parent aborts them).
///
/// # Example
///
/// ```
/// use conc_core::{AbortController, AbortReason};
///
/// let controller = AbortController::new();
/// let signal = controller.signal();
/// assert!(!signal.is_aborted());
/// assert!(controller.abort(AbortReason::user("stop generating")));
/// assert_eq!(signal.reason(), Some(AbortReason::user("stop generating")));
/// ```
pub struct AbortController {
    pub(super) inner: Handle,
}

impl AbortController {
    /// A controller whose signal is not aborted.
    pub fn new() -> Self {
        Self {
            inner: Handle::new(Inner::root()),
        }
    }

    /// A signal that observes this controller.
    pub fn signal(&self) -> AbortSignal {
        AbortSignal {
            inner: self.inner.clone(),
        }
    }

    /// Aborts with `reason`, wakes every waiter and aborts every child signal with
    /// [`AbortReason::Parent`]. Returns `false` (and changes nothing) if already aborted.
    pub fn abort(&self, reason: AbortReason) -> bool {
        self.inner.abort(reason)
    }

    /// Whether the signal is aborted.
    pub fn is_aborted(&self) -> bool {
        self.inner.aborted.load(Ordering::Acquire)
    }

    /// Completes once nobody observes this controller any more: every [`AbortSignal`] it
    /// handed out (and every clone of them) has been dropped. A bridge that feeds the
    /// controller from elsewhere can stop then.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future only forgets its waker.
    pub fn unobserved(&self) -> Unobserved<'_> {
        Unobserved { inner: &self.inner }
    }
}

/// The future of [`AbortController::unobserved`].
#[must_use = "futures do nothing unless polled"]
pub struct Unobserved<'a> {
    inner: &'a Inner,
}

impl Future for Unobserved<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.inner.handles.load(Ordering::Acquire) & !UNOBSERVED_WANTED <= 1 {
            return Poll::Ready(());
        }
        self.inner.state.lock().unobserved = Some(cx.waker().clone());
        // A signal dropped between the check and the registration found no waker (nor
        // the bit, which is set after the waker).
        let handles = self
            .inner
            .handles
            .fetch_or(UNOBSERVED_WANTED, Ordering::AcqRel);
        if handles & !UNOBSERVED_WANTED <= 1 {
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

impl fmt::Debug for Unobserved<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Unobserved").finish_non_exhaustive()
    }
}

impl Default for AbortController {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for AbortController {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AbortController")
            .field("reason", &self.inner.reason())
            .finish()
    }
}
