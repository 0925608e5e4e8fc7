//! The follower's side of a flight: waiting for the leader's result without taking a lock
//! while nothing changed, taking the key over when the leader was dropped, and withdrawing
//! when dropped itself.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use super::IdempotencyRegistry;
use super::error::IdempotencyError;
use super::flight::{Flight, Phase};
use super::key::IdempotencyKey;
use crate::loom::Ordering;

/// A caller waiting on another's execution: it gets a clone of the result, or takes the
/// key over when the leader was dropped.
pub(super) struct Follower<'a, T> {
    pub(super) registry: &'a IdempotencyRegistry<T>,
    pub(super) key: &'a IdempotencyKey,
    pub(super) flight: &'a Arc<Flight<T>>,
    pub(super) waiter: Option<u64>,
    /// The flight's epoch and the waker (see [`waker_identity`]) of our registration: while
    /// both are unchanged, a poll has nothing to look at and takes no lock.
    pub(super) seen: Option<(u64, WakerIdentity)>,
    /// Still counted in `followers`.
    pub(super) active: bool,
}

/// A waker's data and vtable addresses, what `Waker::will_wake` compares, kept as numbers
/// so that the future holding them stays `Send`.
pub(super) type WakerIdentity = (usize, usize);

/// The [`WakerIdentity`] of `waker`.
pub(super) fn waker_identity(waker: &Waker) -> WakerIdentity {
    (
        waker.data() as usize,
        std::ptr::from_ref(waker.vtable()) as usize,
    )
}

impl<T: Clone> Follower<'_, T> {
    /// `Ready(Some(result))` when the leader settled, `Ready(None)` when we take over.
    pub(super) fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<T, IdempotencyError>>> {
        // Registered at this epoch with this waker: a change of phase bumps the epoch before
        // it wakes the registered wakers, so an unchanged epoch means nothing to see yet,
        // and the wake-up is still to come.
        if let Some((epoch, waker)) = self.seen
            && self.flight.epoch.load(Ordering::Acquire) == epoch
            && waker_identity(cx.waker()) == waker
        {
            return Poll::Pending;
        }
        let mut state = self.flight.state.lock();
        match &state.phase {
            Phase::Done(result) => {
                let result =
                    catch_unwind(AssertUnwindSafe(|| result.clone())).unwrap_or_else(|_| {
                        Err(IdempotencyError::ClonePanicked {
                            key: self.key.as_str().to_owned(),
                        })
                    });
                state.followers -= 1;
                self.active = false;
                Poll::Ready(Some(result))
            }
            Phase::Vacant => {
                state.phase = Phase::Leading;
                self.flight.bump_epoch();
                state.followers -= 1;
                if let Some(id) = self.waiter.take() {
                    state.waiters.remove(id);
                }
                self.active = false;
                Poll::Ready(None)
            }
            Phase::Leading => {
                match self.waiter {
                    // Re-added if woken for a phase change that another follower consumed.
                    Some(id) => state.waiters.update(id, cx.waker()),
                    None => self.waiter = Some(state.register(cx.waker())),
                }
                self.seen = Some((
                    self.flight.epoch.load(Ordering::Relaxed),
                    waker_identity(cx.waker()),
                ));
                Poll::Pending
            }
        }
    }
}

impl<T> Drop for Follower<'_, T> {
    fn drop(&mut self) {
        if !self.active {
            return;
        }
        let mut map = self.registry.flights.lock();
        let mut state = self.flight.state.lock();
        state.followers -= 1;
        if let Some(id) = self.waiter {
            state.waiters.remove(id);
        }
        if matches!(state.phase, Phase::Vacant) && state.followers == 0 {
            IdempotencyRegistry::forget(&mut map, self.key, self.flight);
        }
    }
}
