//! Random numbers for the lock store: lease tokens, backoff jitter, a semaphore's first
//! permit. One generator, wyrand, one state per thread, seeded once per thread from std's
//! per-process random SipHash keys, the clock, the process id and a process-wide counter.
//!
//! Not cryptographic: a token proves which acquisition a lease belongs to, it is not a
//! secret (anyone who can reach the store can force-release a key anyway). wyrand passes
//! the usual statistical test suites, and a draw is a multiply, no system call, which
//! matters on the memory store's hot path (the generator before, with two system calls and
//! two SipHash rounds per token, was a third of an acquire+release).

use std::cell::Cell;
use std::hash::{BuildHasher as _, Hasher as _};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

thread_local! {
    static STATE: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    static THREADS: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(THREADS.fetch_add(1, Ordering::Relaxed));
    hasher.write_u128(clock_nanos());
    hasher.write_u32(std::process::id());
    hasher.finish()
}

fn clock_nanos() -> u128 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// The next random `u64` of this thread's generator.
#[inline]
pub(crate) fn next_u64() -> u64 {
    STATE.with(|state| {
        let s = state.get().wrapping_add(0xa076_1d64_78bd_642f);
        state.set(s);
        let t = u128::from(s) * u128::from(s ^ 0xe703_7ed1_a0b4_28db);
        (t >> 64) as u64 ^ t as u64
    })
}

/// A random number in `[0, 1)`.
pub(crate) fn unit() -> f64 {
    (next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// A random number in `0..n` (`n > 0`), by Lemire's multiply-shift (bias below 2^-32 for
/// the small `n` used here).
pub(crate) fn below(n: u64) -> u64 {
    ((u128::from(next_u64()) * u128::from(n)) >> 64) as u64
}

/// A random 128-bit lease token, 32 lowercase hex digits, for a store in this process.
pub(crate) fn token() -> Token {
    Token::new(next_u64(), next_u64())
}

/// A token's 32 hex digits, held inline (no allocation).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Token([u8; 32]);

impl Token {
    fn new(high: u64, low: u64) -> Self {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut bytes = [0u8; 32];
        for (i, pair) in high
            .to_be_bytes()
            .into_iter()
            .chain(low.to_be_bytes())
            .enumerate()
        {
            bytes[2 * i] = DIGITS[usize::from(pair >> 4)];
            bytes[2 * i + 1] = DIGITS[usize::from(pair & 0xf)];
        }
        Self(bytes)
    }

    /// The digits.
    pub(crate) fn as_str(&self) -> &str {
        // Every byte is an ASCII hex digit, so this never fails.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(any(feature = "sqlite", feature = "postgres", feature = "redis"))]
/// A random 128-bit token for a store that several processes share. A forked process
/// starts with a copy of its parent's generator, so the draw is mixed with the clock and
/// the process id (costs a system call, nothing beside the network round trip it goes with).
pub(crate) fn shared_token() -> String {
    let nanos = clock_nanos();
    Token::new(
        next_u64() ^ nanos as u64,
        next_u64() ^ u64::from(std::process::id()).rotate_left(32) ^ (nanos >> 64) as u64,
    )
    .as_str()
    .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_unique_hex() {
        let tokens: std::collections::HashSet<_> = (0..10_000)
            .map(|i| {
                #[cfg(any(feature = "sqlite", feature = "postgres", feature = "redis"))]
                if i % 2 == 1 {
                    return shared_token();
                }
                let _ = i;
                token().as_str().to_owned()
            })
            .collect();
        assert_eq!(tokens.len(), 10_000);
        assert!(tokens.iter().all(|t| {
            t.len() == 32
                && t.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        }));
    }

    #[test]
    fn threads_draw_different_numbers() {
        let here: Vec<u64> = (0..4).map(|_| next_u64()).collect();
        let there = std::thread::spawn(|| (0..4).map(|_| next_u64()).collect::<Vec<_>>())
            .join()
            .unwrap();
        assert_ne!(here, there);
    }

    #[test]
    fn ranges_hold() {
        for _ in 0..10_000 {
            assert!(below(7) < 7);
            let u = unit();
            assert!((0.0..1.0).contains(&u));
        }
        // Every value of a small range comes up.
        let mut seen = [false; 7];
        for _ in 0..1_000 {
            seen[below(7) as usize] = true;
        }
        assert!(seen.iter().all(|&s| s));
    }
}
