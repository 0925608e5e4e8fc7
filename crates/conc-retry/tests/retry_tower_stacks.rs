//! `RetryLayer` in real `tower::ServiceBuilder` stacks over layers whose readiness reserves
//! capacity (`ConcurrencyLimit`, `Buffer`), under `LoadShed` and `Timeout`, in paused time.
//!
//! Every test has an outer timeout that fails it: a stack that deadlocks does not hang the
//! suite, it fails with a message. The times asserted are virtual (paused tokio time), so
//! they are exact, not hopes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use conc_retry::{ErrorClass, Jitter, RetryError, RetryLayer, RetryPolicy};
use tokio::time::Instant;
use tower::{BoxError, Service, ServiceBuilder, ServiceExt, service_fn};

/// A retry policy with a fixed 10 ms delay and three attempts.
fn policy() -> RetryPolicy {
    RetryPolicy::builder()
        .max_attempts(3)
        .base_delay(Duration::from_millis(10))
        .factor(1.0)
        .jitter(Jitter::None)
        .build()
        .unwrap()
}

fn transient(_: &BoxError) -> ErrorClass {
    ErrorClass::Transient
}

/// Fails the test instead of hanging when `future` never completes.
async fn within<F: std::future::Future>(what: &str, future: F) -> F::Output {
    match tokio::time::timeout(Duration::from_secs(600), future).await {
        Ok(output) => output,
        Err(_) => panic!("{what}: never completed (deadlock)"),
    }
}

/// A service whose first call never answers; later calls answer at once.
fn stalls_first() -> (
    Arc<AtomicU32>,
    impl Service<u32, Response = u32, Error = BoxError, Future: Send> + Clone + Send + 'static,
) {
    let calls = Arc::new(AtomicU32::new(0));
    let counter = calls.clone();
    let service = service_fn(move |n: u32| {
        let call = counter.fetch_add(1, Ordering::SeqCst);
        async move {
            if call == 0 {
                std::future::pending::<()>().await;
            }
            Ok::<_, BoxError>(n)
        }
    });
    (calls, service)
}

/// A service that answers after `delay`.
fn slow(
    delay: Duration,
) -> impl Service<u32, Response = u32, Error = BoxError, Future: Send> + Clone + Send + 'static {
    service_fn(move |n: u32| async move {
        tokio::time::sleep(delay).await;
        Ok::<_, BoxError>(n)
    })
}

