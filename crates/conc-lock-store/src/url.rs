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
    "durability",
    "op_timeout",
    "connect_timeout",
];

/// A duration option: a number with a unit (`500ms`, `5s`), or a bare number in
/// `bare_unit` (`"ms"` or `"s"`).
#[cfg(any(feature = "postgres", feature = "redis", feature = "etcd"))]
fn duration_option(
    url: &StoreUrl,
    name: &str,
    bare_unit: &str,
) -> Result<Option<std::time::Duration>, LockError> {
    let Some(text) = url.option(name) else {
        return Ok(None);
    };
    let (number, unit) = match text.strip_suffix("ms") {
        Some(number) => (number, "ms"),
        None => match text.strip_suffix('s') {
            Some(number) => (number, "s"),
            None => (text, bare_unit),
        },
    };
    let duration = number.parse::<u64>().ok().and_then(|n| match unit {
        "ms" => Some(std::time::Duration::from_millis(n)),
        _ => n.checked_mul(1000).map(std::time::Duration::from_millis),
    });
    match duration {
        Some(duration) if !duration.is_zero() => Ok(Some(duration)),
        _ => Err(LockError::InvalidUrl {
            reason: format!(
                "{name} is a duration above 0 such as `500ms` or `5s` (a bare number counts {}), not `{text}`",
                if bare_unit == "ms" {
                    "milliseconds"
                } else {
                    "seconds"
                }
            ),
        }),
    }
}

/// Sets `op_timeout` (bare number: ms) and `connect_timeout` (bare number: seconds, as
/// libpq reads it) from the URL.
#[cfg(any(feature = "postgres", feature = "redis", feature = "etcd"))]
fn timeouts(
    url: &StoreUrl,
    op_timeout: &mut std::time::Duration,
    connect_timeout: &mut std::time::Duration,
) -> Result<(), LockError> {
    if let Some(limit) = duration_option(url, "op_timeout", "ms")? {
        *op_timeout = limit;
    }
    if let Some(limit) = duration_option(url, "connect_timeout", "s")? {
        *connect_timeout = limit;
    }
    Ok(())
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
    // An option that no one reads would be dropped in silence: a typo (`prefx=`) would
    // put the user's locks in the shared default namespace. Refuse it, naming the valid.
    let (own, driver) = known_options(kind, base);
    for (name, _) in &options {
        if !own.contains(&name.as_str()) {
            return Err(unknown_option(kind, name, own, driver));
        }
    }
    for pair in &kept {
        let name = pair.split_once('=').map_or(*pair, |(name, _)| name);
        if !driver.contains(&name) {
            return Err(unknown_option(kind, name, own, driver));
        }
    }
    if let Some(value) = options
        .iter()
        .rev()
        .find(|(name, _)| name == "allow_eviction")
        .map(|(_, value)| value)
        && !["true", "false", "1", "0"].contains(&value.as_str())
    {
        return Err(bad(format!(
            "allow_eviction is true or false, not `{value}`"
        )));
    }
    Ok(StoreUrl {
        kind,
        target,
        options,
    })
}

/// The options of conc's own that a store of `kind` reads, and its driver's.
fn known_options(
    kind: StoreKind,
    base: &str,
) -> (&'static [&'static str], &'static [&'static str]) {
    match kind {
        StoreKind::Memory | StoreKind::Sqlite => (&[], &[]),
        StoreKind::Postgres => (
            &[
                "schema",
                "table",
                "pool_size",
                "pool_mode",
                "listen_url",
                "watch_interval",
                "durability",
                "op_timeout",
                "connect_timeout",
            ],
            crate::util::options::POSTGRES_DRIVER,
        ),
        StoreKind::Redis if base.contains("+sentinel://") => {
            (REDIS_OWN_OPTIONS, crate::util::options::SENTINEL_DRIVER)
        }
        StoreKind::Redis => (REDIS_OWN_OPTIONS, crate::util::options::REDIS_DRIVER),
        StoreKind::Etcd => (
            &["prefix", "op_timeout", "connect_timeout"],
            crate::util::options::ETCD_DRIVER,
        ),
    }
}

const REDIS_OWN_OPTIONS: &[&str] = &[
    "prefix",
    "allow_eviction",
    "min_replicas",
    "replica_timeout",
    "op_timeout",
    "connect_timeout",
];

