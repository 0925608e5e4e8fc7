//! [`LockStore`] for [`EtcdLockStore`]: leases, transactions guarded by the create
//! revision, and the keep-alive.

use std::time::{Duration, SystemTime};

use etcd_client::{Compare, CompareOp, GetOptions, KeyValue, PutOptions, Txn, TxnOp};

use crate::error::LockError;
use crate::lease::{Lease, LockInfo};
use crate::notify::LockWatch;
use crate::request::{LockRequest, validate_key, validate_ttl};
use crate::store::LockStore;
use crate::util::abandoned::{Abandoned, release_in_background};

use super::client::request_error;
use super::value::{Holder, parse_token, token, whole_seconds};
use super::{BACKEND, EtcdLockStore};

/// Revokes lease `id` in the background, one try within `limit` (a failure is logged: the
/// lease then ends with its TTL).
fn revoke_in_background(mut leases: etcd_client::LeaseClient, limit: Duration, id: i64) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        tracing::debug!(
            lease = id,
            "no runtime to revoke an etcd lease; it ends with its TTL"
        );
        return;
    };
    runtime.spawn(async move {
        match tokio::time::timeout(limit, leases.revoke(id)).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => {
                tracing::debug!(%error, lease = id, "revoking an etcd lease failed; it ends with its TTL");
            }
            Err(_) => {
                tracing::debug!(
                    lease = id,
                    "revoking an etcd lease timed out; it ends with its TTL"
                );
            }
        }
    });
}

/// How often a take-over tries again when another caller takes the key between its delete
/// and its put.
const TAKE_OVER_TRIES: usize = 8;

impl EtcdLockStore {
    /// Grants an etcd lease of `seconds`.
    async fn grant(&self, seconds: i64) -> Result<i64, LockError> {
        let granted = self
            .call("grant a lease", || {
                let mut leases = self.client.lease_client();
                async move { leases.grant(seconds, None).await }
            })
            .await?;
        Ok(granted.id())
    }

    /// Revokes lease `id` in the background: its keys (if any are left) go at once, and
    /// etcd stops keeping it. A failure is logged; the lease then ends with its TTL.
    fn revoke_later(&self, id: i64) {
        revoke_in_background(self.client.lease_client(), self.config.op_timeout, id);
    }

    /// The cleanup of an acquire that took etcd lease `id` and may not hand it out (it
    /// failed, timed out, was dropped or answered too late): the lease is revoked in the
    /// background, and the key with it if a put on it landed. A put that arrives after the
    /// revocation fails, its lease gone.
    fn abandoned(&self, key: &str, id: i64) -> Abandoned {
        let leases = self.client.lease_client();
        let limit = self.config.op_timeout;
        let key = key.to_owned();
        Abandoned::new(move || {
            release_in_background(BACKEND, key, move || {
                let mut leases = leases.clone();
                async move {
                    match tokio::time::timeout(limit, leases.revoke(id)).await {
                        Ok(Ok(_)) => Ok(true),
                        // gRPC NOT_FOUND (5): it ended already.
                        Ok(Err(etcd_client::Error::GRpcStatus(status)))
                            if i32::from(status.code()) == 5 =>
                        {
                            Ok(false)
                        }
                        Ok(Err(e)) => Err(request_error("revoke an abandoned lease", e)),
                        Err(_) => Err(LockError::Backend {
                            backend: BACKEND,
                            message: format!(
                                "revoking an abandoned lease took longer than {limit:?}"
                            ),
                            source: None,
                        }),
                    }
                }
            });
        })
    }

    /// One transaction.
    async fn txn(
        &self,
        what: &'static str,
        txn: Txn,
    ) -> Result<etcd_client::TxnResponse, LockError> {
        self.call(what, || {
            let mut kv = self.client.kv_client();
            let txn = txn.clone();
            async move { kv.txn(txn).await }
        })
        .await
    }

