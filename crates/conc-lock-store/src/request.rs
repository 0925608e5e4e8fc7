//! [`LockRequest`], [`Lease`] and [`LockInfo`], and the input checks every backend shares.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use crate::error::LockError;

/// The longest key, in bytes.
pub const MAX_KEY_BYTES: usize = 512;
/// The shortest TTL.
pub const MIN_TTL: Duration = Duration::from_millis(1);
/// The longest TTL any store accepts, whatever its configured maximum (one year). A
/// larger configured maximum is capped here, so a TTL can never overflow a clock or a
/// server's expiry arithmetic.
pub const TTL_LIMIT: Duration = Duration::from_secs(365 * 24 * 3600);

/// Free-form metadata kept with a lease (such as the user id and the message id).
pub type Metadata = BTreeMap<String, String>;

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
    /// drift between its clock and the store's; `None` takes [`default_drift_margin`].
    pub drift_margin: Option<Duration>,
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
        }
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
        validate_ttl(self.ttl, max_ttl)
    }
}

/// The drift margin a holder allows when the request names none: 1% of the TTL plus
/// 2 ms (the clock-drift allowance of the Redlock analysis).
pub fn default_drift_margin(ttl: Duration) -> Duration {
    ttl / 100 + Duration::from_millis(2)
}

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

    /// The outcome of a renewal sent at `sent`: this lease with its new expiry and TTL, or
    /// [`LockError::Lost`] when the backend found it gone (`None`).
    pub(crate) fn renewed(
        &self,
        expires_at: Option<SystemTime>,
        ttl: Duration,
        sent: tokio::time::Instant,
    ) -> Result<Lease, LockError> {
        match expires_at {
            Some(expires_at) => Ok(Lease {
                expires_at,
                ttl,
                requested_at: sent,
                ..self.clone()
            }),
            None => Err(LockError::Lost {
                key: self.key.clone(),
                fence: self.fence,
            }),
        }
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

/// The next fence after `previous`: at least one more, and at least the store's clock in
/// microseconds since the Unix epoch. The clock part is what keeps fences going forward
/// when a store loses its state (a restart without persistence, a flush, an eviction):
/// the next fence is then drawn from the clock alone, which has moved past every fence
/// drawn before, as long as the store's clock never steps back.
pub(crate) fn next_fence(previous: u64, clock_micros: u64) -> u64 {
    previous.saturating_add(1).max(clock_micros)
}

/// Microseconds since the Unix epoch on this machine's wall clock.
pub(crate) fn unix_micros(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC), for messages and operators.
pub fn format_time(time: SystemTime) -> String {
    let millis = crate::unix_millis(time);
    let (secs, ms) = (millis.div_euclid(1000), millis.rem_euclid(1000));
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{ms:03}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_format_as_utc() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(784_111_777_123);
        assert_eq!(format_time(t), "1994-11-06T08:49:37.123Z");
        assert_eq!(
            format_time(SystemTime::UNIX_EPOCH),
            "1970-01-01T00:00:00.000Z"
        );
    }
}

/// Encodes metadata as `name=value` lines, with `\`, `=` and newlines escaped; the form
/// every SQL backend stores.
pub(crate) fn encode_metadata(metadata: &Metadata) -> String {
    let mut out = String::new();
    for (name, value) in metadata {
        escape_into(&mut out, name);
        out.push('=');
        escape_into(&mut out, value);
        out.push('\n');
    }
    out
}

fn escape_into(out: &mut String, raw: &str) {
    for c in raw.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '=' => out.push_str("\\="),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// The inverse of [`encode_metadata`]; malformed lines are skipped.
pub(crate) fn decode_metadata(text: &str) -> Metadata {
    let mut metadata = Metadata::new();
    for line in text.split('\n').filter(|l| !l.is_empty()) {
        let mut name = String::new();
        let mut value = String::new();
        let mut in_value = false;
        let mut chars = line.chars();
        while let Some(c) = chars.next() {
            let target = if in_value { &mut value } else { &mut name };
            match c {
                '\\' => match chars.next() {
                    Some('n') => target.push('\n'),
                    Some(other) => target.push(other),
                    None => {}
                },
                '=' if !in_value => in_value = true,
                c => target.push(c),
            }
        }
        if in_value {
            metadata.insert(name, value);
        }
    }
    metadata
}

#[cfg(test)]
mod metadata_tests {
    use super::*;

    #[test]
    fn metadata_round_trips_through_its_text_form() {
        let mut m = Metadata::new();
        m.insert("user=id".into(), "a\\b\nc".into());
        m.insert("message_id".into(), "m-1".into());
        m.insert(String::new(), String::new());
        assert_eq!(decode_metadata(&encode_metadata(&m)), m);
    }
}
