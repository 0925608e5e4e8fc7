//! Reaching PostgreSQL: the pool (TLS by `sslmode`/`sslrootcert`), its errors named by
//! cause, and the check of SQL identifiers.

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

use crate::error::LockError;

use super::{BACKEND, PostgresConfig, PostgresPoolMode};

/// The TLS connector of the pools and the notification connections: rustls with the `tls`
/// feature; without it, a type that never connects with TLS (a URL that asks for it is
/// refused before any connection is made).
#[cfg(feature = "tls")]
pub(super) type Tls = tokio_postgres_rustls::MakeRustlsConnect;
/// The TLS connector of the pools and the notification connections: none (this build has
/// no `tls` feature, and a URL that insists on TLS is refused).
#[cfg(not(feature = "tls"))]
pub(super) type Tls = NoTls;

/// A connector of its own for each connection.
#[allow(
    clippy::clone_on_copy,
    reason = "`Tls` is `Copy` only in a build without the `tls` feature"
)]
pub(super) fn connector(tls: &Tls) -> Tls {
    tls.clone()
}

pub(super) fn identifier(name: &str, what: &str) -> Result<String, LockError> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if valid {
        Ok(format!("\"{name}\""))
    } else {
        Err(LockError::Backend {
            backend: BACKEND,
            message: format!(
                "invalid {what} name `{name}`: use 1 to 63 lowercase letters, digits or `_`, not starting with a digit"
            ),
            source: None,
        })
    }
}

pub(super) fn pg_error(context: &'static str) -> impl Fn(tokio_postgres::Error) -> LockError {
    move |e| LockError::backend(BACKEND, format!("{context}: {e}"), e)
}

/// Whether an error means the connection is gone (worth one more try on a fresh one): a
/// closed connection, an I/O error, or a server that shut the session down
/// (`pg_terminate_backend`, a restart).
pub fn is_connection_lost(error: &tokio_postgres::Error) -> bool {
    connection_lost(error)
}

pub(super) fn connection_lost(error: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    error.is_closed()
        || error.code().is_some_and(|c| {
            *c == SqlState::ADMIN_SHUTDOWN
                || *c == SqlState::CRASH_SHUTDOWN
                || *c == SqlState::CANNOT_CONNECT_NOW
        })
        || std::error::Error::source(error).is_some_and(|s| s.is::<std::io::Error>())
}

/// What a transaction pooler does to a client that prepares named statements (each
/// transaction may run on another server connection): a statement the server does not
/// know (`26000`), one it already has under that name (`42P05`), or a message out of
/// turn. Returns what to tell the user, naming the option that fixes it (`None` for any
/// other error). The session store uses it too.
///
/// ```no_run
/// # async fn example(client: &tokio_postgres::Client) {
/// if let Err(error) = client.query("SELECT 1", &[]).await {
///     if let Some(advice) = conc_lock_store::postgres_pooler_symptom(&error) {
///         eprintln!("{advice}");
///     }
/// }
/// # }
/// ```
pub fn pooler_symptom(error: &tokio_postgres::Error) -> Option<String> {
    use tokio_postgres::error::SqlState;
    let code = error.code();
    let pooled = code.is_some_and(|c| {
        *c == SqlState::INVALID_SQL_STATEMENT_NAME || *c == SqlState::DUPLICATE_PSTATEMENT
    }) || {
        let text = error.to_string();
        text.contains("unexpected message") || text.contains("prepared statement")
    };
    pooled.then(|| {
        format!(
            "{error}: the server lost or mixed up a prepared statement, which a pooler in transaction mode (such as PgBouncer's pool_mode = transaction) does; add `pool_mode=transaction` to the URL (PostgresConfig::with_pool_mode)"
        )
    })
}

/// A connection pool for `url`, as the PostgreSQL stores build it: TLS by rustls when the
/// URL asks for it (`sslmode=require`, `verify-ca` or `verify-full`; the certificate and
/// host name are always verified, against the public roots and the PEM file named by
/// `sslrootcert=PATH`), plain otherwise; `statement_timeout` = `op_timeout` on every
/// connection; connect and wait timeouts from `config`. A server certificate that does not
/// verify is refused ([`ConnectFailure::Tls`](crate::error::ConnectFailure::Tls)); there is no
/// silent fallback to plaintext. Without the `tls` feature, a URL whose `sslmode` insists on
/// TLS (`require`, `verify-ca`, `verify-full`) or that names `sslrootcert` is refused with
/// [`LockError::InvalidUrl`](crate::LockError::InvalidUrl) naming the feature. Share it
/// with [`PostgresLockStore`](crate::PostgresLockStore) and the session store, or with the
/// rest of a service.
pub fn postgres_pool(url: &str, config: &PostgresConfig) -> Result<Pool, LockError> {
    build_pool(url, config).map(|(pool, _, _)| pool)
}

