//! The query options each store's driver reads from a URL, which conc passes on: the URL
//! parser refuses any other option (a typo must not be dropped in silence), and the
//! PostgreSQL backend and the Redis client check a URL given to them directly against the
//! same lists ([`refuse_unknown`]).

/// What tokio-postgres reads from a URL's query, with `sslrootcert` (conc's TLS).
pub(crate) const POSTGRES_DRIVER: &[&str] = &[
    "user",
    "password",
    "dbname",
    "options",
    "application_name",
    "sslmode",
    "sslnegotiation",
    "sslrootcert",
    "host",
    "hostaddr",
    "port",
    "connect_timeout",
    "tcp_user_timeout",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_retries",
    "target_session_attrs",
    "channel_binding",
    "load_balance_hosts",
];

/// What the redis crate reads from a `redis://` URL's query, with `sslrootcert`.
pub(crate) const REDIS_DRIVER: &[&str] = &["sslrootcert", "protocol", "db", "user", "pass"];

/// What a `redis+sentinel://` URL's query may hold besides conc's own options.
pub(crate) const SENTINEL_DRIVER: &[&str] =
    &["sslrootcert", "sentinel_username", "sentinel_password"];

/// What an `etcd://` URL's query may hold besides conc's own options.
pub(crate) const ETCD_DRIVER: &[&str] = &["sslrootcert"];

/// `Ok` if every query option of `url` is one of `driver`'s; else `LockError::InvalidUrl`
/// naming the option, `what` the URL is, the driver's options, and `own`: the options
/// [`connect`](crate::connect) reads besides.
#[cfg(any(feature = "postgres", feature = "redis"))]
pub(crate) fn refuse_unknown(
    url: &str,
    driver: &[&str],
    what: &str,
    own: &str,
) -> Result<(), crate::error::LockError> {
    let Some((_, query)) = url.split_once('?') else {
        return Ok(());
    };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let name = pair.split_once('=').map_or(pair, |(name, _)| name);
        if !driver.contains(&name) {
            return Err(crate::error::LockError::InvalidUrl {
                reason: format!(
                    "unknown option `{name}` in {what}; the driver reads {}, and conc_lock_store::connect also reads {own}",
                    driver.join(", ")
                ),
            });
        }
    }
    Ok(())
}