    /// The key-value of `lock_key`, if any.
    async fn read(
        &self,
        what: &'static str,
        lock_key: &str,
    ) -> Result<Option<KeyValue>, LockError> {
        let mut reply = self
            .call(what, || {
                let mut kv = self.client.kv_client();
                async move { kv.get(lock_key, None).await }
            })
            .await?;
        Ok(reply.take_kvs().into_iter().next())
    }

    /// Puts the lock if the key is free.
    async fn put_if_free(
        &self,
        what: &'static str,
        lock_key: &str,
        holder: &Holder,
        lease: i64,
    ) -> Result<Put, LockError> {
        let txn = Txn::new()
            .when([Compare::create_revision(lock_key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                lock_key,
                holder.encode(),
                Some(PutOptions::new().with_lease(lease)),
            )])
            .or_else([TxnOp::get(lock_key, None)]);
        let reply = self.txn(what, txn).await?;
        if reply.succeeded() {
            let revision = reply
                .header()
                .map(|h| h.revision())
                .ok_or_else(|| unexpected(what, "the transaction's answer has no header".into()))?;
            return Ok(Put::Granted(revision));
        }
        let held = reply.op_responses().into_iter().find_map(|op| match op {
            etcd_client::TxnOpResponse::Get(mut get) => get.take_kvs().into_iter().next(),
            _ => None,
        });
        // Held with this very lease: an earlier try of this same put took it, and only its
        // answer was lost.
        if let Some(kv) = &held
            && kv.lease() == lease
        {
            return Ok(Put::Granted(kv.create_revision()));
        }
        Ok(Put::Held(held))
    }

    async fn acquire_inner(
        &self,
        request: &LockRequest,
        force: bool,
    ) -> Result<Option<Lease>, LockError> {
        request.validate(self.config.max_ttl)?;
        let seconds = whole_seconds(request.ttl);
        let sent = tokio::time::Instant::now();
        let id = self.grant(seconds).await?;
        // Revoked in the background unless handed out (a failure, a refusal, a late
        // answer or a dropped call alike).
        let abandoned = self.abandoned(&request.key, id);
        let holder = Holder {
            owner: request.owner.clone(),
            token: token(id, seconds),
            ttl: request.ttl,
            acquired_at: SystemTime::now(),
            metadata: request.metadata.clone(),
        };
        let lock_key = self.lock_key(&request.key);
        let outcome = if force {
            self.take(&lock_key, &holder, id).await.map(Some)
        } else {
            self.put_if_free("acquire", &lock_key, &holder, id)
                .await
                .map(|put| match put {
                    Put::Granted(revision) => Some(revision),
                    Put::Held(_) => None,
                })
        };
        let revision = match outcome {
            Ok(Some(revision)) => revision,
            other => {
                // Not granted, or not known to be: the lease goes (`abandoned`), and with
                // it the key if a put whose answer was lost did take it.
                other?;
                return Ok(None);
            }
        };
        let fence = u64::try_from(revision)
            .map_err(|_| unexpected("acquire", format!("a negative revision ({revision})")))?;
        if force {
            self.watchers.notify(&request.key);
        }
        let lease = Lease {
            key: request.key.clone(),
            owner: request.owner.clone(),
            token: holder.token,
            fence,
            acquired_at: holder.acquired_at,
            expires_at: SystemTime::now() + Duration::from_secs(seconds.unsigned_abs()),
            ttl: request.ttl,
            requested_at: sent,
        }
        .fresh(
            request.margin(),
            if force { "take-over" } else { "acquire" },
        )?;
        abandoned.disarm();
        Ok(Some(lease))
    }

