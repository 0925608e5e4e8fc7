//! [`LockStore`] for [`PostgresLockStore`]: each operation one statement.

use std::time::{Duration, SystemTime};

use tokio_postgres::Row;

use crate::backend::metadata::decode_metadata;
use crate::error::LockError;
use crate::lease::{Lease, LockInfo};
use crate::notify::LockWatch;
use crate::request::{LockRequest, validate_key, validate_ttl};
use crate::store::LockStore;

use super::{BACKEND, CLEANUP_BATCH, PostgresLockStore};

pub(super) fn millis(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1)
}

pub(super) fn info_from_row(row: &Row) -> LockInfo {
    LockInfo {
        key: row.get(0),
        owner: row.get(1),
        metadata: decode_metadata(row.get::<_, &str>(2)),
        fence: u64::try_from(row.get::<_, i64>(3)).unwrap_or(0),
        acquired_at: row.get::<_, SystemTime>(4),
        expires_at: row.get::<_, SystemTime>(5),
    }
}

#[async_trait::async_trait]
impl LockStore for PostgresLockStore {
    async fn try_acquire(&self, request: &LockRequest) -> Result<Option<Lease>, LockError> {
        self.acquire_inner(request, false).await
    }

    async fn take_over(&self, request: &LockRequest) -> Result<Lease, LockError> {
        let lease = LockError::taken(BACKEND, self.acquire_inner(request, true).await?)?;
        self.watchers.notify(&request.key);
        Ok(lease)
    }

    async fn release(&self, lease: &Lease) -> Result<bool, LockError> {
        let rows = self
            .rows_retrying(
                "release",
                &self.sql.release,
                &self.sql.release_retry,
                &[&lease.key, &lease.token],
            )
            .await?;
        if !rows.is_empty() {
            self.watchers.notify(&lease.key);
        }
        Ok(!rows.is_empty())
    }

    async fn announce_wait(&self, key: &str, wait: Duration) -> Result<bool, LockError> {
        validate_key(key)?;
        let wait = millis(wait.min(self.config.max_ttl));
        let rows = self
            .rows("announce a wait", &self.sql.announce, &[&key, &wait])
            .await?;
        Ok(rows.first().is_some_and(|row| row.get::<_, bool>(0)))
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Lease, LockError> {
        validate_ttl(ttl, self.config.max_ttl)?;
        let sent = tokio::time::Instant::now();
        let rows = self
            .rows(
                "renew",
                &self.sql.renew,
                &[&lease.key, &lease.token, &millis(ttl)],
            )
            .await?;
        lease.renewed(rows.first().map(|row| row.get(0)), ttl, sent)
    }

    async fn renew_many(&self, leases: &[Lease]) -> Vec<Result<Lease, LockError>> {
        let mut out: Vec<Option<Result<Lease, LockError>>> = Vec::with_capacity(leases.len());
        let (mut keys, mut tokens, mut ttls) = (Vec::new(), Vec::new(), Vec::new());
        for lease in leases {
            match validate_ttl(lease.ttl, self.config.max_ttl) {
                Ok(()) => {
                    keys.push(lease.key.as_str());
                    tokens.push(lease.token.as_str());
                    ttls.push(millis(lease.ttl));
                    out.push(None);
                }
                Err(e) => out.push(Some(Err(e))),
            }
        }
        if !keys.is_empty() {
            let sent = tokio::time::Instant::now();
            match self
                .rows("renew", &self.sql.renew_many, &[&keys, &tokens, &ttls])
                .await
            {
                Ok(rows) => {
                    let renewed: std::collections::HashMap<(String, String), SystemTime> = rows
                        .iter()
                        .map(|row| ((row.get(0), row.get(1)), row.get(2)))
                        .collect();
                    for (slot, lease) in out.iter_mut().zip(leases) {
                        if slot.is_none() {
                            let expires = renewed
                                .get(&(lease.key.clone(), lease.token.clone()))
                                .copied();
                            *slot = Some(lease.renewed(expires, lease.ttl, sent));
                        }
                    }
                }
                Err(error) => {
                    for slot in out.iter_mut().filter(|slot| slot.is_none()) {
                        *slot = Some(Err(error.for_each_of_a_batch()));
                    }
                }
            }
        }
        out.into_iter().flatten().collect()
    }

    async fn inspect(&self, key: &str) -> Result<Option<LockInfo>, LockError> {
        validate_key(key)?;
        let rows = self.rows("inspect", &self.sql.inspect, &[&key]).await?;
        Ok(rows.first().map(info_from_row))
    }

    async fn list(&self, prefix: &str, limit: usize) -> Result<Vec<LockInfo>, LockError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .rows("list", &self.sql.list, &[&prefix, &limit])
            .await?;
        Ok(rows.iter().map(info_from_row).collect())
    }

    async fn cleanup_expired(&self) -> Result<u64, LockError> {
        let horizon = millis(self.config.tombstone_ttl.max(self.config.op_timeout * 2));
        let mut after = String::new();
        let mut marked = 0u64;
        loop {
            let rows = self
                .rows(
                    "cleanup",
                    &self.sql.cleanup,
                    &[&after, &CLEANUP_BATCH, &horizon],
                )
                .await?;
            let Some(row) = rows.first() else { break };
            marked += row.get::<_, i64>(1).max(0) as u64;
            match row.get::<_, Option<String>>(0) {
                Some(last) => after = last,
                None => break,
            }
        }
        Ok(marked)
    }

    async fn force_release(&self, key: &str) -> Result<bool, LockError> {
        validate_key(key)?;
        let rows = self.rows("force release", &self.sql.force, &[&key]).await?;
        let live = rows.first().is_some_and(|row| row.get::<_, bool>(0));
        if live {
            self.watchers.notify(key);
        }
        Ok(live)
    }

    fn batches_renewals(&self) -> bool {
        true
    }

    fn max_ttl(&self) -> Duration {
        self.config.max_ttl
    }

    fn watch(&self, key: &str) -> Option<LockWatch> {
        Some(self.watchers.subscribe(key))
    }
}
