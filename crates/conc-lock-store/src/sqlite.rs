//! [`SqliteLockStore`]: leases in a SQLite file (or `:memory:`), safe for several
//! processes on one machine.
//!
//! One dedicated thread owns the connection; async calls send it jobs over a bounded
//! channel, so blocking SQLite work never runs on the async executor. The file is in WAL
//! mode with a busy timeout; every write is one statement (one transaction that takes the
//! write lock up front), so processes queue on SQLite's lock instead of deadlocking. Expiry uses the wall clock,
//! which the processes of one machine share. Fences come from one counter row (moved by
//! triggers in the acquiring statement), so they strictly increase per key (and across
//! keys) and survive release, expiry and cleanup.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use crate::sqlite_worker::{SqliteWorker, SqliteWorkerError};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::clock::unix_micros;
use crate::error::LockError;
use crate::lease::{Lease, LockInfo};
use crate::metadata::{decode_metadata, encode_metadata};
use crate::notify::{LockWatch, Watchers};
use crate::request::{LockRequest, validate_key, validate_ttl};
use crate::{LockStore, from_unix_millis, unix_millis};

const BACKEND: &str = "sqlite";
/// The schema version this build writes (`PRAGMA user_version`).
const SCHEMA_VERSION: i64 = 1;

/// Settings for [`SqliteLockStore`].
///
/// Start from [`Default`] and change what you need with the `with_*` setters. The struct is
/// `#[non_exhaustive]`: a field added in a later release is not a breaking change, so it
/// cannot be built with a struct literal outside this crate (its fields stay readable).
///
/// ```
/// use std::time::Duration;
/// use conc_lock_store::SqliteConfig;
///
/// let config = SqliteConfig::default().with_busy_timeout(Duration::from_secs(1));
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SqliteConfig {
    /// How long a statement waits for another process's write lock (default 5 s).
    pub busy_timeout: Duration,
    /// The limit on each whole operation, queueing included (default 10 s).
    pub op_timeout: Duration,
    /// The longest TTL accepted (default 1 h).
    pub max_ttl: Duration,
    /// Jobs that may queue for the connection's thread (default 1024).
    pub queue: usize,
    /// How often a watched key is checked for a change made by another process (default
    /// 25 ms): SQLite has no notifications, so a cheap `PRAGMA data_version` tells when
    /// anything changed, and only then are the watched keys read.
    pub watch_interval: Duration,
    /// Open the file read-only (default `false`): for looking, never writing. The file and
    /// its lock table must exist (nothing is created); acquire, release and cleanup fail.
    pub read_only: bool,
    /// The durability of a commit (`PRAGMA synchronous`, default `Normal`: in WAL mode a
    /// power cut may lose the last commits, never corrupt the file; `Full` syncs each one).
    pub synchronous: SqliteSynchronous,
}

/// SQLite's `PRAGMA synchronous` levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SqliteSynchronous {
    /// No syncs: fastest; an OS crash or a power cut can corrupt the file.
    Off,
    /// Syncs at checkpoints (the default, with WAL): a power cut may lose the last commits.
    #[default]
    Normal,
    /// Syncs every commit: a commit survives a power cut.
    Full,
    /// As `Full`, and syncs the directory too.
    Extra,
}

impl SqliteSynchronous {
    fn pragma(self) -> &'static str {
        match self {
            SqliteSynchronous::Off => "OFF",
            SqliteSynchronous::Normal => "NORMAL",
            SqliteSynchronous::Full => "FULL",
            SqliteSynchronous::Extra => "EXTRA",
        }
    }
}

impl Default for SqliteConfig {
    fn default() -> Self {
        Self {
            busy_timeout: Duration::from_secs(5),
            op_timeout: Duration::from_secs(10),
            max_ttl: Duration::from_secs(3600),
            queue: 1024,
            watch_interval: Duration::from_millis(25),
            read_only: false,
            synchronous: SqliteSynchronous::Normal,
        }
    }
}

impl SqliteConfig {
    /// Sets [`busy_timeout`](Self::busy_timeout).
    #[must_use]
    pub fn with_busy_timeout(mut self, busy_timeout: Duration) -> Self {
        self.busy_timeout = busy_timeout;
        self
    }

    /// Sets [`op_timeout`](Self::op_timeout).
    #[must_use]
    pub fn with_op_timeout(mut self, op_timeout: Duration) -> Self {
        self.op_timeout = op_timeout;
        self
    }

