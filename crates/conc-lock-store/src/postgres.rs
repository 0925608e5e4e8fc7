//! [`PostgresLockStore`]: leases in a PostgreSQL table, for services on many machines.
//!
//! - A lease table, not session advisory locks: advisory locks belong to one connection and
//!   break under pooling and PgBouncer.
//! - Acquire is one statement: `INSERT … ON CONFLICT (key) DO UPDATE … WHERE the lease has
//!   expired RETURNING fence`. The fence is drawn by the winner, under the row's lock: one
//!   more than the row's last fence, and at least the database clock in microseconds. An
//!   acquirer that stalls mid-statement therefore cannot win with a fence older than one
//!   already handed out. Released and expired leases stay as rows without a token (so the
//!   key's last fence stays known); `cleanup_expired` removes those rows only once they are
//!   far older than any statement can run (`statement_timeout` is set on every connection),
//!   after which the clock part alone keeps fences going forward.
//! - The key is the table's only index. Acquire and release change no indexed column, so
//!   PostgreSQL updates the row in place (a HOT update: no index entry, about half the WAL
//!   of an update that also writes an `expires_at` index entry); `cleanup_expired` walks
//!   the table in key order instead, a batch of keys per statement.
//! - Time is the database's (`clock_timestamp()`), never the application's.
//! - A take-over and a forced release `NOTIFY` the key; a release does when a waiter has
//!   announced itself ([`LockStore::announce_wait`]: a `waiting_until` time on the key's
//!   row, written under the row's lock, so a release either sees it or the waiter sees the
//!   key free). Each store `LISTEN`s on one connection of its own, so holders and waiters
//!   in every process learn at once, and a release nobody waits for costs no notification
//!   (whose commit takes PostgreSQL's global notification lock).
//! - Schema and table names are configurable; they are created on connect.
//! - Every call has a timeout; a call that fails on a dropped connection is retried on a
//!   fresh one.
//! - Work against the primary only: a replica's table would lag.

use std::fmt;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row};

use crate::LockStore;
use crate::error::LockError;
use crate::lease::{Lease, LockInfo};
use crate::metadata::{decode_metadata, encode_metadata};
use crate::notify::{LockWatch, Watchers};
use crate::request::{LockRequest, validate_key, validate_ttl};

const BACKEND: &str = "postgres";

/// The lease table's fill factor: room left on each page, so that the new version of a row
/// an acquire or release writes fits beside the old one (an in-place, HOT update, which
/// writes no index entry) even where the page is full of other keys.
const FILLFACTOR: u8 = 80;

/// Keys per `cleanup_expired` statement: each statement's time stays bounded (a few
/// milliseconds) however many keys the table holds.
const CLEANUP_BATCH: i64 = 5_000;

/// Settings for [`PostgresLockStore`].
///
/// Start from [`Default`] and change what you need with the `with_*` setters. The struct is
/// `#[non_exhaustive]`: a field added in a later release is not a breaking change, so it
/// cannot be built with a struct literal outside this crate (its fields stay readable).
///
/// ```
/// use conc_lock_store::PostgresConfig;
///
/// let config = PostgresConfig::default().with_pool_size(16);
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PostgresConfig {
    /// The schema of the lease table (default `public`).
    pub schema: String,
    /// The lease table (default `conc_locks`); its notification channel is
    /// `<schema>_<table>`.
    pub table: String,
    /// The limit on each operation, waiting for a connection included (default 5 s).
    pub op_timeout: Duration,
    /// The limit on opening a connection (default 5 s).
    pub connect_timeout: Duration,
    /// Connections in the pool (default 8).
    pub pool_size: usize,
    /// The longest TTL accepted (default 1 h).
    pub max_ttl: Duration,
    /// The `application_name` the store's connections report (default `conc-lock-store`).
    pub application_name: String,
    /// How long the row of a released or expired lease is kept before `cleanup_expired`
    /// deletes it (default 10 min). It must exceed the longest a statement can run, which
    /// `statement_timeout` (set to `op_timeout` on every connection) bounds.
    pub tombstone_ttl: Duration,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        Self {
            schema: "public".into(),
            table: "conc_locks".into(),
            op_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            pool_size: 8,
            max_ttl: Duration::from_secs(3600),
            application_name: "conc-lock-store".into(),
            tombstone_ttl: Duration::from_secs(600),
        }
    }
}

