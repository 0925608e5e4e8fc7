//! [`RedisLockStore`]: leases in Redis, one server or a Redis Cluster, for services on many
//! machines.
//!
//! Each operation on a lock is one Lua script over the keys of a single hash slot, so it is
//! atomic on the server, runs unchanged on a Redis Cluster, and reads the server's clock
//! (`TIME`), never the application's. A lease is a hash, `<prefix>lock:{<key>}` (the braces
//! make the key its own hash tag), with its owner, token, fence and expiry, and one field
//! per metadata entry (`m:<name>`, so `HGET` reads one). The hash also gets a `PEXPIRE` of
//! the TTL plus a grace period, so Redis reclaims abandoned leases by itself; until then
//! [`cleanup_expired`](LockStore::cleanup_expired) can count and remove them. A release
//! keeps the hash, without its token, for that grace period, so the key's last fence stays
//! known. Nothing global is written on the way to a lock:
//! [`list`](LockStore::list) and `cleanup_expired` walk the keys node by node with `SCAN`,
//! in batches, never one long blocking script.
//!
//! Fences only go forward, whatever happens to the server's memory: a fence is one more
//! than the key's last, and at least the server's clock in microseconds. After a restart
//! without persistence, a `FLUSHALL` or the loss of a key, the next fence comes from the
//! clock alone, which has moved past every fence drawn before. The one assumption: the
//! Redis servers' clocks never step back (NTP slews; it does not jump back), and on a
//! cluster they agree to within the fences' spacing (microseconds apart per grant).
//!
//! A wipe must not silently admit a second holder either. The store keeps a marker
//! without expiry that every store instance learns: on one server a single
//! `<prefix>epoch`, read on connect; on a cluster one per hash slot,
//! `<prefix>epoch:{<tag>}`, learned when the instance first uses the slot. When an
//! instance that knew a marker finds it gone, the state was lost: it grants no lock there
//! until the longest lease that could still be live has run out (the delayed restart of
//! the Redlock analysis), logs it at warn, and every other instance that knew the marker
//! does the same. An instance that had not yet learned the marker cannot tell the loss
//! from a new server or a slot never used; the fences still protect the resource.
//!
//! Live leases must not be evictable: `connect` reads `maxmemory-policy` on every master
//! and refuses any policy but `noeviction` (see [`RedisConfig::allow_eviction`]).
//!
//! A take-over and a forced release are published on `<prefix>events`, and so is a
//! release while a waiter has announced itself ([`LockStore::announce_wait`]: a
//! `waiting_until` field, written by a script, so a release either sees it or the waiter
//! sees the key free); each store subscribes once (on a cluster, to one node at a time: a
//! publication reaches every node), so holders and waiters in every process learn at once,
//! and a release nobody waits for sends nothing to the subscribers.
//!
//! Neither a single server nor a cluster is Redlock: a failover to a replica that missed
//! the last writes loses leases. The replica's clock-based fences still go forward; treat a
//! failover like a restart.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use redis::Script;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;

use crate::error::LockError;
use crate::lease::{Lease, LockInfo, Metadata, default_drift_margin};
use crate::metadata::decode_metadata;
use crate::notify::{LockWatch, Watchers};
use crate::request::{LockRequest, validate_key, validate_ttl};
use crate::{LockStore, from_unix_millis};

const BACKEND: &str = "redis";

/// Settings for [`RedisLockStore`].
///
/// Start from [`Default`] and change what you need with the `with_*` setters. The struct is
/// `#[non_exhaustive]`: a field added in a later release is not a breaking change, so it
/// cannot be built with a struct literal outside this crate (its fields stay readable).
///
/// ```
/// use conc_lock_store::RedisConfig;
///
/// let config = RedisConfig::default().with_prefix("myapp:");
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
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

