//! [`RedisLockStore`]: leases in one Redis instance, for services on many machines.
//!
//! Each operation is one Lua script, so it is atomic on the server, and reads the server's
//! clock (`TIME`), never the application's. A lease is a hash (`<prefix>lock:<key>`) with
//! its owner, token, fence, metadata and expiry. The hash also gets a `PEXPIRE` of the TTL
//! plus a grace period, so Redis reclaims abandoned leases by itself; until then
//! [`cleanup_expired`](LockStore::cleanup_expired) can count and remove them. A release
//! keeps the hash, without its token, for that grace period, so the key's last fence stays
//! known.
//!
//! Fences only go forward, whatever happens to the server's memory: a fence is one more
//! than the key's last, and at least the server's clock in microseconds. After a restart
//! without persistence, a `FLUSHALL` or the loss of a key, the next fence comes from the
//! clock alone, which has moved past every fence drawn before. The one assumption: the
//! Redis server's clock never steps back (NTP slews; it does not jump back).
//!
//! A wipe must not silently admit a second holder either. The store keeps a marker
//! (`<prefix>epoch`, without expiry) that every store instance reads on connect. When an
//! instance that knew the marker finds it gone, the state was lost: it grants no lock
//! until the longest lease that could still be live has run out (the delayed restart of
//! the Redlock analysis), logs it at warn, and every other instance that knew the marker
//! does the same. An instance that connects for the first time after the wipe cannot tell
//! it from a new server; the fences still protect the resource.
//!
//! Live leases must not be evictable: `connect` reads `maxmemory-policy` and refuses any
//! policy but `noeviction` (see [`RedisConfig::allow_eviction`]).
//!
//! A release, a take-over and a forced release are published on `<prefix>events`; each
//! store subscribes once, so holders and waiters in every process learn at once.
//!
//! This is a single instance, not Redlock: a failover to a replica that missed the last
//! writes loses leases. The replica's clock-based fences still go forward; run replicas
//! with `replica-lazy-flush`-free defaults and treat a failover like a restart.

use std::fmt;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use redis::Script;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::error::LockError;
use crate::notify::{LockWatch, Watchers};
use crate::request::{
    Lease, LockInfo, LockRequest, decode_metadata, default_drift_margin, encode_metadata,
    random_token, validate_key, validate_ttl,
};
use crate::{LockStore, from_unix_millis};

const BACKEND: &str = "redis";

/// Settings for [`RedisLockStore`].
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// The prefix of every key this store writes (default `conc:`).
    pub prefix: String,
    /// The limit on each operation (default 5 s).
    pub op_timeout: Duration,
    /// The limit on connecting (default 5 s).
    pub connect_timeout: Duration,
    /// The longest TTL accepted (default 1 h).
    pub max_ttl: Duration,
    /// How long an expired or released lease's hash stays (for `cleanup_expired`, and to
    /// remember the key's last fence) before Redis drops it (default 60 s).
    pub grace: Duration,
    /// How long the store grants no lock after it found its state lost. `None` (the
    /// default) waits for the longest lease seen on this server, plus its drift margin.
    pub restart_delay: Option<Duration>,
    /// Accept a `maxmemory-policy` other than `noeviction`, or a server whose `CONFIG`
    /// command is disabled (managed Redis), where the policy cannot be read (default
    /// `false`). An evicted lease frees its lock while its holder still writes: opt in
    /// only where you know lock keys cannot be evicted.
    pub allow_eviction: bool,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            prefix: "conc:".into(),
            op_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            max_ttl: Duration::from_secs(3600),
            grace: Duration::from_secs(60),
            restart_delay: None,
            allow_eviction: false,
        }
    }
}

const NOW: &str = "local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local function fmt(n) return string.format('%.0f', n) end
";

