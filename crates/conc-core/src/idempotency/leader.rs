//! The leader's side of a flight: publishing its result to the followers and releasing the
//! key, or, dropped before it settles, handing the key to a waiting follower.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use super::IdempotencyRegistry;
use super::error::IdempotencyError;
use super::flight::{Flight, Flights, Phase, Slot};
use super::key::IdempotencyKey;
use super::waiters::wake_all;

/// The caller that runs the task: it publishes the result, or hands the key on if it is
/// dropped mid-flight.
pub(super) struct Leader<'a, T> {
    pub(super) registry: &'a IdempotencyRegistry<T>,
    pub(super) key: &'a IdempotencyKey,
    pub(super) flight: Slot<T>,
    pub(super) settled: bool,
}

impl<T> Leader<'_, T> {
    /// With the map locked: the flight's shared state, if any caller followed; a solo entry
    /// nobody followed is removed here (and `None` returned: nothing else to do). A leading
    /// flight's entry stays in the map until its leader settles or is dropped, so a solo
    /// leader finds either its own entry or the shared state a follower put in its place.
    fn shared(&self, flights: &mut Flights<T>) -> Option<Arc<Flight<T>>> {
        match &self.flight {
            Slot::Shared(flight) => Some(flight.clone()),
            Slot::Solo(id) => match flights.map.get(self.key) {
                Some(Slot::Shared(flight)) => Some(flight.clone()),
                Some(Slot::Solo(found)) if found == id => {
                    flights.map.remove(self.key);
                    None
                }
                _ => None,
            },
        }
    }

    /// Publishes the result to the followers (made only if any wait) and releases the key.
    pub(super) fn settle(&mut self, result: impl FnOnce() -> Result<T, IdempotencyError>) {
        self.settled = true;
        let waiters = {
            let mut map = self.registry.flights.lock();
            let Some(flight) = self.shared(&mut map) else {
                return;
            };
            let mut state = flight.state.lock();
            IdempotencyRegistry::forget(&mut map, self.key, &flight);
            drop(map);
            flight.bump_epoch();
            if state.followers > 0 {
                // A panicking `Clone` must not strand the followers: they get an error.
                let shared = catch_unwind(AssertUnwindSafe(result)).unwrap_or_else(|_| {
                    Err(IdempotencyError::ClonePanicked {
                        key: self.key.as_str().to_owned(),
                    })
                });
                state.phase = Phase::Done(shared);
            }
            std::mem::take(&mut state.waiters)
        };
        wake_all(waiters);
    }
}

impl<T> Drop for Leader<'_, T> {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        // Dropped mid-flight: hand the key to a follower, or release it.
        let waiters = {
            let mut map = self.registry.flights.lock();
            let Some(flight) = self.shared(&mut map) else {
                return;
            };
            let mut state = flight.state.lock();
            if state.followers == 0 {
                IdempotencyRegistry::forget(&mut map, self.key, &flight);
                return;
            }
            state.phase = Phase::Vacant;
            flight.bump_epoch();
            std::mem::take(&mut state.waiters)
        };
        wake_all(waiters);
    }
}
