//! [`LockRequest`] and the input checks every backend shares (keys, owners, TTLs), and
//! the reading of a renewal's answer.

use std::time::{Duration, SystemTime};

use crate::error::LockError;
use crate::lease::{Lease, Metadata};

/// The longest key, in bytes.
pub const MAX_KEY_BYTES: usize = 512;
/// The shortest TTL.
pub const MIN_TTL: Duration = Duration::from_millis(1);
/// The longest TTL any store accepts, whatever its configured maximum (one year). A
/// larger configured maximum is capped here, so a TTL can never overflow a clock or a
/// server's expiry arithmetic.
pub const TTL_LIMIT: Duration = Duration::from_secs(365 * 24 * 3600);

/// What to lock, for whom, and for how long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockRequest {
    /// The lock's name, such as `conversation:42`.
    pub key: String,
    /// Who asks: a worker, process or user id, shown to operators and in timeout errors.
    pub owner: String,
    /// How long the lease lasts unless renewed.
    pub ttl: Duration,
    /// Free metadata kept with the lease.
    pub metadata: Metadata,
    /// How much shorter than the TTL a holder treats its lease as valid, to allow for the
    /// drift between its clock and the store's; `None` takes [`default_drift_margin`](crate::default_drift_margin).
    pub drift_margin: Option<Duration>,
    /// The latest moment, on this process's monotonic clock, at which the call may still
    /// wait for the store's answer: every request it sends (retries included) times out by
    /// then, as well as by the store's own request timeout. `None` leaves only the store's
    /// request timeout. [`LockStore::acquire`](crate::LockStore::acquire) sets it to the end
    /// of its wait, so an acquire with wait W returns within W (plus one round trip) even
    /// when the store does not answer at all.
    pub deadline: Option<tokio::time::Instant>,
}

impl LockRequest {
    /// A request for `key` by `owner` for `ttl`.
    pub fn new(key: impl Into<String>, owner: impl Into<String>, ttl: Duration) -> Self {
        Self {
            key: key.into(),
            owner: owner.into(),
            ttl,
            metadata: Metadata::new(),
            drift_margin: None,
            deadline: None,
        }
    }

    /// Sets the [`deadline`](Self::deadline): no request of the call waits past it.
    pub fn with_deadline(mut self, deadline: tokio::time::Instant) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// The drift margin in force: [`drift_margin`](Self::drift_margin), or
    /// [`default_drift_margin`](crate::default_drift_margin) of the TTL.
    pub fn margin(&self) -> Duration {
        self.drift_margin
            .unwrap_or_else(|| crate::lease::default_drift_margin(self.ttl))
    }

    /// Sets the drift margin: a [`LockGuard`](crate::LockGuard) treats its lease as lost
    /// this long before the TTL, counted from the moment the request was sent, has run out.
    pub fn with_drift_margin(mut self, margin: Duration) -> Self {
        self.drift_margin = Some(margin);
        self
    }

    /// Adds one metadata entry.
    pub fn with_metadata(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(name.into(), value.into());
        self
    }

    /// Checks the key, the owner, the metadata and the TTL against `max_ttl`.
    pub fn validate(&self, max_ttl: Duration) -> Result<(), LockError> {
        validate_key(&self.key)?;
        self.validate_without_key(max_ttl)
    }

    /// Checks the owner, the metadata and the TTL, not the key (a template for several
    /// keys).
    pub(crate) fn validate_without_key(&self, max_ttl: Duration) -> Result<(), LockError> {
        if self.owner.trim().is_empty() || self.owner.contains('\0') {
            return Err(LockError::InvalidOwner);
        }
        for (name, value) in &self.metadata {
            if name.contains('\0') || value.contains('\0') {
                return Err(LockError::InvalidMetadata {
                    reason: format!(
                        "the entry `{}` holds a NUL byte, which no store can keep",
                        name.escape_default()
                    ),
                });
            }
        }
        validate_ttl(self.ttl, max_ttl)?;
        let margin = self.margin();
        if self.ttl < margin + MIN_VALIDITY {
            return Err(LockError::TtlWithinMargin {
                ttl: self.ttl,
                margin,
                least: margin + MIN_VALIDITY,
            });
        }
        Ok(())
    }
}

