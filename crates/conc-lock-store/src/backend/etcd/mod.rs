//! [`EtcdLockStore`]: leases in etcd, a consensus store, so a lock granted survives the loss
//! of any minority of its members, a leader failover included.
//!
//! Built on etcd's KV, lease, transaction and watch APIs (not on its Lock and Election
//! RPCs, which cannot fence). A lock on `key` is the etcd key `<prefix>lock/<key>`, attached
//! to an etcd lease of the request's TTL, with the holder's owner, token and metadata as
//! its JSON value.
//!
//! - **Acquire**: grant a lease, then one transaction: if the key's create revision is 0
//!   (no such key), put it with the lease; otherwise read it. A lease that lost is revoked.
//! - **The fence is the key's create revision**: one cluster-wide counter that only goes
//!   forward, through every failover etcd survives, with no clock involved.
//! - **Release** and **take-over** are transactions guarded by the create revision, so a
//!   retried release can never remove a newer holder's key. A take-over deletes the key (if
//!   its create revision is still the one read) and puts its own in a second transaction,
//!   with a new create revision; the old holder's lease is revoked.
//! - **Renew** keeps the lease alive (a keep-alive answer with a TTL of 0 means lost) and
//!   checks in a transaction that the key still has this lease and create revision; a
//!   renewal to another TTL puts the key again with a new lease (a put keeps the create
//!   revision, so the fence stays).
//! - **Watch**: one etcd watch per store on the prefix, from the revision read on connect;
//!   every put or delete of a lock key wakes that key's watchers in every process at once,
//!   so no wait needs announcing. A broken watch (a member lost, a compacted start
//!   revision) wakes every watcher and starts again from the current revision.
//!
//! Time: etcd counts a lease's TTL in whole seconds on the leader's clock, so a TTL is
//! rounded up to whole seconds, and a new leader extends every lease by its election
//! timeout. Others may wait up to that much longer for a dead holder's lock; a holder
//! still stops at its own TTL ([`LockGuard`](crate::LockGuard) measures it locally), so
//! mutual exclusion never rests on a clock. An expired lease's key is deleted by etcd
//! itself, so [`cleanup_expired`](crate::LockStore::cleanup_expired) finds nothing.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::notify::Watchers;

mod client;
mod lock_store;
mod value;
mod watcher;

const BACKEND: &str = "etcd";

/// Settings for [`EtcdLockStore`].
///
/// Start from [`Default`] and change what you need with the `with_*` setters; the struct is
/// `#[non_exhaustive]`.
///
/// ```
/// use conc_lock_store::EtcdConfig;
///
/// let config = EtcdConfig::default().with_prefix("myapp/");
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct EtcdConfig {
    /// The prefix of every key this store writes (default `conc/`).
    pub prefix: String,
    /// The limit on each request (default 5 s).
    pub op_timeout: Duration,
    /// The limit on connecting (default 5 s).
    pub connect_timeout: Duration,
    /// The longest TTL accepted (default 1 h).
    pub max_ttl: Duration,
    /// A user name and password, when the cluster has authentication on.
    pub credentials: Option<(String, String)>,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        Self {
            prefix: "conc/".into(),
            op_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            max_ttl: Duration::from_secs(3600),
            credentials: None,
        }
    }
}

impl EtcdConfig {
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

    /// Sets [`credentials`](Self::credentials).
    #[must_use]
    pub fn with_credentials(
        mut self,
        user: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        self.credentials = Some((user.into(), password.into()));
        self
    }
}

/// A [`LockStore`](crate::LockStore) in etcd (feature `etcd`).
///
/// ```no_run
/// use std::time::Duration;
/// use conc_lock_store::{EtcdConfig, EtcdLockStore, LockRequest, LockStore};
///
/// # async fn example() -> Result<(), conc_lock_store::LockError> {
/// let store = EtcdLockStore::connect("etcd://10.0.0.1:2379,10.0.0.2:2379,10.0.0.3:2379", EtcdConfig::default()).await?;
/// let request = LockRequest::new("conversation:1", "worker-a", Duration::from_secs(30));
/// if let Some(lease) = store.try_acquire(&request).await? {
///     // lease.fence is the key's create revision: check it where you write.
///     store.release(&lease).await?;
/// }
/// # Ok(())
/// # }
/// ```
pub struct EtcdLockStore {
    client: etcd_client::Client,
    config: EtcdConfig,
    watchers: Arc<Watchers>,
    /// Dropped with the store, which ends the watching task.
    _watcher: tokio::sync::oneshot::Sender<()>,
}

impl fmt::Debug for EtcdLockStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdLockStore")
            .field("prefix", &self.config.prefix)
            .finish_non_exhaustive()
    }
}