impl PostgresConfig {
    /// Sets [`schema`](Self::schema).
    #[must_use]
    pub fn with_schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// Sets [`table`](Self::table).
    #[must_use]
    pub fn with_table(mut self, table: impl Into<String>) -> Self {
        self.table = table.into();
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

    /// Sets [`pool_size`](Self::pool_size).
    #[must_use]
    pub fn with_pool_size(mut self, pool_size: usize) -> Self {
        self.pool_size = pool_size;
        self
    }

    /// Sets [`max_ttl`](Self::max_ttl).
    #[must_use]
    pub fn with_max_ttl(mut self, max_ttl: Duration) -> Self {
        self.max_ttl = max_ttl;
        self
    }

    /// Sets [`application_name`](Self::application_name).
    #[must_use]
    pub fn with_application_name(mut self, application_name: impl Into<String>) -> Self {
        self.application_name = application_name.into();
        self
    }

    /// Sets [`tombstone_ttl`](Self::tombstone_ttl).
    #[must_use]
    pub fn with_tombstone_ttl(mut self, tombstone_ttl: Duration) -> Self {
        self.tombstone_ttl = tombstone_ttl;
        self
    }
}

struct Sql {
    acquire: String,
    take_over: String,
    release: String,
    release_retry: String,
    renew: String,
    renew_many: String,
    inspect: String,
    list: String,
    cleanup: String,
    force: String,
    announce: String,
}

/// A [`LockStore`] in PostgreSQL.
///
/// ```no_run
/// use std::time::Duration;
/// use conc_lock_store::{LockRequest, LockStore, PostgresConfig, PostgresLockStore};
///
/// # async fn example() -> Result<(), conc_lock_store::LockError> {
/// let store = PostgresLockStore::connect("postgres://postgres@127.0.0.1/test", PostgresConfig::default()).await?;
/// let request = LockRequest::new("conversation:1", "worker-a", Duration::from_secs(30));
/// if let Some(lease) = store.try_acquire(&request).await? {
///     store.release(&lease).await?;
/// }
/// # Ok(())
/// # }
/// ```
pub struct PostgresLockStore {
    pool: Pool,
    config: PostgresConfig,
    sql: Sql,
    watchers: Arc<Watchers>,
    /// Dropped with the store, which ends the listening task.
    _listener: tokio::sync::oneshot::Sender<()>,
}

impl fmt::Debug for PostgresLockStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresLockStore")
            .field("schema", &self.config.schema)
            .field("table", &self.config.table)
            .finish_non_exhaustive()
    }
}

fn identifier(name: &str, what: &str) -> Result<String, LockError> {
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

fn pg_error(context: &'static str) -> impl Fn(tokio_postgres::Error) -> LockError {
    move |e| LockError::backend(BACKEND, format!("{context}: {e}"), e)
}

/// Whether an error means the connection is gone (worth one more try on a fresh one): a
/// closed connection, an I/O error, or a server that shut the session down
/// (`pg_terminate_backend`, a restart).
pub fn is_connection_lost(error: &tokio_postgres::Error) -> bool {
    connection_lost(error)
}

fn connection_lost(error: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    error.is_closed()
        || error.code().is_some_and(|c| {
            *c == SqlState::ADMIN_SHUTDOWN
                || *c == SqlState::CRASH_SHUTDOWN
                || *c == SqlState::CANNOT_CONNECT_NOW
        })
        || std::error::Error::source(error).is_some_and(|s| s.is::<std::io::Error>())
}

/// A connection pool for `url`, as the PostgreSQL stores build it: TLS by rustls when the
/// URL asks for it (`sslmode=require`, `verify-ca` or `verify-full`; the certificate and
/// host name are always verified, against the public roots and the PEM file named by
/// `sslrootcert=PATH`), plain otherwise; `statement_timeout` = `op_timeout` on every
/// connection; connect and wait timeouts from `config`. A server certificate that does not
/// verify is refused ([`ConnectFailure::Tls`](crate::ConnectFailure::Tls)); there is no
/// silent fallback to plaintext. Share it with [`PostgresLockStore`] and the session store,
/// or with the rest of a service.
pub fn postgres_pool(url: &str, config: &PostgresConfig) -> Result<Pool, LockError> {
    build_pool(url, config).map(|(pool, _, _)| pool)
}

/// The pool, the driver configuration (for the LISTEN connection) and the TLS connector.
fn build_pool(
    url: &str,
    config: &PostgresConfig,
) -> Result<
    (
        Pool,
        tokio_postgres::Config,
        Option<tokio_postgres_rustls::MakeRustlsConnect>,
    ),
    LockError,
> {
    let split = crate::tls::split(url);
    let mut pg: tokio_postgres::Config =
        split
            .url
            .parse()
            .map_err(|e: tokio_postgres::Error| LockError::Backend {
                backend: BACKEND,
                message: format!("bad PostgreSQL URL: {e}"),
                source: Some(Box::new(e)),
            })?;
    pg.connect_timeout(config.connect_timeout);
    pg.application_name(&config.application_name);
    // No statement may outlive the operation that sent it (a stalled server included),
    // which bounds how long a stalled acquirer can hold an old view of a key.
    pg.options(format!(
        "-c statement_timeout={}",
        config.op_timeout.as_millis().max(1)
    ));
    // TLS only when asked for: a URL without `sslmode` stays plain, as before.
    let tls = match split.ssl_mode.as_deref() {
        None | Some("disable") => None,
        Some(_) => Some(tokio_postgres_rustls::MakeRustlsConnect::new(
            crate::tls::client_config(BACKEND, split.root_cert.as_deref())?,
        )),
    };
    let manager_config = ManagerConfig {
        recycling_method: RecyclingMethod::Fast,
    };
    let manager = match &tls {
        Some(tls) => Manager::from_config(pg.clone(), tls.clone(), manager_config),
        None => Manager::from_config(pg.clone(), NoTls, manager_config),
    };
    let pool = Pool::builder(manager)
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
                    crate::ConnectFailure::Authentication
                }
                Some(c) if *c == SqlState::INVALID_CATALOG_NAME => {
                    crate::ConnectFailure::DatabaseMissing
                }
                Some(_) => {
                    return LockError::backend(BACKEND, format!("the server refused: {e}"), error);
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
        PoolError::Timeout(_) => (crate::ConnectFailure::Timeout, error.to_string()),
        _ => return LockError::backend(BACKEND, "no connection", error),
    };
    LockError::Connect {
        backend: BACKEND,
        cause,
        message,
    }
}