    /// Sets [`max_ttl`](Self::max_ttl).
    #[must_use]
    pub fn with_max_ttl(mut self, max_ttl: Duration) -> Self {
        self.max_ttl = max_ttl;
        self
    }

    /// Sets [`queue`](Self::queue).
    #[must_use]
    pub fn with_queue(mut self, queue: usize) -> Self {
        self.queue = queue;
        self
    }

    /// Sets [`watch_interval`](Self::watch_interval).
    #[must_use]
    pub fn with_watch_interval(mut self, watch_interval: Duration) -> Self {
        self.watch_interval = watch_interval;
        self
    }

    /// Sets [`read_only`](Self::read_only).
    #[must_use]
    pub fn with_read_only(mut self, read_only: bool) -> Self {
        self.read_only = read_only;
        self
    }

    /// Sets [`synchronous`](Self::synchronous).
    #[must_use]
    pub fn with_synchronous(mut self, synchronous: SqliteSynchronous) -> Self {
        self.synchronous = synchronous;
        self
    }
}

/// A [`LockStore`] in a SQLite file.
///
/// ```
/// use std::time::Duration;
/// use conc_lock_store::{LockRequest, LockStore, SqliteLockStore};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), conc_lock_store::LockError> {
/// let dir = tempfile::tempdir().unwrap();
/// let store = SqliteLockStore::open(dir.path().join("locks.db")).await?;
/// let lease = store
///     .try_acquire(&LockRequest::new("conversation:1", "worker-a", Duration::from_secs(30)))
///     .await?
///     .expect("free");
/// assert_eq!(store.inspect("conversation:1").await?.unwrap().owner, "worker-a");
/// assert!(store.release(&lease).await?);
/// # Ok(())
/// # }
/// ```
pub struct SqliteLockStore {
    worker: SqliteWorker,
    config: SqliteConfig,
    path: PathBuf,
    watchers: Arc<Watchers>,
}

impl fmt::Debug for SqliteLockStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteLockStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn sql_error(context: &str) -> impl FnOnce(rusqlite::Error) -> LockError + '_ {
    move |e| LockError::backend(BACKEND, format!("{context}: {e}"), e)
}

impl SqliteLockStore {
    async fn acquire_inner(
        &self,
        request: &LockRequest,
        force: bool,
    ) -> Result<Option<Lease>, LockError> {
        request.validate(self.config.max_ttl)?;
        let request = request.clone();
        let sent = tokio::time::Instant::now();
        let watchers = self.watchers.clone();
        self.call(move |connection| {
            let wall = SystemTime::now();
            let now = unix_millis(wall);
            let clock = i64::try_from(unix_micros(wall)).unwrap_or(i64::MAX);
            let token = crate::random::shared_token();
            let expires_at = now.saturating_add(ttl_millis(request.ttl));
            // One statement, so one commit: take the key if free or expired, with the next
            // fence; the triggers move the store's fence counter along.
            let fence: Option<i64> = connection
                .prepare_cached(if force { TAKE_OVER_SQL } else { ACQUIRE_SQL })
                .and_then(|mut s| {
                    s.query_row(
                        params![
                            request.key,
                            request.owner,
                            token,
                            encode_metadata(&request.metadata),
                            now,
                            expires_at,
                            clock
                        ],
                        |row| row.get(0),
                    )
                    .optional()
                })
                .map_err(sql_error("acquire"))?;
            let Some(fence) = fence else {
                return Ok(None);
            };
            if force {
                watchers.notify(&request.key);
            }
            Ok(Some(Lease {
                key: request.key,
                owner: request.owner,
                token,
                fence: u64::try_from(fence).unwrap_or(0),
                acquired_at: from_unix_millis(now),
                expires_at: from_unix_millis(expires_at),
                ttl: request.ttl,
                requested_at: sent,
            }))
        })
        .await
    }

