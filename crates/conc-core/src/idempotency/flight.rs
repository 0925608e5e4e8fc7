//! The registry's bookkeeping: the map of keys in flight ([`Flights`]), a key's entry
//! ([`Slot`]), the state a leader shares with its followers ([`Flight`], [`Phase`]), and
//! how a caller entered a flight ([`Entered`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::task::Waker;

use super::error::IdempotencyError;
use super::hashing::KeyHashing;
use super::key::IdempotencyKey;
use super::waiters::Waiters;
use crate::loom::{AtomicU64, Mutex, Ordering};

/// The keys in flight. A flight's shared state is made only when a second caller arrives:
/// a key with a single caller (the common case) costs the map entry alone.
pub(super) struct Flights<T> {
    pub(super) map: HashMap<IdempotencyKey, Slot<T>, KeyHashing>,
    /// The last id given to a solo flight.
    pub(super) last_solo: u64,
}

/// A key's entry in the map, and the flight a leader leads.
pub(super) enum Slot<T> {
    /// A leader runs its task, and nobody has followed yet (the id tells its leader's entry
    /// from a later one). A leader holding this may since have had its entry replaced by a
    /// shared flight, made by the first follower.
    Solo(u64),
    /// The state shared by the leader and its followers (a leader holds this when it took
    /// over from one that was dropped).
    Shared(Arc<Flight<T>>),
}

/// The state a leader and its followers share, once a second caller arrived.
pub(super) struct Flight<T> {
    pub(super) state: Mutex<FlightState<T>>,
    /// Bumped, under the state's lock, at every change of phase: a follower registered at
    /// this epoch with the same waker has nothing to look at until it changes, and need not
    /// take the lock to find that out.
    pub(super) epoch: AtomicU64,
}

/// A flight's state, under its lock.
pub(super) struct FlightState<T> {
    pub(super) phase: Phase<T>,
    /// Followers still waiting (not yet settled, taken over or dropped).
    pub(super) followers: usize,
    pub(super) waiters: Waiters,
    next_waiter: u64,
}

/// Where a flight stands.
pub(super) enum Phase<T> {
    /// A caller is running its task.
    Leading,
    /// The leader was dropped; the first follower to look takes over.
    Vacant,
    /// The result, for the followers.
    Done(Result<T, IdempotencyError>),
}

impl<T> FlightState<T> {
    /// Queues `waker` for the next change of phase, under a fresh id.
    pub(super) fn register(&mut self, waker: &Waker) -> u64 {
        let id = self.next_waiter;
        self.next_waiter += 1;
        self.waiters.push(id, waker);
        id
    }
}

/// How a caller entered a key's flight.
pub(super) enum Entered<T> {
    /// It runs the task: the flight is new, or its leader was dropped.
    Lead(Slot<T>),
    /// It waits for the leader; its waker registered as `(waiter id, epoch)`, unless the
    /// flight had already settled (`None`).
    Follow(Arc<Flight<T>>, Option<(u64, u64)>),
}

impl<T> Flight<T> {
    /// With the state locked: a change of phase.
    pub(super) fn bump_epoch(&self) {
        self.epoch
            .store(self.epoch.load(Ordering::Relaxed) + 1, Ordering::Release);
    }

    /// A new shared state whose leader is still running its task.
    pub(super) fn leading() -> Self {
        Flight {
            epoch: AtomicU64::new(0),
            state: Mutex::new(FlightState {
                phase: Phase::Leading,
                followers: 0,
                waiters: Waiters::default(),
                next_waiter: 0,
            }),
        }
    }
}