/// The least validity a lease must have beyond its drift margin: a TTL shorter than the
/// margin plus this would hand out a lease that is lost by the time its answer arrives.
pub const MIN_VALIDITY: Duration = Duration::from_millis(5);

/// Checks a key: non-empty, not only whitespace, no NUL byte, at most [`MAX_KEY_BYTES`].
pub fn validate_key(key: &str) -> Result<(), LockError> {
    if key.is_empty() {
        return Err(LockError::InvalidKey {
            reason: "the key must not be empty (name what you lock, such as `conversation:42`)"
                .into(),
        });
    }
    if key.trim().is_empty() {
        return Err(LockError::InvalidKey {
            reason: "the key is only whitespace (name what you lock, such as `conversation:42`)"
                .into(),
        });
    }
    if key.contains('\0') {
        return Err(LockError::InvalidKey {
            reason: "the key holds a NUL byte, which no store can keep".into(),
        });
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(LockError::InvalidKey {
            reason: format!(
                "the key is {} bytes; the limit is {MAX_KEY_BYTES} (hash long names)",
                key.len()
            ),
        });
    }
    Ok(())
}

pub(crate) fn validate_ttl(ttl: Duration, max: Duration) -> Result<(), LockError> {
    let max = max.min(TTL_LIMIT);
    if ttl < MIN_TTL || ttl > max {
        return Err(LockError::InvalidTtl {
            ttl,
            min: MIN_TTL,
            max,
        });
    }
    Ok(())
}

/// The moment by which a call's requests must be answered: `op_timeout` from now, or the
/// caller's `deadline` if that is sooner. Retries of the call share it.
#[cfg(any(feature = "postgres", feature = "redis"))]
pub(crate) fn call_deadline(
    op_timeout: Duration,
    deadline: Option<tokio::time::Instant>,
) -> tokio::time::Instant {
    let own = tokio::time::Instant::now() + op_timeout;
    match deadline {
        Some(deadline) => own.min(deadline),
        None => own,
    }
}

/// The deadline of a renewal of `lease`: `op_timeout` from now, or the end of the lease's
/// validity (its TTL less the default drift margin, from when it was taken or last
/// renewed) if that is sooner: a renewal that keeps the lease without a gap must be
/// answered by then. A lease already past its validity gets the whole `op_timeout`: its
/// renewal is a new question (`Lost`, or a renewal valid from when it was sent).
#[cfg(any(feature = "postgres", feature = "redis"))]
pub(crate) fn renewal_deadline(op_timeout: Duration, lease: &Lease) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    let own = now + op_timeout;
    let valid = lease.valid_until(crate::lease::default_drift_margin(lease.ttl));
    if valid > now { own.min(valid) } else { own }
}

impl Lease {
    /// This lease if its validity, counted from when its request was sent, has not run out
    /// (less `margin`); [`LockError::LateReply`] if the store's answer came too late to be
    /// used.
    pub(crate) fn fresh(
        self,
        margin: Duration,
        operation: &'static str,
    ) -> Result<Lease, LockError> {
        let now = tokio::time::Instant::now();
        if now < self.valid_until(margin) {
            return Ok(self);
        }
        Err(LockError::LateReply {
            key: self.key,
            fence: self.fence,
            operation,
            answered_after: now.saturating_duration_since(self.requested_at),
            valid_for: self.ttl.saturating_sub(margin),
        })
    }

    /// The outcome of a renewal sent at `sent`: this lease with its new expiry and TTL, or
    /// [`LockError::Lost`] when the backend found it gone (`None`).
    pub(crate) fn renewed(
        &self,
        expires_at: Option<SystemTime>,
        ttl: Duration,
        sent: tokio::time::Instant,
    ) -> Result<Lease, LockError> {
        match expires_at {
            Some(expires_at) => Lease {
                expires_at,
                ttl,
                requested_at: sent,
                ..self.clone()
            }
            .fresh(crate::lease::default_drift_margin(ttl), "renew"),
            None => Err(LockError::Lost {
                key: self.key.clone(),
                fence: self.fence,
            }),
        }
    }
}
