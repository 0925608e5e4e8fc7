//! The backends, one room each: [`memory`] (one process), `sqlite` (one machine),
//! `postgres`, `redis` and `etcd` (many machines), and what more than one of them shares:
//! JSON metadata and TLS settings.
//!
//! A backend imports the vocabulary (the trait, leases, requests, errors, watches) and the
//! helpers in `util`, never a recipe and never another backend.

#[cfg(feature = "etcd")]
pub(crate) mod etcd;
pub(crate) mod memory;
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "redis"))]
pub(crate) mod metadata;
#[cfg(feature = "postgres")]
pub(crate) mod postgres;
#[cfg(feature = "redis")]
pub(crate) mod redis;
#[cfg(feature = "sqlite")]
pub(crate) mod sqlite;
#[cfg(any(feature = "postgres", feature = "redis", feature = "etcd"))]
pub(crate) mod tls;
