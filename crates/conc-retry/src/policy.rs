//! [`RetryPolicy`] and its schedules: exponential backoff with `None`, `Full`, `Equal` or
//! `Decorrelated` jitter, capped at `max_delay` (jitter included).

use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How a delay is randomised (AWS's "Exponential Backoff And Jitter").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Jitter {
    /// `min(max_delay, base * factor^n)`, exactly.
    None,
    /// Uniform in `[0, exp]`: the fewest collisions (the default).
    #[default]
    Full,
    /// `exp / 2` plus uniform in `[0, exp / 2]`: never shorter than half.
    Equal,
    /// `min(max_delay, uniform[base, previous * 3])`: spreads while growing.
    Decorrelated,
}

/// A policy that cannot work.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// `max_attempts` was 0.
    #[error("max_attempts must be at least 1 (1 means: no retries)")]
    ZeroAttempts,
    /// `factor` was below 1, or not finite.
    #[error("factor must be a finite number of at least 1.0, got {0}")]
    BadFactor(f64),
    /// `base_delay` was greater than `max_delay`.
    #[error("base_delay ({base:?}) must not exceed max_delay ({max:?})")]
    BaseAboveMax {
        /// The base delay.
        base: Duration,
        /// The cap.
        max: Duration,
    },
    /// A zero per-attempt timeout.
    #[error("attempt_timeout must be greater than zero")]
    ZeroAttemptTimeout,
}

/// When and how often to retry. Cheap to clone; share one per dependency.
///
/// ```
/// use std::time::Duration;
/// use conc_retry::{Jitter, RetryPolicy};
///
/// let policy = RetryPolicy::builder()
///     .max_attempts(5)
///     .base_delay(Duration::from_millis(100))
///     .max_delay(Duration::from_secs(2))
///     .jitter(Jitter::Full)
///     .seed(42)
///     .build()
///     .unwrap();
/// let delays: Vec<Duration> = policy.schedule().take(4).collect();
/// assert!(delays.iter().all(|d| *d <= Duration::from_secs(2)));
/// assert!(RetryPolicy::builder().max_attempts(0).build().is_err());
/// ```
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub(crate) max_attempts: u32,
    pub(crate) max_elapsed: Option<Duration>,
    pub(crate) base_delay: Duration,
    pub(crate) factor: f64,
    pub(crate) max_delay: Duration,
    pub(crate) jitter: Jitter,
    pub(crate) attempt_timeout: Option<Duration>,
    pub(crate) max_retry_after: Duration,
    seed: Option<u64>,
    /// Distinguishes the schedules of one seeded policy, deterministically.
    schedules: std::sync::Arc<AtomicU64>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicyBuilder::default().build_unchecked()
    }
}

impl RetryPolicy {
    /// A builder with the defaults: 3 attempts, 100 ms base, factor 2, 10 s cap, full
    /// jitter, no elapsed limit, no per-attempt timeout.
    pub fn builder() -> RetryPolicyBuilder {
        RetryPolicyBuilder::default()
    }

    /// The most attempts, the first included.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The wall-time limit, attempts included.
    pub fn max_elapsed(&self) -> Option<Duration> {
        self.max_elapsed
    }

    /// The per-attempt timeout.
    pub fn attempt_timeout(&self) -> Option<Duration> {
        self.attempt_timeout
    }

    /// The longest server `Retry-After` the runner waits out.
    pub fn max_retry_after(&self) -> Duration {
        self.max_retry_after
    }

    /// A fresh schedule: the delay before retry 1, 2, 3, … (endless; the runner stops it).
    ///
    /// With a seed, the n-th schedule of a policy is the same on every run. Each (seed, n)
    /// starts an independent stream: the starting state is the seed and n mixed through
    /// SplitMix64's finaliser, so no two schedules are one stream shifted.
    pub fn schedule(&self) -> Schedule {
        let n = self.schedules.fetch_add(1, Ordering::Relaxed);
        let seed = match self.seed {
            Some(seed) => {
                let mixed = SplitMix64(seed).next_u64();
                SplitMix64(mixed ^ SplitMix64(!n).next_u64()).next_u64()
            }
            None => {
                let mut h = std::collections::hash_map::RandomState::new().build_hasher();
                h.write_u64(n);
                h.finish()
            }
        };
        Schedule {
            rng: SplitMix64(seed),
            retry: 0,
            previous: self.base_delay,
            base: self.base_delay,
            factor: self.factor,
            max: self.max_delay,
            jitter: self.jitter,
        }
    }
}

/// Builds a [`RetryPolicy`]; [`build`](Self::build) checks it.
#[derive(Debug, Clone)]
pub struct RetryPolicyBuilder {
    max_attempts: u32,
    max_elapsed: Option<Duration>,
    base_delay: Duration,
    factor: f64,
    max_delay: Duration,
    jitter: Jitter,
    attempt_timeout: Option<Duration>,
    max_retry_after: Duration,
    seed: Option<u64>,
}

impl Default for RetryPolicyBuilder {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            max_elapsed: None,
            base_delay: Duration::from_millis(100),
            factor: 2.0,
            max_delay: Duration::from_secs(10),
            jitter: Jitter::Full,
            attempt_timeout: None,
            max_retry_after: Duration::from_secs(60),
            seed: None,
        }
    }
}

