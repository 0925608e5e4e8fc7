//! What a store hands out and reports: [`Lease`] and [`LockInfo`], and their metadata.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

/// Free-form metadata kept with a lease (such as the user id and the message id).
pub type Metadata = BTreeMap<String, String>;

/// A held lock. Keep it to release or renew; pass [`fence`](Self::fence) to the resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The key.
    pub key: String,
    /// The owner.
    pub owner: String,
    /// A random token that proves this lease (release and renew compare it).
    pub token: String,
    /// The fencing token: strictly increasing per key, never reused.
    pub fence: u64,
    /// When it was acquired.
    pub acquired_at: SystemTime,
    /// When it expires unless renewed (the backend's clock).
    pub expires_at: SystemTime,
    /// The TTL it was taken or last renewed with.
    pub ttl: Duration,
    /// When, on this process's monotonic clock, the request that took or last renewed the
    /// lease was sent: the lease cannot have expired on the store before
    /// `requested_at + ttl`, whatever the two wall clocks say.
    pub requested_at: tokio::time::Instant,
}

impl Lease {
    /// The fencing token.
    pub fn fence(&self) -> u64 {
        self.fence
    }

    /// The last moment, on this process's monotonic clock, at which the lease is surely
    /// still held: `requested_at + ttl - margin`. Past it, stop writing.
    pub fn valid_until(&self, margin: Duration) -> tokio::time::Instant {
        let valid = self.ttl.saturating_sub(margin);
        self.requested_at
            .checked_add(valid)
            .unwrap_or(self.requested_at)
    }
}

/// What `inspect` and `list` report about a live lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockInfo {
    /// The key.
    pub key: String,
    /// The holder.
    pub owner: String,
    /// The holder's metadata.
    pub metadata: Metadata,
    /// The lease's fence.
    pub fence: u64,
    /// When it was acquired.
    pub acquired_at: SystemTime,
    /// When it expires unless renewed.
    pub expires_at: SystemTime,
}

/// The drift margin a holder allows when the request names none: 1% of the TTL plus
/// 2 ms (the clock-drift allowance of the Redlock analysis).
pub fn default_drift_margin(ttl: Duration) -> Duration {
    ttl / 100 + Duration::from_millis(2)
}
