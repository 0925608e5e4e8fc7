//! Store specs: `memory`, `sqlite:PATH`, `postgres://…`, `redis://…`, opened with a timeout.

use std::sync::Arc;
use std::time::Duration;

use conc_lock_store::{LockStore, StoreKind};
use conc_session::SessionStore;

/// How long opening a store may take before the command gives up.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// A store spec that could not be used; printed as one line.
#[derive(Debug)]
pub(crate) struct StoreError(pub(crate) String);

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

async fn timed<T, E: std::fmt::Display>(
    what: &str,
    open: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(OPEN_TIMEOUT, open).await {
        Ok(Ok(store)) => Ok(store),
        Ok(Err(e)) => Err(StoreError(format!("cannot open {what}: {e}"))),
        Err(_) => Err(StoreError(format!(
            "cannot open {what}: no answer within {OPEN_TIMEOUT:?}"
        ))),
    }
}

/// How a message names the store `spec` points at (`the PostgreSQL lock store`).
fn what(spec: &str, role: &str) -> Result<String, StoreError> {
    let parsed = conc_lock_store::parse_url(spec).map_err(|e| match e {
        conc_lock_store::LockError::InvalidUrl { reason } => StoreError(reason),
        other => StoreError(other.to_string()),
    })?;
    let backend = match parsed.kind {
        StoreKind::Memory => "memory",
        StoreKind::Sqlite => "SQLite",
        StoreKind::Postgres => "PostgreSQL",
        StoreKind::Redis => "Redis",
        StoreKind::Etcd => "etcd",
        _ => "",
    };
    Ok(format!("the {backend} {role} store"))
}

/// Opens a lock store from its URL (the library's parser: `conc_lock_store::connect`).
pub(crate) async fn locks(spec: &str) -> Result<Arc<dyn LockStore>, StoreError> {
    let what = what(spec, "lock")?;
    timed(&what, conc_lock_store::connect(spec)).await
}

/// Opens a lock store for looking only: a SQLite file read-only (it must exist and hold a
/// lock table; nothing is created), any other store as usual.
pub(crate) async fn locks_read_only(spec: &str) -> Result<Arc<dyn LockStore>, StoreError> {
    what(spec, "lock")?;
    let parsed = conc_lock_store::parse_url(spec).map_err(|e| StoreError(e.to_string()))?;
    if parsed.kind != StoreKind::Sqlite {
        return locks(spec).await;
    }
    let config = conc_lock_store::SqliteConfig::default().with_read_only(true);
    let store = timed(
        "the SQLite lock store",
        conc_lock_store::SqliteLockStore::open_with(&parsed.target, config),
    )
    .await?;
    Ok(Arc::new(store))
}

/// Opens a session store from its URL (`conc_session::connect`; Redis keeps locks only).
pub(crate) async fn sessions(spec: &str) -> Result<Arc<dyn SessionStore>, StoreError> {
    let what = what(spec, "session")?;
    timed(&what, conc_session::connect(spec)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_name_their_store() {
        assert_eq!(what("memory", "lock").unwrap(), "the memory lock store");
        assert_eq!(
            what("postgresql://u@h/db?sslmode=require", "session").unwrap(),
            "the PostgreSQL session store"
        );
        assert_eq!(
            what("rediss://h:1", "lock").unwrap(),
            "the Redis lock store"
        );
        assert!(what("sqlite:", "lock").is_err());
        assert!(
            what("mysql://x", "lock")
                .unwrap_err()
                .0
                .contains("unknown store")
        );
    }
}
