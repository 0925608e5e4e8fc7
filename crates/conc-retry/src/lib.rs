//! Retry with backoff and jitter, error classes, a circuit breaker and a retry budget: one
//! crate every call site can share, so the policy has one source of truth.
//!
//! - [`RetryPolicy`]: attempts, elapsed limit, exponential backoff with
//!   [`Jitter`] (`None`, `Full`, `Equal`, `Decorrelated`), a cap that jitter never passes, a
//!   per-attempt timeout, a seedable random source. The schedules are this crate's own.
//! - [`ErrorClass`] and [`Classify`]: `Transient`, `RateLimited { retry_after }`, `Server`,
//!   `Permanent`, `Aborted`; ready impls for `std::io::Error`, [`AttemptTimeout`],
//!   conc-core's `Aborted` and (with the `conc-async` feature) conc-async's
//!   `TimeoutError`, and [`classify_http`] for a status and `Retry-After`.
//! - [`retry`] and [`Retry`]: run an operation; a [`RetryError`] says how many attempts,
//!   how long, the last error and why it stopped ([`StopReason`]). Aborts are never retried.
//! - [`CircuitBreaker`]: consecutive failures or a failure rate over a sliding window;
//!   exactly N half-open probes (a loom model checks it); hooks; `isolate`/`reset`.
//! - [`RetryBudget`]: retries as a share of requests plus a floor per second.
//! - With the `tower` feature: `RetryLayer` and `CircuitBreakerLayer`.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use conc_retry::{CircuitBreaker, Retry, RetryBudget, RetryPolicy};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! // One policy, breaker and budget per dependency, shared by every call site.
//! let policy = RetryPolicy::builder()
//!     .max_attempts(4)
//!     .base_delay(Duration::from_millis(200))
//!     .max_elapsed(Duration::from_secs(10))
//!     .attempt_timeout(Duration::from_secs(3))
//!     .build()
//!     .unwrap();
//! let breaker = CircuitBreaker::builder().consecutive_failures(5).build().unwrap();
//! let budget = RetryBudget::new(Duration::from_secs(10), 5, 0.2).unwrap();
//!
//! let reply = Retry::new(&policy)
//!     .breaker(&breaker)
//!     .budget(&budget)
//!     .run(|| async { Ok::<_, std::io::Error>("hello") })
//!     .await
//!     .unwrap();
//! assert_eq!(reply, "hello");
//! # }
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]

mod breaker;
mod budget;
mod classify;
mod loom;
mod policy;
mod retry;
mod time;
#[cfg(feature = "tower")]
mod tower;

pub use breaker::{
    BreakerConfigError, BreakerError, BreakerPermit, CircuitBreaker, CircuitBreakerBuilder,
    CircuitOpen, CircuitState, StateChange,
};
pub use budget::{BudgetError, RetryBudget};
pub use classify::{Classify, ErrorClass, classify_http, parse_retry_after};
/// The abort signal of conc-core that a retry watches (a stop ends the waiting between
/// attempts and the attempt itself), with its controller and reasons.
pub use conc_core::{AbortController, AbortReason, AbortSignal};
pub use policy::{Jitter, PolicyError, RetryPolicy, RetryPolicyBuilder, Schedule};
pub use retry::{AttemptFailure, AttemptTimeout, Retry, RetryError, StopReason, retry};
#[cfg(feature = "tower")]
pub use tower::{
    CircuitBreakerLayer, CircuitBreakerService, NoHook, OnRetry, RetryLayer, RetryService,
    ServiceBuilderExt,
};

/// The crate's README, whose examples are compiled and run as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
