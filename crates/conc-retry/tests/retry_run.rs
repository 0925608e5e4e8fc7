//! Running retries, with paused time: delays, stop reasons, aborts, Retry-After, budgets.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use conc_core::{AbortController, AbortReason, Aborted};
use conc_retry::{
    AttemptFailure, CircuitBreaker, Classify, ErrorClass, Jitter, Retry, RetryBudget, RetryPolicy,
    StopReason, retry,
};
use tokio::time::Instant;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
enum ApiError {
    #[error("503 from provider")]
    Unavailable,
    #[error("429, retry after {0:?}")]
    TooMany(Duration),
    #[error("400 bad prompt")]
    BadPrompt,
    #[error(transparent)]
    Aborted(#[from] Aborted),
}

impl Classify for ApiError {
    fn class(&self) -> ErrorClass {
        match self {
            ApiError::Unavailable => ErrorClass::Server,
            ApiError::TooMany(d) => ErrorClass::RateLimited {
                retry_after: Some(*d),
            },
            ApiError::BadPrompt => ErrorClass::Permanent,
            ApiError::Aborted(_) => ErrorClass::Aborted,
        }
    }
}

fn exact(attempts: u32) -> RetryPolicy {
    RetryPolicy::builder()
        .max_attempts(attempts)
        .base_delay(Duration::from_millis(100))
        .factor(2.0)
        .jitter(Jitter::None)
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn exhausted_after_max_attempts_with_the_scheduled_delays() {
    let calls = AtomicU32::new(0);
    let delays = Mutex::new(Vec::new());
    let started = Instant::now();
    let error = Retry::new(&exact(4))
        .on_retry(|failure, attempt, delay| {
            assert_eq!(failure, &AttemptFailure::Error(ApiError::Unavailable));
            delays.lock().unwrap().push((attempt, delay));
        })
        .run(|| async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(ApiError::Unavailable)
        })
        .await
        .unwrap_err();
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    assert_eq!(error.attempts, 4);
    assert_eq!(error.stop, StopReason::Exhausted);
    assert_eq!(error.last_error(), Some(&ApiError::Unavailable));
    let ms = |n| Duration::from_millis(n);
    assert_eq!(
        *delays.lock().unwrap(),
        vec![(1, ms(100)), (2, ms(200)), (3, ms(400))]
    );
    assert_eq!(started.elapsed(), ms(700));
    assert_eq!(error.elapsed, ms(700));
    assert!(error.to_string().starts_with("gave up after 4 attempt(s)"));
}

#[tokio::test(start_paused = true)]
async fn a_permanent_error_is_not_retried() {
    let calls = AtomicU32::new(0);
    let error = retry(&exact(5), || async {
        calls.fetch_add(1, Ordering::SeqCst);
        Err::<(), _>(ApiError::BadPrompt)
    })
    .await
    .unwrap_err();
    assert_eq!(
        (calls.load(Ordering::SeqCst), error.stop),
        (1, StopReason::Permanent)
    );
}

/// Abort is an outcome, never retried.
#[tokio::test(start_paused = true)]
async fn an_abort_is_never_retried() {
    let error = retry(&exact(5), || async {
        Err::<(), _>(ApiError::Aborted(Aborted::new(AbortReason::Superseded)))
    })
    .await
    .unwrap_err();
    assert_eq!((error.attempts, error.stop), (1, StopReason::Aborted));
    assert!(error.is_aborted());

    // An abort during the sleep between attempts stops at once.
    let controller = AbortController::new();
    let signal = controller.signal();
    let run = tokio::spawn(async move {
        Retry::new(&exact(5))
            .signal(&signal)
            .run(|| async { Err::<(), _>(ApiError::Unavailable) })
            .await
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    controller.abort(AbortReason::Shutdown);
    let error = run.await.unwrap().unwrap_err();
    assert_eq!((error.attempts, error.stop), (2, StopReason::Aborted));
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_honoured_within_max_elapsed() {
    let started = Instant::now();
    let calls = AtomicU32::new(0);
    let value = retry(&exact(3), || async {
        if calls.fetch_add(1, Ordering::SeqCst) == 0 {
            Err(ApiError::TooMany(Duration::from_secs(2)))
        } else {
            Ok("ok")
        }
    })
    .await
    .unwrap();
    assert_eq!(value, "ok");
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(2),
        "waited the server's 2 s, not 100 ms"
    );

    let tight = RetryPolicy::builder()
        .max_attempts(3)
        .max_elapsed(Duration::from_secs(1))
        .build()
        .unwrap();
    let error = retry(&tight, || async {
        Err::<(), _>(ApiError::TooMany(Duration::from_secs(5)))
    })
    .await
    .unwrap_err();
    assert_eq!((error.attempts, error.stop), (1, StopReason::Elapsed));
}

#[tokio::test(start_paused = true)]
async fn attempts_time_out_and_max_elapsed_includes_them() {
    let policy = RetryPolicy::builder()
        .max_attempts(3)
        .attempt_timeout(Duration::from_millis(50))
        .base_delay(Duration::from_millis(10))
        .jitter(Jitter::None)
        .build()
        .unwrap();
    let error = retry(&policy, || async {
        tokio::time::sleep(Duration::from_secs(10)).await;
        Ok::<(), ApiError>(())
    })
    .await
    .unwrap_err();
    assert_eq!((error.attempts, error.stop), (3, StopReason::Exhausted));
    assert!(matches!(error.last, Some(AttemptFailure::Timeout(_))));
    // Without max_elapsed, elapsed runs from the end of the first failed attempt.
    assert_eq!(error.elapsed, Duration::from_millis(10 + 50 + 20 + 50));

    let bounded = RetryPolicy::builder()
        .max_attempts(10)
        .max_elapsed(Duration::from_millis(300))
        .build()
        .unwrap();
    let started = Instant::now();
    let error = retry(&bounded, || async {
        tokio::time::sleep(Duration::from_secs(10)).await;
        Ok::<(), ApiError>(())
    })
    .await
    .unwrap_err();
    assert_eq!((error.attempts, error.stop), (1, StopReason::Elapsed));
    assert_eq!(started.elapsed(), Duration::from_millis(300));
}

#[tokio::test(start_paused = true)]
async fn the_budget_caps_retries_across_calls() {
    let budget = RetryBudget::new(Duration::from_secs(10), 0, 0.5).unwrap();
    let policy = exact(10);
    let mut retries = 0;
    for _ in 0..10 {
        let calls = AtomicU32::new(0);
        let outcome = Retry::new(&policy)
            .budget(&budget)
            .run(|| async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>(ApiError::Unavailable)
            })
            .await
            .unwrap_err();
        assert_eq!(outcome.stop, StopReason::BudgetExhausted);
        retries += calls.load(Ordering::SeqCst) - 1;
    }
    // 10 requests at 50%: at most 5 retries in all, not 10 × 9.
    assert_eq!(retries, 5);
}

#[tokio::test(start_paused = true)]
async fn an_open_circuit_stops_retrying() {
    let breaker = CircuitBreaker::builder()
        .consecutive_failures(2)
        .build()
        .unwrap();
    let calls = AtomicU32::new(0);
    let error = Retry::new(&exact(5))
        .breaker(&breaker)
        .run(|| async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(ApiError::Unavailable)
        })
        .await
        .unwrap_err();
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert!(matches!(
        error.stop,
        StopReason::CircuitOpen {
            retry_after: Some(_)
        }
    ));
}

#[tokio::test(start_paused = true)]
async fn io_errors_and_timeouts_are_classified() {
    use std::io::{Error, ErrorKind};
    assert_eq!(
        Error::from(ErrorKind::ConnectionReset).class(),
        ErrorClass::Transient
    );
    assert_eq!(
        Error::from(ErrorKind::NotFound).class(),
        ErrorClass::Permanent
    );
    assert_eq!(
        Error::other(Aborted::new(AbortReason::Timeout)).class(),
        ErrorClass::Aborted
    );
    // `Other` wraps a lower layer's failure: its own class if it is an I/O error, else a
    // dependency failure worth a retry (documented on the `Classify` impl).
    assert_eq!(
        Error::other(Error::from(ErrorKind::ConnectionReset)).class(),
        ErrorClass::Transient
    );
    assert_eq!(
        Error::other(Error::from(ErrorKind::InvalidInput)).class(),
        ErrorClass::Permanent
    );
    assert_eq!(
        Error::other("tls handshake failed").class(),
        ErrorClass::Server
    );
    assert!(Error::other("x").class().is_retryable());
    #[cfg(feature = "conc-async")]
    {
        let timeout = conc_async::TimeoutError::new("x", Duration::from_secs(1));
        assert_eq!(timeout.class(), ErrorClass::Transient);
    }
    assert_eq!(conc_retry::classify_http(408, None), ErrorClass::Transient);
    assert_eq!(
        conc_retry::classify_http(503, Some("7")),
        ErrorClass::RateLimited {
            retry_after: Some(Duration::from_secs(7))
        }
    );
}

/// A server's Retry-After is honoured above `max_delay`, up to `max_retry_after`; a longer
/// one stops at once with its own reason instead of parking the caller for an hour.
#[tokio::test(start_paused = true)]
async fn retry_after_is_capped_by_its_own_limit() {
    let policy = RetryPolicy::builder()
        .max_attempts(3)
        .base_delay(Duration::from_millis(10))
        .max_delay(Duration::from_millis(100))
        .max_retry_after(Duration::from_secs(5))
        .jitter(Jitter::None)
        .build()
        .unwrap();
    let started = Instant::now();
    let calls = AtomicU32::new(0);
    let error = Retry::new(&policy)
        .run(|| async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(ApiError::TooMany(Duration::from_secs(3600)))
        })
        .await
        .unwrap_err();
    assert_eq!(
        error.stop,
        StopReason::RetryAfterTooLong {
            retry_after: Duration::from_secs(3600)
        }
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "no hour-long sleep"
    );

    // Within the limit, it waits what the server asked, above max_delay.
    let started = Instant::now();
    let calls = AtomicU32::new(0);
    let ok = Retry::new(&policy)
        .run(|| async {
            if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                Err(ApiError::TooMany(Duration::from_secs(2)))
            } else {
                Ok(7)
            }
        })
        .await
        .unwrap();
    assert_eq!(ok, 7);
    assert!(started.elapsed() >= Duration::from_secs(2));
}
