//! [`RedisLockStore`]'s own methods: connecting (one server or a cluster, the eviction
//! policy check, the subscription), the restart guard's markers, key names, and running a
//! script with a timeout and one retry after a lost connection.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use redis::aio::ConnectionManagerConfig;

use crate::error::LockError;
use crate::lease::{Lease, default_drift_margin};
use crate::notify::Watchers;
use crate::request::{LockRequest, call_deadline};
use crate::util::clock::from_unix_millis;

use super::connection::{
    Connection, client_for, cluster_nodes, connect_error, connect_timed_out, parse_error,
    redis_error, timed_out,
};
use super::pubsub::{Subscribers, subscribe};
use super::replies::{AcquireReply, GuardReply, InfoFields, ms};
use super::run::Acks;
use super::scripts::Scripts;
use super::sentinel::{SentinelConnection, sentinel_target};
use super::slots;
use super::{BACKEND, BATCH, RedisConfig, RedisLockStore};

impl RedisLockStore {
    /// Connects to `url` and checks the server; see [`from_client`](Self::from_client) for
    /// what is checked.
    ///
    /// - One server: `redis://host:port/db`, `rediss://host:port` for TLS (with
    ///   `?sslrootcert=/path/ca.pem` for a private CA), through a connection manager that
    ///   reconnects on its own.
    /// - A Redis Cluster: `redis+cluster://host:port,host:port` (or `rediss+cluster://`),
    ///   naming any of its nodes; see [`connect_cluster`](Self::connect_cluster).
    /// - A primary with replicas that Redis Sentinels watch:
    ///   `redis+sentinel://[user:password@]host:port[,host:port…]/master-name[/db]`
    ///   (`rediss+sentinel://` for TLS to the Sentinels and the primary), naming the
    ///   Sentinels (port 26379 when none is written) and the name they monitor the primary
    ///   by; `sentinel_username=` and `sentinel_password=` when the Sentinels ask for their
    ///   own credentials. The store asks the Sentinels for the primary, checks with the
    ///   primary itself that it is one (`ROLE`), and asks again after any sign that it is
    ///   no longer (a lost or stalled connection, a `READONLY` answer from a demoted node),
    ///   so after a failover the store, its subscription included, reaches the new primary
    ///   by itself. Leases the old primary granted but had not yet passed to a replica are
    ///   lost in a failover: set [`RedisConfig::with_replica_ack`] to refuse a lock until a
    ///   replica has it.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: at most the store's marker is written on connect.
    pub async fn connect(url: &str, config: RedisConfig) -> Result<Self, LockError> {
        if let Some(nodes) = cluster_nodes(url) {
            return Self::connect_cluster(&nodes?, config).await;
        }
        if let Some(target) = sentinel_target(url) {
            let connection = SentinelConnection::connect(
                &target?,
                config.connect_timeout,
                config.response_timeout(),
            )
            .await?;
            let subscribers = Subscribers::Sentinel(connection.clone());
            return Self::assemble(Connection::Sentinel(connection), subscribers, config).await;
        }
        Self::from_client(client_for(url)?, config).await
    }

