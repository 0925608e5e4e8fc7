//! [`SqliteLockStore`]: leases in a SQLite file (or `:memory:`), safe for several
//! processes on one machine.
//!
//! One dedicated thread owns the connection; async calls send it jobs over a bounded
//! channel, so blocking SQLite work never runs on the async executor. The file is in WAL
//! mode with a busy timeout; every write is one statement (one transaction that takes the
//! write lock up front), so processes queue on SQLite's lock instead of deadlocking. Expiry uses the wall clock,
//! which the processes of one machine share. A released lease's row stays (token emptied,
//! expiry 0) with its fence, and a grant draws one more than the key's row's fence; a row
//! deleted by cleanup or a forced release leaves its fence in a floor row (a delete
//! trigger) that a grant of a key without a row starts above; and every fence is at least
//! the clock in microseconds. So fences strictly increase per key and survive release,
//! expiry and cleanup, and a grant writes its own row alone.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

mod lock_store;
mod schema;
mod watcher;
mod worker;

use rusqlite::{Connection, OptionalExtension, params};
pub use worker::{SqliteWorker, SqliteWorkerError};

use lock_store::{ACQUIRE_SQL, TAKE_OVER_SQL, ttl_millis};
use schema::{open_connection, open_read_only};
use watcher::spawn_watcher;

use crate::backend::metadata::encode_metadata;
use crate::error::LockError;
use crate::lease::Lease;
use crate::notify::Watchers;
use crate::request::LockRequest;
use crate::store::LockStore as _;
use crate::util::clock::unix_micros;
use crate::util::clock::{from_unix_millis, unix_millis};

const BACKEND: &str = "sqlite";
/// The schema version this build writes (`PRAGMA user_version`).
const SCHEMA_VERSION: i64 = 2;

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
    /// How often a watched key is checked for a change made by another process when no
    /// notification of a change to the file comes (default 25 ms). The watcher looks at
    /// once when the operating system reports that the database's files changed (inotify
    /// on Linux), and every `watch_interval` as the fallback where it does not (a network
    /// file system): a cheap `PRAGMA data_version` tells whether anything changed, and
    /// only then are the watched keys read.
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

/// A [`LockStore`](crate::LockStore) in a SQLite file.
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
    /// Wakes the watcher thread when a watch is made (none for an in-memory database).
    wake_watcher: Option<std::sync::mpsc::SyncSender<()>>,
}

impl fmt::Debug for SqliteLockStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteLockStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

pub(super) fn sql_error(context: &str) -> impl FnOnce(rusqlite::Error) -> LockError + '_ {
    move |e| LockError::backend(BACKEND, format!("{context}: {e}"), e)
}

impl SqliteLockStore {
    async fn acquire_inner(
        &self,
        request: &LockRequest,
        force: bool,
    ) -> Result<Option<Lease>, LockError> {
        request.validate(self.config.max_ttl)?;
        let margin = request.margin();
        let operation = if force { "take-over" } else { "acquire" };
        let request = request.clone();
        let sent = tokio::time::Instant::now();
        let watchers = self.watchers.clone();
        let granted = self
            .call(move |connection| {
                let wall = SystemTime::now();
                let now = unix_millis(wall);
                let clock = i64::try_from(unix_micros(wall)).unwrap_or(i64::MAX);
                let token = crate::util::random::shared_token();
                let expires_at = now.saturating_add(ttl_millis(request.ttl));
                // One statement, so one commit: take the key if free or expired, with the next
                // fence (above the key's row's and the floor deleted rows leave).
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
            .await?;
        let Some(lease) = granted else {
            return Ok(None);
        };
        match lease.clone().fresh(margin, operation) {
            Ok(lease) => Ok(Some(lease)),
            Err(late) => {
                // A stalled worker or disk answered after the lease's validity: give it
                // back (token-checked) before saying so.
                if let Err(error) = self.release(&lease).await {
                    tracing::warn!(%error, key = %lease.key, "could not release a grant that came too late; it expires with its TTL");
                }
                Err(late)
            }
        }
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
        let wake_watcher = (path != Path::new(":memory:")).then(|| {
            spawn_watcher(
                path.clone(),
                Arc::downgrade(&watchers),
                config.watch_interval,
            )
        });
        Ok(Self {
            worker,
            config,
            path,
            watchers,
            wake_watcher,
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