/// The restart guard, first in every script that grants or renews. KEYS[1]: the marker.
/// ARGV[1]: the marker id this instance knows ('' if none), ARGV[2]: a fresh id,
/// ARGV[3]: the delay after a wipe, ms. Sets `after` (no grant before) and `epoch`.
const GUARD: &str = "
local m = redis.call('HMGET', KEYS[1], 'id', 'grant_after', 'longest', 'created')
local epoch, after, longest, wiped = m[1], tonumber(m[2] or '0'), tonumber(m[3] or '0'), 0
if not epoch then
  epoch, after, longest = ARGV[2], now, 0
  if ARGV[1] ~= '' then after = now + tonumber(ARGV[3]); wiped = 1 end
  redis.call('HSET', KEYS[1], 'id', epoch, 'grant_after', fmt(after), 'created', fmt(now), 'longest', '0')
elseif ARGV[1] ~= '' and epoch ~= ARGV[1] then
  local extended = tonumber(m[4] or now) + tonumber(ARGV[3])
  if extended > after then
    after = extended
    redis.call('HSET', KEYS[1], 'grant_after', fmt(after))
  end
  wiped = 1
end
";

/// KEYS: marker, lock, index, expiries. ARGV: (guard), key, owner, token, metadata, ttl,
/// grace, force (`1` takes the key whoever holds it), events channel. A lease longer than
/// any before is published (`\0longest:<ms>`), so every instance knows how long to wait
/// after a wipe.
/// Returns {status, epoch, after, longest, wiped, fence, acquired, expires}; status 1
/// granted, 0 held, 2 recovering.
const ACQUIRE: &str = "
if after > now then return {2, epoch, fmt(after), fmt(longest), wiped} end
local f = redis.call('HMGET', KEYS[2], 'expires_at', 'fence', 'token')
local live = f[1] and f[3] ~= '' and tonumber(f[1]) > now
-- A retry after a lost connection finds its own token: it takes its lease again.
local own = f[3] == ARGV[6]
if ARGV[10] ~= '1' and live and not own then return {0, epoch, fmt(after), fmt(longest), wiped} end
local fence = now_us
if f[2] and tonumber(f[2]) + 1 > fence then fence = tonumber(f[2]) + 1 end
local ttl = tonumber(ARGV[8])
local expires = now + ttl
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], 'owner', ARGV[5], 'token', ARGV[6], 'fence', fmt(fence),
  'metadata', ARGV[7], 'acquired_at', fmt(now), 'expires_at', fmt(expires))
redis.call('PEXPIRE', KEYS[2], ttl + tonumber(ARGV[9]))
redis.call('ZADD', KEYS[3], 0, ARGV[4])
redis.call('ZADD', KEYS[4], expires, ARGV[4])
if ttl > longest then
  redis.call('HSET', KEYS[1], 'longest', fmt(ttl)); longest = ttl
  redis.call('PUBLISH', ARGV[11], '\\0longest:' .. fmt(ttl))
end
if live and not own then redis.call('PUBLISH', ARGV[11], ARGV[4]) end
return {1, epoch, fmt(after), fmt(longest), wiped, fmt(fence), fmt(now), fmt(expires)}";

/// KEYS: marker, lock, expiries. ARGV: (guard), key, token, ttl, grace, events channel.
/// Returns {epoch, after, longest, wiped, expires or false}.
const RENEW: &str = "
local f = redis.call('HMGET', KEYS[2], 'token', 'expires_at')
if f[1] == ARGV[5] and f[1] ~= '' and tonumber(f[2]) > now then
  local ttl = tonumber(ARGV[6])
  local expires = now + ttl
  redis.call('HSET', KEYS[2], 'expires_at', fmt(expires))
  redis.call('PEXPIRE', KEYS[2], ttl + tonumber(ARGV[7]))
  redis.call('ZADD', KEYS[3], expires, ARGV[4])
  if ttl > longest then
    redis.call('HSET', KEYS[1], 'longest', fmt(ttl)); longest = ttl
    redis.call('PUBLISH', ARGV[8], '\\0longest:' .. fmt(ttl))
  end
  return {epoch, fmt(after), fmt(longest), wiped, fmt(expires)}
end
return {epoch, fmt(after), fmt(longest), wiped, false}";

/// KEYS: marker. ARGV: (guard). Returns {epoch, after, longest, wiped}.
const INIT: &str = "
return {epoch, fmt(after), fmt(longest), wiped}";

