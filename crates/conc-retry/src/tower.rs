//! tower middleware: [`RetryLayer`] and [`CircuitBreakerLayer`] (feature `tower`).

use std::fmt;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::task::{Context, Poll};

use tower_layer::Layer;
use tower_service::Service;

use crate::breaker::{BreakerError, CircuitBreaker};
use crate::classify::ErrorClass;
use crate::policy::RetryPolicy;
use crate::retry::{Retry, RetryError};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Retries a service's calls under a [`RetryPolicy`]; errors are classified by `classify`.
///
/// The request must be `Clone` (each attempt sends a clone) and the service `Clone` (each
/// call drives its own clone, as tower's own retry does).
///
/// ```
/// use conc_retry::{ErrorClass, RetryLayer, RetryPolicy};
/// use tower::{Layer, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let layer = RetryLayer::new(RetryPolicy::default(), |_: &std::io::Error| ErrorClass::Transient);
/// let service = layer.layer(service_fn(|n: u32| async move { Ok::<_, std::io::Error>(n + 1) }));
/// assert_eq!(service.oneshot(1).await.unwrap(), 2);
/// # }
/// ```
#[derive(Clone)]
pub struct RetryLayer<C> {
    policy: RetryPolicy,
    classify: C,
}

impl<C> RetryLayer<C> {
    /// A layer retrying under `policy`, classifying errors with `classify`.
    pub fn new(policy: RetryPolicy, classify: C) -> Self {
        Self { policy, classify }
    }
}

impl<S, C: Clone> Layer<S> for RetryLayer<C> {
    type Service = RetryService<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        RetryService {
            inner,
            policy: self.policy.clone(),
            classify: self.classify.clone(),
        }
    }
}

impl<C> fmt::Debug for RetryLayer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryLayer")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// The service of [`RetryLayer`].
#[derive(Clone)]
pub struct RetryService<S, C> {
    inner: S,
    policy: RetryPolicy,
    classify: C,
}

impl<S, C, Req> Service<Req> for RetryService<S, C>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Future: Send,
    S::Response: Send,
    S::Error: Send,
    Req: Clone + Send + 'static,
    C: Fn(&S::Error) -> ErrorClass + Clone + Send + Sync + 'static,
{
    type Response = S::Response;
    type Error = RetryError<S::Error>;
    type Future = BoxFuture<Result<S::Response, RetryError<S::Error>>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness is awaited per attempt, on the call's own clone.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let service = self.inner.clone();
        let policy = self.policy.clone();
        let classify = self.classify.clone();
        Box::pin(async move {
            Retry::new(&policy)
                .classify_with(classify)
                .run_unclassified(move || {
                    let mut service = service.clone();
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

impl<S, C> fmt::Debug for RetryService<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryService")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
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