/// The stack: retry over a 200 ms timeout over `concurrency_limit(1)`. The stalled
/// first attempt times out, and the retry (which needs the one permit) answers at 210 ms.
#[tokio::test(start_paused = true)]
async fn a_stalled_attempt_is_retried_under_concurrency_limit_1() {
    let (calls, inner) = stalls_first();
    let service = ServiceBuilder::new()
        .layer(RetryLayer::new(policy(), transient))
        .timeout(Duration::from_millis(200))
        .concurrency_limit(1)
        .service(inner);
    let start = Instant::now();
    let answer = within("retry over concurrency_limit(1)", service.oneshot(7)).await;
    assert_eq!(answer.unwrap(), 7);
    assert_eq!(start.elapsed(), Duration::from_millis(210));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

/// The same through a `Buffer` of capacity 1, whose `poll_ready` reserves the one slot.
#[tokio::test(start_paused = true)]
async fn a_stalled_attempt_is_retried_through_a_buffer_of_1() {
    let (calls, inner) = stalls_first();
    let service = ServiceBuilder::new()
        .layer(RetryLayer::new(policy(), transient))
        .buffer(1)
        .timeout(Duration::from_millis(200))
        .service(inner);
    let start = Instant::now();
    let answer = within("retry over buffer(1)", service.oneshot(7)).await;
    assert_eq!(answer.unwrap(), 7);
    assert_eq!(start.elapsed(), Duration::from_millis(210));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

/// Sends `requests` concurrent requests (each through its own clone of `service`, as a
/// server does) and returns when each answered, in virtual time since the start.
async fn answer_times<S>(service: S, requests: u32) -> Vec<Duration>
where
    S: Service<u32> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: std::fmt::Debug,
    S::Response: Send,
{
    let start = Instant::now();
    let tasks: Vec<_> = (0..requests)
        .map(|n| {
            let service = service.clone();
            tokio::spawn(async move {
                service.oneshot(n).await.expect("answer");
                start.elapsed()
            })
        })
        .collect();
    let mut times = Vec::new();
    for task in tasks {
        times.push(task.await.expect("request task"));
    }
    times.sort();
    times
}

/// Under `concurrency_limit(n)`, n requests run at once and the n+1-th waits for one of
/// them, exactly as without the retry layer (a readied service kept aside would hold a
/// permit idle: half the limit served, and a deadlock at saturation).
#[tokio::test(start_paused = true)]
async fn concurrency_limit_n_serves_n_at_once_as_without_the_layer() {
    for limit in [1_usize, 3] {
        let requests = u32::try_from(limit).unwrap() + 1;
        let second = Duration::from_secs(1);
        let bare = ServiceBuilder::new()
            .concurrency_limit(limit)
            .service(slow(second));
        let without = within("without the layer", answer_times(bare, requests)).await;
        let retried = ServiceBuilder::new()
            .layer(RetryLayer::new(policy(), transient))
            .concurrency_limit(limit)
            .service(slow(second));
        let with = within("with the layer", answer_times(retried, requests)).await;
        assert_eq!(with, without, "limit {limit}");
        let mut expected = vec![second; limit];
        expected.push(second * 2);
        assert_eq!(with, expected, "limit {limit}: n at once, then the n+1-th");
    }
}

/// `load_shed()` over the retry layer over `concurrency_limit(1)`: the first request is
/// served, and a second one sent while the first runs is shed, as without the layer.
#[tokio::test(start_paused = true)]
async fn load_shed_over_the_layer_sheds_exactly_as_without_it() {
    async fn run<S>(mut service: S) -> (bool, bool)
    where
        S: Service<u32, Error = BoxError, Response = u32> + Send + 'static,
        S::Future: Send + 'static,
    {
        let first = service.ready().await.expect("ready").call(1);
        let first = tokio::spawn(first);
        // While the first holds the one permit, the next request is shed.
        let second = service.ready().await.expect("ready").call(2).await;
        let shed = matches!(&second, Err(e) if e.is::<tower::load_shed::error::Overloaded>());
        let served = within("the first request", first)
            .await
            .expect("first task")
            .is_ok();
        (served, shed)
    }
    let second = Duration::from_secs(1);
    let without = run(ServiceBuilder::new()
        .load_shed()
        .concurrency_limit(1)
        .service(slow(second)))
    .await;
    let with = run(ServiceBuilder::new()
        .load_shed()
        .map_err(|e: RetryError<BoxError>| -> BoxError { e.to_string().into() })
        .layer(RetryLayer::new(policy(), transient))
        .concurrency_limit(1)
        .service(slow(second)))
    .await;
    assert_eq!(without, (true, true));
    assert_eq!(with, without);
}

/// A retry readies its own clone: after the timed-out first attempt has given its permit
/// back, the retry takes the permit and answers, while a request that arrived in the
/// meantime waits its turn.
#[tokio::test(start_paused = true)]
async fn a_retry_waits_its_turn_behind_other_requests() {
    let (calls, inner) = stalls_first();
    let service = ServiceBuilder::new()
        .layer(RetryLayer::new(policy(), transient))
        .timeout(Duration::from_millis(200))
        .concurrency_limit(1)
        .service(inner);
    let times = within("two requests", answer_times(service, 2)).await;
    // One request is stalled, then retried at 210 ms; the other is served whenever the
    // permit is free. Both answer, neither waits for ever.
    assert_eq!(times.len(), 2);
    assert!(
        times.iter().all(|t| *t <= Duration::from_millis(210)),
        "{times:?}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

/// `CircuitBreakerLayer` calls the service it readied, so under `concurrency_limit(n)` it
/// serves n at once as the bare stack does; a call it rejects (open circuit) drops with its
/// service clone, and the reserved permit with it.
#[tokio::test(start_paused = true)]
async fn the_breaker_layer_keeps_the_limit_and_gives_back_rejected_permits() {
    use conc_retry::{BreakerError, CircuitBreaker, CircuitBreakerLayer};
    let second = Duration::from_secs(1);
    let breaker = CircuitBreaker::builder().build().unwrap();
    let guarded = ServiceBuilder::new()
        .layer(CircuitBreakerLayer::new(breaker, transient))
        .concurrency_limit(2)
        .service(slow(second));
    let times = within(
        "breaker over concurrency_limit(2)",
        answer_times(guarded, 3),
    )
    .await;
    assert_eq!(times, vec![second, second, second * 2]);

    let breaker = CircuitBreaker::builder()
        .consecutive_failures(1)
        .build()
        .unwrap();
    let failing = service_fn(|_: u32| async { Err::<u32, BoxError>("down".into()) });
    let guarded = ServiceBuilder::new()
        .layer(CircuitBreakerLayer::new(breaker, transient))
        .concurrency_limit(1)
        .service(failing);
    for n in 0..5 {
        let error = within("a call to the breaker", guarded.clone().oneshot(n))
            .await
            .unwrap_err();
        assert_eq!(matches!(error, BreakerError::Open(_)), n > 0, "call {n}");
    }
}