/// KEYS: lock, index, expiries. ARGV: key, token, grace, events channel, retry (`1` on a
/// retry after a lost connection: a lease this token already released counts as released).
/// A released lease keeps its token, marked `released:`, for the grace period.
const RELEASE: &str = "
local f = redis.call('HMGET', KEYS[1], 'token', 'expires_at')
if ARGV[5] == '1' and f[1] == 'released:' .. ARGV[2] then return 1 end
if f[1] == ARGV[2] and f[1] ~= '' and tonumber(f[2]) > now then
  redis.call('HSET', KEYS[1], 'token', 'released:' .. ARGV[2], 'expires_at', fmt(now))
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('ZREM', KEYS[3], ARGV[1])
  redis.call('PUBLISH', ARGV[4], ARGV[1])
  return 1
end
return 0";

/// KEYS: lock.
const INSPECT: &str = "
local f = redis.call('HMGET', KEYS[1], 'owner', 'metadata', 'fence', 'acquired_at', 'expires_at', 'token')
if f[5] and f[6] ~= '' and tonumber(f[5]) > now then return {f[1], f[2], f[3], f[4], f[5]} end
return false";

/// KEYS: index. ARGV: lock key prefix, user prefix, limit.
const LIST: &str = "
local keys = redis.call('ZRANGEBYLEX', KEYS[1], '[' .. ARGV[2], '[' .. ARGV[2] .. '\\255')
local out = {}
local limit = tonumber(ARGV[3])
for _, key in ipairs(keys) do
  if #out / 6 >= limit then break end
  local f = redis.call('HMGET', ARGV[1] .. key, 'owner', 'metadata', 'fence', 'acquired_at', 'expires_at', 'token')
  if f[5] and f[6] ~= '' and tonumber(f[5]) > now then
    table.insert(out, key)
    for i = 1, 5 do table.insert(out, f[i]) end
  end
end
return out";

/// KEYS: index, expiries. ARGV: lock key prefix.
const CLEANUP: &str = "
local keys = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
local removed = 0
for _, key in ipairs(keys) do
  local f = redis.call('HMGET', ARGV[1] .. key, 'expires_at', 'token')
  local exp = f[1]
  if exp and tonumber(exp) <= now then
    if f[2] ~= '' and string.sub(f[2], 1, 9) ~= 'released:' then removed = removed + 1 end
    redis.call('HSET', ARGV[1] .. key, 'token', '')
  end
  if (not exp) or tonumber(exp) <= now then
    redis.call('ZREM', KEYS[1], key)
    redis.call('ZREM', KEYS[2], key)
  end
end
return removed";

/// KEYS: lock, index, expiries. ARGV: key, grace, events channel.
const FORCE: &str = "
local f = redis.call('HMGET', KEYS[1], 'expires_at', 'token')
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
if f[1] and f[2] ~= '' and tonumber(f[1]) > now then
  redis.call('HSET', KEYS[1], 'token', '', 'expires_at', fmt(now))
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
  redis.call('PUBLISH', ARGV[3], ARGV[1])
  return 1
end
return 0";

struct Scripts {
    init: Script,
    acquire: Script,
    release: Script,
    renew: Script,
    inspect: Script,
    list: Script,
    cleanup: Script,
    force: Script,
}

impl Scripts {
    fn new() -> Self {
        let s = |body: &str| Script::new(&format!("{NOW}{body}"));
        let guarded = |body: &str| Script::new(&format!("{NOW}{GUARD}{body}"));
        Self {
            init: guarded(INIT),
            acquire: guarded(ACQUIRE),
            release: s(RELEASE),
            renew: guarded(RENEW),
            inspect: s(INSPECT),
            list: s(LIST),
            cleanup: s(CLEANUP),
            force: s(FORCE),
        }
    }
}

/// What this instance knows of the store's marker.
#[derive(Debug, Default)]
struct Epoch {
    /// The marker's id, once seen.
    id: String,
    /// The longest lease the store has granted, in ms.
    longest: u64,
    /// Until when (server clock, ms) the store grants nothing, as last seen.
    after: i64,
}

