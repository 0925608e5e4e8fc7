//! Idempotency keys and the single-flight registry.
//!
//! [`IdempotencyKey`] builds a deterministic key from stable domain identifiers;
//! [`IdempotencyRegistry::run`] runs one execution per key at a time and shares its result
//! with every caller that asked meanwhile.
//!
//! The code is split by concern: `key.rs` (the key), `error.rs`, `hashing.rs` (the map's
//! hasher), `flight.rs` (the map and the state a leader shares with its followers),
//! `waiters.rs` (the followers' wakers), `leader.rs` and `follower.rs` (each side of a
//! flight); this file holds the registry and its `run`.

mod error;
mod flight;
mod follower;
mod hashing;
mod key;
mod leader;
#[cfg(all(test, not(loom)))]
mod tests;
mod waiters;

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::future::{Future, poll_fn};
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::pin::pin;
use std::sync::Arc;
use std::task::{Poll, Waker};

pub use self::error::IdempotencyError;
use self::flight::{Entered, Flight, Flights, Phase, Slot};
use self::follower::{Follower, waker_identity};
use self::hashing::KeyHashing;
pub use self::key::{IdempotencyKey, KeyError};
use self::leader::Leader;
use crate::loom::{Mutex, Ordering};

/// Runs at most one execution per key at a time; concurrent callers share its result.
///
/// - The first caller for a key *leads*: it runs its task. Callers that arrive while it runs
///   *follow*: they wait and get a clone of the leader's result.
/// - The key is released when the execution settles (value, panic or cancellation), so a
///   later call runs afresh: this deduplicates in-flight work, it does not cache.
/// - If the leader's future is dropped before it settles, a waiting follower takes over and
///   runs its own task: nobody hangs and nobody gets a spurious error.
/// - If the task panics, followers get [`IdempotencyError::Panicked`] and the panic resumes
///   in the leader's caller.
///
/// # Example
///
/// ```
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use conc_core::{IdempotencyKey, IdempotencyRegistry};
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let registry = IdempotencyRegistry::<u32>::new();
/// let runs = AtomicUsize::new(0);
/// let key = IdempotencyKey::new("db-save-message", ["conv-1", "msg-7"]).unwrap();
/// let save = || async {
///     runs.fetch_add(1, Ordering::SeqCst);
///     tokio::task::yield_now().await;
///     42
/// };
/// let (a, b) = tokio::join!(registry.run(key.clone(), save), registry.run(key.clone(), save));
/// assert_eq!((a, b), (Ok(42), Ok(42)));
/// assert_eq!(runs.load(Ordering::SeqCst), 1);
/// assert_eq!(registry.in_flight(), 0);
/// # });
/// ```
pub struct IdempotencyRegistry<T> {
    flights: Mutex<Flights<T>>,
}

impl<T> IdempotencyRegistry<T> {
    /// An empty registry.
    pub fn new() -> Self {
        Self {
            flights: Mutex::new(Flights {
                map: HashMap::with_hasher(KeyHashing::new()),
                last_solo: 0,
            }),
        }
    }

    /// How many keys have an execution in flight.
    pub fn in_flight(&self) -> usize {
        self.flights.lock().map.len()
    }

    /// Whether `key` has an execution in flight.
    pub fn contains(&self, key: &IdempotencyKey) -> bool {
        self.flights.lock().map.contains_key(key)
    }

