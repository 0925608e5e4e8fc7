//! [`LockStore`] for [`RedisLockStore`]: each operation one script on the key's slot.

use std::time::Duration;

use crate::error::LockError;
use crate::lease::{Lease, LockInfo};
use crate::notify::LockWatch;
use crate::request::{LockRequest, renewal_deadline, validate_key, validate_ttl};
use crate::store::LockStore;
use crate::util::clock::from_unix_millis;

use super::connection::{glob_escape, parse_error, redis_error, timed_out};
use super::replies::{info, ms};
use super::run::Acks;
use super::{BACKEND, BATCH, RedisLockStore};

#[async_trait::async_trait]
impl LockStore for RedisLockStore {
    async fn try_acquire(&self, request: &LockRequest) -> Result<Option<Lease>, LockError> {
        self.acquire_inner(request, false).await
    }

    async fn take_over(&self, request: &LockRequest) -> Result<Lease, LockError> {
        LockError::taken(BACKEND, self.acquire_inner(request, true).await?)
    }

    async fn release(&self, lease: &Lease) -> Result<bool, LockError> {
        let first = self.release_invocation(&lease.key, &lease.token, false);
        let retry = self.release_invocation(&lease.key, &lease.token, true);
        let (released, acks): (i64, Acks) = self.run_write("release", &first, &retry).await?;
        if released == 1 {
            self.watchers.notify(&lease.key);
            // A release too few replicas saw can come back after a failover, until its
            // TTL: a wait, not a second holder. Say so, and report the release.
            if let Err(error) = self
                .replicated("release", &self.lock_key(&lease.key), acks)
                .await
            {
                tracing::debug!(%error, key = %lease.key, "a release was not acknowledged by enough replicas");
            }
        }
        Ok(released == 1)
    }

