//! tower middleware: [`RetryLayer`] and [`CircuitBreakerLayer`] (feature `tower`).

use std::fmt;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use conc_core::AbortSignal;
use tower_layer::Layer;
use tower_service::Service;

use crate::breaker::{BreakerError, CircuitBreaker};
use crate::budget::RetryBudget;
use crate::classify::ErrorClass;
use crate::policy::RetryPolicy;
use crate::retry::{AttemptFailure, Retry, RetryError, StopReason};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// What a [`RetryLayer`] calls before each retry's sleep: the failure, the attempt that
/// failed (1-based) and the delay. Implemented for closures and for [`NoHook`].
pub trait OnRetry<E>: Clone + Send + Sync + 'static {
    /// Called before the sleep that precedes a retry.
    fn on_retry(&self, failure: &AttemptFailure<E>, attempt: u32, delay: Duration);
}

/// No hook (the default of [`RetryLayer`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHook;

impl<E> OnRetry<E> for NoHook {
    fn on_retry(&self, _: &AttemptFailure<E>, _: u32, _: Duration) {}
}

impl<E, F> OnRetry<E> for F
where
    F: Fn(&AttemptFailure<E>, u32, Duration) + Clone + Send + Sync + 'static,
{
    fn on_retry(&self, failure: &AttemptFailure<E>, attempt: u32, delay: Duration) {
        self(failure, attempt, delay);
    }
}

/// Retries a service's calls under a [`RetryPolicy`]; errors are classified by `classify`.
/// It takes everything [`Retry`] takes: a [`RetryBudget`] and a [`CircuitBreaker`] (the
/// defences against retry storms), a hook, an abort signal.
///
/// The request must be `Clone` (each attempt sends a clone) and the service `Clone` (each
/// retry drives its own clone, as tower's own retry does). `poll_ready` tells the truth: it
/// is the inner service's readiness, so a load-shedding or rate-limiting layer above sees
/// it. The call's first attempt uses the service that was made ready, moved into the
/// response future (so a slot it reserved, such as a `ConcurrencyLimit` permit, serves that
/// attempt and is given back when the attempt ends); each retry readies a clone of its own.
///
/// ```
/// use conc_retry::{ErrorClass, RetryBudget, RetryLayer, RetryPolicy};
/// use std::time::Duration;
/// use tower::{Layer, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let budget = RetryBudget::new(Duration::from_secs(10), 10, 0.2).unwrap();
/// let layer = RetryLayer::new(RetryPolicy::default(), |_: &std::io::Error| ErrorClass::Transient)
///     .with_budget(budget);
/// let service = layer.layer(service_fn(|n: u32| async move { Ok::<_, std::io::Error>(n + 1) }));
/// assert_eq!(service.oneshot(1).await.unwrap(), 2);
/// # }
/// ```
#[derive(Clone)]
pub struct RetryLayer<C, H = NoHook> {
    policy: RetryPolicy,
    classify: C,
    budget: Option<RetryBudget>,
    breaker: Option<CircuitBreaker>,
    signal: Option<AbortSignal>,
    hook: H,
}

impl<C> RetryLayer<C> {
    /// A layer retrying under `policy`, classifying errors with `classify`.
    pub fn new(policy: RetryPolicy, classify: C) -> Self {
        Self {
            policy,
            classify,
            budget: None,
            breaker: None,
            signal: None,
            hook: NoHook,
        }
    }
}

impl<C, H> RetryLayer<C, H> {
    /// Deposits each call into `budget` and withdraws one token per retry (shared by every
    /// service this layer makes, and by anything else holding a clone of it).
    pub fn with_budget(mut self, budget: RetryBudget) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Asks `breaker` before every attempt and reports each outcome to it.
    pub fn with_breaker(mut self, breaker: CircuitBreaker) -> Self {
        self.breaker = Some(breaker);
        self
    }

    /// Stops every call's retries (with [`StopReason::Aborted`]) when `signal` aborts.
    pub fn with_signal(mut self, signal: AbortSignal) -> Self {
        self.signal = Some(signal);
        self
    }

    /// Calls `hook` before each retry's sleep with the failure, the attempt that failed
    /// (1-based) and the delay. The layer does not know its service's error type until it
    /// wraps one, so a closure names it in its first parameter:
    ///
    /// ```
    /// use std::time::Duration;
    /// use conc_retry::{AttemptFailure, ErrorClass, RetryLayer, RetryPolicy};
    ///
    /// let layer = RetryLayer::new(RetryPolicy::default(), |_: &std::io::Error| ErrorClass::Transient)
    ///     .on_retry(|failure: &AttemptFailure<std::io::Error>, attempt: u32, delay: Duration| {
    ///         tracing::warn!(%failure, attempt, ?delay, "retrying");
    ///     });
    /// # let _ = layer;
    /// ```
    pub fn on_retry<H2>(self, hook: H2) -> RetryLayer<C, H2> {
        RetryLayer {
            policy: self.policy,
            classify: self.classify,
            budget: self.budget,
            breaker: self.breaker,
            signal: self.signal,
            hook,
        }
    }
}

