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

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::classify::{Classify, ErrorClass};
use crate::loom::{AtomicU8, AtomicU32, AtomicU64, Ordering};

/// The breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CircuitState {
    /// Calls pass.
    Closed,
    /// Calls are rejected until the break is over.
    Open,
    /// A limited number of probe calls pass.
    HalfOpen,
    /// Held open by [`CircuitBreaker::isolate`].
    Isolated,
}

/// A state change, given to the hooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateChange {
    /// The state before.
    pub from: CircuitState,
    /// The state after.
    pub to: CircuitState,
}

/// The breaker rejected a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the circuit is open{}", match .retry_after { Some(d) => format!("; retry in {d:?}"), None => String::new() })]
pub struct CircuitOpen {
    /// When a call may be admitted again, if known.
    pub retry_after: Option<Duration>,
}

/// A [`CircuitBreaker::call`] that did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BreakerError<E> {
    /// Rejected without calling.
    #[error(transparent)]
    Open(CircuitOpen),
    /// The call failed.
    #[error("the call failed")]
    Inner(#[source] E),
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

type Hook = Box<dyn Fn(StateChange) + Send + Sync>;

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

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

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

    /// Runs `call` if the breaker admits it, and records its outcome by its [`ErrorClass`]
    /// (only retryable classes count as failures).
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

/// Permission for one call; report its outcome with [`success`](Self::success),
/// [`failure`](Self::failure) or [`record`](Self::record). Dropped without a report, it
/// counts as neither (and frees its half-open probe slot).
#[must_use = "report the call's outcome on the permit"]
pub struct BreakerPermit<'a> {
    breaker: &'a CircuitBreaker,
    ticket: Option<Ticket>,
}

impl BreakerPermit<'_> {
    /// The call succeeded.
    pub fn success(mut self) {
        if let Some(ticket) = self.ticket.take() {
            let change = self
                .breaker
                .inner
                .core
                .record(ticket, true, || self.breaker.now());
            self.breaker.fire(change);
        }
    }

    /// The call failed (counts against the breaker).
    pub fn failure(mut self) {
        if let Some(ticket) = self.ticket.take() {
            let change = self
                .breaker
                .inner
                .core
                .record(ticket, false, || self.breaker.now());
            self.breaker.fire(change);
        }
    }

    /// Records by class: retryable classes are failures; `Permanent` counts as a success
    /// of the dependency; `Aborted` counts as nothing.
    pub fn record(self, class: ErrorClass) {
        match class {
            ErrorClass::Aborted => drop(self),
            ErrorClass::Permanent => self.success(),
            _ => self.failure(),
        }
    }
}

#[cfg(feature = "tower")]
impl BreakerPermit<'_> {
    fn into_ticket(mut self) -> Option<Ticket> {
        self.ticket.take()
    }
}

/// An owned permit (a breaker clone and a ticket), for the tower layer.
#[cfg(feature = "tower")]
pub(crate) struct OwnedPermit {
    breaker: CircuitBreaker,
    ticket: Option<Ticket>,
}

#[cfg(feature = "tower")]
impl OwnedPermit {
    /// Moves the ticket into a borrowed permit, to report the outcome as usual.
    pub(crate) fn take(&mut self) -> BreakerPermit<'_> {
        BreakerPermit {
            breaker: &self.breaker,
            ticket: self.ticket.take(),
        }
    }
}

#[cfg(feature = "tower")]
impl Drop for OwnedPermit {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            self.breaker.inner.core.release(ticket);
        }
    }
}

impl Drop for BreakerPermit<'_> {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            self.breaker.inner.core.release(ticket);
        }
    }
}

impl fmt::Debug for BreakerPermit<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakerPermit")
            .field("probe", &self.ticket.map(|t| t.probe))
            .finish()
    }
}

// ---- the lock-free core, in nanoseconds, checked with loom ----