    async fn announce_wait(&self, key: &str, wait: Duration) -> Result<bool, LockError> {
        validate_key(key)?;
        let mut invocation = self.scripts.announce.prepare_invoke();
        invocation
            .key(self.lock_key(key))
            .arg(ms(wait.min(self.config.max_ttl)));
        let held: i64 = self.run("announce a wait", &invocation).await?;
        Ok(held == 1)
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Lease, LockError> {
        validate_ttl(ttl, self.config.max_ttl)?;
        let lock_key = self.lock_key(&lease.key);
        let slot = self.guard_slot(&lock_key);
        let mut invocation = self.scripts.renew.prepare_invoke();
        self.guard_args(slot, &mut invocation);
        invocation
            .key(lock_key)
            .arg(&lease.token)
            .arg(ms(ttl))
            .arg(self.hash_lifetime(ttl));
        let sent = tokio::time::Instant::now();
        type RenewReply = (String, i64, u64, i64, Option<i64>);
        let deadline = renewal_deadline(self.config.response_timeout(), lease);
        let ((id, after, longest, wiped, renewed), acks): (RenewReply, Acks) = self
            .run_write_until("renew", &invocation, &invocation, deadline)
            .await?;
        self.learn(slot, &(id, after, longest, wiped));
        let renewed = lease.renewed(renewed.map(from_unix_millis), ttl, sent)?;
        self.replicated("renewal", &self.lock_key(&lease.key), acks)
            .await?;
        Ok(renewed)
    }

    async fn renew_many(&self, leases: &[Lease]) -> Vec<Result<Lease, LockError>> {
        if self.is_cluster() {
            // The cluster connection multiplexes each node's requests on one connection:
            // issued together, they go out together.
            let renewals = leases.iter().map(|lease| self.renew(lease, lease.ttl));
            return futures_util::future::join_all(renewals).await;
        }
        let mut out: Vec<Option<Result<Lease, LockError>>> = Vec::with_capacity(leases.len());
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for lease in leases {
            if let Err(e) = validate_ttl(lease.ttl, self.config.max_ttl) {
                out.push(Some(Err(e)));
                continue;
            }
            let (marker, known, fresh, delay) = self.guard_values(0);
            let mut command = redis::cmd("EVALSHA");
            command
                .arg(self.scripts.renew.get_hash())
                .arg(2)
                .arg(marker)
                .arg(self.lock_key(&lease.key))
                .arg(known)
                .arg(fresh)
                .arg(delay)
                .arg(&lease.token)
                .arg(ms(lease.ttl))
                .arg(self.hash_lifetime(lease.ttl));
            pipe.add_command(command);
            out.push(None);
        }
        let asked = self.config.min_replicas > 0;
        if asked {
            // One `WAIT` after the batch, on the same connection, covers every write in it.
            pipe.cmd("WAIT")
                .arg(self.config.min_replicas)
                .arg(ms(self.config.replica_timeout));
        }
        type RenewReply = (String, i64, u64, i64, Option<i64>);
        let sent = tokio::time::Instant::now();
        // Answered by the earliest end of the leases' validity at the latest: a later
        // answer could not be used.
        let deadline = leases
            .iter()
            .map(|lease| renewal_deadline(self.config.response_timeout(), lease))
            .min()
            .unwrap_or_else(|| sent + self.config.response_timeout());
        let limit = deadline.saturating_duration_since(sent);
        let mut replies: Result<Vec<redis::RedisResult<redis::Value>>, LockError> =
            Err(timed_out("renew", limit));
        for attempt in 0..2 {
            let mut connection = self.connection.clone();
            let call = pipe.query_async::<Vec<redis::RedisResult<redis::Value>>>(&mut connection);
            replies = match tokio::time::timeout_at(deadline, call).await {
                Ok(Ok(replies)) => Ok(replies),
                Ok(Err(e)) => Err(redis_error("renew")(e)),
                Err(_) => Err(timed_out("renew", limit)),
            };
            let missing_script = matches!(&replies, Ok(r) if r.iter().any(|reply| matches!(reply, Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript))));
            if attempt == 0 && missing_script {
                // A restarted server (or a new primary) lacks the script: load it and send
                // the batch again.
                let mut load = redis::cmd("SCRIPT");
                load.arg("LOAD").arg(&self.scripts.renew_source);
                if let Err(e) = self
                    .query::<String>("load the renew script", load, None)
                    .await
                {
                    replies = Err(e);
                    break;
                }
                continue;
            }
            break;
        }
        match replies {
            Ok(mut replies) => {
                let acks = if asked {
                    match replies.pop() {
                        Some(Ok(value)) => {
                            let acknowledged: i64 = redis::from_redis_value(value).unwrap_or(0);
                            Acks::Counted(u32::try_from(acknowledged.max(0)).unwrap_or(u32::MAX))
                        }
                        _ => Acks::Counted(0),
                    }
                } else {
                    Acks::NotAsked
                };
                let mut replies = replies.into_iter();
                for (slot, lease) in out.iter_mut().zip(leases) {
                    if slot.is_some() {
                        continue;
                    }
                    let reply = replies.next().map(|reply| {
                        reply.map_err(redis_error("renew")).and_then(|value| {
                            redis::from_redis_value::<RenewReply>(value)
                                .map_err(parse_error("renew"))
                        })
                    });
                    *slot = Some(match reply {
                        Some(Ok((id, after, longest, wiped, renewed))) => {
                            self.learn(0, &(id, after, longest, wiped));
                            lease.renewed(renewed.map(from_unix_millis), lease.ttl, sent)
                        }
                        Some(Err(e)) => Err(e),
                        None => Err(LockError::Backend {
                            backend: BACKEND,
                            message: "renew: a batched reply is missing".into(),
                            source: None,
                        }),
                    });
                }
                if let Some(lease) = leases.first()
                    && let Err(error) = self
                        .replicated("renewal", &self.lock_key(&lease.key), acks)
                        .await
                {
                    for slot in out.iter_mut() {
                        if matches!(slot, Some(Ok(_))) {
                            *slot = Some(Err(error.for_each_of_a_batch()));
                        }
                    }
                }
            }
            Err(error) => {
                for slot in out.iter_mut().filter(|slot| slot.is_none()) {
                    *slot = Some(Err(error.for_each_of_a_batch()));
                }
            }
        }
        out.into_iter().flatten().collect()
    }

