//! The value of a lock key: a JSON object with the holder's owner, token, the TTL asked
//! for, when it was granted (the granting client's clock, for display only) and the
//! metadata: `{"owner":"w-1","token":"…","ttl_ms":30000,"acquired_ms":…,"metadata":{…}}`.
//!
//! The token is the etcd lease's id in hexadecimal, then `.`, then the lease's TTL in
//! seconds: all a later renewal or release needs, with no read first.

use std::time::{Duration, SystemTime};

use crate::lease::Metadata;
use crate::util::clock::{from_unix_millis, unix_millis};

/// A lock key's value, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Holder {
    pub(super) owner: String,
    pub(super) token: String,
    pub(super) ttl: Duration,
    pub(super) acquired_at: SystemTime,
    pub(super) metadata: Metadata,
}

impl Holder {
    /// Its JSON text.
    pub(super) fn encode(&self) -> String {
        serde_json::json!({
            "owner": self.owner,
            "token": self.token,
            "ttl_ms": u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX),
            "acquired_ms": unix_millis(self.acquired_at),
            "metadata": self.metadata,
        })
        .to_string()
    }

    /// Reads a stored value; `None` for one conc did not write (the caller reports it).
    pub(super) fn decode(bytes: &[u8]) -> Option<Self> {
        let value: serde_json::Value = serde_json::from_slice(bytes).ok()?;
        let text = |name: &str| value.get(name)?.as_str().map(str::to_owned);
        let metadata = match value.get("metadata") {
            Some(serde_json::Value::Object(fields)) => fields
                .iter()
                .filter_map(|(name, v)| Some((name.clone(), v.as_str()?.to_owned())))
                .collect(),
            _ => Metadata::new(),
        };
        Some(Self {
            owner: text("owner")?,
            token: text("token")?,
            ttl: Duration::from_millis(value.get("ttl_ms")?.as_u64()?),
            acquired_at: from_unix_millis(value.get("acquired_ms")?.as_i64()?),
            metadata,
        })
    }
}

/// A token for etcd lease `id` of `seconds`.
pub(super) fn token(id: i64, seconds: i64) -> String {
    format!("{id:x}.{seconds}")
}

/// The lease id and TTL (seconds) a token names, or `None` for a token this store did not
/// make.
pub(super) fn parse_token(token: &str) -> Option<(i64, i64)> {
    let (id, seconds) = token.split_once('.')?;
    Some((i64::from_str_radix(id, 16).ok()?, seconds.parse().ok()?))
}

/// A TTL in etcd's whole seconds, rounded up, at least one.
pub(super) fn whole_seconds(ttl: Duration) -> i64 {
    let seconds = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    i64::try_from(seconds.max(1)).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_and_tokens_round_trip() {
        let holder = Holder {
            owner: "w-1".into(),
            token: token(0x7a3f, 30),
            ttl: Duration::from_millis(29_500),
            acquired_at: from_unix_millis(1_700_000_000_123),
            metadata: Metadata::from([("user".to_owned(), "u \"1\"".to_owned())]),
        };
        assert_eq!(Holder::decode(holder.encode().as_bytes()), Some(holder));
        assert_eq!(parse_token(&token(0x7a3f, 30)), Some((0x7a3f, 30)));
        assert_eq!(parse_token("not-the-token"), None);
        assert_eq!(Holder::decode(b"plain text"), None);
        assert_eq!(whole_seconds(Duration::from_millis(1)), 1);
        assert_eq!(whole_seconds(Duration::from_millis(1000)), 1);
        assert_eq!(whole_seconds(Duration::from_millis(1001)), 2);
    }
}