pub(crate) const CLOSED: u64 = 0;
pub(crate) const OPEN: u64 = 1;
pub(crate) const HALF_OPEN: u64 = 2;
pub(crate) const ISOLATED: u64 = 3;
const TAG: u64 = 0b11;
const ADMITTED_SHIFT: u32 = 2;
const SUCCEEDED_SHIFT: u32 = 18;
const FIELD: u64 = 0xFFFF;
const GEN_SHIFT: u32 = 34;

fn tag(s: u64) -> u64 {
    s & TAG
}
fn admitted(s: u64) -> u64 {
    (s >> ADMITTED_SHIFT) & FIELD
}
fn succeeded(s: u64) -> u64 {
    (s >> SUCCEEDED_SHIFT) & FIELD
}
fn generation(s: u64) -> u64 {
    s >> GEN_SHIFT
}
fn pack(tag: u64, admitted: u64, succeeded: u64, generation: u64) -> u64 {
    tag | (admitted << ADMITTED_SHIFT) | (succeeded << SUCCEEDED_SHIFT) | (generation << GEN_SHIFT)
}
fn tag_state(s: u64) -> CircuitState {
    match tag(s) {
        CLOSED => CircuitState::Closed,
        OPEN => CircuitState::Open,
        HALF_OPEN => CircuitState::HalfOpen,
        _ => CircuitState::Isolated,
    }
}

pub(crate) struct CoreConfig {
    pub(crate) consecutive: Option<u32>,
    pub(crate) rate: Option<(f64, u32, u32)>,
    pub(crate) break_nanos: u64,
    pub(crate) growth: f64,
    pub(crate) max_break_nanos: u64,
    pub(crate) probes: u32,
    pub(crate) close_after: u32,
    /// Failure rate over time: rate, window (ns), minimum calls.
    pub(crate) time_rate: Option<(f64, u64, u32)>,
    /// Calls slower than this (ns) count as failures.
    pub(crate) slow_nanos: Option<u64>,
    /// The longest the breaker stays half-open (ns).
    pub(crate) max_half_open_nanos: Option<u64>,
}

/// What a permit remembers: the generation it was issued in, and whether it is a probe.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ticket {
    generation: u64,
    pub(crate) probe: bool,
    /// When it was issued (ns), if slow calls are counted.
    started: u64,
}

/// The state machine. `state` packs tag, probes admitted, probes succeeded and a generation;
/// every half-open decision is one CAS on it, so exactly `probes` are admitted.
pub(crate) struct Core {
    config: CoreConfig,
    pub(crate) state: AtomicU64,
    /// When the current open period ends; valid for the generation in `open_generation`.
    open_until: AtomicU64,
    /// The generation whose `open_until` is published (written after it, by the opener
    /// that won the CAS, so a loser never shortens or lengthens the break).
    open_generation: AtomicU64,
    opened_in_a_row: AtomicU32,
    consecutive: AtomicU32,
    window: Vec<AtomicU8>,
    window_pos: AtomicU64,
    window_failures: AtomicU32,
    /// The time-based window, when configured (a short lock per recorded outcome).
    time_window: Option<parking_lot::Mutex<TimeWindow>>,
    /// When the breaker went half-open (ns), for the generation in `half_open_generation`.
    half_open_since: AtomicU64,
    half_open_generation: AtomicU64,
}

/// Ten buckets covering the time window.
struct TimeWindow {
    bucket_nanos: u64,
    buckets: [Bucket; 10],
}

#[derive(Clone, Copy, Default)]
struct Bucket {
    index: u64,
    calls: u32,
    failures: u32,
}

