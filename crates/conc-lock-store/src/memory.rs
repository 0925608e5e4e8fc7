//! [`MemoryLockStore`]: locks for one process, on a monotonic clock.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use crate::LockStore;
use crate::error::LockError;
use crate::notify::{LockWatch, Watchers};
use crate::request::{
    Lease, LockInfo, LockRequest, Metadata, next_fence, random_token, unix_micros, validate_key,
};

#[derive(Debug, Clone)]
struct Entry {
    owner: String,
    token: String,
    fence: u64,
    metadata: Metadata,
    acquired_at: SystemTime,
    ttl: Duration,
    /// Monotonic expiry: the truth for this store.
    deadline: Instant,
    renewed_at: SystemTime,
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
    locks: BTreeMap<String, Entry>,
    /// The last fence drawn: fences strictly increase per key, and across keys, and are at
    /// least the wall clock in microseconds, so a restarted process never reuses one.
    fence: u64,
}

/// A process-local [`LockStore`]: fast, exact, on tokio's monotonic clock (so it follows
/// paused time in tests). Operations are O(log n) in the number of keys.
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
}

impl Default for MemoryLockStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryLockStore {
    fn acquire_inner(
        &self,
        request: &LockRequest,
        force: bool,
    ) -> Result<Option<Lease>, LockError> {
        request.validate(self.max_ttl)?;
        let now = Instant::now();
        let wall = SystemTime::now();
        let deadline = deadline(now, request.ttl)?;
        let mut state = self.state.lock();
        let held = state.locks.get(&request.key).is_some_and(|e| e.live(now));
        if !force && held {
            return Ok(None);
        }
        state.fence = next_fence(state.fence, unix_micros(wall));
        let entry = Entry {
            owner: request.owner.clone(),
            token: random_token(),
            fence: state.fence,
            metadata: request.metadata.clone(),
            acquired_at: wall,
            ttl: request.ttl,
            deadline,
            renewed_at: wall,
        };
        let lease = Lease {
            key: request.key.clone(),
            owner: entry.owner.clone(),
            token: entry.token.clone(),
            fence: entry.fence,
            acquired_at: wall,
            expires_at: wall + request.ttl,
            ttl: request.ttl,
            requested_at: now,
        };
        state.locks.insert(request.key.clone(), entry);
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
            max_ttl: max_ttl.min(crate::TTL_LIMIT),
            watchers: Arc::default(),
        }
    }
}

/// `now + ttl` on the monotonic clock, or a typed error where the clock cannot reach it.
fn deadline(now: Instant, ttl: Duration) -> Result<Instant, LockError> {
    now.checked_add(ttl).ok_or(LockError::InvalidTtl {
        ttl,
        min: crate::MIN_TTL,
        max: crate::TTL_LIMIT,
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
        let now = Instant::now();
        let mut state = self.state.lock();
        let held = state
            .locks
            .get(&lease.key)
            .is_some_and(|e| e.token == lease.token && e.live(now));
        if held {
            state.locks.remove(&lease.key);
            drop(state);
            self.watchers.notify(&lease.key);
        }
        Ok(held)
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Lease, LockError> {
        crate::request::validate_ttl(ttl, self.max_ttl)?;
        let now = Instant::now();
        let wall = SystemTime::now();
        let new_deadline = deadline(now, ttl)?;
        let mut state = self.state.lock();
        let renewed = match state.locks.get_mut(&lease.key) {
            Some(entry) if entry.token == lease.token && entry.live(now) => {
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
        Ok(state
            .locks
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter(|(_, e)| e.live(now))
            .take(limit)
            .map(|(k, e)| e.info(k))
            .collect())
    }

    async fn cleanup_expired(&self) -> Result<u64, LockError> {
        let now = Instant::now();
        let mut state = self.state.lock();
        let before = state.locks.len();
        state.locks.retain(|_, e| e.live(now));
        Ok((before - state.locks.len()) as u64)
    }

    async fn force_release(&self, key: &str) -> Result<bool, LockError> {
        validate_key(key)?;
        let now = Instant::now();
        let removed = self.state.lock().locks.remove(key);
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
