//! Helpers below the vocabulary, shared by every room: clock arithmetic (fences drawn
//! from the clock, Unix times, the time format of messages) and randomness (tokens,
//! jitter).

pub(crate) mod clock;
pub(crate) mod random;
