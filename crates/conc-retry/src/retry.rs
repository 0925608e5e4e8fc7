//! Running an operation under a [`RetryPolicy`]: [`retry`] and the [`Retry`] builder.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use crate::time::Instant;
use conc_core::AbortSignal;
use tracing::{debug, warn};

use crate::breaker::CircuitBreaker;
use crate::budget::RetryBudget;
use crate::classify::{Classify, ErrorClass};
use crate::policy::RetryPolicy;

/// How one attempt failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttemptFailure<E> {
    /// The operation returned an error.
    #[error(transparent)]
    Error(E),
    /// The attempt ran past the policy's `attempt_timeout` (or what was left of
    /// `max_elapsed`).
    #[error(transparent)]
    Timeout(AttemptTimeout),
}

/// An attempt that ran past its time limit and was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the attempt took longer than its limit of {limit:?} and was dropped")]
pub struct AttemptTimeout {
    limit: Duration,
}

impl AttemptTimeout {
    /// The limit the attempt ran past.
    pub fn limit(&self) -> Duration {
        self.limit
    }
}

/// Why retrying stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StopReason {
    /// `max_attempts` were made.
    Exhausted,
    /// The error was not retryable.
    Permanent,
    /// The work was aborted (by the signal, or an error classed `Aborted`).
    Aborted,
    /// The next delay (or attempt) would pass `max_elapsed`.
    Elapsed,
    /// The retry budget was spent.
    BudgetExhausted,
    /// The circuit breaker rejected the attempt.
    CircuitOpen {
        /// When it may admit calls again, if known.
        retry_after: Option<Duration>,
    },
    /// The service failed its readiness check (`poll_ready`), before any attempt.
    NotReady,
    /// The server asked to wait longer than the policy's `max_retry_after`.
    RetryAfterTooLong {
        /// What the server asked for.
        retry_after: Duration,
    },
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StopReason::Exhausted => f.write_str("attempts exhausted"),
            StopReason::Permanent => f.write_str("the error is not retryable"),
            StopReason::Aborted => f.write_str("aborted"),
            StopReason::Elapsed => f.write_str("the time limit would be passed"),
            StopReason::BudgetExhausted => f.write_str("the retry budget is spent"),
            StopReason::CircuitOpen {
                retry_after: Some(d),
            } => write!(f, "the circuit is open (retry in {d:?})"),
            StopReason::CircuitOpen { retry_after: None } => f.write_str("the circuit is open"),
            StopReason::NotReady => f.write_str("the service was not ready"),
            StopReason::RetryAfterTooLong { retry_after } => write!(
                f,
                "the server asked to retry after {retry_after:?}, longer than the policy waits"
            ),
        }
    }
}

/// Retrying gave up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryError<E> {
    /// Attempts made.
    pub attempts: u32,
    /// Time spent: from the start of the first attempt when the policy has a `max_elapsed`
    /// (which needs the clock from the start), otherwise from the end of the first failed
    /// attempt (so the success path reads no clock).
    pub elapsed: Duration,
    /// The last attempt's failure (`None` if no attempt was made).
    pub last: Option<AttemptFailure<E>>,
    /// Why it stopped.
    pub stop: StopReason,
}

impl<E> RetryError<E> {
    /// Whether it stopped because of an abort (an outcome: do not log it as an error).
    pub fn is_aborted(&self) -> bool {
        self.stop == StopReason::Aborted
    }

    /// The last error the operation returned, if the last attempt returned one.
    pub fn last_error(&self) -> Option<&E> {
        match &self.last {
            Some(AttemptFailure::Error(e)) => Some(e),
            _ => None,
        }
    }

    /// The last error, by value.
    pub fn into_last_error(self) -> Option<E> {
        match self.last {
            Some(AttemptFailure::Error(e)) => Some(e),
            _ => None,
        }
    }
}

impl<E: fmt::Display> fmt::Display for RetryError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "gave up after {} attempt(s) in {:?}: {}",
            self.attempts, self.elapsed, self.stop
        )?;
        match &self.last {
            Some(last) => write!(f, "; last error: {last}"),
            None => Ok(()),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for RetryError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.last {
            Some(AttemptFailure::Error(e)) => Some(e),
            Some(AttemptFailure::Timeout(t)) => Some(t),
            None => None,
        }
    }
}

