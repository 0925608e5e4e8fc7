//! Abort signals: cancel superseded work, and treat abort as an outcome.
//!
//! An [`AbortController`] aborts; its [`AbortSignal`]s observe. A signal can have children
//! ([`AbortSignal::child`]) that are aborted with it. An [`AbortManager`] keeps one active
//! lease per workflow and aborts the previous one when new work begins.

use std::error::Error;
use std::fmt;
use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use crate::loom::{AtomicBool, AtomicUsize, Mutex, Ordering};

/// Why a signal was aborted.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AbortReason {
    /// Newer work in the same scope replaced this work.
    Superseded,
    /// The work ran past its time limit.
    Timeout,
    /// The service is shutting down.
    Shutdown,
    /// The parent signal was aborted, for the reason inside.
    Parent(Box<AbortReason>),
    /// A reason given by the user, such as "stop generating".
    User(Arc<str>),
}

impl AbortReason {
    /// A user-supplied reason.
    pub fn user(message: impl Into<Arc<str>>) -> Self {
        AbortReason::User(message.into())
    }

    /// The first reason in the chain that is not [`Parent`](AbortReason::Parent).
    pub fn root(&self) -> &AbortReason {
        let mut reason = self;
        while let AbortReason::Parent(inner) = reason {
            reason = inner;
        }
        reason
    }
}

impl fmt::Display for AbortReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AbortReason::Superseded => f.write_str("superseded by newer work"),
            AbortReason::Timeout => f.write_str("timed out"),
            AbortReason::Shutdown => f.write_str("shutting down"),
            AbortReason::Parent(reason) => write!(f, "parent aborted: {reason}"),
            AbortReason::User(message) => f.write_str(message),
        }
    }
}

/// The error of work that was aborted. An outcome, not a failure: do not log it as an
/// error, do not retry it (see [`is_abort_error`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("operation aborted: {reason}")]
pub struct Aborted {
    reason: AbortReason,
}

impl Aborted {
    /// An `Aborted` error for `reason`.
    pub fn new(reason: AbortReason) -> Self {
        Self { reason }
    }

    /// Why the work was aborted.
    pub fn reason(&self) -> &AbortReason {
        &self.reason
    }

    /// The reason, by value.
    pub fn into_reason(self) -> AbortReason {
        self.reason
    }
}

