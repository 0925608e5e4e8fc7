//! [`RedisLockStore`]: leases in Redis, one server or a Redis Cluster, for services on many
//! machines.
//!
//! Each operation on a lock is one Lua script over the keys of a single hash slot, so it is
//! atomic on the server, runs unchanged on a Redis Cluster, and reads the server's clock
//! (`TIME`), never the application's. A lease is a hash, `<prefix>lock:{<key>}` (the braces
//! make the key its own hash tag), with its owner, token, fence and expiry, and one field
//! per metadata entry (`m:<name>`, so `HGET` reads one). The hash also gets a `PEXPIRE` of
//! the TTL plus a grace period, so Redis reclaims abandoned leases by itself; until then
//! [`cleanup_expired`](crate::LockStore::cleanup_expired) can count and remove them. A release
//! keeps the hash, its token marked released, for at least that grace period, so the key's
//! last fence stays known: it leaves the hash's expiry as the grant set it (the lease's end
//! plus the grace period), which spares it a command, unless that is more than two grace
//! periods away. Nothing global is written on the way to a lock:
//! [`list`](crate::LockStore::list) and `cleanup_expired` walk the keys node by node with `SCAN`,
//! in batches, never one long blocking script.
//!
//! Fences only go forward, whatever happens to the server's memory: a fence is one more
//! than the key's last, and at least the server's clock in microseconds. After a restart
//! without persistence, a `FLUSHALL` or the loss of a key, the next fence comes from the
//! clock alone, which has moved past every fence drawn before. The one assumption: the
//! Redis servers' clocks never step back (NTP slews; it does not jump back), and on a
//! cluster they agree to within the fences' spacing (microseconds apart per grant).
//!
//! A wipe must not silently admit a second holder either. The store keeps a marker
//! without expiry that every store instance learns: on one server a single
//! `<prefix>epoch`, read on connect; on a cluster one per hash slot,
//! `<prefix>epoch:{<tag>}`, learned when the instance first uses the slot. When an
//! instance that knew a marker finds it gone, the state was lost: it grants no lock there
//! until the longest lease that could still be live has run out (the delayed restart of
//! the Redlock analysis), logs it at warn, and every other instance that knew the marker
//! does the same. An instance that had not yet learned the marker cannot tell the loss
//! from a new server or a slot never used; the fences still protect the resource. The
//! marker is read by every renewal, and by an acquire of a key with no lock hash (a wipe
//! takes every lock hash with it: a key whose hash exists keeps its own holder, expiry and
//! fence) or of a lease longer than the marker records; an instance that finds a wipe
//! publishes its wait, and every instance that hears it reads the marker on every grant
//! until the wait is over.
//!
//! Live leases must not be evictable: `connect` reads `maxmemory-policy` on every master
//! and refuses any policy but `noeviction` (see [`RedisConfig::allow_eviction`]).
//!
//! A take-over and a forced release are published on `<prefix>events`, and so is a
//! release while a waiter has announced itself ([`LockStore::announce_wait`](crate::LockStore::announce_wait): a
//! `waiting_until` field, written by a script, so a release either sees it or the waiter
//! sees the key free); each store subscribes once (on a cluster, to one node at a time: a
//! publication reaches every node), so holders and waiters in every process learn at once,
//! and a release nobody waits for sends nothing to the subscribers.
//!
//! Neither a single server nor a cluster is Redlock: a failover to a replica that missed
//! the last writes loses leases. The replica's clock-based fences still go forward; treat a
//! failover like a restart.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::notify::Watchers;

mod client;
mod connection;
mod lock_store;
mod pubsub;
mod replies;
mod run;
mod scripts;
mod sentinel;
mod slots;
#[cfg(all(test, feature = "conformance"))]
mod tests;

use connection::Connection;
use scripts::Scripts;

const BACKEND: &str = "redis";

/// Settings for [`RedisLockStore`].
///
/// Start from [`Default`] and change what you need with the `with_*` setters. The struct is
/// `#[non_exhaustive]`: a field added in a later release is not a breaking change, so it
/// cannot be built with a struct literal outside this crate (its fields stay readable).
///
/// ```
/// use conc_lock_store::RedisConfig;
///
/// let config = RedisConfig::default().with_prefix("myapp:");
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RedisConfig {
    /// The prefix of every key this store writes (default `conc:`).
    pub prefix: String,
    /// The limit on each operation (default 5 s).
    pub op_timeout: Duration,
    /// The limit on connecting (default 5 s).
    pub connect_timeout: Duration,
    /// The longest TTL accepted (default 1 h).
    pub max_ttl: Duration,
    /// How long an expired or released lease's hash stays at least (for `cleanup_expired`,
    /// and to remember the key's last fence) before Redis drops it (default 60 s); a
    /// released hash stays at most two grace periods.
    pub grace: Duration,
    /// How long the store grants no lock after it found its state lost. `None` (the
    /// default) waits for the longest lease seen on this server, plus its drift margin.
    pub restart_delay: Option<Duration>,
    /// Accept a `maxmemory-policy` other than `noeviction`, or a server whose `CONFIG`
    /// command is disabled (managed Redis), where the policy cannot be read (default
    /// `false`). An evicted lease frees its lock while its holder still writes: opt in
    /// only where you know lock keys cannot be evicted.
    pub allow_eviction: bool,
    /// How many replicas must acknowledge every lock write (acquire, take-over, renewal,
    /// release) before it counts, as Redisson's `checkLockSyncedSlaves` (default 0: none
    /// asked). After each write the store sends `WAIT min_replicas replica_timeout` on the
    /// same connection; when fewer acknowledge in time, an acquire or take-over is undone
    /// and fails with [`LockError::NotReplicated`](crate::LockError::NotReplicated), and a
    /// renewal fails the same way. URL option `min_replicas=`.
    pub min_replicas: u32,
    /// How long a write waits for its replicas (default 500 ms). URL option
    /// `replica_timeout=` (ms).
    pub replica_timeout: Duration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            prefix: "conc:".into(),
            op_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            max_ttl: Duration::from_secs(3600),
            grace: Duration::from_secs(60),
            restart_delay: None,
            allow_eviction: false,
            min_replicas: 0,
            replica_timeout: Duration::from_millis(500),
        }
    }
}

