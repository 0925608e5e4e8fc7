//! [`LockStore`] for [`PostgresLockStore`]: each operation one statement.

use std::time::{Duration, SystemTime};

use tokio_postgres::Row;
use tokio_postgres::types::Type;

use crate::backend::metadata::decode_metadata;
use crate::error::LockError;
use crate::lease::{Lease, LockInfo};
use crate::notify::LockWatch;
use crate::request::{LockRequest, renewal_deadline, validate_key, validate_ttl};
use crate::store::LockStore;

use super::client::column;
use super::{BACKEND, CLEANUP_BATCH, PostgresLockStore};

pub(super) fn millis(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1)
}

pub(super) fn info_from_row(row: &Row, statement: &'static str) -> Result<LockInfo, LockError> {
    Ok(LockInfo {
        key: column(row, 0, statement)?,
        owner: column(row, 1, statement)?,
        metadata: decode_metadata(column::<&str>(row, 2, statement)?),
        fence: u64::try_from(column::<i64>(row, 3, statement)?).unwrap_or(0),
        acquired_at: column::<SystemTime>(row, 4, statement)?,
        expires_at: column::<SystemTime>(row, 5, statement)?,
    })
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
                &[(&lease.key, Type::TEXT), (&lease.token, Type::TEXT)],
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
            .rows(
                "announce a wait",
                &self.sql.announce,
                &[(&key, Type::TEXT), (&wait, Type::INT8)],
            )
            .await?;
        match rows.first() {
            Some(row) => {
                column::<Option<bool>>(row, 0, "announce a wait").map(|held| held == Some(true))
            }
            None => Ok(false),
        }
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Lease, LockError> {
        validate_ttl(ttl, self.config.max_ttl)?;
        self.record_longest(millis(ttl), renewal_deadline(self.config.op_timeout, lease))
            .await?;
        let sent = tokio::time::Instant::now();
        let rows = self
            .rows_until(
                "renew",
                &self.sql.renew,
                &self.sql.renew,
                &[
                    (&lease.key, Type::TEXT),
                    (&lease.token, Type::TEXT),
                    (&millis(ttl), Type::INT8),
                ],
                renewal_deadline(self.config.op_timeout, lease),
                None,
            )
            .await?;
        let expires = rows
            .first()
            .map(|row| column::<SystemTime>(row, 0, "renew"))
            .transpose()?;
        lease.renewed(expires, ttl, sent)
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
            // Answered by the earliest end of the leases' validity at the latest.
            let deadline = leases
                .iter()
                .map(|lease| renewal_deadline(self.config.op_timeout, lease))
                .min()
                .unwrap_or(sent + self.config.op_timeout);
            let longest = ttls.iter().copied().max().unwrap_or(0);
            if let Err(error) = self.record_longest(longest, deadline).await {
                for slot in out.iter_mut().filter(|slot| slot.is_none()) {
                    *slot = Some(Err(error.for_each_of_a_batch()));
                }
                return out.into_iter().flatten().collect();
            }
            match self
                .rows_until(
                    "renew",
                    &self.sql.renew_many,
                    &self.sql.renew_many,
                    &[
                        (&keys, Type::TEXT_ARRAY),
                        (&tokens, Type::TEXT_ARRAY),
                        (&ttls, Type::INT8_ARRAY),
                    ],
                    deadline,
                    None,
                )
                .await
                .and_then(|rows| {
                    rows.iter()
                        .map(|row| {
                            Ok((
                                (column(row, 0, "renew")?, column(row, 1, "renew")?),
                                column::<SystemTime>(row, 2, "renew")?,
                            ))
                        })
                        .collect::<Result<std::collections::HashMap<(String, String), SystemTime>, LockError>>()
                })
            {
                Ok(renewed) => {
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
        let rows = self
            .rows("inspect", &self.sql.inspect, &[(&key, Type::TEXT)])
            .await?;
        rows.first()
            .map(|row| info_from_row(row, "inspect"))
            .transpose()
    }

    async fn list(&self, prefix: &str, limit: usize) -> Result<Vec<LockInfo>, LockError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .rows(
                "list",
                &self.sql.list,
                &[(&prefix, Type::TEXT), (&limit, Type::INT8)],
            )
            .await?;
        rows.iter().map(|row| info_from_row(row, "list")).collect()
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
                    &[
                        (&after, Type::TEXT),
                        (&CLEANUP_BATCH, Type::INT8),
                        (&horizon, Type::INT8),
                    ],
                )
                .await?;
            let Some(row) = rows.first() else { break };
            marked += column::<i64>(row, 1, "cleanup")?.max(0) as u64;
            match column::<Option<String>>(row, 0, "cleanup")? {
                Some(last) => after = last,
                None => break,
            }
        }
        Ok(marked)
    }

    async fn force_release(&self, key: &str) -> Result<bool, LockError> {
        validate_key(key)?;
        let rows = self
            .rows("force release", &self.sql.force, &[(&key, Type::TEXT)])
            .await?;
        let live = match rows.first() {
            Some(row) => column::<Option<bool>>(row, 0, "force release")? == Some(true),
            None => false,
        };
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