/// `error` and its sources, joined.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

impl PostgresLockStore {
    /// Connects to `url` (`postgres://user@host:port/db`), creating the schema and table if
    /// needed.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future may leave the schema created; nothing else.
    pub async fn connect(url: &str, config: PostgresConfig) -> Result<Self, LockError> {
        let (pool, listen_config, tls) = build_pool(url, &config)?;
        Self::build(pool, config, Some((listen_config, tls))).await
    }

    /// A store over a pool the service already has (see [`postgres_pool`] to build one
    /// from a URL, TLS included); creates the schema and table if needed. A pool does not
    /// give out its connection settings, so this store opens no `LISTEN` connection: a
    /// take-over or release in *another* process reaches a holder at its next renewal, and
    /// a waiter at its next poll (in this process, at once). Prefer
    /// [`connect`](Self::connect) where stops must reach other processes at once.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future may leave the schema created; nothing else.
    pub async fn from_pool(pool: Pool, config: PostgresConfig) -> Result<Self, LockError> {
        Self::build(pool, config, None).await
    }

    async fn build(
        pool: Pool,
        config: PostgresConfig,
        listener: Option<(
            tokio_postgres::Config,
            Option<tokio_postgres_rustls::MakeRustlsConnect>,
        )>,
    ) -> Result<Self, LockError> {
        let schema = identifier(&config.schema, "schema")?;
        let table = identifier(&config.table, "table")?;
        let t = format!("{schema}.{table}");
        // A NOTIFY channel is an identifier: at most 63 bytes (ASCII here).
        let mut channel = format!("{}_{}", config.schema, config.table);
        channel.truncate(63);
        let live = "expires_at > clock_timestamp()";
        let info = "key, owner, metadata::text, fence, acquired_at, expires_at";
        let clock_us = "(extract(epoch from clock_timestamp()) * 1000000)::bigint";
        let notify = format!("pg_notify('{channel}', key)");
        let notify_waiters =
            format!("CASE WHEN waiting_until > clock_timestamp() THEN {notify} END");
        // The fence of a fresh row is the clock; of an existing row, drawn under its lock.
        let upsert = |condition: &str| {
            format!(
                "INSERT INTO {t} AS t (key, owner, token, fence, metadata, acquired_at, expires_at)
                 VALUES ($1, $2, $3, {clock_us}, $4::text::jsonb, clock_timestamp(), clock_timestamp() + $5::bigint * interval '1 millisecond')
                 ON CONFLICT (key) DO UPDATE SET
                     owner = EXCLUDED.owner, token = EXCLUDED.token,
                     fence = GREATEST(t.fence + 1, {clock_us}),
                     metadata = EXCLUDED.metadata, acquired_at = clock_timestamp(),
                     expires_at = clock_timestamp() + $5::bigint * interval '1 millisecond'
                 {condition}
                 RETURNING fence, acquired_at, expires_at"
            )
        };
        let sql = Sql {
            // A retry after a lost connection finds its own token (the first try committed):
            // it takes its lease again rather than lock itself out.
            acquire: upsert("WHERE t.expires_at <= clock_timestamp() OR t.token = EXCLUDED.token"),
            take_over: format!(
                "WITH taken AS ({}) SELECT taken.*, {notify} FROM taken, (SELECT $1::text AS key) k",
                upsert("")
            ),
            // A released lease keeps its token, marked, until cleanup: so a release retried
            // after a lost connection can tell that its first try went through. Other
            // processes are notified only while one of them has announced a wait
            // (`waiting_until` ahead): a notification's commit takes PostgreSQL's global
            // notification lock, a third of a release's time when nobody listens for it.
            release: format!(
                "WITH gone AS (UPDATE {t} SET token = 'released:' || token, expires_at = clock_timestamp()
                     WHERE key = $1 AND token = $2 AND {live} RETURNING key, waiting_until)
                 SELECT {notify_waiters} FROM gone"
            ),
            release_retry: format!(
                "WITH gone AS (UPDATE {t} SET token = 'released:' || token, expires_at = clock_timestamp()
                     WHERE key = $1 AND token = $2 AND {live} RETURNING key, waiting_until),
                      notified AS (SELECT {notify_waiters} FROM gone)
                 SELECT 1 FROM notified
                 UNION ALL SELECT 1 FROM {t} WHERE key = $1 AND token = 'released:' || $2"
            ),
            // Under the row's lock, as a release takes it: either the release comes after
            // and sees the wait, or the announcement sees the key free.
            announce: format!(
                "UPDATE {t} SET waiting_until = GREATEST(waiting_until,
                     clock_timestamp() + $2::bigint * interval '1 millisecond')
                 WHERE key = $1
                 RETURNING token <> '' AND token NOT LIKE 'released:%' AND {live}"
            ),
            renew: format!(
                "UPDATE {t} SET expires_at = clock_timestamp() + $3::bigint * interval '1 millisecond'
                 WHERE key = $1 AND token = $2 AND {live} RETURNING expires_at"
            ),
            renew_many: format!(
                "UPDATE {t} SET expires_at = clock_timestamp() + r.ttl * interval '1 millisecond'
                 FROM unnest($1::text[], $2::text[], $3::bigint[]) AS r(rkey, rtoken, ttl)
                 WHERE key = r.rkey AND token = r.rtoken AND {live}
                 RETURNING key, token, expires_at"
            ),
            inspect: format!("SELECT {info} FROM {t} WHERE key = $1 AND {live}"),
            list: format!(
                "SELECT {info} FROM {t} WHERE key >= $1 AND starts_with(key, $1) AND {live} ORDER BY key LIMIT $2"
            ),
            // The cleanup walks the table in key order, a batch of keys per statement (found
            // through the primary key; `expires_at` has no index, see `migrate`), so no
            // statement's time grows with the table. The two conditions are disjoint, so no
            // row is both marked and deleted by one statement. Returns the batch's last key
            // (none once past the end) and how many leases it marked expired.
            cleanup: format!(
                "WITH batch AS (SELECT key FROM {t} WHERE key > $1 ORDER BY key LIMIT $2),
                      marked AS (UPDATE {t} SET token = '' FROM batch WHERE {t}.key = batch.key
                          AND token <> '' AND token NOT LIKE 'released:%'
                          AND expires_at <= clock_timestamp() RETURNING 1),
                      purged AS (DELETE FROM {t} USING batch WHERE {t}.key = batch.key
                          AND (token = '' OR token LIKE 'released:%')
                          AND expires_at <= clock_timestamp() - $3::bigint * interval '1 millisecond'
                          AND fence < {clock_us} RETURNING 1)
                 SELECT (SELECT max(key) FROM batch), (SELECT count(*) FROM marked),
                        (SELECT count(*) FROM purged)"
            ),
            force: format!(
                "WITH old AS (SELECT key, token <> '' AND {live} AS live FROM {t} WHERE key = $1 FOR UPDATE),
                      gone AS (UPDATE {t} SET token = '', expires_at = LEAST(expires_at, clock_timestamp())
                          FROM old WHERE {t}.key = old.key RETURNING old.live)
                 SELECT gone.live, {notify} FROM gone, (SELECT $1::text AS key) k"
            ),
        };
        let watchers = Arc::<Watchers>::default();
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let store = Self {
            pool,
            config,
            sql,
            watchers: watchers.clone(),
            _listener: stop,
        };
        store.migrate(&schema, &t).await?;
        if let Some((listen_config, tls)) = listener {
            tokio::spawn(listen(
                listen_config,
                tls,
                channel,
                Arc::downgrade(&watchers),
                stopped,
            ));
        }
        Ok(store)
    }

    async fn migrate(&self, schema: &str, table: &str) -> Result<(), LockError> {
        // Earlier versions indexed `expires_at`, for `cleanup_expired`. Every acquire and
        // release changes it, so with the index no update could be made in place (a HOT
        // update): each wrote a new entry in both indexes, and the key's primary-key entries
        // piled up between vacuums. Without it, the table's only index is the key's, which
        // no update changes; the cleanup walks the table in key batches instead.
        let old_index_name = format!("{}_expires_at", self.config.table);
        let old_index = identifier(&old_index_name, "index")?;
        let mut client = self.client().await?;
        let work = async {
            let tx = client
                .transaction()
                .await
                .map_err(pg_error("begin migration"))?;
            // Concurrent first connections must not race on CREATE … IF NOT EXISTS.
            tx.execute(
                "SELECT pg_advisory_xact_lock(hashtext('conc_lock_store_migrate'))",
                &[],
            )
            .await
            .map_err(pg_error("migration lock"))?;
            tx.batch_execute(&format!(
                "CREATE SCHEMA IF NOT EXISTS {schema};
                 CREATE TABLE IF NOT EXISTS {table} (
                     key TEXT PRIMARY KEY,
                     owner TEXT NOT NULL,
                     token TEXT NOT NULL,
                     fence BIGINT NOT NULL,
                     acquired_at TIMESTAMPTZ NOT NULL,
                     expires_at TIMESTAMPTZ NOT NULL
                 ) WITH (fillfactor = {FILLFACTOR});
                 ALTER TABLE {table} ADD COLUMN IF NOT EXISTS metadata JSONB NOT NULL DEFAULT '{{}}';
                 ALTER TABLE {table} ADD COLUMN IF NOT EXISTS waiting_until TIMESTAMPTZ;"
            ))
            .await
            .map_err(pg_error("create the lock schema"))?;
            let had_index = tx
                .query_opt(
                    "SELECT 1 FROM pg_indexes WHERE schemaname = $1 AND indexname = $2",
                    &[&self.config.schema, &old_index_name],
                )
                .await
                .map_err(pg_error("look for the old expiry index"))?
                .is_some();
            if had_index {
                tx.batch_execute(&format!(
                    "DROP INDEX IF EXISTS {schema}.{old_index};
                     ALTER TABLE {table} SET (fillfactor = {FILLFACTOR});"
                ))
                .await
                .map_err(pg_error("drop the old expiry index"))?;
            }
            metadata_to_jsonb(&tx, table).await?;
            tx.commit().await.map_err(pg_error("commit migration"))
        };
        tokio::time::timeout(self.config.op_timeout * 2, work)
            .await
            .map_err(|_| self.timed_out("migration"))?
    }

    async fn acquire_inner(
        &self,
        request: &LockRequest,
        force: bool,
    ) -> Result<Option<Lease>, LockError> {
        request.validate(self.config.max_ttl)?;
        let token = crate::random::shared_token();
        let metadata = encode_metadata(&request.metadata);
        let ttl = millis(request.ttl);
        let sent = tokio::time::Instant::now();
        let rows = self
            .rows(
                "acquire",
                if force {
                    &self.sql.take_over
                } else {
                    &self.sql.acquire
                },
                &[&request.key, &request.owner, &token, &metadata, &ttl],
            )
            .await?;
        Ok(rows.first().map(|row| Lease {
            key: request.key.clone(),
            owner: request.owner.clone(),
            token,
            fence: u64::try_from(row.get::<_, i64>(0)).unwrap_or(0),
            acquired_at: row.get(1),
            expires_at: row.get(2),
            ttl: request.ttl,
            requested_at: sent,
        }))
    }

    fn timed_out(&self, what: &str) -> LockError {
        LockError::Backend {
            backend: BACKEND,
            message: format!("{what} took longer than {:?}", self.config.op_timeout),
            source: None,
        }
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, LockError> {
        self.pool.get().await.map_err(pool_error)
    }

    /// Runs `query` (returning rows), retrying on a fresh connection when the connection
    /// was lost; each try within the operation timeout.
    async fn rows(
        &self,
        what: &'static str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, LockError> {
        self.rows_retrying(what, sql, sql, params).await
    }

    /// As [`rows`](Self::rows), sending `retry_sql` instead of `sql` on a retry (after a
    /// lost connection, when the first try may have committed).
    async fn rows_retrying(
        &self,
        what: &'static str,
        sql: &str,
        retry_sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, LockError> {
        let mut tries = 0;
        loop {
            tries += 1;
            let sql = if tries == 1 { sql } else { retry_sql };
            let attempt = async {
                let client = self.client().await?;
                let statement = client.prepare_cached(sql).await;
                let outcome = match statement {
                    Ok(statement) => client.query(&statement, params).await,
                    Err(e) => Err(e),
                };
                match outcome {
                    Ok(rows) => Ok(Ok(rows)),
                    Err(e) if connection_lost(&e) => {
                        // Throw this connection away rather than return it to the pool.
                        let _ = deadpool_postgres::Object::take(client);
                        Ok(Err(e))
                    }
                    Err(e) => Err(pg_error(what)(e)),
                }
            };
            match tokio::time::timeout(self.config.op_timeout, attempt).await {
                Err(_) => return Err(self.timed_out(what)),
                Ok(Err(e)) => return Err(e),
                Ok(Ok(Ok(rows))) => return Ok(rows),
                Ok(Ok(Err(e))) if tries < 3 => {
                    tracing::debug!(error = %e, tries, "postgres connection lost; retrying on a fresh one");
                }
                Ok(Ok(Err(e))) => return Err(pg_error(what)(e)),
            }
        }
    }
}

/// Tables made by earlier versions keep metadata as TEXT (JSON, or `name=value` lines before
/// that): rewrite every row's text as a JSON object (nothing is dropped: text that cannot
/// be read is kept whole under `_unreadable`), then turn the column into JSONB, so that it
/// can be queried (`metadata->>'user_id'`). Runs inside the migration's transaction, under
/// its advisory lock: every row or none. Processes of an earlier version cannot write the
/// JSONB column; upgrade them all.
async fn metadata_to_jsonb(
    tx: &tokio_postgres::Transaction<'_>,
    table: &str,
) -> Result<(), LockError> {
    let column_type: String = tx
        .query_one(
            &format!(
                "SELECT atttypid::regtype::text FROM pg_attribute
                 WHERE attrelid = '{table}'::regclass AND attname = 'metadata'"
            ),
            &[],
        )
        .await
        .map_err(pg_error("read the metadata column's type"))?
        .get(0);
    if column_type == "jsonb" {
        return Ok(());
    }
    let rows = tx
        .query(
            &format!("SELECT key, metadata::text FROM {table} WHERE metadata::text <> ''"),
            &[],
        )
        .await
        .map_err(pg_error("read the metadata to convert"))?;
    let update = format!("UPDATE {table} SET metadata = $2 WHERE key = $1");
    let mut converted = 0u64;
    for row in &rows {
        let (key, text): (&str, &str) = (row.get(0), row.get(1));
        let json = encode_metadata(&decode_metadata(text));
        if json != text {
            tx.execute(&update, &[&key, &json])
                .await
                .map_err(pg_error("convert metadata to JSON"))?;
            converted += 1;
        }
    }
    tx.batch_execute(&format!(
        "ALTER TABLE {table} ALTER COLUMN metadata DROP DEFAULT;
         ALTER TABLE {table} ALTER COLUMN metadata TYPE JSONB
             USING (CASE WHEN metadata = '' THEN '{{}}' ELSE metadata END)::jsonb;
         ALTER TABLE {table} ALTER COLUMN metadata SET DEFAULT '{{}}'"
    ))
    .await
    .map_err(pg_error("turn the metadata column into JSONB"))?;
    tracing::info!(
        table,
        rows = rows.len(),
        converted,
        "lock metadata column converted from TEXT to JSONB"
    );
    Ok(())
}

fn millis(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1)
}