    /// Opens (creating if needed) the lock table in the SQLite file at `path` (or
    /// `":memory:"`), with the default settings.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future may leave the schema created; nothing else.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, LockError> {
        Self::open_with(path, SqliteConfig::default()).await
    }

    /// Opens with `config`.
    ///
    /// # Cancel safety
    ///
    /// As [`open`](Self::open).
    pub async fn open_with(
        path: impl AsRef<Path>,
        config: SqliteConfig,
    ) -> Result<Self, LockError> {
        let path = path.as_ref().to_path_buf();
        let (thread_path, busy, read_only, synchronous) = (
            path.clone(),
            config.busy_timeout,
            config.read_only,
            config.synchronous,
        );
        let started = SqliteWorker::start(
            "conc-sqlite-locks",
            config.queue,
            config.op_timeout,
            move || {
                if read_only {
                    open_read_only(&thread_path, busy)
                } else {
                    open_connection(&thread_path, busy, synchronous)
                }
            },
        )
        .await;
        let worker = match started {
            Ok(Ok(worker)) => worker,
            Ok(Err(e)) => return Err(e),
            Err(SqliteWorkerError::TimedOut(limit)) => {
                return Err(LockError::Backend {
                    backend: BACKEND,
                    message: format!("opening {} took longer than {limit:?}", path.display()),
                    source: None,
                });
            }
            Err(e) => {
                return Err(LockError::backend(
                    BACKEND,
                    "the connection thread stopped while opening",
                    e,
                ));
            }
        };
        let watchers = Arc::<Watchers>::default();
        if path != Path::new(":memory:") {
            spawn_watcher(
                path.clone(),
                Arc::downgrade(&watchers),
                config.watch_interval,
            );
        }
        Ok(Self {
            worker,
            config,
            path,
            watchers,
        })
    }

    /// The file this store uses.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on the connection's thread, within the operation timeout.
    async fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<R, LockError> + Send + 'static,
    ) -> Result<R, LockError> {
        match self.worker.call(f).await {
            Ok(result) => result,
            Err(SqliteWorkerError::TimedOut(limit)) => Err(LockError::Backend {
                backend: BACKEND,
                message: format!("the operation took longer than {limit:?}"),
                source: None,
            }),
            Err(e) => Err(LockError::backend(
                BACKEND,
                "the connection thread has stopped",
                e,
            )),
        }
    }
}

/// Checks the watched keys for changes made through other connections: a cheap
/// `PRAGMA data_version` every `interval`, and the watched keys' tokens only when it moved.
/// Ends when the store is dropped.
///
/// Every change made after a watch was created is reported, including one made before
/// this thread first reads the key: the token it reads first is taken as the key's state
/// at the watch's creation only when `data_version` shows that no other connection wrote
/// between the end of the poll before the watch was made and that first read; otherwise
/// the new watch is woken at once (a spurious wake-up, which watches allow).
fn spawn_watcher(path: PathBuf, watchers: Weak<Watchers>, interval: Duration) {
    let run = move || {
        let mut connection: Option<Connection> = None;
        let mut version: Option<i64> = None;
        // The number of the last completed poll on this connection, and `data_version` as
        // it read at the poll's end.
        let mut last_poll: Option<(u64, i64)> = None;
        let mut seen: HashMap<String, Option<String>> = HashMap::new();
        loop {
            std::thread::sleep(interval.max(Duration::from_millis(1)));
            let Some(watchers) = watchers.upgrade() else {
                return;
            };
            if !watchers.is_watched() {
                seen.clear();
                continue;
            }
            if connection.is_none() {
                connection = Connection::open_with_flags(
                    &path,
                    rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
                        | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )
                .ok();
                version = None;
                last_poll = None;
            }
            let Some(db) = connection.as_ref() else {
                continue;
            };
            let data_version = || -> Option<i64> {
                db.query_row("PRAGMA data_version", [], |row| row.get(0))
                    .ok()
            };
            let Some(current) = data_version() else {
                // The file is unreadable now: start afresh, and let the holders check.
                connection = None;
                watchers.notify_all();
                continue;
            };
            let keys = watchers.take_watched_keys();
            let unchanged = version == Some(current);
            if unchanged && keys.iter().all(|(k, _)| seen.contains_key(k)) {
                last_poll = Some((watchers.poll_completed(), current));
                continue;
            }
            version = Some(current);
            seen.retain(|k, _| keys.iter().any(|(key, _)| key == k));
            let mut first_reads = Vec::new();
            for (key, since) in keys {
                let token: Option<String> = db
                    .prepare_cached(
                        "SELECT token FROM conc_locks WHERE key = ?1 AND expires_at > ?2",
                    )
                    .and_then(|mut s| {
                        s.query_row(params![key, now_millis()], |row| row.get(0))
                            .optional()
                    })
                    .unwrap_or(None);
                match seen.get(&key) {
                    Some(before) if *before == token => {}
                    Some(_) => {
                        seen.insert(key.clone(), token);
                        watchers.notify(&key);
                    }
                    None => {
                        seen.insert(key.clone(), token);
                        first_reads.push((key, since));
                    }
                }
            }
            let Some(after) = data_version() else {
                connection = None;
                watchers.notify_all();
                continue;
            };
            // A key read for the first time: its token is the state when its watch was made
            // only if nothing was written from the end of the poll before the watch until
            // after the read. Otherwise a change may hide in the token read: wake the watch.
            for (key, since) in first_reads {
                let baseline = match (since, last_poll) {
                    (Some(since), Some((poll, at_end))) => since == poll + 1 && at_end == after,
                    _ => false,
                };
                if !baseline {
                    watchers.notify(&key);
                }
            }
            if after != current {
                // Written during the reads: read every key again next time.
                version = None;
            }
            last_poll = Some((watchers.poll_completed(), after));
        }
    };
    if let Err(error) = std::thread::Builder::new()
        .name("conc-sqlite-watch".into())
        .spawn(run)
    {
        tracing::warn!(%error, "could not start the SQLite lock watcher; holders learn of a take-over at their next renewal");
    }
}

