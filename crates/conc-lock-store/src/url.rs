//! [`connect`]: one parser for every lock store URL, as `object_store::parse_url` is for
//! object stores.

use std::sync::Arc;

use crate::error::LockError;
use crate::store::LockStore;

/// A URL split into its scheme part and the options conc reads from its query string; the
/// other query options stay on the URL for the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreUrl {
    /// What kind of store.
    pub kind: StoreKind,
    /// The URL without conc's options (for SQLite, the file's path).
    pub target: String,
    /// conc's options (`schema`, `table`, `prefix`, `allow_eviction`, …), in order.
    pub options: Vec<(String, String)>,
}

/// The kinds of store a URL can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StoreKind {
    /// `memory`: this process only.
    Memory,
    /// `sqlite:PATH` (or `sqlite://PATH`).
    Sqlite,
    /// `postgres://…` or `postgresql://…`.
    Postgres,
    /// `redis://…` or `rediss://…` (TLS); a Redis Cluster: `redis+cluster://HOST:PORT,HOST:PORT`
    /// (`rediss+cluster://` for TLS); a primary that Sentinels watch:
    /// `redis+sentinel://HOST:PORT,HOST:PORT/MASTER_NAME` (`rediss+sentinel://` for TLS).
    Redis,
    /// `etcd://HOST:PORT[,HOST:PORT…]` (`etcds://` for TLS).
    Etcd,
}

/// The query options conc reads itself; every other one is the driver's.
const OWN: &[&str] = &[
    "schema",
    "table",
    "prefix",
    "allow_eviction",
    "pool_size",
    "pool_mode",
    "listen_url",
    "watch_interval",
    "min_replicas",
    "replica_timeout",
    "op_timeout",
    "connect_timeout",
];

/// A `*_timeout=` option in milliseconds.
#[cfg(any(feature = "postgres", feature = "redis", feature = "etcd"))]
fn millis_option(url: &StoreUrl, name: &str) -> Result<Option<std::time::Duration>, LockError> {
    let Some(ms) = url.option(name) else {
        return Ok(None);
    };
    match ms.parse::<u64>() {
        Ok(ms) if ms > 0 => Ok(Some(std::time::Duration::from_millis(ms))),
        _ => Err(LockError::InvalidUrl {
            reason: format!("{name} is a number of milliseconds above 0, such as 2000, not `{ms}`"),
        }),
    }
}

/// Parses a store URL: `memory`, `sqlite:PATH`, `postgres://` or `postgresql://`, `redis://`
/// or `rediss://`, `redis+cluster://` or `rediss+cluster://` (any nodes, comma-separated),
/// `redis+sentinel://` or `rediss+sentinel://` (the Sentinels, comma-separated, then
/// `/MASTER_NAME`), `etcd://` or `etcds://` (any members, comma-separated), with options in
/// the query string. Bad input is a typed error saying
/// what would be right.
pub fn parse_url(url: &str) -> Result<StoreUrl, LockError> {
    let bad = |reason: String| LockError::InvalidUrl { reason };
    let url = url.trim();
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut options = Vec::new();
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if OWN.contains(&name) {
            if value.is_empty() {
                return Err(bad(format!(
                    "the option `{name}` needs a value, as in `{name}=…`"
                )));
            }
            options.push((name.to_owned(), value.to_owned()));
        } else {
            kept.push(pair);
        }
    }
    let rebuilt = |base: &str| {
        if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        }
    };
    let (kind, target) = if base == "memory" {
        (StoreKind::Memory, String::new())
    } else if let Some(path) = base
        .strip_prefix("sqlite://")
        .or_else(|| base.strip_prefix("sqlite:"))
    {
        if path.is_empty() {
            return Err(bad(
                "`sqlite:` needs a path, as in `sqlite:/var/lib/app/locks.db`".into(),
            ));
        }
        (StoreKind::Sqlite, path.to_owned())
    } else if base.starts_with("postgres://") || base.starts_with("postgresql://") {
        (StoreKind::Postgres, rebuilt(base))
    } else if [
        "redis://",
        "rediss://",
        "redis+cluster://",
        "rediss+cluster://",
        "redis+sentinel://",
        "rediss+sentinel://",
    ]
    .iter()
    .any(|scheme| base.starts_with(scheme))
    {
        (StoreKind::Redis, rebuilt(base))
    } else if base.starts_with("etcd://") || base.starts_with("etcds://") {
        (StoreKind::Etcd, rebuilt(base))
    } else {
        return Err(bad(format!(
            "unknown store `{url}`: use memory, sqlite:PATH, postgres://USER@HOST/DB, redis://HOST:PORT (rediss:// for TLS), redis+cluster://HOST:PORT,HOST:PORT, redis+sentinel://HOST:PORT,HOST:PORT/MASTER_NAME or etcd://HOST:PORT,HOST:PORT"
        )));
    };
    Ok(StoreUrl {
        kind,
        target,
        options,
    })
}

