//! [`PostgresLockStore`]'s own methods: connecting, and running a statement with the
//! operation timeout and one retry on a fresh connection when one is lost.

use deadpool_postgres::Pool;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use crate::backend::metadata::encode_metadata;
use crate::error::LockError;
use crate::lease::Lease;
use crate::request::LockRequest;

use super::connection::{build_pool, connection_lost, pg_error, pool_error};
use super::lock_store::millis;
use super::{BACKEND, PostgresConfig, PostgresLockStore};

impl PostgresLockStore {
    /// Connects to `url` (`postgres://user@host:port/db`), creating the schema and table if
    /// needed.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future may leave the schema created; nothing else.
    pub async fn connect(url: &str, config: PostgresConfig) -> Result<Self, LockError> {
        let (pool, listen_config, tls) = build_pool(url, &config)?;
        Self::build(pool, config, Some((listen_config, tls))).await
    }

    /// A store over a pool the service already has (see [`postgres_pool`](crate::postgres_pool) to build one
    /// from a URL, TLS included); creates the schema and table if needed. A pool does not
    /// give out its connection settings, so this store opens no `LISTEN` connection: a
    /// take-over or release in *another* process reaches a holder at its next renewal, and
    /// a waiter at its next poll (in this process, at once). Prefer
    /// [`connect`](Self::connect) where stops must reach other processes at once.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future may leave the schema created; nothing else.
    pub async fn from_pool(pool: Pool, config: PostgresConfig) -> Result<Self, LockError> {
        Self::build(pool, config, None).await
    }

    pub(super) async fn acquire_inner(
        &self,
        request: &LockRequest,
        force: bool,
    ) -> Result<Option<Lease>, LockError> {
        request.validate(self.config.max_ttl)?;
        let token = crate::util::random::shared_token();
        let metadata = encode_metadata(&request.metadata);
        let ttl = millis(request.ttl);
        let sent = tokio::time::Instant::now();
        let rows = self
            .rows(
                "acquire",
                if force {
                    &self.sql.take_over
                } else {
                    &self.sql.acquire
                },
                &[&request.key, &request.owner, &token, &metadata, &ttl],
            )
            .await?;
        Ok(rows.first().map(|row| Lease {
            key: request.key.clone(),
            owner: request.owner.clone(),
            token,
            fence: u64::try_from(row.get::<_, i64>(0)).unwrap_or(0),
            acquired_at: row.get(1),
            expires_at: row.get(2),
            ttl: request.ttl,
            requested_at: sent,
        }))
    }

    pub(super) fn timed_out(&self, what: &str) -> LockError {
        LockError::Backend {
            backend: BACKEND,
            message: format!("{what} took longer than {:?}", self.config.op_timeout),
            source: None,
        }
    }

    pub(super) async fn client(&self) -> Result<deadpool_postgres::Object, LockError> {
        self.pool.get().await.map_err(pool_error)
    }

    /// Runs `query` (returning rows), retrying on a fresh connection when the connection
    /// was lost; each try within the operation timeout.
    pub(super) async fn rows(
        &self,
        what: &'static str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, LockError> {
        self.rows_retrying(what, sql, sql, params).await
    }

    /// As [`rows`](Self::rows), sending `retry_sql` instead of `sql` on a retry (after a
    /// lost connection, when the first try may have committed).
    pub(super) async fn rows_retrying(
        &self,
        what: &'static str,
        sql: &str,
        retry_sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, LockError> {
        let mut tries = 0;
        loop {
            tries += 1;
            let sql = if tries == 1 { sql } else { retry_sql };
            let attempt = async {
                let client = self.client().await?;
                let statement = client.prepare_cached(sql).await;
                let outcome = match statement {
                    Ok(statement) => client.query(&statement, params).await,
                    Err(e) => Err(e),
                };
                match outcome {
                    Ok(rows) => Ok(Ok(rows)),
                    Err(e) if connection_lost(&e) => {
                        // Throw this connection away rather than return it to the pool.
                        let _ = deadpool_postgres::Object::take(client);
                        Ok(Err(e))
                    }
                    Err(e) => Err(pg_error(what)(e)),
                }
            };
            match tokio::time::timeout(self.config.op_timeout, attempt).await {
                Err(_) => return Err(self.timed_out(what)),
                Ok(Err(e)) => return Err(e),
                Ok(Ok(Ok(rows))) => return Ok(rows),
                Ok(Ok(Err(e))) if tries < 3 => {
                    tracing::debug!(error = %e, tries, "postgres connection lost; retrying on a fresh one");
                }
                Ok(Ok(Err(e))) => return Err(pg_error(what)(e)),
            }
        }
    }
}
