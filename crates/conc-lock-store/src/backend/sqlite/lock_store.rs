//! [`LockStore`] for [`SqliteLockStore`]: each operation one transaction on the
//! connection thread.

use std::time::{Duration, SystemTime};

use rusqlite::{OptionalExtension, params};

use crate::backend::metadata::decode_metadata;
use crate::error::LockError;
use crate::lease::{Lease, LockInfo};
use crate::notify::LockWatch;
use crate::request::{LockRequest, validate_key, validate_ttl};
use crate::store::LockStore;
use crate::util::clock::{from_unix_millis, unix_millis};

use super::{BACKEND, SqliteLockStore, sql_error};

pub(super) fn now_millis() -> i64 {
    unix_millis(SystemTime::now())
}

pub(super) fn ttl_millis(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1)
}

/// Takes the key if free or expired (a released row is expired), with the next fence: one
/// more than the key's row's (a released row keeps its fence), more than the floor that
/// deleted rows leave, and at least the clock in microseconds (`?7`, so a deleted file does
/// not send fences back). One statement, so one commit, writing the row alone.
pub(super) const ACQUIRE_SQL: &str =
    "INSERT INTO conc_locks (key, owner, token, fence, metadata, acquired_at, expires_at)
     VALUES (?1, ?2, ?3, MAX((SELECT value + 1 FROM conc_lock_fence_floor WHERE id = 0), ?7), ?4, ?5, ?6)
     ON CONFLICT (key) DO UPDATE SET
         owner = excluded.owner, token = excluded.token,
         fence = MAX(conc_locks.fence + 1, excluded.fence),
         metadata = excluded.metadata, acquired_at = excluded.acquired_at,
         expires_at = excluded.expires_at
     WHERE conc_locks.expires_at <= ?5
     RETURNING fence";

/// As [`ACQUIRE_SQL`], whoever holds the key.
pub(super) const TAKE_OVER_SQL: &str =
    "INSERT INTO conc_locks (key, owner, token, fence, metadata, acquired_at, expires_at)
     VALUES (?1, ?2, ?3, MAX((SELECT value + 1 FROM conc_lock_fence_floor WHERE id = 0), ?7), ?4, ?5, ?6)
     ON CONFLICT (key) DO UPDATE SET
         owner = excluded.owner, token = excluded.token,
         fence = MAX(conc_locks.fence + 1, excluded.fence),
         metadata = excluded.metadata, acquired_at = excluded.acquired_at,
         expires_at = excluded.expires_at
     RETURNING fence";

pub(super) const INFO_COLUMNS: &str = "key, owner, metadata, fence, acquired_at, expires_at";

pub(super) fn info_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<LockInfo> {
    Ok(LockInfo {
        key: row.get(0)?,
        owner: row.get(1)?,
        metadata: decode_metadata(&row.get::<_, String>(2)?),
        fence: u64::try_from(row.get::<_, i64>(3)?).unwrap_or(0),
        acquired_at: from_unix_millis(row.get(4)?),
        expires_at: from_unix_millis(row.get(5)?),
    })
}

#[async_trait::async_trait]
impl LockStore for SqliteLockStore {
    async fn try_acquire(&self, request: &LockRequest) -> Result<Option<Lease>, LockError> {
        self.acquire_inner(request, false).await
    }

    async fn take_over(&self, request: &LockRequest) -> Result<Lease, LockError> {
        LockError::taken(BACKEND, self.acquire_inner(request, true).await?)
    }

