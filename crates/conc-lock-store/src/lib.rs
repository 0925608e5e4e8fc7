//! Leased, fenced named locks behind one [`LockStore`] trait.
//!
//! The generation lock of a chat conversation lives in a store that every
//! process shares, with an expiry so a crashed generator cannot block the conversation for
//! ever. This crate makes it safer than a plain lock table:
//!
//! - every [`Lease`] carries a **fencing token** ([`Lease::fence`]), a number that strictly
//!   increases per key across release, expiry and takeover, and is never reused: pass it to
//!   the protected resource, which rejects a write with a smaller fence than it has seen
//!   (Kleppmann's fix for the paused-holder problem);
//! - release and renewal are checked against the lease's random token, so a holder whose
//!   lease expired can never free or extend someone else's lock;
//! - a [`LockGuard`] renews the lease in the background and fires [`LockGuard::lost`] the
//!   moment the lease is known to be gone.
//!
//! Backends: [`MemoryLockStore`] (one process), [`SqliteLockStore`] (feature `sqlite`, the
//! default: one machine, several processes), and PostgreSQL, Redis (one server, a Redis
//! Cluster, or a primary that Sentinels watch) and etcd (feature `etcd`: a consensus store,
//! whose locks survive a leader failover) for many machines (features `postgres` and
//! `redis`; TLS to them is the `tls` feature). Each one passes the same `conformance` suite
//! (feature `conformance`).
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use conc_lock_store::{LockGuard, LockRequest, LockStore, MemoryLockStore};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), conc_lock_store::LockError> {
//! let store: Arc<dyn LockStore> = Arc::new(MemoryLockStore::new());
//! let request = LockRequest::new("conversation:42", "worker-1", Duration::from_secs(30))
//!     .with_metadata("message_id", "m-7");
//!
//! let guard = LockGuard::acquire(store.clone(), request, Duration::from_secs(1)).await?;
//! assert!(store.is_locked("conversation:42").await?);
//! let fence = guard.fence(); // hand this to the resource you write to
//! assert!(fence > 0);
//! assert!(!guard.lost().is_aborted());
//! guard.release().await?;
//! assert!(!store.is_locked("conversation:42").await?);
//! # Ok(())
//! # }
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]

// The vocabulary every other room imports: the trait, leases, requests, errors, watches.
mod error;
mod lease;
mod notify;
mod request;
mod store;
// Helpers below the vocabulary: clock arithmetic, randomness.
mod util;

// The backends: each imports the vocabulary and the trait, never a recipe.
mod backend;
// What is built on the trait, for every backend: never imports a backend.
mod recipe;
// `connect`: one URL parser over every backend.
mod url;

// The conformance suite and the private test servers (feature `conformance`).
#[cfg(feature = "conformance")]
mod testing;

#[cfg(feature = "etcd")]
pub use backend::etcd::{EtcdConfig, EtcdLockStore};
pub use backend::memory::MemoryLockStore;
#[cfg(feature = "postgres")]
pub use backend::postgres::{
    PostgresConfig, PostgresDurability, PostgresLockStore, PostgresPoolMode, is_connection_lost,
    pool_error as postgres_pool_error, pooler_symptom as postgres_pooler_symptom, postgres_pool,
};
#[cfg(feature = "redis")]
pub use backend::redis::{RedisConfig, RedisLockStore};
#[cfg(feature = "sqlite")]
pub use backend::sqlite::{SqliteConfig, SqliteLockStore, SqliteSynchronous};
#[cfg(feature = "sqlite")]
pub use backend::sqlite::{SqliteWorker, SqliteWorkerError};
pub use error::{ConnectFailure, LockError};
pub use lease::{Lease, LockInfo, Metadata, default_drift_margin};
pub use notify::LockWatch;
pub use recipe::{
    Election, ElectionConfig, FairLock, Leader, Leadership, LockGuard, MAX_PERMITS, MultiLease,
    MultiLock, Observer, RwLock, Semaphore, permit_key, writer_key,
};
pub use request::{LockRequest, MAX_KEY_BYTES, MIN_TTL, MIN_VALIDITY, TTL_LIMIT, validate_key};
pub use store::LockStore;
#[cfg(feature = "conformance")]
pub use testing::{conformance, proxy, servers};
pub use url::{StoreKind, StoreUrl, connect, parse_url};

/// The rusqlite this crate links (0.43, bundled SQLite, through `libsqlite3-sys` 0.40): a
/// build links one `libsqlite3-sys`, so a service that also talks to SQLite (to fence its
/// writes into a table, say) uses this one, or a rusqlite of the same line, rather than
/// another version. With sqlx: sqlx 0.8's SQLite driver links `libsqlite3-sys` 0.30,
/// which cannot sit beside 0.40 in one build (Cargo refuses two crates that link the same
/// native library), and Cargo resolves optional dependencies too, so even sqlx with only
/// its `postgres` feature can clash through its lock file's `sqlx-sqlite`; keep sqlx's
/// SQLite driver out of the build, or leave this crate's `sqlite` feature off
/// (`default-features = false`) and use its PostgreSQL, Redis or etcd store.
#[cfg(feature = "sqlite")]
pub use rusqlite;

/// The abort signal of conc-core that [`LockGuard::lost`] returns and [`Election::run`]
/// takes, with its controller and reasons, so that a user of this crate needs no other.
pub use conc_core::{AbortController, AbortReason, AbortSignal};

/// The crate's README, whose examples are compiled and run as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