    /// A renewal, as [`LockStore::renew`] makes it, without its deadline.
    async fn renew_inner(&self, lease: &Lease, ttl: Duration) -> Result<Lease, LockError> {
        let lost = || LockError::Lost {
            key: lease.key.clone(),
            fence: lease.fence,
        };
        let Some((id, seconds)) = parse_token(&lease.token) else {
            return Err(lost());
        };
        let sent = tokio::time::Instant::now();
        if whole_seconds(ttl) != seconds {
            return self.renew_with_new_ttl(lease, id, ttl, sent).await;
        }
        let kept = self
            .call_raw("renew", || {
                let mut leases = self.client.lease_client();
                async move { leases.keep_alive(id).await.map(drop) }
            })
            .await?;
        match kept {
            Ok(()) => {}
            // etcd answered the keep-alive with a TTL of 0: the lease is gone.
            Err(etcd_client::Error::LeaseKeepAliveError(_)) => return Err(lost()),
            Err(e) => return Err(request_error("renew", e)),
        }
        // The lease lives; the key must still be this lease's (a take-over or a forced
        // release removes it whether or not the lease was revoked).
        if !self
            .still_held(&self.lock_key(&lease.key), lease.fence, id)
            .await?
        {
            return Err(lost());
        }
        lease.renewed(
            Some(SystemTime::now() + Duration::from_secs(seconds.unsigned_abs())),
            ttl,
            sent,
        )
    }

    /// [`acquire_inner`](Self::acquire_inner) answered by the request's deadline (or the
    /// request timeout, if sooner), or given up: what it took then is revoked.
    async fn acquire_until(
        &self,
        request: &LockRequest,
        force: bool,
    ) -> Result<Option<Lease>, LockError> {
        // Each request has its own timeout (`call`); the caller's deadline bounds them all.
        let Some(deadline) = request.deadline else {
            return self.acquire_inner(request, force).await;
        };
        match tokio::time::timeout_at(deadline, self.acquire_inner(request, force)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(LockError::Backend {
                backend: BACKEND,
                message: format!(
                    "{} of `{}` got no answer within the caller's wait (the request timeout is {:?})",
                    if force { "take-over" } else { "acquire" },
                    request.key,
                    self.config.op_timeout
                ),
                source: None,
            }),
        }
    }

    /// A take-over: deletes the key whoever holds it (guarded by the create revision just
    /// read) and puts this holder's, with a new create revision; the holder it replaced
    /// has its lease revoked. Tries again if another caller takes the key in between.
    async fn take(&self, lock_key: &str, holder: &Holder, lease: i64) -> Result<i64, LockError> {
        for _ in 0..TAKE_OVER_TRIES {
            let held = match self
                .put_if_free("take over", lock_key, holder, lease)
                .await?
            {
                Put::Granted(revision) => return Ok(revision),
                Put::Held(held) => held,
            };
            // Released between the compare and the read: put again.
            let Some(held) = held else {
                continue;
            };
            let txn = Txn::new()
                .when([Compare::create_revision(
                    lock_key,
                    CompareOp::Equal,
                    held.create_revision(),
                )])
                .and_then([TxnOp::delete(lock_key, None)]);
            if self.txn("take over", txn).await?.succeeded() && held.lease() != 0 {
                self.revoke_later(held.lease());
            }
        }
        Err(LockError::Backend {
            backend: BACKEND,
            message: format!(
                "take-over: other callers took the key {TAKE_OVER_TRIES} times between its delete and its put"
            ),
            source: None,
        })
    }

    /// Whether `lock_key` still carries `lease` with create revision `fence`.
    async fn still_held(&self, lock_key: &str, fence: u64, lease: i64) -> Result<bool, LockError> {
        let fence = i64::try_from(fence).unwrap_or(i64::MAX);
        let txn = Txn::new().when([
            Compare::create_revision(lock_key, CompareOp::Equal, fence),
            Compare::lease(lock_key, CompareOp::Equal, lease),
        ]);
        Ok(self.txn("check a lease", txn).await?.succeeded())
    }

