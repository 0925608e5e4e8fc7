//! Store specs: `memory`, `sqlite:PATH`, `postgres://…`, `redis://…`, opened with a timeout.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use conc_lock_store::{
    LockStore, MemoryLockStore, PostgresConfig, PostgresLockStore, RedisConfig, RedisLockStore,
    SqliteLockStore,
};
use conc_session::{MemorySessionStore, PostgresSessionStore, SessionStore, SqliteSessionStore};

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

/// What a spec names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Spec {
    Memory,
    Sqlite(String),
    Postgres(String),
    Redis(String),
}

pub(crate) fn parse(spec: &str) -> Result<Spec, StoreError> {
    if spec == "memory" {
        Ok(Spec::Memory)
    } else if let Some(path) = spec.strip_prefix("sqlite:") {
        if path.is_empty() {
            return Err(StoreError(
                "`sqlite:` needs a path, as in `sqlite:/tmp/conc.db`".into(),
            ));
        }
        Ok(Spec::Sqlite(path.to_owned()))
    } else if spec.starts_with("postgres://") || spec.starts_with("postgresql://") {
        Ok(Spec::Postgres(spec.to_owned()))
    } else if spec.starts_with("redis://") {
        Ok(Spec::Redis(spec.to_owned()))
    } else {
        Err(StoreError(format!(
            "unknown store `{spec}`: use memory, sqlite:PATH, postgres://USER@HOST/DB or redis://HOST:PORT"
        )))
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

/// Opens a lock store from its spec.
pub(crate) async fn locks(spec: &str) -> Result<Arc<dyn LockStore>, StoreError> {
    Ok(match parse(spec)? {
        Spec::Memory => Arc::new(MemoryLockStore::new()),
        Spec::Sqlite(path) => Arc::new(
            timed(
                "the SQLite lock store",
                SqliteLockStore::open(Path::new(&path)),
            )
            .await?,
        ),
        Spec::Postgres(url) => Arc::new(
            timed(
                "the PostgreSQL lock store",
                PostgresLockStore::connect(&url, PostgresConfig::default()),
            )
            .await?,
        ),
        Spec::Redis(url) => Arc::new(
            timed(
                "the Redis lock store",
                RedisLockStore::connect(&url, RedisConfig::default()),
            )
            .await?,
        ),
    })
}

/// Opens a session store from its spec (Redis keeps locks only).
pub(crate) async fn sessions(spec: &str) -> Result<Arc<dyn SessionStore>, StoreError> {
    Ok(match parse(spec)? {
        Spec::Memory => Arc::new(MemorySessionStore::new()),
        Spec::Sqlite(path) => Arc::new(
            timed(
                "the SQLite session store",
                SqliteSessionStore::open(Path::new(&path)),
            )
            .await?,
        ),
        Spec::Postgres(url) => Arc::new(
            timed(
                "the PostgreSQL session store",
                PostgresSessionStore::connect(&url, "public"),
            )
            .await?,
        ),
        Spec::Redis(_) => {
            return Err(StoreError(
                "sessions cannot live in Redis here: use memory, sqlite:PATH or postgres://…"
                    .into(),
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse() {
        assert_eq!(parse("memory").unwrap(), Spec::Memory);
        assert_eq!(
            parse("sqlite:/tmp/x.db").unwrap(),
            Spec::Sqlite("/tmp/x.db".into())
        );
        assert!(matches!(
            parse("postgres://u@h/db").unwrap(),
            Spec::Postgres(_)
        ));
        assert!(matches!(parse("redis://h:1").unwrap(), Spec::Redis(_)));
        assert!(parse("sqlite:").is_err());
        assert!(parse("mysql://x").unwrap_err().0.contains("unknown store"));
    }
}