fn info_from_row(row: &Row) -> LockInfo {
    LockInfo {
        key: row.get(0),
        owner: row.get(1),
        metadata: decode_metadata(row.get::<_, &str>(2)),
        fence: u64::try_from(row.get::<_, i64>(3)).unwrap_or(0),
        acquired_at: row.get::<_, SystemTime>(4),
        expires_at: row.get::<_, SystemTime>(5),
    }
}

#[async_trait::async_trait]
impl LockStore for PostgresLockStore {
    async fn try_acquire(&self, request: &LockRequest) -> Result<Option<Lease>, LockError> {
        self.acquire_inner(request, false).await
    }

    async fn take_over(&self, request: &LockRequest) -> Result<Lease, LockError> {
        let lease = LockError::taken(BACKEND, self.acquire_inner(request, true).await?)?;
        self.watchers.notify(&request.key);
        Ok(lease)
    }

    async fn release(&self, lease: &Lease) -> Result<bool, LockError> {
        let rows = self
            .rows_retrying(
                "release",
                &self.sql.release,
                &self.sql.release_retry,
                &[&lease.key, &lease.token],
            )
            .await?;
        if !rows.is_empty() {
            self.watchers.notify(&lease.key);
        }
        Ok(!rows.is_empty())
    }

    async fn announce_wait(&self, key: &str, wait: Duration) -> Result<bool, LockError> {
        validate_key(key)?;
        let wait = millis(wait.min(self.config.max_ttl));
        let rows = self
            .rows("announce a wait", &self.sql.announce, &[&key, &wait])
            .await?;
        Ok(rows.first().is_some_and(|row| row.get::<_, bool>(0)))
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Lease, LockError> {
        validate_ttl(ttl, self.config.max_ttl)?;
        let sent = tokio::time::Instant::now();
        let rows = self
            .rows(
                "renew",
                &self.sql.renew,
                &[&lease.key, &lease.token, &millis(ttl)],
            )
            .await?;
        lease.renewed(rows.first().map(|row| row.get(0)), ttl, sent)
    }

    async fn renew_many(&self, leases: &[Lease]) -> Vec<Result<Lease, LockError>> {
        let mut out: Vec<Option<Result<Lease, LockError>>> = Vec::with_capacity(leases.len());
        let (mut keys, mut tokens, mut ttls) = (Vec::new(), Vec::new(), Vec::new());
        for lease in leases {
            match validate_ttl(lease.ttl, self.config.max_ttl) {
                Ok(()) => {
                    keys.push(lease.key.as_str());
                    tokens.push(lease.token.as_str());
                    ttls.push(millis(lease.ttl));
                    out.push(None);
                }
                Err(e) => out.push(Some(Err(e))),
            }
        }
        if !keys.is_empty() {
            let sent = tokio::time::Instant::now();
            match self
                .rows("renew", &self.sql.renew_many, &[&keys, &tokens, &ttls])
                .await
            {
                Ok(rows) => {
                    let renewed: std::collections::HashMap<(String, String), SystemTime> = rows
                        .iter()
                        .map(|row| ((row.get(0), row.get(1)), row.get(2)))
                        .collect();
                    for (slot, lease) in out.iter_mut().zip(leases) {
                        if slot.is_none() {
                            let expires = renewed
                                .get(&(lease.key.clone(), lease.token.clone()))
                                .copied();
                            *slot = Some(lease.renewed(expires, lease.ttl, sent));
                        }
                    }
                }
                Err(error) => {
                    for slot in out.iter_mut().filter(|slot| slot.is_none()) {
                        *slot = Some(Err(error.for_each_of_a_batch()));
                    }
                }
            }
        }
        out.into_iter().flatten().collect()
    }

    async fn inspect(&self, key: &str) -> Result<Option<LockInfo>, LockError> {
        validate_key(key)?;
        let rows = self.rows("inspect", &self.sql.inspect, &[&key]).await?;
        Ok(rows.first().map(info_from_row))
    }

    async fn list(&self, prefix: &str, limit: usize) -> Result<Vec<LockInfo>, LockError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .rows("list", &self.sql.list, &[&prefix, &limit])
            .await?;
        Ok(rows.iter().map(info_from_row).collect())
    }

