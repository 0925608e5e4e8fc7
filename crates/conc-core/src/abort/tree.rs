//! The abort tree: the node a controller and its signals share (whether it is aborted,
//! why, who waits), the links between parent and child nodes, the cascade of an abort down
//! the tree, and [`Handle`], the counted reference by which a controller or signal holds its
//! node. Every lock and atomic here comes from the crate's loom shim.

use std::sync::Arc;
use std::task::Waker;

use super::reason::AbortReason;
use crate::loom::{AtomicBool, AtomicUsize, Mutex, Ordering};

/// The top bit of `Inner::handles`: an `unobserved` future has registered a waker (set
/// once, never cleared). The count below it never comes near it.
pub(super) const UNOBSERVED_WANTED: usize = 1 << (usize::BITS - 1);

/// One node of an abort tree: a controller and its signals share it.
///
/// The tree: a node holds its children strongly and its parent strongly; the links are
/// changed under the tree's lock (shared by every node of one tree), one node's state
/// locked at a time, so they cannot deadlock. One change needs only its node's lock: a
/// new child's link, pushed onto its parent's children under the parent's lock with the
/// child already whole (its parent and slot set), by a caller holding a handle to the
/// parent (so the parent cannot be detaching meanwhile); whatever the tree's lock
/// serialises (an abort's cascade, a sibling's unlink that moves the new child into
/// another slot) locks the parent too, before or after the push. A node leaves the tree when it is
/// aborted (its children go with the cascade) or when its last handle (controller or
/// signal) is dropped: then its children move to its parent, so an abort of any ancestor
/// still reaches every descendant. Every operation walks the tree with a work list, never
/// by recursion, and each node costs one allocation and one slot in its parent.
pub(super) struct Inner {
    /// Set (Release) after `reason` is, so a reader that sees `true` finds the reason.
    pub(super) aborted: AtomicBool,
    /// Controllers and signals alive (the tree's own links do not count), and the
    /// [`UNOBSERVED_WANTED`] bit.
    pub(super) handles: AtomicUsize,
    /// Serialises the changes of links in this node's tree.
    tree: Arc<Mutex<()>>,
    pub(super) state: Mutex<State>,
}

/// A callback run once when a node aborts.
pub(super) type Callback = Box<dyn FnOnce(&AbortReason) + Send>;

/// A node's state, under its lock.
#[derive(Default)]
pub(super) struct State {
    pub(super) reason: Option<AbortReason>,
    pub(super) waiters: Vec<(u64, Waker)>,
    pub(super) next_waiter: u64,
    pub(super) callbacks: Vec<(u64, Callback)>,
    /// Woken when only one handle (the controller) is left.
    pub(super) unobserved: Option<Waker>,
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
        Self::with_state(tree, State::default(), false)
    }

    fn with_state(tree: Arc<Mutex<()>>, state: State, aborted: bool) -> Arc<Self> {
        Arc::new(Inner {
            aborted: AtomicBool::new(aborted),
            handles: AtomicUsize::new(1),
            tree,
            state: Mutex::new(state),
        })
    }

    pub(super) fn root() -> Arc<Self> {
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

    pub(super) fn abort(self: &Arc<Self>, reason: AbortReason) -> bool {
        let _links = self.tree.lock();
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
        // It no longer needs its parent's cascade: leave the parent's children.
        if let Some((parent, slot)) = parent {
            Self::unlink(&parent, slot);
        }
        if children.is_empty() {
            // No cascade (a leaf, the common case): wake and call back straight from the
            // lists taken, with nothing gathered or wrapped.
            drop(_links);
            for (_, waker) in waiters {
                waker.wake();
            }
            for (_, callback) in own_callbacks {
                callback(&reason);
            }
            return true;
        }
        let mut callbacks: Vec<(AbortReason, Callback)> = own_callbacks
            .into_iter()
            .map(|(_, callback)| (reason.clone(), callback))
            .collect();
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

    /// A new child node, aborted at once if this one is. The child is made whole (its
    /// parent, its slot, or its reason) before anyone else can see it, so it needs no lock
    /// of its own.
    pub(super) fn child(self: &Arc<Self>) -> Arc<Inner> {
        let mut state = self.state.lock();
        if let Some(reason) = &state.reason {
            let reason = cascaded(reason);
            drop(state);
            let aborted = State {
                reason: Some(reason),
                ..State::default()
            };
            return Inner::with_state(self.tree.clone(), aborted, true);
        }
        let linked = State {
            parent: Some(self.clone()),
            slot: state.children.len(),
            ..State::default()
        };
        let child = Inner::with_state(self.tree.clone(), linked, false);
        state.children.push(child.clone());
        child
    }

    /// The last handle is gone: nobody can abort this node directly any more, so it leaves
    /// the tree, and its children move to its parent (or become roots).
    fn detach(self: &Arc<Self>) {
        // An aborted node has no links, and gets none: its abort (or its ancestor's
        // cascade) clears them, under its lock, and an aborted node adopts no child.
        if self.aborted.load(Ordering::Acquire) {
            return;
        }
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

    #[cfg(all(test, loom))]
    pub(super) fn linked_children(&self) -> usize {
        self.state.lock().children.len()
    }

    pub(super) fn reason(&self) -> Option<AbortReason> {
        if !self.aborted.load(Ordering::Acquire) {
            return None;
        }
        self.state.lock().reason.clone()
    }
}

/// A counted reference to a node: a controller or a signal.
pub(super) struct Handle(Arc<Inner>);

impl Handle {
    pub(super) fn new(inner: Arc<Inner>) -> Self {
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