impl TimeWindow {
    /// Records one outcome at `now`; the calls and failures in the window.
    fn record(&mut self, now: u64, failed: bool) -> (u64, u64) {
        let index = now / self.bucket_nanos;
        let n = self.buckets.len() as u64;
        let bucket = &mut self.buckets[(index % n) as usize];
        if bucket.index != index || bucket.calls == 0 {
            *bucket = Bucket {
                index,
                calls: 0,
                failures: 0,
            };
        }
        bucket.calls = bucket.calls.saturating_add(1);
        if failed {
            bucket.failures = bucket.failures.saturating_add(1);
        }
        self.buckets
            .iter()
            .filter(|b| b.calls > 0 && index.saturating_sub(b.index) < n && b.index <= index)
            .fold((0, 0), |(calls, failures), b| {
                (calls + u64::from(b.calls), failures + u64::from(b.failures))
            })
    }

    fn clear(&mut self) {
        self.buckets = [Bucket::default(); 10];
    }
}

const EMPTY: u8 = 0;
const OK: u8 = 1;
const FAIL: u8 = 2;

impl Core {
    pub(crate) fn new(config: CoreConfig) -> Self {
        let window = config.rate.map_or(0, |(_, w, _)| w as usize);
        let time_window = config.time_rate.map(|(_, window_nanos, _)| window_nanos);
        Self {
            config,
            state: AtomicU64::new(pack(CLOSED, 0, 0, 0)),
            open_until: AtomicU64::new(0),
            open_generation: AtomicU64::new(u64::MAX),
            opened_in_a_row: AtomicU32::new(0),
            consecutive: AtomicU32::new(0),
            window: (0..window).map(|_| AtomicU8::new(EMPTY)).collect(),
            window_pos: AtomicU64::new(0),
            window_failures: AtomicU32::new(0),
            time_window: time_window.map(|window_nanos| {
                parking_lot::Mutex::new(TimeWindow {
                    bucket_nanos: (window_nanos / 10).max(1),
                    buckets: [Bucket::default(); 10],
                })
            }),
            half_open_since: AtomicU64::new(0),
            half_open_generation: AtomicU64::new(u64::MAX),
        }
    }

