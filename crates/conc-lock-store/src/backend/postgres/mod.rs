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
//!   announced itself ([`LockStore::announce_wait`](crate::LockStore::announce_wait): a `waiting_until` time on the key's
//!   row, written under the row's lock, so a release either sees it or the waiter sees the
//!   key free). Each store `LISTEN`s on one connection of its own, so holders and waiters
//!   in every process learn at once, and a release nobody waits for costs no notification
//!   (whose commit takes PostgreSQL's global notification lock).
//! - Schema and table names are configurable; they are created on connect.
//! - Every call has a timeout; a call that fails on a dropped connection is retried on a
//!   fresh one.
//! - Work against the primary only: a replica's table would lag.
//! - [`PostgresDurability::Guard`] (`guard.rs`): grants commit without a flush, and an
//!   unlogged marker table, emptied by every crash, makes the store wait out every lease
//!   that could have been lost.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;

use crate::error::LockError;
use crate::notify::Watchers;

mod client;
mod connection;
mod guard;
mod listen;
mod lock_store;
mod poll;
mod schema;
mod statements;
#[cfg(test)]
mod tests;

pub use connection::{is_connection_lost, pool_error, pooler_symptom, postgres_pool};
use statements::Sql;

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
    /// How the server is reached: straight or through a session pooler
    /// ([`PostgresPoolMode::Session`], the default), or through a transaction pooler
    /// ([`PostgresPoolMode::Transaction`]: PgBouncer, Supavisor, RDS Proxy). URL option
    /// `pool_mode=transaction`.
    pub pool_mode: PostgresPoolMode,
    /// A URL that reaches the server directly (not through a transaction pooler), for the
    /// store's one `LISTEN` connection. Behind a transaction pooler without it, other
    /// processes' changes are found by polling every [`watch_interval`](Self::watch_interval).
    /// URL option `listen_url=` (percent-encode its `&`, `?` and `=`).
    pub listen_url: Option<String>,
    /// How often watched keys are read when the store has no `LISTEN` connection (behind a
    /// transaction pooler without [`listen_url`](Self::listen_url), or a store made with
    /// [`PostgresLockStore::from_pool`]); default 100 ms. URL option `watch_interval=` (ms).
    pub watch_interval: Duration,
    /// Whether each grant waits for the server's disk ([`PostgresDurability::Flush`], the
    /// default) or is guarded against a crash instead ([`PostgresDurability::Guard`]). URL
    /// option `durability=`.
    pub durability: PostgresDurability,
}

/// What a grant waits for before the store hands out its lease.
///
/// Every process on one table must use the same: a store in `Flush` mode refuses a table
/// that a `Guard` store has used (drop its `<table>_guard` table once none is left).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum PostgresDurability {
    /// A grant commits with `synchronous_commit` as the server sets it (by default, once
    /// its WAL record is on disk): a crash of the server loses no grant it answered.
    #[default]
    Flush,
    /// A grant commits without waiting for the disk (about a WAL flush less per grant: the
    /// better part of a pair's time where the disk is slow), and a crash is guarded instead,
    /// as the Redis store guards a restart: an unlogged marker table, which PostgreSQL
    /// empties after every crash, an immediate shutdown, on a promoted replica and in a
    /// restored backup (every case that can lose commits not yet flushed), and keeps
    /// through a clean restart (which loses nothing). Every grant checks the marker in its
    /// own statement. Found empty, the store grants nothing until the longest lease that
    /// could have been granted has run out ([`LockError::Recovering`], transient); the
    /// longest TTL is kept in a logged `<table>_longest` table, raised with a flushed
    /// commit before a longer lease is granted. Fences stay floored by the database clock,
    /// so they go forward through the wait. URL option `durability=guard`.
    Guard,
}

impl PostgresDurability {
    /// Reads `flush` or `guard` (the URL option `durability=`).
    pub fn parse(text: &str) -> Result<Self, LockError> {
        match text {
            "flush" => Ok(Self::Flush),
            "guard" => Ok(Self::Guard),
            other => Err(LockError::InvalidUrl {
                reason: format!(
                    "durability must be `flush` (each grant waits for the disk) or `guard` (no flush per grant; a crash is waited out), not `{other}`"
                ),
            }),
        }
    }
}

/// How a [`PostgresLockStore`] (and the session store) reaches PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum PostgresPoolMode {
    /// Straight, or through a pooler in session mode: a connection is the store's for as
    /// long as it holds it. Statements are prepared once per connection and cached, each
    /// connection gets `statement_timeout`, and one connection `LISTEN`s.
    #[default]
    Session,
    /// Through a pooler in transaction mode (PgBouncer's `pool_mode = transaction`,
    /// Supavisor, RDS Proxy): each transaction may run on another server connection. Every
    /// statement is sent unnamed, with its parameter types, in one round trip (nothing
    /// prepared outlives it); nothing is set on the session; `LISTEN` needs
    /// [`PostgresConfig::listen_url`], and without it watched keys are polled.
    Transaction,
}

impl PostgresPoolMode {
    /// Reads `session` or `transaction` (the URL option `pool_mode=`).
    pub fn parse(text: &str) -> Result<Self, LockError> {
        match text {
            "session" => Ok(Self::Session),
            "transaction" => Ok(Self::Transaction),
            other => Err(LockError::InvalidUrl {
                reason: format!(
                    "pool_mode must be `session` or `transaction` (behind PgBouncer's pool_mode = transaction), not `{other}`"
                ),
            }),
        }
    }
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
            pool_mode: PostgresPoolMode::Session,
            listen_url: None,
            watch_interval: Duration::from_millis(100),
            durability: PostgresDurability::Flush,
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

    /// Sets [`pool_mode`](Self::pool_mode).
    #[must_use]
    pub fn with_pool_mode(mut self, pool_mode: PostgresPoolMode) -> Self {
        self.pool_mode = pool_mode;
        self
    }

    /// Sets [`listen_url`](Self::listen_url).
    #[must_use]
    pub fn with_listen_url(mut self, listen_url: impl Into<String>) -> Self {
        self.listen_url = Some(listen_url.into());
        self
    }

    /// Sets [`watch_interval`](Self::watch_interval).
    #[must_use]
    pub fn with_watch_interval(mut self, watch_interval: Duration) -> Self {
        self.watch_interval = watch_interval;
        self
    }

    /// Sets [`durability`](Self::durability).
    #[must_use]
    pub fn with_durability(mut self, durability: PostgresDurability) -> Self {
        self.durability = durability;
        self
    }
}

/// A [`LockStore`](crate::LockStore) in PostgreSQL.
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
#[derive(Clone)]
pub struct PostgresLockStore {
    pool: Pool,
    config: PostgresConfig,
    sql: Sql,
    watchers: Arc<Watchers>,
    /// The crash guard's state ([`PostgresDurability::Guard`] only).
    guard: Option<Arc<guard::Guard>>,
    /// Dropped with the store, which ends the listening task.
    _listener: Arc<tokio::sync::oneshot::Sender<()>>,
}

impl fmt::Debug for PostgresLockStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresLockStore")
            .field("schema", &self.config.schema)
            .field("table", &self.config.table)
            .finish_non_exhaustive()
    }
}