    async fn cleanup_expired(&self) -> Result<u64, LockError> {
        let horizon = millis(self.config.tombstone_ttl.max(self.config.op_timeout * 2));
        let mut after = String::new();
        let mut marked = 0u64;
        loop {
            let rows = self
                .rows(
                    "cleanup",
                    &self.sql.cleanup,
                    &[&after, &CLEANUP_BATCH, &horizon],
                )
                .await?;
            let Some(row) = rows.first() else { break };
            marked += row.get::<_, i64>(1).max(0) as u64;
            match row.get::<_, Option<String>>(0) {
                Some(last) => after = last,
                None => break,
            }
        }
        Ok(marked)
    }

    async fn force_release(&self, key: &str) -> Result<bool, LockError> {
        validate_key(key)?;
        let rows = self.rows("force release", &self.sql.force, &[&key]).await?;
        let live = rows.first().is_some_and(|row| row.get::<_, bool>(0));
        if live {
            self.watchers.notify(key);
        }
        Ok(live)
    }

    fn batches_renewals(&self) -> bool {
        true
    }

    fn max_ttl(&self) -> Duration {
        self.config.max_ttl
    }

    fn watch(&self, key: &str) -> Option<LockWatch> {
        Some(self.watchers.subscribe(key))
    }
}

/// Listens for the store's notifications on a connection of its own and wakes the
/// watchers of each key named; after a lost connection it wakes every watcher (it cannot
/// tell what it missed) and connects again. Ends when the store is dropped.
async fn listen(
    config: tokio_postgres::Config,
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    channel: String,
    watchers: Weak<Watchers>,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let mut pause = Duration::from_millis(100);
    loop {
        let session = async {
            match &tls {
                Some(tls) => {
                    let (client, connection) = config.connect(tls.clone()).await?;
                    listen_on(client, connection, &channel, &watchers).await
                }
                None => {
                    let (client, connection) = config.connect(NoTls).await?;
                    listen_on(client, connection, &channel, &watchers).await
                }
            }
        };
        tokio::select! {
            _ = &mut stopped => return,
            outcome = session => {
                if let Err(error) = outcome {
                    tracing::debug!(%error, "postgres lock notifications interrupted; reconnecting");
                } else {
                    tracing::debug!("postgres lock notification connection closed; reconnecting");
                }
            }
        }
        if !crate::notify::after_disconnect(&watchers, &mut stopped, &mut pause).await {
            return;
        }
    }
}