fn unknown_option(kind: StoreKind, name: &str, own: &[&str], driver: &[&str]) -> LockError {
    let what = match kind {
        StoreKind::Memory => "the memory store",
        StoreKind::Sqlite => "a SQLite URL",
        StoreKind::Postgres => "a PostgreSQL URL",
        StoreKind::Redis => "a Redis URL",
        StoreKind::Etcd => "an etcd URL",
    };
    let valid: Vec<&str> = own.iter().chain(driver).copied().collect();
    LockError::InvalidUrl {
        reason: if valid.is_empty() {
            format!("unknown option `{name}`: {what} takes no options")
        } else {
            format!(
                "unknown option `{name}` for {what}; it takes {}",
                valid.join(", ")
            )
        },
    }
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
/// (a direct URL for the one `LISTEN` connection, percent-encoded), `watch_interval=`
/// (ms, for polling without `LISTEN`) and `durability=guard` (no disk flush per grant; a
/// crash is waited out: [`PostgresDurability`](crate::PostgresDurability)) for PostgreSQL, `prefix=`, `min_replicas=` and
/// `replica_timeout=` (ms: every lock write waits for that many replicas)
/// and `allow_eviction=true` for Redis, `prefix=` for etcd, and TLS from `sslmode=` and `sslrootcert=`
/// (PostgreSQL) or the `rediss://` scheme (Redis, with `sslrootcert=` for a private CA).
///
/// Every networked store (PostgreSQL, Redis, etcd) also reads `op_timeout=` (default
/// `5s`: how long one request, its retries included, may wait for the store's answer; a
/// caller's wait or a lease's validity can make it shorter; a bare number counts
/// milliseconds) and `connect_timeout=` (default `5s`: how long connecting may take; a
/// bare number counts seconds, as in libpq). Both take a unit: `500ms`, `3s`.
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
            timeouts(&parsed, &mut config.op_timeout, &mut config.connect_timeout)?;
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
            if let Some(durability) = parsed.option("durability") {
                config.durability =
                    crate::backend::postgres::PostgresDurability::parse(durability)?;
            }
            Ok(Arc::new(
                crate::backend::postgres::PostgresLockStore::connect(&parsed.target, config)
                    .await?,
            ))
        }
        #[cfg(feature = "redis")]
        StoreKind::Redis => {
            let mut config = crate::backend::redis::RedisConfig::default();
            timeouts(&parsed, &mut config.op_timeout, &mut config.connect_timeout)?;
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
            timeouts(&parsed, &mut config.op_timeout, &mut config.connect_timeout)?;
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
    fn an_option_no_one_reads_is_refused_by_name() {
        for (url, name) in [
            ("redis://h:6379?prefx=app:", "prefx"),
            ("redis://h:6379?allow_evictoin=true", "allow_evictoin"),
            ("redis://h:6379?schema=x", "schema"),
            ("rediss+cluster://h:7000,h:7001?tabel=x", "tabel"),
            (
                "redis+sentinel://s:26379/main?sentinel_pasword=x",
                "sentinel_pasword",
            ),
            ("postgres://u@h/db?shcema=x", "shcema"),
            ("postgres://u@h/db?prefix=x", "prefix"),
            ("etcd://h:2379?table=x", "table"),
            ("sqlite:/tmp/x.db?prefix=x", "prefix"),
        ] {
            let error = parse_url(url).unwrap_err();
            let text = error.to_string();
            assert!(
                matches!(error, LockError::InvalidUrl { .. }),
                "{url}: {text}"
            );
            assert!(text.contains(&format!("`{name}`")), "{url}: {text}");
            assert!(
                !error.is_transient(),
                "{url}: a typo is never worth a retry"
            );
        }
        let text = parse_url("redis://h?prefx=a").unwrap_err().to_string();
        assert!(
            text.contains("prefix, allow_eviction"),
            "names the valid ones: {text}"
        );
        let error = parse_url("redis://h?allow_eviction=yes").unwrap_err();
        assert!(error.to_string().contains("true or false"), "{error}");
        // The drivers' own options pass.
        for url in [
            "redis://h:6379?protocol=resp3&prefix=a:",
            "postgres://u@h/db?sslmode=require&application_name=x&keepalives=1",
            "etcds://h:2379?sslrootcert=/ca.pem",
            "redis+sentinel://s:26379/main?sentinel_password=x&min_replicas=1",
        ] {
            parse_url(url).unwrap_or_else(|e| panic!("{url}: {e}"));
        }
    }

    #[cfg(any(feature = "postgres", feature = "redis", feature = "etcd"))]
    #[test]
    fn timeouts_parse_with_their_units() {
        let url = parse_url("redis://h?op_timeout=750&connect_timeout=3").unwrap();
        let (mut op, mut connect) = (std::time::Duration::ZERO, std::time::Duration::ZERO);
        timeouts(&url, &mut op, &mut connect).unwrap();
        assert_eq!(
            op,
            std::time::Duration::from_millis(750),
            "a bare op_timeout is ms"
        );
        assert_eq!(
            connect,
            std::time::Duration::from_secs(3),
            "a bare connect_timeout is s, as in libpq"
        );
        let url = parse_url("postgres://u@h/db?op_timeout=2s&connect_timeout=500ms").unwrap();
        timeouts(&url, &mut op, &mut connect).unwrap();
        assert_eq!(
            (op, connect),
            (
                std::time::Duration::from_secs(2),
                std::time::Duration::from_millis(500)
            )
        );
        assert_eq!(
            url.target, "postgres://u@h/db",
            "conc's options are not the driver's"
        );
        for bad in ["op_timeout=0", "op_timeout=fast", "connect_timeout=-1s"] {
            let url = parse_url(&format!("redis://h?{bad}")).unwrap();
            let error = timeouts(&url, &mut op, &mut connect).unwrap_err();
            assert!(
                matches!(error, LockError::InvalidUrl { .. }),
                "{bad}: {error}"
            );
        }
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