impl RetryPolicyBuilder {
    /// The most attempts, the first included (default 3).
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n;
        self
    }

    /// A wall-time limit, attempts and delays included.
    pub fn max_elapsed(mut self, limit: Duration) -> Self {
        self.max_elapsed = Some(limit);
        self
    }

    /// The first delay (default 100 ms).
    pub fn base_delay(mut self, delay: Duration) -> Self {
        self.base_delay = delay;
        self
    }

    /// The growth per retry (default 2.0).
    pub fn factor(mut self, factor: f64) -> Self {
        self.factor = factor;
        self
    }

    /// The cap on every delay the schedule makes, jitter included (default 10 s). A
    /// server's `Retry-After` is not a made-up delay: it is honoured above this cap, up to
    /// [`max_retry_after`](Self::max_retry_after).
    pub fn max_delay(mut self, delay: Duration) -> Self {
        self.max_delay = delay;
        self
    }

    /// The longest `Retry-After` from a server that the runner will wait out (default
    /// 60 s). A longer one stops retrying at once with
    /// [`StopReason::RetryAfterTooLong`](crate::StopReason::RetryAfterTooLong), logged at
    /// warn, instead of parking the caller for as long as the server says.
    pub fn max_retry_after(mut self, limit: Duration) -> Self {
        self.max_retry_after = limit;
        self
    }

    /// The jitter (default [`Jitter::Full`]).
    pub fn jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// A time limit for each attempt.
    pub fn attempt_timeout(mut self, limit: Duration) -> Self {
        self.attempt_timeout = Some(limit);
        self
    }

    /// A seed for the random source: the same seed gives the same delays.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Checks the policy.
    pub fn build(self) -> Result<RetryPolicy, PolicyError> {
        if self.max_attempts == 0 {
            return Err(PolicyError::ZeroAttempts);
        }
        if !self.factor.is_finite() || self.factor < 1.0 {
            return Err(PolicyError::BadFactor(self.factor));
        }
        if self.base_delay > self.max_delay {
            return Err(PolicyError::BaseAboveMax {
                base: self.base_delay,
                max: self.max_delay,
            });
        }
        if self.attempt_timeout == Some(Duration::ZERO) {
            return Err(PolicyError::ZeroAttemptTimeout);
        }
        Ok(self.build_unchecked())
    }

    fn build_unchecked(self) -> RetryPolicy {
        RetryPolicy {
            max_attempts: self.max_attempts,
            max_elapsed: self.max_elapsed,
            base_delay: self.base_delay,
            factor: self.factor,
            max_delay: self.max_delay,
            jitter: self.jitter,
            attempt_timeout: self.attempt_timeout,
            max_retry_after: self.max_retry_after,
            seed: self.seed,
            schedules: Default::default(),
        }
    }
}

/// The delays of one retried call, from [`RetryPolicy::schedule`]. Endless.
#[derive(Clone)]
pub struct Schedule {
    rng: SplitMix64,
    retry: u32,
    previous: Duration,
    base: Duration,
    factor: f64,
    max: Duration,
    jitter: Jitter,
}

impl Schedule {
    /// The un-jittered delay before retry `retry` (1-based), capped at the maximum.
    fn exponential(&self, retry: u32) -> Duration {
        let scaled =
            self.base.as_secs_f64() * self.factor.powi(retry.saturating_sub(1).min(1024) as i32);
        if !scaled.is_finite() || scaled >= self.max.as_secs_f64() {
            self.max
        } else {
            Duration::from_secs_f64(scaled)
        }
    }
}

impl Iterator for Schedule {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        self.retry = self.retry.saturating_add(1);
        let exp = self.exponential(self.retry);
        let delay = match self.jitter {
            Jitter::None => exp,
            Jitter::Full => exp.mul_f64(self.rng.unit()),
            Jitter::Equal => exp / 2 + (exp / 2).mul_f64(self.rng.unit()),
            Jitter::Decorrelated => {
                let low = self.base.as_secs_f64();
                let high = (self.previous.as_secs_f64() * 3.0).max(low);
                let pick = low + (high - low) * self.rng.unit();
                let pick = if pick.is_finite() {
                    Duration::from_secs_f64(pick)
                } else {
                    self.max
                };
                self.previous = pick.min(self.max);
                self.previous
            }
        };
        Some(delay.min(self.max))
    }
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Schedule")
            .field("retry", &self.retry)
            .field("jitter", &self.jitter)
            .finish()
    }
}

/// SplitMix64: a small, fast, seedable generator (not for cryptography).
#[derive(Debug, Clone)]
pub(crate) struct SplitMix64(pub(crate) u64);

impl SplitMix64 {
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1]`.
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / ((1u64 << 53) - 1) as f64
    }
}

#[cfg(test)]
mod seed_tests {
    use super::*;

    /// Draws of the n-th schedule of a seeded policy.
    fn draws(policy: &RetryPolicy, count: usize) -> Vec<u64> {
        let mut schedule = policy.schedule();
        (0..count).map(|_| schedule.rng.next_u64()).collect()
    }

    #[test]
    fn seeded_schedules_are_independent_streams() {
        for seed in [0u64, 1, 2, 42] {
            let policy = RetryPolicy::builder().seed(seed).build().unwrap();
            let first = draws(&policy, 32);
            let second = draws(&policy, 32);
            let shared = first.iter().filter(|d| second.contains(d)).count();
            assert_eq!(
                shared, 0,
                "seed {seed}: schedules 0 and 1 share {shared} draws"
            );
        }
        let a = draws(&RetryPolicy::builder().seed(7).build().unwrap(), 32);
        let b = draws(&RetryPolicy::builder().seed(8).build().unwrap(), 32);
        assert_eq!(
            a.iter().filter(|d| b.contains(d)).count(),
            0,
            "seeds 7 and 8 overlap"
        );
        // The same seed still gives the same schedules.
        let again = draws(&RetryPolicy::builder().seed(7).build().unwrap(), 32);
        assert_eq!(a, again);
    }
}