impl RedisConfig {
    /// How long a connection waits for one answer: the operation timeout, plus the
    /// replicas' when a write waits for them.
    pub(super) fn response_timeout(&self) -> Duration {
        if self.min_replicas > 0 {
            self.op_timeout + self.replica_timeout
        } else {
            self.op_timeout
        }
    }

    /// Sets [`min_replicas`](Self::min_replicas) and
    /// [`replica_timeout`](Self::replica_timeout).
    #[must_use]
    pub fn with_replica_ack(mut self, min_replicas: u32, replica_timeout: Duration) -> Self {
        self.min_replicas = min_replicas;
        self.replica_timeout = replica_timeout;
        self
    }

    /// Sets [`prefix`](Self::prefix).
    #[must_use]
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Sets [`op_timeout`](Self::op_timeout).
    #[must_use]
    pub fn with_op_timeout(mut self, op_timeout: Duration) -> Self {
        self.op_timeout = op_timeout;
        self
    }

    /// Sets [`connect_timeout`](Self::connect_timeout).
    #[must_use]
    pub fn with_connect_timeout(mut self, connect_timeout: Duration) -> Self {
        self.connect_timeout = connect_timeout;
        self
    }

    /// Sets [`max_ttl`](Self::max_ttl).
    #[must_use]
    pub fn with_max_ttl(mut self, max_ttl: Duration) -> Self {
        self.max_ttl = max_ttl;
        self
    }

    /// Sets [`grace`](Self::grace).
    #[must_use]
    pub fn with_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Sets [`restart_delay`](Self::restart_delay).
    #[must_use]
    pub fn with_restart_delay(mut self, restart_delay: Option<Duration>) -> Self {
        self.restart_delay = restart_delay;
        self
    }

    /// Sets [`allow_eviction`](Self::allow_eviction).
    #[must_use]
    pub fn with_allow_eviction(mut self, allow_eviction: bool) -> Self {
        self.allow_eviction = allow_eviction;
        self
    }
}

/// What this instance knows of the store's markers.
#[derive(Debug, Default)]
struct Epoch {
    /// The markers' ids, once seen: by hash slot on a cluster, under slot 0 on one server.
    ids: HashMap<u16, String>,
    /// The longest lease the store has granted, in ms.
    longest: u64,
    /// The longest lease each marker records (ms), read with the id in `ids`: it only
    /// grows while the id stays.
    recorded: HashMap<u16, u64>,
    /// Until when (server clock, ms) the store grants nothing, as last seen.
    after: i64,
}

/// How many keys one `SCAN` call looks at, and how many leases are read at once.
const BATCH: usize = 500;

/// A [`LockStore`](crate::LockStore) in Redis: one server, or a Redis Cluster.
///
/// ```no_run
/// use std::time::Duration;
/// use conc_lock_store::{LockRequest, LockStore, RedisConfig, RedisLockStore};
///
/// # async fn example() -> Result<(), conc_lock_store::LockError> {
/// let store = RedisLockStore::connect("redis://127.0.0.1:6379", RedisConfig::default()).await?;
/// // or a cluster, named by any of its nodes:
/// // RedisLockStore::connect("redis+cluster://10.0.0.1:7000,10.0.0.2:7000", RedisConfig::default())
/// let request = LockRequest::new("conversation:1", "worker-a", Duration::from_secs(30));
/// if let Some(lease) = store.try_acquire(&request).await? {
///     store.release(&lease).await?;
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisLockStore {
    connection: Connection,
    // Behind `Arc`s, with everything else, so that a clone (one per acquire, kept by the
    // cleanup of an abandoned grant) copies no script and no string.
    config: Arc<RedisConfig>,
    scripts: Arc<Scripts>,
    epoch: Arc<parking_lot::Mutex<Epoch>>,
    watchers: Arc<Watchers>,
    /// Dropped with the store, which ends the subscribing task.
    _subscriber: Arc<tokio::sync::oneshot::Sender<()>>,
}

impl fmt::Debug for RedisLockStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLockStore")
            .field("prefix", &self.config.prefix)
            .field("cluster", &self.is_cluster())
            .finish_non_exhaustive()
    }
}
