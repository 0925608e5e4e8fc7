//! The query options each store's driver reads from a URL, which conc passes on: the URL
//! parser refuses any other option (a typo must not be dropped in silence), and the
//! PostgreSQL backend checks a URL given to it directly against the same list.

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