impl<S, C: Clone, H: Clone> Layer<S> for RetryLayer<C, H> {
    type Service = RetryService<S, C, H>;

    fn layer(&self, inner: S) -> Self::Service {
        RetryService {
            inner,
            layer: self.clone(),
        }
    }
}

impl<C, H> fmt::Debug for RetryLayer<C, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryLayer")
            .field("policy", &self.policy)
            .field("budget", &self.budget.is_some())
            .field("breaker", &self.breaker.is_some())
            .field("signal", &self.signal.is_some())
            .finish_non_exhaustive()
    }
}

/// The service of [`RetryLayer`].
#[derive(Clone)]
pub struct RetryService<S, C, H = NoHook> {
    inner: S,
    layer: RetryLayer<C, H>,
}

impl<S, C, H, Req> Service<Req> for RetryService<S, C, H>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Future: Send,
    S::Response: Send,
    S::Error: Send,
    Req: Clone + Send + 'static,
    C: Fn(&S::Error) -> ErrorClass + Clone + Send + Sync + 'static,
    H: OnRetry<S::Error>,
{
    type Response = S::Response;
    type Error = RetryError<S::Error>;
    type Future = BoxFuture<Result<S::Response, RetryError<S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(|error| RetryError {
            attempts: 0,
            elapsed: Duration::ZERO,
            last: Some(AttemptFailure::Error(error)),
            stop: StopReason::NotReady,
        })
    }

    fn call(&mut self, request: Req) -> Self::Future {
        // tower's contract: the service `poll_ready` readied is the one called. It may hold a
        // reserved slot (`ConcurrencyLimit`'s permit, `Buffer`'s), so it moves into the future
        // and makes the first attempt itself; an unready clone stays behind for the next
        // `poll_ready`, and each retry readies a clone of its own. Keeping the readied service
        // aside and calling a clone would hold its slot idle while the clone waits for one:
        // at the limit, a deadlock.
        let template = self.inner.clone();
        let mut ready = std::mem::replace(&mut self.inner, template.clone());
        let layer = self.layer.clone();
        if layer.budget.is_none()
            && layer.breaker.is_none()
            && layer.signal.is_none()
            && layer.policy.attempt_timeout.is_none()
            && layer.policy.max_elapsed.is_none()
        {
            // Nothing watches the first attempt (no budget to deposit into, breaker to ask,
            // signal or time limit): the readied service is called here, as any tower
            // middleware calls its inner service, and the retry machinery is built only
            // after a failure. The success path is the inner call and one allocation.
            let attempt = ready.call(request.clone());
            drop(ready);
            return Box::pin(async move {
                let error = match attempt.await {
                    Ok(value) => {
                        tracing::debug!(attempts = 1, "attempt succeeded");
                        return Ok(value);
                    }
                    Err(error) => error,
                };
                let RetryLayer {
                    policy,
                    classify,
                    hook,
                    ..
                } = layer;
                Retry::new(&policy)
                    .classify_with(classify)
                    .on_retry(move |failure, attempt, delay| hook.on_retry(failure, attempt, delay))
                    .run_unclassified_after(error, move || {
                        let mut service = template.clone();
                        let request = request.clone();
                        async move {
                            poll_fn(|cx| service.poll_ready(cx)).await?;
                            service.call(request).await
                        }
                    })
                    .await
            });
        }
        Box::pin(async move {
            let RetryLayer {
                policy,
                classify,
                budget,
                breaker,
                signal,
                hook,
            } = layer;
            let mut first = Some(ready);
            let mut retry = Retry::new(&policy)
                .classify_with(classify)
                .on_retry(move |failure, attempt, delay| hook.on_retry(failure, attempt, delay));
            if let Some(budget) = &budget {
                retry = retry.budget(budget);
            }
            if let Some(breaker) = &breaker {
                retry = retry.breaker(breaker);
            }
            if let Some(signal) = &signal {
                retry = retry.signal(signal);
            }
            retry
                .run_unclassified(move || {
                    // Each attempt owns its service: when the attempt ends (or its timeout
                    // drops it), whatever the service reserved is given back before the
                    // backoff sleep.
                    let mut service = first.take().unwrap_or_else(|| template.clone());
                    let request = request.clone();
                    async move {
                        poll_fn(|cx| service.poll_ready(cx)).await?;
                        service.call(request).await
                    }
                })
                .await
        })
    }
}

impl<S, C, H> fmt::Debug for RetryService<S, C, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryService")
            .field("layer", &self.layer)
            .finish_non_exhaustive()
    }
}

