//! [`AbortSignal`]: the side that observes an abort (check it, wait for it, run work until
//! it fires, or register a callback); and the two things it hands out, the
//! [`WaitAborted`] future and the [`AbortCallback`] registration.

use std::fmt;
use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::task::{Context, Poll};

use super::controller::AbortController;
use super::reason::{AbortReason, Aborted};
use super::tree::{Handle, Inner};
use crate::loom::Ordering;

/// Observes an [`AbortController`]: check it, wait for it, or run work until it fires.
///
/// Cheap to clone; every clone observes the same controller.
///
/// # Example
///
/// ```
/// use conc_core::{AbortController, AbortReason};
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let controller = AbortController::new();
/// let signal = controller.signal();
/// controller.abort(AbortReason::Superseded);
///
/// let outcome = signal.run_until_aborted(std::future::pending::<()>()).await;
/// assert_eq!(outcome.unwrap_err().reason(), &AbortReason::Superseded);
/// # });
/// ```
#[derive(Clone)]
pub struct AbortSignal {
    pub(super) inner: Handle,
}

impl AbortSignal {
    /// A signal that is never aborted (its controller is gone).
    pub fn never() -> Self {
        AbortController::new().signal()
    }

    /// Whether the signal is aborted.
    #[inline]
    pub fn is_aborted(&self) -> bool {
        self.inner.aborted.load(Ordering::Acquire)
    }

    /// Why it was aborted, or `None` while it is not.
    pub fn reason(&self) -> Option<AbortReason> {
        self.inner.reason()
    }

    /// `Err(Aborted)` once aborted, `Ok(())` before: for a check between steps of work.
    pub fn check(&self) -> Result<(), Aborted> {
        match self.reason() {
            Some(reason) => Err(Aborted::new(reason)),
            None => Ok(()),
        }
    }

    /// Completes with the reason once the signal is aborted (at once if it already is).
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe: dropping the future unregisters its waker and changes
    /// nothing else.
    pub fn aborted(&self) -> WaitAborted<'_> {
        WaitAborted {
            inner: &self.inner,
            waiter: None,
        }
    }

    /// Runs `future` until it completes or the signal is aborted, whichever comes first.
    /// An abort that is already signalled wins over a result that is also ready.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe as far as this method goes: dropping it drops `future`, whose own cancel
    /// safety then applies.
    pub async fn run_until_aborted<F: Future>(&self, future: F) -> Result<F::Output, Aborted> {
        let mut future = pin!(future);
        let mut aborted = pin!(self.aborted());
        poll_fn(|cx| {
            if let Poll::Ready(reason) = aborted.as_mut().poll(cx) {
                return Poll::Ready(Err(Aborted::new(reason)));
            }
            future.as_mut().poll(cx).map(Ok)
        })
        .await
    }

    /// Runs `callback` once, with the reason, when this signal is aborted (at once, on this
    /// thread, if it already is); otherwise on the thread that aborts, after every waiter is
    /// woken. Dropping the returned [`AbortCallback`] before then unregisters it;
    /// [`AbortCallback::detach`] keeps it until the signal aborts or its last handle is
    /// gone. No task and no waiter: the way to feed another cancellation primitive.
    pub fn on_abort(&self, callback: impl FnOnce(&AbortReason) + Send + 'static) -> AbortCallback {
        let mut state = self.inner.state.lock();
        if let Some(reason) = state.reason.clone() {
            drop(state);
            callback(&reason);
            return AbortCallback { inner: None, id: 0 };
        }
        let id = state.next_waiter;
        state.next_waiter += 1;
        state.callbacks.push((id, Box::new(callback)));
        drop(state);
        AbortCallback {
            inner: Some(self.inner.clone()),
            id,
        }
    }

    /// A new controller whose signal is aborted, with [`AbortReason::Parent`], when this one
    /// is (at once if this one already is). Aborting the child does not touch the parent.
    ///
    /// The link is transitive: when an intermediate controller and all its signals are
    /// dropped, its children are linked to its parent, so an abort of any ancestor still
    /// reaches them. O(1) per call; a child leaves its parent's list when it is aborted or
    /// dropped, so a long-lived parent does not accumulate dead children.
    pub fn child(&self) -> AbortController {
        AbortController {
            inner: Handle::new(self.inner.child()),
        }
    }
}

#[cfg(all(test, loom))]
impl AbortSignal {
    /// The children linked to this signal's node now (for the loom models: a link left
    /// behind would keep a dropped node alive).
    pub(crate) fn linked_children(&self) -> usize {
        self.inner.linked_children()
    }
}

impl fmt::Debug for AbortSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AbortSignal")
            .field("reason", &self.reason())
            .finish()
    }
}

/// A callback registered with [`AbortSignal::on_abort`]; dropping it unregisters the
/// callback (if it has not run yet).
#[must_use = "dropping the registration unregisters the callback; call detach() to keep it"]
pub struct AbortCallback {
    inner: Option<Handle>,
    id: u64,
}

impl AbortCallback {
    /// Keeps the callback registered (until the signal aborts or its last handle is gone)
    /// without holding this registration.
    pub fn detach(mut self) {
        self.inner = None;
    }
}

impl Drop for AbortCallback {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            let removed = {
                let mut state = inner.state.lock();
                state
                    .callbacks
                    .iter()
                    .position(|(id, _)| *id == self.id)
                    .map(|at| state.callbacks.swap_remove(at))
            };
            drop(removed);
        }
    }
}

impl fmt::Debug for AbortCallback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AbortCallback")
            .field("registered", &self.inner.is_some())
            .finish()
    }
}

/// The future of [`AbortSignal::aborted`].
#[must_use = "futures do nothing unless polled"]
pub struct WaitAborted<'a> {
    inner: &'a Inner,
    waiter: Option<u64>,
}

impl Future for WaitAborted<'_> {
    type Output = AbortReason;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<AbortReason> {
        let mut state = self.inner.state.lock();
        if let Some(reason) = &state.reason {
            let reason = reason.clone();
            drop(state);
            // The abort took every waker with it.
            self.waiter = None;
            return Poll::Ready(reason);
        }
        match self.waiter {
            Some(id) => {
                if let Some((_, waker)) = state.waiters.iter_mut().find(|(w, _)| *w == id)
                    && !waker.will_wake(cx.waker())
                {
                    *waker = cx.waker().clone();
                }
            }
            None => {
                let id = state.next_waiter;
                state.next_waiter += 1;
                state.waiters.push((id, cx.waker().clone()));
                drop(state);
                self.waiter = Some(id);
            }
        }
        Poll::Pending
    }
}

impl Drop for WaitAborted<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.waiter {
            let mut state = self.inner.state.lock();
            if let Some(at) = state.waiters.iter().position(|(w, _)| *w == id) {
                state.waiters.swap_remove(at);
            }
        }
    }
}

impl fmt::Debug for WaitAborted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WaitAborted")
            .field("registered", &self.waiter.is_some())
            .finish()
    }
}
