//! [`LockWatch`]: wake-ups when a key may have changed hands, so holders learn of a
//! take-over or a forced release at once, and waiters of a release, without polling.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use tokio::sync::watch;

/// The watchers of one store: one channel per watched key, and one for everything (sent
/// when the store cannot tell which keys changed, such as after a reconnect).
#[derive(Default)]
pub(crate) struct Watchers {
    keys: parking_lot::Mutex<HashMap<String, Slot>>,
    /// `keys.len()`, written under `keys`' lock, read without it: a store with no watched
    /// key skips the lock and the hash on every release. A subscriber registers before it
    /// looks at the lock's state (under the store's own lock or a round trip), and a
    /// releaser reads this after changing that state, so a release that a subscriber has
    /// not seen always finds the count raised.
    len: AtomicUsize,
    all: parking_lot::Mutex<Option<watch::Sender<u64>>>,
    /// For a store whose changes are found by polling (SQLite): how many polls have
    /// completed. A new watch records it, so the poller can tell whether the state it reads
    /// first for that key is the state at the moment the watch was made.
    polls: AtomicU64,
}

/// One watched key.
struct Slot {
    sender: watch::Sender<u64>,
    /// The completed-poll count when the first watch the poller has not yet seen was made.
    since: Option<u64>,
}

impl fmt::Debug for Watchers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watchers")
            .field("keys", &self.keys.lock().len())
            .finish()
    }
}

impl Watchers {
    /// A watch on `key`.
    pub(crate) fn subscribe(self: &Arc<Self>, key: &str) -> LockWatch {
        let all = self
            .all
            .lock()
            .get_or_insert_with(|| watch::channel(0).0)
            .subscribe();
        let mut keys = self.keys.lock();
        // Forget keys nobody watches any more, now and then, so the map stays small.
        if keys.len() >= 64 && keys.len().is_power_of_two() {
            keys.retain(|_, slot| slot.sender.receiver_count() > 0);
        }
        let polls = self.polls.load(Ordering::SeqCst);
        let slot = keys.entry(key.to_owned()).or_insert_with(|| Slot {
            sender: watch::channel(0).0,
            since: None,
        });
        slot.since.get_or_insert(polls);
        let key = slot.sender.subscribe();
        self.len.store(keys.len(), Ordering::SeqCst);
        LockWatch { key, all }
    }

    /// Wakes the watchers of `key`.
    pub(crate) fn notify(&self, key: &str) {
        if self.len.load(Ordering::SeqCst) == 0 {
            return;
        }
        let mut keys = self.keys.lock();
        if let Some(slot) = keys.get(key) {
            if slot.sender.receiver_count() == 0 {
                keys.remove(key);
                self.len.store(keys.len(), Ordering::SeqCst);
            } else {
                slot.sender.send_modify(|n| *n = n.wrapping_add(1));
            }
        }
    }

    #[cfg(any(
        feature = "sqlite",
        feature = "postgres",
        feature = "redis",
        feature = "etcd"
    ))]
    /// Wakes every watcher (the store cannot tell which keys changed).
    pub(crate) fn notify_all(&self) {
        if let Some(sender) = self.all.lock().as_ref() {
            sender.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    /// The keys someone watches now, each with the completed-poll count at which the
    /// earliest watch made since the last call began ([`None`] if none was made), which
    /// this call takes.
    pub(crate) fn take_watched_keys(&self) -> Vec<(String, Option<u64>)> {
        self.keys
            .lock()
            .iter_mut()
            .filter(|(_, slot)| slot.sender.receiver_count() > 0)
            .map(|(key, slot)| (key.clone(), slot.since.take()))
            .collect()
    }

    #[cfg(feature = "sqlite")]
    /// Counts a completed poll, and returns its number (0 for the first).
    pub(crate) fn poll_completed(&self) -> u64 {
        self.polls.fetch_add(1, Ordering::SeqCst)
    }

    #[cfg(feature = "sqlite")]
    /// Whether anyone watches anything.
    pub(crate) fn is_watched(&self) -> bool {
        self.all
            .lock()
            .as_ref()
            .is_some_and(|sender| sender.receiver_count() > 0)
    }
}

#[cfg(any(feature = "postgres", feature = "redis", feature = "etcd"))]
/// After a notification connection was lost: wakes every watcher (nobody can tell what
/// was missed), waits `pause` (doubled for next time, up to 5 s), and says whether to
/// connect again: `false` once the store is gone or `stopped` fired.
pub(crate) async fn after_disconnect(
    watchers: &std::sync::Weak<Watchers>,
    stopped: &mut tokio::sync::oneshot::Receiver<()>,
    pause: &mut std::time::Duration,
) -> bool {
    match watchers.upgrade() {
        Some(watchers) => watchers.notify_all(),
        None => return false,
    }
    let wait = *pause;
    *pause = (*pause * 2).min(std::time::Duration::from_secs(5));
    tokio::select! {
        _ = stopped => false,
        () = tokio::time::sleep(wait) => true,
    }
}

/// A watch on one key: [`changed`](Self::changed) returns when the key may have changed
/// hands (released, taken over, force-released) in any process that shares the store, or
/// when the store lost track (a reconnect). Wake-ups may be spurious: check the key again.
pub struct LockWatch {
    key: watch::Receiver<u64>,
    all: watch::Receiver<u64>,
}

impl fmt::Debug for LockWatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockWatch").finish_non_exhaustive()
    }
}

impl LockWatch {
    /// Waits for the next change of the key. Once the store is gone it never returns.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a change seen by a dropped call is reported by the next one.
    pub async fn changed(&mut self) {
        tokio::select! {
            changed = self.key.changed() => if changed.is_err() { std::future::pending::<()>().await },
            changed = self.all.changed() => if changed.is_err() { std::future::pending::<()>().await },
        }
    }
}
