//! [`RedisLockStore`]: leases in one Redis instance, for services on many machines.
//!
//! Each operation is one Lua script, so it is atomic on the server, and reads the server's
//! clock (`TIME`), never the application's. A lease is a hash (`<prefix>lock:<key>`) with
//! its owner, token, fence, metadata and expiry; its fence comes from an `INCR` of a per-key
//! counter (`<prefix>fence:<key>`) that no release or expiry removes. The hash also gets a
//! `PEXPIRE` of the TTL plus a grace period, so Redis reclaims abandoned leases by itself;
//! until then [`cleanup_expired`](LockStore::cleanup_expired) can count and remove them.
//!
//! This is a single instance, not Redlock: a failover to a replica that missed the last
//! writes can lose a lock. Fencing is the defence: the resource refuses stale fences.

use std::fmt;
use std::time::Duration;

use redis::Script;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::error::LockError;
use crate::request::{
    Lease, LockInfo, LockRequest, decode_metadata, encode_metadata, random_token, validate_key,
    validate_ttl,
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
    /// How long an expired lease's hash stays for `cleanup_expired` before Redis drops it
    /// (default 60 s).
    pub grace: Duration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            prefix: "conc:".into(),
            op_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            max_ttl: Duration::from_secs(3600),
            grace: Duration::from_secs(60),
        }
    }
}

const NOW: &str = "local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
";

/// KEYS: lock, fence, index, expiries. ARGV: key, owner, token, metadata, ttl, grace,
/// force (`1` takes the key whoever holds it).
const ACQUIRE: &str = "
local exp = redis.call('HGET', KEYS[1], 'expires_at')
if ARGV[7] ~= '1' and exp and tonumber(exp) > now then return false end
local fence = redis.call('INCR', KEYS[2])
local expires = now + tonumber(ARGV[5])
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'owner', ARGV[2], 'token', ARGV[3], 'fence', fence,
  'metadata', ARGV[4], 'acquired_at', now, 'expires_at', expires)
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[5]) + tonumber(ARGV[6]))
redis.call('ZADD', KEYS[3], 0, ARGV[1])
redis.call('ZADD', KEYS[4], expires, ARGV[1])
return {fence, now, expires}";

/// KEYS: lock, index, expiries. ARGV: key, token.
const RELEASE: &str = "
local f = redis.call('HMGET', KEYS[1], 'token', 'expires_at')
if f[1] == ARGV[2] and tonumber(f[2]) > now then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('ZREM', KEYS[3], ARGV[1])
  return 1
end
return 0";

/// KEYS: lock, expiries. ARGV: key, token, ttl, grace.
const RENEW: &str = "
local f = redis.call('HMGET', KEYS[1], 'token', 'expires_at')
if f[1] == ARGV[2] and tonumber(f[2]) > now then
  local expires = now + tonumber(ARGV[3])
  redis.call('HSET', KEYS[1], 'expires_at', expires)
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]) + tonumber(ARGV[4]))
  redis.call('ZADD', KEYS[2], expires, ARGV[1])
  return expires
end
return false";

/// KEYS: lock.
const INSPECT: &str = "
local f = redis.call('HMGET', KEYS[1], 'owner', 'metadata', 'fence', 'acquired_at', 'expires_at')
if f[5] and tonumber(f[5]) > now then return f end
return false";

/// KEYS: index. ARGV: lock key prefix, user prefix, limit.
const LIST: &str = "
local keys = redis.call('ZRANGEBYLEX', KEYS[1], '[' .. ARGV[2], '[' .. ARGV[2] .. '\\255')
local out = {}
local limit = tonumber(ARGV[3])
for _, key in ipairs(keys) do
  if #out / 6 >= limit then break end
  local f = redis.call('HMGET', ARGV[1] .. key, 'owner', 'metadata', 'fence', 'acquired_at', 'expires_at')
  if f[5] and tonumber(f[5]) > now then
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
  local exp = redis.call('HGET', ARGV[1] .. key, 'expires_at')
  if exp and tonumber(exp) <= now then
    redis.call('DEL', ARGV[1] .. key)
    removed = removed + 1
  end
  if (not exp) or tonumber(exp) <= now then
    redis.call('ZREM', KEYS[1], key)
    redis.call('ZREM', KEYS[2], key)
  end