/// Whether `error`, or any error in its [`source`](Error::source) chain, is [`Aborted`]
/// (including an [`Aborted`] carried inside a `std::io::Error`).
///
/// ```
/// use conc_core::{AbortReason, Aborted, is_abort_error};
///
/// #[derive(Debug, thiserror::Error)]
/// #[error("fetch failed")]
/// struct FetchError(#[source] Aborted);
///
/// let error = FetchError(Aborted::new(AbortReason::Superseded));
/// assert!(is_abort_error(&error));
/// assert!(!is_abort_error(&std::io::Error::other("disk full")));
/// ```
pub fn is_abort_error(error: &(dyn Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(error) = current {
        if error.is::<Aborted>() {
            return true;
        }
        // `io::Error` forwards `source()` to its payload's source, skipping the payload
        // itself; look inside it too.
        if let Some(inner) = error
            .downcast_ref::<std::io::Error>()
            .and_then(|e| e.get_ref())
            && is_abort_error(inner)
        {
            return true;
        }
        current = error.source();
    }
    false
}

/// One node of an abort tree: a controller and its signals share it.
///
/// The tree: a node holds its children strongly and its parent strongly; the links are
/// changed only under the tree's lock (shared by every node of one tree), one node's
/// state locked at a time, so they cannot deadlock. A node leaves the tree when it is
/// aborted (its children go with the cascade) or when its last handle (controller or
/// signal) is dropped: then its children move to its parent, so an abort of any ancestor
/// still reaches every descendant. Every operation walks the tree with a work list, never
/// by recursion, and each node costs one allocation and one slot in its parent.
/// The top bit of `Inner::handles`: an `unobserved` future has registered a waker (set
/// once, never cleared). The count below it never comes near it.
const UNOBSERVED_WANTED: usize = 1 << (usize::BITS - 1);

struct Inner {
    /// Set (Release) after `reason` is, so a reader that sees `true` finds the reason.
    aborted: AtomicBool,
    /// Controllers and signals alive (the tree's own links do not count), and the
    /// [`UNOBSERVED_WANTED`] bit.
    handles: AtomicUsize,
    /// Serialises the changes of links in this node's tree.
    tree: Arc<Mutex<()>>,
    state: Mutex<State>,
}

/// A callback run once when a node aborts.
type Callback = Box<dyn FnOnce(&AbortReason) + Send>;

#[derive(Default)]
struct State {
    reason: Option<AbortReason>,
    waiters: Vec<(u64, Waker)>,
    next_waiter: u64,
    callbacks: Vec<(u64, Callback)>,
    /// Woken when only one handle (the controller) is left.
    unobserved: Option<Waker>,
    parent: Option<Arc<Inner>>,
    /// This node's index in its parent's `children`.
    slot: usize,
    children: Vec<Arc<Inner>>,
}

/// The reason a descendant gets: the aborted node's own reason, wrapped once in
/// [`AbortReason::Parent`] (never nested, so a deep tree costs no more per node).
fn cascaded(reason: &AbortReason) -> AbortReason {
    match reason {
        AbortReason::Parent(_) => reason.clone(),
        other => AbortReason::Parent(Box::new(other.clone())),
    }
}

impl Inner {
    fn new(tree: Arc<Mutex<()>>) -> Arc<Self> {
        Arc::new(Inner {
            aborted: AtomicBool::new(false),
            handles: AtomicUsize::new(1),
            tree,
            state: Mutex::new(State::default()),
        })
    }

    fn root() -> Arc<Self> {
        Self::new(Arc::new(Mutex::new(())))
    }

    /// Removes the child at `slot` from `parent`'s children, fixing the slot of the child
    /// moved into its place. The tree's lock must be held.
    fn unlink(parent: &Inner, slot: usize) {
        let moved = {
            let mut state = parent.state.lock();
            if slot >= state.children.len() {
                return;
            }
            state.children.swap_remove(slot);
            state.children.get(slot).cloned()
        };
        if let Some(moved) = moved {
            moved.state.lock().slot = slot;
        }
    }

    fn abort(self: &Arc<Self>, reason: AbortReason) -> bool {
        let tree = self.tree.clone();
        let _links = tree.lock();
        let (waiters, children, parent, own_callbacks) = {
            let mut state = self.state.lock();
            if state.reason.is_some() {
                return false;
            }
            state.reason = Some(reason.clone());
            self.aborted.store(true, Ordering::Release);
            let parent = state.parent.take().map(|p| (p, state.slot));
            (
                std::mem::take(&mut state.waiters),
                std::mem::take(&mut state.children),
                parent,
                std::mem::take(&mut state.callbacks),
            )
        };
        let mut callbacks: Vec<(AbortReason, Callback)> = own_callbacks
            .into_iter()
            .map(|(_, callback)| (reason.clone(), callback))
            .collect();
        // It no longer needs its parent's cascade: leave the parent's children.
        if let Some((parent, slot)) = parent {
            Self::unlink(&parent, slot);
        }
        let mut wakers: Vec<Waker> = waiters.into_iter().map(|(_, w)| w).collect();
        let descendants_reason = cascaded(&reason);
        let mut work = children;
        while let Some(node) = work.pop() {
            let mut state = node.state.lock();
            state.parent = None;
            if state.reason.is_some() {
                continue;
            }
            state.reason = Some(descendants_reason.clone());
            node.aborted.store(true, Ordering::Release);
            wakers.extend(
                std::mem::take(&mut state.waiters)
                    .into_iter()
                    .map(|(_, w)| w),
            );
            for (_, callback) in std::mem::take(&mut state.callbacks) {
                callbacks.push((descendants_reason.clone(), callback));
            }
            work.append(&mut state.children);
        }
        drop(_links);
        for waker in wakers {
            waker.wake();
        }
        for (reason, callback) in callbacks {
            callback(&reason);
        }
        true
    }

    /// A new child node, aborted at once if this one is.
    fn child(self: &Arc<Self>) -> Arc<Inner> {
        let child = Inner::new(self.tree.clone());
        let _links = self.tree.lock();
        let mut state = self.state.lock();
        match &state.reason {
            Some(reason) => {
                let reason = cascaded(reason);
                drop(state);
                child.state.lock().reason = Some(reason);
                child.aborted.store(true, Ordering::Release);
            }
            None => {
                let slot = state.children.len();
                state.children.push(child.clone());
                drop(state);
                let mut child_state = child.state.lock();
                child_state.parent = Some(self.clone());
                child_state.slot = slot;
            }
        }
        child
    }

    /// The last handle is gone: nobody can abort this node directly any more, so it leaves
    /// the tree, and its children move to its parent (or become roots).
    fn detach(self: &Arc<Self>) {
        {
            // Nothing to do for a node with no links (a lone root, an aborted node): no
            // handle is left to add a child, and only an ancestor's detach (under the
            // tree's lock) could give it a parent, which needs a parent to begin with.
            let state = self.state.lock();
            if state.parent.is_none() && state.children.is_empty() {
                return;
            }
        }
        let _links = self.tree.lock();
        let (parent, children) = {
            let mut state = self.state.lock();
            let parent = state.parent.take().map(|p| (p, state.slot));
            (parent, std::mem::take(&mut state.children))
        };
        let new_parent = match parent {
            Some((parent, slot)) => {
                Self::unlink(&parent, slot);
                Some(parent)
            }
            None => None,
        };
        let first = match &new_parent {
            Some(parent) => {
                let mut state = parent.state.lock();
                let first = state.children.len();
                state.children.extend(children.iter().cloned());
                first
            }
            None => 0,
        };
        for (n, child) in children.iter().enumerate() {
            let mut state = child.state.lock();
            state.parent.clone_from(&new_parent);
            state.slot = first + n;
        }
    }

    fn reason(&self) -> Option<AbortReason> {
        if !self.aborted.load(Ordering::Acquire) {
            return None;
        }
        self.state.lock().reason.clone()
    }
}

/// A counted reference to a node: a controller or a signal.
struct Handle(Arc<Inner>);

impl Handle {
    fn new(inner: Arc<Inner>) -> Self {
        Handle(inner)
    }
}

impl Clone for Handle {
    fn clone(&self) -> Self {
        self.0.handles.fetch_add(1, Ordering::Relaxed);
        Handle(self.0.clone())
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        let before = self.0.handles.fetch_sub(1, Ordering::AcqRel);
        match before & !UNOBSERVED_WANTED {
            1 => self.0.detach(),
            // Maybe only the controller is left: tell whoever waits for that. Without the
            // bit, no `unobserved` future has registered a waker, so signals cloned and
            // dropped per task touch only the count, never the lock. The bit and the count
            // share one atomic: the poll's `fetch_or` and this `fetch_sub` are ordered, so
            // either this sees the bit or the poll sees this decrement.
            2 if before & UNOBSERVED_WANTED != 0 => {
                let waker = self.0.state.lock().unobserved.take();
                if let Some(waker) = waker {
                    waker.wake();
                }
            }
            _ => {}
        }
    }
}

impl std::ops::Deref for Handle {
    type Target = Arc<Inner>;

    fn deref(&self) -> &Arc<Inner> {
        &self.0
    }
}

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
    inner: Handle,
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
    inner: Handle,
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

/// One active lease per workflow: [`begin`](Self::begin) aborts the previous lease with
/// [`AbortReason::Superseded`].
///
/// Cheap to clone; clones share the active lease.
///
/// # Example
///
/// ```
/// use conc_core::{AbortManager, AbortReason};
///
/// let manager = AbortManager::new();
/// let first = manager.begin();
/// let second = manager.begin(); // the user asked again
/// assert_eq!(first.signal().reason(), Some(AbortReason::Superseded));
/// assert!(!second.signal().is_aborted());
/// manager.abort_active(AbortReason::Shutdown); // cleanup
/// assert!(second.signal().is_aborted());
/// ```
#[derive(Clone, Default)]
pub struct AbortManager {
    shared: Arc<ManagerShared>,
}

#[derive(Default)]
struct ManagerShared {
    parent: Option<AbortSignal>,
    state: Mutex<ManagerState>,
}

#[derive(Default)]
struct ManagerState {
    active: Option<(u64, AbortController)>,
    next: u64,
}

impl AbortManager {
    /// A manager with no active lease.
    pub fn new() -> Self {
        Self::default()
    }

    /// A manager whose leases are children of `parent`: aborting it aborts them.
    pub fn with_parent(parent: AbortSignal) -> Self {
        Self {
            shared: Arc::new(ManagerShared {
                parent: Some(parent),
                state: Mutex::default(),
            }),
        }
    }

    /// Starts new work: aborts the active lease (with [`AbortReason::Superseded`]) and
    /// returns the new active one.
    pub fn begin(&self) -> AbortLease {
        let controller = match &self.shared.parent {
            Some(parent) => parent.child(),
            None => AbortController::new(),
        };
        let signal = controller.signal();
        let (id, previous) = {
            let mut state = self.shared.state.lock();
            state.next += 1;
            let id = state.next;
            (id, state.active.replace((id, controller)))
        };
        if let Some((_, previous)) = previous {
            previous.abort(AbortReason::Superseded);
        }
        AbortLease {
            shared: self.shared.clone(),
            id,
            signal,
        }
    }

    /// Aborts the active lease, if any (on cleanup or unmount). Returns whether one was
    /// aborted.
    pub fn abort_active(&self, reason: AbortReason) -> bool {
        let active = self.shared.state.lock().active.take();
        match active {
            Some((_, controller)) => controller.abort(reason),
            None => false,
        }
    }

    /// The signal of the active lease, if any.
    pub fn active_signal(&self) -> Option<AbortSignal> {
        self.shared
            .state
            .lock()
            .active
            .as_ref()
            .map(|(_, controller)| controller.signal())
    }

    /// One-shot work: begins a lease, runs `work(signal)` until it completes or the lease
    /// is aborted (by newer work or [`abort_active`](Self::abort_active)), then ends the
    /// lease.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future drops `work`'s future and ends the lease without aborting it.
    pub async fn with_abort<F, Fut>(&self, work: F) -> Result<Fut::Output, Aborted>
    where
        F: FnOnce(AbortSignal) -> Fut,
        Fut: Future,
    {
        let lease = self.begin();
        let signal = lease.signal();
        signal.run_until_aborted(work(signal.clone())).await
    }
}

impl fmt::Debug for AbortManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let active = self.shared.state.lock().active.as_ref().map(|(id, _)| *id);
        f.debug_struct("AbortManager")
            .field("active", &active)
            .finish()
    }
}

/// The active piece of work of an [`AbortManager`]. Dropping it ends the lease without
/// aborting it.
pub struct AbortLease {
    shared: Arc<ManagerShared>,
    id: u64,
    signal: AbortSignal,
}

impl AbortLease {
    /// The lease's signal, to pass to the work.
    pub fn signal(&self) -> &AbortSignal {
        &self.signal
    }

    /// Whether this lease is still the manager's active one.
    pub fn is_active(&self) -> bool {
        matches!(&self.shared.state.lock().active, Some((id, _)) if *id == self.id)
    }
}

impl Drop for AbortLease {
    fn drop(&mut self) {
        let mut state = self.shared.state.lock();
        if matches!(&state.active, Some((id, _)) if *id == self.id) {
            state.active = None;
        }
    }
}

impl fmt::Debug for AbortLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AbortLease")
            .field("id", &self.id)
            .field("signal", &self.signal)
            .finish()
    }
}