/// Opens an existing lock file for reading only; refuses a file without the lock table.
fn open_read_only(path: &Path, busy: Duration) -> Result<Connection, LockError> {
    let connection = Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| LockError::Backend {
        backend: BACKEND,
        message: format!(
            "cannot open `{}` read-only (does the file exist?): {e}",
            path.display()
        ),
        source: Some(Box::new(e)),
    })?;
    connection
        .busy_timeout(busy)
        .map_err(sql_error("busy_timeout"))?;
    let has_table: bool = connection
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'conc_locks'",
            [],
            |row| row.get::<_, i64>(0),
        )
        .map_err(sql_error("read the schema"))?
        > 0;
    if !has_table {
        return Err(LockError::Backend {
            backend: BACKEND,
            message: format!("`{}` holds no conc lock table", path.display()),
            source: None,
        });
    }
    Ok(connection)
}

fn open_connection(
    path: &Path,
    busy: Duration,
    synchronous: SqliteSynchronous,
) -> Result<Connection, LockError> {
    let mut connection = Connection::open(path).map_err(sql_error("open"))?;
    connection
        .busy_timeout(busy)
        .map_err(sql_error("busy_timeout"))?;
    if path != Path::new(":memory:") {
        // Switching to WAL needs a moment alone with the file; another process opening it
        // at the same time makes it busy without calling the busy handler, so retry.
        let mut tries = 0;
        while let Err(e) = connection.pragma_update(None, "journal_mode", "WAL") {
            tries += 1;
            if tries > 100 {
                return Err(sql_error("journal_mode")(e));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        connection
            .pragma_update(None, "synchronous", synchronous.pragma())
            .map_err(sql_error("synchronous"))?;
    }
    migrate(&mut connection)?;
    Ok(connection)
}

fn migrate(connection: &mut Connection) -> Result<(), LockError> {
    let tx = connection
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sql_error("begin migration"))?;
    let version: i64 = tx
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(sql_error("read schema version"))?;
    if version > SCHEMA_VERSION {
        return Err(LockError::Backend {
            backend: BACKEND,
            message: format!(
                "the lock schema is version {version}, newer than this build's {SCHEMA_VERSION}: upgrade conc"
            ),
            source: None,
        });
    }
    if version < 1 {
        tx.execute_batch(
            "CREATE TABLE IF NOT EXISTS conc_locks (
                 key TEXT PRIMARY KEY,
                 owner TEXT NOT NULL,
                 token TEXT NOT NULL,
                 fence INTEGER NOT NULL,
                 metadata TEXT NOT NULL,
                 acquired_at INTEGER NOT NULL,
                 expires_at INTEGER NOT NULL
             ) WITHOUT ROWID;
             CREATE INDEX IF NOT EXISTS conc_locks_expires_at ON conc_locks (expires_at);
             CREATE TABLE IF NOT EXISTS conc_lock_fence (
                 id INTEGER PRIMARY KEY CHECK (id = 0),
                 value INTEGER NOT NULL
             );
             INSERT OR IGNORE INTO conc_lock_fence (id, value) VALUES (0, 0);
             CREATE TRIGGER IF NOT EXISTS conc_locks_fence_on_insert AFTER INSERT ON conc_locks
             BEGIN UPDATE conc_lock_fence SET value = NEW.fence WHERE id = 0 AND value < NEW.fence; END;
             CREATE TRIGGER IF NOT EXISTS conc_locks_fence_on_update AFTER UPDATE OF fence ON conc_locks
             BEGIN UPDATE conc_lock_fence SET value = NEW.fence WHERE id = 0 AND value < NEW.fence; END;
             PRAGMA user_version = 1;",
        )
        .map_err(sql_error("create the lock schema"))?;
    }
    tx.commit().map_err(sql_error("commit migration"))
}

