//! The store's one etcd watch on its lock keys: wakes the watchers of each key put or
//! deleted, in every process at once; after a broken watch it wakes every watcher (it
//! cannot tell what it missed) and watches again.

use std::sync::Weak;
use std::time::Duration;

use etcd_client::WatchOptions;

use crate::notify::Watchers;

/// Watches every key under `prefix` from the revision after `revision`, and wakes the
/// watchers of each user key whose lock changed. Ends when the store is dropped.
pub(super) async fn watch(
    client: etcd_client::Client,
    prefix: String,
    revision: i64,
    connect_timeout: Duration,
    watchers: Weak<Watchers>,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
    ready: tokio::sync::oneshot::Sender<()>,
) {
    let mut ready = Some(ready);
    let mut next = revision + 1;
    let mut pause = Duration::from_millis(100);
    loop {
        let mut watched = false;
        let session = async {
            let mut client = client.clone();
            let options = WatchOptions::new().with_prefix().with_start_revision(next);
            let mut stream = tokio::time::timeout(
                connect_timeout,
                client.watch(prefix.as_bytes(), Some(options)),
            )
            .await
            .map_err(|_| "starting the watch timed out".to_owned())?
            .map_err(|e| e.to_string())?;
            loop {
                let Some(reply) = stream.message().await.map_err(|e| e.to_string())? else {
                    return Err("the watch ended".to_owned());
                };
                if reply.created() {
                    watched = true;
                    if let Some(ready) = ready.take() {
                        let _ = ready.send(());
                    } else if let Some(watchers) = watchers.upgrade() {
                        // Anything may have happened while nothing watched.
                        watchers.notify_all();
                    }
                }
                if reply.canceled() {
                    if reply.compact_revision() > 0 {
                        // The revision to start from was compacted away: start at the
                        // oldest one kept (the wake-up of every watcher covers the gap).
                        next = next.max(reply.compact_revision());
                    }
                    return Err(format!(
                        "the watch was cancelled: {}",
                        reply.cancel_reason()
                    ));
                }
                let Some(watchers) = watchers.upgrade() else {
                    return Ok(());
                };
                for event in reply.events() {
                    let Some(kv) = event.kv() else {
                        continue;
                    };
                    next = next.max(kv.mod_revision() + 1);
                    if let Some(key) = std::str::from_utf8(kv.key())
                        .ok()
                        .and_then(|name| name.strip_prefix(prefix.as_str()))
                    {
                        watchers.notify(key);
                    }
                }
            }
        };
        tokio::select! {
            _ = &mut stopped => return,
            outcome = session => match outcome {
                Ok(()) => return,
                Err(error) => {
                    tracing::debug!(%error, "the etcd watch on the lock keys broke; watching again");
                }
            }
        }
        if watched {
            pause = Duration::from_millis(100);
        }
        if !crate::notify::after_disconnect(&watchers, &mut stopped, &mut pause).await {
            return;
        }
    }
}