/// Sends `LISTEN` on one connection and forwards its notifications until it closes.
async fn listen_on<S, T>(
    client: tokio_postgres::Client,
    mut connection: tokio_postgres::Connection<S, T>,
    channel: &str,
    watchers: &Weak<Watchers>,
) -> Result<(), tokio_postgres::Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures_util::StreamExt as _;
    let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    let statement = format!("LISTEN \"{channel}\"");
    let subscribe = client.batch_execute(&statement);
    tokio::pin!(subscribe);
    // Drive the connection while LISTEN runs.
    loop {
        tokio::select! {
            done = &mut subscribe => { done?; break; }
            message = messages.next() => match message {
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
                None => return Ok(()),
            },
        }
    }
    if let Some(watchers) = watchers.upgrade() {
        // Anything may have happened while we were not listening.
        watchers.notify_all();
    }
    while let Some(message) = messages.next().await {
        if let tokio_postgres::AsyncMessage::Notification(note) = message? {
            match watchers.upgrade() {
                Some(watchers) => watchers.notify(note.payload()),
                None => return Ok(()),
            }
        }
    }
    Ok::<(), tokio_postgres::Error>(())
}

#[cfg(test)]
mod retry_tests {
    //! What a retry after a lost connection sends: the same acquire (same token) and the
    //! release's retry statement.