    /// Enters `key`'s flight: leads a new one (or one whose leader was dropped), or
    /// follows the one in flight, registered with `waker` in the same critical section.
    fn enter(&self, key: &IdempotencyKey, waker: &Waker) -> Entered<T> {
        let mut flights = self.flights.lock();
        let flights = &mut *flights;
        // A lookup first, so a follower clones no key; a leader's insert costs a second
        // probe, cheap with the key's hash already made.
        let Some(slot) = flights.map.get_mut(key) else {
            flights.last_solo += 1;
            let id = flights.last_solo;
            flights.map.insert(key.clone(), Slot::Solo(id));
            return Entered::Lead(Slot::Solo(id));
        };
        let flight = match slot {
            Slot::Shared(flight) => flight.clone(),
            // The first follower makes the shared state, with the leader still leading.
            Slot::Solo(_) => {
                let flight = Arc::new(Flight::leading());
                *slot = Slot::Shared(flight.clone());
                flight
            }
        };
        let mut state = flight.state.lock();
        match state.phase {
            Phase::Vacant => {
                state.phase = Phase::Leading;
                flight.bump_epoch();
                drop(state);
                Entered::Lead(Slot::Shared(flight))
            }
            Phase::Leading => {
                state.followers += 1;
                let id = state.register(waker);
                let epoch = flight.epoch.load(Ordering::Relaxed);
                drop(state);
                Entered::Follow(flight, Some((id, epoch)))
            }
            // A settled flight leaves the map before its result is set; should one be found,
            // the follower's first poll reads the result.
            Phase::Done(_) => {
                state.followers += 1;
                drop(state);
                Entered::Follow(flight, None)
            }
        }
    }

    /// Removes `flight` from the map if it is still the entry for `key`.
    fn forget(flights: &mut Flights<T>, key: &IdempotencyKey, flight: &Arc<Flight<T>>) {
        // One lookup on the common path (the entry is this flight); put back otherwise.
        if let Some(found) = flights.map.remove(key)
            && !matches!(&found, Slot::Shared(f) if Arc::ptr_eq(f, flight))
        {
            flights.map.insert(key.clone(), found);
        }
    }
}

impl<T: Clone> IdempotencyRegistry<T> {
    /// Runs `task` for `key`, unless an execution for `key` is already in flight, in which
    /// case it waits for that execution and returns a clone of its result.
    ///
    /// Returns [`IdempotencyError::Panicked`] to followers whose leader panicked; the leader
    /// itself resumes the panic.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe for everyone else: dropping a follower's future only withdraws it;
    /// dropping the leader's future drops its task and hands the key to a waiting follower,
    /// which runs its own task (or releases the key if none waits).
    pub async fn run<F, Fut>(&self, key: IdempotencyKey, task: F) -> Result<T, IdempotencyError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = T>,
    {
        let entered = poll_fn(|cx| {
            let waker = cx.waker();
            Poll::Ready((self.enter(&key, waker), waker_identity(waker)))
        })
        .await;
        let flight = match entered {
            (Entered::Lead(lead), _) => lead,
            (Entered::Follow(flight, registered), waker) => {
                let mut follower = Follower {
                    registry: self,
                    key: &key,
                    flight: &flight,
                    waiter: registered.map(|(id, _)| id),
                    seen: registered.map(|(_, epoch)| (epoch, waker)),
                    active: true,
                };
                if let Some(result) = poll_fn(|cx| follower.poll(cx)).await {
                    return result;
                }
                drop(follower);
                // The leader was dropped: we lead now.
                Slot::Shared(flight)
            }
        };
        let mut leader = Leader {
            registry: self,
            key: &key,
            flight,
            settled: false,
        };
        match catch_unwind_task(task).await {
            Ok(value) => {
                leader.settle(|| Ok(value.clone()));
                Ok(value)
            }
            Err(panic) => {
                leader.settle(|| {
                    Err(IdempotencyError::Panicked {
                        key: key.as_str().to_owned(),
                    })
                });
                resume_unwind(panic)
            }
        }
    }
}

/// Runs `task` and its future, turning a panic in either into `Err`.
async fn catch_unwind_task<F, Fut>(task: F) -> Result<Fut::Output, Box<dyn Any + Send>>
where
    F: FnOnce() -> Fut,
    Fut: Future,
{
    let future = catch_unwind(AssertUnwindSafe(task))?;
    let mut future = pin!(future);
    poll_fn(
        |cx| match catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(cx))) {
            Ok(Poll::Ready(value)) => Poll::Ready(Ok(value)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(panic) => Poll::Ready(Err(panic)),
        },
    )
    .await
}

impl<T> Default for IdempotencyRegistry<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> fmt::Debug for IdempotencyRegistry<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyRegistry")
            .field("in_flight", &self.in_flight())
            .finish()
    }
}
