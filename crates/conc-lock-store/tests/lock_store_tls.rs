//! TLS and connection errors, on servers the tests start themselves: a `redis-server` with
//! only a TLS port, and a private PostgreSQL cluster with `ssl = on`, both with
//! certificates made here (a CA and a server certificate for localhost and 127.0.0.1).
//! A certificate that does not verify is refused with a clear error, never a plaintext
//! fallback; a wrong password, a missing database and a closed port each name their cause.

// A test may panic on an unexpected row; library code may not (clippy.toml).
#![allow(clippy::disallowed_methods)]
#![cfg(feature = "conformance")]

use std::path::Path;
use std::time::Duration;

use conc_lock_store::{ConnectFailure, LockError, LockRequest, LockStore};

/// A CA and a server certificate signed by it, as PEM: (ca, cert, key).
fn certificates() -> (String, String, String) {
    let made = conc_lock_store::servers::TestCertificates::new().unwrap();
    (made.ca, made.cert, made.key)
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn cause(error: &LockError) -> Option<ConnectFailure> {
    match error {
        LockError::Connect { cause, .. } => Some(*cause),
        _ => None,
    }
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn redis_over_tls_verifies_the_server() {
    use conc_lock_store::servers::PrivateRedis;
    use conc_lock_store::{RedisConfig, RedisLockStore};
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certificates();
    let (ca_path, cert_path, key_path) = (
        write(dir.path(), "ca.pem", &ca),
        write(dir.path(), "server.pem", &cert),
        write(dir.path(), "server.key", &key),
    );
    let Some(server) = PrivateRedis::start_tls(&cert_path, &key_path, &ca_path).unwrap() else {
        return;
    };
    let config = || {
        RedisConfig::default()
            .with_connect_timeout(Duration::from_secs(3))
            .with_op_timeout(Duration::from_secs(3))
    };
    let trusted = format!("{}?sslrootcert={}", server.url(), ca_path.display());
    let store = RedisLockStore::connect(&trusted, config()).await.unwrap();
    let lease = store
        .try_acquire(&LockRequest::new("tls", "o", Duration::from_secs(5)))
        .await
        .unwrap()
        .unwrap();
    assert!(store.release(&lease).await.unwrap());

    // The public roots alone do not know this CA: refused, and the error says TLS.
    let error = RedisLockStore::connect(&server.url(), config())
        .await
        .unwrap_err();
    assert_eq!(cause(&error), Some(ConnectFailure::Tls), "{error}");
    assert!(!error.is_transient());
    // Another CA: refused too.
    let (other_ca, _, _) = certificates();
    let other = write(dir.path(), "other.pem", &other_ca);
    let wrong = format!("{}?sslrootcert={}", server.url(), other.display());
    let error = RedisLockStore::connect(&wrong, config()).await.unwrap_err();
    assert_eq!(cause(&error), Some(ConnectFailure::Tls), "{error}");
    // Plaintext to a TLS port: an error, not a silent fallback.
    let plain = server.url().replace("rediss://", "redis://");
    assert!(RedisLockStore::connect(&plain, config()).await.is_err());
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn postgres_over_tls_verifies_the_server_and_errors_name_their_cause() {
    use conc_lock_store::servers::PrivatePostgres;
    use conc_lock_store::{PostgresConfig, PostgresLockStore, postgres_pool};
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certificates();
    let ca_path = write(dir.path(), "ca.pem", &ca);
    let Some(server) = PrivatePostgres::start(
        Some((&cert, &key)),
        &["host all app 127.0.0.1/32 scram-sha-256"],
    )
    .unwrap() else {
        return;
    };
    let config = || {
        PostgresConfig::default()
            .with_connect_timeout(Duration::from_secs(3))
            .with_op_timeout(Duration::from_secs(3))
    };
    let trusted = server.url(
        "postgres",
        "postgres",
        &format!("?sslmode=require&sslrootcert={}", ca_path.display()),
    );
    let store = PostgresLockStore::connect(&trusted, config())
        .await
        .unwrap();
    let lease = store
        .try_acquire(&LockRequest::new("tls", "o", Duration::from_secs(5)))
        .await
        .unwrap()
        .unwrap();
    assert!(store.release(&lease).await.unwrap());
    // The connection is encrypted.
    let pool = postgres_pool(&trusted, &config()).unwrap();
    let client = pool.get().await.unwrap();
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0), "the connection uses TLS");
    client
        .batch_execute("CREATE ROLE app LOGIN PASSWORD 'right'")
        .await
        .unwrap();
    drop(client);

    // Without the CA, or with another one: refused, and the error says TLS.
    let unknown = server.url("postgres", "postgres", "?sslmode=require");
    let error = PostgresLockStore::connect(&unknown, config())
        .await
        .unwrap_err();
    assert_eq!(cause(&error), Some(ConnectFailure::Tls), "{error}");
    let (other_ca, _, _) = certificates();
    let other = write(dir.path(), "other.pem", &other_ca);
    let wrong = server.url(
        "postgres",
        "postgres",
        &format!("?sslmode=verify-full&sslrootcert={}", other.display()),
    );
    let error = PostgresLockStore::connect(&wrong, config())
        .await
        .unwrap_err();
    assert_eq!(cause(&error), Some(ConnectFailure::Tls), "{error}");

    // A wrong password, a missing database, a closed port: each its own cause.
    let bad_password = server.url("app:wrong", "postgres", "");
    let error = PostgresLockStore::connect(&bad_password, config())
        .await
        .unwrap_err();
    assert_eq!(
        cause(&error),
        Some(ConnectFailure::Authentication),
        "{error}"
    );
    assert!(!error.is_transient());
    let missing = server.url("postgres", "no_such_database", "");
    let error = PostgresLockStore::connect(&missing, config())
        .await
        .unwrap_err();
    assert_eq!(
        cause(&error),
        Some(ConnectFailure::DatabaseMissing),
        "{error}"
    );
    let port = conc_lock_store::servers::free_port().unwrap();
    let closed = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    let error = PostgresLockStore::connect(&closed, config())
        .await
        .unwrap_err();
    assert_eq!(cause(&error), Some(ConnectFailure::Refused), "{error}");
    assert!(error.is_transient());
}
