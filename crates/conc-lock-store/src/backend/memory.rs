//! [`MemoryLockStore`]: locks for one process, on a monotonic clock.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use crate::error::LockError;
use crate::lease::{Lease, LockInfo, Metadata};
use crate::notify::{LockWatch, Watchers};
use crate::request::{LockRequest, validate_key};
use crate::store::LockStore;
use crate::util::clock::{next_fence, unix_micros};

#[derive(Debug, Clone)]
struct Entry {
    owner: String,
    token: crate::util::random::Token,
    fence: u64,
    metadata: Metadata,
    acquired_at: SystemTime,
    ttl: Duration,
    /// Monotonic expiry: the truth for this store.
    deadline: Instant,
    renewed_at: SystemTime,
    /// Released by its holder: kept (not live) so that the next acquisition of the key
    /// reuses its slot and its owner's buffer; swept when released entries are many.
    released: bool,
}

impl Entry {
    fn live(&self, now: Instant) -> bool {
        now < self.deadline
    }

    fn info(&self, key: &str) -> LockInfo {
        LockInfo {
            key: key.to_owned(),
            owner: self.owner.clone(),
            metadata: self.metadata.clone(),
            fence: self.fence,
            acquired_at: self.acquired_at,
            expires_at: self.renewed_at + self.ttl,
        }
    }
}

#[derive(Debug, Default)]
struct State {
    /// A hash map: the cost of a key does not grow with the number of keys, and a map
    /// that empties keeps its table (a B-tree frees its last node and allocates it again).
    locks: HashMap<String, Entry>,
    /// How many entries of `locks` are released ones.
    released: usize,
    /// The last fence drawn: fences strictly increase per key, and across keys, and are at
    /// least the wall clock in microseconds, so a restarted process never reuses one.
    fence: u64,
}

/// A process-local [`LockStore`]: fast, exact, on tokio's monotonic clock (so it follows
/// paused time in tests). Operations are O(log n) in the number of keys. The wall-clock
/// times it reports (`acquired_at`, `expires_at`) are the store's creation time on the wall
/// clock plus the monotonic time since, so they follow paused time too.
///
/// ```
/// use std::time::Duration;
/// use conc_lock_store::{LockRequest, LockStore, MemoryLockStore};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let store = MemoryLockStore::new();
/// let request = LockRequest::new("job:1", "worker-a", Duration::from_secs(5));
/// let lease = store.try_acquire(&request).await.unwrap().expect("free");
/// assert!(store.try_acquire(&request).await.unwrap().is_none());
/// assert!(store.release(&lease).await.unwrap());
/// # }
/// ```
#[derive(Debug)]
pub struct MemoryLockStore {
    state: parking_lot::Mutex<State>,
    max_ttl: Duration,
    watchers: Arc<Watchers>,
    /// The wall clock and the monotonic clock read together when the store was made: the
    /// wall-clock times of leases are derived from the monotonic clock (one clock read per
    /// operation instead of two).
    epoch: (SystemTime, Instant),
}

impl Default for MemoryLockStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryLockStore {
    /// [`LockStore::try_acquire`] without the trait's boxed future: a call on the store's
    /// own type (not through `dyn LockStore`) allocates nothing for the future. The memory
    /// store never waits, so the future is ready at its first poll.
    ///
    /// ```
    /// use std::time::Duration;
    /// use conc_lock_store::{LockRequest, MemoryLockStore};
    ///
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let store = MemoryLockStore::new();
    /// let request = LockRequest::new("conversation:7", "worker-1", Duration::from_secs(30));
    /// let lease = store.try_acquire(&request).await?.expect("free");
    /// assert!(store.try_acquire(&request).await?.is_none(), "held");
    /// assert!(store.release(&lease).await?);
    /// # Ok::<(), conc_lock_store::LockError>(())
    /// # }).unwrap();
    /// ```
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it completes at its first poll, so it is either not started or done.
    pub async fn try_acquire(&self, request: &LockRequest) -> Result<Option<Lease>, LockError> {
        self.acquire_inner(request, false)
    }

    /// [`LockStore::release`] without the trait's boxed future (see
    /// [`try_acquire`](Self::try_acquire)).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it completes at its first poll, so it is either not started or done.
    pub async fn release(&self, lease: &Lease) -> Result<bool, LockError> {
        self.release_now(lease)
    }

    fn release_now(&self, lease: &Lease) -> Result<bool, LockError> {
        let now = Instant::now();
        let mut state = self.state.lock();
        let held = match state.locks.get_mut(&lease.key) {
            Some(e) if e.token.as_str() == lease.token && e.live(now) => {
                e.deadline = now;
                e.released = true;
                true
            }
            _ => false,
        };
        if held {
            state.released += 1;
            // Sweep released entries once they are more than the live ones (amortised
            // O(1) per release; the map stays within twice its live keys plus 1 024).
            if state.released > 1024 && state.released * 2 > state.locks.len() {
                state.locks.retain(|_, e| !e.released);
                state.released = 0;
            }
            drop(state);
            self.watchers.notify(&lease.key);
        }
        Ok(held)
    }

