//! Helpers below the vocabulary, shared by every room: clock arithmetic (fences drawn
//! from the clock, Unix times, the time format of messages), randomness (tokens, jitter),
//! URL escapes and the query options each store's driver reads.

#[cfg(any(feature = "postgres", feature = "redis", feature = "etcd"))]
pub(crate) mod abandoned;
pub(crate) mod clock;
pub(crate) mod options;
#[cfg(any(feature = "postgres", feature = "redis", feature = "etcd"))]
pub(crate) mod percent;
pub(crate) mod random;