    use super::*;

    #[tokio::test]
    async fn a_retried_acquire_and_release_see_their_first_try() {
        let Ok(url) = std::env::var("CONC_TEST_POSTGRES_URL") else {
            println!(
                "skipped: CONC_TEST_POSTGRES_URL is not set, so PostgreSQL retries are not tested"
            );
            return;
        };
        let schema = format!("conc_retry_{}", std::process::id());
        let config = PostgresConfig::default().with_schema(schema.clone());
        let store = PostgresLockStore::connect(&url, config).await.unwrap();
        let token = crate::random::shared_token();
        let (key, owner, metadata, ttl) =
            ("k".to_owned(), "owner".to_owned(), "{}".to_owned(), 5000i64);
        let params: [&(dyn ToSql + Sync); 5] = [&key, &owner, &token, &metadata, &ttl];
        let first = store
            .rows("acquire", &store.sql.acquire, &params)
            .await
            .unwrap();
        let again = store
            .rows("acquire", &store.sql.acquire, &params)
            .await
            .unwrap();
        assert_eq!(
            (first.len(), again.len()),
            (1, 1),
            "the retry takes its own lease"
        );
        let other = LockRequest::new("k", "other", Duration::from_secs(5));
        assert!(store.try_acquire(&other).await.unwrap().is_none());
        let released = store
            .rows("release", &store.sql.release, &[&key, &token])
            .await
            .unwrap();
        assert_eq!(released.len(), 1);
        let plain = store
            .rows("release", &store.sql.release, &[&key, &token])
            .await
            .unwrap();
        assert!(plain.is_empty(), "a second release is refused");
        let retried = store
            .rows("release", &store.sql.release_retry, &[&key, &token])
            .await
            .unwrap();
        assert_eq!(retried.len(), 1, "a retried release reports its first try");
        assert!(store.try_acquire(&other).await.unwrap().is_some());
        let (admin, connection) = tokio_postgres::connect(&url, NoTls).await.unwrap();
        tokio::spawn(connection);
        admin
            .batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
            .await
            .unwrap();
    }
}