    async fn inspect(&self, key: &str) -> Result<Option<LockInfo>, LockError> {
        validate_key(key)?;
        let fields = self.inspect_lock_key(self.lock_key(key)).await?;
        Ok(fields.map(|f| info(key.to_owned(), f)))
    }

    async fn list(&self, prefix: &str, limit: usize) -> Result<Vec<LockInfo>, LockError> {
        let pattern = format!(
            "{}*",
            glob_escape(&format!("{}lock:{{{prefix}", self.config.prefix))
        );
        let names = self.scan(&pattern).await?;
        let mut keys: Vec<&str> = names
            .iter()
            .filter_map(|name| self.user_key(name))
            .filter(|key| key.starts_with(prefix))
            .collect();
        keys.sort_unstable();
        let mut out = Vec::new();
        for chunk in keys.chunks(BATCH) {
            let reads = chunk
                .iter()
                .map(|key| self.inspect_lock_key(self.lock_key(key)));
            let found = futures_util::future::try_join_all(reads).await?;
            for (key, fields) in chunk.iter().zip(found) {
                if out.len() == limit {
                    return Ok(out);
                }
                if let Some(fields) = fields {
                    out.push(info((*key).to_owned(), fields));
                }
            }
        }
        Ok(out)
    }

    async fn cleanup_expired(&self) -> Result<u64, LockError> {
        let pattern = format!(
            "{}*",
            glob_escape(&format!("{}lock:{{", self.config.prefix))
        );
        let names = self.scan(&pattern).await?;
        let mut removed = 0;
        for chunk in names.chunks(BATCH) {
            let closes = chunk.iter().map(|name| async move {
                let mut invocation = self.scripts.cleanup.prepare_invoke();
                invocation.key(name);
                self.run::<u64>("cleanup", &invocation).await
            });
            removed += futures_util::future::try_join_all(closes)
                .await?
                .into_iter()
                .sum::<u64>();
        }
        Ok(removed)
    }

    async fn purge(&self, force: bool) -> Result<u64, LockError> {
        if !force {
            let live = self.list("", 1).await?;
            if !live.is_empty() {
                return Err(crate::store::live_leases(live.len()));
            }
        }
        // Every key of the prefix: the leases' hashes, the waits' announcements and the
        // restart guard's markers. A store that still runs on the prefix finds its marker
        // gone and grants nothing until any lease it knew could have run out (safe).
        let names = self
            .scan(&format!("{}*", glob_escape(&self.config.prefix)))
            .await?;
        let mut removed = 0;
        for name in &names {
            let node = self.is_cluster().then(|| super::slots::of(name.as_bytes()));
            let mut command = redis::cmd("DEL");
            command.arg(name);
            removed += self.query::<u64>("purge", command, node).await?;
            if let Some(key) = self.user_key(name) {
                self.watchers.notify(key);
            }
        }
        Ok(removed)
    }

    async fn force_release(&self, key: &str) -> Result<bool, LockError> {
        validate_key(key)?;
        let mut invocation = self.scripts.force.prepare_invoke();
        invocation
            .key(self.lock_key(key))
            .arg(key)
            .arg(ms(self.config.grace))
            .arg(self.events_channel());
        let removed: i64 = self.run("force release", &invocation).await?;
        if removed == 1 {
            self.watchers.notify(key);
        }
        Ok(removed == 1)
    }

    fn batches_renewals(&self) -> bool {
        !self.is_cluster()
    }

    fn max_ttl(&self) -> Duration {
        self.config.max_ttl
    }

    fn watch(&self, key: &str) -> Option<LockWatch> {
        Some(self.watchers.subscribe(key))
    }
}
