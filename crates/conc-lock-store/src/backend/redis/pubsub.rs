//! The store's subscription to its events channel: wakes the watchers of each key named,
//! and every watcher after a lost connection.

use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::notify::Watchers;

use super::Epoch;
use super::sentinel::SentinelConnection;

/// Where the subscription connects.
pub(super) enum Subscribers {
    /// One server, or the nodes of a cluster, taken in turn (a publication reaches every
    /// node of a cluster).
    Nodes(Vec<redis::Client>),
    /// The primary the Sentinels name at the time; the subscription moves when the store's
    /// connection finds a new primary.
    Sentinel(SentinelConnection),
}

impl Subscribers {
    /// The client to subscribe through on the `turn`-th try.
    async fn client(&self, turn: usize) -> Result<redis::Client, String> {
        match self {
            Self::Nodes(clients) if clients.is_empty() => Err("no node to subscribe to".into()),
            Self::Nodes(clients) => Ok(clients[turn % clients.len()].clone()),
            Self::Sentinel(connection) => connection.primary_client().await,
        }
    }

    /// Resolves when the subscription should move to another server: never, but for a
    /// Sentinel connection that reached a new primary.
    async fn moved(changes: &mut Option<tokio::sync::watch::Receiver<Option<String>>>) {
        match changes {
            Some(changes) => {
                if changes.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending::<()>().await,
        }
    }
}

/// Subscribes to the store's events and wakes the watchers of each key named; after a
/// lost connection it wakes every watcher (it cannot tell what it missed) and subscribes
/// again, through the next of the nodes of a cluster, or on the primary the Sentinels name
/// now. Ends when the store is dropped.
pub(super) async fn subscribe(
    subscribers: Subscribers,
    channel: String,
    connect_timeout: Duration,
    watchers: Weak<Watchers>,
    epoch: Arc<parking_lot::Mutex<Epoch>>,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
    ready: tokio::sync::oneshot::Sender<()>,
) {
    let mut ready = Some(ready);
    use futures_util::StreamExt as _;
    let mut pause = Duration::from_millis(100);
    let mut turn = 0usize;
    let mut changes = match &subscribers {
        Subscribers::Sentinel(connection) => Some(connection.primary_changes()),
        Subscribers::Nodes(_) => None,
    };
    loop {
        let this_turn = turn;
        turn = turn.wrapping_add(1);
        if let Some(changes) = &mut changes {
            changes.mark_unchanged();
        }
        let subscribed = std::sync::atomic::AtomicBool::new(false);
        let session = async {
            let client = subscribers.client(this_turn).await?;
            let mut pubsub = tokio::time::timeout(connect_timeout, client.get_async_pubsub())
                .await
                .map_err(|_| "connecting timed out".to_owned())?
                .map_err(|e| e.to_string())?;
            tokio::time::timeout(connect_timeout, pubsub.subscribe(&channel))
                .await
                .map_err(|_| "subscribing timed out".to_owned())?
                .map_err(|e| e.to_string())?;
            subscribed.store(true, std::sync::atomic::Ordering::Relaxed);
            tracing::debug!(channel = %channel, "subscribed to the redis lock events");
            if let Some(ready) = ready.take() {
                let _ = ready.send(());
            } else if let Some(watchers) = watchers.upgrade() {
                // Anything may have happened while we were not subscribed.
                watchers.notify_all();
            }
            let mut messages = pubsub.into_on_message();
            while let Some(message) = messages.next().await {
                let Some(watchers) = watchers.upgrade() else {
                    return Ok(());
                };
                let Ok(payload) = message.get_payload::<String>() else {
                    continue;
                };
                if let Some(longest) = payload.strip_prefix("\0longest:") {
                    if let Ok(longest) = longest.parse::<u64>() {
                        let mut epoch = epoch.lock();
                        epoch.longest = epoch.longest.max(longest);
                    }
                } else if let Some(after) = payload.strip_prefix("\0after:") {
                    // A wipe was found: until `after`, every grant reads the guard.
                    if let Ok(after) = after.parse::<i64>() {
                        let mut epoch = epoch.lock();
                        epoch.after = epoch.after.max(after);
                    }
                } else {
                    watchers.notify(&payload);
                }
            }
            Err("the connection closed".to_owned())
        };
        tokio::select! {
            _ = &mut stopped => return,
            () = Subscribers::moved(&mut changes) => {
                tracing::debug!("the Redis primary changed; subscribing to the lock events there");
            }
            outcome = session => {
                if let Err(error) = outcome {
                    tracing::debug!(%error, "redis lock events interrupted; subscribing again");
                }
            }
        }
        if subscribed.into_inner() {
            // It had been working: the next try comes soon.
            pause = Duration::from_millis(100);
        }
        let go_on = tokio::select! {
            go_on = crate::notify::after_disconnect(&watchers, &mut stopped, &mut pause) => go_on,
            // A new primary found while pausing: subscribe there at once.
            () = Subscribers::moved(&mut changes) => true,
        };
        if !go_on {
            return;
        }
    }
}
