//! Idempotency keys and the single-flight registry.
//!
//! [`IdempotencyKey`] builds a deterministic key from stable domain identifiers;
//! [`IdempotencyRegistry::run`] runs one execution per key at a time and shares its result
//! with every caller that asked meanwhile.

use std::any::Any;
use std::collections::HashMap;
use std::fmt::{self, Display, Write as _};
use std::future::{Future, poll_fn};
use std::hash::{Hash, Hasher};
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use crate::loom::{AtomicU64, Mutex, Ordering};

/// A bad idempotency key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The scope was empty.
    #[error("an idempotency key needs a non-empty scope, such as \"db-save-message\"")]
    EmptyScope,
}

/// A deterministic key from a scope and stable parts (conversation id, message id, attempt).
///
/// The text is `scope:part:part…`, with `\` and `:` escaped inside the scope and each part,
/// so `["a:b"]` and `["a", "b"]` give different keys.
///
/// # Stable hash
///
/// [`stable_hash`](Self::stable_hash) is 64-bit FNV-1a over the UTF-8 bytes of
/// [`as_str`](Self::as_str): the same on every platform, process and version of this crate,
/// so it can pick a shard ([`shard`](Self::shard)) that other processes agree on.
///
/// # Example
///
/// ```
/// use conc_core::IdempotencyKey;
///
/// let key = IdempotencyKey::new("db-save-message", ["conv-1", "msg-7"]).unwrap();
/// assert_eq!(key.as_str(), "db-save-message:conv-1:msg-7");
/// assert_ne!(
///     IdempotencyKey::new("s", ["a:b"]).unwrap(),
///     IdempotencyKey::new("s", ["a", "b"]).unwrap(),
/// );
/// assert!(IdempotencyKey::new("", [1]).is_err());
/// assert!(key.shard(16) < 16);
/// ```
#[derive(Clone)]
pub struct IdempotencyKey {
    text: Arc<str>,
    scope_len: usize,
    hash: u64,
}

impl IdempotencyKey {
    /// Builds a key; every part is formatted with `Display`.
    pub fn new<I>(scope: &str, parts: I) -> Result<Self, KeyError>
    where
        I: IntoIterator,
        I::Item: Display,
    {
        if scope.is_empty() {
            return Err(KeyError::EmptyScope);
        }
        let mut text = String::with_capacity(scope.len() + 32);
        escape_into(&mut text, scope);
        let scope_len = text.len();
        push_parts(&mut text, parts);
        let hash = fnv1a(text.as_bytes());
        Ok(Self {
            text: text.into(),
            scope_len,
            hash,
        })
    }

    /// This key with more `parts` appended (same scope): infallible, because the scope was
    /// checked when this key was made. Handy for a per-flow base key.
    ///
    /// ```
    /// use conc_core::IdempotencyKey;
    ///
    /// let base = IdempotencyKey::new("chat-stream", ["conv-1"]).unwrap();
    /// assert_eq!(base.join([7]), IdempotencyKey::new("chat-stream", ["conv-1", "7"]).unwrap());
    /// ```
    pub fn join<I>(&self, parts: I) -> IdempotencyKey
    where
        I: IntoIterator,
        I::Item: Display,
    {
        let mut text = String::with_capacity(self.text.len() + 32);
        text.push_str(&self.text);
        push_parts(&mut text, parts);
        let hash = fnv1a(text.as_bytes());
        IdempotencyKey {
            text: text.into(),
            scope_len: self.scope_len,
            hash,
        }
    }

    /// The key's text.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The scope, as written in the key (escaped).
    pub fn scope(&self) -> &str {
        &self.text[..self.scope_len]
    }

    /// 64-bit FNV-1a of [`as_str`](Self::as_str); stable across platforms and versions.
    pub fn stable_hash(&self) -> u64 {
        self.hash
    }

    /// A shard in `0..shards` from the stable hash; `0` when `shards` is `0`.
    pub fn shard(&self, shards: u64) -> u64 {
        self.hash.checked_rem(shards).unwrap_or(0)
    }
}

