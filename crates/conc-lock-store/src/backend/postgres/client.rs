//! [`PostgresLockStore`]'s own methods: connecting, and running a statement with the
//! operation timeout and one retry on a fresh connection when one is lost.

use std::sync::Arc;
use std::time::SystemTime;

use deadpool_postgres::Pool;
use tokio_postgres::Row;
use tokio_postgres::types::{ToSql, Type};

use crate::backend::metadata::encode_metadata;
use crate::error::LockError;
use crate::lease::Lease;
use crate::request::{LockRequest, call_deadline};
use crate::util::abandoned::{Abandoned, release_in_background};

use super::connection::{build_pool, connection_lost, pg_error, pool_error, pooler_symptom};
use super::guard::{Guard, Marker};
use super::lock_store::millis;
use super::{BACKEND, PostgresConfig, PostgresLockStore, PostgresPoolMode};

/// A statement's parameter with its type: what a statement sent unnamed needs (behind a
/// transaction pooler), and what a cached one is prepared with.
pub(super) type Param<'a> = (&'a (dyn ToSql + Sync), Type);

/// Where a try that ran past its deadline leaves its connection (see
/// [`PostgresLockStore::rows_until`]).
pub(super) type Stalled = Arc<parking_lot::Mutex<Option<deadpool_postgres::Object>>>;

impl PostgresLockStore {
    /// Connects to `url` (`postgres://user@host:port/db`), creating the schema and table if
    /// needed.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future may leave the schema created; nothing else.
    pub async fn connect(url: &str, config: PostgresConfig) -> Result<Self, LockError> {
        let (pool, listen_config, tls) = build_pool(url, &config)?;
        let listener = match (config.pool_mode, &config.listen_url) {
            (_, Some(direct)) => {
                let (_, direct_config, direct_tls) = build_pool(direct, &config)?;
                Some((direct_config, direct_tls))
            }
            (PostgresPoolMode::Session, None) => Some((listen_config, tls)),
            // No LISTEN through a transaction pooler: watched keys are polled instead.
            (PostgresPoolMode::Transaction, None) => None,
        };
        Self::build(pool, config, listener).await
    }

