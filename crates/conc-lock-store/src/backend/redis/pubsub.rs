//! The store's subscription to its events channel: wakes the watchers of each key named,
//! and every watcher after a lost connection.

use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::notify::Watchers;

use super::Epoch;

/// Subscribes to the store's events and wakes the watchers of each key named; after a
/// lost connection it wakes every watcher (it cannot tell what it missed) and subscribes
/// again, through the next of `clients` (the nodes of a cluster). Ends when the store is
/// dropped.
pub(super) async fn subscribe(
    clients: Vec<redis::Client>,
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
    loop {
        let client = &clients[turn % clients.len().max(1)];
        turn = turn.wrapping_add(1);
        let session = async {
            let mut pubsub = tokio::time::timeout(connect_timeout, client.get_async_pubsub())
                .await
                .map_err(|_| "connecting timed out".to_owned())?
                .map_err(|e| e.to_string())?;
            tokio::time::timeout(connect_timeout, pubsub.subscribe(&channel))
                .await
                .map_err(|_| "subscribing timed out".to_owned())?
                .map_err(|e| e.to_string())?;
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
                match payload.strip_prefix("\0longest:") {
                    Some(longest) => {
                        if let Ok(longest) = longest.parse::<u64>() {
                            let mut epoch = epoch.lock();
                            epoch.longest = epoch.longest.max(longest);
                        }
                    }
                    None => watchers.notify(&payload),
                }
            }
            Err("the connection closed".to_owned())
        };
        tokio::select! {
            _ = &mut stopped => return,
            outcome = session => {
                if let Err(error) = outcome {
                    tracing::debug!(%error, "redis lock events interrupted; subscribing again");
                }
            }
        }
        if !crate::notify::after_disconnect(&watchers, &mut stopped, &mut pause).await {
            return;
        }
    }
}