end
return removed";

/// KEYS: lock, index, expiries. ARGV: key.
const FORCE: &str = "
local exp = redis.call('HGET', KEYS[1], 'expires_at')
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
if exp and tonumber(exp) > now then return 1 end
return 0";

struct Scripts {
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
        Self {
            acquire: s(ACQUIRE),
            release: s(RELEASE),
            renew: s(RENEW),
            inspect: s(INSPECT),
            list: s(LIST),
            cleanup: s(CLEANUP),
            force: s(FORCE),
        }
    }
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
}

impl fmt::Debug for RedisLockStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLockStore")
            .field("prefix", &self.config.prefix)
            .finish_non_exhaustive()
    }
}

fn redis_error(context: &'static str) -> impl Fn(redis::RedisError) -> LockError {
    move |e| LockError::backend(BACKEND, format!("{context}: {e}"), e)
}

type InfoFields = (String, String, u64, i64, i64);

impl RedisLockStore {
    /// Connects to `url` (`redis://host:port/db`) through a connection manager that
    /// reconnects on its own.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: nothing is written on connect.
    pub async fn connect(url: &str, config: RedisConfig) -> Result<Self, LockError> {
        let client = redis::Client::open(url).map_err(redis_error("bad Redis URL"))?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            .set_response_timeout(Some(config.op_timeout))
            .set_number_of_retries(3);
        let connect = client.get_connection_manager_with_config(manager_config);
        let connection = tokio::time::timeout(config.connect_timeout, connect)
            .await
            .map_err(|_| LockError::Backend {
                backend: BACKEND,
                message: format!("connecting took longer than {:?}", config.connect_timeout),
                source: None,
            })?
            .map_err(redis_error("connect"))?;
        Ok(Self {
            connection,
            config,
            scripts: Scripts::new(),
        })
    }

    async fn acquire_inner(
        &self,
        request: &LockRequest,
        force: bool,
    ) -> Result<Option<Lease>, LockError> {
        request.validate(self.config.max_ttl)?;
        let token = random_token();
        let mut invocation = self.scripts.acquire.prepare_invoke();
        invocation
            .key(self.lock_key(&request.key))
            .key(self.fence_key(&request.key))
            .key(self.index_key())
            .key(self.expiries_key())
            .arg(&request.key)
            .arg(&request.owner)
            .arg(&token)
            .arg(encode_metadata(&request.metadata))
            .arg(ms(request.ttl))
            .arg(ms(self.config.grace))
            .arg(if force { "1" } else { "0" });
        let taken: Option<(u64, i64, i64)> = self.run("acquire", &invocation).await?;
        Ok(taken.map(|(fence, now, expires)| Lease {
            key: request.key.clone(),
            owner: request.owner.clone(),
            token,
            fence,
            acquired_at: from_unix_millis(now),
            expires_at: from_unix_millis(expires),
            ttl: request.ttl,
        }))
    }

    fn lock_key(&self, key: &str) -> String {
        format!("{}lock:{key}", self.config.prefix)
    }

    fn fence_key(&self, key: &str) -> String {
        format!("{}fence:{key}", self.config.prefix)
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
        let mut tries = 0;
        loop {
            tries += 1;
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
        let mut invocation = self.scripts.release.prepare_invoke();
        invocation
            .key(self.lock_key(&lease.key))
            .key(self.index_key())
            .key(self.expiries_key())
            .arg(&lease.key)
            .arg(&lease.token);
        let released: i64 = self.run("release", &invocation).await?;
        Ok(released == 1)
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Lease, LockError> {
        validate_ttl(ttl, self.config.max_ttl)?;
        let mut invocation = self.scripts.renew.prepare_invoke();
        invocation
            .key(self.lock_key(&lease.key))
            .key(self.expiries_key())
            .arg(&lease.key)
            .arg(&lease.token)
            .arg(ms(ttl))
            .arg(ms(self.config.grace));
        let renewed: Option<i64> = self.run("renew", &invocation).await?;
        lease.renewed(renewed.map(from_unix_millis), ttl)
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
            .arg(key);
        let removed: i64 = self.run("force release", &invocation).await?;
        Ok(removed == 1)
    }

    fn max_ttl(&self) -> Duration {
        self.config.max_ttl
    }
}
