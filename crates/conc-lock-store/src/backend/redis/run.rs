//! Running the store's scripts: every try of a call within one deadline, a retry after a
//! lost connection, the replicas' acknowledgement of a lock write (`WAIT`).

use crate::error::LockError;
use crate::request::call_deadline;

use super::connection::{redis_error, timed_out};
use super::replies::ms;
use super::slots;
use super::{BACKEND, RedisLockStore};

impl RedisLockStore {
    /// Runs a lock write (`first`, or `retry` on a retry after a lost connection, when the
    /// first try may have run) and, with [`min_replicas`](RedisConfig::min_replicas) set,
    /// counts the replicas that acknowledged it. On one server (or the Sentinels' primary)
    /// the `WAIT` goes out in one pipeline with the script, so it runs on the connection
    /// that wrote and counts that very write, even if the connection is replaced (as in a
    /// failover) right after; on a cluster it is left to [`replicated`](Self::replicated).
    pub(super) async fn run_write<T: redis::FromRedisValue>(
        &self,
        what: &'static str,
        first: &redis::ScriptInvocation<'_>,
        retry: &redis::ScriptInvocation<'_>,
    ) -> Result<(T, Acks), LockError> {
        let deadline = call_deadline(self.config.response_timeout(), None);
        self.run_write_until(what, first, retry, deadline).await
    }

    /// As [`run_write`](Self::run_write), every try (and the wait for replicas) answered by
    /// `deadline` or given up.
    pub(super) async fn run_write_until<T: redis::FromRedisValue>(
        &self,
        what: &'static str,
        first: &redis::ScriptInvocation<'_>,
        retry: &redis::ScriptInvocation<'_>,
        deadline: tokio::time::Instant,
    ) -> Result<(T, Acks), LockError> {
        let required = self.config.min_replicas;
        if required == 0 {
            let value = self
                .run_retrying_until(what, first, retry, deadline)
                .await?;
            return Ok((value, Acks::NotAsked));
        }
        if self.is_cluster() {
            let value = self
                .run_retrying_until(what, first, retry, deadline)
                .await?;
            return Ok((value, Acks::Ask));
        }
        let mut tries = 0;
        let mut loaded = false;
        loop {
            tries += 1;
            let invocation = if tries == 1 { first } else { retry };
            let mut pipe = redis::pipe();
            pipe.invoke_script(invocation)
                .cmd("WAIT")
                .arg(required)
                .arg(ms(self.config.replica_timeout));
            let mut connection = self.connection.clone();
            let call = pipe.query_async::<(T, i64)>(&mut connection);
            let limit = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout_at(deadline, call).await {
                Ok(Ok((value, acknowledged))) => {
                    let acknowledged = u32::try_from(acknowledged.max(0)).unwrap_or(u32::MAX);
                    return Ok((value, Acks::Counted(acknowledged)));
                }
                Ok(Err(e))
                    if !loaded
                        && e.kind()
                            == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                {
                    // A new primary (or a restarted server) does not have the script yet;
                    // nothing ran. Load it and send the same try again.
                    loaded = true;
                    tries -= 1;
                    let load = invocation.load_async(&mut connection);
                    match tokio::time::timeout_at(deadline, load).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => return Err(redis_error(what)(e)),
                        Err(_) => return Err(timed_out(what, limit)),
                    }
                }
                Ok(Err(e))
                    if tries < 3 && retriable(&e) && tokio::time::Instant::now() < deadline =>
                {
                    tracing::debug!(error = %e, tries, "redis connection trouble; retrying");
                }
                Ok(Err(e)) => return Err(redis_error(what)(e)),
                Err(_) => return Err(timed_out(what, limit)),
            }
        }
    }

    /// Whether enough replicas acknowledged a write, as [`run_write`](Self::run_write)
    /// counted them; on a cluster, waits (`WAIT`, on the slot's master) until that many
    /// replicas have acknowledged, up to `replica_timeout`. [`LockError::NotReplicated`]
    /// when fewer did.
    pub(super) async fn replicated(
        &self,
        operation: &'static str,
        lock_key: &str,
        acks: Acks,
    ) -> Result<(), LockError> {
        let required = self.config.min_replicas;
        let acknowledged = match acks {
            Acks::NotAsked => return Ok(()),
            Acks::Counted(acknowledged) => acknowledged,
            Acks::Ask => {
                let mut command = redis::cmd("WAIT");
                command.arg(required).arg(ms(self.config.replica_timeout));
                let node = Some(slots::of(lock_key.as_bytes()));
                let acknowledged: i64 = self.query(operation, command, node).await?;
                u32::try_from(acknowledged.max(0)).unwrap_or(u32::MAX)
            }
        };
        if acknowledged >= required {
            Ok(())
        } else {
            Err(LockError::NotReplicated {
                backend: BACKEND,
                operation,
                acknowledged,
                required,
            })
        }
    }

    /// Runs a prepared script invocation within the operation timeout; the connection
    /// reconnects after a dropped connection, and one failed try is retried.
    pub(super) async fn run<T: redis::FromRedisValue>(
        &self,
        what: &'static str,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, LockError> {
        self.run_retrying(what, invocation, invocation).await
    }

    /// As [`run`](Self::run), sending `retry` instead of `first` on a retry (after a lost
    /// connection, when the first try may have run).
    pub(super) async fn run_retrying<T: redis::FromRedisValue>(
        &self,
        what: &'static str,
        first: &redis::ScriptInvocation<'_>,
        retry: &redis::ScriptInvocation<'_>,
    ) -> Result<T, LockError> {
        let deadline = call_deadline(self.config.op_timeout, None);
        self.run_retrying_until(what, first, retry, deadline).await
    }

    /// As [`run_retrying`](Self::run_retrying), every try answered by `deadline` or given
    /// up: the retries share the one deadline, they do not each get a timeout of their own.
    pub(super) async fn run_retrying_until<T: redis::FromRedisValue>(
        &self,
        what: &'static str,
        first: &redis::ScriptInvocation<'_>,
        retry: &redis::ScriptInvocation<'_>,
        deadline: tokio::time::Instant,
    ) -> Result<T, LockError> {
        let limit = deadline.saturating_duration_since(tokio::time::Instant::now());
        let mut tries = 0;
        loop {
            tries += 1;
            let invocation = if tries == 1 { first } else { retry };
            let mut connection = self.connection.clone();
            let call = invocation.invoke_async::<T>(&mut connection);
            match tokio::time::timeout_at(deadline, call).await {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(e))
                    if tries < 3 && retriable(&e) && tokio::time::Instant::now() < deadline =>
                {
                    tracing::debug!(error = %e, tries, "redis connection trouble; retrying");
                }
                Ok(Err(e)) => return Err(redis_error(what)(e)),
                Err(_) => return Err(timed_out(what, limit)),
            }
        }
    }
}

/// How many replicas acknowledged a lock write.
#[derive(Debug, Clone, Copy)]
pub(super) enum Acks {
    /// None were asked for.
    NotAsked,
    /// This many, counted by a `WAIT` sent with the write.
    Counted(u32),
    /// Not counted yet: [`RedisLockStore::replicated`] sends the `WAIT` (on a cluster).
    Ask,
}

/// Whether a failed try is worth another: the connection broke or stalled (the connection
/// manager reconnects), or the node answered as a demoted primary or while loading (the
/// Sentinels' primary is looked up again).
pub(super) fn retriable(e: &redis::RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_timeout()
        || matches!(
            e.kind(),
            ErrorKind::Server(
                ServerErrorKind::ReadOnly
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::BusyLoading
            )
        )
}