/// A [`LockStore`] in Redis.
///
/// ```no_run
/// use std::time::Duration;
/// use conc_lock_store::{LockRequest, LockStore, RedisConfig, RedisLockStore};
///
/// # async fn example() -> Result<(), conc_lock_store::LockError> {
/// let store = RedisLockStore::connect("redis://127.0.0.1:6379", RedisConfig::default()).await?;
/// let request = LockRequest::new("conversation:1", "worker-a", Duration::from_secs(30));
/// if let Some(lease) = store.try_acquire(&request).await? {
///     store.release(&lease).await?;
/// }
/// # Ok(())
/// # }
/// ```
pub struct RedisLockStore {
    connection: ConnectionManager,
    config: RedisConfig,
    scripts: Scripts,
    epoch: Arc<parking_lot::Mutex<Epoch>>,
    watchers: Arc<Watchers>,
    /// Dropped with the store, which ends the subscribing task.
    _subscriber: tokio::sync::oneshot::Sender<()>,
}

impl fmt::Debug for RedisLockStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLockStore")
            .field("prefix", &self.config.prefix)
            .finish_non_exhaustive()
    }
}

/// A connection failure, with its cause named.
fn connect_error(error: redis::RedisError) -> LockError {
    let cause = match error.kind() {
        redis::ErrorKind::AuthenticationFailed => crate::ConnectFailure::Authentication,
        _ if error.to_string().contains("NOAUTH") || error.to_string().contains("WRONGPASS") => {
            crate::ConnectFailure::Authentication
        }
        _ => LockError::connect_failure(&error),
    };
    LockError::Connect {
        backend: BACKEND,
        cause,
        message: error.to_string(),
    }
}

fn redis_error(context: &'static str) -> impl Fn(redis::RedisError) -> LockError {
    move |e| LockError::backend(BACKEND, format!("{context}: {e}"), e)
}

type InfoFields = (String, String, u64, i64, i64);

/// The guard's part of a reply: epoch id, grant-after (ms), longest lease (ms), wiped.
type GuardReply = (String, i64, u64, i64);

/// An acquire's reply: status, the guard's part, and a granted lease's fence and times.
type AcquireReply = (i64, GuardReply, Option<(u64, i64, i64)>);

impl RedisLockStore {
    /// Connects to `url` (`redis://host:port/db`) through a connection manager that
    /// reconnects on its own; checks that lock keys cannot be evicted (see
    /// [`RedisConfig::allow_eviction`]), reads the store's marker, and subscribes to the
    /// store's events.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: at most the store's marker is written on connect.
    pub async fn connect(url: &str, config: RedisConfig) -> Result<Self, LockError> {
        let split = crate::tls::split(url);
        let client = match &split.root_cert {
            Some(path) => redis::Client::build_with_tls(
                split.url.as_str(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(crate::tls::read_root_cert(BACKEND, path)?),
                },
            ),
            None => redis::Client::open(split.url.as_str()),
        }
        .map_err(redis_error("bad Redis URL"))?;
        Self::from_client(client, config).await
    }