    /// Connects to the Redis Cluster that `nodes` (`redis://host:port` or
    /// `rediss://host:port` URLs, any nodes of it) belong to. Every operation on a lock is a
    /// script over one hash slot, routed to the slot's master; `list` and
    /// `cleanup_expired` go master by master. `maxmemory-policy` is checked on every master.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: nothing is written on connect.
    pub async fn connect_cluster(
        nodes: &[impl AsRef<str>],
        config: RedisConfig,
    ) -> Result<Self, LockError> {
        let mut urls = Vec::new();
        #[cfg(feature = "tls")]
        let mut root_cert = None;
        for node in nodes {
            let split = crate::backend::tls::split(node.as_ref());
            #[cfg(feature = "tls")]
            if let Some(path) = &split.root_cert {
                root_cert = Some(crate::backend::tls::read_root_cert(BACKEND, path)?);
            }
            #[cfg(not(feature = "tls"))]
            super::connection::refuse_tls(&split.url, split.root_cert.as_deref())?;
            urls.push(split.url);
        }
        if urls.is_empty() {
            return Err(LockError::InvalidUrl {
                reason: "a Redis Cluster needs at least one node URL".into(),
            });
        }
        #[cfg_attr(not(feature = "tls"), allow(unused_mut))]
        let mut builder = redis::cluster::ClusterClientBuilder::new(urls.clone())
            .connection_timeout(config.connect_timeout)
            .response_timeout(config.op_timeout)
            .retries(2);
        #[cfg(feature = "tls")]
        if let Some(pem) = &root_cert {
            builder = builder.certs(redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem.clone()),
            });
        }
        let client = builder.build().map_err(|e| LockError::InvalidUrl {
            reason: format!("bad Redis Cluster URL: {e}"),
        })?;
        let connection =
            tokio::time::timeout(config.connect_timeout, client.get_async_connection())
                .await
                .map_err(|_| connect_timed_out(config.connect_timeout))?
                .map_err(connect_error)?;
        // One plain client per node for the event subscription, with the same TLS.
        let subscribers = nodes
            .iter()
            .map(|node| client_for(node.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        Self::assemble(
            Connection::Cluster(connection),
            Subscribers::Nodes(subscribers),
            config,
        )
        .await
    }

    /// A store on a [`redis::Client`] the service already has (its URL, TLS and
    /// credentials included): the store opens its own connection manager and one pub/sub
    /// connection through it. It checks that lock keys cannot be evicted (see
    /// [`RedisConfig::allow_eviction`]), reads the store's marker, and subscribes to the
    /// store's events.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: at most the store's marker is written on connect.
    pub async fn from_client(
        client: redis::Client,
        config: RedisConfig,
    ) -> Result<Self, LockError> {
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            .set_response_timeout(Some(config.response_timeout()))
            .set_number_of_retries(3);
        let connect = client.get_connection_manager_with_config(manager_config);
        let connection = tokio::time::timeout(config.connect_timeout, connect)
            .await
            .map_err(|_| connect_timed_out(config.connect_timeout))?
            .map_err(connect_error)?;
        Self::assemble(
            Connection::Single(connection),
            Subscribers::Nodes(vec![client]),
            config,
        )
        .await
    }

    /// The checks and the subscription common to one server and a cluster.
    pub(super) async fn assemble(
        connection: Connection,
        subscribers: Subscribers,
        config: RedisConfig,
    ) -> Result<Self, LockError> {
        if config.prefix.contains(['{', '}']) {
            return Err(LockError::InvalidUrl {
                reason: format!(
                    "the key prefix `{}` holds a brace; conc puts each lock in a hash slot of its own (`<prefix>lock:{{<key>}}`), so the prefix may not contain `{{` or `}}`",
                    config.prefix
                ),
            });
        }
        let watchers = Arc::<Watchers>::default();
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let store = Self {
            connection,
            config: Arc::new(config),
            scripts: Arc::new(Scripts::new()),
            epoch: Arc::default(),
            watchers: watchers.clone(),
            _subscriber: Arc::new(stop),
        };
        store.check_eviction_policy().await?;
        if !store.is_cluster() {
            // One server: learn its one marker now, so a wipe from here on is seen.
            let mut invocation = store.scripts.init.prepare_invoke();
            store.guard_args(0, &mut invocation);
            let reply: GuardReply = store.run("connect", &invocation).await?;
            store.learn(0, &reply);
        }
        let (ready, subscribed) = tokio::sync::oneshot::channel();
        tokio::spawn(subscribe(
            subscribers,
            store.events_channel(),
            store.config.connect_timeout,
            Arc::downgrade(&watchers),
            store.epoch.clone(),
            stopped,
            ready,
        ));
        match tokio::time::timeout(store.config.connect_timeout, subscribed).await {
            Ok(Ok(())) => Ok(store),
            _ => Err(LockError::Backend {
                backend: BACKEND,
                message: format!(
                    "subscribing to the lock events took longer than {:?}",
                    store.config.connect_timeout
                ),
                source: None,
            }),
        }
    }

    /// Whether this store runs on a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.connection, Connection::Cluster(_))
    }

    /// Runs `command` on one node (`node`: a slot the node serves as master; `None` on one
    /// server), within the operation timeout.
    pub(super) async fn query<T: redis::FromRedisValue>(
        &self,
        what: &'static str,
        command: redis::Cmd,
        node: Option<u16>,
    ) -> Result<T, LockError> {
        let call = async {
            match (self.connection.clone(), node) {
                (Connection::Cluster(mut c), Some(slot)) => {
                    use redis::cluster_routing::{
                        Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr,
                    };
                    let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(
                        Route::new(slot, SlotAddr::Master),
                    ));
                    let value = c.route_command(command, route).await?;
                    Ok(redis::from_redis_value(value)?)
                }
                (mut c, _) => command.query_async::<T>(&mut c).await,
            }
        };
        match tokio::time::timeout(self.config.op_timeout, call).await {
            Ok(result) => result.map_err(redis_error(what)),
            Err(_) => Err(timed_out(what, self.config.op_timeout)),
        }
    }

    /// One slot served by each master of the cluster; `[None]` on one server.
    pub(super) async fn masters(&self) -> Result<Vec<Option<u16>>, LockError> {
        if !self.is_cluster() {
            return Ok(vec![None]);
        }
        let mut command = redis::cmd("CLUSTER");
        command.arg("SLOTS");
        let ranges: Vec<redis::Value> = self
            .query("read the cluster's slots", command, None)
            .await?;
        let mut masters: Vec<(String, u16)> = Vec::new();
        for range in ranges {
            let parsed = || -> Result<(String, u16), redis::ParsingError> {
                let redis::Value::Array(fields) = range else {
                    return Err("a slot range is not an array".into());
                };
                let start: u16 = redis::from_redis_value_ref(fields.first().ok_or("no start")?)?;
                let master: Vec<redis::Value> =
                    redis::from_redis_value_ref(fields.get(2).ok_or("no master")?)?;
                let host: String = redis::from_redis_value_ref(master.first().ok_or("no host")?)?;
                let port: u16 = redis::from_redis_value_ref(master.get(1).ok_or("no port")?)?;
                Ok((format!("{host}:{port}"), start))
            };
            let (address, slot) = parsed().map_err(parse_error("read the cluster's slots"))?;
            if !masters.iter().any(|(a, _)| *a == address) {
                masters.push((address, slot));
            }
        }
        Ok(masters.into_iter().map(|(_, slot)| Some(slot)).collect())
    }

    /// The names of the keys that match `pattern`, master by master, `SCAN` by `SCAN`;
    /// sorted, without duplicates.
    pub(super) async fn scan(&self, pattern: &str) -> Result<Vec<String>, LockError> {
        let mut keys = Vec::new();
        for node in self.masters().await? {
            let mut cursor = 0u64;
            loop {
                let mut command = redis::cmd("SCAN");
                command
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(pattern)
                    .arg("COUNT")
                    .arg(BATCH);
                let (next, batch): (u64, Vec<String>) = self.query("scan", command, node).await?;
                keys.extend(batch);
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        keys.sort_unstable();
        keys.dedup();
        Ok(keys)
    }

    /// Refuses a `maxmemory-policy` that can evict lock keys, on any master, unless allowed.
    pub(super) async fn check_eviction_policy(&self) -> Result<(), LockError> {
        for node in self.masters().await? {
            let mut command = redis::cmd("CONFIG");
            command.arg("GET").arg("maxmemory-policy");
            let reply = match self
                .query::<Vec<String>>("read maxmemory-policy", command, node)
                .await
            {
                Ok(reply) => Ok(reply),
                Err(LockError::Backend {
                    source: Some(source),
                    message,
                    ..
                }) => match source.downcast::<redis::RedisError>() {
                    Ok(e) => Err(*e),
                    Err(_) => {
                        return Err(LockError::Backend {
                            backend: BACKEND,
                            message,
                            source: None,
                        });
                    }
                },
                Err(other) => return Err(other),
            };
            let policy = match reply {
                Ok(pair) => pair.get(1).cloned().unwrap_or_default(),
                Err(e) if self.config.allow_eviction => {
                    tracing::warn!(error = %e, "cannot read maxmemory-policy; going on, as allow_eviction is set");
                    continue;
                }
                Err(e) if e.kind() == redis::ErrorKind::Io || e.is_connection_dropped() => {
                    return Err(redis_error("read maxmemory-policy")(e));
                }
                Err(e) => {
                    return Err(LockError::Unsafe {
                        backend: BACKEND,
                        reason: format!(
                            "cannot read maxmemory-policy ({e}); the CONFIG command is disabled on this server, as on many managed services. Make sure the policy is `noeviction` (an evicted lease frees a lock its holder still uses), then set RedisConfig::allow_eviction to skip this check"
                        ),
                    });
                }
            };
            if policy == "noeviction" || policy.is_empty() {
                continue;
            }
            if self.config.allow_eviction {
                tracing::warn!(%policy, "maxmemory-policy can evict lock keys; going on, as allow_eviction is set");
                continue;
            }
            return Err(LockError::Unsafe {
                backend: BACKEND,
                reason: format!(
                    "maxmemory-policy is `{policy}`, which can evict a live lease and free a lock its holder still uses; set it to `noeviction` (CONFIG SET maxmemory-policy noeviction), or use a Redis of its own for locks, or set RedisConfig::allow_eviction to accept the risk"
                ),
            });
        }
        Ok(())
    }

    /// The marker that guards `slot` (on one server, the one marker, under slot 0).
    pub(super) fn marker_key(&self, slot: u16) -> String {
        if self.is_cluster() {
            format!("{}epoch:{{{}}}", self.config.prefix, slots::tag(slot))
        } else {
            format!("{}epoch", self.config.prefix)
        }
    }

    /// The slot whose marker guards `lock_key`: its hash slot on a cluster, 0 on one server.
    pub(super) fn guard_slot(&self, lock_key: &str) -> u16 {
        if self.is_cluster() {
            slots::of(lock_key.as_bytes())
        } else {
            0
        }
    }

    /// The guard's arguments: the marker key, the known id, a fresh id, the delay.
    pub(super) fn guard_args(&self, slot: u16, invocation: &mut redis::ScriptInvocation<'_>) {
        let (marker, known, fresh, delay) = self.guard_values(slot);
        invocation.key(marker).arg(known).arg(fresh).arg(delay);
    }

    /// The values of [`guard_args`](Self::guard_args): marker key, known id, fresh id,
    /// delay (ms).
    pub(super) fn guard_values(&self, slot: u16) -> (String, String, String, u64) {
        let (known, longest) = {
            let epoch = self.epoch.lock();
            (
                epoch.ids.get(&slot).cloned().unwrap_or_default(),
                epoch.longest,
            )
        };
        let delay = match self.config.restart_delay {
            Some(delay) => delay,
            None => {
                let longest = Duration::from_millis(longest);
                longest + default_drift_margin(longest)
            }
        };
        (
            self.marker_key(slot),
            known,
            crate::util::random::shared_token(),
            ms(delay),
        )
    }

    /// Remembers the marker as the server reported it; warns once per wipe found.
    pub(super) fn learn(&self, slot: u16, (id, after, longest, wiped): &GuardReply) {
        let mut epoch = self.epoch.lock();
        let known = epoch.ids.get(&slot).is_some_and(|known| known == id);
        if *wiped == 1 && !known {
            tracing::warn!(
                prefix = %self.config.prefix,
                slot,
                until = %crate::util::clock::format_time(from_unix_millis(*after)),
                "the Redis lock store lost its state (a restart without persistence, a flush, an eviction or a failover): no lock is granted there until every lease that could still be live has run out"
            );
            self.watchers.notify_all();
        }
        if known {
            let recorded = epoch.recorded.entry(slot).or_default();
            *recorded = (*recorded).max(*longest);
        } else {
            epoch.ids.insert(slot, id.clone());
            epoch.recorded.insert(slot, *longest);
        }
        epoch.longest = epoch.longest.max(*longest);
        epoch.after = epoch.after.max(*after);
    }

    /// The longest lease the marker of `slot` records, as this instance last read it: an
    /// acquire of a key whose lock hash exists, for at most that long, grants without
    /// reading the marker (see `lua/acquire.lua`). 0 (read it) while the store may still
    /// be recovering from a wipe, as far as this instance knows.
    pub(super) fn recorded_longest(&self, slot: u16) -> u64 {
        let epoch = self.epoch.lock();
        let recovered = from_unix_millis(epoch.after) <= SystemTime::now();
        match epoch.recorded.get(&slot) {
            Some(&recorded) if recovered => recorded,
            _ => 0,
        }
    }

    /// How long a lock's hash lives after a grant or renewal of `ttl`: the lease plus the
    /// grace period (ms), for the scripts' `PEXPIRE`.
    pub(super) fn hash_lifetime(&self, ttl: Duration) -> u64 {
        ms(ttl).saturating_add(ms(self.config.grace))
    }

    pub(super) fn events_channel(&self) -> String {
        format!("{}events", self.config.prefix)
    }

    pub(super) async fn acquire_inner(
        &self,
        request: &LockRequest,
        force: bool,
    ) -> Result<Option<Lease>, LockError> {
        request.validate(self.config.max_ttl)?;
        let token = crate::util::random::shared_token();
        let lock_key = self.lock_key(&request.key);
        let slot = self.guard_slot(&lock_key);
        let mut invocation = self.scripts.acquire.prepare_invoke();
        self.guard_args(slot, &mut invocation);
        invocation
            .key(lock_key)
            .arg(&request.owner)
            .arg(&token)
            .arg(request.metadata.len())
            .arg(ms(request.ttl))
            .arg(self.hash_lifetime(request.ttl))
            .arg(if force { "1" } else { "0" })
            .arg(self.recorded_longest(slot));
        for (name, value) in &request.metadata {
            invocation.arg(name).arg(value);
        }
        let operation = if force { "take-over" } else { "acquire" };
        let sent = tokio::time::Instant::now();
        let deadline = call_deadline(self.config.response_timeout(), request.deadline);
        // Until the answer is read and kept, a grant this call gave up on (a timeout, a
        // lost connection, a late answer, a dropped future) is released in the background.
        let abandoned = self.abandoned(&request.key, &token);
        let (reply, acks): (Vec<redis::Value>, Acks) = self
            .run_write_until(operation, &invocation, &invocation, deadline)
            .await?;
        let parse = || -> Result<AcquireReply, redis::ParsingError> {
            let field = |n: usize| reply.get(n).cloned().unwrap_or(redis::Value::Nil);
            let status: i64 = redis::from_redis_value(field(0))?;
            // 3 and 4: held and granted, on a key whose hash exists, without the guard.
            let (status, guard) = match status {
                3 | 4 => (status - 3, None),
                _ => (
                    status,
                    Some((
                        redis::from_redis_value(field(1))?,
                        redis::from_redis_value(field(2))?,
                        redis::from_redis_value(field(3))?,
                        redis::from_redis_value(field(4))?,
                    )),
                ),
            };
            let granted = if status == 1 {
                let at = if guard.is_some() { 5 } else { 1 };
                Some((
                    redis::from_redis_value(field(at))?,
                    redis::from_redis_value(field(at + 1))?,
                    redis::from_redis_value(field(at + 2))?,
                ))
            } else {
                None
            };
            Ok((status, guard, granted))
        };
        let (status, guard, granted) = parse().map_err(parse_error("acquire"))?;
        if let Some(guard) = &guard {
            self.learn(slot, guard);
        }
        let Some((fence, now, expires)) = granted else {
            // Refused: nothing was taken.
            abandoned.disarm();
            return self.refused(status, force, guard.as_ref());
        };
        if let Err(error) = self
            .replicated(operation, &self.lock_key(&request.key), acks)
            .await
        {
            // Not on enough replicas: a failover could forget it and admit a second
            // holder. Undo it (the release is token-checked, so it frees only this
            // lease) and say so.
            let undo = self.release_invocation(&request.key, &token, false);
            match self.run::<i64>("undo an unreplicated acquire", &undo).await {
                Ok(_) => abandoned.disarm(),
                Err(undo_error) => {
                    tracing::warn!(error = %undo_error, key = %request.key, "could not undo an acquire that too few replicas acknowledged; trying again in the background");
                }
            }
            return Err(error);
        }
        if force {
            self.watchers.notify(&request.key);
        }
        let lease = Lease {
            key: request.key.clone(),
            owner: request.owner.clone(),
            token,
            fence,
            acquired_at: from_unix_millis(now),
            expires_at: from_unix_millis(expires),
            ttl: request.ttl,
            requested_at: sent,
        }
        .fresh(request.margin(), operation)?;
        abandoned.disarm();
        Ok(Some(lease))
    }

    /// The outcome of an acquire the script refused: `Ok(None)` while the key is held, or
    /// the restart guard's [`LockError::Recovering`] for a take-over.
    fn refused(
        &self,
        status: i64,
        force: bool,
        guard: Option<&GuardReply>,
    ) -> Result<Option<Lease>, LockError> {
        if let (2, true, Some(guard)) = (status, force, guard) {
            return Err(LockError::Recovering {
                backend: BACKEND,
                until: from_unix_millis(guard.1),
            });
        }
        Ok(None)
    }

    /// The cleanup of an acquire of `key` with `token` that may not be handed out: a
    /// token-checked release in the background, on the store's connection, until the
    /// store answers. On one server (or the Sentinels' primary) it goes out on the
    /// connection the acquire went out on, after it, so an acquire held in the network
    /// and delivered late is undone by it.
    pub(super) fn abandoned(&self, key: &str, token: &str) -> crate::util::abandoned::Abandoned {
        let store = self.clone();
        let key = key.to_owned();
        let token = token.to_owned();
        crate::util::abandoned::Abandoned::new(move || {
            crate::util::abandoned::release_in_background(BACKEND, key.clone(), move || {
                let store = store.clone();
                let key = key.clone();
                let token = token.clone();
                async move {
                    let invocation = store.release_invocation(&key, &token, true);
                    let released: i64 =
                        store.run("release an abandoned grant", &invocation).await?;
                    if released == 1 {
                        store.watchers.notify(&key);
                    }
                    Ok(released == 1)
                }
            });
        })
    }

    /// Until when the store grants no lock, if it found its state lost and is waiting.
    pub fn recovering_until(&self) -> Option<SystemTime> {
        let after = self.epoch.lock().after;
        let until = from_unix_millis(after);
        (until > SystemTime::now()).then_some(until)
    }

    /// The release script's invocation for the lease of `key` with `token`; `retry` says
    /// that an earlier try may have released it already (the script then reports it
    /// released).
    pub(super) fn release_invocation(
        &self,
        key: &str,
        token: &str,
        retry: bool,
    ) -> redis::ScriptInvocation<'_> {
        let mut invocation = self.scripts.release.prepare_invoke();
        invocation
            .key(self.lock_key(key))
            .arg(token)
            .arg(ms(self.config.grace))
            .arg(if retry { "1" } else { "0" });
        invocation
    }

    /// The hash of the lease on `key`: `<prefix>lock:{<key>}`, its own hash slot.
    pub(super) fn lock_key(&self, key: &str) -> String {
        format!("{}lock:{{{key}}}", self.config.prefix)
    }

    /// The lock key's user key, if `name` is one of this store's lock keys.
    pub(super) fn user_key<'a>(&self, name: &'a str) -> Option<&'a str> {
        name.strip_prefix(self.config.prefix.as_str())?
            .strip_prefix("lock:{")?
            .strip_suffix('}')
    }

    /// The live lease in the hash `lock_key`, if any.
    pub(super) async fn inspect_lock_key(
        &self,
        lock_key: String,
    ) -> Result<Option<InfoFields>, LockError> {
        let mut invocation = self.scripts.inspect.prepare_invoke();
        invocation.key(lock_key);
        self.run("inspect", &invocation).await
    }
}