fn push_parts<I>(text: &mut String, parts: I)
where
    I: IntoIterator,
    I::Item: Display,
{
    let mut part = String::new();
    for item in parts {
        part.clear();
        // Writing to a String cannot fail.
        let _ = write!(part, "{item}");
        text.push(':');
        escape_into(text, &part);
    }
}

fn escape_into(out: &mut String, raw: &str) {
    for c in raw.chars() {
        if c == '\\' || c == ':' {
            out.push('\\');
        }
        out.push(c);
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

impl PartialEq for IdempotencyKey {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash && self.text == other.text
    }
}

impl Eq for IdempotencyKey {}

impl Hash for IdempotencyKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl fmt::Debug for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("IdempotencyKey").field(&&*self.text).finish()
    }
}

impl Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// The error a caller of [`IdempotencyRegistry::run`] gets when the shared execution it
/// waited for panicked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdempotencyError {
    /// The execution for this key panicked; the key was released, so a new call runs afresh.
    #[error(
        "the shared execution for idempotency key `{key}` panicked; the key is released and a retry runs afresh"
    )]
    Panicked {
        /// The key's text.
        key: String,
    },
    /// Cloning the shared result for this caller panicked (the value's `Clone` impl); the
    /// execution itself finished, and its leader got the value.
    #[error(
        "cloning the shared result for idempotency key `{key}` panicked; the key is released and a retry runs afresh"
    )]
    ClonePanicked {
        /// The key's text.
        key: String,
    },
}

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

/// The keys in flight. A flight's shared state is made only when a second caller arrives:
/// a key with a single caller (the common case) costs the map entry alone.
struct Flights<T> {
    map: HashMap<IdempotencyKey, Slot<T>, KeyHashing>,
    /// The last id given to a solo flight.
    last_solo: u64,
}

/// A key's entry in the map, and the flight a leader leads.
enum Slot<T> {
    /// A leader runs its task, and nobody has followed yet (the id tells its leader's entry
    /// from a later one). A leader holding this may since have had its entry replaced by a
    /// shared flight, made by the first follower.
    Solo(u64),
    /// The state shared by the leader and its followers (a leader holds this when it took
    /// over from one that was dropped).
    Shared(Arc<Flight<T>>),
}

/// The registry map's hashing: a key carries its hash, computed once when it was made, so
/// the map only mixes that with a seed drawn per registry (std's random keys) rather than
/// hash the text again on every lookup.
#[derive(Clone)]
struct KeyHashing(u64);

impl KeyHashing {
    fn new() -> Self {
        use std::hash::BuildHasher as _;
        Self(std::collections::hash_map::RandomState::new().hash_one(0x5eed_u64))
    }
}

impl std::hash::BuildHasher for KeyHashing {
    type Hasher = KeyHasher;

    fn build_hasher(&self) -> KeyHasher {
        KeyHasher(self.0)
    }
}

