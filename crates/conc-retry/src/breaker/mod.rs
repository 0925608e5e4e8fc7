//! [`CircuitBreaker`]: stop calling a dependency that keeps failing, with
//! resilience4j's semantics.
//!
//! - **Closed**: calls pass. It opens after `consecutive_failures` failures in a row, or when
//!   the failure rate over the last `window` calls (or the last `window` of time) reaches
//!   its threshold, once at least `min_calls` were made. A call slower than
//!   `slow_call_threshold` counts as a failure.
//! - **Open**: calls are rejected with [`CircuitOpen`] (and when to try again) for the break
//!   duration, which can grow each time the breaker re-opens.
//! - **Half-open**: exactly `half_open_probes` calls are admitted; the rest are rejected.
//!   `close_after` successful probes close it; a failed probe opens it again, and so does
//!   `max_wait_in_half_open` passing before the probes settle.
//! - **Isolated**: held open by hand ([`isolate`](CircuitBreaker::isolate)) until
//!   [`reset`](CircuitBreaker::reset).
//!
//! The closed path is atomics only: a permit is one load, a success one store (the
//! time-based window and slow-call counting add a clock read and a short lock).
//!
//! The code is split by concern: this file holds [`CircuitBreaker`] and its methods;
//! `builder.rs` the settings and their checks, `error.rs` the errors, `permit.rs` the
//! permits, `state.rs` the lock-free state machine, `count_window.rs` and `time_window.rs`
//! the two sliding windows, and `tests.rs` the loom models.
//!
//! # Compared with resilience4j and Polly
//!
//! | feature | conc | resilience4j | Polly (v8) |
//! | --- | --- | --- | --- |
//! | consecutive-failure trigger | `consecutive_failures` | no (rate only) | v7 `CircuitBreaker` |
//! | count-based sliding window | `failure_rate(rate, calls, min_calls)` | `COUNT_BASED` | no |
//! | time-based sliding window | `failure_rate_over(rate, window, min_calls)`, ten buckets | `TIME_BASED`, one bucket per second | `SamplingDuration` + `MinimumThroughput` |
//! | slow calls count as failures | `slow_call_threshold` | `slowCallDurationThreshold` + its own rate | no |
//! | half-open probes | `half_open_probes`, `close_after` | `permittedNumberOfCallsInHalfOpenState` | one probe |
//! | maximum wait in half-open | `max_wait_in_half_open` | `maxWaitDurationInHalfOpenState` | no |
//! | open → half-open without a call | `automatic_half_open` (on the next look; no timer thread) | `automaticTransitionFromOpenToHalfOpenEnabled` (a timer thread) | no |
//! | growing break | `break_growth(factor, max)` | `waitIntervalFunctionInOpenState` | `BreakDurationGenerator` |
//! | held open / reset by hand | `isolate`, `reset` | `transitionToForcedOpenState`, `reset` | `ManualControl.IsolateAsync`, `CloseAsync` |
//! | which errors count | `ErrorClass` (`Permanent` counts as success, `Aborted` as nothing) | `recordExceptions` / `ignoreExceptions` | `ShouldHandle` |
//! | state-change events | `on_state_change` hooks, `tracing` (warn when it opens) | event publisher | `OnOpened`/`OnClosed`/`OnHalfOpened` |
//! | metrics | feature `metrics`: transitions, state, rejected calls | Micrometer module | telemetry (`System.Diagnostics.Metrics`) |
//! | concurrency | lock-free state machine, loom-checked (exactly N probes; racing failures grow the break once) | atomic state reference | lock |

mod builder;
mod count_window;
mod error;
mod permit;
mod state;
#[cfg(all(test, loom))]
mod tests;
mod time_window;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::time::Instant;

pub use self::builder::CircuitBreakerBuilder;
pub use self::error::{BreakerConfigError, BreakerError, CircuitOpen};
pub use self::permit::BreakerPermit;
#[cfg(feature = "tower")]
use self::permit::OwnedPermit;
use self::state::{CLOSED, Core, ISOLATED, tag_state};
pub use self::state::{CircuitState, StateChange};
use crate::classify::Classify;
use crate::loom::Ordering;

/// A state-change hook, as given to [`CircuitBreakerBuilder::on_state_change`].
type Hook = Box<dyn Fn(StateChange) + Send + Sync>;

/// A duration in nanoseconds, saturating at `u64::MAX`.
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// What every clone of one breaker shares.
struct Inner {
    core: Core,
    hooks: Vec<Hook>,
    epoch: Instant,
    automatic_half_open: bool,
}