    fn acquire_inner(
        &self,
        request: &LockRequest,
        force: bool,
    ) -> Result<Option<Lease>, LockError> {
        request.validate(self.max_ttl)?;
        let now = Instant::now();
        let wall = self.wall(now);
        let deadline = deadline(now, request.ttl)?;
        let mut state = self.state.lock();
        let State {
            locks,
            fence,
            released,
        } = &mut *state;
        let slot = locks.get_mut(&request.key);
        let held = slot.as_ref().is_some_and(|e| e.live(now));
        if !force && held {
            return Ok(None);
        }
        *fence = next_fence(*fence, unix_micros(wall));
        let token = crate::util::random::token();
        let lease = Lease {
            key: request.key.clone(),
            owner: request.owner.clone(),
            token: token.as_str().to_owned(),
            fence: *fence,
            acquired_at: wall,
            expires_at: wall + request.ttl,
            ttl: request.ttl,
            requested_at: now,
        };
        match slot {
            Some(slot) => {
                // In place: the owner's buffer is reused when it is large enough.
                if slot.released {
                    *released -= 1;
                }
                slot.owner.clone_from(&request.owner);
                slot.token = token;
                slot.fence = *fence;
                slot.metadata.clone_from(&request.metadata);
                slot.acquired_at = wall;
                slot.ttl = request.ttl;
                slot.deadline = deadline;
                slot.renewed_at = wall;
                slot.released = false;
            }
            None => {
                let entry = Entry {
                    owner: request.owner.clone(),
                    token,
                    fence: *fence,
                    metadata: request.metadata.clone(),
                    acquired_at: wall,
                    ttl: request.ttl,
                    deadline,
                    renewed_at: wall,
                    released: false,
                };
                locks.insert(request.key.clone(), entry);
            }
        }
        drop(state);
        if held {
            self.watchers.notify(&request.key);
        }
        Ok(Some(lease))
    }

    /// An empty store accepting TTLs up to one hour.
    pub fn new() -> Self {
        Self::with_max_ttl(Duration::from_secs(3600))
    }

    /// An empty store accepting TTLs up to `max_ttl` (at most [`TTL_LIMIT`](crate::TTL_LIMIT)).
    pub fn with_max_ttl(max_ttl: Duration) -> Self {
        Self {
            state: parking_lot::Mutex::new(State::default()),
            max_ttl: max_ttl.min(crate::request::TTL_LIMIT),
            watchers: Arc::default(),
            epoch: (SystemTime::now(), Instant::now()),
        }
    }

    /// The wall-clock time of the monotonic instant `now`: the store's start on the wall
    /// clock plus the monotonic time since. It follows paused tokio time in tests, and a
    /// step of the system clock after the store was made does not move it.
    fn wall(&self, now: Instant) -> SystemTime {
        self.epoch.0 + now.saturating_duration_since(self.epoch.1)
    }
}

/// `now + ttl` on the monotonic clock, or a typed error where the clock cannot reach it.
fn deadline(now: Instant, ttl: Duration) -> Result<Instant, LockError> {
    now.checked_add(ttl).ok_or(LockError::InvalidTtl {
        ttl,
        min: crate::request::MIN_TTL,
        max: crate::request::TTL_LIMIT,
    })
}

#[async_trait::async_trait]
impl LockStore for MemoryLockStore {
    async fn try_acquire(&self, request: &LockRequest) -> Result<Option<Lease>, LockError> {
        self.acquire_inner(request, false)
    }

    async fn take_over(&self, request: &LockRequest) -> Result<Lease, LockError> {
        LockError::taken("memory", self.acquire_inner(request, true)?)
    }

    async fn release(&self, lease: &Lease) -> Result<bool, LockError> {
        self.release_now(lease)
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Lease, LockError> {
        crate::request::validate_ttl(ttl, self.max_ttl)?;
        let now = Instant::now();
        let wall = self.wall(now);
        let new_deadline = deadline(now, ttl)?;
        let mut state = self.state.lock();
        let renewed = match state.locks.get_mut(&lease.key) {
            Some(entry) if entry.token.as_str() == lease.token && entry.live(now) => {
                entry.deadline = new_deadline;
                entry.ttl = ttl;
                entry.renewed_at = wall;
                Some(wall + ttl)
            }
            _ => None,
        };
        lease.renewed(renewed, ttl, now)
    }

    async fn inspect(&self, key: &str) -> Result<Option<LockInfo>, LockError> {
        validate_key(key)?;
        let now = Instant::now();
        let state = self.state.lock();
        Ok(state
            .locks
            .get(key)
            .filter(|e| e.live(now))
            .map(|e| e.info(key)))
    }

    async fn list(&self, prefix: &str, limit: usize) -> Result<Vec<LockInfo>, LockError> {
        let now = Instant::now();
        let state = self.state.lock();
        // A scan of every key (the map has no order): an operator's call, not a hot path.
        let mut found: Vec<(&String, &Entry)> = state
            .locks
            .iter()
            .filter(|(k, e)| k.starts_with(prefix) && e.live(now))
            .collect();
        found.sort_unstable_by(|a, b| a.0.cmp(b.0));
        Ok(found
            .into_iter()
            .take(limit)
            .map(|(k, e)| e.info(k))
            .collect())
    }

    async fn cleanup_expired(&self) -> Result<u64, LockError> {
        let now = Instant::now();
        let mut state = self.state.lock();
        // Released entries go too, but only the expired ones are counted.
        let mut expired = 0;
        state.locks.retain(|_, e| {
            expired += u64::from(!e.released && !e.live(now));
            e.live(now)
        });
        state.released = 0;
        Ok(expired)
    }

    async fn force_release(&self, key: &str) -> Result<bool, LockError> {
        validate_key(key)?;
        let now = Instant::now();
        let mut state = self.state.lock();
        let removed = state.locks.remove(key);
        if removed.as_ref().is_some_and(|e| e.released) {
            state.released -= 1;
        }
        drop(state);
        let live = removed.is_some_and(|e| e.live(now));
        if live {
            self.watchers.notify(key);
        }
        Ok(live)
    }

    fn batches_renewals(&self) -> bool {
        true
    }

    fn max_ttl(&self) -> Duration {
        self.max_ttl
    }

    fn watch(&self, key: &str) -> Option<LockWatch> {
        Some(self.watchers.subscribe(key))
    }
}
