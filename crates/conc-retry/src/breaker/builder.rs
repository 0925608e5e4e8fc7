//! [`CircuitBreakerBuilder`]: the breaker's settings, their defaults, and the checks
//! [`build`](CircuitBreakerBuilder::build) makes before it turns them into a state machine.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::time::Instant;

use super::error::BreakerConfigError;
use super::state::{Core, CoreConfig, StateChange};
use super::{CircuitBreaker, Hook, Inner, nanos};

/// Builds a [`CircuitBreaker`].
pub struct CircuitBreakerBuilder {
    consecutive: Option<u32>,
    rate: Option<(f64, u32, u32)>,
    time_rate: Option<(f64, Duration, u32)>,
    slow_call: Option<Duration>,
    max_half_open: Option<Duration>,
    automatic_half_open: bool,
    break_duration: Duration,
    growth: f64,
    max_break: Duration,
    probes: u32,
    close_after: Option<u32>,
    hooks: Vec<Hook>,
}

impl Default for CircuitBreakerBuilder {
    fn default() -> Self {
        Self {
            consecutive: Some(5),
            rate: None,
            time_rate: None,
            slow_call: None,
            max_half_open: None,
            automatic_half_open: false,
            break_duration: Duration::from_secs(30),
            growth: 1.0,
            max_break: Duration::from_secs(600),
            probes: 1,
            close_after: None,
            hooks: Vec::new(),
        }
    }
}

impl CircuitBreakerBuilder {
    /// Open after `n` failures in a row (default 5).
    pub fn consecutive_failures(mut self, n: u32) -> Self {
        self.consecutive = Some(n);
        self
    }

    /// Only the failure-rate trigger.
    pub fn no_consecutive_trigger(mut self) -> Self {
        self.consecutive = None;
        self
    }

    /// Open when at least `rate` (0 < rate ≤ 1) of the last `window` calls failed, once at
    /// least `min_calls` were made.
    pub fn failure_rate(mut self, rate: f64, window: u32, min_calls: u32) -> Self {
        self.rate = Some((rate, window, min_calls));
        self
    }

    /// Open when at least `rate` (0 < rate ≤ 1) of the calls of the last `window` of time
    /// failed, once at least `min_calls` were made in it (resilience4j's time-based sliding
    /// window: the window is kept as ten buckets, so it slides in tenths of `window`).
    pub fn failure_rate_over(mut self, rate: f64, window: Duration, min_calls: u32) -> Self {
        self.time_rate = Some((rate, window, min_calls));
        self
    }

    /// Count a call slower than `threshold` as a failure, whatever its outcome (resilience4j's
    /// slow-call threshold): a dependency that answers, but too slowly, trips the breaker
    /// like one that fails.
    pub fn slow_call_threshold(mut self, threshold: Duration) -> Self {
        self.slow_call = Some(threshold);
        self
    }

    /// The longest the breaker stays half-open: when the admitted probes have not settled
    /// within `max`, it opens again (so a probe that hangs cannot hold it half-open for
    /// ever). Default: no limit.
    pub fn max_wait_in_half_open(mut self, max: Duration) -> Self {
        self.max_half_open = Some(max);
        self
    }

    /// Move from open to half-open as soon as the break is over, on the next look at the
    /// breaker ([`CircuitBreaker::state`] included), firing the hooks, rather than on the
    /// next call. No timer thread is needed.
    pub fn automatic_half_open(mut self, enabled: bool) -> Self {
        self.automatic_half_open = enabled;
        self
    }

    /// How long it stays open (default 30 s).
    pub fn break_duration(mut self, duration: Duration) -> Self {
        self.break_duration = duration;
        self
    }

    /// Multiply the break by `factor` each time it re-opens without closing in between,
    /// up to `max`.
    pub fn break_growth(mut self, factor: f64, max: Duration) -> Self {
        self.growth = factor;
        self.max_break = max;
        self
    }

    /// Probes admitted while half-open (default 1).
    pub fn half_open_probes(mut self, n: u32) -> Self {
        self.probes = n;
        self
    }

    /// Successful probes needed to close (default: `half_open_probes`).
    pub fn close_after(mut self, n: u32) -> Self {
        self.close_after = Some(n);
        self
    }

    /// Called after every state change (keep it quick: it runs on the caller's thread).
    pub fn on_state_change(mut self, hook: impl Fn(StateChange) + Send + Sync + 'static) -> Self {
        self.hooks.push(Box::new(hook));
        self
    }

    /// Checks the configuration.
    pub fn build(self) -> Result<CircuitBreaker, BreakerConfigError> {
        if self.consecutive.is_none() && self.rate.is_none() && self.time_rate.is_none() {
            return Err(BreakerConfigError::NoTrigger);
        }
        if let Some((rate, window, min_calls)) = self.time_rate {
            if !(rate > 0.0 && rate <= 1.0) {
                return Err(BreakerConfigError::BadRate(rate));
            }
            if window.is_zero() {
                return Err(BreakerConfigError::Zero("the time window"));
            }
            if min_calls == 0 {
                return Err(BreakerConfigError::Zero("min_calls"));
            }
        }
        if self.slow_call == Some(Duration::ZERO) {
            return Err(BreakerConfigError::Zero("slow_call_threshold"));
        }
        if self.max_half_open == Some(Duration::ZERO) {
            return Err(BreakerConfigError::Zero("max_wait_in_half_open"));
        }
        if self.consecutive == Some(0) {
            return Err(BreakerConfigError::Zero("consecutive_failures"));
        }
        if let Some((rate, window, min_calls)) = self.rate {
            if !(rate > 0.0 && rate <= 1.0) {
                return Err(BreakerConfigError::BadRate(rate));
            }
            if window == 0 {
                return Err(BreakerConfigError::Zero("window"));
            }
            if min_calls == 0 {
                return Err(BreakerConfigError::Zero("min_calls"));
            }
        }
        let close_after = self.close_after.unwrap_or(self.probes);
        if self.probes == 0 {
            return Err(BreakerConfigError::Zero("half_open_probes"));
        }
        if close_after == 0 {
            return Err(BreakerConfigError::Zero("close_after"));
        }
        if close_after > self.probes {
            return Err(BreakerConfigError::CloseAfterAboveProbes {
                close_after,
                probes: self.probes,
            });
        }
        if self.probes > 0xFFFF {
            return Err(BreakerConfigError::TooManyProbes);
        }
        if !self.growth.is_finite() || self.growth < 1.0 {
            return Err(BreakerConfigError::BadGrowth(self.growth));
        }
        let core = Core::new(CoreConfig {
            consecutive: self.consecutive,
            rate: self
                .rate
                .map(|(rate, window, min_calls)| (rate, window, min_calls.min(window))),
            break_nanos: nanos(self.break_duration),
            growth: self.growth,
            max_break_nanos: nanos(self.max_break.max(self.break_duration)),
            probes: self.probes,
            close_after,
            time_rate: self
                .time_rate
                .map(|(rate, window, min_calls)| (rate, nanos(window).max(10), min_calls)),
            slow_nanos: self.slow_call.map(nanos),
            max_half_open_nanos: self.max_half_open.map(nanos),
        });
        Ok(CircuitBreaker {
            inner: Arc::new(Inner {
                core,
                hooks: self.hooks,
                epoch: Instant::now(),
                automatic_half_open: self.automatic_half_open,
            }),
        })
    }
}

impl fmt::Debug for CircuitBreakerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerBuilder")
            .field("consecutive", &self.consecutive)
            .field("rate", &self.rate)
            .field("break_duration", &self.break_duration)
            .field("probes", &self.probes)
            .finish_non_exhaustive()
    }
}
