//! Watching without `LISTEN` (behind a transaction pooler without a direct URL, or a store
//! made over a pool): the watched keys' tokens are read every `watch_interval`, and a key
//! whose token changed wakes its watchers.
//!
//! A key read for the first time wakes its watchers too: the read cannot tell whether the
//! key changed between the watch's creation and this read, and a watch must report every
//! change made after it was created (a spurious wake-up, which watches allow, costs the
//! watcher one look at the key).

use std::collections::HashMap;
use std::sync::Weak;
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio_postgres::types::Type;

use crate::notify::Watchers;

use super::PostgresPoolMode;
use super::client::column;
use super::connection::pooler_symptom;

/// What the poller needs: the pool, the statement reading the tokens of a list of keys,
/// how often, and how to send it.
pub(super) struct Poller {
    pub(super) pool: Pool,
    pub(super) sql: String,
    pub(super) interval: Duration,
    pub(super) op_timeout: Duration,
    pub(super) mode: PostgresPoolMode,
}

impl Poller {
    /// Reads the watched keys every interval until the store is dropped (`stopped`).
    pub(super) async fn run(
        self,
        watchers: Weak<Watchers>,
        mut stopped: tokio::sync::oneshot::Receiver<()>,
    ) {
        let mut seen: HashMap<String, Option<String>> = HashMap::new();
        loop {
            tokio::select! {
                _ = &mut stopped => return,
                () = tokio::time::sleep(self.interval) => {}
            }
            let Some(watchers) = watchers.upgrade() else {
                return;
            };
            let keys: Vec<String> = watchers
                .take_watched_keys()
                .into_iter()
                .map(|(key, _)| key)
                .collect();
            if keys.is_empty() {
                seen.clear();
                continue;
            }
            let tokens = match tokio::time::timeout(self.op_timeout, self.read(&keys)).await {
                Ok(Ok(tokens)) => tokens,
                Ok(Err(error)) => {
                    tracing::debug!(%error, "reading the watched locks failed; every watcher is woken once it works again");
                    seen.clear();
                    continue;
                }
                Err(_) => {
                    tracing::debug!(timeout = ?self.op_timeout, "reading the watched locks timed out");
                    seen.clear();
                    continue;
                }
            };
            seen.retain(|key, _| keys.contains(key));
            for key in keys {
                let token = tokens.get(&key).cloned().flatten();
                match seen.get(&key) {
                    Some(before) if *before == token => {}
                    _ => {
                        seen.insert(key.clone(), token);
                        watchers.notify(&key);
                    }
                }
            }
        }
    }

    /// The token of each of `keys` that has a row.
    async fn read(&self, keys: &[String]) -> Result<HashMap<String, Option<String>>, String> {
        let client = self.pool.get().await.map_err(|e| e.to_string())?;
        let rows = match self.mode {
            PostgresPoolMode::Transaction => {
                client
                    .query_typed(&self.sql, &[(&keys, Type::TEXT_ARRAY)])
                    .await
            }
            PostgresPoolMode::Session => {
                match client
                    .prepare_typed_cached(&self.sql, &[Type::TEXT_ARRAY])
                    .await
                {
                    Ok(statement) => client.query(&statement, &[&keys]).await,
                    Err(e) => Err(e),
                }
            }
        }
        .map_err(|e| pooler_symptom(&e).unwrap_or_else(|| e.to_string()))?;
        rows.iter()
            .map(|row| {
                Ok((
                    column::<String>(row, 0, "read the watched locks")
                        .map_err(|e| e.to_string())?,
                    column::<Option<String>>(row, 1, "read the watched locks")
                        .map_err(|e| e.to_string())?,
                ))
            })
            .collect()
    }
}