/// See [`KeyHashing`]: a multiply-xorshift of the key's hash and the seed.
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used by `IdempotencyKey`; anything else is still mixed in.
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, n: u64) {
        let mixed = (self.0 ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.0 = mixed ^ (mixed >> 29);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

struct Flight<T> {
    state: Mutex<FlightState<T>>,
    /// Bumped, under the state's lock, at every change of phase: a follower registered at
    /// this epoch with the same waker has nothing to look at until it changes, and need not
    /// take the lock to find that out.
    epoch: AtomicU64,
}

struct FlightState<T> {
    phase: Phase<T>,
    /// Followers still waiting (not yet settled, taken over or dropped).
    followers: usize,
    waiters: Waiters,
    next_waiter: u64,
}

/// The followers' wakers, in registration order. Followers polled by one task (joined
/// futures) register the same waker: an entry whose waker would be the one before it (by
/// `will_wake`) stores none, which saves a clone and a drop (two atomic operations on the
/// task's reference count) per follower.
#[derive(Default)]
struct Waiters {
    /// `(waiter id, waker)`; `None` stands for the nearest earlier entry's waker. The first
    /// entry always has one.
    entries: Vec<(u64, Option<Waker>)>,
    /// The index of the last entry that has a waker.
    last: Option<usize>,
}

impl Waiters {
    fn push(&mut self, id: u64, waker: &Waker) {
        let same = self
            .last
            .is_some_and(|at| matches!(&self.entries[at].1, Some(last) if last.will_wake(waker)));
        if same {
            self.entries.push((id, None));
        } else {
            self.entries.push((id, Some(waker.clone())));
            self.last = Some(self.entries.len() - 1);
        }
    }

    /// The waker the entry at `at` stands for.
    fn waker_at(&self, at: usize) -> Option<&Waker> {
        self.entries[..=at]
            .iter()
            .rev()
            .find_map(|(_, w)| w.as_ref())
    }

    /// Registers `waker` for `id`: replaces its entry's waker if it would not wake the same
    /// task, or adds an entry if a wake-up already took it out.
    fn update(&mut self, id: u64, waker: &Waker) {
        let Some(at) = self.entries.iter().position(|(w, _)| *w == id) else {
            self.push(id, waker);
            return;
        };
        let current = self.waker_at(at);
        if current.is_some_and(|w| w.will_wake(waker)) {
            return;
        }
        // The entries after this one that stood for its old waker keep it.
        let old = current.cloned();
        if let Some((_, next @ None)) = self.entries.get_mut(at + 1) {
            *next = old;
        }
        self.entries[at].1 = Some(waker.clone());
        self.last = self.entries.iter().rposition(|(_, w)| w.is_some());
    }

    /// Takes `id`'s entry out, if it is still there.
    fn remove(&mut self, id: u64) {
        let Some(at) = self.entries.iter().position(|(w, _)| *w == id) else {
            return;
        };
        let (_, waker) = self.entries.remove(at);
        if let (Some(waker), Some((_, next @ None))) = (waker, self.entries.get_mut(at)) {
            *next = Some(waker);
        }
        self.last = self.entries.iter().rposition(|(_, w)| w.is_some());
    }
}

enum Phase<T> {
    /// A caller is running its task.
    Leading,
    /// The leader was dropped; the first follower to look takes over.
    Vacant,
    /// The result, for the followers.
    Done(Result<T, IdempotencyError>),
}

impl<T> FlightState<T> {
    /// Queues `waker` for the next change of phase, under a fresh id.
    fn register(&mut self, waker: &Waker) -> u64 {
        let id = self.next_waiter;
        self.next_waiter += 1;
        self.waiters.push(id, waker);
        id
    }
}

/// How a caller entered a key's flight.
enum Entered<T> {
    /// It runs the task: the flight is new, or its leader was dropped.
    Lead(Slot<T>),
    /// It waits for the leader; its waker registered as `(waiter id, epoch)`, unless the
    /// flight had already settled (`None`).
    Follow(Arc<Flight<T>>, Option<(u64, u64)>),
}

impl<T> Flight<T> {
    /// With the state locked: a change of phase.
    fn bump_epoch(&self) {
        self.epoch
            .store(self.epoch.load(Ordering::Relaxed) + 1, Ordering::Release);
    }

    fn leading() -> Self {
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

/// Wakes every waiter's task once: followers polled by one task (joined futures) register
/// the same waker, and waking it again would only repeat a wake-up already pending.
fn wake_all(waiters: Waiters) {
    let mut last: Option<Waker> = None;
    for waker in waiters.entries.into_iter().filter_map(|(_, waker)| waker) {
        if last.as_ref().is_some_and(|woken| woken.will_wake(&waker)) {
            continue;
        }
        waker.wake_by_ref();
        last = Some(waker);
    }
}

struct Leader<'a, T> {
    registry: &'a IdempotencyRegistry<T>,
    key: &'a IdempotencyKey,
    flight: Slot<T>,
    settled: bool,
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
    fn settle(&mut self, result: impl FnOnce() -> Result<T, IdempotencyError>) {
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

struct Follower<'a, T> {
    registry: &'a IdempotencyRegistry<T>,
    key: &'a IdempotencyKey,
    flight: &'a Arc<Flight<T>>,
    waiter: Option<u64>,
    /// The flight's epoch and the waker (see [`waker_identity`]) of our registration: while
    /// both are unchanged, a poll has nothing to look at and takes no lock.
    seen: Option<(u64, WakerIdentity)>,
    /// Still counted in `followers`.
    active: bool,
}

/// A waker's data and vtable addresses, what `Waker::will_wake` compares, kept as numbers
/// so that the future holding them stays `Send`.
type WakerIdentity = (usize, usize);

fn waker_identity(waker: &Waker) -> WakerIdentity {
    (
        waker.data() as usize,
        std::ptr::from_ref(waker.vtable()) as usize,
    )
}

impl<T: Clone> Follower<'_, T> {
    /// `Ready(Some(result))` when the leader settled, `Ready(None)` when we take over.
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<T, IdempotencyError>>> {
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

#[cfg(all(test, not(loom)))]
mod hashing_tests {
    use std::hash::BuildHasher as _;

    use super::{IdempotencyKey, KeyHashing};

    /// The registry's hashing spreads keys over the low bits (the bucket index) and the high
    /// bits (hashbrown's control bytes) alike.
    #[test]
    fn keys_spread_over_low_and_high_bits() {
        let hashing = KeyHashing::new();
        let hashes: Vec<u64> = (0..4096)
            .map(|n| hashing.hash_one(IdempotencyKey::new("conv", [n]).unwrap()))
            .collect();
        let low: std::collections::HashSet<u64> = hashes.iter().map(|h| h & 1023).collect();
        let high: std::collections::HashSet<u64> = hashes.iter().map(|h| h >> 57).collect();
        assert!(low.len() > 950, "{} of 1024 low buckets used", low.len());
        assert_eq!(high.len(), 128, "every 7-bit tag is used");
    }
}

#[cfg(all(test, not(loom)))]
mod waiters_tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Wake, Waker};

    use super::{Waiters, wake_all};

    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn tasks(n: usize) -> (Vec<Arc<Count>>, Vec<Waker>) {
        let counts: Vec<_> = (0..n)
            .map(|_| Arc::new(Count(AtomicUsize::new(0))))
            .collect();
        let wakers = counts.iter().map(|c| Waker::from(c.clone())).collect();
        (counts, wakers)
    }

    fn woken(counts: &[Arc<Count>]) -> Vec<usize> {
        counts.iter().map(|c| c.0.load(Ordering::SeqCst)).collect()
    }

    /// Entries that share the previous entry's waker keep none of their own; whatever is
    /// removed or re-registered, every task still registered is woken (once per run of
    /// entries of the same task).
    #[test]
    fn shared_wakers_survive_removal_and_re_registration() {
        let (counts, w) = tasks(3);
        let mut waiters = Waiters::default();
        for id in 0..4 {
            waiters.push(id, &w[0]);
        }
        waiters.push(4, &w[1]);
        waiters.push(5, &w[1]);
        assert_eq!(
            waiters.entries.iter().filter(|(_, w)| w.is_some()).count(),
            2,
            "one waker per run of the same task"
        );
        // The entry holding task 0's waker goes: the next one takes it over.
        waiters.remove(0);
        // Entry 2 moves to task 2: entry 3 must still wake task 0.
        waiters.update(2, &w[2]);
        // Entry 5 re-registers with its own task: nothing changes.
        waiters.update(5, &w[1]);
        // An entry taken out by a wake-up comes back.
        waiters.update(9, &w[0]);
        // Entries now: task 0, task 2, task 0 (kept for entry 3), task 1 twice, task 0.
        wake_all(std::mem::take(&mut waiters));
        assert_eq!(woken(&counts), [3, 1, 1]);

        // Only task 1's entries are left after the others go: it alone is woken.
        let (counts, w) = tasks(2);
        let mut waiters = Waiters::default();
        waiters.push(0, &w[0]);
        waiters.push(1, &w[1]);
        waiters.push(2, &w[1]);
        waiters.remove(1);
        waiters.remove(0);
        wake_all(waiters);
        assert_eq!(woken(&counts), [0, 1]);
    }
}