    /// The live lease `kv` holds, or `None` if its etcd lease has run out.
    async fn info(&self, key: &str, kv: &KeyValue) -> Result<Option<LockInfo>, LockError> {
        let holder = Holder::decode(kv.value()).ok_or_else(|| {
            unexpected(
                "inspect",
                format!(
                    "the value of `{key}` was not written by conc (is another program using the prefix `{}`?)",
                    self.config.prefix
                ),
            )
        })?;
        let id = kv.lease();
        let left = self
            .call("read a lease's TTL", || {
                let mut leases = self.client.lease_client();
                async move { leases.time_to_live(id, None).await }
            })
            .await?
            .ttl();
        // etcd answers the whole seconds left, rounded down (0 for the last second), and -1
        // for a lease that is gone. A key still there is live: the lease's expiry deletes it.
        if left < 0 {
            return Ok(None);
        }
        Ok(Some(LockInfo {
            key: key.to_owned(),
            owner: holder.owner,
            metadata: holder.metadata,
            fence: u64::try_from(kv.create_revision()).unwrap_or(0),
            acquired_at: holder.acquired_at,
            // The latest it can expire, unless renewed.
            expires_at: SystemTime::now() + Duration::from_secs(left.unsigned_abs() + 1),
        }))
    }

    /// A renewal to another TTL: a new lease, and the key put again with it (a put keeps
    /// the create revision, so the fence stays), guarded by the key's revision as read.
    async fn renew_with_new_ttl(
        &self,
        lease: &Lease,
        old: i64,
        ttl: Duration,
        sent: tokio::time::Instant,
    ) -> Result<Lease, LockError> {
        let lock_key = self.lock_key(&lease.key);
        let lost = || LockError::Lost {
            key: lease.key.clone(),
            fence: lease.fence,
        };
        let Some(kv) = self.read("renew", &lock_key).await? else {
            return Err(lost());
        };
        if u64::try_from(kv.create_revision()).ok() != Some(lease.fence) || kv.lease() != old {
            return Err(lost());
        }
        let Some(mut holder) = Holder::decode(kv.value()) else {
            return Err(unexpected(
                "renew",
                format!("the value of `{}` was not written by conc", lease.key),
            ));
        };
        let seconds = whole_seconds(ttl);
        let id = self.grant(seconds).await?;
        holder.token = token(id, seconds);
        holder.ttl = ttl;
        let txn = Txn::new()
            .when([Compare::mod_revision(
                lock_key.as_str(),
                CompareOp::Equal,
                kv.mod_revision(),
            )])
            .and_then([TxnOp::put(
                lock_key.as_str(),
                holder.encode(),
                Some(PutOptions::new().with_lease(id)),
            )]);
        match self.txn("renew", txn).await {
            Ok(reply) if reply.succeeded() => {
                self.revoke_later(old);
                Ok(Lease {
                    token: holder.token,
                    expires_at: SystemTime::now() + Duration::from_secs(seconds.unsigned_abs()),
                    ttl,
                    requested_at: sent,
                    ..lease.clone()
                })
            }
            outcome => {
                self.revoke_later(id);
                outcome?;
                Err(lost())
            }
        }
    }
}

/// What [`EtcdLockStore::put_if_free`] found.
enum Put {
    /// Put, at this revision (the new fence).
    Granted(i64),
    /// Held by this key-value (`None` if it went between the compare and the read).
    Held(Option<KeyValue>),
}

fn unexpected(statement: &'static str, reason: String) -> LockError {
    LockError::UnexpectedAnswer {
        backend: BACKEND,
        statement,
        reason,
    }
}

#[async_trait::async_trait]
impl LockStore for EtcdLockStore {
    async fn try_acquire(&self, request: &LockRequest) -> Result<Option<Lease>, LockError> {
        self.acquire_until(request, false).await
    }

    async fn take_over(&self, request: &LockRequest) -> Result<Lease, LockError> {
        LockError::taken(BACKEND, self.acquire_until(request, true).await?)
    }