/// A circuit breaker; clones share one state.
///
/// ```
/// use std::time::Duration;
/// use conc_retry::{BreakerError, CircuitBreaker, CircuitState};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let breaker = CircuitBreaker::builder()
///     .consecutive_failures(2)
///     .break_duration(Duration::from_secs(10))
///     .build()
///     .unwrap();
/// for _ in 0..2 {
///     let failed = breaker
///         .call(|| async { Err::<(), _>(std::io::Error::from(std::io::ErrorKind::ConnectionReset)) })
///         .await;
///     assert!(matches!(failed, Err(BreakerError::Inner(_))));
/// }
/// assert_eq!(breaker.state(), CircuitState::Open);
/// let rejected = breaker.call(|| async { Ok::<_, std::io::Error>(()) }).await;
/// assert!(matches!(rejected, Err(BreakerError::Open(_))));
/// # }
/// ```
#[derive(Clone)]
pub struct CircuitBreaker {
    inner: Arc<Inner>,
}

impl CircuitBreaker {
    /// A builder with the defaults: 5 consecutive failures, 30 s break, 1 probe.
    pub fn builder() -> CircuitBreakerBuilder {
        CircuitBreakerBuilder::default()
    }

    fn now(&self) -> u64 {
        nanos(self.inner.epoch.elapsed())
    }

    fn fire(&self, change: Option<StateChange>) {
        if let Some(change) = change {
            match change.to {
                CircuitState::Open | CircuitState::Isolated => tracing::warn!(
                    from = ?change.from,
                    state = ?change.to,
                    "circuit breaker opened: calls are rejected"
                ),
                _ => tracing::info!(
                    from = ?change.from,
                    state = ?change.to,
                    "circuit breaker state change"
                ),
            }
            #[cfg(feature = "metrics")]
            {
                let to = match change.to {
                    CircuitState::Closed => "closed",
                    CircuitState::Open => "open",
                    CircuitState::HalfOpen => "half_open",
                    CircuitState::Isolated => "isolated",
                };
                metrics::counter!("conc_retry_breaker_transitions_total", "state" => to)
                    .increment(1);
                metrics::gauge!("conc_retry_breaker_state").set(match change.to {
                    CircuitState::Closed => 0.0,
                    CircuitState::HalfOpen => 1.0,
                    CircuitState::Open => 2.0,
                    CircuitState::Isolated => 3.0,
                });
            }
            for hook in &self.inner.hooks {
                hook(change);
            }
        }
    }

    /// Asks to make a call: a permit to report its outcome on, or [`CircuitOpen`].
    pub fn try_acquire(&self) -> Result<BreakerPermit<'_>, CircuitOpen> {
        let (outcome, change) = self.inner.core.acquire(|| self.now());
        self.fire(change);
        match outcome {
            Ok(ticket) => Ok(BreakerPermit {
                breaker: self,
                ticket: Some(ticket),
            }),
            Err(retry_after) => {
                #[cfg(feature = "metrics")]
                metrics::counter!("conc_retry_breaker_rejected_total").increment(1);
                Err(CircuitOpen {
                    retry_after: retry_after.map(Duration::from_nanos),
                })
            }
        }
    }

    /// Like [`try_acquire`](Self::try_acquire), for a permit that must outlive the borrow
    /// (a boxed `'static` future).
    #[cfg(feature = "tower")]
    pub(crate) fn try_acquire_owned(&self) -> Result<OwnedPermit, CircuitOpen> {
        let permit = self.try_acquire()?;
        let ticket = permit.into_ticket();
        Ok(OwnedPermit {
            breaker: self.clone(),
            ticket,
        })
    }

    /// Runs `call` if the breaker admits it, and records its outcome by its
    /// [`ErrorClass`](crate::classify::ErrorClass) (only retryable classes count as failures).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future records nothing; a half-open probe slot it held is freed.
    pub async fn call<T, E, F, Fut>(&self, call: F) -> Result<T, BreakerError<E>>
    where
        E: Classify,
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<T, E>>,
    {
        let permit = self.try_acquire().map_err(BreakerError::Open)?;
        match call().await {
            Ok(value) => {
                permit.success();
                Ok(value)
            }
            Err(error) => {
                permit.record(error.class());
                Err(BreakerError::Inner(error))
            }
        }
    }

    /// The state now. An open breaker whose break is over reads `HalfOpen` after the next
    /// call asks, or at once with [`automatic_half_open`](CircuitBreakerBuilder::automatic_half_open).
    pub fn state(&self) -> CircuitState {
        if self.inner.automatic_half_open {
            let change = self.inner.core.expire_open(self.now());
            self.fire(change);
        }
        tag_state(self.inner.core.state.load(Ordering::Acquire))
    }

    /// Holds the breaker open until [`reset`](Self::reset).
    pub fn isolate(&self) {
        let change = self.inner.core.force(ISOLATED);
        self.fire(change);
    }

    /// Closes the breaker and clears its counts.
    pub fn reset(&self) {
        let change = self.inner.core.force(CLOSED);
        self.fire(change);
    }
}

impl fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("state", &self.state())
            .finish()
    }
}
