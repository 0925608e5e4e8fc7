//! Abort signals: cancel superseded work, and treat abort as an outcome.
//!
//! An [`AbortController`] aborts; its [`AbortSignal`]s observe. A signal can have children
//! ([`AbortSignal::child`]) that are aborted with it. An [`AbortManager`] keeps one active
//! lease per workflow and aborts the previous one when new work begins.
//!
//! The code is split by concern: `reason.rs` (why work was aborted, and the error that
//! says so), `tree.rs` (the node a controller and its signals share, and the tree of
//! parents and children), `controller.rs`, `signal.rs` (the signal, its waiting future and
//! its callbacks) and `manager.rs` (one active lease per workflow).

mod controller;
mod manager;
mod reason;
mod signal;
mod tree;

pub use self::controller::{AbortController, Unobserved};
pub use self::manager::{AbortLease, AbortManager};
pub use self::reason::{AbortReason, Aborted, is_abort_error};
pub use self::signal::{AbortCallback, AbortSignal, WaitAborted};