    async fn release(&self, lease: &Lease) -> Result<bool, LockError> {
        let (key, token) = (lease.key.clone(), lease.token.clone());
        let watchers = self.watchers.clone();
        self.call(move |connection| {
            // The row stays, with its fence, for the key's next grant: an update of the
            // row's own page, where a delete would move the store's fence floor too. An
            // expiry of 0 reads as expired whatever the clock does.
            let removed = connection
                .prepare_cached(
                    "UPDATE conc_locks SET token = '', expires_at = 0
                     WHERE key = ?1 AND token = ?2 AND expires_at > ?3",
                )
                .and_then(|mut s| s.execute(params![key, token, now_millis()]))
                .map_err(sql_error("release"))?;
            if removed == 1 {
                watchers.notify(&key);
            }
            Ok(removed == 1)
        })
        .await
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Lease, LockError> {
        validate_ttl(ttl, self.config.max_ttl)?;
        let lease = lease.clone();
        let sent = tokio::time::Instant::now();
        self.call(move |connection| {
            let now = now_millis();
            let expires_at = now.saturating_add(ttl_millis(ttl));
            let renewed = connection
                .prepare_cached(
                    "UPDATE conc_locks SET expires_at = ?4 WHERE key = ?1 AND token = ?2 AND expires_at > ?3",
                )
                .and_then(|mut s| s.execute(params![lease.key, lease.token, now, expires_at]))
                .map_err(sql_error("renew"))?;
            lease.renewed(
                (renewed == 1).then(|| from_unix_millis(expires_at)),
                ttl,
                sent,
            )
        })
        .await
    }

    async fn renew_many(&self, leases: &[Lease]) -> Vec<Result<Lease, LockError>> {
        let max_ttl = self.config.max_ttl;
        let batch = leases.to_vec();
        let sent = tokio::time::Instant::now();
        let count = batch.len();
        // One transaction on the connection's thread: one round trip, one commit.
        let outcome = self
            .call(move |connection| {
                let transaction = connection.transaction().map_err(sql_error("renew"))?;
                let mut out = Vec::with_capacity(batch.len());
                {
                    let mut statement = transaction
                        .prepare_cached(
                            "UPDATE conc_locks SET expires_at = ?4 WHERE key = ?1 AND token = ?2 AND expires_at > ?3",
                        )
                        .map_err(sql_error("renew"))?;
                    let now = now_millis();
                    for lease in &batch {
                        if let Err(e) = validate_ttl(lease.ttl, max_ttl) {
                            out.push(Err(e));
                            continue;
                        }
                        let expires_at = now.saturating_add(ttl_millis(lease.ttl));
                        let renewed = statement
                            .execute(params![lease.key, lease.token, now, expires_at])
                            .map_err(sql_error("renew"))?;
                        out.push(lease.renewed(
                            (renewed == 1).then(|| from_unix_millis(expires_at)),
                            lease.ttl,
                            sent,
                        ));
                    }
                }
                transaction.commit().map_err(sql_error("renew"))?;
                Ok(out)
            })
            .await;
        match outcome {
            Ok(out) => out,
            Err(error) => (0..count)
                .map(|_| Err(error.for_each_of_a_batch()))
                .collect(),
        }
    }

    async fn inspect(&self, key: &str) -> Result<Option<LockInfo>, LockError> {
        validate_key(key)?;
        let key = key.to_owned();
        self.call(move |connection| {
            connection
                .prepare_cached(&format!(
                    "SELECT {INFO_COLUMNS} FROM conc_locks WHERE key = ?1 AND expires_at > ?2"
                ))
                .and_then(|mut s| {
                    s.query_row(params![key, now_millis()], info_from_row)
                        .optional()
                })
                .map_err(sql_error("inspect"))
        })
        .await
    }

    async fn list(&self, prefix: &str, limit: usize) -> Result<Vec<LockInfo>, LockError> {
        let prefix = prefix.to_owned();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.call(move |connection| {
            let upper = format!("{prefix}\u{10FFFF}");
            let mut statement = connection
                .prepare_cached(&format!(
                    "SELECT {INFO_COLUMNS} FROM conc_locks
                     WHERE key >= ?1 AND key < ?2 AND expires_at > ?3 ORDER BY key LIMIT ?4"
                ))
                .map_err(sql_error("list"))?;
            let rows = statement
                .query_map(params![prefix, upper, now_millis(), limit], info_from_row)
                .map_err(sql_error("list"))?;
            let mut out = Vec::new();
            for row in rows {
                let info = row.map_err(sql_error("list"))?;
                if info.key.starts_with(&prefix) {
                    out.push(info);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn cleanup_expired(&self) -> Result<u64, LockError> {
        self.call(|connection| {
            // Released rows (an empty token) go too, uncounted: they held nothing.
            let mut statement = connection
                .prepare_cached(
                    "DELETE FROM conc_locks WHERE expires_at <= ?1 RETURNING token <> ''",
                )
                .map_err(sql_error("cleanup"))?;
            let rows = statement
                .query_map([now_millis()], |row| row.get::<_, bool>(0))
                .map_err(sql_error("cleanup"))?;
            let mut expired = 0;
            for row in rows {
                if row.map_err(sql_error("cleanup"))? {
                    expired += 1;
                }
            }
            Ok(expired)
        })
        .await
    }

    async fn force_release(&self, key: &str) -> Result<bool, LockError> {
        validate_key(key)?;
        let key = key.to_owned();
        let watchers = self.watchers.clone();
        self.call(move |connection| {
            let expires_at: Option<i64> = connection
                .prepare_cached("DELETE FROM conc_locks WHERE key = ?1 RETURNING expires_at")
                .and_then(|mut s| s.query_row([&key], |row| row.get(0)).optional())
                .map_err(sql_error("force release"))?;
            let live = expires_at.is_some_and(|e| e > now_millis());
            if live {
                watchers.notify(&key);
            }
            Ok(live)
        })
        .await
    }

    fn batches_renewals(&self) -> bool {
        true
    }

    fn max_ttl(&self) -> Duration {
        self.config.max_ttl
    }

    fn watch(&self, key: &str) -> Option<LockWatch> {
        let watch = self.watchers.subscribe(key);
        if let Some(wake) = &self.wake_watcher {
            // Full means a look is already due.
            let _ = wake.try_send(());
        }
        Some(watch)
    }
}