    /// A store on a [`redis::Client`] the service already has (its URL, TLS and
    /// credentials included): the store opens its own connection manager and one pub/sub
    /// connection through it, with the checks of [`connect`](Self::connect).
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
            .set_response_timeout(Some(config.op_timeout))
            .set_number_of_retries(3);
        let connect = client.get_connection_manager_with_config(manager_config);
        let connection = tokio::time::timeout(config.connect_timeout, connect)
            .await
            .map_err(|_| LockError::Connect {
                backend: BACKEND,
                cause: crate::ConnectFailure::Timeout,
                message: format!("connecting took longer than {:?}", config.connect_timeout),
            })?
            .map_err(connect_error)?;
        let watchers = Arc::<Watchers>::default();
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let store = Self {
            connection,
            config,
            scripts: Scripts::new(),
            epoch: Arc::default(),
            watchers: watchers.clone(),
            _subscriber: stop,
        };
        store.check_eviction_policy().await?;
        let mut invocation = store.scripts.init.prepare_invoke();
        store.guard_args(&mut invocation);
        let reply: GuardReply = store.run("connect", &invocation).await?;
        store.learn(&reply);
        let (ready, subscribed) = tokio::sync::oneshot::channel();
        tokio::spawn(subscribe(
            client,
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

    /// Refuses a `maxmemory-policy` that can evict lock keys, unless allowed.
    async fn check_eviction_policy(&self) -> Result<(), LockError> {
        let mut connection = self.connection.clone();
        let mut command = redis::cmd("CONFIG");
        command.arg("GET").arg("maxmemory-policy");
        let query = command.query_async::<Vec<String>>(&mut connection);
        let reply = tokio::time::timeout(self.config.op_timeout, query)
            .await
            .map_err(|_| LockError::Backend {
                backend: BACKEND,
                message: format!(
                    "reading maxmemory-policy took longer than {:?}",
                    self.config.op_timeout
                ),
                source: None,
            })?;
        let policy = match reply {
            Ok(pair) => pair.get(1).cloned().unwrap_or_default(),
            Err(e) if self.config.allow_eviction => {
                tracing::warn!(error = %e, "cannot read maxmemory-policy; going on, as allow_eviction is set");
                return Ok(());
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
            return Ok(());
        }
        if self.config.allow_eviction {
            tracing::warn!(%policy, "maxmemory-policy can evict lock keys; going on, as allow_eviction is set");
            return Ok(());
        }
        Err(LockError::Unsafe {
            backend: BACKEND,
            reason: format!(
                "maxmemory-policy is `{policy}`, which can evict a live lease and free a lock its holder still uses; set it to `noeviction` (CONFIG SET maxmemory-policy noeviction), or use a Redis of its own for locks, or set RedisConfig::allow_eviction to accept the risk"
            ),
        })
    }

    /// The guard's arguments: the marker key, the known id, a fresh id, the delay.
    fn guard_args(&self, invocation: &mut redis::ScriptInvocation<'_>) {
        let (known, longest) = {
            let epoch = self.epoch.lock();
            (epoch.id.clone(), epoch.longest)
        };
        let delay = match self.config.restart_delay {
            Some(delay) => delay,
            None => {
                let longest = Duration::from_millis(longest);
                longest + default_drift_margin(longest)
            }
        };
        invocation
            .key(format!("{}epoch", self.config.prefix))
            .arg(known)
            .arg(random_token())
            .arg(ms(delay));
    }

    /// Remembers the marker as the server reported it; warns once per wipe found.
    fn learn(&self, (id, after, longest, wiped): &GuardReply) {
        let mut epoch = self.epoch.lock();
        if *wiped == 1 && epoch.id != *id {
            tracing::warn!(
                prefix = %self.config.prefix,
                until = %crate::format_time(from_unix_millis(*after)),
                "the Redis lock store lost its state (a restart without persistence, a flush or an eviction): no lock is granted until every lease that could still be live has run out"
            );
            self.watchers.notify_all();
        }
        epoch.id.clone_from(id);
        epoch.longest = epoch.longest.max(*longest);
        epoch.after = *after;
    }

    fn events_channel(&self) -> String {
        format!("{}events", self.config.prefix)
    }

    async fn acquire_inner(
        &self,
        request: &LockRequest,
        force: bool,
    ) -> Result<Option<Lease>, LockError> {
        request.validate(self.config.max_ttl)?;
        let token = random_token();
        let mut invocation = self.scripts.acquire.prepare_invoke();
        self.guard_args(&mut invocation);
        invocation
            .key(self.lock_key(&request.key))
            .key(self.index_key())
            .key(self.expiries_key())
            .arg(&request.key)
            .arg(&request.owner)
            .arg(&token)
            .arg(encode_metadata(&request.metadata))
            .arg(ms(request.ttl))
            .arg(ms(self.config.grace))
            .arg(if force { "1" } else { "0" })
            .arg(self.events_channel());
        let sent = tokio::time::Instant::now();
        let reply: Vec<redis::Value> = self.run("acquire", &invocation).await?;
        let parse = || -> redis::RedisResult<AcquireReply> {
            let field = |n: usize| reply.get(n).cloned().unwrap_or(redis::Value::Nil);
            let status: i64 = redis::from_redis_value(field(0))?;
            let guard: GuardReply = (
                redis::from_redis_value(field(1))?,
                redis::from_redis_value(field(2))?,
                redis::from_redis_value(field(3))?,
                redis::from_redis_value(field(4))?,
            );
            let granted = if status == 1 {
                Some((
                    redis::from_redis_value(field(5))?,
                    redis::from_redis_value(field(6))?,
                    redis::from_redis_value(field(7))?,
                ))
            } else {
                None
            };
            Ok((status, guard, granted))
        };
        let (status, guard, granted) = parse().map_err(redis_error("acquire"))?;
        self.learn(&guard);
        if status == 2 {
            if force {
                return Err(LockError::Recovering {
                    backend: BACKEND,
                    until: from_unix_millis(guard.1),
                });
            }
            return Ok(None);
        }
        if force {
            self.watchers.notify(&request.key);
        }
        Ok(granted.map(|(fence, now, expires)| Lease {
            key: request.key.clone(),
            owner: request.owner.clone(),
            token,
            fence,
            acquired_at: from_unix_millis(now),
            expires_at: from_unix_millis(expires),
            ttl: request.ttl,
            requested_at: sent,
        }))
    }

    /// Until when the store grants no lock, if it found its state lost and is waiting.
    pub fn recovering_until(&self) -> Option<SystemTime> {
        let after = self.epoch.lock().after;
        let until = from_unix_millis(after);
        (until > SystemTime::now()).then_some(until)
    }

    fn lock_key(&self, key: &str) -> String {
        format!("{}lock:{key}", self.config.prefix)
    }

    fn index_key(&self) -> String {
        format!("{}index", self.config.prefix)
    }

    fn expiries_key(&self) -> String {
        format!("{}expiries", self.config.prefix)
    }

    /// Runs a prepared script invocation within the operation timeout; the connection
    /// manager reconnects after a dropped connection, and one failed try is retried.
    async fn run<T: redis::FromRedisValue>(
        &self,
        what: &'static str,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, LockError> {
        self.run_retrying(what, invocation, invocation).await
    }

    /// As [`run`](Self::run), sending `retry` instead of `first` on a retry (after a lost
    /// connection, when the first try may have run).
    async fn run_retrying<T: redis::FromRedisValue>(
        &self,
        what: &'static str,
        first: &redis::ScriptInvocation<'_>,
        retry: &redis::ScriptInvocation<'_>,
    ) -> Result<T, LockError> {
        let mut tries = 0;
        loop {
            tries += 1;
            let invocation = if tries == 1 { first } else { retry };
            let mut connection = self.connection.clone();
            let call = invocation.invoke_async::<T>(&mut connection);
            match tokio::time::timeout(self.config.op_timeout, call).await {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(e))
                    if tries < 3
                        && (e.is_io_error() || e.is_connection_dropped() || e.is_timeout()) =>
                {
                    tracing::debug!(error = %e, tries, "redis connection trouble; retrying");
                }
                Ok(Err(e)) => return Err(redis_error(what)(e)),
                Err(_) => {
                    return Err(LockError::Backend {
                        backend: BACKEND,
                        message: format!("{what} took longer than {:?}", self.config.op_timeout),
                        source: None,
                    });
                }
            }
        }
    }
}

/// Subscribes to the store's events and wakes the watchers of each key named; after a
/// lost connection it wakes every watcher (it cannot tell what it missed) and subscribes
/// again. Ends when the store is dropped.
async fn subscribe(
    client: redis::Client,
    channel: String,
    connect_timeout: Duration,
    watchers: Weak<Watchers>,
    epoch: Arc<parking_lot::Mutex<Epoch>>,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
    ready: tokio::sync::oneshot::Sender<()>,
) {
    let mut ready = Some(ready);
    use futures_util::StreamExt as _;
    let mut pause = Duration::from_millis(100);
    loop {
        let session = async {
            let mut pubsub = tokio::time::timeout(connect_timeout, client.get_async_pubsub())
                .await
                .map_err(|_| "connecting timed out".to_owned())?
                .map_err(|e| e.to_string())?;
            tokio::time::timeout(connect_timeout, pubsub.subscribe(&channel))
                .await
                .map_err(|_| "subscribing timed out".to_owned())?
                .map_err(|e| e.to_string())?;
            if let Some(ready) = ready.take() {
                let _ = ready.send(());
            } else if let Some(watchers) = watchers.upgrade() {
                // Anything may have happened while we were not subscribed.
                watchers.notify_all();
            }
            let mut messages = pubsub.into_on_message();
            while let Some(message) = messages.next().await {
                let Some(watchers) = watchers.upgrade() else {
                    return Ok(());
                };
                let Ok(payload) = message.get_payload::<String>() else {
                    continue;
                };
                match payload.strip_prefix("\0longest:") {
                    Some(longest) => {
                        if let Ok(longest) = longest.parse::<u64>() {
                            let mut epoch = epoch.lock();
                            epoch.longest = epoch.longest.max(longest);
                        }
                    }
                    None => watchers.notify(&payload),
                }
            }
            Err("the connection closed".to_owned())
        };
        tokio::select! {
            _ = &mut stopped => return,
            outcome = session => {
                if let Err(error) = outcome {
                    tracing::debug!(%error, "redis lock events interrupted; subscribing again");
                }
            }
        }
        if !crate::notify::after_disconnect(&watchers, &mut stopped, &mut pause).await {
            return;
        }
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

fn info(key: String, (owner, metadata, fence, acquired_at, expires_at): InfoFields) -> LockInfo {
    LockInfo {
        key,
        owner,
        metadata: decode_metadata(&metadata),
        fence,
        acquired_at: from_unix_millis(acquired_at),
        expires_at: from_unix_millis(expires_at),
    }
}

#[async_trait::async_trait]
impl LockStore for RedisLockStore {
    async fn try_acquire(&self, request: &LockRequest) -> Result<Option<Lease>, LockError> {
        self.acquire_inner(request, false).await
    }

    async fn take_over(&self, request: &LockRequest) -> Result<Lease, LockError> {
        LockError::taken(BACKEND, self.acquire_inner(request, true).await?)
    }

    async fn release(&self, lease: &Lease) -> Result<bool, LockError> {
        let invocation = |retry: &'static str| {
            let mut invocation = self.scripts.release.prepare_invoke();
            invocation
                .key(self.lock_key(&lease.key))
                .key(self.index_key())
                .key(self.expiries_key())
                .arg(&lease.key)
                .arg(&lease.token)
                .arg(ms(self.config.grace))
                .arg(self.events_channel())
                .arg(retry);
            invocation
        };
        let released: i64 = self
            .run_retrying("release", &invocation("0"), &invocation("1"))
            .await?;
        if released == 1 {
            self.watchers.notify(&lease.key);
        }
        Ok(released == 1)
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Lease, LockError> {
        validate_ttl(ttl, self.config.max_ttl)?;
        let mut invocation = self.scripts.renew.prepare_invoke();
        self.guard_args(&mut invocation);
        invocation
            .key(self.lock_key(&lease.key))
            .key(self.expiries_key())
            .arg(&lease.key)
            .arg(&lease.token)
            .arg(ms(ttl))
            .arg(ms(self.config.grace))
            .arg(self.events_channel());
        let sent = tokio::time::Instant::now();
        let (id, after, longest, wiped, renewed): (String, i64, u64, i64, Option<i64>) =
            self.run("renew", &invocation).await?;
        self.learn(&(id, after, longest, wiped));
        lease.renewed(renewed.map(from_unix_millis), ttl, sent)
    }

    async fn inspect(&self, key: &str) -> Result<Option<LockInfo>, LockError> {
        validate_key(key)?;
        let mut invocation = self.scripts.inspect.prepare_invoke();
        invocation.key(self.lock_key(key));
        let fields: Option<InfoFields> = self.run("inspect", &invocation).await?;
        Ok(fields.map(|f| info(key.to_owned(), f)))
    }

    async fn list(&self, prefix: &str, limit: usize) -> Result<Vec<LockInfo>, LockError> {
        let mut invocation = self.scripts.list.prepare_invoke();
        invocation
            .key(self.index_key())
            .arg(self.lock_key(""))
            .arg(prefix)
            .arg(limit);
        let flat: Vec<redis::Value> = self.run("list", &invocation).await?;
        let mut out = Vec::new();
        for row in flat.chunks(6) {
            let parse = || -> redis::RedisResult<LockInfo> {
                let key: String = redis::from_redis_value_ref(&row[0])?;
                let fields: InfoFields = (
                    redis::from_redis_value_ref(&row[1])?,
                    redis::from_redis_value_ref(&row[2])?,
                    redis::from_redis_value_ref(&row[3])?,
                    redis::from_redis_value_ref(&row[4])?,
                    redis::from_redis_value_ref(&row[5])?,
                );
                Ok(info(key, fields))
            };
            if row.len() == 6 {
                out.push(parse().map_err(redis_error("list"))?);
            }
        }
        Ok(out)
    }

    async fn cleanup_expired(&self) -> Result<u64, LockError> {
        let mut invocation = self.scripts.cleanup.prepare_invoke();
        invocation
            .key(self.index_key())
            .key(self.expiries_key())
            .arg(self.lock_key(""));
        self.run("cleanup", &invocation).await
    }

    async fn force_release(&self, key: &str) -> Result<bool, LockError> {
        validate_key(key)?;
        let mut invocation = self.scripts.force.prepare_invoke();
        invocation
            .key(self.lock_key(key))
            .key(self.index_key())
            .key(self.expiries_key())
            .arg(key)
            .arg(ms(self.config.grace))
            .arg(self.events_channel());
        let removed: i64 = self.run("force release", &invocation).await?;
        if removed == 1 {
            self.watchers.notify(key);
        }
        Ok(removed == 1)
    }

    fn max_ttl(&self) -> Duration {
        self.config.max_ttl
    }

    fn watch(&self, key: &str) -> Option<LockWatch> {
        Some(self.watchers.subscribe(key))
    }
}

#[cfg(all(test, feature = "conformance"))]
mod retry_tests {
    //! What a retry after a lost connection sends: the same acquire (same token) and the
    //! release's retry variant. Run on a private server.

    use super::*;
    use crate::servers::PrivateRedis;

    #[tokio::test]
    async fn a_retried_acquire_and_release_see_their_first_try() {
        let Some(server) = PrivateRedis::start(&[]).unwrap() else {
            return;
        };
        let store = RedisLockStore::connect(&server.url(), RedisConfig::default())
            .await
            .unwrap();
        let request = LockRequest::new("k", "owner", Duration::from_secs(5));
        let token = random_token();
        let acquire = || {
            let mut invocation = store.scripts.acquire.prepare_invoke();
            store.guard_args(&mut invocation);
            invocation
                .key(store.lock_key("k"))
                .key(store.index_key())
                .key(store.expiries_key())
                .arg("k")
                .arg("owner")
                .arg(&token)
                .arg("")
                .arg(5000)
                .arg(1000)
                .arg("0")
                .arg(store.events_channel());
            invocation
        };
        let first: Vec<redis::Value> = store.run("acquire", &acquire()).await.unwrap();
        let again: Vec<redis::Value> = store.run("acquire", &acquire()).await.unwrap();
        let status =
            |reply: &[redis::Value]| -> i64 { redis::from_redis_value_ref(&reply[0]).unwrap() };
        assert_eq!(
            (status(&first), status(&again)),
            (1, 1),
            "the retry takes its own lease"
        );
        // Someone else is still locked out.
        assert!(store.try_acquire(&request).await.unwrap().is_none());
        let lease = Lease {
            key: "k".into(),
            owner: "owner".into(),
            token: token.clone(),
            fence: 0,
            acquired_at: std::time::SystemTime::now(),
            expires_at: std::time::SystemTime::now(),
            ttl: Duration::from_secs(5),
            requested_at: tokio::time::Instant::now(),
        };
        assert!(store.release(&lease).await.unwrap());
        // A plain second release is refused; a retry of the first one reports the truth.
        assert!(!store.release(&lease).await.unwrap());
        let mut retry = store.scripts.release.prepare_invoke();
        retry
            .key(store.lock_key("k"))
            .key(store.index_key())
            .key(store.expiries_key())
            .arg("k")
            .arg(&token)
            .arg(1000)
            .arg(store.events_channel())
            .arg("1");
        let released: i64 = store.run("release", &retry).await.unwrap();
        assert_eq!(released, 1);
        assert!(store.try_acquire(&request).await.unwrap().is_some());
    }
}
