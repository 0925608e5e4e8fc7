//! [`AbortManager`]: one active piece of work per workflow, whose [`AbortLease`] is aborted
//! as superseded when newer work begins.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use super::controller::AbortController;
use super::reason::{AbortReason, Aborted};
use super::signal::AbortSignal;
use crate::loom::Mutex;

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