/// Runs `operation` under `policy`, classifying errors with their [`Classify`] impl.
///
/// ```
/// use std::sync::atomic::{AtomicU32, Ordering};
/// use std::time::Duration;
/// use conc_retry::{RetryPolicy, retry};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let policy = RetryPolicy::builder().max_attempts(4).base_delay(Duration::from_millis(10)).build().unwrap();
/// let calls = AtomicU32::new(0);
/// let value = retry(&policy, || async {
///     if calls.fetch_add(1, Ordering::SeqCst) < 2 {
///         Err(std::io::Error::from(std::io::ErrorKind::ConnectionReset))
///     } else {
///         Ok("third time lucky")
///     }
/// })
/// .await
/// .unwrap();
/// assert_eq!(value, "third time lucky");
/// # }
/// ```
///
/// # Cancel safety
///
/// Dropping the future drops the attempt in flight (or the sleep between attempts).
pub async fn retry<T, E, F, Fut>(policy: &RetryPolicy, mut operation: F) -> Result<T, RetryError<E>>
where
    E: Classify,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    // The `Retry` value is made only after a failure (or when the policy has a time limit):
    // the success path is the operation and two branches.
    let mut first = None;
    if policy.attempt_timeout.is_none() && policy.max_elapsed.is_none() {
        match operation().await {
            Ok(value) => {
                debug!(attempts = 1, "attempt succeeded");
                return Ok(value);
            }
            Err(error) => first = Some(error),
        }
    }
    Box::pin(Retry::new(policy).run_loop(operation, |e: &E| e.class(), first)).await
}

type Hook<'a, E> = Box<dyn FnMut(&AttemptFailure<E>, u32, Duration) + Send + 'a>;
type Classifier<'a, E> = Box<dyn Fn(&E) -> ErrorClass + Send + Sync + 'a>;

/// A retried call with everything optional: an abort signal, a budget, a breaker, a hook,
/// a classifier.
///
/// ```
/// use std::time::Duration;
/// use conc_retry::{CircuitBreaker, ErrorClass, Retry, RetryBudget, RetryPolicy, StopReason};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let policy = RetryPolicy::builder().max_attempts(3).build().unwrap();
/// let budget = RetryBudget::new(Duration::from_secs(10), 0, 0.1).unwrap();
/// let breaker = CircuitBreaker::builder().build().unwrap();
/// let mut retries = Vec::new();
/// let outcome = Retry::new(&policy)
///     .budget(&budget)
///     .breaker(&breaker)
///     .classify_with(|status: &u16| conc_retry::classify_http(*status, None))
///     .on_retry(|_, attempt, delay| retries.push((attempt, delay)))
///     .run_unclassified(|| async { Err::<(), u16>(503) })
///     .await;
/// // No traffic has deposited into the budget, so it allows no retry.
/// assert_eq!(outcome.unwrap_err().stop, StopReason::BudgetExhausted);
/// # }
/// ```
pub struct Retry<'a, E> {
    policy: &'a RetryPolicy,
    signal: Option<AbortSignal>,
    budget: Option<&'a RetryBudget>,
    breaker: Option<&'a CircuitBreaker>,
    on_retry: Option<Hook<'a, E>>,
    classify: Option<Classifier<'a, E>>,
}

impl<'a, E> Retry<'a, E> {
    /// A retried call under `policy`.
    pub fn new(policy: &'a RetryPolicy) -> Self {
        Self {
            policy,
            signal: None,
            budget: None,
            breaker: None,
            on_retry: None,
            classify: None,
        }
    }

    /// Stops (with [`StopReason::Aborted`]) when `signal` aborts, even mid-attempt or
    /// mid-sleep.
    pub fn signal(mut self, signal: &AbortSignal) -> Self {
        self.signal = Some(signal.clone());
        self
    }

    /// Deposits the call into `budget` and withdraws one token per retry.
    pub fn budget(mut self, budget: &'a RetryBudget) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Asks `breaker` before every attempt and reports each outcome to it.
    pub fn breaker(mut self, breaker: &'a CircuitBreaker) -> Self {
        self.breaker = Some(breaker);
        self
    }

    /// Called before each sleep with the failure, the attempt that failed (1-based) and
    /// the delay.
    pub fn on_retry(
        mut self,
        hook: impl FnMut(&AttemptFailure<E>, u32, Duration) + Send + 'a,
    ) -> Self {
        self.on_retry = Some(Box::new(hook));
        self
    }

    /// Classifies errors with `classify` instead of their [`Classify`] impl.
    pub fn classify_with(mut self, classify: impl Fn(&E) -> ErrorClass + Send + Sync + 'a) -> Self {
        self.classify = Some(Box::new(classify));
        self
    }

    /// Runs `operation` until it succeeds or a stop condition holds.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future drops the attempt in flight (or the sleep between attempts).
    pub fn run<T, F, Fut>(
        self,
        operation: F,
    ) -> impl Future<Output = Result<T, RetryError<E>>> + use<'a, T, F, Fut, E>
    where
        E: Classify,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.run_classified(operation, |e| e.class())
    }

