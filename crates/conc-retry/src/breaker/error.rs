//! The breaker's errors: [`CircuitOpen`] (a call rejected), [`BreakerError`] (what
//! [`CircuitBreaker::call`](super::CircuitBreaker::call) returns) and
//! [`BreakerConfigError`] (a configuration the builder refuses).

use std::time::Duration;

/// The breaker rejected a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the circuit is open{}", match .retry_after { Some(d) => format!("; retry in {d:?}"), None => String::new() })]
pub struct CircuitOpen {
    /// When a call may be admitted again, if known.
    pub retry_after: Option<Duration>,
}

/// A [`CircuitBreaker::call`](super::CircuitBreaker::call) that did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BreakerError<E> {
    /// Rejected without calling.
    #[error(transparent)]
    Open(CircuitOpen),
    /// The call failed: its error shows in this error's message and as its `source()`.
    #[error("the call failed: {0}")]
    Inner(#[source] E),
}

impl<E: crate::classify::Classify> crate::classify::Classify for BreakerError<E> {
    /// An open circuit is [`Permanent`](crate::ErrorClass::Permanent) for the retry above
    /// the breaker (a retry now would be rejected the same way, and would only spend
    /// attempts and budget); a failed call keeps its own class.
    fn class(&self) -> crate::classify::ErrorClass {
        match self {
            BreakerError::Open(_) => crate::classify::ErrorClass::Permanent,
            BreakerError::Inner(error) => error.class(),
        }
    }
}

impl<E> BreakerError<E> {
    /// Wraps a classifier of the call's errors into one of the breaker's: an open circuit
    /// stops a retry above the breaker ([`Permanent`](crate::ErrorClass::Permanent)), a
    /// failed call is classified by `inner`. Give it to a `RetryLayer` stacked over a
    /// `CircuitBreakerLayer` (feature `tower`), whose errors are `BreakerError`s.
    pub fn classify_with(
        inner: impl Fn(&E) -> crate::classify::ErrorClass + Clone + Send + Sync + 'static,
    ) -> impl Fn(&BreakerError<E>) -> crate::classify::ErrorClass + Clone + Send + Sync + 'static
    {
        move |error| match error {
            BreakerError::Open(_) => crate::classify::ErrorClass::Permanent,
            BreakerError::Inner(error) => inner(error),
        }
    }
}

/// A configuration that cannot work.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum BreakerConfigError {
    /// Neither a consecutive-failure threshold nor a failure rate was set.
    #[error("set consecutive_failures or failure_rate, or the breaker can never open")]
    NoTrigger,
    /// A threshold of zero.
    #[error("`{0}` must be at least 1")]
    Zero(&'static str),
    /// A failure rate outside (0, 1].
    #[error("failure_rate must be in (0, 1], got {0}")]
    BadRate(f64),
    /// Too many probes.
    #[error("half_open_probes and close_after must be at most 65535")]
    TooManyProbes,
    /// More successes needed to close than probes admitted: it could never close.
    #[error("close_after ({close_after}) must not exceed half_open_probes ({probes})")]
    CloseAfterAboveProbes {
        /// Successes needed.
        close_after: u32,
        /// Probes admitted.
        probes: u32,
    },
    /// A growth factor below 1, or not finite.
    #[error("break_growth must be a finite number of at least 1.0, got {0}")]
    BadGrowth(f64),
}