impl StoreUrl {
    /// The value of conc's option `name`, if given.
    pub fn option(&self, name: &str) -> Option<&str> {
        self.options
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Opens the lock store `url` names (see [`parse_url`]), with the default settings and
/// conc's options from the query string: `schema=`, `table=`, `pool_size=`,
/// `pool_mode=transaction` (behind a transaction pooler such as PgBouncer), `listen_url=`
/// (a direct URL for the one `LISTEN` connection, percent-encoded) and `watch_interval=`
/// (ms, for polling without `LISTEN`) for PostgreSQL, `prefix=`, `min_replicas=` and
/// `replica_timeout=` (ms: every lock write waits for that many replicas)
/// and `allow_eviction=true` for Redis, `prefix=` for etcd, and TLS from `sslmode=` and `sslrootcert=`
/// (PostgreSQL) or the `rediss://` scheme (Redis, with `sslrootcert=` for a private CA).
///
/// Every networked store (PostgreSQL, Redis, etcd) also reads `op_timeout=` (ms, default
/// 5000: how long one request, its retries included, may wait for the store's answer;
/// a caller's wait or a lease's validity can make it shorter) and `connect_timeout=` (ms,
/// default 5000: how long connecting may take).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let store = conc_lock_store::connect("memory").await.unwrap();
/// assert!(conc_lock_store::connect("mysql://db").await.is_err());
/// # let _ = store;
/// # }
/// ```
///
/// # Cancel safety
///
/// Dropping the future may leave a schema or table created; nothing else.
pub async fn connect(url: &str) -> Result<Arc<dyn LockStore>, LockError> {
    let parsed = parse_url(url)?;
    match parsed.kind {
        StoreKind::Memory => Ok(Arc::new(crate::backend::memory::MemoryLockStore::new())),
        #[cfg(feature = "sqlite")]
        StoreKind::Sqlite => Ok(Arc::new(
            crate::backend::sqlite::SqliteLockStore::open(&parsed.target).await?,
        )),
        #[cfg(feature = "postgres")]
        StoreKind::Postgres => {
            let mut config = crate::backend::postgres::PostgresConfig::default();
            if let Some(limit) = millis_option(&parsed, "op_timeout")? {
                config.op_timeout = limit;
            }
            if let Some(limit) = millis_option(&parsed, "connect_timeout")? {
                config.connect_timeout = limit;
            }
            if let Some(schema) = parsed.option("schema") {
                config.schema = schema.to_owned();
            }
            if let Some(table) = parsed.option("table") {
                config.table = table.to_owned();
            }
            if let Some(size) = parsed.option("pool_size") {
                config.pool_size = size.parse().map_err(|_| LockError::InvalidUrl {
                    reason: format!("pool_size must be a number, not `{size}`"),
                })?;
            }
            if let Some(mode) = parsed.option("pool_mode") {
                config.pool_mode = crate::backend::postgres::PostgresPoolMode::parse(mode)?;
            }
            if let Some(direct) = parsed.option("listen_url") {
                config.listen_url = Some(crate::util::percent::decode(direct));
            }
            if let Some(ms) = parsed.option("watch_interval") {
                let ms: u64 = ms.parse().map_err(|_| LockError::InvalidUrl {
                    reason: format!("watch_interval is in milliseconds, such as 100, not `{ms}`"),
                })?;
                config.watch_interval = std::time::Duration::from_millis(ms.max(1));
            }
            Ok(Arc::new(
                crate::backend::postgres::PostgresLockStore::connect(&parsed.target, config)
                    .await?,
            ))
        }
        #[cfg(feature = "redis")]
        StoreKind::Redis => {
            let mut config = crate::backend::redis::RedisConfig::default();
            if let Some(limit) = millis_option(&parsed, "op_timeout")? {
                config.op_timeout = limit;
            }
            if let Some(limit) = millis_option(&parsed, "connect_timeout")? {
                config.connect_timeout = limit;
            }
            if let Some(prefix) = parsed.option("prefix") {
                config.prefix = prefix.to_owned();
            }
            if let Some(allow) = parsed.option("allow_eviction") {
                config.allow_eviction = allow == "true" || allow == "1";
            }
            if let Some(n) = parsed.option("min_replicas") {
                config.min_replicas = n.parse().map_err(|_| LockError::InvalidUrl {
                    reason: format!("min_replicas must be a number, not `{n}`"),
                })?;
            }
            if let Some(ms) = parsed.option("replica_timeout") {
                let ms: u64 = ms.parse().map_err(|_| LockError::InvalidUrl {
                    reason: format!("replica_timeout is in milliseconds, such as 500, not `{ms}`"),
                })?;
                config.replica_timeout = std::time::Duration::from_millis(ms);
            }
            Ok(Arc::new(
                crate::backend::redis::RedisLockStore::connect(&parsed.target, config).await?,
            ))
        }
        #[cfg(feature = "etcd")]
        StoreKind::Etcd => {
            let mut config = crate::backend::etcd::EtcdConfig::default();
            if let Some(limit) = millis_option(&parsed, "op_timeout")? {
                config.op_timeout = limit;
            }
            if let Some(limit) = millis_option(&parsed, "connect_timeout")? {
                config.connect_timeout = limit;
            }
            if let Some(prefix) = parsed.option("prefix") {
                config.prefix = prefix.to_owned();
            }
            Ok(Arc::new(
                crate::backend::etcd::EtcdLockStore::connect(&parsed.target, config).await?,
            ))
        }
        #[allow(unreachable_patterns)]
        kind => Err(LockError::InvalidUrl {
            reason: format!(
                "this build of conc-lock-store has no {kind:?} backend: enable its cargo feature"
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "postgres")]
    #[test]
    fn percent_escapes_are_decoded() {
        assert_eq!(
            crate::util::percent::decode("postgres://u@h:5432/db%3Fsslmode%3Drequire%26x%3D1"),
            "postgres://u@h:5432/db?sslmode=require&x=1"
        );
        assert_eq!(crate::util::percent::decode("100%"), "100%");
        assert_eq!(crate::util::percent::decode("%zz"), "%zz");
        let parsed = parse_url(
            "postgres://u@h:6432/db?pool_mode=transaction&listen_url=postgres://u@h:5432/db&sslmode=require",
        )
        .unwrap();
        assert_eq!(parsed.target, "postgres://u@h:6432/db?sslmode=require");
        assert_eq!(parsed.option("pool_mode"), Some("transaction"));
        assert_eq!(parsed.option("listen_url"), Some("postgres://u@h:5432/db"));
    }

    #[test]
    fn urls_parse_with_their_options() {
        let url = parse_url("postgresql://u@h/db?schema=locks&sslmode=require").unwrap();
        assert_eq!(url.kind, StoreKind::Postgres);
        assert_eq!(url.target, "postgresql://u@h/db?sslmode=require");
        assert_eq!(url.option("schema"), Some("locks"));
        let url = parse_url("rediss://h:6380/0?prefix=app:&sslrootcert=/ca.pem").unwrap();
        assert_eq!(url.kind, StoreKind::Redis);
        assert_eq!(url.target, "rediss://h:6380/0?sslrootcert=/ca.pem");
        let url = parse_url("redis+cluster://h1:7000,h2:7000?prefix=app:").unwrap();
        assert_eq!(url.kind, StoreKind::Redis);
        assert_eq!(url.target, "redis+cluster://h1:7000,h2:7000");
        assert_eq!(url.option("prefix"), Some("app:"));
        let url = parse_url("redis+sentinel://s1:26379,s2:26379/main?min_replicas=1").unwrap();
        assert_eq!(url.kind, StoreKind::Redis);
        assert_eq!(url.target, "redis+sentinel://s1:26379,s2:26379/main");
        assert_eq!(url.option("min_replicas"), Some("1"));
        let url = parse_url("etcd://e1:2379,e2:2379?prefix=app/").unwrap();
        assert_eq!(url.kind, StoreKind::Etcd);
        assert_eq!(url.target, "etcd://e1:2379,e2:2379");
        assert_eq!(url.option("prefix"), Some("app/"));
        assert_eq!(parse_url("sqlite:/tmp/x.db").unwrap().target, "/tmp/x.db");
        assert_eq!(parse_url("memory").unwrap().kind, StoreKind::Memory);
        for bad in ["sqlite:", "mysql://x", "", "postgres://h/db?schema="] {
            let error = parse_url(bad).unwrap_err();
            assert!(
                matches!(error, LockError::InvalidUrl { .. }),
                "{bad}: {error}"
            );
        }
    }
}