    async fn release(&self, lease: &Lease) -> Result<bool, LockError> {
        validate_key(&lease.key)?;
        let Some((id, _)) = parse_token(&lease.token) else {
            return Ok(false);
        };
        let lock_key = self.lock_key(&lease.key);
        let fence = i64::try_from(lease.fence).unwrap_or(i64::MAX);
        let txn = Txn::new()
            .when([
                Compare::create_revision(lock_key.as_str(), CompareOp::Equal, fence),
                Compare::lease(lock_key.as_str(), CompareOp::Equal, id),
            ])
            .and_then([TxnOp::delete(lock_key.as_str(), None)]);
        let released = self.txn("release", txn).await?.succeeded();
        if released {
            self.revoke_later(id);
            self.watchers.notify(&lease.key);
        }
        Ok(released)
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Lease, LockError> {
        validate_ttl(ttl, self.config.max_ttl)?;
        // Answered within the lease's validity, or given up (each request has its own
        // timeout besides).
        let deadline = lease.valid_until(crate::lease::default_drift_margin(lease.ttl));
        if deadline <= tokio::time::Instant::now() {
            return self.renew_inner(lease, ttl).await;
        }
        match tokio::time::timeout_at(deadline, self.renew_inner(lease, ttl)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(LockError::Backend {
                backend: BACKEND,
                message: format!(
                    "the renewal of `{}` got no answer within the lease's validity or {:?}",
                    lease.key, self.config.op_timeout
                ),
                source: None,
            }),
        }
    }

    async fn renew_many(&self, leases: &[Lease]) -> Vec<Result<Lease, LockError>> {
        // The client multiplexes every request on one HTTP/2 connection: issued together,
        // they go out together.
        let renewals = leases.iter().map(|lease| self.renew(lease, lease.ttl));
        futures_util::future::join_all(renewals).await
    }

    async fn inspect(&self, key: &str) -> Result<Option<LockInfo>, LockError> {
        validate_key(key)?;
        match self.read("inspect", &self.lock_key(key)).await? {
            Some(kv) => self.info(key, &kv).await,
            None => Ok(None),
        }
    }

    async fn list(&self, prefix: &str, limit: usize) -> Result<Vec<LockInfo>, LockError> {
        let start = self.lock_key(prefix);
        let mut reply = self
            .call("list", || {
                let mut kv = self.client.kv_client();
                let start = start.clone();
                async move { kv.get(start, Some(GetOptions::new().with_prefix())).await }
            })
            .await?;
        let found = reply.take_kvs();
        let mut out = Vec::new();
        for chunk in found.chunks(64) {
            let reads = chunk.iter().filter_map(|kv| {
                let key = self.user_key(kv.key())?;
                Some(async move { self.info(key, kv).await })
            });
            for info in futures_util::future::try_join_all(reads)
                .await?
                .into_iter()
                .flatten()
            {
                if out.len() == limit {
                    return Ok(out);
                }
                out.push(info);
            }
        }
        Ok(out)
    }

    async fn cleanup_expired(&self) -> Result<u64, LockError> {
        // etcd deletes a lease's keys when the lease expires: nothing is left to remove.
        Ok(0)
    }

    async fn force_release(&self, key: &str) -> Result<bool, LockError> {
        validate_key(key)?;
        let lock_key = self.lock_key(key);
        let Some(held) = self.read("force release", &lock_key).await? else {
            return Ok(false);
        };
        let txn = Txn::new()
            .when([Compare::create_revision(
                lock_key.as_str(),
                CompareOp::Equal,
                held.create_revision(),
            )])
            .and_then([TxnOp::delete(lock_key.as_str(), None)]);
        let removed = self.txn("force release", txn).await?.succeeded();
        if removed {
            if held.lease() != 0 {
                self.revoke_later(held.lease());
            }
            self.watchers.notify(key);
        }
        Ok(removed)
    }

    fn max_ttl(&self) -> Duration {
        self.config.max_ttl
    }

    fn lease_resolution(&self) -> Duration {
        Duration::from_secs(1)
    }

    fn removes_expired_leases(&self) -> bool {
        true
    }

    fn watch(&self, key: &str) -> Option<LockWatch> {
        Some(self.watchers.subscribe(key))
    }
}