/// The pool, the driver configuration (for the LISTEN connection) and the TLS connector.
pub(super) fn build_pool(
    url: &str,
    config: &PostgresConfig,
) -> Result<(Pool, tokio_postgres::Config, Option<Tls>), LockError> {
    let split = crate::backend::tls::split(url);
    crate::util::options::refuse_unknown(
        &split.url,
        crate::util::options::POSTGRES_DRIVER,
        "a PostgreSQL URL",
        "schema, table, pool_size, pool_mode, listen_url, watch_interval, op_timeout and connect_timeout",
    )?;
    let mut pg: tokio_postgres::Config =
        split.url.parse().map_err(|e: tokio_postgres::Error| {
            // The driver's own words are in its source ("invalid value for option
            // `port`"); a configuration error is never worth a retry.
            let detail = std::error::Error::source(&e)
                .map(|source| format!(": {source}"))
                .unwrap_or_default();
            LockError::InvalidUrl {
                reason: format!("bad PostgreSQL URL: {e}{detail}"),
            }
        })?;
    pg.connect_timeout(config.connect_timeout);
    pg.application_name(&config.application_name);
    // No statement may outlive the operation that sent it (a stalled server included),
    // which bounds how long a stalled acquirer can hold an old view of a key: each new
    // connection sets `statement_timeout` (a `SET`, not the `options` startup parameter,
    // which PgBouncer refuses). A transaction pooler shares server connections between
    // clients, so nothing is set on a session there: each operation is bounded by
    // `op_timeout` on the client, and a connection that ran past it is dropped.
    let set_timeout = (config.pool_mode == PostgresPoolMode::Session).then(|| {
        format!(
            "SET statement_timeout = {}",
            config.op_timeout.as_millis().max(1)
        )
    });
    // TLS only when asked for: a URL without `sslmode` stays plain, as before.
    #[cfg(feature = "tls")]
    let tls = match split.ssl_mode.as_deref() {
        None | Some("disable") => None,
        Some(_) => Some(tokio_postgres_rustls::MakeRustlsConnect::new(
            crate::backend::tls::client_config(BACKEND, split.root_cert.as_deref())?,
        )),
    };
    // Without TLS built in, a URL that may go plain does (as libpq built without SSL
    // does); one that insists on TLS is refused, naming the feature.
    #[cfg(not(feature = "tls"))]
    let tls: Option<Tls> = match (split.ssl_mode.as_deref(), &split.root_cert) {
        (_, Some(path)) => {
            let what = format!("sslrootcert={}", path.display());
            return Err(crate::backend::tls::not_built(BACKEND, &what));
        }
        (None | Some("disable" | "allow" | "prefer"), None) => None,
        (Some(mode), None) => {
            let what = format!("sslmode={mode}");
            return Err(crate::backend::tls::not_built(BACKEND, &what));
        }
    };
    let manager_config = ManagerConfig {
        recycling_method: RecyclingMethod::Fast,
    };
    let manager = match &tls {
        Some(tls) => Manager::from_config(pg.clone(), connector(tls), manager_config),
        None => Manager::from_config(pg.clone(), NoTls, manager_config),
    };
    let mut builder = Pool::builder(manager);
    if let Some(set_timeout) = set_timeout {
        let set_timeout: std::sync::Arc<str> = set_timeout.into();
        builder = builder.post_create(deadpool_postgres::Hook::async_fn(move |client, _| {
            let set_timeout = set_timeout.clone();
            Box::pin(async move {
                client
                    .batch_execute(&set_timeout)
                    .await
                    .map_err(deadpool_postgres::HookError::Backend)
            })
        }));
    }
    let pool = builder
        .max_size(config.pool_size.max(1))
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(config.op_timeout))
        .create_timeout(Some(config.connect_timeout))
        .recycle_timeout(Some(config.op_timeout))
        .build()
        .map_err(|e| LockError::backend(BACKEND, "could not build the connection pool", e))?;
    Ok((pool, pg, tls))
}

/// A pool's failure, with its cause named: authentication, a missing database, TLS, a
/// refused or timed-out connection ([`LockError::Connect`]), or a busy pool.
pub fn pool_error(error: deadpool_postgres::PoolError) -> LockError {
    use deadpool_postgres::PoolError;
    use tokio_postgres::error::SqlState;
    let (cause, message) = match &error {
        PoolError::Backend(e) => {
            let cause = match e.code() {
                Some(c)
                    if *c == SqlState::INVALID_PASSWORD
                        || *c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION =>
                {
                    crate::error::ConnectFailure::Authentication
                }
                Some(c) if *c == SqlState::INVALID_CATALOG_NAME => {
                    crate::error::ConnectFailure::DatabaseMissing
                }
                Some(_) => {
                    let said = e
                        .as_db_error()
                        .map_or_else(|| e.to_string(), |db| db.message().to_owned());
                    return LockError::backend(
                        BACKEND,
                        format!("the server refused: {said}"),
                        error,
                    );
                }
                None => LockError::connect_failure(e),
            };
            let detail = e
                .as_db_error()
                .map_or_else(|| error_chain(e), |db| db.message().to_owned());
            (cause, detail)
        }
        PoolError::Timeout(deadpool_postgres::TimeoutType::Wait) => {
            return LockError::backend(BACKEND, "no pooled connection came free in time", error);
        }
        PoolError::Timeout(_) => (crate::error::ConnectFailure::Timeout, error.to_string()),
        PoolError::PostCreateHook(hook) => {
            let said = match hook {
                deadpool_postgres::HookError::Backend(e) => e
                    .as_db_error()
                    .map_or_else(|| e.to_string(), |db| db.message().to_owned()),
                deadpool_postgres::HookError::Message(m) => m.to_string(),
            };
            return LockError::backend(
                BACKEND,
                format!("setting statement_timeout on a new connection failed: {said}"),
                error,
            );
        }
        _ => return LockError::backend(BACKEND, "no connection", error),
    };
    LockError::Connect {
        backend: BACKEND,
        cause,
        message,
    }
}

/// `error` and its sources, joined.
pub(super) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}