fn now_millis() -> i64 {
    unix_millis(SystemTime::now())
}

fn ttl_millis(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1)
}

/// Takes the key if free or expired, with the next fence (one more than the store's last,
/// and at least the clock in microseconds, `?7`, so a deleted file does not send fences
/// back); the triggers move the store's fence counter along. One statement, so one commit.
const ACQUIRE_SQL: &str =
    "INSERT INTO conc_locks (key, owner, token, fence, metadata, acquired_at, expires_at)
     VALUES (?1, ?2, ?3, MAX((SELECT value + 1 FROM conc_lock_fence WHERE id = 0), ?7), ?4, ?5, ?6)
     ON CONFLICT (key) DO UPDATE SET
         owner = excluded.owner, token = excluded.token, fence = excluded.fence,
         metadata = excluded.metadata, acquired_at = excluded.acquired_at,
         expires_at = excluded.expires_at
     WHERE conc_locks.expires_at <= ?5
     RETURNING fence";

/// As [`ACQUIRE_SQL`], whoever holds the key.
const TAKE_OVER_SQL: &str =
    "INSERT INTO conc_locks (key, owner, token, fence, metadata, acquired_at, expires_at)
     VALUES (?1, ?2, ?3, MAX((SELECT value + 1 FROM conc_lock_fence WHERE id = 0), ?7), ?4, ?5, ?6)
     ON CONFLICT (key) DO UPDATE SET
         owner = excluded.owner, token = excluded.token, fence = excluded.fence,
         metadata = excluded.metadata, acquired_at = excluded.acquired_at,
         expires_at = excluded.expires_at
     RETURNING fence";

const INFO_COLUMNS: &str = "key, owner, metadata, fence, acquired_at, expires_at";

fn info_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<LockInfo> {
    Ok(LockInfo {
        key: row.get(0)?,
        owner: row.get(1)?,
        metadata: decode_metadata(&row.get::<_, String>(2)?),
        fence: u64::try_from(row.get::<_, i64>(3)?).unwrap_or(0),
        acquired_at: from_unix_millis(row.get(4)?),
        expires_at: from_unix_millis(row.get(5)?),
    })
}

#[async_trait::async_trait]
impl LockStore for SqliteLockStore {
    async fn try_acquire(&self, request: &LockRequest) -> Result<Option<Lease>, LockError> {
        self.acquire_inner(request, false).await
    }

    async fn take_over(&self, request: &LockRequest) -> Result<Lease, LockError> {
        LockError::taken(BACKEND, self.acquire_inner(request, true).await?)
    }

