//! The scripts' replies, parsed: a live lease's fields, the restart guard's part, an
//! acquire's answer.

use std::time::Duration;

use crate::backend::metadata::decode_metadata;
use crate::lease::{LockInfo, Metadata};
use crate::util::clock::from_unix_millis;

/// A live lease's fields, as the inspect script returns them.
pub(super) struct InfoFields {
    pub(super) owner: String,
    pub(super) metadata: Metadata,
    pub(super) fence: u64,
    pub(super) acquired_at: i64,
    pub(super) expires_at: i64,
}

impl redis::FromRedisValue for InfoFields {
    fn from_redis_value(value: redis::Value) -> Result<Self, redis::ParsingError> {
        let fields: Vec<redis::Value> = redis::from_redis_value(value)?;
        if fields.len() < 5 || fields.len().is_multiple_of(2) {
            return Err(format!(
                "the inspect script returned {} fields, not 5 and name/value pairs",
                fields.len()
            )
            .into());
        }
        let mut fields = fields.into_iter();
        let mut next = || fields.next().unwrap_or(redis::Value::Nil);
        let owner: String = redis::from_redis_value(next())?;
        // Leases written by earlier versions keep their metadata as one JSON field.
        let mut metadata = decode_metadata(&redis::from_redis_value::<String>(next())?);
        let fence = redis::from_redis_value(next())?;
        let acquired_at = redis::from_redis_value(next())?;
        let expires_at = redis::from_redis_value(next())?;
        let rest: Vec<String> = fields
            .map(redis::from_redis_value)
            .collect::<Result<_, _>>()?;
        for pair in rest.chunks_exact(2) {
            metadata.insert(pair[0].clone(), pair[1].clone());
        }
        Ok(Self {
            owner,
            metadata,
            fence,
            acquired_at,
            expires_at,
        })
    }
}

/// The guard's part of a reply: epoch id, grant-after (ms), longest lease (ms), wiped.
pub(super) type GuardReply = (String, i64, u64, i64);

/// An acquire's reply: status, the guard's part (if the script read the guard), and a
/// granted lease's fence and times.
pub(super) type AcquireReply = (i64, Option<GuardReply>, Option<(u64, i64, i64)>);

pub(super) fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

pub(super) fn info(key: String, fields: InfoFields) -> LockInfo {
    LockInfo {
        key,
        owner: fields.owner,
        metadata: fields.metadata,
        fence: fields.fence,
        acquired_at: from_unix_millis(fields.acquired_at),
        expires_at: from_unix_millis(fields.expires_at),
    }
}
