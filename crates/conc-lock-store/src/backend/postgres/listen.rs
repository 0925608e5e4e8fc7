//! The store's `LISTEN` connection: wakes the watchers of each key named in a
//! notification, and every watcher after a lost connection.

use std::sync::Weak;
use std::time::Duration;

use tokio_postgres::NoTls;

use crate::notify::Watchers;

/// Listens for the store's notifications on a connection of its own and wakes the
/// watchers of each key named; after a lost connection it wakes every watcher (it cannot
/// tell what it missed) and connects again. Ends when the store is dropped.
pub(super) async fn listen(
    config: tokio_postgres::Config,
    tls: Option<super::connection::Tls>,
    channel: String,
    watchers: Weak<Watchers>,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let mut pause = Duration::from_millis(100);
    loop {
        let session = async {
            match &tls {
                Some(tls) => {
                    let (client, connection) =
                        config.connect(super::connection::connector(tls)).await?;
                    listen_on(client, connection, &channel, &watchers).await
                }
                None => {
                    let (client, connection) = config.connect(NoTls).await?;
                    listen_on(client, connection, &channel, &watchers).await
                }
            }
        };
        tokio::select! {
            _ = &mut stopped => return,
            outcome = session => {
                if let Err(error) = outcome {
                    tracing::debug!(%error, "postgres lock notifications interrupted; reconnecting");
                } else {
                    tracing::debug!("postgres lock notification connection closed; reconnecting");
                }
            }
        }
        if !crate::notify::after_disconnect(&watchers, &mut stopped, &mut pause).await {
            return;
        }
    }
}

/// Sends `LISTEN` on one connection and forwards its notifications until it closes.
pub(super) async fn listen_on<S, T>(
    client: tokio_postgres::Client,
    mut connection: tokio_postgres::Connection<S, T>,
    channel: &str,
    watchers: &Weak<Watchers>,
) -> Result<(), tokio_postgres::Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures_util::StreamExt as _;
    let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    let statement = format!("LISTEN \"{channel}\"");
    let subscribe = client.batch_execute(&statement);
    tokio::pin!(subscribe);
    // Drive the connection while LISTEN runs.
    loop {
        tokio::select! {
            done = &mut subscribe => { done?; break; }
            message = messages.next() => match message {
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
                None => return Ok(()),
            },
        }
    }
    if let Some(watchers) = watchers.upgrade() {
        // Anything may have happened while we were not listening.
        watchers.notify_all();
    }
    while let Some(message) = messages.next().await {
        if let tokio_postgres::AsyncMessage::Notification(note) = message? {
            match watchers.upgrade() {
                Some(watchers) => watchers.notify(note.payload()),
                None => return Ok(()),
            }
        }
    }
    Ok::<(), tokio_postgres::Error>(())
}