    /// A store over a pool the service already has (see [`postgres_pool`](crate::postgres_pool) to build one
    /// from a URL, TLS included); creates the schema and table if needed. A pool does not
    /// give out its connection settings, so this store opens no `LISTEN` connection unless
    /// `config` names a [`listen_url`](PostgresConfig::listen_url): without one, a
    /// take-over or release in *another* process is found by reading the watched keys every
    /// [`watch_interval`](PostgresConfig::watch_interval) (in this process, at once).
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
        let mut recovered = false;
        loop {
            match self.acquire_once(request, force).await? {
                Granted::Answer(lease) => return Ok(lease),
                Granted::MarkerMissing if !recovered => {
                    recovered = true;
                    self.recover(call_deadline(self.config.op_timeout, request.deadline))
                        .await?;
                }
                // Missing again at once: another crash meanwhile; the next call sees.
                Granted::MarkerMissing => {
                    return Err(LockError::Recovering {
                        backend: BACKEND,
                        until: SystemTime::now(),
                    });
                }
            }
        }
    }

    /// One try of [`acquire_inner`](Self::acquire_inner).
    async fn acquire_once(&self, request: &LockRequest, force: bool) -> Result<Granted, LockError> {
        self.record_longest(
            millis(request.ttl),
            call_deadline(self.config.op_timeout, request.deadline),
        )
        .await?;
        let token = crate::util::random::shared_token();
        let metadata = encode_metadata(&request.metadata);
        let ttl = millis(request.ttl);
        let sent = tokio::time::Instant::now();
        let what = if force { "take over" } else { "acquire" };
        let sql = if force {
            &self.sql.take_over
        } else {
            &self.sql.acquire
        };
        let deadline = call_deadline(self.config.op_timeout, request.deadline);
        // A try that ran past the deadline leaves its connection here, its statement
        // perhaps still to arrive: the cleanup's release goes out on it, after it.
        let stalled = Arc::new(parking_lot::Mutex::new(None));
        let abandoned = self.abandoned(&request.key, &token, stalled.clone());
        let rows = self
            .rows_until(
                what,
                sql,
                sql,
                &[
                    (&request.key, Type::TEXT),
                    (&request.owner, Type::TEXT),
                    (&token, Type::TEXT),
                    (&metadata, Type::TEXT),
                    (&ttl, Type::INT8),
                ],
                deadline,
                Some(&stalled),
            )
            .await?;
        let Some(row) = rows.first() else {
            abandoned.disarm();
            return Ok(Granted::Answer(None));
        };
        if self.guard.is_some() {
            // The guarded statement answers one row always: the marker's state, and the
            // lease's columns where it granted.
            match Guard::marker(row, what)? {
                Marker::Open => {}
                Marker::Missing => {
                    abandoned.disarm();
                    return Ok(Granted::MarkerMissing);
                }
                Marker::Closed(until) => {
                    abandoned.disarm();
                    return Err(LockError::Recovering {
                        backend: BACKEND,
                        until,
                    });
                }
            }
            if column::<Option<i64>>(row, 0, what)?.is_none() {
                abandoned.disarm();
                return Ok(Granted::Answer(None));
            }
        }
        let lease = Lease {
            key: request.key.clone(),
            owner: request.owner.clone(),
            token,
            fence: u64::try_from(column::<i64>(row, 0, what)?).unwrap_or(0),
            acquired_at: column(row, 1, what)?,
            expires_at: column(row, 2, what)?,
            ttl: request.ttl,
            requested_at: sent,
        }
        .fresh(request.margin(), what)?;
        abandoned.disarm();
        Ok(Granted::Answer(Some(lease)))
    }

    /// The cleanup of an acquire of `key` with `token` that may not be handed out: a
    /// token-checked release in the background until the store answers, first on the
    /// connection the acquire stalled on (if it did: a statement held in the network and
    /// delivered late runs before it), then on fresh ones.
    fn abandoned(&self, key: &str, token: &str, stalled: Stalled) -> Abandoned {
        let store = self.clone();
        let key = key.to_owned();
        let token = token.to_owned();
        Abandoned::new(move || {
            release_in_background(BACKEND, key.clone(), move || {
                let store = store.clone();
                let key = key.clone();
                let token = token.clone();
                let stalled = stalled.lock().take();
                async move {
                    let params: [Param<'_>; 2] = [(&key, Type::TEXT), (&token, Type::TEXT)];
                    if let Some(client) = stalled {
                        let release = client.query_typed(&store.sql.release_retry, &params);
                        let answer = tokio::time::timeout(store.config.op_timeout, release).await;
                        // Never back to the pool: it may still owe an answer.
                        let _ = deadpool_postgres::Object::take(client);
                        if let Ok(Ok(rows)) = answer {
                            if !rows.is_empty() {
                                store.watchers.notify(&key);
                            }
                            return Ok(!rows.is_empty());
                        }
                    }
                    let deadline = call_deadline(store.config.op_timeout, None);
                    let rows = store
                        .rows_until(
                            "release an abandoned grant",
                            &store.sql.release_retry,
                            &store.sql.release_retry,
                            &params,
                            deadline,
                            None,
                        )
                        .await?;
                    if !rows.is_empty() {
                        store.watchers.notify(&key);
                    }
                    Ok(!rows.is_empty())
                }
            });
        })
    }

    pub(super) fn timed_out(&self, what: &str) -> LockError {
        LockError::Backend {
            backend: BACKEND,
            message: format!(
                "{what} got no answer in time (the request timeout is {:?}; a caller's wait or a lease's validity can make it shorter)",
                self.config.op_timeout
            ),
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
        params: &[Param<'_>],
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
        params: &[Param<'_>],
    ) -> Result<Vec<Row>, LockError> {
        let deadline = call_deadline(self.config.op_timeout, None);
        self.rows_until(what, sql, retry_sql, params, deadline, None)
            .await
    }

    /// As [`rows_retrying`](Self::rows_retrying), every try answered by `deadline` or given
    /// up (the retries share it). A try that runs past it leaves its connection in
    /// `stalled` when given, rather than throwing it away.
    pub(super) async fn rows_until(
        &self,
        what: &'static str,
        sql: &str,
        retry_sql: &str,
        params: &[Param<'_>],
        deadline: tokio::time::Instant,
        stalled: Option<&Stalled>,
    ) -> Result<Vec<Row>, LockError> {
        let mut tries = 0;
        loop {
            tries += 1;
            let sql = if tries == 1 { sql } else { retry_sql };
            // The connection in use, so that a try that runs past the timeout throws it
            // away (its statement may still be running on the server) rather than hand it
            // back to the pool with an answer still to come.
            let mut in_use = None;
            let attempt = async {
                let client = &*in_use.insert(self.client().await?);
                let outcome = match self.config.pool_mode {
                    // Unnamed, typed, one round trip: nothing prepared outlives the
                    // statement, so no other transaction's server connection is asked for it.
                    PostgresPoolMode::Transaction => client.query_typed(sql, params).await,
                    PostgresPoolMode::Session => {
                        let types: Vec<Type> = params.iter().map(|(_, t)| t.clone()).collect();
                        let values: Vec<&(dyn ToSql + Sync)> =
                            params.iter().map(|(v, _)| *v).collect();
                        match client.prepare_typed_cached(sql, &types).await {
                            Ok(statement) => client.query(&statement, &values).await,
                            Err(e) => Err(e),
                        }
                    }
                };
                match outcome {
                    Ok(rows) => Ok(Ok(rows)),
                    Err(e) if connection_lost(&e) => Ok(Err(e)),
                    Err(e) => Err(match pooler_symptom(&e) {
                        Some(reason) => LockError::UnexpectedAnswer {
                            backend: BACKEND,
                            statement: what,
                            reason,
                        },
                        None => pg_error(what)(e),
                    }),
                }
            };
            let outcome = tokio::time::timeout_at(deadline, attempt).await;
            if !matches!(outcome, Ok(Ok(Ok(_))) | Ok(Err(_)))
                && let Some(client) = in_use.take()
            {
                match (&outcome, stalled) {
                    (Err(_), Some(stalled)) => *stalled.lock() = Some(client),
                    // Lost or timed out: throw this connection away rather than return it
                    // to the pool.
                    _ => {
                        let _ = deadpool_postgres::Object::take(client);
                    }
                }
            }
            match outcome {
                Err(_) => return Err(self.timed_out(what)),
                Ok(Err(e)) => return Err(e),
                Ok(Ok(Ok(rows))) => return Ok(rows),
                Ok(Ok(Err(e))) if tries < 3 && tokio::time::Instant::now() < deadline => {
                    tracing::debug!(error = %e, tries, "postgres connection lost; retrying on a fresh one");
                }
                Ok(Ok(Err(e))) => return Err(pg_error(what)(e)),
            }
        }
    }
}

/// Column `index` of `row` as a `T`, or a typed error naming the statement: a row of the
/// wrong shape is an unexpected answer, never a panic.
pub(super) fn column<'a, T: tokio_postgres::types::FromSql<'a>>(
    row: &'a Row,
    index: usize,
    statement: &'static str,
) -> Result<T, LockError> {
    row.try_get(index)
        .map_err(|e| LockError::UnexpectedAnswer {
            backend: BACKEND,
            statement,
            reason: format!(
                "column {index} of its row could not be read ({e}); behind a transaction pooler such as PgBouncer, add `pool_mode=transaction` to the URL"
            ),
        })
}

/// What one try of a grant found.
enum Granted {
    /// The store's answer: the lease, or none (the key is held).
    Answer(Option<Lease>),
    /// The crash guard's marker is missing (guard mode only): recover, then try again.
    MarkerMissing,
}