/// [`tower::ServiceBuilder`](https://docs.rs/tower/latest/tower/struct.ServiceBuilder.html)
/// methods for conc's layers.
///
/// A retry above a breaker (`.conc_retry(…)` before `.conc_circuit_breaker(…)`) sees the
/// breaker's errors, [`BreakerError`]s: classify them with
/// [`BreakerError::classify_with`], so that an open circuit stops the retry at once
/// instead of spending every attempt on rejections (the same stop as
/// [`RetryLayer::with_breaker`], which asks the breaker itself).
///
/// ```
/// use std::time::Duration;
/// use conc_retry::{BreakerError, CircuitBreaker, ErrorClass, RetryLayer, RetryPolicy, ServiceBuilderExt, StopReason};
/// use tower::{ServiceBuilder, ServiceExt, service_fn};
///
/// fn classify(_: &std::io::Error) -> ErrorClass {
///     ErrorClass::Server
/// }
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let breaker = CircuitBreaker::builder().consecutive_failures(2).build().unwrap();
/// let service = ServiceBuilder::new()
///     .conc_retry(RetryLayer::new(RetryPolicy::default(), BreakerError::classify_with(classify)))
///     .conc_circuit_breaker(breaker, classify)
///     .service(service_fn(|_: u32| async { Err::<u32, _>(std::io::Error::other("down")) }));
/// let error = service.oneshot(1).await.unwrap_err();
/// // Two failures opened the circuit; the third attempt was rejected, and the retry stopped.
/// assert_eq!(error.attempts, 3);
/// assert_eq!(error.stop, StopReason::Permanent);
/// assert!(error.to_string().contains("the circuit is open"), "{error}");
/// # }
/// ```
pub trait ServiceBuilderExt<L> {
    /// Adds a [`RetryLayer`].
    fn conc_retry<C, H>(
        self,
        layer: RetryLayer<C, H>,
    ) -> tower::ServiceBuilder<tower_layer::Stack<RetryLayer<C, H>, L>>;

    /// Adds a [`CircuitBreakerLayer`].
    fn conc_circuit_breaker<C>(
        self,
        breaker: CircuitBreaker,
        classify: C,
    ) -> tower::ServiceBuilder<tower_layer::Stack<CircuitBreakerLayer<C>, L>>;
}

impl<L> ServiceBuilderExt<L> for tower::ServiceBuilder<L> {
    fn conc_retry<C, H>(
        self,
        layer: RetryLayer<C, H>,
    ) -> tower::ServiceBuilder<tower_layer::Stack<RetryLayer<C, H>, L>> {
        self.layer(layer)
    }

    fn conc_circuit_breaker<C>(
        self,
        breaker: CircuitBreaker,
        classify: C,
    ) -> tower::ServiceBuilder<tower_layer::Stack<CircuitBreakerLayer<C>, L>> {
        self.layer(CircuitBreakerLayer::new(breaker, classify))
    }
}

/// Guards a service with a [`CircuitBreaker`]; outcomes are classified by `classify`.
///
/// ```
/// use conc_retry::{CircuitBreaker, CircuitBreakerLayer, ErrorClass};
/// use tower::{Layer, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let breaker = CircuitBreaker::builder().build().unwrap();
/// let layer = CircuitBreakerLayer::new(breaker, |_: &std::io::Error| ErrorClass::Server);
/// let service = layer.layer(service_fn(|n: u32| async move { Ok::<_, std::io::Error>(n) }));
/// assert_eq!(service.oneshot(7).await.unwrap(), 7);
/// # }
/// ```
#[derive(Clone)]
pub struct CircuitBreakerLayer<C> {
    breaker: CircuitBreaker,
    classify: C,
}

impl<C> CircuitBreakerLayer<C> {
    /// A layer guarding services with `breaker`.
    pub fn new(breaker: CircuitBreaker, classify: C) -> Self {
        Self { breaker, classify }
    }
}

impl<S, C: Clone> Layer<S> for CircuitBreakerLayer<C> {
    type Service = CircuitBreakerService<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreakerService {
            inner,
            breaker: self.breaker.clone(),
            classify: self.classify.clone(),
        }
    }
}

impl<C> fmt::Debug for CircuitBreakerLayer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerLayer")
            .field("breaker", &self.breaker)
            .finish_non_exhaustive()
    }
}

/// The service of [`CircuitBreakerLayer`].
#[derive(Clone)]
pub struct CircuitBreakerService<S, C> {
    inner: S,
    breaker: CircuitBreaker,
    classify: C,
}

impl<S, C, Req> Service<Req> for CircuitBreakerService<S, C>
where
    S: Service<Req>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: Send + 'static,
    C: Fn(&S::Error) -> ErrorClass + Clone + Send + Sync + 'static,
{
    type Response = S::Response;
    type Error = BreakerError<S::Error>;
    type Future = BoxFuture<Result<S::Response, BreakerError<S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(BreakerError::Inner)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let mut permit = match self.breaker.try_acquire_owned() {
            Ok(permit) => permit,
            Err(open) => return Box::pin(async move { Err(BreakerError::Open(open)) }),
        };
        let call = self.inner.call(request);
        let classify = self.classify.clone();
        Box::pin(async move {
            let permit = permit.take();
            match call.await {
                Ok(response) => {
                    permit.success();
                    Ok(response)
                }
                Err(error) => {
                    permit.record(classify(&error));
                    Err(BreakerError::Inner(error))
                }
            }
        })
    }
}

impl<S, C> fmt::Debug for CircuitBreakerService<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerService")
            .field("breaker", &self.breaker)
            .finish_non_exhaustive()
    }
}
