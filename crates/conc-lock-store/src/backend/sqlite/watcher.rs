//! The watcher thread: finds other processes' changes to watched keys through the file's
//! `PRAGMA data_version`, and reads the keys only when it moved. It looks when the
//! database's files change (inotify, through the `notify` crate: a commit writes the WAL
//! file, a checkpoint or a rollback-journal commit the main file) and, as the fallback where
//! no notification comes (a network file system), every `interval`; with nothing watched it
//! sleeps until a change or a quarter second, so an idle store costs no CPU.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Weak;
use std::sync::mpsc::{SyncSender, sync_channel};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

use crate::notify::Watchers;

use super::lock_store::now_millis;

/// Checks the watched keys for changes made through other connections: a cheap
/// `PRAGMA data_version` every `interval`, and the watched keys' states (live token and
/// fence, [`KeyState`]) only when it moved.
/// Ends when the store is dropped.
///
/// Every change made after a watch was created is reported, including one made before
/// this thread first reads the key: the state it reads first is taken as the key's state
/// at the watch's creation only when `data_version` shows that no other connection wrote
/// between the end of the poll before the watch was made and that first read; otherwise
/// the new watch is woken at once (a spurious wake-up, which watches allow).
///
/// Returns the sender that wakes the thread: the store sends on it when a watch is made, so
/// that the thread starts watching the files (it does so only while a key is watched: an
/// unwatched store's own writes wake no thread) and reads the new key at once.
pub(super) fn spawn_watcher(
    path: PathBuf,
    watchers: Weak<Watchers>,
    interval: Duration,
) -> SyncSender<()> {
    // One message at most waits: more changes before the thread looks are one look.
    let (wake, changed) = sync_channel(1);
    let sender = wake.clone();
    let run = move || {
        // Made when a key is first watched: a store that never watches holds no inotify
        // instance (the system allows a user 128 by default) and no notification thread.
        let mut events: Option<Option<FileEvents>> = None;
        let mut watched = false;
        // The pause before the next look after a change was reported: a commit's WAL write
        // is reported before its writer updates the shared index that `data_version` reads,
        // and a writer on a busy machine can be held up between the two for milliseconds,
        // so the looks go on, ever further apart, for about a second after the last report
        // (a look that finds nothing costs one `PRAGMA data_version`).
        let mut recheck: Option<Duration> = None;
        let mut connection: Option<Connection> = None;
        let mut version: Option<i64> = None;
        // The number of the last completed poll on this connection, and `data_version` as
        // it read at the poll's end.
        let mut last_poll: Option<(u64, i64)> = None;
        let mut seen: HashMap<String, KeyState> = HashMap::new();
        loop {
            let poll = interval.max(Duration::from_millis(1));
            // A change, a new watch, or the fallback poll (the idle check when nothing is
            // watched; the fallback every `interval` where the files report no change).
            let wait = match recheck {
                Some(pause) => pause.min(poll),
                None if watched => poll,
                None => poll.max(IDLE_CHECK),
            };
            recheck = if changed.recv_timeout(wait).is_ok() {
                Some(RECHECK_FIRST)
            } else {
                recheck.and_then(|pause| (pause < RECHECK_LAST).then(|| pause * 2))
            };
            let Some(watchers) = watchers.upgrade() else {
                return;
            };
            watched = watchers.is_watched();
            if watched && events.is_none() {
                events = Some(FileEvents::new(&path, sender.clone()));
            }
            if let Some(Some(files)) = events.as_mut() {
                files.watch(watched);
            }
            if !watched {
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
                let state: KeyState = db
                    .prepare_cached(
                        "SELECT CASE WHEN expires_at > ?2 THEN token END, fence
                         FROM conc_locks WHERE key = ?1",
                    )
                    .and_then(|mut s| {
                        s.query_row(params![key, now_millis()], |row| {
                            Ok((row.get(0)?, row.get(1)?))
                        })
                        .optional()
                    })
                    .unwrap_or(None);
                match seen.get(&key) {
                    Some(before) if *before == state => {}
                    Some(_) => {
                        seen.insert(key.clone(), state);
                        watchers.notify(&key);
                    }
                    None => {
                        seen.insert(key.clone(), state);
                        first_reads.push((key, since));
                    }
                }
            }
            let Some(after) = data_version() else {
                connection = None;
                watchers.notify_all();
                continue;
            };
            // A key read for the first time: what it read is the state when its watch was made
            // only if nothing was written from the end of the poll before the watch until
            // after the read. Otherwise a change may hide in the state read: wake the watch.
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
    wake
}

/// What the watcher compares of a watched key between looks: the live lease's token (none
/// once released or expired) and the row's fence, or nothing without a row. The fence
/// moves with every grant, so a lease taken and released between two looks (the token
/// none before and after) is a change all the same.
type KeyState = Option<(Option<String>, i64)>;

/// After a reported change, the watcher looks again after this pause, then after twice
/// the pause before, up to [`RECHECK_LAST`]: 10 looks over about a second.
const RECHECK_FIRST: Duration = Duration::from_millis(1);

/// The longest pause between the looks that follow a reported change.
const RECHECK_LAST: Duration = Duration::from_millis(512);

/// How long a watcher with nothing to watch sleeps between checks that its store is alive
/// and still unwatched (a change to the files wakes it at once).
const IDLE_CHECK: Duration = Duration::from_millis(250);

/// Changes to the database's files, as the operating system reports them: a message on the
/// watcher's channel each time the main file or its WAL file is written or replaced, while
/// [`watch`](Self::watch) is on. Readers write neither (their marks live in the `-shm`
/// file), so the watcher's own reads wake nobody.
struct FileEvents {
    watcher: notify::RecommendedWatcher,
    dir: PathBuf,
    on: bool,
    /// Whether a failure to watch the folder was logged (once: it is tried at every look).
    logged: bool,
}

impl FileEvents {
    /// `None` where the system gives no notifications: the watcher then polls.
    fn new(path: &Path, sender: SyncSender<()>) -> Option<Self> {
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = path.file_name()?.to_os_string();
        let mut wal = name.clone();
        wal.push("-wal");
        let watcher = notify::recommended_watcher(Self::handler(sender, [name, wal]))
            .map_err(|error| {
                tracing::debug!(%error, "no file notifications: the SQLite watcher polls only");
            })
            .ok()?;
        Some(Self {
            watcher,
            dir,
            on: false,
            logged: false,
        })
    }

    /// Turns the notifications on while keys are watched, off when none is (then this
    /// store's own writes wake no thread). Where the folder cannot be watched, the watcher
    /// polls every `interval`, as without notifications.
    fn watch(&mut self, on: bool) {
        use notify::Watcher as _;
        if on == self.on {
            return;
        }
        let done = if on {
            self.watcher
                .watch(&self.dir, notify::RecursiveMode::NonRecursive)
        } else {
            self.watcher.unwatch(&self.dir)
        };
        match done {
            Ok(()) => self.on = on,
            Err(error) if on => {
                if !std::mem::replace(&mut self.logged, true) {
                    tracing::debug!(%error, dir = %self.dir.display(), "cannot watch the database's folder: the SQLite watcher polls");
                }
            }
            // Not watched any more (the folder went away): off all the same.
            Err(_) => self.on = false,
        }
    }

    fn handler(
        sender: SyncSender<()>,
        names: [OsString; 2],
    ) -> impl Fn(notify::Result<notify::Event>) + Send + 'static {
        move |event| {
            let Ok(event) = event else {
                // Events may have been lost: look.
                let _ = sender.try_send(());
                return;
            };
            let writes = matches!(
                event.kind,
                notify::EventKind::Modify(_)
                    | notify::EventKind::Create(_)
                    | notify::EventKind::Remove(_)
            );
            let ours = event.paths.iter().any(|p| {
                p.file_name()
                    .is_some_and(|n| names.iter().any(|name| name == n))
            });
            if writes && ours {
                let _ = sender.try_send(());
            }
        }
    }
}