    /// Like [`run`](Self::run) for error types without a [`Classify`] impl; the classifier
    /// set with [`classify_with`](Self::classify_with) decides (without one, every error is
    /// [`ErrorClass::Transient`]).
    ///
    /// # Cancel safety
    ///
    /// As [`run`](Self::run).
    pub async fn run_unclassified<T, F, Fut>(self, operation: F) -> Result<T, RetryError<E>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.run_classified(operation, |_| ErrorClass::Transient)
            .await
    }

    /// Goes on after a first attempt that the caller made without this machinery failed
    /// with `first`: the next attempts, under the same rules as
    /// [`run_unclassified`](Self::run_unclassified). Only for a call whose first attempt had
    /// nothing to watch (no budget, breaker, signal, attempt timeout or elapsed limit), as
    /// `run_unclassified` itself makes it.
    #[cfg(feature = "tower")]
    pub(crate) async fn run_unclassified_after<T, F, Fut>(
        self,
        first: E,
        operation: F,
    ) -> Result<T, RetryError<E>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        Box::pin(self.run_loop(operation, |_| ErrorClass::Transient, Some(first))).await
    }

    async fn run_classified<T, F, Fut>(
        self,
        mut operation: F,
        default: fn(&E) -> ErrorClass,
    ) -> Result<T, RetryError<E>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        if let Some(budget) = self.budget {
            budget.deposit();
        }
        // The common first attempt, with no signal, breaker or time limit to watch, is
        // awaited directly: the success path is the operation and a few branches. Anything
        // else (a failure, or a call with those parts) runs the full loop, boxed, so that
        // its state does not weigh on every call's future.
        let mut first = None;
        if self.signal.is_none()
            && self.breaker.is_none()
            && self.policy.attempt_timeout.is_none()
            && self.policy.max_elapsed.is_none()
        {
            match operation().await {
                Ok(value) => {
                    debug!(attempts = 1, "attempt succeeded");
                    return Ok(value);
                }
                Err(error) => first = Some(error),
            }
        }
        Box::pin(self.run_loop(operation, default, first)).await
    }

    /// The retry loop; `first` is the error of a first attempt already made.
    async fn run_loop<T, F, Fut>(
        mut self,
        mut operation: F,
        default: fn(&E) -> ErrorClass,
        mut first: Option<E>,
    ) -> Result<T, RetryError<E>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let policy = self.policy;
        // The clock is read from the start only when `max_elapsed` needs it; otherwise from
        // the first failure, which keeps the success path free of clock reads.
        let mut started = policy.max_elapsed.map(|_| Instant::now());
        let mut schedule = None;
        let mut attempts = 0u32;
        let mut last = None;
        let signal = self.signal.clone();
        let since = |started: Option<Instant>| started.map_or(Duration::ZERO, |s| s.elapsed());
        let stop = |started: Option<Instant>, attempts, last, stop| {
            debug!(attempts, %stop, "retry gave up");
            Err(RetryError {
                attempts,
                elapsed: since(started),
                last,
                stop,
            })
        };
        loop {
            if signal.as_ref().is_some_and(AbortSignal::is_aborted) {
                return stop(started, attempts, last, StopReason::Aborted);
            }
            let permit = match self.breaker.map(CircuitBreaker::try_acquire).transpose() {
                Ok(permit) => permit,
                Err(open) => {
                    return stop(
                        started,
                        attempts,
                        last,
                        StopReason::CircuitOpen {
                            retry_after: open.retry_after,
                        },
                    );
                }
            };
            attempts += 1;
            // The attempt's limit: its own timeout, or what is left of max_elapsed.
            let left = policy
                .max_elapsed
                .map(|max| max.saturating_sub(since(started)));
            let limit = match (policy.attempt_timeout, left) {
                (Some(a), Some(l)) => Some(a.min(l)),
                (a, l) => a.or(l),
            };
            // The timeout's timer is boxed: it is big, and the common path has none.
            let attempt = async {
                match limit {
                    Some(limit) => Box::pin(crate::time::timeout(limit, operation()))
                        .await
                        .map_err(|_| AttemptTimeout { limit }),
                    None => Ok(operation().await),
                }
            };
            let outcome = match (first.take(), &signal) {
                (Some(error), _) => Ok(Ok(Err(error))),
                (None, Some(signal)) => signal.run_until_aborted(attempt).await,
                (None, None) => Ok(attempt.await),
            };
            if !matches!(outcome, Ok(Ok(Ok(_)))) {
                started.get_or_insert_with(Instant::now);
            }
            let (failure, elapsed_cut) = match outcome {
                Err(_) => return stop(started, attempts, last, StopReason::Aborted),
                Ok(Ok(Ok(value))) => {
                    if let Some(permit) = permit {
                        permit.success();
                    }
                    debug!(attempts, "attempt succeeded");
                    return Ok(value);
                }
                Ok(Ok(Err(error))) => (AttemptFailure::Error(error), false),
                Ok(Err(timeout)) => {
                    // Cut by what was left of max_elapsed rather than by attempt_timeout?
                    let cut = left.is_some_and(|l| policy.attempt_timeout.is_none_or(|a| l < a));
                    (AttemptFailure::Timeout(timeout), cut)
                }
            };
            let class = match (&failure, &self.classify) {
                (AttemptFailure::Error(e), Some(classify)) => classify(e),
                (AttemptFailure::Error(e), None) => default(e),
                (AttemptFailure::Timeout(_), _) => ErrorClass::Transient,
            };
            if let Some(permit) = permit {
                permit.record(class);
            }
            if elapsed_cut {
                return stop(started, attempts, Some(failure), StopReason::Elapsed);
            }
            last = Some(failure);
            // Boxed: the failure path (with its sleep) would otherwise bloat every call's future.
            let after = Box::pin(self.after_failure(
                &mut last,
                &mut schedule,
                attempts,
                since(started),
                class,
            ));
            if let Some(reason) = after.await {
                return stop(started, attempts, last, reason);
            }
        }
    }

    /// After a failed attempt: decides whether to stop, else sleeps the next delay.
    async fn after_failure(
        &mut self,
        last: &mut Option<AttemptFailure<E>>,
        schedule: &mut Option<crate::policy::Schedule>,
        attempts: u32,
        elapsed: Duration,
        class: ErrorClass,
    ) -> Option<StopReason> {
        match class {
            ErrorClass::Aborted => return Some(StopReason::Aborted),
            ErrorClass::Permanent => return Some(StopReason::Permanent),
            _ => {}
        }
        if attempts >= self.policy.max_attempts {
            return Some(StopReason::Exhausted);
        }
        let mut delay = schedule
            .get_or_insert_with(|| self.policy.schedule())
            .next()
            .unwrap_or(self.policy.max_delay);
        if let ErrorClass::RateLimited {
            retry_after: Some(after),
        } = class
        {
            if after > self.policy.max_retry_after {
                warn!(
                    attempt = attempts,
                    retry_after_ms = after.as_millis() as u64,
                    max_retry_after_ms = self.policy.max_retry_after.as_millis() as u64,
                    "the server asked to retry later than the policy waits; giving up"
                );
                return Some(StopReason::RetryAfterTooLong { retry_after: after });
            }
            delay = delay.max(after);
        }
        if let Some(max) = self.policy.max_elapsed
            && elapsed + delay >= max
        {
            return Some(StopReason::Elapsed);
        }
        if let Some(budget) = self.budget
            && !budget.try_withdraw()
        {
            warn!(attempt = attempts, "retry budget exhausted; not retrying");
            #[cfg(feature = "metrics")]
            metrics::counter!("conc_retry_budget_exhausted_total").increment(1);
            return Some(StopReason::BudgetExhausted);
        }
        if let (Some(hook), Some(failure)) = (&mut self.on_retry, last.as_ref()) {
            hook(failure, attempts, delay);
        }
        debug!(
            attempt = attempts,
            delay_ms = delay.as_millis() as u64,
            ?class,
            "attempt failed; retrying"
        );
        #[cfg(feature = "metrics")]
        metrics::counter!("conc_retry_retries_total").increment(1);
        let signal = self.signal.clone().unwrap_or_else(AbortSignal::never);
        if signal
            .run_until_aborted(crate::time::sleep(delay))
            .await
            .is_err()
        {
            return Some(StopReason::Aborted);
        }
        None
    }
}

impl<E> fmt::Debug for Retry<'_, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Retry")
            .field("policy", self.policy)
            .field("budget", &self.budget.is_some())
            .field("breaker", &self.breaker.is_some())
            .finish_non_exhaustive()
    }
}