    /// Moves an open breaker whose break is over to half-open (the winner of the CAS
    /// publishes when). Returns the change it made.
    pub(crate) fn expire_open(&self, now: u64) -> Option<StateChange> {
        let s = self.state.load(Ordering::Acquire);
        if tag(s) != OPEN || self.open_generation.load(Ordering::Acquire) != generation(s) {
            return None;
        }
        if now < self.open_until.load(Ordering::Acquire) {
            return None;
        }
        let next = pack(HALF_OPEN, 0, 0, generation(s) + 1);
        self.state
            .compare_exchange(s, next, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .and_then(|_| {
                self.half_open_since.store(now, Ordering::Release);
                self.half_open_generation
                    .store(generation(next), Ordering::Release);
                Self::change(s, next)
            })
    }

    fn change(from: u64, to: u64) -> Option<StateChange> {
        Some(StateChange {
            from: tag_state(from),
            to: tag_state(to),
        })
    }

    /// `Ok(ticket)` or `Err(retry_after_nanos)`; plus the state change it made, if any.
    pub(crate) fn acquire(
        &self,
        now: impl Fn() -> u64,
    ) -> (Result<Ticket, Option<u64>>, Option<StateChange>) {
        let mut change = None;
        let mut s = self.state.load(Ordering::Acquire);
        loop {
            match tag(s) {
                CLOSED => {
                    return (
                        Ok(Ticket {
                            generation: generation(s),
                            probe: false,
                            started: if self.config.slow_nanos.is_some() {
                                now()
                            } else {
                                0
                            },
                        }),
                        change,
                    );
                }
                OPEN => {
                    if self.open_generation.load(Ordering::Acquire) != generation(s) {
                        // Opened this instant; its opener has not published the end yet.
                        return (Err(None), change);
                    }
                    let until = self.open_until.load(Ordering::Acquire);
                    let now = now();
                    if now < until {
                        return (Err(Some(until - now)), change);
                    }
                    let next = pack(HALF_OPEN, 0, 0, generation(s) + 1);
                    match self
                        .state
                        .compare_exchange(s, next, Ordering::AcqRel, Ordering::Acquire)
                    {
                        Ok(_) => {
                            self.half_open_since.store(now, Ordering::Release);
                            self.half_open_generation
                                .store(generation(next), Ordering::Release);
                            change = Self::change(s, next);
                            s = next;
                        }
                        Err(now_state) => s = now_state,
                    }
                }
                HALF_OPEN => {
                    if admitted(s) >= u64::from(self.config.probes) {
                        // Probes that never settle must not hold it half-open for ever.
                        if let Some(max) = self.config.max_half_open_nanos
                            && self.half_open_generation.load(Ordering::Acquire) == generation(s)
                        {
                            let now = now();
                            let since = self.half_open_since.load(Ordering::Acquire);
                            if now.saturating_sub(since) >= max {
                                if let Some(reopened) = self.open_from(s, now) {
                                    change = Some(reopened);
                                }
                                s = self.state.load(Ordering::Acquire);
                                continue;
                            }
                        }
                        return (Err(None), change);
                    }
                    let next = s + (1 << ADMITTED_SHIFT);
                    match self
                        .state
                        .compare_exchange(s, next, Ordering::AcqRel, Ordering::Acquire)
                    {
                        Ok(_) => {
                            return (
                                Ok(Ticket {
                                    generation: generation(s),
                                    probe: true,
                                    started: if self.config.slow_nanos.is_some() {
                                        now()
                                    } else {
                                        0
                                    },
                                }),
                                change,
                            );
                        }
                        Err(now_state) => s = now_state,
                    }
                }
                _ => return (Err(None), change),
            }
        }
    }

    /// Records an outcome; returns the state change it caused, if any.
    pub(crate) fn record(
        &self,
        ticket: Ticket,
        success: bool,
        now: impl Fn() -> u64,
    ) -> Option<StateChange> {
        let mut success = success;
        if let Some(slow) = self.config.slow_nanos
            && now().saturating_sub(ticket.started) > slow
        {
            success = false;
        }
        let s = self.state.load(Ordering::Acquire);
        if generation(s) != ticket.generation {
            return None;
        }
        if ticket.probe {
            return self.record_probe(s, success, now);
        }
        if tag(s) != CLOSED {
            return None;
        }
        let window_trips = self.record_window(success) | self.record_time_window(success, &now);
        if success {
            // Read first: a store on every success would bounce the cache line.
            if self.consecutive.load(Ordering::Relaxed) != 0 {
                self.consecutive.store(0, Ordering::Release);
            }
            return None;
        }
        let in_a_row = self.consecutive.fetch_add(1, Ordering::AcqRel) + 1;
        let consecutive_trips = self.config.consecutive.is_some_and(|n| in_a_row >= n);
        if consecutive_trips || window_trips {
            return self.open_from(s, now());
        }
        None
    }

    /// Updates the sliding window; whether the failure rate now trips the breaker.
    fn record_window(&self, success: bool) -> bool {
        let Some((rate, size, min_calls)) = self.config.rate else {
            return false;
        };
        let position = self.window_pos.fetch_add(1, Ordering::AcqRel);
        let slot = &self.window[(position % u64::from(size)) as usize];
        let new = if success { OK } else { FAIL };
        let old = slot.swap(new, Ordering::AcqRel);
        if old != FAIL && new == FAIL {
            self.window_failures.fetch_add(1, Ordering::AcqRel);
        } else if old == FAIL && new != FAIL {
            self.window_failures.fetch_sub(1, Ordering::AcqRel);
        }
        if success {
            return false;
        }
        let calls = (position + 1).min(u64::from(size));
        let failures = u64::from(self.window_failures.load(Ordering::Acquire));
        calls >= u64::from(min_calls) && failures as f64 >= rate * calls as f64
    }

    /// Updates the time-based window; whether its failure rate now trips the breaker.
    fn record_time_window(&self, success: bool, now: &impl Fn() -> u64) -> bool {
        let (Some((rate, _, min_calls)), Some(window)) = (self.config.time_rate, &self.time_window)
        else {
            return false;
        };
        let (calls, failures) = window.lock().record(now(), !success);
        !success && calls >= u64::from(min_calls) && failures as f64 >= rate * calls as f64
    }

    fn record_probe(
        &self,
        mut s: u64,
        success: bool,
        now: impl Fn() -> u64,
    ) -> Option<StateChange> {
        loop {
            if tag(s) != HALF_OPEN {
                return None;
            }
            if !success {
                return self.open_from(s, now());
            }
            let done = succeeded(s) + 1;
            let next = if done >= u64::from(self.config.close_after) {
                self.clear_counts();
                pack(CLOSED, 0, 0, generation(s) + 1)
            } else {
                s + (1 << SUCCEEDED_SHIFT)
            };
            match self
                .state
                .compare_exchange(s, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) if tag(next) == CLOSED => {
                    self.opened_in_a_row.store(0, Ordering::Release);
                    return Self::change(s, next);
                }
                Ok(_) => return None,
                Err(now_state) => {
                    if generation(now_state) != generation(s) {
                        return None;
                    }
                    s = now_state;
                }
            }
        }
    }