impl RedisConfig {
    /// Sets [`prefix`](Self::prefix).
    #[must_use]
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Sets [`op_timeout`](Self::op_timeout).
    #[must_use]
    pub fn with_op_timeout(mut self, op_timeout: Duration) -> Self {
        self.op_timeout = op_timeout;
        self
    }

    /// Sets [`connect_timeout`](Self::connect_timeout).
    #[must_use]
    pub fn with_connect_timeout(mut self, connect_timeout: Duration) -> Self {
        self.connect_timeout = connect_timeout;
        self
    }

    /// Sets [`max_ttl`](Self::max_ttl).
    #[must_use]
    pub fn with_max_ttl(mut self, max_ttl: Duration) -> Self {
        self.max_ttl = max_ttl;
        self
    }

    /// Sets [`grace`](Self::grace).
    #[must_use]
    pub fn with_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Sets [`restart_delay`](Self::restart_delay).
    #[must_use]
    pub fn with_restart_delay(mut self, restart_delay: Option<Duration>) -> Self {
        self.restart_delay = restart_delay;
        self
    }

    /// Sets [`allow_eviction`](Self::allow_eviction).
    #[must_use]
    pub fn with_allow_eviction(mut self, allow_eviction: bool) -> Self {
        self.allow_eviction = allow_eviction;
        self
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

/// KEYS: marker, lock. ARGV: (guard), key, owner, token, metadata entries (n), ttl, grace,
/// force (`1` takes the key whoever holds it), events channel, then n name/value pairs, each
/// stored as the hash field `m:<name>`. A lease longer than any before is
/// published (`\0longest:<ms>`), so every instance knows how long to wait after a wipe.
/// Returns {status, epoch, after, longest, wiped, fence, acquired, expires}; status 1
/// granted, 0 held, 2 recovering.
const ACQUIRE: &str = "
if after > now then return {2, epoch, fmt(after), fmt(longest), wiped} end
local f = redis.call('HMGET', KEYS[2], 'expires_at', 'fence', 'token', 'waiting_until', 'mn')
local live = f[1] and f[3] ~= '' and tonumber(f[1]) > now
-- A retry after a lost connection finds its own token: it takes its lease again.
local own = f[3] == ARGV[6]
if ARGV[10] ~= '1' and live and not own then return {0, epoch, fmt(after), fmt(longest), wiped} end
local fence = now_us
if f[2] and tonumber(f[2]) + 1 > fence then fence = tonumber(f[2]) + 1 end
local ttl = tonumber(ARGV[8])
local expires = now + ttl
-- The last holder's metadata goes: the hash is deleted when it had `m:` fields (`mn`, their
-- count, is not 0) or was written by an earlier version (no `mn`); otherwise the fields
-- below overwrite it in place, which saves Redis a deletion and a new hash per acquire.
if f[2] and f[5] ~= '0' then redis.call('DEL', KEYS[2]) end
local sf, sn, se = fmt(fence), fmt(now), fmt(expires)
redis.call('HSET', KEYS[2], 'owner', ARGV[5], 'token', ARGV[6], 'fence', sf,
  'acquired_at', sn, 'expires_at', se, 'mn', ARGV[7])
for i = 0, (tonumber(ARGV[7]) or 0) - 1 do
  redis.call('HSET', KEYS[2], 'm:' .. ARGV[12 + 2 * i], ARGV[13 + 2 * i])
end
redis.call('PEXPIRE', KEYS[2], ttl + tonumber(ARGV[9]))
-- Waiters announced on the key wait on for the next holder's release too.
if f[4] and tonumber(f[4]) > now then redis.call('HSET', KEYS[2], 'waiting_until', f[4]) end
if ttl > longest then
  redis.call('HSET', KEYS[1], 'longest', fmt(ttl)); longest = ttl
  redis.call('PUBLISH', ARGV[11], '\\0longest:' .. fmt(ttl))
end
if live and not own then redis.call('PUBLISH', ARGV[11], ARGV[4]) end
return {1, epoch, fmt(after), fmt(longest), wiped, sf, sn, se}";

/// KEYS: marker, lock. ARGV: (guard), key, token, ttl, grace, events channel.
/// Returns {epoch, after, longest, wiped, expires or false}.
const RENEW: &str = "
local f = redis.call('HMGET', KEYS[2], 'token', 'expires_at')
if f[1] == ARGV[5] and f[1] ~= '' and tonumber(f[2]) > now then
  local ttl = tonumber(ARGV[6])
  local expires = now + ttl
  redis.call('HSET', KEYS[2], 'expires_at', fmt(expires))
  redis.call('PEXPIRE', KEYS[2], ttl + tonumber(ARGV[7]))
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

/// KEYS: lock. ARGV: key, token, grace, events channel, retry (`1` on a retry after a lost
/// connection: a lease this token already released counts as released). A released lease
/// keeps its token, marked `released:`, for the grace period. Other processes are told
/// only while one has announced a wait (`waiting_until` ahead, see `ANNOUNCE`).
const RELEASE: &str = "
local f = redis.call('HMGET', KEYS[1], 'token', 'expires_at', 'waiting_until')
if ARGV[5] == '1' and f[1] == 'released:' .. ARGV[2] then return 1 end
if f[1] == ARGV[2] and f[1] ~= '' and tonumber(f[2]) > now then
  redis.call('HSET', KEYS[1], 'token', 'released:' .. ARGV[2], 'expires_at', fmt(now))
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
  if f[3] and tonumber(f[3]) > now then redis.call('PUBLISH', ARGV[4], ARGV[1]) end
  return 1
end
return 0";

/// KEYS: lock. ARGV: how long the caller waits, ms. Records the wait (`waiting_until`) on a
/// live lease, atomically with respect to a release (scripts run one at a time): either
/// the release comes after and sees it, or this sees the key free. Returns 1 if the key is
/// held, 0 if not.
const ANNOUNCE: &str = "
local f = redis.call('HMGET', KEYS[1], 'expires_at', 'token', 'waiting_until')
if not (f[1] and f[2] and f[2] ~= '' and string.sub(f[2], 1, 9) ~= 'released:'
    and tonumber(f[1]) > now) then return 0 end
local wait_until = now + tonumber(ARGV[1])
if not f[3] or tonumber(f[3]) < wait_until then
  redis.call('HSET', KEYS[1], 'waiting_until', fmt(wait_until))
end
return 1";

/// KEYS: lock. Returns {owner, metadata written by earlier versions (JSON or ''), fence,
/// acquired, expires, then the `m:` fields' names (prefix stripped) and values}, or false.
const INSPECT: &str = "
local f = redis.call('HMGET', KEYS[1], 'owner', 'metadata', 'fence', 'acquired_at', 'expires_at', 'token')
if not (f[5] and f[6] ~= '' and tonumber(f[5]) > now) then return false end
local out = {f[1], f[2] or '', f[3], f[4], f[5]}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  if string.sub(all[i], 1, 2) == 'm:' then
    out[#out + 1] = string.sub(all[i], 3)
    out[#out + 1] = all[i + 1]
  end
end
return out";

/// KEYS: lock. Counts (1) and closes a lease that expired without a release.
const CLEANUP: &str = "
local f = redis.call('HMGET', KEYS[1], 'expires_at', 'token')
if f[1] and tonumber(f[1]) <= now and f[2] ~= '' and string.sub(f[2], 1, 9) ~= 'released:' then
  redis.call('HSET', KEYS[1], 'token', '')
  return 1
end
return 0";

/// KEYS: lock. ARGV: key, grace, events channel.
const FORCE: &str = "
local f = redis.call('HMGET', KEYS[1], 'expires_at', 'token')
if f[1] and f[2] ~= '' and tonumber(f[1]) > now then
  redis.call('HSET', KEYS[1], 'token', '', 'expires_at', fmt(now))
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
  redis.call('PUBLISH', ARGV[3], ARGV[1])
  return 1
end
return 0";

struct Scripts {
    init: Script,
    /// The renew script's source, for `SCRIPT LOAD` before a batch of `EVALSHA`s.
    renew_source: String,
    acquire: Script,
    release: Script,
    renew: Script,
    inspect: Script,
    cleanup: Script,
    force: Script,
    announce: Script,
}

impl Scripts {
    fn new() -> Self {
        let s = |body: &str| Script::new(&format!("{NOW}{body}"));
        let guarded = |body: &str| Script::new(&format!("{NOW}{GUARD}{body}"));
        Self {
            init: guarded(INIT),
            renew_source: format!("{NOW}{GUARD}{RENEW}"),
            acquire: guarded(ACQUIRE),
            release: s(RELEASE),
            renew: guarded(RENEW),
            inspect: s(INSPECT),
            cleanup: s(CLEANUP),
            force: s(FORCE),
            announce: s(ANNOUNCE),
        }
    }
}

/// The hash slots of a Redis Cluster, computed as the servers do (CRC16 of the key's hash
/// tag), and a short tag for each slot, so that a key can be named in any slot.
mod slots {
    use std::sync::OnceLock;

    /// How many hash slots a cluster has.
    pub(super) const COUNT: u16 = 16384;

    /// The slot of `key`: the CRC16 of its hash tag (the text between the first `{` and the
    /// first `}` after it, when not empty), or of the whole key.
    pub(super) fn of(key: &[u8]) -> u16 {
        let tag = key.iter().position(|&b| b == b'{').and_then(|open| {
            let rest = &key[open + 1..];
            let close = rest.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &rest[..close])
        });
        crc16::State::<crc16::XMODEM>::calculate(tag.unwrap_or(key)) % COUNT
    }

    /// The first decimal number whose CRC16 falls in `slot`: `{tag}` names a key in it.
    pub(super) fn tag(slot: u16) -> &'static str {
        static TAGS: OnceLock<Vec<Box<str>>> = OnceLock::new();
        let tags = TAGS.get_or_init(|| {
            let mut tags: Vec<Option<Box<str>>> = vec![None; usize::from(COUNT)];
            let mut missing = tags.len();
            let mut n = 0u64;
            while missing > 0 {
                let text = n.to_string();
                let slot = usize::from(of(text.as_bytes()));
                if tags[slot].is_none() {
                    tags[slot] = Some(text.into_boxed_str());
                    missing -= 1;
                }
                n += 1;
            }
            tags.into_iter().flatten().collect()
        });
        &tags[usize::from(slot % COUNT)]
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn slots_match_the_servers_and_every_slot_has_a_tag() {
            // Known values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
            assert_eq!(super::of(b"123456789"), 0x31C3);
            assert_eq!(super::of(b"foo"), 12182);
            assert_eq!(super::of(b"{user1000}.following"), super::of(b"user1000"));
            assert_eq!(super::of(b"foo{}{bar}"), super::of(b"foo{}{bar}"));
            assert_eq!(super::of(b"foo{{bar}}zap"), super::of(b"{bar"));
            for slot in 0..super::COUNT {
                let tag = super::tag(slot);
                assert_eq!(super::of(format!("x{{{tag}}}y").as_bytes()), slot);
            }
        }
    }
}

/// One server through a connection manager, or a cluster through the redis crate's
/// cluster connection (which follows `MOVED`/`ASK` and the cluster's topology).
#[derive(Clone)]
enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl redis::aio::ConnectionLike for Connection {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// What this instance knows of the store's markers.
#[derive(Debug, Default)]
struct Epoch {
    /// The markers' ids, once seen: by hash slot on a cluster, under slot 0 on one server.
    ids: HashMap<u16, String>,
    /// The longest lease the store has granted, in ms.
    longest: u64,
    /// Until when (server clock, ms) the store grants nothing, as last seen.
    after: i64,
}

/// How many keys one `SCAN` call looks at, and how many leases are read at once.
const BATCH: usize = 500;

/// A [`LockStore`] in Redis: one server, or a Redis Cluster.
///
/// ```no_run
/// use std::time::Duration;
/// use conc_lock_store::{LockRequest, LockStore, RedisConfig, RedisLockStore};
///
/// # async fn example() -> Result<(), conc_lock_store::LockError> {
/// let store = RedisLockStore::connect("redis://127.0.0.1:6379", RedisConfig::default()).await?;
/// // or a cluster, named by any of its nodes:
/// // RedisLockStore::connect("redis+cluster://10.0.0.1:7000,10.0.0.2:7000", RedisConfig::default())
/// let request = LockRequest::new("conversation:1", "worker-a", Duration::from_secs(30));
/// if let Some(lease) = store.try_acquire(&request).await? {
///     store.release(&lease).await?;
/// }
/// # Ok(())
/// # }
/// ```
pub struct RedisLockStore {
    connection: Connection,
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
            .field("cluster", &self.is_cluster())
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

fn parse_error(context: &'static str) -> impl Fn(redis::ParsingError) -> LockError {
    move |e| LockError::Backend {
        backend: BACKEND,
        message: format!("{context}: unexpected reply: {e}"),
        source: None,
    }
}

fn connect_timed_out(limit: Duration) -> LockError {
    LockError::Connect {
        backend: BACKEND,
        cause: crate::ConnectFailure::Timeout,
        message: format!("connecting took longer than {limit:?}"),
    }
}

fn timed_out(what: &str, limit: Duration) -> LockError {
    LockError::Backend {
        backend: BACKEND,
        message: format!("{what} took longer than {limit:?}"),
        source: None,
    }
}

/// The node URLs of a `redis+cluster://` or `rediss+cluster://` URL
/// (`redis+cluster://[user:password@]host:port[,host:port…][/db][?query]`), or `None` for
/// any other URL.
fn cluster_nodes(url: &str) -> Option<Result<Vec<String>, LockError>> {
    let (scheme, rest) = if let Some(rest) = url.strip_prefix("redis+cluster://") {
        ("redis", rest)
    } else {
        ("rediss", url.strip_prefix("rediss+cluster://")?)
    };
    let (rest, query) = match rest.split_once('?') {
        Some((rest, query)) => (rest, format!("?{query}")),
        None => (rest, String::new()),
    };
    let (credentials, hosts) = match rest.rsplit_once('@') {
        Some((credentials, hosts)) => (format!("{credentials}@"), hosts),
        None => (String::new(), rest),
    };
    let (hosts, path) = match hosts.split_once('/') {
        Some((hosts, path)) => (hosts, format!("/{path}")),
        None => (hosts, String::new()),
    };
    let nodes: Vec<String> = hosts
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(|host| format!("{scheme}://{credentials}{host}{path}{query}"))
        .collect();
    if nodes.is_empty() {
        return Some(Err(LockError::InvalidUrl {
            reason: format!(
                "`{url}` names no node: write redis+cluster://HOST:PORT,HOST:PORT (any nodes of the cluster)"
            ),
        }));
    }
    Some(Ok(nodes))
}

/// A client for one server, with the root certificate an `sslrootcert=` option names.
fn client_for(url: &str) -> Result<redis::Client, LockError> {
    let split = crate::tls::split(url);
    match &split.root_cert {
        Some(path) => redis::Client::build_with_tls(
            split.url.as_str(),
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(crate::tls::read_root_cert(BACKEND, path)?),
            },
        ),
        None => redis::Client::open(split.url.as_str()),
    }
    .map_err(|e| LockError::InvalidUrl {
        reason: format!("bad Redis URL: {e}"),
    })
}

/// A live lease's fields, as the inspect script returns them.
struct InfoFields {
    owner: String,
    metadata: Metadata,
    fence: u64,
    acquired_at: i64,
    expires_at: i64,
}

impl redis::FromRedisValue for InfoFields {
    fn from_redis_value(value: redis::Value) -> Result<Self, redis::ParsingError> {
        let fields: Vec<redis::Value> = redis::from_redis_value(value)?;
        if fields.len() < 5 || fields.len().is_multiple_of(2) {
            return Err(format!(
                "the inspect script returned {} fields, not 5 and name/value pairs",
                fields.len()
            )
            .into());
        }
        let mut fields = fields.into_iter();
        let mut next = || fields.next().unwrap_or(redis::Value::Nil);
        let owner: String = redis::from_redis_value(next())?;
        // Leases written by earlier versions keep their metadata as one JSON field.
        let mut metadata = decode_metadata(&redis::from_redis_value::<String>(next())?);
        let fence = redis::from_redis_value(next())?;
        let acquired_at = redis::from_redis_value(next())?;
        let expires_at = redis::from_redis_value(next())?;
        let rest: Vec<String> = fields
            .map(redis::from_redis_value)
            .collect::<Result<_, _>>()?;
        for pair in rest.chunks_exact(2) {
            metadata.insert(pair[0].clone(), pair[1].clone());
        }
        Ok(Self {
            owner,
            metadata,
            fence,
            acquired_at,
            expires_at,
        })
    }
}

/// The guard's part of a reply: epoch id, grant-after (ms), longest lease (ms), wiped.
type GuardReply = (String, i64, u64, i64);

/// An acquire's reply: status, the guard's part, and a granted lease's fence and times.
type AcquireReply = (i64, GuardReply, Option<(u64, i64, i64)>);

/// Escapes the glob characters of `text` for `SCAN … MATCH`.
fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

impl RedisLockStore {
    /// Connects to `url` and checks the server; see [`from_client`](Self::from_client) for
    /// what is checked.
    ///
    /// - One server: `redis://host:port/db`, `rediss://host:port` for TLS (with
    ///   `?sslrootcert=/path/ca.pem` for a private CA), through a connection manager that
    ///   reconnects on its own.
    /// - A Redis Cluster: `redis+cluster://host:port,host:port` (or `rediss+cluster://`),
    ///   naming any of its nodes; see [`connect_cluster`](Self::connect_cluster).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: at most the store's marker is written on connect.
    pub async fn connect(url: &str, config: RedisConfig) -> Result<Self, LockError> {
        if let Some(nodes) = cluster_nodes(url) {
            return Self::connect_cluster(&nodes?, config).await;
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
        let mut root_cert = None;
        for node in nodes {
            let split = crate::tls::split(node.as_ref());
            if let Some(path) = &split.root_cert {
                root_cert = Some(crate::tls::read_root_cert(BACKEND, path)?);
            }
            urls.push(split.url);
        }
        if urls.is_empty() {
            return Err(LockError::InvalidUrl {
                reason: "a Redis Cluster needs at least one node URL".into(),
            });
        }
        let mut builder = redis::cluster::ClusterClientBuilder::new(urls.clone())
            .connection_timeout(config.connect_timeout)
            .response_timeout(config.op_timeout)
            .retries(2);
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
        Self::assemble(Connection::Cluster(connection), subscribers, config).await
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
            .set_response_timeout(Some(config.op_timeout))
            .set_number_of_retries(3);
        let connect = client.get_connection_manager_with_config(manager_config);
        let connection = tokio::time::timeout(config.connect_timeout, connect)
            .await
            .map_err(|_| connect_timed_out(config.connect_timeout))?
            .map_err(connect_error)?;
        Self::assemble(Connection::Single(connection), vec![client], config).await
    }

    /// The checks and the subscription common to one server and a cluster.
    async fn assemble(
        connection: Connection,
        subscribers: Vec<redis::Client>,
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
            config,
            scripts: Scripts::new(),
            epoch: Arc::default(),
            watchers: watchers.clone(),
            _subscriber: stop,
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
    async fn query<T: redis::FromRedisValue>(
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
    async fn masters(&self) -> Result<Vec<Option<u16>>, LockError> {
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
    async fn scan(&self, pattern: &str) -> Result<Vec<String>, LockError> {
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
    async fn check_eviction_policy(&self) -> Result<(), LockError> {
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
    fn marker_key(&self, slot: u16) -> String {
        if self.is_cluster() {
            format!("{}epoch:{{{}}}", self.config.prefix, slots::tag(slot))
        } else {
            format!("{}epoch", self.config.prefix)
        }
    }

    /// The slot whose marker guards `lock_key`: its hash slot on a cluster, 0 on one server.
    fn guard_slot(&self, lock_key: &str) -> u16 {
        if self.is_cluster() {
            slots::of(lock_key.as_bytes())
        } else {
            0
        }
    }

    /// The guard's arguments: the marker key, the known id, a fresh id, the delay.
    fn guard_args(&self, slot: u16, invocation: &mut redis::ScriptInvocation<'_>) {
        let (marker, known, fresh, delay) = self.guard_values(slot);
        invocation.key(marker).arg(known).arg(fresh).arg(delay);
    }

    /// The values of [`guard_args`](Self::guard_args): marker key, known id, fresh id,
    /// delay (ms).
    fn guard_values(&self, slot: u16) -> (String, String, String, u64) {
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
            crate::random::shared_token(),
            ms(delay),
        )
    }

    /// Remembers the marker as the server reported it; warns once per wipe found.
    fn learn(&self, slot: u16, (id, after, longest, wiped): &GuardReply) {
        let mut epoch = self.epoch.lock();
        let known = epoch.ids.get(&slot).is_some_and(|known| known == id);
        if *wiped == 1 && !known {
            tracing::warn!(
                prefix = %self.config.prefix,
                slot,
                until = %crate::clock::format_time(from_unix_millis(*after)),
                "the Redis lock store lost its state (a restart without persistence, a flush, an eviction or a failover): no lock is granted there until every lease that could still be live has run out"
            );
            self.watchers.notify_all();
        }
        if !known {
            epoch.ids.insert(slot, id.clone());
        }
        epoch.longest = epoch.longest.max(*longest);
        epoch.after = epoch.after.max(*after);
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
        let token = crate::random::shared_token();
        let lock_key = self.lock_key(&request.key);
        let slot = self.guard_slot(&lock_key);
        let mut invocation = self.scripts.acquire.prepare_invoke();
        self.guard_args(slot, &mut invocation);
        invocation
            .key(lock_key)
            .arg(&request.key)
            .arg(&request.owner)
            .arg(&token)
            .arg(request.metadata.len())
            .arg(ms(request.ttl))
            .arg(ms(self.config.grace))
            .arg(if force { "1" } else { "0" })
            .arg(self.events_channel());
        for (name, value) in &request.metadata {
            invocation.arg(name).arg(value);
        }
        let sent = tokio::time::Instant::now();
        let reply: Vec<redis::Value> = self.run("acquire", &invocation).await?;
        let parse = || -> Result<AcquireReply, redis::ParsingError> {
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
        let (status, guard, granted) = parse().map_err(parse_error("acquire"))?;
        self.learn(slot, &guard);
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

    /// The hash of the lease on `key`: `<prefix>lock:{<key>}`, its own hash slot.
    fn lock_key(&self, key: &str) -> String {
        format!("{}lock:{{{key}}}", self.config.prefix)
    }

    /// The lock key's user key, if `name` is one of this store's lock keys.
    fn user_key<'a>(&self, name: &'a str) -> Option<&'a str> {
        name.strip_prefix(self.config.prefix.as_str())?
            .strip_prefix("lock:{")?
            .strip_suffix('}')
    }

    /// The live lease in the hash `lock_key`, if any.
    async fn inspect_lock_key(&self, lock_key: String) -> Result<Option<InfoFields>, LockError> {
        let mut invocation = self.scripts.inspect.prepare_invoke();
        invocation.key(lock_key);
        self.run("inspect", &invocation).await
    }

    /// Runs a prepared script invocation within the operation timeout; the connection
    /// reconnects after a dropped connection, and one failed try is retried.
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
                Err(_) => return Err(timed_out(what, self.config.op_timeout)),
            }
        }
    }
}

/// Subscribes to the store's events and wakes the watchers of each key named; after a
/// lost connection it wakes every watcher (it cannot tell what it missed) and subscribes
/// again, through the next of `clients` (the nodes of a cluster). Ends when the store is
/// dropped.
async fn subscribe(
    clients: Vec<redis::Client>,
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
    let mut turn = 0usize;
    loop {
        let client = &clients[turn % clients.len().max(1)];
        turn = turn.wrapping_add(1);
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

fn info(key: String, fields: InfoFields) -> LockInfo {
    LockInfo {
        key,
        owner: fields.owner,
        metadata: fields.metadata,
        fence: fields.fence,
        acquired_at: from_unix_millis(fields.acquired_at),
        expires_at: from_unix_millis(fields.expires_at),
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
            .arg(&lease.key)
            .arg(&lease.token)
            .arg(ms(ttl))
            .arg(ms(self.config.grace))
            .arg(self.events_channel());
        let sent = tokio::time::Instant::now();
        let (id, after, longest, wiped, renewed): (String, i64, u64, i64, Option<i64>) =
            self.run("renew", &invocation).await?;
        self.learn(slot, &(id, after, longest, wiped));
        lease.renewed(renewed.map(from_unix_millis), ttl, sent)
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
                .arg(&lease.key)
                .arg(&lease.token)
                .arg(ms(lease.ttl))
                .arg(ms(self.config.grace))
                .arg(self.events_channel());
            pipe.add_command(command);
            out.push(None);
        }
        type RenewReply = (String, i64, u64, i64, Option<i64>);
        let sent = tokio::time::Instant::now();
        let mut replies: Result<Vec<redis::RedisResult<RenewReply>>, LockError> =
            Err(timed_out("renew", self.config.op_timeout));
        for attempt in 0..2 {
            let mut connection = self.connection.clone();
            let call = pipe.query_async::<Vec<redis::RedisResult<RenewReply>>>(&mut connection);
            replies = match tokio::time::timeout(self.config.op_timeout, call).await {
                Ok(Ok(replies)) => Ok(replies),
                Ok(Err(e)) => Err(redis_error("renew")(e)),
                Err(_) => Err(timed_out("renew", self.config.op_timeout)),
            };
            let missing_script = matches!(&replies, Ok(r) if r.iter().any(|reply| matches!(reply, Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript))));
            if attempt == 0 && missing_script {
                // A restarted server forgot the script: load it and send the batch again.
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
            Ok(replies) => {
                let mut replies = replies.into_iter();
                for (slot, lease) in out.iter_mut().zip(leases) {
                    if slot.is_some() {
                        continue;
                    }
                    *slot = Some(match replies.next() {
                        Some(Ok((id, after, longest, wiped, renewed))) => {
                            self.learn(0, &(id, after, longest, wiped));
                            lease.renewed(renewed.map(from_unix_millis), lease.ttl, sent)
                        }
                        Some(Err(e)) => Err(redis_error("renew")(e)),
                        None => Err(LockError::Backend {
                            backend: BACKEND,
                            message: "renew: a batched reply is missing".into(),
                            source: None,
                        }),
                    });
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
        let token = crate::random::shared_token();
        let acquire = || {
            let mut invocation = store.scripts.acquire.prepare_invoke();
            store.guard_args(0, &mut invocation);
            invocation
                .key(store.lock_key("k"))
                .arg("k")
                .arg("owner")
                .arg(&token)
                .arg(0)
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
