//! Runtime-agnostic concurrency primitives that keep async code from racing with itself.
//!
//! `conc-core` turns the rules of a chat app's concurrency guide into types that cannot be
//! misused: stale completions are dropped, superseded work is aborted, duplicate writes run
//! once, and a mutex tells the truth about whether it is held. It depends on no async
//! runtime (only `std`, `parking_lot` and `thiserror`), and every primitive is checked
//! with [loom](https://docs.rs/loom) models of its races (`cargo xtask loom`).
//!
//! | primitive | what it prevents |
//! | --- | --- |
//! | [`SequenceGuard`] | a slow, stale response committed over a fresh one |
//! | [`Mutex`] | a lost update; `is_locked()` that lies; a waiter that jumps the queue |
//! | [`AbortController`], [`AbortSignal`], [`AbortManager`] | superseded work left running |
//! | [`IdempotencyKey`], [`IdempotencyRegistry`] | the same write performed twice at once |
//!
//! # Example: latest wins, aborts and single-flight together
//!
//! Rapid re-runs commit only the last result, superseded work is aborted, and duplicates
//! run once:
//!
//! ```
//! use std::sync::Arc;
//! use conc_core::{AbortManager, IdempotencyKey, IdempotencyRegistry, SequenceGuard};
//!
//! struct ChatStream {
//!     guard: SequenceGuard,
//!     aborts: AbortManager,
//!     registry: IdempotencyRegistry<Arc<str>>,
//!     committed: parking_lot::Mutex<Vec<Arc<str>>>,
//! }
//!
//! impl ChatStream {
//!     async fn run(&self, conversation: &str, prompt: &str) {
//!         let token = self.guard.next();
//!         let outcome = self
//!             .aborts
//!             .with_abort(|signal| async move {
//!                 let key = IdempotencyKey::new("chat-stream", [conversation, prompt]).unwrap();
//!                 self.registry
//!                     .run(key, || async move {
//!                         // fetch_stream(signal).await in a real app
//!                         signal.check().ok();
//!                         Arc::<str>::from(format!("answer to {prompt}"))
//!                     })
//!                     .await
//!             })
//!             .await;
//!         if let Ok(Ok(result)) = outcome {
//!             self.guard.commit_if_current(&token, || self.committed.lock().push(result));
//!         }
//!     }
//! }
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let chat = ChatStream {
//!     guard: SequenceGuard::new("chat-stream"),
//!     aborts: AbortManager::new(),
//!     registry: IdempotencyRegistry::new(),
//!     committed: Default::default(),
//! };
//! chat.run("conv-1", "hello").await;
//! assert_eq!(chat.committed.lock().len(), 1);
//! # });
//! ```
//!
//! # Loom
//!
//! Built with `RUSTFLAGS="--cfg loom"`, the crate swaps its atomics, mutexes and cells for
//! loom's (see `src/loom/`), and the models in `src/tests/` explore every interleaving of
//! the real code.

#![cfg_attr(docsrs, feature(doc_cfg))]

mod abort;
mod idempotency;
mod loom;
mod mutex;
mod sequence;
mod spin;
#[cfg(all(feature = "web", target_arch = "wasm32"))]
mod web;

#[cfg(all(test, loom))]
mod tests;

pub use abort::{
    AbortCallback, AbortController, AbortLease, AbortManager, AbortReason, AbortSignal, Aborted,
    Unobserved, WaitAborted, is_abort_error,
};
pub use idempotency::{IdempotencyError, IdempotencyKey, IdempotencyRegistry, KeyError};
pub use mutex::{Lock, MappedMutexGuard, Mutex, MutexGuard, OwnedMutexGuard, TryLockError};
pub use sequence::{Scope, SequenceGuard, SequenceToken};
#[cfg(all(feature = "web", target_arch = "wasm32"))]
pub use web::{WebAbortSignal, from_web};

/// The crate's README, whose examples are compiled and run as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
