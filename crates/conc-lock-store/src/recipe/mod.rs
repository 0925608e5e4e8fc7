//! What is built on the [`LockStore`](crate::LockStore) trait, and so works on every
//! backend: [`LockGuard`] (a held lease renewed in the background, with its renewal
//! batcher), [`FairLock`] (first come, first served) and [`Semaphore`] (n holders).
//!
//! A recipe imports the trait and the vocabulary, never a backend.

mod fair;
mod guard;
mod semaphore;

pub use fair::FairLock;
pub use guard::LockGuard;
pub use semaphore::{MAX_PERMITS, Semaphore, permit_key};
