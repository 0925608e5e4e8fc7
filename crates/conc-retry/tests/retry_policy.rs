//! Property tests of every schedule: bounds, cap, jitter range, determinism.

use std::time::Duration;

use conc_retry::{Jitter, PolicyError, RetryPolicy};

/// A tiny deterministic generator for the test inputs.
struct Inputs(u64);

impl Inputs {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

fn policy(jitter: Jitter, base_ms: u64, factor: f64, max_ms: u64, seed: u64) -> RetryPolicy {
    RetryPolicy::builder()
        .base_delay(Duration::from_millis(base_ms))
        .factor(factor)
        .max_delay(Duration::from_millis(max_ms))
        .jitter(jitter)
        .seed(seed)
        .build()
        .unwrap()
}

fn exponential(base_ms: u64, factor: f64, max_ms: u64, retry: u32) -> Duration {
    let exp = Duration::from_millis(base_ms).as_secs_f64() * factor.powi(retry as i32 - 1);
    Duration::from_secs_f64(exp.min(Duration::from_millis(max_ms).as_secs_f64()))
}

/// 500 random policies per jitter, 30 delays each.
#[test]
fn every_delay_is_in_its_range_and_never_above_the_cap() {
    let mut inputs = Inputs(0x5eed);
    for jitter in [
        Jitter::None,
        Jitter::Full,
        Jitter::Equal,
        Jitter::Decorrelated,
    ] {
        for _ in 0..500 {
            let base = 1 + inputs.next(500);
            let max = base + inputs.next(20_000);
            let factor = 1.0 + inputs.next(40) as f64 / 10.0;
            let seed = inputs.next(u64::MAX);
            let cap = Duration::from_millis(max);
            let mut previous = Duration::from_millis(base);
            for (i, delay) in policy(jitter, base, factor, max, seed)
                .schedule()
                .take(30)
                .enumerate()
            {
                let retry = i as u32 + 1;
                let exp = exponential(base, factor, max, retry);
                let slack = Duration::from_micros(1);
                assert!(delay <= cap, "{jitter:?}: {delay:?} above the cap {cap:?}");
                match jitter {
                    Jitter::None => assert!(delay.abs_diff(exp) <= slack, "{delay:?} != {exp:?}"),
                    Jitter::Full => assert!(delay <= exp + slack),
                    Jitter::Equal => assert!(delay + slack >= exp / 2 && delay <= exp + slack),
                    Jitter::Decorrelated => {
                        assert!(delay + slack >= Duration::from_millis(base).min(cap));
                        assert!(delay <= (previous * 3).min(cap) + slack);
                        previous = delay;
                    }
                    other => panic!("a jitter this test does not know: {other:?}"),
                }
            }
        }
    }
}

#[test]
fn jitter_spreads_delays() {
    let delays: Vec<Duration> = (0..200)
        .map(|seed| {
            policy(Jitter::Full, 100, 2.0, 10_000, seed)
                .schedule()
                .nth(3)
                .unwrap()
        })
        .collect();
    let min = delays.iter().min().unwrap();
    let max = delays.iter().max().unwrap();
    // Retry 4's exponential delay is 800 ms; full jitter covers most of [0, 800].
    assert!(
        *min < Duration::from_millis(100) && *max > Duration::from_millis(700),
        "{min:?}..{max:?}"
    );
}

#[test]
fn a_seed_makes_schedules_repeatable() {
    let a: Vec<_> = policy(Jitter::Decorrelated, 10, 2.0, 5000, 7)
        .schedule()
        .take(10)
        .collect();
    let b: Vec<_> = policy(Jitter::Decorrelated, 10, 2.0, 5000, 7)
        .schedule()
        .take(10)
        .collect();
    assert_eq!(a, b);
    let shared = policy(Jitter::Full, 10, 2.0, 5000, 7);
    let first: Vec<_> = shared.schedule().take(5).collect();
    let second: Vec<_> = shared.schedule().take(5).collect();
    assert_ne!(
        first, second,
        "two calls under one policy do not retry in lockstep"
    );
}

#[test]
fn huge_growth_stays_at_the_cap() {
    let delays: Vec<_> = policy(Jitter::None, 1000, 10.0, 60_000, 1)
        .schedule()
        .take(2000)
        .collect();
    assert_eq!(*delays.last().unwrap(), Duration::from_secs(60));
}

#[test]
fn bad_policies_are_typed_errors() {
    assert_eq!(
        RetryPolicy::builder().max_attempts(0).build().unwrap_err(),
        PolicyError::ZeroAttempts
    );
    assert_eq!(
        RetryPolicy::builder().factor(0.5).build().unwrap_err(),
        PolicyError::BadFactor(0.5)
    );
    assert!(matches!(
        RetryPolicy::builder().factor(f64::NAN).build(),
        Err(PolicyError::BadFactor(_))
    ));
    assert!(matches!(
        RetryPolicy::builder()
            .base_delay(Duration::from_secs(5))
            .max_delay(Duration::from_secs(1))
            .build(),
        Err(PolicyError::BaseAboveMax { .. })
    ));
    assert_eq!(
        RetryPolicy::builder()
            .attempt_timeout(Duration::ZERO)
            .build()
            .unwrap_err(),
        PolicyError::ZeroAttemptTimeout
    );
}
