//! The store's SQL, written once per store for its schema and table: every statement is
//! one round trip, and `NOTIFY` goes out only when someone listens for it.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;

use crate::error::LockError;
use crate::notify::Watchers;

use super::connection::identifier;
use super::guard::Guard;
use super::listen::listen;
use super::poll::Poller;
use super::{PostgresConfig, PostgresDurability, PostgresLockStore};

#[derive(Clone)]
pub(super) struct Sql {
    pub(super) acquire: String,
    pub(super) take_over: String,
    pub(super) release: String,
    pub(super) release_retry: String,
    pub(super) renew: String,
    pub(super) renew_many: String,
    pub(super) inspect: String,
    pub(super) list: String,
    pub(super) cleanup: String,
    pub(super) force: String,
    pub(super) announce: String,
    /// The tokens of a list of keys, for watching without `LISTEN`.
    pub(super) tokens: String,
}

impl PostgresLockStore {
    pub(super) async fn build(
        pool: Pool,
        config: PostgresConfig,
        listener: Option<(tokio_postgres::Config, Option<super::connection::Tls>)>,
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
        // For this statement's transaction only (it ends with the statement, so a pooler
        // in transaction mode hands on nothing).
        let async_commit = "set_config('synchronous_commit', 'off', true)";
        // The fence of a fresh row is the clock; of an existing row, drawn under its lock.
        let values = format!(
            "$1, $2, $3, {clock_us}, $4::text::jsonb, clock_timestamp(), clock_timestamp() + $5::bigint * interval '1 millisecond'"
        );
        // With the crash guard, the row comes from the marker's CTE `g` (see `guard.rs`): no
        // row while the marker is missing or closed, so nothing is granted.
        let guard_tables = match config.durability {
            PostgresDurability::Guard => Some(super::guard::tables(&config)?),
            PostgresDurability::Flush => None,
        };
        let source = if guard_tables.is_some() {
            format!("SELECT {values} FROM g WHERE NOT g.closed")
        } else {
            format!("VALUES ({values})")
        };
        let upsert = |condition: &str| {
            format!(
                "INSERT INTO {t} AS t (key, owner, token, fence, metadata, acquired_at, expires_at)
                 {source}
                 ON CONFLICT (key) DO UPDATE SET
                     owner = EXCLUDED.owner, token = EXCLUDED.token,
                     fence = GREATEST(t.fence + 1, {clock_us}),
                     metadata = EXCLUDED.metadata, acquired_at = clock_timestamp(),
                     expires_at = clock_timestamp() + $5::bigint * interval '1 millisecond'
                 {condition}
                 RETURNING fence, acquired_at, expires_at"
            )
        };
        // A retry after a lost connection finds its own token (the first try committed):
        // it takes its lease again rather than lock itself out.
        let acquire = upsert("WHERE t.expires_at <= clock_timestamp() OR t.token = EXCLUDED.token");
        // With the crash guard, a grant also answers the marker's state and skips the flush;
        // so does a renewal (a lost renewal is a lease the wait after a crash covers, as a
        // lost grant is).
        let (acquire, take_over, unflushed) = match &guard_tables {
            Some((guard_table, _)) => (
                Guard::grant(guard_table, &acquire, ""),
                Guard::grant(
                    guard_table,
                    &upsert(""),
                    &format!(
                        ", CASE WHEN taken.fence IS NOT NULL THEN pg_notify('{channel}', $1::text) END"
                    ),
                ),
                format!(", {async_commit}"),
            ),
            None => (
                acquire,
                format!(
                    "WITH taken AS ({}) SELECT taken.*, {notify} FROM taken, (SELECT $1::text AS key) k",
                    upsert("")
                ),
                String::new(),
            ),
        };
        let sql = Sql {
            acquire,
            take_over,
            // A released lease keeps its token, marked, until cleanup: so a release retried
            // after a lost connection can tell that its first try went through. Other
            // processes are notified only while one of them has announced a wait
            // (`waiting_until` ahead): a notification's commit takes PostgreSQL's global
            // notification lock, a third of a release's time when nobody listens for it.
            // A release commits without waiting for its WAL to reach the disk
            // (`synchronous_commit` off for its own transaction only): lost in a crash of
            // the server, the lease comes back until its TTL, which delays the next holder
            // and never admits a second one. The next durable commit (any acquire) flushes
            // it anyway. Grants stay synchronous.
            release: format!(
                "WITH gone AS (UPDATE {t} SET token = 'released:' || token, expires_at = clock_timestamp()
                     WHERE key = $1 AND token = $2 AND {live} RETURNING key, waiting_until)
                 SELECT {notify_waiters}, {async_commit} FROM gone"
            ),
            release_retry: format!(
                "WITH gone AS (UPDATE {t} SET token = 'released:' || token, expires_at = clock_timestamp()
                     WHERE key = $1 AND token = $2 AND {live} RETURNING key, waiting_until),
                      notified AS (SELECT {notify_waiters}, {async_commit} FROM gone)
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
                 WHERE key = $1 AND token = $2 AND {live} RETURNING expires_at{unflushed}"
            ),
            renew_many: format!(
                "UPDATE {t} SET expires_at = clock_timestamp() + r.ttl * interval '1 millisecond'
                 FROM unnest($1::text[], $2::text[], $3::bigint[]) AS r(rkey, rtoken, ttl)
                 WHERE key = r.rkey AND token = r.rtoken AND {live}
                 RETURNING key, token, expires_at{unflushed}"
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
            tokens: format!("SELECT key, token FROM {t} WHERE key = ANY($1::text[])"),
            force: format!(
                "WITH old AS (SELECT key, token <> '' AND {live} AS live FROM {t} WHERE key = $1 FOR UPDATE),
                      gone AS (UPDATE {t} SET token = '', expires_at = LEAST(expires_at, clock_timestamp())
                          FROM old WHERE {t}.key = old.key RETURNING old.live)
                 SELECT gone.live, {notify} FROM gone, (SELECT $1::text AS key) k"
            ),
        };
        let guard = guard_tables
            .map(|(guard_table, longest_table)| Arc::new(Guard::new(&guard_table, &longest_table)));
        let watchers = Arc::<Watchers>::default();
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let store = Self {
            pool,
            config,
            sql,
            watchers: watchers.clone(),
            guard,
            _listener: std::sync::Arc::new(stop),
        };
        store.migrate(&schema, &t).await?;
        match listener {
            Some((listen_config, tls)) => {
                tokio::spawn(listen(
                    listen_config,
                    tls,
                    channel,
                    Arc::downgrade(&watchers),
                    stopped,
                ));
            }
            None => {
                tracing::info!(
                    table = %t,
                    interval = ?store.config.watch_interval,
                    pool_mode = ?store.config.pool_mode,
                    "postgres lock store without a LISTEN connection (set listen_url to a direct URL to have one): other processes' releases and take-overs are found by reading the watched keys every interval"
                );
                let poller = Poller {
                    pool: store.pool.clone(),
                    sql: store.sql.tokens.clone(),
                    interval: store.config.watch_interval.max(Duration::from_millis(1)),
                    op_timeout: store.config.op_timeout,
                    mode: store.config.pool_mode,
                };
                tokio::spawn(poller.run(Arc::downgrade(&watchers), stopped));
            }
        }
        Ok(store)
    }
}