    /// Opens from state `s` (closed or half-open), growing the break if it re-opens. Only
    /// the caller whose CAS opens the breaker sets the break, once: concurrent failures
    /// that race to re-open it grow it by one step, not one per failure.
    fn open_from(&self, s: u64, now: u64) -> Option<StateChange> {
        let mut s = s;
        loop {
            let next = pack(OPEN, 0, 0, generation(s) + 1);
            match self
                .state
                .compare_exchange(s, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    let opened = self.opened_in_a_row.fetch_add(1, Ordering::AcqRel);
                    let grown = self.config.break_nanos as f64
                        * self.config.growth.powi(opened.min(64) as i32);
                    let break_nanos = if grown.is_finite() {
                        (grown as u64).min(self.config.max_break_nanos)
                    } else {
                        self.config.max_break_nanos
                    };
                    self.open_until
                        .store(now.saturating_add(break_nanos), Ordering::Release);
                    self.open_generation
                        .store(generation(next), Ordering::Release);
                    return Self::change(s, next);
                }
                // Only the probe counts moved (same state, same generation): try again, or
                // a concurrent probe's report would swallow this failure.
                Err(now_state)
                    if tag(now_state) == tag(s) && generation(now_state) == generation(s) =>
                {
                    s = now_state;
                }
                Err(_) => return None,
            }
        }
    }

    /// A permit dropped without an outcome: free its probe slot.
    pub(crate) fn release(&self, ticket: Ticket) {
        if !ticket.probe {
            return;
        }
        let mut s = self.state.load(Ordering::Acquire);
        while tag(s) == HALF_OPEN && generation(s) == ticket.generation && admitted(s) > 0 {
            match self.state.compare_exchange(
                s,
                s - (1 << ADMITTED_SHIFT),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return,
                Err(now_state) => s = now_state,
            }
        }
    }

    fn clear_counts(&self) {
        self.consecutive.store(0, Ordering::Release);
        for slot in &self.window {
            slot.store(EMPTY, Ordering::Release);
        }
        self.window_pos.store(0, Ordering::Release);
        self.window_failures.store(0, Ordering::Release);
        if let Some(window) = &self.time_window {
            window.lock().clear();
        }
    }

    /// Forces `CLOSED` (clearing counts) or `ISOLATED`.
    pub(crate) fn force(&self, to: u64) -> Option<StateChange> {
        if to == CLOSED {
            self.clear_counts();
            self.opened_in_a_row.store(0, Ordering::Release);
        }
        let mut s = self.state.load(Ordering::Acquire);
        loop {
            if tag(s) == to {
                return None;
            }
            let next = pack(to, 0, 0, generation(s) + 1);
            match self
                .state
                .compare_exchange(s, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Self::change(s, next),
                Err(now_state) => s = now_state,
            }
        }
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    //! Loom: half-open admits exactly N probes; a probe's success races a probe's failure.

    use loom::sync::Arc;
    use loom::thread;

    use super::*;

    fn core(probes: u32) -> Core {
        Core::new(CoreConfig {
            consecutive: Some(1),
            rate: None,
            break_nanos: 10,
            growth: 1.0,
            max_break_nanos: 10,
            probes,
            close_after: probes,
            time_rate: None,
            slow_nanos: None,
            max_half_open_nanos: None,
        })
    }

    /// Three callers race into a half-open breaker that admits `probes`: exactly that many
    /// get a permit.
    fn admits_exactly(probes: u32) {
        loom::model(move || {
            let core = Arc::new(core(probes));
            let (first, _) = core.acquire(|| 0);
            core.record(first.unwrap(), false, || 0); // opens until 10
            let callers: Vec<_> = (0..3)
                .map(|_| {
                    let core = core.clone();
                    thread::spawn(move || core.acquire(|| 20).0.is_ok())
                })
                .collect();
            let admitted = callers
                .into_iter()
                .map(|c| c.join().unwrap())
                .filter(|ok| *ok)
                .count();
            assert_eq!(admitted, probes as usize);
            assert_eq!(tag(core.state.load(Ordering::SeqCst)), HALF_OPEN);
        });
    }

    #[test]
    fn half_open_admits_exactly_one_probe() {
        admits_exactly(1);
    }

    #[test]
    fn half_open_admits_exactly_two_probes() {
        admits_exactly(2);
    }

    /// Two probes: one succeeds while the other fails. The breaker ends open (a failed
    /// probe re-opens it) or, if the success closed it first, the stale failure is ignored.
    #[test]
    fn probe_success_races_probe_failure() {
        loom::model(|| {
            let core = Arc::new(core(2));
            let (first, _) = core.acquire(|| 0);
            core.record(first.unwrap(), false, || 0);
            let a = core.acquire(|| 20).0.unwrap();
            let b = core.acquire(|| 20).0.unwrap();
            let failing = {
                let core = core.clone();
                thread::spawn(move || core.record(b, false, || 20))
            };
            core.record(a, true, || 20);
            failing.join().unwrap();
            // close_after is 2, so one success cannot close it: the failure must open it.
            assert_eq!(tag(core.state.load(Ordering::SeqCst)), OPEN);
        });
    }

    /// Two probes fail at once with a growing break: the breaker re-opens once, and the
    /// break grows one step (10 × 4), never two (10 × 16).
    #[test]
    fn racing_failures_grow_the_break_once() {
        loom::model(|| {
            let core = Arc::new(Core::new(CoreConfig {
                consecutive: Some(1),
                rate: None,
                break_nanos: 10,
                growth: 4.0,
                max_break_nanos: 1000,
                probes: 2,
                close_after: 2,
                time_rate: None,
                slow_nanos: None,
                max_half_open_nanos: None,
            }));
            let (first, _) = core.acquire(|| 0);
            core.record(first.unwrap(), false, || 0); // open until 10
            let a = core.acquire(|| 20).0.unwrap();
            let b = core.acquire(|| 20).0.unwrap();
            let other = {
                let core = core.clone();
                thread::spawn(move || core.record(b, false, || 20))
            };
            core.record(a, false, || 20);
            other.join().unwrap();
            assert_eq!(tag(core.state.load(Ordering::SeqCst)), OPEN);
            assert_eq!(core.open_until.load(Ordering::SeqCst), 20 + 40);
            // Until then it admits nobody; at 60 one probe again.
            assert!(core.acquire(|| 59).0.is_err());
            assert!(core.acquire(|| 60).0.is_ok());
        });
    }
}
