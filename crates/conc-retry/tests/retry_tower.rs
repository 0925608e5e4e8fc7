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
