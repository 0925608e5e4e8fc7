//! The watcher thread: finds other processes' changes to watched keys by polling the
//! file's `PRAGMA data_version`, and reads the keys only when it moved.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Weak;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

use crate::notify::Watchers;

use super::lock_store::now_millis;

/// Checks the watched keys for changes made through other connections: a cheap
/// `PRAGMA data_version` every `interval`, and the watched keys' tokens only when it moved.
/// Ends when the store is dropped.
///
/// Every change made after a watch was created is reported, including one made before
/// this thread first reads the key: the token it reads first is taken as the key's state
/// at the watch's creation only when `data_version` shows that no other connection wrote
/// between the end of the poll before the watch was made and that first read; otherwise
/// the new watch is woken at once (a spurious wake-up, which watches allow).
pub(super) fn spawn_watcher(path: PathBuf, watchers: Weak<Watchers>, interval: Duration) {
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
