//! [`IdempotencyError`]: what a caller of the registry gets when the shared execution it
//! waited for panicked, or cloning its result did.

/// The error a caller of [`IdempotencyRegistry::run`](super::IdempotencyRegistry::run) gets
/// when the shared execution it waited for panicked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdempotencyError {
    /// The execution for this key panicked; the key was released, so a new call runs afresh.
    #[error(
        "the shared execution for idempotency key `{key}` panicked; the key is released and a retry runs afresh"
    )]
    Panicked {
        /// The key's text.
        key: String,
    },
    /// Cloning the shared result for this caller panicked (the value's `Clone` impl); the
    /// execution itself finished, and its leader got the value.
    #[error(
        "cloning the shared result for idempotency key `{key}` panicked; the key is released and a retry runs afresh"
    )]
    ClonePanicked {
        /// The key's text.
        key: String,
    },
}
