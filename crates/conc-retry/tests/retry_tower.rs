//! The tower layers around a real `tower::Service`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use conc_retry::{
    BreakerError, CircuitBreaker, CircuitBreakerLayer, ErrorClass, RetryLayer, RetryPolicy,
    StopReason,
};
use tower::{Layer, ServiceExt, service_fn};

#[derive(Debug, Clone, PartialEq)]
struct Status(u16);

fn classify(status: &Status) -> ErrorClass {
    conc_retry::classify_http(status.0, None)
}

/// A service that fails with 503 `failures` times, then answers.
fn flaky(
    failures: u32,
) -> (
    Arc<AtomicU32>,
    impl tower::Service<String, Response = String, Error = Status, Future: Send>
    + Clone
    + Send
    + 'static,
) {
    let calls = Arc::new(AtomicU32::new(0));
    let counter = calls.clone();
    let service = service_fn(move |request: String| {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        async move {
            if n < failures {
                Err(Status(503))
            } else {
                Ok(format!("echo {request}"))
            }
        }
    });
    (calls, service)
}

#[tokio::test(start_paused = true)]
async fn the_retry_layer_retries_a_flaky_service() {
    let policy = RetryPolicy::builder()
        .max_attempts(3)
        .base_delay(Duration::from_millis(5))
        .build()
        .unwrap();
    let (calls, service) = flaky(2);
    let service = RetryLayer::new(policy.clone(), classify).layer(service);
    assert_eq!(service.oneshot("hi".to_owned()).await.unwrap(), "echo hi");
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    let (calls, service) = flaky(10);
    let error = RetryLayer::new(policy, classify)
        .layer(service)
        .oneshot("hi".to_owned())
        .await
        .unwrap_err();
    assert_eq!((error.attempts, error.stop), (3, StopReason::Exhausted));
    assert_eq!(error.last_error(), Some(&Status(503)));
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

/// A layer with nothing to watch makes its first attempt without the retry machinery; a
/// failure there still goes through the classifier, the hook and the backoff.
#[tokio::test(start_paused = true)]
async fn a_failed_first_attempt_is_classified_hooked_and_retried() {
    let policy = RetryPolicy::builder()
        .max_attempts(3)
        .base_delay(Duration::from_millis(5))
        .build()
        .unwrap();
    let hooked = Arc::new(AtomicU32::new(0));
    let seen = hooked.clone();
    let (calls, service) = flaky(1);
    let service = RetryLayer::new(policy.clone(), classify)
        .on_retry(move |_: &_, attempt: u32, _: Duration| {
            assert_eq!(attempt, 1);
            seen.fetch_add(1, Ordering::SeqCst);
        })
        .layer(service);
    let started = tokio::time::Instant::now();
    assert_eq!(service.oneshot("hi".to_owned()).await.unwrap(), "echo hi");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(hooked.load(Ordering::SeqCst), 1);
    assert!(
        started.elapsed() <= Duration::from_millis(5),
        "one backoff at most"
    );

    // A permanent failure on the first attempt is not retried.
    let calls = Arc::new(AtomicU32::new(0));
    let counter = calls.clone();
    let refusing = service_fn(move |_: String| {
        counter.fetch_add(1, Ordering::SeqCst);
        async { Err::<String, _>(Status(400)) }
    });
    let error = RetryLayer::new(policy, classify)
        .layer(refusing)
        .oneshot("hi".to_owned())
        .await
        .unwrap_err();
    assert_eq!((error.attempts, error.stop), (1, StopReason::Permanent));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn the_breaker_layer_opens_and_rejects_without_calling() {
    let breaker = CircuitBreaker::builder()
        .consecutive_failures(2)
        .build()
        .unwrap();
    let (calls, service) = flaky(100);
    let service = CircuitBreakerLayer::new(breaker, classify).layer(service);
    for _ in 0..2 {
        let error = service.clone().oneshot("x".to_owned()).await.unwrap_err();
        assert_eq!(error, BreakerError::Inner(Status(503)));
    }
    let error = service.clone().oneshot("x".to_owned()).await.unwrap_err();
    assert!(matches!(error, BreakerError::Open(_)));
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "the open breaker did not call the service"
    );
}

/// A service that is ready only once `open` is set.
#[derive(Clone)]
struct Gate {
    open: Arc<std::sync::atomic::AtomicBool>,
}

impl tower::Service<u32> for Gate {
    type Response = u32;
    type Error = Status;
    type Future = std::future::Ready<Result<u32, Status>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Status>> {
        if self.open.load(Ordering::SeqCst) {
            std::task::Poll::Ready(Ok(()))
        } else {
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    }

    fn call(&mut self, n: u32) -> Self::Future {
        std::future::ready(Ok(n))
    }
}

/// `poll_ready` tells the truth: a layer above sees the inner service's readiness.
#[tokio::test(start_paused = true)]
async fn retry_poll_ready_is_the_inner_readiness() {
    let open = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut service =
        RetryLayer::new(RetryPolicy::default(), classify).layer(Gate { open: open.clone() });
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    assert!(
        tower::Service::<u32>::poll_ready(&mut service, &mut cx).is_pending(),
        "not ready while the inner service is not"
    );
    open.store(true, Ordering::SeqCst);
    assert!(tower::Service::<u32>::poll_ready(&mut service, &mut cx).is_ready());
    assert_eq!(tower::Service::call(&mut service, 5).await.unwrap(), 5);
}

/// The layer takes a budget, a breaker, a hook and a signal, as `Retry` does: an empty
/// budget allows no retry, and the hook sees nothing then.
#[tokio::test(start_paused = true)]
async fn the_retry_layer_takes_a_budget_breaker_hook_and_signal() {
    use conc_retry::{RetryBudget, ServiceBuilderExt};
    let budget = RetryBudget::new(Duration::from_secs(10), 0, 0.0).unwrap();
    let retried = Arc::new(AtomicU32::new(0));
    let counted = retried.clone();
    let breaker = CircuitBreaker::builder().build().unwrap();
    let controller = conc_core::AbortController::new();
    let layer = RetryLayer::new(RetryPolicy::default(), classify)
        .with_budget(budget)
        .with_breaker(breaker.clone())
        .with_signal(controller.signal())
        .on_retry(move |_: &conc_retry::AttemptFailure<Status>, _, _| {
            counted.fetch_add(1, Ordering::SeqCst);
        });
    let (calls, inner) = flaky(5);
    let service = tower::ServiceBuilder::new()
        .conc_retry(layer)
        .service(inner);
    let error = service.oneshot("hi".to_owned()).await.unwrap_err();
    assert_eq!(error.stop, StopReason::BudgetExhausted);
    assert_eq!(calls.load(Ordering::SeqCst), 1, "no retry without budget");
    assert_eq!(retried.load(Ordering::SeqCst), 0);
}
