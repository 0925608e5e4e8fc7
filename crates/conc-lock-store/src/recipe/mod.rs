//! What is built on the [`LockStore`](crate::LockStore) trait, and so works on every
//! backend: [`LockGuard`] (a held lease renewed in the background, with its renewal
//! batcher), [`FairLock`] (first come, first served), [`Semaphore`] (n holders),
//! [`Election`] (one leader, with a fence), [`RwLock`] (many readers or one writer) and
//! [`MultiLock`] (several locks, all or none).
//!
//! A recipe imports the trait and the vocabulary, never a backend.

mod election;
mod fair;
mod guard;
mod multi;
mod rw;
mod semaphore;

pub use election::{Election, ElectionConfig, Leader, Leadership, Observer};
pub use fair::FairLock;
pub use guard::LockGuard;
pub use multi::{MultiLease, MultiLock};
pub use rw::{RwLock, writer_key};
pub use semaphore::{MAX_PERMITS, Semaphore, permit_key};