    async fn release(&self, lease: &Lease) -> Result<bool, LockError> {
        let (key, token) = (lease.key.clone(), lease.token.clone());
        let watchers = self.watchers.clone();
        self.call(move |connection| {
            let removed = connection
                .prepare_cached(
                    "DELETE FROM conc_locks WHERE key = ?1 AND token = ?2 AND expires_at > ?3",
                )
                .and_then(|mut s| s.execute(params![key, token, now_millis()]))
                .map_err(sql_error("release"))?;
            if removed == 1 {
                watchers.notify(&key);
            }
            Ok(removed == 1)
        })
        .await
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Lease, LockError> {
        validate_ttl(ttl, self.config.max_ttl)?;
        let lease = lease.clone();
        let sent = tokio::time::Instant::now();
        self.call(move |connection| {
            let now = now_millis();
            let expires_at = now.saturating_add(ttl_millis(ttl));
            let renewed = connection
                .prepare_cached(
                    "UPDATE conc_locks SET expires_at = ?4 WHERE key = ?1 AND token = ?2 AND expires_at > ?3",
                )
                .and_then(|mut s| s.execute(params![lease.key, lease.token, now, expires_at]))
                .map_err(sql_error("renew"))?;
            lease.renewed(
                (renewed == 1).then(|| from_unix_millis(expires_at)),
                ttl,
                sent,
            )
        })
        .await
    }

    async fn renew_many(&self, leases: &[Lease]) -> Vec<Result<Lease, LockError>> {
        let max_ttl = self.config.max_ttl;
        let batch = leases.to_vec();
        let sent = tokio::time::Instant::now();
        let count = batch.len();
        // One transaction on the connection's thread: one round trip, one commit.
        let outcome = self
            .call(move |connection| {
                let transaction = connection.transaction().map_err(sql_error("renew"))?;
                let mut out = Vec::with_capacity(batch.len());
                {
                    let mut statement = transaction
                        .prepare_cached(
                            "UPDATE conc_locks SET expires_at = ?4 WHERE key = ?1 AND token = ?2 AND expires_at > ?3",
                        )
                        .map_err(sql_error("renew"))?;
                    let now = now_millis();
                    for lease in &batch {
                        if let Err(e) = validate_ttl(lease.ttl, max_ttl) {
                            out.push(Err(e));
                            continue;
                        }
                        let expires_at = now.saturating_add(ttl_millis(lease.ttl));
                        let renewed = statement
                            .execute(params![lease.key, lease.token, now, expires_at])
                            .map_err(sql_error("renew"))?;
                        out.push(lease.renewed(
                            (renewed == 1).then(|| from_unix_millis(expires_at)),
                            lease.ttl,
                            sent,
                        ));
                    }
                }
                transaction.commit().map_err(sql_error("renew"))?;
                Ok(out)
            })
            .await;
        match outcome {
            Ok(out) => out,
            Err(error) => (0..count)
                .map(|_| Err(error.for_each_of_a_batch()))
                .collect(),
        }
    }

    async fn inspect(&self, key: &str) -> Result<Option<LockInfo>, LockError> {
        validate_key(key)?;
        let key = key.to_owned();
        self.call(move |connection| {
            connection
                .prepare_cached(&format!(
                    "SELECT {INFO_COLUMNS} FROM conc_locks WHERE key = ?1 AND expires_at > ?2"
                ))
                .and_then(|mut s| {
                    s.query_row(params![key, now_millis()], info_from_row)
                        .optional()
                })
                .map_err(sql_error("inspect"))
        })
        .await
    }

    async fn list(&self, prefix: &str, limit: usize) -> Result<Vec<LockInfo>, LockError> {
        let prefix = prefix.to_owned();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.call(move |connection| {
            let upper = format!("{prefix}\u{10FFFF}");
            let mut statement = connection
                .prepare_cached(&format!(
                    "SELECT {INFO_COLUMNS} FROM conc_locks
                     WHERE key >= ?1 AND key < ?2 AND expires_at > ?3 ORDER BY key LIMIT ?4"
                ))
                .map_err(sql_error("list"))?;
            let rows = statement
                .query_map(params![prefix, upper, now_millis(), limit], info_from_row)
                .map_err(sql_error("list"))?;
            let mut out = Vec::new();
            for row in rows {
                let info = row.map_err(sql_error("list"))?;
                if info.key.starts_with(&prefix) {
                    out.push(info);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn cleanup_expired(&self) -> Result<u64, LockError> {
        self.call(|connection| {
            connection
                .prepare_cached("DELETE FROM conc_locks WHERE expires_at <= ?1")
                .and_then(|mut s| s.execute([now_millis()]))
                .map(|n| n as u64)
                .map_err(sql_error("cleanup"))
        })
        .await
    }

    async fn force_release(&self, key: &str) -> Result<bool, LockError> {
        validate_key(key)?;
        let key = key.to_owned();
        let watchers = self.watchers.clone();
        self.call(move |connection| {
            let expires_at: Option<i64> = connection
                .prepare_cached("DELETE FROM conc_locks WHERE key = ?1 RETURNING expires_at")
                .and_then(|mut s| s.query_row([&key], |row| row.get(0)).optional())
                .map_err(sql_error("force release"))?;
            let live = expires_at.is_some_and(|e| e > now_millis());
            if live {
                watchers.notify(&key);
            }
            Ok(live)
        })
        .await
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
