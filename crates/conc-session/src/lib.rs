//! A session manager for chat backends, safe across processes.
//!
//! - **Atomic session updates**: [`SessionManager::update_session`] queues
//!   updates of one session in this process and checks versions in the store, so no update
//!   is lost, even between processes (where tower-sessions, for one, lets the last writer
//!   win). [`SessionManager::append_message`] is idempotent by message id.
//! - **Processing lock**: [`SessionManager::begin_processing`]; a session switch
//!   during processing is refused with [`SessionError::Busy`]; errors instead of hangs.
//! - **Generation lock**: [`SessionManager::start_generation`], one generation per
//!   conversation across every process sharing the lock store, with `Reject` or
//!   `Queue { max_wait }`, a "please wait" error a UI can show, [`SessionManager::is_generating`]
//!   and [`SessionManager::stop_generation`].
//!
//! Stores: [`MemorySessionStore`], [`SqliteSessionStore`] (feature `sqlite`, default) and
//! [`PostgresSessionStore`] (feature `postgres`), with any `conc-lock-store` backend.
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use conc_lock_store::MemoryLockStore;
//! use conc_session::{Message, MemorySessionStore, Role, SessionConfig, SessionContext, SessionManager};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let manager = SessionManager::new(SessionContext {
//!     sessions: Arc::new(MemorySessionStore::new()),
//!     locks: Arc::new(MemoryLockStore::new()),
//!     config: SessionConfig::default(),
//! });
//! manager.create_session("s-1").await.unwrap();
//! let message = Message::new("m-1", Role::User, "hi");
//! let first = manager.append_message("s-1", message.clone()).await.unwrap();
//! let again = manager.append_message("s-1", message).await.unwrap(); // a duplicate
//! assert!(first.added && !again.added);
//! assert_eq!(manager.session("s-1").await.unwrap().messages.len(), 1);
//! # }
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]

mod data;
mod error;
mod manager;
mod store;

pub use data::{Message, Role, SessionData};
pub use error::{GenerationError, SessionError};
pub use manager::{
    GenerationGuard, GenerationMode, GenerationWrite, ProcessingGuard, SessionConfig,
    SessionContext, SessionManager, SessionStats,
};
#[cfg(feature = "postgres")]
pub use store::PostgresSessionStore;
#[cfg(feature = "sqlite")]
pub use store::SqliteSessionStore;
pub use store::{Appended, MemorySessionStore, SessionStore, connect};

/// The crate's README, whose examples are compiled and run as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

/// The workspace's README (the tour of every crate), whose examples are compiled and run as
/// doctests here, in the crate that sees every other.
#[doc = include_str!("../../../README.md")]
#[cfg(doctest)]
pub struct WorkspaceReadmeDoctests;
